"""Which cross-entropy to use: ``choose``, ``check`` and ``equivalents``.

All three read one decision table, :mod:`xent._guide.table` (label situations,
thresholds, mistakes, peer names); ``docs/choosing.md`` is rendered from the
same table. The arrays are inspected on the host (a copy through NumPy), so
these are diagnostics for eager code, not for use inside ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from ._core.backend import backend_of, get_backend, library_of, to_numpy
from ._core.validate import convert
from ._guide import table as decisions

__all__ = ["Equivalents", "Finding", "Recommendation", "check", "choose", "equivalents"]


@dataclasses.dataclass(frozen=True)
class Equivalents:
    """One loss across libraries: a call per library, None where it has none."""

    xent: str | None
    tensorflow: str | None
    pytorch: str | None
    keras: str | None
    optax: str | None


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """The loss that fits some labels, why, and how to call it (here and in peers)."""

    function: str
    kwargs: dict
    reason: str
    code: str
    alternatives: tuple
    equivalents: Equivalents


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem ``check`` found: a code from the table, its severity, what to do."""

    code: str
    severity: str
    message: str


# -- equivalents --------------------------------------------------------------------

def equivalents(name: str) -> Equivalents:
    """The ``xent`` call and its TensorFlow, PyTorch, Keras and optax peers for a loss name.

    ``name`` is any cross-entropy name those libraries have or had, fully
    spelled (``"tf.compat.v1.losses.sparse_softmax_cross_entropy"``), with the
    usual aliases (``"F.cross_entropy"``, ``"nn.BCEWithLogitsLoss"``,
    ``"tensorflow.nn.nce_loss"``) or bare (``"SparseCategoricalCrossentropy"``;
    a bare name several libraries share resolves in the order xent, PyTorch,
    Keras, TensorFlow, optax). ``xent`` names work too.

    The ``xent`` field reproduces the queried name's defaults, the reduction
    included (``tf.nn`` and optax return per-example losses:
    ``reduction="none"``; Keras loss classes ``"sum_over_batch_size"``; TF 1
    losses ``"sum_by_nonzero_weights"``); the peer fields are each library's
    current call for the same loss, arguments in that library's order, or None
    where it has none. Names that no longer exist (``tf.contrib.*``, TF 1's
    ``tf.losses.*``) are known and marked historical in ``docs/choosing.md``.

    Raises:
      ValueError: for an unknown name, suggesting the closest known ones.

    Example:
      >>> import xent
      >>> e = xent.equivalents("F.cross_entropy")
      >>> e.xent
      'xent.sparse_softmax_cross_entropy(logits, labels)'
      >>> e.tensorflow
      'tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)'
      >>> xent.equivalents("tf.nn.sampled_softmax_loss").pytorch is None
      True
    """
    entry = decisions.lookup(name)
    return _concept_equivalents(entry.concept, entry.xent_call())


def _concept_equivalents(concept: str, xent_call: str | None) -> Equivalents:
    c = decisions.CONCEPTS[concept]
    return Equivalents(xent_call, c.tensorflow, c.pytorch, c.keras, c.optax)


# -- reading labels -------------------------------------------------------------------

def _host(x: Any, name: str) -> np.ndarray:
    lib = library_of(x)
    if lib is None and not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a numpy.ndarray, torch.Tensor, jax.Array, tf.Tensor "
                        f"or list, got a {type(x).__name__}")
    if lib not in (None, "numpy") and not get_backend(lib).is_concrete(x):
        raise TypeError(
            f"{name} is a symbolic array (traced by tf.function or jax.jit), which has no "
            "values yet; choose and check read the values: call them eagerly, on a batch, "
            "outside the compiled function")
    y = to_numpy(x)
    if y.dtype.kind not in "biuf" and y.dtype.name != "bfloat16":
        raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
    return y


