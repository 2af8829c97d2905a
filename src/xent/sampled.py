"""Sampled softmax and NCE: training losses over huge class counts, TensorFlow's semantics.

Both losses score each example against its ``num_true`` true classes and one
set of ``num_sampled`` candidate classes shared by the whole batch, so a step
costs O(N * (num_true + num_sampled) * D) instead of O(N * V * D). They are
estimators for training; evaluate with the full softmax
(:func:`xent.sparse_softmax_cross_entropy` or :func:`xent.linear_cross_entropy`).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

from ._core.hints import hinted
from ._core import reduce
from ._core import validate
from ._core.backend import Backend, describe, get_backend, library_of
from ._core.record import SampledCall
from ._kernels import table
from .samplers import Sample, as_sampler

__all__ = ["sampled_softmax_loss", "nce_loss"]

def _matrix(be: Backend, x: Any, like: Any, name: str, ndim: int, what: str) -> Any:
    if name != "inputs":
        x = validate.convert(be, x, like, name, "inputs")
    if not be.is_floating(x):
        raise TypeError(f"{name} must be floating point, got dtype {be.dtype_name(x.dtype)}")
    if len(validate.shape_of(x)) != ndim:
        raise ValueError(f"{name} must be {what}, got shape {validate.shape_of(x)}")
    return x


def _x_rows(be: Backend, x: Any, ndim: int, T: int) -> Any:
    """A tensor of shape ``[N]`` (``ndim`` 1) or ``[N, T]`` for the ``N`` rows of ``x``."""
    col = x[:, :1] if ndim == 2 else x[:, 0]
    return col if ndim == 1 or T == 1 else be.xp.broadcast_to(col, (be.tf.shape(x)[0], T))


def _labels(be: Backend, labels: Any, like: Any, N: int, T: int, num_classes: int) -> Any:
    t = validate.convert(be, labels, like, "labels", "inputs")
    validate.integer_labels(be, t, "labels")
    shape = validate.shape_of(t)
    want = (N,) if T == 1 and len(shape) == 1 else (N, T)
    if N is None and validate.compatible(shape, want):
        # a batch size unknown until run time (tf.data): held to the inputs' rows
        t = validate.same_shape(t, want, "labels", "", be, _x_rows(be, like, len(want), T))
        if len(shape) == 1:
            t = be.xp.reshape(t, (-1, 1))
    elif shape == (N,) and T == 1:
        t = be.xp.reshape(t, (N, 1))
    elif shape != (N, T):
        hint = ""
        if len(shape) == 2 and shape[0] == N:
            hint = f" (labels have {shape[1]} columns: pass num_true={shape[1]})"
        raise ValueError(
            f"labels must have shape ({N}, num_true={T})"
            + (f" or ({N},)" if T == 1 else "") + f", got {shape}{hint}")
    with be.eager_scope():
        validate.class_indices(be, t, num_classes, None)
    return be.after_checks(be.astype(t, be.index_dtype))


def _sample(be: Backend, sampled: Any, like: Any, N: int, T: int, S: int, num_classes: int):
    """A user's ``sampled`` (a Sample or a 3-tuple) as checked ``be`` arrays."""
    if not isinstance(sampled, tuple) or len(sampled) != 3:
        raise TypeError(
            "sampled must be an xent.samplers.Sample or a 3-tuple (ids, true_expected_count, "
            f"sampled_expected_count), got {describe(sampled)}")
    names = ("sampled.ids", "sampled.true_expected_count", "sampled.sampled_expected_count")
    ids, te, se = (validate.convert(be, a, like, n, "inputs") for a, n in zip(sampled, names))
    if T == 1 and validate.shape_of(te) == (N,):  # a sample drawn for [N] labels
        te = be.xp.reshape(te, (-1, 1))
    for arr, name, shape in ((ids, names[0], (S,)), (te, names[1], (N, T)), (se, names[2], (S,))):
        if N is None and validate.compatible(validate.shape_of(arr), shape):
            continue  # the batch size is unknown until run time: TF checks it when it runs
        if validate.shape_of(arr) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {validate.shape_of(arr)}")
    validate.integer_labels(be, ids, names[0])
    with be.eager_scope():
        validate.class_indices(be, ids, num_classes, None, names[0])
    return Sample(be.after_checks(be.astype(ids, be.index_dtype)), te, se)


