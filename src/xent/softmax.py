"""Exclusive classes: softmax cross-entropy with probability or integer labels."""

from __future__ import annotations

from typing import Any

from ._core.hints import hinted
from ._core import reduce
from ._core import validate
from ._core import weights
from ._core.backend import Backend
from ._core.record import Call
from ._kernels import table as kernels

__all__ = ["softmax_cross_entropy", "sparse_softmax_cross_entropy"]


def _options(label_smoothing: Any, focal_gamma: Any, z_loss: Any, reduction: Any):
    s = validate.scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    g = validate.scalar(focal_gamma, "focal_gamma", low=0.0)
    zl = validate.scalar(z_loss, "z_loss", low=0.0)
    return s, g, zl, validate.reduction(reduction)


def _classes(shape: tuple, ax: int) -> int:
    """The class count: the size of the class axis, which must be known before run time."""
    C = shape[ax]
    if C is None:
        raise ValueError(
            f"logits must have a class axis of known size, got shape {shape} (axis {ax} is "
            "unknown until run time); only the batch axes may be None in a tf.function's "
            "input_signature")
    return C


def _prepare(be: Backend, logits: Any, axis: int, shape: tuple[int, ...]):
    """Common set-up: class axis last (in the logits' dtype), and the compute dtype."""
    ax = validate.axis(axis, len(shape))
    if shape[ax] == 0:
        raise ValueError(f"logits must have at least one class along axis {axis}, got shape {shape}")
    z = be.moveaxis(logits, ax, -1) if ax != len(shape) - 1 else logits
    # z keeps the logits' dtype: the fast paths convert chunk by chunk, the
    # plain composition converts to ``cdt`` itself
    cdt = be.compute_dtype(logits.dtype)
    return ax, z, cdt


