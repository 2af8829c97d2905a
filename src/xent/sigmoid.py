"""Independent labels: sigmoid cross-entropy on logits, and log loss on probabilities."""

from __future__ import annotations

from typing import Any

from . import _fast
from . import _reduce as R
from . import _validate as V

__all__ = ["sigmoid_cross_entropy", "log_loss"]


def _labels(be, labels, like, shape, cdt, name="labels"):
    y = V.convert(be, labels, like, name)
    V.same_shape(y, shape, name, "sigmoid losses take one label per logit, in [0, 1]")
    if not be.is_floating(y):
        name_ = be.dtype_name(y.dtype)
        if not (name_ == "bool" or name_.startswith("int") or name_.startswith("uint")):
            raise TypeError(f"{name} must be numbers in [0, 1], got dtype {name_}")
    y = be.astype(y, cdt)
    V.in_range(be, y, 0.0, 1.0, name, "sigmoid labels are probabilities of the positive class")
    return y


def _safe_product(be, w, value):
    """``w * value`` that is 0 (value and gradients) where ``w == 0`` and value is inf."""
    xp = be.xp
    bad = (w == 0) & xp.isinf(value)
    return w * xp.where(bad, xp.zeros_like(value), value)


def sigmoid_cross_entropy(logits: Any, labels: Any, /, *, pos_weight: Any = None,
                          label_smoothing: float = 0.0, focal_gamma: float = 0.0,
                          sample_weight: Any = None, reduction: str = "mean") -> Any:
    r"""Sigmoid (binary) cross-entropy on logits; every entry its own binary problem.

    Per entry, with ``y' = (1 - s) * y + s / 2`` and ``σ`` the logistic function::

        l = -(pos_weight * y' * log σ(z) + (1 - y') * log(1 - σ(z)))
            * (1 - p_t)**focal_gamma,     p_t = y' σ(z) + (1 - y')(1 - σ(z))

    computed as ``pos_weight * y' * softplus(-z) + (1 - y') * softplus(z)``,
    which never overflows. The normalizing weight of ``"mean"`` is the sample
    weight alone: ``pos_weight`` scales the positive term, not the count (as
    PyTorch's ``pos_weight`` and TensorFlow's ``weighted_cross_entropy``).

    Args:
      logits: ``[...]`` floating-point scores: ``[B]`` or ``[B, 1]`` for binary
        tasks, ``[B, C]`` for multi-label.
      labels: the logits' exact shape, values in [0, 1] (soft labels allowed,
        bool and integer 0/1 accepted).
      pos_weight: weight of the positive term, broadcastable to the logits
        (usually ``[C]``); TensorFlow's ``pos_weight``, PyTorch's ``pos_weight``.
      label_smoothing: ``s`` in [0, 1]: labels move towards 1/2.
      focal_gamma: the focal exponent (0: plain cross-entropy); with
        ``pos_weight`` it multiplies the weighted loss.
      sample_weight: per-entry weights broadcastable to the logits' shape.
      reduction: one of the five (see ``xent`` docs); every entry is an element.

    Returns:
      The logits' shape for ``"none"``, else a scalar, in the logits' library
      and dtype.

    Numerics: logits of +-1e4 are exact; ``-inf`` logits with label 0 (and
    ``+inf`` with label 1) give 0 loss and 0 gradients. float16 / bfloat16 are
    computed in float32. Entries with zero ``sample_weight`` contribute exactly
    0, even with NaN logits or labels.

    Validation (eager only; skipped under ``jax.jit``): labels outside [0, 1]
    are a ``ValueError`` naming the first position.

    Example:
      >>> import numpy as np, xent
      >>> z = np.array([3.0, -1.0, 0.0])
      >>> y = np.array([1.0, 0.0, 1.0])
      >>> xent.sigmoid_cross_entropy(z, y, reduction="none").round(6)
      array([0.04859 , 0.313262, 0.693147])

    References: TensorFlow ``tf.nn.sigmoid_cross_entropy_with_logits`` and
    ``tf.nn.weighted_cross_entropy_with_logits``; PyTorch
    ``binary_cross_entropy_with_logits``; Lin et al. 2017 (focal loss).
    """
    be, logits = V.float_array(logits, "logits")
    s = V.scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    gamma = V.scalar(focal_gamma, "focal_gamma", low=0.0)
    red = V.reduction(reduction)
    xp = be.xp
    shape = V.shape_of(logits)
    cdt = be.compute_dtype(logits.dtype)
    y = _labels(be, labels, logits, shape, cdt)
    pw = None
    if pos_weight is not None:
        pw = V.convert(be, pos_weight, logits, "pos_weight")
        V.broadcastable_to(pw, shape, "pos_weight", "the logits' shape")
        pw = be.astype(pw, cdt)
    sw = R.sample_weights(be, sample_weight, logits, shape, cdt)
    keep = R.keep_mask(be, sw, None)
    loss = _fast.sigmoid_loss(be, logits, y, pw, keep, s, gamma)
    if loss is None:
        loss = _sigmoid_loss(be, be.astype(logits, cdt), y, pw, keep, s, gamma)
    return R.reduce(be, loss, reduction=red, sample_weight=sw, out_dtype=logits.dtype)