def _record(inputs, classifier, labels, bias, num_sampled, num_true, sampler, sampled, rng,
            sample_weight, reduction, normalizer, remove_accidental_hits, subtract_log_q):
    """Validate, sample, and freeze the call into the record both losses' kernels read."""
    be, x = validate.float_array(inputs, "inputs")
    red = validate.reduction(reduction)
    S = validate.positive_int(num_sampled, "num_sampled")
    if isinstance(num_true, bool) or not isinstance(num_true, numbers.Integral) or num_true < 1:
        raise ValueError(f"num_true must be a positive int, got {num_true!r}")
    T = int(num_true)
    x = _matrix(be, x, x, "inputs", 2, "[N, D]")
    W = _matrix(be, classifier, x, "classifier", 2, "[num_classes, D]")
    N, D = validate.shape_of(x)
    C, Dw = validate.shape_of(W)
    if Dw != D:
        raise ValueError(f"classifier must have shape (num_classes, {D}) to match inputs [N, {D}], "
                         f"got {validate.shape_of(W)}")
    b = None
    if bias is not None:
        b = _matrix(be, bias, x, "bias", 1, "[num_classes]")
        if validate.shape_of(b) != (C,):
            raise ValueError(f"bias must have shape ({C},) (one per classifier row), "
                             f"got {validate.shape_of(b)}")
    t = _labels(be, labels, x, N, T, C)
    if sampled is None:
        smp = as_sampler(sampler, C)
        if S > C:
            raise ValueError(
                f"num_sampled={S} is larger than num_classes={C}; the candidates are drawn "
                "without replacement")
        sample = smp.sample(t, S, unique=True, rng=rng)
    else:
        sample = _sample(be, sampled, x, N, T, S, C)
    cdt = be.compute_dtype(be.promote(x.dtype, W.dtype))
    sw = reduce.sample_weights(be, sample_weight, x, (N,), cdt,
                               shaped=None if N is not None else x[:, 0])
    return SampledCall(be, x, W, b, t, sample.ids, sample.true_expected_count,
                       sample.sampled_expected_count, T, cdt, bool(remove_accidental_hits),
                       bool(subtract_log_q), sampled is None, x.dtype, red, sw=sw,
                       normalizer=validate.normalizer(normalizer, red, be, x, cdt))


def _on_inputs_device(fn):
    """Run ``fn`` with new arrays and ops placed on the inputs' device (TensorFlow)."""
    @functools.wraps(fn)
    def wrapper(inputs, *args, **kwargs):
        lib = library_of(inputs)
        if lib is None:
            return fn(inputs, *args, **kwargs)
        with get_backend(lib).device_scope(inputs):
            return fn(inputs, *args, **kwargs)
    return wrapper