@hinted
def softmax_cross_entropy(logits: Any, labels: Any, /, *, axis: int = -1,
                          class_weight: Any = None, label_smoothing: float = 0.0,
                          label_gradient: bool = True, focal_gamma: float = 0.0,
                          z_loss: float = 0.0, sample_weight: Any = None,
                          reduction: str = "mean", normalizer: Any = None) -> Any:
    r"""Softmax cross-entropy with one-hot or soft (probability) labels.

    Per element (one row along ``axis``), with ``p = softmax(z)``,
    ``y' = (1 - s) * y + s / C`` and ``w`` the class weights (1 without)::

        l = -sum_c w_c * y'_c * (1 - p_c)**focal_gamma * log p_c
            + z_loss * logsumexp(z)**2

    The reduction then uses ``sample_weight_i`` and the normalizing weight
    ``n_i = sample_weight_i * sum_c w_c * y_ic`` (labels before smoothing), so
    one-hot labels give exactly what :func:`sparse_softmax_cross_entropy` gives
    for their indices.

    Args:
      logits: ``[..., C, ...]`` floating-point scores (not probabilities),
        classes along ``axis``. NumPy, torch or JAX; the result is of the same
        library, device and dtype.
      labels: probabilities of the logits' shape (one-hot or soft). Rows need
        not sum to 1 (TensorFlow's rule); negative entries are a ``ValueError``.
      axis: the class axis.
      class_weight: ``[C]`` non-negative weights ``w_c`` (PyTorch's ``weight``;
        TensorFlow has none for softmax).
      label_smoothing: ``s`` in [0, 1].
      label_gradient: True lets gradients reach ``labels`` (TF's v2 op);
        False treats them as constants (TF's v1 op).
      focal_gamma: the focal exponent (0: plain cross-entropy).
      z_loss: weight of the ``logsumexp(z)**2`` term (PaLM's z-loss); it is
        scaled by ``sample_weight`` but not by class weights.
      sample_weight: per-element weights, broadcastable to ``[...]`` (the
        logits' shape without ``axis``); no broadcast may grow that shape.
      reduction: ``"none"``, ``"sum"``, ``"mean"``, ``"sum_over_batch_size"``
        or ``"sum_by_nonzero_weights"``.
      normalizer: None, or a number or scalar array >= 0 (with ``"mean"`` only):
        the result is then ``sum_i sw_i * l_i / normalizer`` (0 gives 0), the
        global count for gradient accumulation and data parallelism.

    Returns:
      ``[...]`` per-element losses times ``sample_weight`` for ``"none"``,
      else a scalar.

    Gradients: to the logits always; to the labels when ``label_gradient`` is
    True, and then they are the derivative of the whole reduced value, so with
    class weights and ``"mean"`` they include the derivative of the
    denominator ``sum_i n_i`` (which depends on the labels).

    Numerics: ``log p = (z - m) - logsumexp(z - m)`` with ``m`` the row maximum,
    so logits of +-1e4 give the float64 answer (and float32 logits near 1e4
    keep float32 precision). ``-inf`` logits on classes whose (smoothed,
    weighted) label is 0 are masked classes: their term is 0 and its
    gradients (to the logits and to the labels) are 0 by convention; with
    ``label_smoothing > 0`` a masked class gets ``s / C`` and the loss is +inf,
    as the formula says. The focal factor has gradient 0 where ``p_c == 1``
    (no ``0 * inf`` for ``focal_gamma < 1``). float16 / bfloat16 are computed
    in float32 and the result cast back. An element with ``sample_weight == 0``
    contributes exactly 0 to the value and every gradient, even when its
    logits or labels are NaN or infinite.

    Differences from peers: with class weights and soft labels PyTorch's
    ``"mean"`` divides by the batch size; xent divides by ``sum_i n_i`` so that
    one-hot labels and integer labels agree ("none" and "sum" are PyTorch's).
    With labels whose rows do not sum to 1, TensorFlow's gradient is
    ``softmax(z) - y``, which is not the derivative of its own value; xent's is
    ``sum_c(y_c) * softmax(z) - y`` (the values agree).

    Validation (value checks are skipped under ``jax.jit`` and ``jax.vmap``): shapes,
    dtypes, negative labels or class weights.

    Example:
      >>> import numpy as np, xent
      >>> z = np.array([[2.0, 0.0, -1.0]])
      >>> y = np.array([[1.0, 0.0, 0.0]])
      >>> round(float(xent.softmax_cross_entropy(z, y)), 6)
      0.169846

    References: TensorFlow ``tf.nn.softmax_cross_entropy_with_logits``;
    Lin et al. 2017 (focal loss); Chowdhery et al. 2022 (z-loss).
    """
    be, logits = validate.float_array(logits, "logits")
    s, gamma, zl, red = _options(label_smoothing, focal_gamma, z_loss, reduction)
    label_gradient = validate.flag(label_gradient, "label_gradient")
    shape = validate.shape_of(logits)
    ax, z, cdt = _prepare(be, logits, axis, shape)
    y = validate.convert(be, labels, logits, "labels")
    y = validate.same_shape(y, shape, "labels",
                 "integer class indices go to sparse_softmax_cross_entropy", be, logits)
    if not be.is_floating(y):
        if be.dtype_name(y.dtype) == "bool":
            y = be.astype(y, cdt)
        else:
            raise TypeError(
                f"labels must be probabilities (floating point) for softmax_cross_entropy, "
                f"got dtype {be.dtype_name(y.dtype)}; integer class indices go to "
                "sparse_softmax_cross_entropy"
            )
    validate.in_range(be, y, 0.0, float("inf"), "labels", "labels are probabilities")
    y = be.astype(be.moveaxis(y, ax, -1) if ax != len(shape) - 1 else y, cdt)
    if not label_gradient:
        y = be.stop_gradient(y)
    nz = validate.normalizer(normalizer, red, be, logits, cdt)
    C = _classes(shape, ax)
    sw = reduce.sample_weights(be, sample_weight, logits, validate.shape_of(z)[:-1], cdt,
                               shaped=None if validate.known(shape) else z[..., 0])
    cw = weights.class_weight(be, class_weight, logits, C, cdt)
    keep = reduce.keep_mask(be, sw, None)
    norm = None
    if cw is not None:
        # n_i = sw_i * sum_c cw_c y_ic, with the labels of zero-weight rows masked
        # out first (NaN padding there must not reach the denominator)
        xp = be.xp
        yn = y if keep is None else xp.where(keep[..., None], y, xp.zeros_like(y))
        norm = xp.sum(yn * cw, axis=-1)
        if sw is not None:
            norm = norm * sw
    call = Call(be, z, y, C, cdt, logits.dtype, red, s, gamma, zl, cw=cw, sw=sw, keep=keep,
                norm=norm, normalizer=nz, grad_z=be.needs_grad(logits),
                grad_labels=label_gradient and be.needs_grad(y))
    return reduce.finish(call, kernels.run("dense", call))


