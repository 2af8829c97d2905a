"""Independent labels: sigmoid cross-entropy on logits, and log loss on probabilities."""

from __future__ import annotations

from typing import Any

from ._core.hints import hinted
from ._core import reduce
from ._core import validate
from ._core.record import Call
from ._kernels import table as kernels

__all__ = ["sigmoid_cross_entropy", "log_loss"]


def _labels(be, labels, like, shape, cdt, name="labels", ref_name="logits"):
    y = validate.convert(be, labels, like, name, ref_name)
    y = validate.same_shape(y, shape, name, "sigmoid losses take one label per logit, in [0, 1]",
                            be, like)
    if not be.is_floating(y):
        name_ = be.dtype_name(y.dtype)
        if not (name_ == "bool" or name_.startswith("int") or name_.startswith("uint")):
            raise TypeError(f"{name} must be numbers in [0, 1], got dtype {name_}")
    y = be.astype(y, cdt)
    validate.in_range(be, y, 0.0, 1.0, name, "sigmoid labels are probabilities of the positive class")
    return y


def _xlog(be, w, x):
    """``w * log(x)``, and 0 where ``w == 0`` and ``x == 0`` (value and both gradients).

    The double ``where`` keeps ``log`` away from 0 on those entries, so its
    backward pass never computes ``0 / 0``.
    """
    xp = be.xp
    zero = (w == 0) & (x == 0)
    safe = xp.where(zero, xp.ones_like(x), x)
    return xp.where(zero, xp.zeros_like(x), w * xp.log(safe))


@hinted
def sigmoid_cross_entropy(logits: Any, labels: Any, /, *, pos_weight: Any = None,
                          label_smoothing: float = 0.0, focal_gamma: float = 0.0,
                          focal_alpha: Any = None, sample_weight: Any = None,
                          reduction: str = "mean", normalizer: Any = None) -> Any:
    r"""Sigmoid (binary) cross-entropy on logits; every entry its own binary problem.

    Per entry, with ``y' = (1 - s) * y + s / 2`` and ``σ`` the logistic function::

        l = -(pos_weight * y' * log σ(z) + (1 - y') * log(1 - σ(z)))
            * (1 - p_t)**focal_gamma,     p_t = y' σ(z) + (1 - y')(1 - σ(z))

    computed as ``pos_weight * y' * softplus(-z) + (1 - y') * softplus(z)``,
    which never overflows, and ``1 - p_t = y' σ(-z) + (1 - y') σ(z)`` (no
    ``1 - σ(z)`` cancellation). The normalizing weight of ``"mean"`` is the
    sample weight alone: ``pos_weight`` scales the positive term, not the count
    (as PyTorch's ``pos_weight`` and TensorFlow's ``weighted_cross_entropy``).

    Peers: ``"none"`` is TensorFlow's ``sigmoid_cross_entropy_with_logits`` /
    ``weighted_cross_entropy_with_logits`` and optax's
    ``sigmoid_binary_cross_entropy``; with ``focal_gamma`` it is optax's
    ``sigmoid_focal_loss(alpha=None)`` and Keras's ``BinaryFocalCrossentropy``
    without class balancing (Keras clips probabilities at 1e-7, xent does not).
    Their ``alpha`` on hard labels is ``pos_weight=alpha / (1 - alpha)`` with
    ``sample_weight=1 - alpha``. PyTorch's ``binary_cross_entropy_with_logits``
    ``"mean"`` divides by the number of entries whatever ``weight`` is: that is
    xent's ``"sum_over_batch_size"``; xent's ``"mean"`` is the weighted mean
    (TensorFlow's ``MEAN``).

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
      focal_alpha: ``None`` (no class balancing) or ``alpha`` in [0, 1]: the
        loss is multiplied by ``alpha * y + (1 - alpha) * (1 - y)`` (positives
        by ``alpha``, negatives by ``1 - alpha``; torchvision's
        ``sigmoid_focal_loss(alpha=...)``, Keras's ``BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=...)``). Runs the plain composition.
      sample_weight: per-entry weights broadcastable to the logits' shape
        (NumPy rules: trailing axes align, so per-row weights of ``[B, C]``
        logits have shape ``[B, 1]``; a broadcast may not grow the shape).
      reduction: one of the five (see ``xent`` docs); every entry is an element.
      normalizer: None, or a number or scalar array >= 0 (with ``"mean"`` only):
        the result is then ``sum_i sw_i * l_i / normalizer`` (0 gives 0), the
        global count for gradient accumulation and data parallelism.

    Returns:
      The logits' shape for ``"none"``, else a scalar, in the logits' library
      and dtype.

    Numerics: logits of +-1e4 are exact; ``-inf`` logits with label 0 (and
    ``+inf`` with label 1) give 0 loss and 0 gradients (to the labels too, by
    convention). The focal factor has gradient 0 where ``p_t == 1`` (no
    ``0 * inf`` for ``focal_gamma < 1``). float16 / bfloat16 are
    computed in float32. Entries with zero ``sample_weight`` contribute exactly
    0, even with NaN logits or labels.

    Validation (skipped under ``jax.jit`` and ``jax.vmap``): labels outside [0, 1]
    are a ``ValueError`` naming the first position.

    Example:
      >>> import numpy as np, xent
      >>> z = np.array([3.0, -1.0, 0.0])
      >>> y = np.array([1.0, 0.0, 1.0])
      >>> xent.sigmoid_cross_entropy(z, y, reduction="none").round(6)
      array([0.048587, 0.313262, 0.693147])
      >>> # "mean" with pos_weight: (2 * 0.048587 + 0.313262 + 2 * 0.693147) / 3
      >>> round(float(xent.sigmoid_cross_entropy(z, y, pos_weight=2.0)), 6)
      0.59891

    References: TensorFlow ``tf.nn.sigmoid_cross_entropy_with_logits`` and
    ``tf.nn.weighted_cross_entropy_with_logits``; PyTorch
    ``binary_cross_entropy_with_logits``; Lin et al. 2017 (focal loss).
    """
    be, logits = validate.float_array(logits, "logits")
    s = validate.scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    gamma = validate.scalar(focal_gamma, "focal_gamma", low=0.0)
    alpha = None if focal_alpha is None else validate.scalar(focal_alpha, "focal_alpha", low=0.0,
                                                      high=1.0)
    red = validate.reduction(reduction)
    shape = validate.shape_of(logits)
    cdt = be.compute_dtype(logits.dtype)
    y = _labels(be, labels, logits, shape, cdt)
    pw = None
    if pos_weight is not None:
        pw = validate.convert(be, pos_weight, logits, "pos_weight")
        validate.broadcastable_to(pw, shape, "pos_weight", "the logits' shape")
        validate.in_range(be, pw, 0.0, float("inf"), "pos_weight", "pos_weight must be non-negative")
        pw = be.astype(pw, cdt)
    sw = reduce.sample_weights(be, sample_weight, logits, shape, cdt, shaped=logits)
    call = Call(be, logits, y, shape[-1] if shape else 1, cdt, logits.dtype, red, s, gamma,
                pw=pw, alpha=alpha, sw=sw, keep=reduce.keep_mask(be, sw, None),
                normalizer=validate.normalizer(normalizer, red, be, logits, cdt),
                grad_z=be.needs_grad(logits), grad_labels=be.needs_grad(y))
    return reduce.finish(call, kernels.run("sigmoid", call))