_ARGS_DOC = """
    Args:
      inputs: ``[N, D]`` floating-point activations (TF's ``inputs``); they
        decide the library, device and result dtype.
      classifier: ``[num_classes, D]`` output embedding (TF's ``weights``).
      labels: ``[N, num_true]`` integer classes (``[N]`` when ``num_true == 1``),
        in ``[0, num_classes)``.
      num_sampled: how many candidates the batch shares.
      bias: ``[num_classes]`` output biases (TF's ``biases``), or None.
      num_true: true classes per example; each gets target ``1 / num_true``.
      sampler: ``"log_uniform"`` (TF's default; classes sorted by decreasing
        frequency), ``"uniform"`` or an :mod:`xent.samplers` object over
        ``num_classes``. Candidates are drawn without replacement.
      sampled: a precomputed :class:`xent.samplers.Sample` or 3-tuple
        ``(ids [num_sampled], true_expected_count [N, num_true],
        sampled_expected_count [num_sampled])`` (TF's ``sampled_values``);
        ``sampler`` and ``rng`` are then unused and the loss is deterministic.
      remove_accidental_hits: mask sampled candidates that equal one of the
        example's true classes.
      rng: an int seed, ``numpy.random.Generator``, ``torch.Generator`` or JAX
        key (JAX needs one unless ``sampled`` is given).
      sample_weight: ``[N]`` per-example weights (broadcastable to ``[N]``).
      reduction: ``"none"`` (the ``[N]`` losses TF returns), ``"sum"``,
        ``"mean"``, ``"sum_over_batch_size"`` or ``"sum_by_nonzero_weights"``.
      normalizer: None, or a number or scalar array >= 0 (with ``"mean"`` only):
        the result is then ``sum_i sw_i * l_i / normalizer`` (0 gives 0), the
        global count for gradient accumulation and data parallelism.
"""


@hinted
@_on_inputs_device
def sampled_softmax_loss(inputs: Any, classifier: Any, labels: Any, /, *, num_sampled: int,
                         bias: Any = None, num_true: int = 1, sampler: Any = "log_uniform",
                         sampled: Any = None, remove_accidental_hits: bool = True,
                         subtract_log_q: bool = True, rng: Any = None,
                         sample_weight: Any = None, reduction: str = "mean",
             normalizer: Any = None) -> Any:
    call = _record(inputs, classifier, labels, bias, num_sampled, num_true, sampler, sampled, rng,
                   sample_weight, reduction, normalizer, remove_accidental_hits, subtract_log_q)
    return reduce.finish(call, table.run("sampled", call))


@hinted
@_on_inputs_device
def nce_loss(inputs: Any, classifier: Any, labels: Any, /, *, num_sampled: int,
             bias: Any = None, num_true: int = 1, sampler: Any = "log_uniform",
             sampled: Any = None, remove_accidental_hits: bool = False, rng: Any = None,
             sample_weight: Any = None, reduction: str = "mean",
             normalizer: Any = None) -> Any:
    call = _record(inputs, classifier, labels, bias, num_sampled, num_true, sampler, sampled, rng,
                   sample_weight, reduction, normalizer, remove_accidental_hits, True)
    return reduce.finish(call, table.run("nce", call))