def _sigmoid_loss(be, z, y, pw, keep, s, gamma):
    """The plain composition of the per-entry loss."""
    xp = be.xp
    if keep is not None:
        z = xp.where(keep, z, xp.zeros_like(z))
        y = xp.where(keep, y, xp.zeros_like(y))
    if s != 0.0:
        y = (1.0 - s) * y + 0.5 * s
    pos = y if pw is None else pw * y
    loss = _safe_product(be, pos, be.softplus(-z)) + _safe_product(be, 1.0 - y, be.softplus(z))
    if gamma != 0.0:
        p = be.sigmoid(z)
        loss = loss * (y * (1.0 - p) + (1.0 - y) * p) ** gamma
    return loss


def log_loss(probabilities: Any, labels: Any, /, *, epsilon: float = 1e-7,
             sample_weight: Any = None, reduction: str = "mean") -> Any:
    r"""Binary cross-entropy on probabilities (TensorFlow's ``log_loss``).

    Per entry::

        l = -(y * log(p + ε) + (1 - y) * log(1 - p + ε))

    This is the one loss in xent that takes probabilities; it is for models
    whose outputs are already probabilities. With logits, use
    :func:`sigmoid_cross_entropy`: it is exact where this one is clipped by
    ``ε`` (a probability of 1 - 1e-8 rounds to 1 in float32).

    Args:
      probabilities: ``[...]`` floating-point values in [0, 1].
      labels: the same shape, values in [0, 1].
      epsilon: ``ε`` >= 0, added inside both logarithms.
      sample_weight: per-entry weights broadcastable to the shape.
      reduction: one of the five.

    Returns:
      ``[...]`` for ``"none"``, else a scalar, in the input's library and dtype.

    Validation (eager only; skipped under ``jax.jit``): probabilities or labels
    outside [0, 1] are a ``ValueError`` (for probabilities it says that logits
    belong in :func:`sigmoid_cross_entropy`). Entries with zero
    ``sample_weight`` contribute exactly 0 even when NaN.

    Example:
      >>> import numpy as np, xent
      >>> p = np.array([0.9, 0.2])
      >>> y = np.array([1.0, 0.0])
      >>> xent.log_loss(p, y, reduction="none").round(6)
      array([0.105361, 0.223144])

    References: ``tf.compat.v1.losses.log_loss``; scikit-learn ``log_loss``.
    """
    be, p = V.float_array(probabilities, "probabilities")
    eps = V.scalar(epsilon, "epsilon", low=0.0)
    red = V.reduction(reduction)
    xp = be.xp
    shape = V.shape_of(p)
    cdt = be.compute_dtype(p.dtype)
    out_dtype = p.dtype
    V.in_range(be, p, 0.0, 1.0, "probabilities",
               "log_loss takes probabilities; pass logits to sigmoid_cross_entropy")
    p = be.astype(p, cdt)
    y = _labels(be, labels, probabilities, shape, cdt)
    sw = R.sample_weights(be, sample_weight, probabilities, shape, cdt)
    keep = R.keep_mask(be, sw, None)
    if keep is not None:
        half = xp.full_like(p, 0.5)
        p = xp.where(keep, p, half)
        y = xp.where(keep, y, xp.zeros_like(y))
    loss = -(_safe_product(be, y, xp.log(p + eps)) + _safe_product(be, 1.0 - y, xp.log(1.0 - p + eps)))
    return R.reduce(be, loss, reduction=red, sample_weight=sw, out_dtype=out_dtype)