def _plain_sparse(logits: Any, labels: Any, reduction: str = "mean") -> Any:
    """A sparse call whose options are all at their defaults (but ``reduction``), or None.

    The short path of :func:`sparse_softmax_cross_entropy`: it checks what the
    general path checks, in fewer Python calls, builds the same record
    (classes already last, nothing ignored or weighted) and hands it to the
    table's plain entry (``table.run_plain``). None when anything is
    not the common case (labels of another type than the logits, a wrong shape
    or dtype, no class axis, a class count that is not a Python int, as under
    ``torch.compile`` with dynamic shapes, a shape that is not a tuple, as
    TensorFlow's): the general path then decides, and
    raises its own error. The shapes are compared as the library gives them
    (``torch.Size``: converting them to tuples costs more than the compare).
    The label range is checked by the general path's own
    :func:`validate.class_indices`, so every ``xent.value_checks`` mode behaves
    (and words its errors) exactly as there.
    """
    if type(labels) is not type(logits):
        return None
    pairs = _PLAIN_PAIRS.get(type(logits))
    facts = None if pairs is None else pairs.get((logits.dtype, labels.dtype))
    if facts is None:
        facts = _plain_pair(logits, labels)
        if facts is None:
            return None
    be, cdt, index = facts
    shape, tshape = logits.shape, labels.shape
    if not isinstance(shape, tuple):
        return None  # TensorFlow's TensorShape (maybe of unknown sizes): the general path
    C = shape[-1] if shape else 0
    if type(C) is not int or not C or tshape != shape[:-1]:
        return None
    validate.class_indices(be, labels, C, None, shape=tshape)
    call = Call(be, logits, labels if index is None else be.astype(labels, index), C, cdt,
                logits.dtype, reduction, grad_z=be.needs_grad(logits))
    return reduce.finish(call, kernels.run_plain("sparse", call))


#: array type -> {(logits dtype, labels dtype): (backend, compute dtype, index dtype
#: to convert the labels to or None)}: what the short path needs to know of a
#: dtype pair, decided once (one dict per array type: ``torch.compile`` traces
#: the look-up of a dict whose keys are torch dtypes only)
_PLAIN_PAIRS: dict[type, dict] = {}


def _plain_pair(logits: Any, labels: Any) -> tuple | None:
    """The facts of ``_PLAIN_PAIRS`` for the arrays' dtypes (stored), or None: not a plain pair.

    Floating-point logits (else the ``TypeError`` of the general path, raised
    here first) and integer labels of the same array type.
    """
    be, z = validate.float_array(logits, "logits")
    if z is not logits or not be.is_integer_dtype(labels.dtype):
        return None  # converted (a list): the general path converts the labels too
    index = be.index_dtype
    facts = (be, be.compute_dtype(logits.dtype), None if labels.dtype == index else index)
    _PLAIN_PAIRS.setdefault(type(logits), {})[(logits.dtype, labels.dtype)] = facts
    return facts


