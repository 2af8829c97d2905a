"""Peer-habit hints for the losses' own ``TypeError``s (``weight=``, ``labels=, logits=``).

:func:`hinted` wraps a public loss. The call goes straight through; only when it
raises ``TypeError`` are the keywords looked at, and a keyword a torch, TF or
Keras user would pass (``weight=``, ``weights=``, ``labels=``, ``logits=``,
``y_true=`` ...) turns Python's "unexpected keyword argument" into a message
that says what xent calls it. The happy path costs one extra Python call: no
inspection, no allocation. Errors that have nothing to do with those keywords
are re-raised unchanged.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

#: TF's and Keras's names for the arrays, and the order they imply.
_ARRAY_KEYWORDS = ("labels", "logits", "y_true", "y_pred", "predictions", "targets",
                   "target", "input", "multi_class_labels", "onehot_labels")

_ORDER = ("xent takes the arrays positionally, {call}, not as keywords. "
          "TensorFlow's tf.nn.*(labels=..., logits=...) and Keras's (y_true, y_pred) put "
          "the labels first; xent's order is the other way round, like PyTorch and optax.")


def _weight_hint(fn: str, params: frozenset) -> str:
    where = []
    if "class_weight" in params:
        where.append("PyTorch's per-class weight= is class_weight= here")
    if "sample_weight" in params:
        where.append("per-example (or per-entry) weights are sample_weight= (Keras's "
                     "sample_weight, TensorFlow 1's weights=, PyTorch BCE's weight=)")
    return "; ".join(where) or f"{fn} takes no weights"


def _keyword_hint(fn: str, key: str, params: frozenset) -> str | None:
    """What a peer user meant by keyword ``key``, or None when xent has no idea."""
    if key in ("weight", "weights"):
        return f"{fn} has no {key}= argument: {_weight_hint(fn, params)}."
    if key in ("size_average", "reduce"):
        return (f"{fn} has no {key}= (PyTorch's deprecated arguments): pass "
                "reduction='mean', 'sum' or 'none'.")
    if key == "pos_weight":
        return (f"{fn} has no pos_weight=: pos_weight is for sigmoid_cross_entropy "
                "(independent yes/no labels); exclusive classes take class_weight=.")
    if key == "from_logits":
        return (f"{fn} always takes logits (Keras's from_logits=True); with probabilities "
                "p pass log(p) as the logits, or use log_loss for binary probabilities.")
    return None


@functools.lru_cache(maxsize=None)
def _signature(fn: Callable) -> tuple[tuple[str, ...], frozenset]:
    sig = inspect.signature(fn)
    positional = tuple(p.name for p in sig.parameters.values()
                       if p.kind is inspect.Parameter.POSITIONAL_ONLY)
    keywords = frozenset(p.name for p in sig.parameters.values()
                         if p.kind is not inspect.Parameter.POSITIONAL_ONLY)
    return positional, keywords


def hint(fn: Callable, kwargs: dict) -> str | None:
    """The hint for calling ``fn`` with these keywords, or None (slow path only)."""
    positional, params = _signature(fn)
    name = fn.__name__
    arrays = [k for k in kwargs if k in _ARRAY_KEYWORDS or k in positional]
    if arrays:
        call = f"{name}({', '.join(positional)})"
        return (f"{name}() got the arrays as keywords ({', '.join(k + '=' for k in arrays)}): "
                + _ORDER.format(call=call))
    for key in kwargs:
        if key not in params:
            msg = _keyword_hint(name, key, params)
            if msg is not None:
                return msg
    return None


_SWAPPED = ("; did you pass labels first? xent takes (logits, labels): the first array "
            "holds only 0s and 1s, like labels (Keras's order is (y_true, y_pred))")


def _all_zero_one(x: Any) -> bool:
    """Whether ``x`` holds only 0s and 1s, some 1 among them (read on the error path only)."""
    import numpy as np

    try:
        if hasattr(x, "detach"):  # torch
            x = x.detach().cpu().float().numpy()
        a = np.asarray(x, dtype=np.float64)
    except Exception:  # a tracer, or something NumPy cannot read: no hint
        return False
    # at least one 1: all-zero logits (a fresh model's) are not labels
    return a.size > 0 and bool(np.all((a == 0) | (a == 1))) and bool(np.any(a == 1))


def hinted(fn: Callable | None = None, *, plain: Callable | None = None) -> Callable:
    """``fn`` with peer-habit hints on its errors (same signature and docstring).

    ``TypeError``: the keyword hints above. ``ValueError`` "labels must be in [0, ...]"
    while the first array holds only 0s and 1s: the arrays were passed labels first.

    ``plain``: the loss's short path for a call with two arrays and no keyword
    (every option at its default: the wrapper sees that for free, ``fn``
    would compare each default). ``plain(logits, labels)`` returns the result,
    or None to leave the call to ``fn``; it raises only the errors ``fn``
    would raise (and gets the same hints).
    """
    if fn is None:
        return functools.partial(hinted, plain=plain)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            if plain is not None and not kwargs and len(args) == 2:
                out = plain(*args)
                if out is not None:
                    return out
            return fn(*args, **kwargs)
        except TypeError as err:
            if not kwargs:
                raise
            msg = hint(fn, kwargs)
            if msg is None:
                raise
            raise TypeError(f"{msg} ({err})") from None
        except ValueError as err:
            if not (str(err).startswith("labels must be in [0,") and args
                    and _all_zero_one(args[0])):
                raise
            raise ValueError(f"{err}{_SWAPPED}") from None

    return call