@hinted
def log_loss(probabilities: Any, labels: Any, /, *, epsilon: float = 1e-7,
             sample_weight: Any = None, reduction: str = "mean",
             normalizer: Any = None) -> Any:
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
      normalizer: None, or a number or scalar array >= 0 (with ``"mean"`` only):
        the result is then ``sum_i sw_i * l_i / normalizer`` (0 gives 0), the
        global count for gradient accumulation and data parallelism.

    Returns:
      ``[...]`` for ``"none"``, else a scalar, in the input's library and dtype.

    Validation (skipped under ``jax.jit`` and ``jax.vmap``): probabilities or labels
    outside [0, 1] are a ``ValueError`` (for probabilities it says that logits
    belong in :func:`sigmoid_cross_entropy`). Entries with zero
    ``sample_weight`` contribute exactly 0 even when NaN.

    Numerics: ``0 * log(0)`` is 0 in the value and in both gradients, so with
    ``epsilon=0`` a certain, correct prediction (``p = y = 0`` or
    ``p = y = 1``) has loss 0 and the finite one-sided gradient of the other
    term, not NaN. float16 / bfloat16 are computed in float32.

    Example:
      >>> import numpy as np, xent
      >>> p = np.array([0.9, 0.2])
      >>> y = np.array([1.0, 0.0])
      >>> xent.log_loss(p, y, reduction="none").round(6)  # -log(0.9 + 1e-7), -log(0.8 + 1e-7)
      array([0.10536 , 0.223143])
      >>> xent.log_loss(p, y, epsilon=0.0, reduction="none").round(6)
      array([0.105361, 0.223144])

    References: ``tf.compat.v1.losses.log_loss``; scikit-learn ``log_loss``.
    """
    be, p = validate.float_array(probabilities, "probabilities")
    like = p
    eps = validate.scalar(epsilon, "epsilon", low=0.0)
    red = validate.reduction(reduction)
    xp = be.xp
    shape = validate.shape_of(p)
    cdt = be.compute_dtype(p.dtype)
    out_dtype = p.dtype
    validate.in_range(be, p, 0.0, 1.0, "probabilities",
               "log_loss takes probabilities; pass logits to sigmoid_cross_entropy")
    p = be.astype(p, cdt)
    y = _labels(be, labels, like, shape, cdt, ref_name="probabilities")
    sw = reduce.sample_weights(be, sample_weight, like, shape, cdt,
                          ref_name="probabilities", shaped=like)
    keep = reduce.keep_mask(be, sw, None)
    if keep is not None:
        half = xp.full_like(p, 0.5)
        p = xp.where(keep, p, half)
        y = xp.where(keep, y, xp.zeros_like(y))
    loss = -(_xlog(be, y, p + eps) + _xlog(be, 1.0 - y, 1.0 - p + eps))
    return reduce.reduce(be, loss, reduction=red, sample_weight=sw, out_dtype=out_dtype,
                    normalizer=validate.normalizer(normalizer, red, be, like, cdt))