@hinted(plain=_plain_sparse)
def sparse_softmax_cross_entropy(logits: Any, labels: Any, /, *, axis: int = -1,
                                 class_weight: Any = None, label_smoothing: float = 0.0,
                                 ignore_index: int | None = None, focal_gamma: float = 0.0,
                                 z_loss: float = 0.0, sample_weight: Any = None,
                                 reduction: str = "mean", normalizer: Any = None) -> Any:
    r"""Softmax cross-entropy with integer class labels.

    Identical, value and gradient, to :func:`softmax_cross_entropy` with the
    one-hot encoding of ``labels``, without building it. Per element, with
    ``p = softmax(z)``, ``t`` the label and ``w`` the class weights::

        l = -(1 - s) * w_t * (1 - p_t)**g * log p_t
            - (s / C) * sum_c w_c * (1 - p_c)**g * log p_c
            + z_loss * logsumexp(z)**2

    and the normalizing weight is ``n_i = sample_weight_i * w_{t_i}``
    (PyTorch's weighted mean for ``"mean"``).

    Args:
      logits: ``[..., C, ...]`` floating-point scores, classes along ``axis``.
      labels: integer class indices of the logits' shape without ``axis``.
      axis: the class axis.
      class_weight: ``[C]`` non-negative class weights.
      label_smoothing: ``s`` in [0, 1].
      ignore_index: a label value whose elements are ignored: they contribute
        0 to the loss, the gradients and every denominator.
      focal_gamma, z_loss, sample_weight, reduction, normalizer: as in
        :func:`softmax_cross_entropy`.

    Returns:
      ``[...]`` for ``"none"``, else a scalar; the logits' library and dtype.

    Numerics: as :func:`softmax_cross_entropy`. Ignored elements and elements
    with zero ``sample_weight`` contribute exactly 0 even with NaN logits. The
    ``"mean"`` of a batch whose elements are all ignored is 0 with zero
    gradients (PyTorch gives NaN).

    Validation (under ``jax.jit`` and ``jax.vmap`` the range check is skipped and an
    out-of-range label gives an undefined result): labels must be integers of
    the right shape, in ``[0, C)`` or equal to ``ignore_index``; the first
    offending position is named.

    Example:
      >>> import numpy as np, xent
      >>> z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
      >>> xent.sparse_softmax_cross_entropy(z, np.array([0, 2]), reduction="none").round(6)
      array([0.169846, 1.098612])

    References: TensorFlow ``tf.nn.sparse_softmax_cross_entropy_with_logits``;
    PyTorch ``torch.nn.functional.cross_entropy``.
    """
    if (class_weight is None and ignore_index is None and sample_weight is None
            and normalizer is None and type(axis) is int and axis == -1
            and type(label_smoothing) is float and type(focal_gamma) is float
            and type(z_loss) is float and not (label_smoothing or focal_gamma or z_loss)
            and reduction in validate.REDUCTIONS):
        out = _plain_sparse(logits, labels, reduction)
        if out is not None:
            return out
    be, logits = validate.float_array(logits, "logits")
    s, gamma, zl, red = _options(label_smoothing, focal_gamma, z_loss, reduction)
    ignore = validate.ignore_index(ignore_index)
    shape = validate.shape_of(logits)
    ax, z, cdt = _prepare(be, logits, axis, shape)
    C = _classes(shape, ax)
    elem_shape = shape[:ax] + shape[ax + 1:]
    t = validate.convert(be, labels, logits, "labels")
    tshape = validate.shape_of(t)
    if not (validate.known(tshape) and validate.known(elem_shape)) and validate.compatible(
            tshape, elem_shape):
        t = validate.same_shape(t, elem_shape, "labels", "", be, logits, ax)
    elif tshape != elem_shape:
        hint = "one-hot or probability labels go to softmax_cross_entropy" if tshape == shape else ""
        if (not hint and len(shape) >= 3 and ax == len(shape) - 1
                and tshape == shape[:1] + shape[2:]):
            hint = "PyTorch's [B, C, T] layout puts the classes on axis 1: pass axis=1"
        validate.same_shape(t, elem_shape, "labels", hint)
    validate.integer_labels(be, t, "labels",
                     "probability labels go to softmax_cross_entropy")
    validate.class_indices(be, t, C, ignore)
    nz = validate.normalizer(normalizer, red, be, logits, cdt)
    t, sw, valid = reduce.ignore_and_weight(be, t, ignore, sample_weight, logits, elem_shape, cdt)
    keep = reduce.keep_mask(be, sw, valid)
    cw = weights.class_weight(be, class_weight, logits, C, cdt)
    t = be.astype(t, be.index_dtype)
    w_t = norm = None
    if cw is not None:
        xp = be.xp
        w_t = xp.reshape(be.take_along_axis(cw, xp.reshape(t, (-1,)), axis=0),
                         validate.run_shape(t, elem_shape))
        norm = w_t if sw is None else w_t * sw
    call = Call(be, z, t, C, cdt, logits.dtype, red, s, gamma, zl, cw=cw, w_t=w_t, sw=sw,
                valid=valid, keep=keep, norm=norm, normalizer=nz, grad_z=be.needs_grad(logits))
    return reduce.finish(call, kernels.run("sparse", call))