sampled_softmax_loss.__doc__ = r"""Sampled softmax loss: softmax over the true classes and shared candidates.

    TensorFlow's ``tf.nn.sampled_softmax_loss``, value and gradients. With
    ``ids`` the ``S = num_sampled`` candidates, ``w_k`` / ``b_k`` the rows of
    ``classifier`` / ``bias`` and ``Q`` the expected counts of the sample::

        t_ij = x_i . w_{y_ij} + b_{y_ij} - log Q(y_ij)          j < num_true
        s_ik = x_i . w_{ids_k} + b_{ids_k} - log Q(ids_k)       k < S
        s_ik = -FLT_MAX   where ids_k is one of example i's labels
                          (remove_accidental_hits; no gradient flows there)
        l_i  = logsumexp([t_i, s_i]) - (1 / num_true) * sum_j t_ij

    (``- log Q`` only when ``subtract_log_q``). ``l_i`` is the softmax
    cross-entropy of ``[t_i, s_i]`` against targets ``1/num_true`` on the true
    columns: a biased estimate of the full softmax cross-entropy whose
    gradient approaches the full one as ``S`` grows (Jean et al. 2015).
""" + _ARGS_DOC + r"""
    Returns:
      ``[N]`` for ``"none"``, else a scalar; the inputs' library, device and dtype.

    Numerics and cost: only the ``N * num_true + S`` rows of ``classifier``
    that are used are gathered (their gradient is a scatter into those rows;
    torch and JAX hold it in a dense ``[num_classes, D]`` gradient as for any
    gather; TensorFlow's ``GradientTape`` gives ``tf.IndexedSlices`` of those
    rows, as ``tf.nn.sampled_softmax_loss`` does); no ``[N, num_classes]`` array is ever made. The logsumexp
    subtracts the row maximum. float16 / bfloat16 are computed in float32 and
    the result cast back. Examples with ``sample_weight == 0`` contribute 0
    to the loss and every gradient, even with NaN inputs. The expected counts
    and ids get no gradient. On torch the sampled columns are one fused
    autograd node (first-order gradients; no double backward).

    Training only: the loss is biased and much smaller than the full softmax
    cross-entropy; evaluate with the full softmax.

    Differences from TensorFlow: candidates are drawn with xent's samplers
    (same distributions and expected counts, another random stream; ``rng``
    instead of ``seed``). Given a ``sampled`` whose ids repeat (a sampler
    called with ``unique=False``), every repeat of an accidental hit is
    removed; TensorFlow's ``compute_accidental_hits`` removes only the last.
    Inputs must be ``[N, D]``, as in TensorFlow; sharded ``weights`` lists
    (``partition_strategy``) are not supported: pass one ``[V, D]`` array.

    Validation: labels of the wrong shape or outside ``[0, num_classes)``,
    ``num_sampled > num_classes``, ``sampled`` arrays of the wrong shapes are
    ``ValueError`` (range checks need concrete values: under ``jax.jit`` they
    are skipped for traced labels; inside ``tf.function`` they are in-graph
    assertions, which ``jit_compile=True`` drops). Under ``jax.jit`` pass
    ``rng`` a key argument, under ``tf.function`` a seed tensor ``[2]`` or a
    ``tf.random.Generator``: the sampler is traced into the function.

    Example:
      >>> import numpy as np, xent
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
      >>> W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
      >>> s = xent.samplers.Sample(np.array([2, 3]), np.ones((2, 1)), np.ones(2))
      >>> xent.sampled_softmax_loss(x, W, np.array([0, 1]), num_sampled=2, sampled=s,
      ...                           reduction="none").round(6)
      array([0.758624, 0.861995])

    References: TensorFlow ``tf.nn.sampled_softmax_loss``; Jean et al. 2015,
    "On Using Very Large Target Vocabulary for Neural Machine Translation".
    """

nce_loss.__doc__ = r"""Noise-contrastive estimation: sigmoid cross-entropy on true and shared candidates.

    TensorFlow's ``tf.nn.nce_loss``, value and gradients. With the logits
    ``t_ij`` (true) and ``s_ik`` (sampled) of :func:`sampled_softmax_loss`,
    always with ``- log Q`` subtracted::

        l_i = sum_j [ (1/T) softplus(-t_ij) + (1 - 1/T) softplus(t_ij) ]
              + sum_k softplus(s_ik)

    i.e. the sigmoid cross-entropy of every column, with target ``1/T``
    (``T = num_true``) on the true columns and 0 on the sampled ones, summed
    per example. With ``remove_accidental_hits`` a candidate equal to one of
    the example's labels gets logit ``-FLT_MAX``: it adds 0 and gets no gradient
    (TensorFlow's default is False, and so is xent's: such hits count as
    noise).
""" + _ARGS_DOC + r"""
    Returns:
      ``[N]`` for ``"none"``, else a scalar; the inputs' library, device and dtype.

    Numerics: ``softplus`` never overflows; costs, dtypes, zero-weight rows,
    validation and the differences from TensorFlow as
    :func:`sampled_softmax_loss`.

    Training only: NCE's per-example loss is not a normalized log-likelihood;
    evaluate with the full softmax.

    Example:
      >>> import numpy as np, xent
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
      >>> W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
      >>> s = xent.samplers.Sample(np.array([2, 3]), np.ones((2, 1)), np.ones(2))
      >>> xent.nce_loss(x, W, np.array([0, 1]), num_sampled=2, sampled=s,
      ...               reduction="none").round(6)
      array([1.939785, 2.319671])

    References: TensorFlow ``tf.nn.nce_loss``; Gutmann and Hyvärinen 2010;
    Mnih and Teh 2012.
    """
