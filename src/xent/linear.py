"""Exact softmax cross-entropy over a linear classifier, without the ``[N, V]`` logits.

The public :func:`linear_cross_entropy` validates, flattens the inputs to
``[N, D]`` rows, asks a backend kernel for the per-row loss ``l_i`` (computed
chunk by chunk, never holding all logits) and hands it to the one reduction
helper (:mod:`xent._core.reduce`). The kernels live in ``xent._kernels.linear_torch`` (a
``torch.autograd.Function``), ``xent._kernels.linear_jax`` (a ``jax.custom_vjp``) and here
(NumPy, forward only); the per-row formulas they share are defined once below.

Per row, with ``z = x W^T + b`` (soft-capped), ``lse = logsumexp(z)``, ``t`` the
label, ``w`` the class weights (1 without), ``S = sum_c w_c``::

    l     = (1 - s) w_t (lse - z_t) - (s / V) sum_c w_c (z_c - lse) + zl lse^2
    dl/dz = p A - (1 - s) w_t onehot(t) - (s / V) w,   A = (1 - s) w_t + (s / V) S + 2 zl lse

Sums over classes are kept relative to the running row maximum ``m`` (an
online log-sum-exp): ``se = sum_c exp(z_c - m)``, ``sm = sum_c w_c (z_c - m)``,
so ``lse - z_t = log se - (z_t - m)`` and ``sum_c w_c (z_c - lse) = sm - S log se``
never subtract two large numbers.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._core.hints import hinted
from ._core import reduce
from ._core import validate
from ._core import weights
from ._core.backend import Backend, library_of
from ._core.record import LinearCall
from ._kernels import table as kernels
from ._kernels.linear_rows import Opts, default_chunk

__all__ = ["linear_cross_entropy"]

def _options(label_smoothing: Any, z_loss: Any, logit_softcap: Any, reduction: Any,
             chunk_size: Any):
    s = validate.scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    zl = validate.scalar(z_loss, "z_loss", low=0.0)
    cap = None if logit_softcap is None else validate.scalar(
        logit_softcap, "logit_softcap", low=0.0, low_open=True)
    red = validate.reduction(reduction)
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return s, zl, cap, red


def _matrix(be: Backend, value: Any, like: Any, name: str) -> Any:
    """``value`` as ``be``'s array in ``like``'s dtype; same-library arrays must match it."""
    same_lib = library_of(value) == be.name
    arr = validate.convert(be, value, like, name, "inputs")
    if same_lib and arr.dtype != like.dtype:
        raise TypeError(
            f"{name} must have the inputs' dtype {be.dtype_name(like.dtype)}, "
            f"got {be.dtype_name(arr.dtype)}"
        )
    if not same_lib:
        arr = be.astype(arr, like.dtype)
    return arr


@hinted
def linear_cross_entropy(inputs: Any, classifier: Any, labels: Any, /, *, bias: Any = None,
                         ignore_index: int | None = None, label_smoothing: float = 0.0,
                         z_loss: float = 0.0, logit_softcap: float | None = None,
                         class_weight: Any = None, sample_weight: Any = None,
                         reduction: str = "mean", normalizer: Any = None,
                         chunk_size: int | None = None) -> Any:
    r"""Softmax cross-entropy of ``inputs @ classifier.T + bias`` without holding the logits.

    Exactly ``sparse_softmax_cross_entropy(z, labels, ...)`` with
    ``z = inputs @ classifier.T + bias`` (``z = c * tanh(z / c)`` when
    ``logit_softcap=c``), value and gradients for ``inputs``, ``classifier`` and
    ``bias``. Per row, with ``t`` the label, ``w`` the class weights (1
    without), ``s`` the smoothing and ``V`` the number of classes::

        l = -(1 - s) * w_t * log p_t - (s / V) * sum_c w_c * log p_c
            + z_loss * logsumexp(z)**2

    and the normalizing weight ``n_i = sample_weight_i * w_{t_i}``, reduced as
    every xent loss (see :func:`xent.sparse_softmax_cross_entropy`).

    The logits are computed ``chunk_size`` vocabulary columns at a time with an
    online log-sum-exp: extra memory is O(N * chunk_size) + O(N), not O(N * V).
    The forward pass walks the vocabulary once (one product per chunk) and
    saves only ``lse``; the backward pass walks it again, recomputing each
    chunk's logits and adding ``dz W_c`` to the inputs' gradient and
    ``dz^T x`` into the classifier's rows: about four products of the naive
    size per training step instead of three (three with a single chunk), no
    ``[N, V]`` buffer. PyTorch uses a ``torch.autograd.Function`` (any
    device; on the CPU, float32/float64 outside ``torch.compile``, its
    logits products run through NumPy's BLAS, in place on the tensors'
    memory, while torch uses one thread per core), JAX a ``custom_vjp`` over ``lax.scan`` (under ``jax.jit`` XLA
    never sees the whole logits); NumPy computes the loss only. Without an
    input that requires a gradient only the forward pass runs.

    Args:
      inputs: ``[..., D]`` floating-point features (NumPy, torch or JAX; they
        decide the library of the result).
      classifier: ``[V, D]`` class embeddings (the output layer's weight), of
        the inputs' dtype.
      labels: integer class indices of shape ``[...]`` (the inputs' shape
        without ``D``).
      bias: optional ``[V]`` bias.
      ignore_index: a label value whose rows contribute 0 to the loss, every
        gradient and every denominator.
      label_smoothing: ``s`` in [0, 1].
      z_loss: weight of ``logsumexp(z)**2``, scaled by ``sample_weight`` but
        not by class weights.
      logit_softcap: ``c > 0`` caps the logits at ``c * tanh(z / c)`` (Gemma 2).
      class_weight: ``[V]`` non-negative weights (constants: no gradient reaches them).
      sample_weight: per-row weights broadcastable to ``[...]``.
      reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"sum_over_batch_size"`` or
        ``"sum_by_nonzero_weights"``.
      normalizer: None, or a number or scalar array >= 0 (with ``"mean"`` only):
        the result is then ``sum_i sw_i * l_i / normalizer`` (0 gives 0), the
        global count for gradient accumulation and data parallelism.
      chunk_size: the memory budget, as vocabulary columns per chunk: about
        ``N * chunk_size`` logits are held at once (twice that with
        ``logit_softcap``), as ``[N, chunk_size]`` vocabulary chunks or, when
        that allows blocks of at least 128 rows, as token blocks of about
        ``[3/4 N * chunk_size // V, V]`` (torch: the last quarter of the budget
        is left for the BLAS libraries' work space; JAX sizes its blocks to
        XLA's buffers) whose gradients are formed in the forward pass (three
        products per step; see ``xent._kernels.linear_torch``).
        By default 10% of the ``N * V`` logits, at least 4M logits (16 MB).

    Returns:
      ``[...]`` for ``"none"``, else a scalar; the inputs' library and dtype.

    Numerics: with float16 / bfloat16 inputs the products accumulate in
    float32 and the logits, softmax, loss and ``dl/dz`` are float32 (torch's
    classifier-gradient product takes ``dl/dz`` rounded to the inputs' dtype,
    as the naive composition does); the result has the inputs' dtype.
    Logits of +-1e4 are exact (all sums are taken relative to the row
    maximum). Rows that are ignored or have
    zero sample weight contribute exactly 0 even when their inputs are NaN.
    ``-inf`` entries of ``bias`` are masked classes (finite loss while their
    smoothed, weighted label is 0).

    Validation (eager only for label values; under ``jax.jit`` an out-of-range
    label gives an undefined result): shapes (``D`` mismatch, labels not
    ``[...]``, classifier not 2-D, bias not ``[V]``), dtypes, option ranges.

    Example:
      >>> import numpy as np, xent
      >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
      >>> W = np.array([[2.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
      >>> y = np.array([0, 2])
      >>> round(float(xent.linear_cross_entropy(x, W, y, reduction="sum")), 6)
      1.268458
      >>> round(float(xent.sparse_softmax_cross_entropy(x @ W.T, y, reduction="sum")), 6)
      1.268458

    References: Wijmans et al. 2025, "Cut Your Losses in Large-Vocabulary
    Language Models" (Apple ml-cross-entropy); Liger-Kernel's fused linear
    cross-entropy; Milakov & Gimelshein 2018 (online softmax).
    """
    be, x = validate.float_array(inputs, "inputs")
    s, zl, cap, red = _options(label_smoothing, z_loss, logit_softcap, reduction, chunk_size)
    ignore = validate.ignore_index(ignore_index)
    shape = validate.shape_of(x)
    if len(shape) == 0:
        raise ValueError("inputs must have shape [..., D] (at least one dimension), got a scalar")
    D = shape[-1]
    lead = shape[:-1]
    W = _matrix(be, classifier, x, "classifier")
    if len(validate.shape_of(W)) != 2 or validate.shape_of(W)[1] != D:
        raise ValueError(
            f"classifier must have shape [V, D] = [V, {D}] (D from inputs {shape}), "
            f"got {validate.shape_of(W)}"
        )
    nv = validate.shape_of(W)[0]
    if nv == 0:
        raise ValueError("classifier must have at least one class (row), got shape "
                         f"{validate.shape_of(W)}")
    b = None
    if bias is not None:
        b = _matrix(be, bias, x, "bias")
        if validate.shape_of(b) != (nv,):
            raise ValueError(f"bias must have shape ({nv},) (one per class of classifier), "
                             f"got {validate.shape_of(b)}")
    t = validate.convert(be, labels, x, "labels", "inputs")
    t = validate.same_shape(t, lead, "labels",
                            f"inputs are [..., D] = {shape}, so labels must be {lead}",
                            be, x, len(shape) - 1)
    validate.integer_labels(be, t, "labels")
    validate.class_indices(be, t, nv, ignore)

    xp = be.xp
    cdt = be.compute_dtype(x.dtype)
    # rows: -1 where a batch size is unknown until run time (TensorFlow's tf.data
    # batches); the budget's default then counts one row (see tf_chunk)
    n = int(math.prod(lead)) if validate.known(lead) else -1
    t, sw, valid = reduce.ignore_and_weight(be, t, ignore, sample_weight, x, lead, cdt)
    cw = None
    if class_weight is not None:
        cw = be.stop_gradient(weights.class_weight(be, class_weight, x, nv, cdt))
    keep = reduce.keep_mask(be, sw, valid)

    x2 = xp.reshape(x, (n, D))
    if keep is not None:
        x2 = xp.where(xp.reshape(keep, (n, 1)), x2, xp.zeros_like(x2))

    t2 = xp.reshape(be.astype(t, be.index_dtype), (n,))
    w_t = 1.0 if cw is None else xp.take(cw, t2, axis=0)
    o = Opts(nv, default_chunk(max(n, 1), nv, chunk_size), s, zl, cap)
    rows = validate.run_shape(t, lead)  # the labels have the leading shape
    norm = None
    if cw is not None:
        norm = xp.reshape(w_t, rows) if sw is None else xp.reshape(w_t, rows) * sw

    # every reduction but "none" back-propagates c * sample_weight per row (one scalar c)
    g_like = None if red == "none" else (1.0 if sw is None else xp.reshape(sw, (n,)))
    call = LinearCall(be, x2, W, b, t2, w_t, cw, o, cdt, g_like, lead, x.dtype, red, sw=sw,
                      valid=valid, norm=norm,
                      normalizer=validate.normalizer(normalizer, red, be, x, cdt))
    return reduce.finish(call, xp.reshape(kernels.run("linear", call), rows))