def _pos(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _num(v: float) -> float:
    return float(f"{float(v):.{decisions.WEIGHT_DIGITS}g}")


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return repr(v)


@dataclasses.dataclass
class _Seen:
    """What the labels turned out to be."""

    situation: str
    num_classes: int
    shape: tuple
    what: str                       # plain description of the labels
    counts: np.ndarray | None = None  # per class (exclusive) or positives per class
    total: float = 0.0              # examples (exclusive) / rows (independent)
    ignore_index: int | None = None
    notes: list = dataclasses.field(default_factory=list)
    cast: bool = False              # float labels holding class indices
    pm1: bool = False               # {-1, +1} labels: the binary loss on (labels + 1) / 2


def _family(situation: str) -> str:
    return {"binary": "binary", "multilabel": "multilabel"}.get(situation, "exclusive")


def _infer(y: np.ndarray, num_classes: int | None) -> _Seen:
    """The label situation of a host array (see the table's SITUATIONS)."""
    shape = tuple(int(d) for d in y.shape)
    if y.ndim == 0:
        raise ValueError("labels must be an array with at least one dimension, got a scalar")
    if y.size == 0:
        raise ValueError(f"labels is empty (shape {shape}): nothing to infer; describe the "
                         "task instead: choose(task=..., num_classes=...)")
    f = y.astype(np.float64)
    bad = ~np.isfinite(f)
    if bad.any():
        p = _pos(bad)
        raise ValueError(f"labels must be finite, got {f[p]} at position {p}")
    whole = bool(np.all(f == np.round(f)))
    in01 = bool(np.all((f >= 0) & (f <= 1)))
    is01 = in01 and whole
    last = shape[-1]
    dense_hint = num_classes is not None and y.ndim >= 2 and last == num_classes
    binary = None
    if y.ndim == 1 or (last == 1 and in01 and not dense_hint):
        if in01 and num_classes in (None, 1, 2):
            binary = ("soft binary labels" if not is01 else "0/1 labels") + ", one per example"
    elif in01:
        if dense_hint or num_classes is None or not is01:
            return _dense(f, is01, shape)
        if num_classes in (1, 2):
            binary = "0/1 labels, one per entry"
    if binary is not None:
        seen = _Seen("binary", 2, shape, binary, np.array([f.sum()]), float(f.size))
        if y.ndim >= 2 and last == 1:
            seen.notes.append(f"The logits must have the labels' shape {list(shape)} too "
                              "(or squeeze both): [B, 1] against [B] is an error, not a "
                              "broadcast.")
        return seen
    if not whole and in01:
        raise ValueError(f"labels in [0, 1] with one value per example are binary, but "
                         f"num_classes={num_classes}")
    if whole and num_classes in (None, 2) and set(np.unique(f).tolist()) == {-1.0, 1.0} \
            and (y.ndim == 1 or last == 1):
        seen = _Seen("binary", 2, shape, "labels in {-1, +1}, one per example",
                     np.array([(f > 0).sum()]), float(f.size))
        seen.pm1 = True
        seen.notes.append("The labels are -1/+1: the binary loss takes (labels + 1) / 2, "
                          "which maps -1 to 0 and +1 to 1 (no entry is padding).")
        return seen
    if not whole:
        p = _pos((f != np.round(f)) & ((f < 0) | (f > 1)))
        raise ValueError(
            f"labels hold {f[p]:g} at position {p}: neither class indices (whole numbers) nor "
            "probabilities in [0, 1]; are these logits or regression targets?")
    return _indices(f, y, num_classes, shape)


def _dense(f: np.ndarray, is01: bool, shape: tuple) -> _Seen:
    rows = f.reshape(-1, shape[-1])
    sums = rows.sum(axis=1)
    ok = np.abs(sums - 1) <= decisions.ROW_SUM_TOL
    C = shape[-1]
    if is01:
        if ok.all():
            return _Seen("huge" if C >= decisions.HUGE_CLASSES else "onehot", C, shape, f"one-hot rows over {C} classes", rows.sum(0),
                         float(len(rows)))
        many = int((sums > 1).sum())
        return _Seen("multilabel", C, shape,
                     f"multi-hot rows over {C} classes ({many} of {len(rows)} rows have "
                     "several 1s)", rows.sum(0), float(len(rows)))
    if ok.mean() >= 0.9:
        seen = _Seen("soft", C, shape, f"probability rows over {C} classes", rows.sum(0),
                     float(rows.sum()))
        if not ok.all():
            i = int(np.argmin(ok))
            seen.notes.append(f"{int((~ok).sum())} rows do not sum to 1 (row {i} sums to "
                              f"{sums[i]:.4g}): normalize them; xent.check reports them.")
        return seen
    return _Seen("multilabel", C, shape,
                 f"independent soft labels in [0, 1] over {C} classes (rows do not sum to 1)",
                 rows.sum(0), float(len(rows)))


def _indices(f: np.ndarray, y: np.ndarray, num_classes: int | None, shape: tuple) -> _Seen:
    ignore = None
    neg = np.unique(f[f < 0])
    if len(neg) > 1:
        raise ValueError(f"labels hold several negative values {neg[:4].astype(int).tolist()}: "
                         "class indices are >= 0 (one negative value can mark padding)")
    if len(neg) == 1:
        ignore = int(neg[0])
    valid = f[f >= 0].astype(np.int64)
    if valid.size == 0:
        raise ValueError(f"labels hold only the padding value {ignore}: nothing to infer")
    top = int(valid.max())
    if num_classes is not None and top >= num_classes:
        p = _pos(f >= num_classes)
        raise ValueError(f"labels hold class {top} at position {p} but num_classes="
                         f"{num_classes}: class indices must be in [0, {num_classes})")
    C = num_classes if num_classes is not None else top + 1
    seen = _Seen("huge" if C >= decisions.HUGE_CLASSES else "multiclass", C, shape,
                 f"integer class indices in [0, {C})", np.bincount(valid, minlength=C),
                 float(valid.size), ignore)
    if num_classes is None:
        seen.notes.append(f"The class count {C} is the largest label + 1; pass num_classes= "
                          "if some classes are missing from these labels.")
    if ignore is not None:
        seen.notes.append(f"The value {ignore} ({int((f == ignore).sum())} entries) is read "
                          f"as padding: ignore_index={ignore} makes those entries count 0.")
    if y.dtype.kind == "f":
        seen.cast = True
        seen.notes.append("The labels are floats holding whole numbers: the call casts them "
                          "to integers.")
    return seen


def _balance(seen: _Seen, force: bool | None) -> tuple[dict, str]:
    """Suggested weights (by the table's formulas) and a sentence about the imbalance."""
    table = decisions.SITUATIONS[seen.situation]
    if table.weight is None or seen.counts is None or force is False:
        return {}, ""
    counts = np.asarray(seen.counts, dtype=np.float64)
    if table.weight == "pos_weight":
        pos = counts
        neg = seen.total - pos
        both = (pos > 0) & (neg > 0)
        if not both.any():
            return {}, "Only one outcome occurs in these labels: no weight can balance it."
        ratio = float(np.max(np.maximum(pos, neg)[both] / np.minimum(pos, neg)[both]))
        w = np.where(pos > 0, neg / np.where(pos > 0, pos, 1), 1.0)
        value: Any = _num(w[0]) if seen.situation == "binary" and w.size == 1 else [
            _num(v) for v in w]
        what = (f"positives are {pos[0] / seen.total:.1%} of the labels"
                if seen.situation == "binary" else
                f"the most lopsided class has {ratio:.3g} times more of one outcome")
    else:
        present = counts > 0
        ratio = float(counts[present].max() / counts[present].min())
        w = np.zeros_like(counts)
        w[present] = seen.total / (seen.num_classes * counts[present])
        w[~present] = w[present].max()
        value = [_num(v) for v in w]
        what = (f"class counts range from {counts[present].min():.4g} to "
                f"{counts[present].max():.4g}")
        if not present.all():
            what += (f"; {int((~present).sum())} classes do not occur and get the largest "
                     "weight")
    heavy = ratio >= decisions.IMBALANCE_RATIO
    if not (heavy or force):
        return {}, (f"Balance: {what} (ratio {ratio:.3g}, under the {decisions.IMBALANCE_RATIO:g}x "
                    "threshold): no weights needed.")
    return {table.weight: value}, (f"Imbalance: {what} (ratio {ratio:.3g}). Suggested "
                                   f"{decisions.WEIGHT_FORMULAS[table.weight]}.")


# -- choose ------------------------------------------------------------------------------

def choose(labels: Any = None, /, *, task: str | None = None, num_classes: int | None = None,
           exclusive: bool | None = None, soft: bool | None = None,
           imbalanced: bool | None = None) -> Recommendation:
    """Which cross-entropy fits these labels (or this description), why, and how to call it.

    From ``labels`` (NumPy, torch, JAX or a list) it infers the situation:
    0/1 labels per example (binary: ``sigmoid_cross_entropy`` on one logit),
    integer indices (multi-class: ``sparse_softmax_cross_entropy``), one-hot rows
    (their indices, ``labels.argmax(-1)``), probability rows summing to 1 (soft:
    ``softmax_cross_entropy``), multi-hot or independent soft rows (multi-label:
    ``sigmoid_cross_entropy``), and indices into at least
    ``xent._guide.table.HUGE_CLASSES`` = 32768 classes (``linear_cross_entropy``, with
    ``sampled_softmax_loss`` as a training-only alternative). It counts the
    classes and measures the imbalance; when the most frequent class is at
    least 5 times as frequent as the least frequent one it suggests
    ``pos_weight = negatives / positives`` (per class) or
    ``class_weight[c] = N / (C * count[c])`` (inverse frequency). One negative
    value in integer labels is read as padding (``ignore_index``).

    Without labels, the keywords describe them: ``task`` is ``"binary"``,
    ``"multiclass"``, ``"onehot"``, ``"soft"``, ``"multilabel"`` or ``"huge"``
    (aliases like ``"multi-label"``, ``"language_model"`` work);
    ``exclusive=False`` means multi-label, ``soft=True`` probability labels,
    ``num_classes`` >= 32768 a huge vocabulary. With labels, the keywords must
    agree with them; ``num_classes`` sets the class count, ``imbalanced=True``
    always suggests weights and ``imbalanced=False`` never.

    Returns:
      A :class:`Recommendation`: ``function``, ``kwargs``, ``reason`` (plain
      words), ``code`` (runs as written once ``import xent`` and arrays
      ``logits`` and ``labels``, or ``inputs``, ``classifier`` and ``labels``,
      exist), ``alternatives`` and ``equivalents`` (TensorFlow, PyTorch, Keras,
      optax): each peer's call on the labels as given (one-hot rows go to the
      peers' dense losses, ``{-1, +1}`` labels as ``(labels + 1) / 2``, with the
      casts and squeezes that library needs) and with the suggested weights written
      in, so it gives the xent ``code``'s number; None where the peer's loss has
      no such weights (Keras's and optax's take no class weights).

    Raises:
      ValueError: for labels that are neither indices nor probabilities, a
        description that contradicts itself or the labels, or nothing at all.

    Example:
      >>> import numpy as np, xent
      >>> r = xent.choose(np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
      >>> r.function, r.kwargs
      ('sigmoid_cross_entropy', {'pos_weight': 9.0})
      >>> r.code
      'xent.sigmoid_cross_entropy(logits, labels, pos_weight=9.0)'
      >>> xent.choose(task="multilabel", num_classes=20).function
      'sigmoid_cross_entropy'

    References: PyTorch ``BCEWithLogitsLoss`` (pos_weight); scikit-learn
    ``compute_class_weight("balanced")``; Jean et al. 2015 (sampled softmax);
    Wijmans et al. 2025 (cut cross-entropy).
    """
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        num_classes = int(num_classes)
    for flag, value in (("exclusive", exclusive), ("soft", soft), ("imbalanced", imbalanced)):
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{flag} must be True, False or None, got {value!r}")
    wanted = _task(task) if task is not None else None
    if labels is None:
        return _describe(wanted, num_classes, exclusive, soft, imbalanced)
    y = _host(labels, "labels")
    seen = _infer(y, num_classes)
    _agree(seen, wanted, exclusive, soft)
    if wanted == "huge" and seen.situation in ("multiclass", "onehot"):
        seen.situation = "huge"
    elif wanted == "soft" and seen.situation == "onehot":
        seen.situation = "soft"
    elif exclusive is False and seen.situation in ("onehot", "soft"):
        seen.situation = "multilabel"
        seen.total = float(np.prod(seen.shape[:-1]))
    if seen.situation == "huge" and len(seen.shape) >= 2 and seen.shape[-1] == seen.num_classes:
        seen.notes.append("One-hot rows this wide waste memory: the call uses their indices.")
    kwargs, balance = _balance(seen, imbalanced)
    if seen.ignore_index is not None:
        kwargs["ignore_index"] = seen.ignore_index
    kind = y.dtype.kind
    peer = _peer_concept(seen)
    if peer is not None:
        seen.notes.append("The peer calls listed take the one-hot rows as they are.")
    return _recommend(seen.situation, kwargs, _labels_expr(seen, labels, kind),
                      f"Your labels: {seen.what}, shape {list(seen.shape)}.",
                      [balance] + seen.notes, peer_concept=peer,
                      peer_labels=lambda concept: _peer_labels(seen, kind, concept))


def _task(task: Any) -> str:
    if not isinstance(task, str):
        raise TypeError(f"task must be a str, got a {type(task).__name__}")
    key = "".join(ch for ch in task.lower() if ch.isalnum())
    if key not in decisions.TASKS:
        import difflib

        close = difflib.get_close_matches(key, list(decisions.TASKS), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"task must be one of {', '.join(repr(k) for k in decisions.SITUATIONS)}, "
                         f"got {task!r}{hint}")
    return decisions.TASKS[key]


def _agree(seen: _Seen, wanted: str | None, exclusive: bool | None, soft: bool | None) -> None:
    """The description must not contradict the labels."""
    if wanted is not None and _family(wanted) != _family(seen.situation) and not (
            wanted == "multilabel" and seen.situation in ("onehot", "soft")):
        raise ValueError(f"task={wanted!r} does not fit the labels: they are {seen.what} "
                         f"({decisions.SITUATIONS[seen.situation].title})")
    if exclusive is True and seen.situation == "multilabel":
        raise ValueError(f"exclusive=True does not fit the labels: they are {seen.what}")
    if exclusive is False and seen.situation in ("multiclass", "huge"):
        raise ValueError("exclusive=False (multi-label) does not fit integer class indices: "
                         "multi-label needs multi-hot rows [B, C]")
    if soft is True and seen.situation in ("multiclass", "huge", "onehot"):
        raise ValueError(f"soft=True does not fit the labels: they are {seen.what}")
    if soft is False and seen.situation == "soft":
        raise ValueError(f"soft=False does not fit the labels: they are {seen.what}")


# How each library spells the label conversions ``choose`` writes into its calls.
_OPS = {
    "xent": {"float": "{e}", "int": "{e}.astype('int64')", "argmax": "{e}.argmax(-1)",
             "squeeze": "{e}.squeeze(-1)"},
    "torch": {"float": "{e}.to(logits.dtype)", "int": "{e}.long()", "argmax": "{e}.argmax(-1)",
              "squeeze": "{e}.squeeze(-1)"},
    "tensorflow": {"float": "tf.cast({e}, logits.dtype)", "int": "tf.cast({e}, 'int64')",
                   "argmax": "tf.argmax({e}, -1)", "squeeze": "tf.squeeze({e}, -1)"},
    "keras": {"float": "{e}", "int": "{e}", "argmax": "keras.ops.argmax({e}, -1)",
              "squeeze": "{e}"},  # Keras casts y_true and squeezes [B, 1] itself
    "optax": {"float": "{e}", "int": "{e}.astype('int32')", "argmax": "{e}.argmax(-1)",
              "squeeze": "{e}.squeeze(-1)"},
}
_PEER_LIB = {"tensorflow": "tensorflow", "pytorch": "torch", "keras": "keras",
             "optax": "optax"}


def _steps(seen: _Seen, kind: str, lib: str | None, peer_concept: str) -> list[str]:
    """The conversions the labels need before ``lib``'s call (``_OPS`` keys, in order).

    ``lib`` is the labels' library for the xent call (its own methods), or a peer
    library for the peer calls; ``peer_concept`` is the concept whose call takes them.
    """
    dense = peer_concept in ("softmax", "sigmoid", "weighted_sigmoid", "sigmoid_focal")
    if seen.pm1 or dense:
        # float targets: torch and TF want the logits' dtype, the others cast themselves
        return ["float"] if (seen.pm1 or kind in "biu") and lib in ("torch", "tensorflow") \
            else []
    steps = []
    if seen.cast or (kind == "b" and lib in ("torch", "tensorflow")
                     and seen.situation in ("onehot", "huge")):
        steps.append("int")  # float class indices; torch and TF have no argmax for bool
    if seen.situation in ("onehot", "huge") and len(seen.shape) >= 2 \
            and seen.shape[-1] == seen.num_classes:
        steps.append("argmax")
    if (seen.situation in ("multiclass", "huge") and len(seen.shape) >= 2
            and seen.shape[-1] == 1 and seen.num_classes != 1):
        steps.append("squeeze")  # [B, 1] class indices: the sparse loss wants [B]
    return steps


def _apply(steps: list[str], lib: str, expr: str) -> str:
    ops = _OPS[lib if lib in _OPS else "xent"]
    for step in steps:
        if ops[step].startswith("{e}.") and " " in expr:
            expr = f"({expr})"  # a method of the whole expression
        expr = ops[step].format(e=expr)
    return expr


def _labels_expr(seen: _Seen, labels: Any, kind: str) -> str:
    """The labels expression in the xent ``code`` (methods of the labels' own library)."""
    if seen.pm1:
        return "(labels + 1) / 2"
    concept = "sparse_softmax" if seen.situation in ("onehot", "huge") else ""
    lib = library_of(labels)
    return _apply(_steps(seen, kind, lib, concept), lib or "xent", "labels")


def _peer_concept(seen: _Seen) -> str | None:
    """The concept whose peer calls take the user's labels as they are (None: as xent's)."""
    if seen.situation == "onehot":
        return "softmax"  # one-hot rows: the peers' dense (probability-target) calls
    return None


def _peer_labels(seen: _Seen, kind: str, concept: str) -> dict[str, str]:
    """Per peer library, the labels expression its call needs."""
    base = "(labels + 1) / 2" if seen.pm1 else "labels"
    return {field: _apply(_steps(seen, kind, lib, concept), lib, base)
            for field, lib in _PEER_LIB.items()}


def _describe(wanted: str | None, num_classes: int | None, exclusive: bool | None,
              soft: bool | None, imbalanced: bool | None) -> Recommendation:
    """``choose`` from a description alone."""
    if wanted is None:
        if num_classes is None and exclusive is None and soft is None:
            raise ValueError("choose needs labels, or a description: task=, num_classes=, "
                             "exclusive=, soft= (e.g. choose(task='multilabel'))")
        if exclusive is False:
            wanted = "multilabel"
        elif num_classes is not None and num_classes >= decisions.HUGE_CLASSES:
            wanted = "huge"
        elif soft:
            wanted = "soft"
        elif num_classes in (1, 2):
            wanted = "binary"
        else:
            wanted = "multiclass"
    if wanted == "binary" and num_classes not in (None, 1, 2):
        raise ValueError(f"task='binary' means 2 classes, got num_classes={num_classes}")
    if wanted == "multilabel" and exclusive is True:
        raise ValueError("task='multilabel' means exclusive=False, got exclusive=True")
    if wanted in ("binary", "multiclass", "onehot", "soft", "huge") and exclusive is False:
        if wanted != "binary":
            raise ValueError(f"task={wanted!r} means exclusive classes, got exclusive=False")
    if wanted in ("multiclass", "onehot") and soft:
        wanted = "soft"
    if wanted in ("multiclass", "onehot", "soft") and num_classes is not None \
            and num_classes >= decisions.HUGE_CLASSES:
        wanted = "huge"
    if wanted in ("huge",) and soft:
        raise ValueError("soft labels over a huge vocabulary are not supported by the "
                         "memory-light losses, which take class indices")
    s = decisions.SITUATIONS[wanted]
    classes = f" over {num_classes} classes" if num_classes is not None else ""
    notes = []
    kwargs: dict = {}
    extra = ""
    if imbalanced and s.weight is not None:
        extra = "**xent.choose(labels, imbalanced=True).kwargs"
        notes.append(f"Imbalanced: pass {s.weight}, computed from your labels by "
                     f"xent.choose(labels, imbalanced=True): "
                     f"{decisions.WEIGHT_FORMULAS[s.weight]}.")
    if wanted == "onehot":
        notes.append("Described, the one-hot rows go in as they are, so the code runs in "
                     "every library; given the labels themselves, choose writes the "
                     "cheaper sparse call on their indices (labels.argmax(-1), in "
                     "TensorFlow tf.argmax(labels, -1)).")
    return _recommend(wanted, kwargs, "labels",
                      f"Described: {s.title}{classes}; labels are {s.labels}.", notes, extra,
                      peer_concept="softmax" if wanted == "onehot" else None,
                      dense=wanted == "onehot")


def _recommend(situation: str, kwargs: dict, labels_expr: str, seen: str, notes: list,
               extra: str = "", peer_concept: str | None = None,
               peer_labels: Any = None, dense: bool = False) -> Recommendation:
    """The recommendation; ``peer_labels(concept)`` gives each peer's labels expression;
    ``dense`` takes one-hot rows as they are (``softmax_cross_entropy``)."""
    s = decisions.SITUATIONS[situation]
    if dense:
        s = dataclasses.replace(s, function="softmax_cross_entropy",
                                call="xent.softmax_cross_entropy(logits, {labels})",
                                alternatives=("sparse_softmax_cross_entropy",))
    args = "".join(f", {k}={_fmt(v)}" for k, v in kwargs.items())
    if extra:
        args += ", " + extra
    code = s.call.format(labels=labels_expr)[:-1] + args + ")"
    reason = " ".join(p for p in [seen, f"Use {s.function} with logits {s.logits}.", s.why]
                      + notes if p)
    concept = peer_concept or {
        "sigmoid_cross_entropy": "weighted_sigmoid" if "pos_weight" in kwargs
        else "sigmoid"}.get(s.function, decisions.lookup("xent." + s.function).concept)
    e = _concept_equivalents(concept, code)
    exprs = peer_labels(concept) if peer_labels is not None else {
        lib: "labels" for lib in _PEER_LIB}
    calls = {lib: _LABELS_ARG.sub(exprs[lib].replace("\\", "\\\\"), call)
             for lib, call in dataclasses.asdict(e).items() if lib != "xent" and call}
    if "pos_weight" in kwargs or "class_weight" in kwargs:
        calls = _weighted_peers(calls, kwargs, exprs, concept)
    e = dataclasses.replace(e, **{lib: calls.get(lib) for lib in _PEER_LIB})
    return Recommendation(s.function, kwargs, reason, code, s.alternatives, e)


def _weighted_peers(calls: dict, kwargs: dict, exprs: dict, concept: str) -> dict:
    """The peer calls with the suggested weights written in (same number as the xent
    code). Keras and optax losses take no class weights (Keras's are fit()'s
    class_weight=): None for those."""
    out = dict(calls)
    if "pos_weight" in kwargs:
        v = _fmt(kwargs["pos_weight"])
        lits = {"tensorflow": f"tf.constant({v}, logits.dtype)",
                "pytorch": f"torch.tensor({v}, dtype=logits.dtype)"}
        for lib, call in calls.items():
            out[lib] = call.replace("pos_weight=pos_weight", f"pos_weight={lits[lib]}") \
                if lib in lits else None
        return out
    v = _fmt(kwargs["class_weight"])
    tf_w, pt_w = f"tf.constant({v}, logits.dtype)", f"torch.tensor({v}, dtype=logits.dtype)"
    if concept == "sparse_softmax":  # integer labels: the weight of each example's class
        t = exprs["tensorflow"]
        out["tensorflow"] = (f"tf.reduce_sum(tf.gather({tf_w}, {t}) * {calls['tensorflow']}) "
                             f"/ tf.reduce_sum(tf.gather({tf_w}, {t}))")
        out["pytorch"] = calls["pytorch"][:-1] + f", weight={pt_w})"
    else:  # probability rows: weight the labels; the mean divides by the weights' sum
        t, y = exprs["tensorflow"], exprs["pytorch"]
        out["tensorflow"] = (f"tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits("
                             f"labels={t} * {tf_w}, logits=logits)) / "
                             f"tf.reduce_sum({t} * {tf_w})")
        yw = f"{y} * {pt_w}"
        out["pytorch"] = (f"torch.nn.functional.cross_entropy(logits, {yw}, reduction='sum') "
                          f"/ ({yw}).sum()")
    out["keras"] = out["optax"] = None
    return out


#: The ``labels`` argument in a peer call (``labels=labels`` keeps its keyword).
_LABELS_ARG = re.compile(r"\blabels\b(?!=)")


# -- check --------------------------------------------------------------------------------

_FAMILY_OF_CONCEPT = {
    "softmax": "softmax", "softmax_focal": "softmax", "sparse_softmax": "sparse",
    "nll": "sparse", "sigmoid": "sigmoid", "weighted_sigmoid": "sigmoid",
    "sigmoid_focal": "sigmoid", "log_loss": "probabilities",
}


_LABEL_CODES = ("label_out_of_range", "multi_hot_to_softmax", "labels_not_normalized")


def _finding(code: str, detail: str, severity: str | None = None) -> Finding:
    kind = decisions.FINDINGS[code]
    return Finding(code, severity or kind.severity, detail)


def check(logits: Any, labels: Any, /, *, loss: str | None = None) -> list[Finding]:
    """Inspect real logits and labels for the known cross-entropy mistakes.

    Each :class:`Finding` has a ``code`` (the table's ``FINDINGS``), a
    ``severity`` (``"error"``: the loss would be wrong; ``"warning"``: worth a
    look) and a ``message`` that says where and what to do instead:

    - ``probabilities_as_logits``: rows in [0, 1] summing to 1 given as logits
      (softmax applied twice; error), all logits in [0, 1] (warning), or
      logits outside [0, 1] given to ``log_loss`` (error);
    - ``multi_hot_to_softmax``: rows with several 1s under a softmax loss;
    - ``labels_not_normalized``: probability rows under a softmax loss whose
      sum is not 1 within 1e-3 (all-zero rows alone: warning);
    - ``shape_mismatch``: ``[B, 1]`` against ``[B]``, a transposed class axis,
      one class under softmax, or any other misfit;
    - ``label_out_of_range``: an index outside ``[0, C)`` or a probability
      outside [0, 1], with the first bad position;
    - ``non_finite``: NaN, ``+inf``, or ``-inf`` where it makes the loss
      infinite (``-inf`` on classes with label 0 is a legal mask);
    - ``class_imbalance`` (warning): most / least frequent class >= 5, with the
      weights (as ``choose``) that would balance it.

    ``loss`` is the loss you mean to use: any name ``equivalents`` knows
    (``"sparse_softmax_cross_entropy"``, ``"F.cross_entropy"``,
    ``"CategoricalCrossentropy"``, ...). Without it, the shapes and label
    values decide: labels of the logits' shape without the last axis are
    indices (softmax), 0/1 rows with exactly one 1 or rows summing to 1 mean
    softmax, anything else in [0, 1] of the logits' shape means sigmoid.
    Clean data gives no ``"error"`` finding.

    Example:
      >>> import numpy as np, xent
      >>> p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
      >>> [f.code for f in xent.check(p, np.array([0, 1]))]
      ['probabilities_as_logits']
      >>> xent.check(np.log(p), np.array([0, 1]))
      []

    References: the input contracts of ``tf.nn.softmax_cross_entropy_with_logits``
    and ``torch.nn.CrossEntropyLoss`` (logits, not probabilities; labels summing
    to 1); PyTorch ``BCEWithLogitsLoss`` for ``pos_weight``.
    """
    be, logits = backend_of(logits, "logits")
    convert(be, labels, logits, "labels")
    z = _host(logits, "logits")
    y = _host(labels, "labels")
    if z.dtype.kind not in "f" and z.dtype.name != "bfloat16":
        raise TypeError(f"logits must be floating point, got dtype {z.dtype}")
    z = z.astype(np.float64)
    yf = y.astype(np.float64)
    family = _loss_family(loss) if loss is not None else None
    if family == "torch_cross_entropy":  # indices or probabilities, by shape (as PyTorch)
        family = "softmax" if yf.shape == z.shape else "sparse"
    if family is None:
        family = _guess_family(z, yf)
    # -inf logits may mask classes; +inf is harmless only for sigmoid with label 1 (both
    # are judged against the labels below)
    out = _non_finite(z, "logits", allow="-inf" if family != "sigmoid" else "inf")
    out += _non_finite(yf, "labels")
    shape_problem = _shapes(z, yf, family)
    if shape_problem is not None:
        out.append(shape_problem)
        return _ordered(out)
    if z.size == 0:
        return _ordered(out)
    if family == "sparse":
        out += _check_sparse(z, yf)
    else:
        out += _check_dense(z, yf, family)
    return _ordered(out)


def _ordered(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.severity == "error"] + [
        f for f in found if f.severity != "error"]


def _loss_family(loss: Any) -> str:
    entry = decisions.lookup(loss)
    family = _FAMILY_OF_CONCEPT.get(entry.concept)
    if family is None:
        raise ValueError(f"check inspects logits and labels; {loss!r} takes inputs and a "
                         "classifier (or is not in xent): check inputs @ classifier.T with "
                         "loss='sparse_softmax_cross_entropy' instead")
    if entry.name in ("torch.nn.functional.cross_entropy", "torch.nn.CrossEntropyLoss"):
        return "torch_cross_entropy"
    return family


def _guess_family(z: np.ndarray, y: np.ndarray) -> str:
    zs, ys = tuple(z.shape), tuple(y.shape)
    if ys != zs:
        if zs == ys + (1,) or ys == zs + (1,):
            return "sigmoid"
        if z.ndim >= 2 and ys == zs[:-1]:
            return "sparse"
        fin = y[np.isfinite(y)]
        whole = bool(np.all(fin == np.round(fin)))
        if z.ndim >= 2 and whole and (y.ndim == z.ndim - 1 or ys == zs[:-1] + (1,)):
            return "sparse"
        return "sigmoid"
    if z.ndim <= 1 or zs[-1] == 1:
        return "sigmoid"
    rows = y.reshape(-1, ys[-1])
    rows = rows[np.isfinite(rows).all(axis=1)]
    if rows.size == 0:
        return "sigmoid"
    ok = np.abs(rows.sum(axis=1) - 1) <= decisions.ROW_SUM_TOL
    if bool(np.all((rows == 0) | (rows == 1))):
        return "softmax" if ok.all() else "sigmoid"
    return "softmax" if ok.mean() >= 0.5 else "sigmoid"


def _non_finite(x: np.ndarray, name: str, allow: str = "") -> list[Finding]:
    bad = {"": ~np.isfinite(x), "-inf": np.isnan(x) | np.isposinf(x),
           "inf": np.isnan(x)}[allow]
    if not bad.any():
        return []
    p = _pos(bad)
    return [_finding("non_finite", f"{name} hold {x[p]} at position {p} ({int(bad.sum())} "
                     f"non-finite values): find where they come from; padding needs "
                     f"sample_weight 0 (then it contributes exactly 0).")]


def _shapes(z: np.ndarray, y: np.ndarray, family: str) -> Finding | None:
    zs, ys = tuple(z.shape), tuple(y.shape)
    if family in ("softmax",) and zs and zs[-1] == 1:
        return _finding("shape_mismatch", f"logits have shape {zs}: a single class. The "
                        "softmax of one logit is always 1 and the loss always 0; for a "
                        "binary task use sigmoid_cross_entropy on [B] logits.")
    if family == "sparse":
        if len(zs) == 0:
            return _finding("shape_mismatch", "logits are a scalar: sparse softmax needs a "
                            "class axis")
        if zs[-1] == 1:
            return _finding("shape_mismatch", f"logits have shape {zs}: a single class. "
                            "The softmax of one logit is always 1 and the loss always 0; "
                            "for a binary task use sigmoid_cross_entropy on [B] logits.")
        want = zs[:-1]
        if ys == want:
            return None
        if ys == want + (1,):
            return _finding("shape_mismatch", f"labels have shape {ys}, logits {zs}: a "
                            f"trailing axis of size 1; squeeze the labels to {want}.")
        for k in range(len(zs) - 1):
            if zs[:k] + zs[k + 1:] == ys:
                return _finding("shape_mismatch", f"labels have shape {ys}, logits {zs}: "
                                f"the classes seem to be on axis {k}, not last. Pass axis={k} "
                                f"or move the class axis last (e.g. logits.T for 2-D).")
        if ys == zs:
            return _finding("shape_mismatch", f"labels have the logits' shape {zs}: one-hot "
                            "or probability labels need softmax_cross_entropy (or "
                            "labels.argmax(-1) for the sparse loss).")
        return _finding("shape_mismatch", f"labels have shape {ys}; sparse softmax with "
                        f"logits {zs} needs labels of shape {want} (no broadcasting).")
    if ys == zs:
        return None
    if ys == zs + (1,) or zs == ys + (1,):
        small, big = (zs, ys) if ys == zs + (1,) else (ys, zs)
        which = "labels" if ys == big else "logits"
        return _finding("shape_mismatch", f"labels have shape {ys}, logits {zs}: {which} "
                        f"have a trailing axis of size 1; squeeze it so both are {small} "
                        "(broadcasting [B, 1] against [B] would give a [B, B] loss).")
    if len(zs) == 2 and ys == zs[::-1]:
        return _finding("shape_mismatch", f"labels have shape {ys}, logits {zs}: one of them "
                        "is transposed (the class axis must be last in both, or pass axis=).")
    if family in ("softmax",) and ys == zs[:-1]:
        return _finding("shape_mismatch", f"labels have shape {ys}, logits {zs}: integer "
                        "class indices go to sparse_softmax_cross_entropy.")
    return _finding("shape_mismatch", f"labels have shape {ys}, logits {zs}: they must have "
                    "the same shape (no broadcasting).")


def _check_sparse(z: np.ndarray, y: np.ndarray) -> list[Finding]:
    out: list[Finding] = []
    C = z.shape[-1]
    fin = np.isfinite(y)
    frac = fin & (y != np.round(y))
    if frac.any():
        p = _pos(frac)
        return [_finding("label_out_of_range", f"labels hold {y[p]:g} at position {p}: class "
                         "indices must be whole numbers; probability rows need the logits' "
                         "shape and softmax_cross_entropy.")]
    bad = fin & ((y < 0) | (y >= C))
    if bad.any():
        p = _pos(bad)
        v = int(y[p])
        negs = np.unique(y[fin & (y < 0)])
        hint = (f"; if {v} marks padding, pass ignore_index={v}" if v < 0 and len(negs) == 1
                else "")
        out.append(_finding("label_out_of_range", f"labels hold {v} at position {p} "
                            f"({int(bad.sum())} labels outside [0, {C})): class indices must "
                            f"be in [0, {C}){hint}."))
    ok = (fin & ~bad).reshape(-1)
    rows = z.reshape(-1, C)
    idx = np.where(ok, y.reshape(-1), 0).astype(np.int64)
    inf_true = np.isneginf(rows[np.arange(len(rows)), idx]) & ok
    if inf_true.any():
        i = int(np.argmax(inf_true))
        out.append(_finding("non_finite", f"the true class has logit -inf in row {i} (rows "
                            "counted flat): the loss is infinite; unmask the true class or "
                            "give the row sample_weight 0."))
    out += _probabilities(z, "softmax")
    valid = y.reshape(-1)[ok].astype(np.int64)
    if valid.size:
        seen = _Seen("multiclass", C, tuple(y.shape), "", np.bincount(valid, minlength=C),
                     float(valid.size))
        out += _imbalance(seen)
    return out


def _check_dense(z: np.ndarray, y: np.ndarray, family: str) -> list[Finding]:
    out: list[Finding] = []
    fin = np.isfinite(y)
    low, high = y < 0, y > 1
    if family in ("sigmoid", "probabilities") and fin.all() and np.isin(y, (-1, 1)).all() \
            and (y == -1).any():
        p = _pos(y == -1)
        out.append(_finding("label_out_of_range", f"labels are in {{-1, 1}} (-1 at position "
                            f"{p}): cross-entropy labels are in [0, 1]; use (labels + 1) / 2."))
    elif (fin & (low | (high if family != "softmax" else False))).any():
        p = _pos(fin & (low | (high if family != "softmax" else False)))
        rng = "[0, 1]" if family != "softmax" else ">= 0"
        out.append(_finding("label_out_of_range", f"labels hold {y[p]:g} at position {p}: "
                            f"probability labels must be {rng}."))
    if family == "probabilities":
        fz = np.isfinite(z)
        outside = fz & ((z < 0) | (z > 1))
        if outside.any():
            p = _pos(outside)
            out.append(_finding("probabilities_as_logits", f"log_loss takes probabilities but "
                                f"the first argument holds {z[p]:g} at position {p}: these "
                                "are logits; use sigmoid_cross_entropy(logits, labels)."))
        return out + _sigmoid_imbalance(y)
    inf = (np.isneginf(z) & (y > 0)) | (np.isposinf(z) & (y < 1) & (family == "sigmoid"))
    if inf.any():
        p = _pos(inf)
        out.append(_finding("non_finite", f"logits hold {z[p]} at position {p} where the "
                            f"label is {y[p]:g}: the loss is infinite; only classes with "
                            "label 0 may be masked with -inf."))
    out += _probabilities(z, family)
    if family == "softmax":
        out += _rows(y)
        if not any(f.severity == "error" and f.code in _LABEL_CODES for f in out):
            rows = y.reshape(-1, y.shape[-1])
            good = np.isfinite(rows).all(1)
            seen = _Seen("soft", y.shape[-1], tuple(y.shape), "", rows[good].sum(0),
                         float(rows[good].sum()))
            out += _imbalance(seen)
    elif not any(f.code == "label_out_of_range" for f in out):
        out += _sigmoid_imbalance(y)
    return out


def _sigmoid_imbalance(y: np.ndarray) -> list[Finding]:
    ok = np.isfinite(y).all() and ((y >= 0) & (y <= 1)).all()
    if not ok or y.size == 0:
        return []
    if y.ndim <= 1 or y.shape[-1] == 1:
        seen = _Seen("binary", 2, tuple(y.shape), "", np.array([y.sum()]), float(y.size))
    else:
        rows = y.reshape(-1, y.shape[-1])
        seen = _Seen("multilabel", y.shape[-1], tuple(y.shape), "", rows.sum(0),
                     float(len(rows)))
    return _imbalance(seen)


def _imbalance(seen: _Seen) -> list[Finding]:
    kwargs, sentence = _balance(seen, None)
    if not kwargs:
        return []
    (name, value), = kwargs.items()
    shown = value
    if isinstance(value, list) and len(value) > 12:
        shown = _fmt(value[:12])[:-1] + f", ... ({len(value)} values; "
        shown += "xent.choose(labels).kwargs has them all)]"
    else:
        shown = _fmt(value)
    return [_finding("class_imbalance", f"{sentence} Pass {name}={shown}.")]


def _probabilities(z: np.ndarray, family: str) -> list[Finding]:
    fin = z[np.isfinite(z)]
    if fin.size == 0 or not ((fin >= 0) & (fin <= 1)).all():
        return []
    if family == "softmax" and z.ndim >= 1 and z.shape[-1] >= 2 and np.isfinite(z).all():
        sums = z.reshape(-1, z.shape[-1]).sum(1)
        if np.all(np.abs(sums - 1) <= decisions.ROW_SUM_TOL):
            return [_finding("probabilities_as_logits", "every logits row lies in [0, 1] and "
                             "sums to 1: these are probabilities, and the loss would apply "
                             "softmax a second time. Pass the scores from before the softmax, "
                             "or log(probabilities).")]
    if fin.size >= 16:
        what = "sigmoid" if family != "softmax" else "sigmoid or softmax"
        return [_finding("probabilities_as_logits", f"all {fin.size} logits lie in [0, 1]: "
                         f"they look like {what} outputs. Pass the scores from before the "
                         "activation (or use log_loss on probabilities).", "warning")]
    return []


def _rows(y: np.ndarray) -> list[Finding]:
    rows = y.reshape(-1, y.shape[-1])
    good = np.isfinite(rows).all(1)
    is01 = (rows == 0) | (rows == 1)
    several = good & is01.all(1) & (rows.sum(1) > 1)
    if several.any():
        i = int(np.argmax(several))
        return [_finding("multi_hot_to_softmax", f"{int(several.sum())} label rows have "
                         f"several 1s (row {i} has {int(rows[i].sum())}): a softmax loss "
                         "makes classes exclusive. For multi-label use "
                         "sigmoid_cross_entropy(logits, labels).")]
    sums = rows.sum(1)
    off = good & (np.abs(sums - 1) > decisions.ROW_SUM_TOL)
    if not off.any():
        return []
    i = int(np.argmax(off))
    zero = off & (sums == 0)
    if (zero == off).all():
        return [_finding("labels_not_normalized", f"{int(off.sum())} label rows are all zero "
                         f"(row {i}): they contribute 0 to the loss. If they are padding, give "
                         "them sample_weight 0 to say so.", "warning")]
    return [_finding("labels_not_normalized", f"{int(off.sum())} label rows do not sum to 1 "
                     f"(row {i} sums to {sums[i]:.4g}): divide each row by its sum, or use "
                     "sigmoid_cross_entropy if the classes are independent.")]
