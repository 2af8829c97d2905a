"""Effective weights and the five reductions: the only place they live.

Every loss computes a per-element loss ``l_i`` and hands it here with

* ``sample_weight``: the per-element sample weight ``sw_i`` broadcast to the
  element shape, 0 on ignored elements (None means 1 everywhere);
* ``norm``: the normalizing weight ``n_i = sw_i * cw_i`` (None means ``sw_i``);
* ``valid``: True on the elements that are not ignored (None means all).

The reductions (the README's table; each loss's docstring repeats it):

===========================  ====================================================
``"none"``                   ``sw_i * l_i``
``"sum"``                    ``sum_i sw_i * l_i``
``"mean"``                   ``sum_i sw_i * l_i / sum_i n_i`` (0 if the sum is 0)
``"sum_over_batch_size"``    ``sum_i sw_i * l_i / M``, M = non-ignored elements
``"sum_by_nonzero_weights"`` ``sum_i sw_i * l_i / #{i : n_i != 0}``
===========================  ====================================================

With a ``normalizer`` N (only with ``"mean"``; checked by
``validate.normalizer``) the result is ``sum_i sw_i * l_i / N`` instead: the
global denominator of data-parallel training and gradient accumulation.

A zero denominator gives 0 and zero gradients, never NaN.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import math

import numpy as np

from . import validate
from .backend import Backend


def sample_weights(be: Backend, sample_weight: Any, like: Any, shape: tuple[int, ...],
                   dtype: Any, name: str = "sample_weight", ref_name: str = "logits",
                   shaped: Any = None) -> Any:
    """``sample_weight`` as a float array of exactly ``shape`` (or None).

    ``shaped``: a tensor of that shape, whose run-time shape is the target
    where some sizes are unknown until run time (TensorFlow).
    """
    if sample_weight is None:
        return None
    sw = validate.convert(be, sample_weight, like, name, ref_name)
    if not be.is_floating(sw):
        sw = be.astype(sw, dtype)
    validate.broadcastable_to(sw, shape, name, "the per-element loss shape")
    sw = be.astype(sw, dtype)
    validate.in_range(be, sw, 0.0, float("inf"), name, "sample weights must be non-negative")
    if validate.shape_of(sw) != tuple(shape):
        target = tuple(shape) if validate.known(shape) or shaped is None else (
            validate.run_shape(shaped, shape))
        sw = be.xp.broadcast_to(sw, target)
    return sw


def keep_mask(be: Backend, sample_weight: Any, valid: Any) -> Any:
    """True where the element contributes (weight != 0 and not ignored), or None."""
    keep = None
    if sample_weight is not None:
        keep = sample_weight != 0
    if valid is not None:
        keep = valid if keep is None else (keep & valid)
    return keep


def _safe_divide(be: Backend, num: Any, den: Any) -> Any:
    xp = be.xp
    if isinstance(den, (int, float)):
        if den == 0:
            return num * 0
        return num / den
    zero = den == 0
    return xp.where(zero, xp.zeros_like(num), num / xp.where(zero, xp.ones_like(den), den))


def _count(be: Backend, mask: Any, dtype: Any) -> Any:
    return be.xp.sum(be.astype(mask, dtype))


def reduce(be: Backend, loss: Any, *, reduction: str, sample_weight: Any = None,
           norm: Any = None, valid: Any = None, out_dtype: Any = None,
           normalizer: Any = None) -> Any:
    """Apply ``reduction`` to the per-element ``loss`` (see the module docstring)."""
    xp = be.xp
    weighted = loss if sample_weight is None else loss * sample_weight
    if reduction == "none":
        out = weighted
    elif (normalizer is None and sample_weight is None and norm is None and valid is None
          and reduction in ("mean", "sum_over_batch_size", "sum_by_nonzero_weights")
          and validate.known(validate.shape_of(loss)) and 0 not in validate.shape_of(loss)):
        # every element counts 1: the plain mean, one operator (and one backward node)
        out = xp.mean(weighted)
    else:
        total = xp.sum(weighted)
        if normalizer is not None:
            out = _safe_divide(be, total, normalizer)
        elif reduction == "sum":
            out = total
        elif reduction == "mean":
            if norm is not None:
                den = xp.sum(norm)
            elif sample_weight is not None:
                den = xp.sum(sample_weight)
            elif valid is not None:
                den = _count(be, valid, loss.dtype)
            else:
                den = validate.numel(be, loss, loss.dtype)
            out = _safe_divide(be, total, den)
        elif reduction == "sum_over_batch_size":
            den = _count(be, valid, loss.dtype) if valid is not None else (
                validate.numel(be, loss, loss.dtype))
            out = _safe_divide(be, total, den)
        elif reduction == "sum_by_nonzero_weights":
            w = norm if norm is not None else sample_weight
            if w is not None:
                den = _count(be, w != 0, loss.dtype)
            elif valid is not None:
                den = _count(be, valid, loss.dtype)
            else:
                den = validate.numel(be, loss, loss.dtype)
            out = _safe_divide(be, total, den)
        else:  # pragma: no cover - validated by the caller
            raise ValueError(reduction)
    if out_dtype is not None:
        out = be.astype(out, out_dtype)
    return out


class Reduced(NamedTuple):
    """A kernel's result that is already the reduced value (see :func:`plain_reduction`)."""

    value: Any


def plain_reduction(call: Any) -> str | None:
    """``"mean"`` or ``"sum"`` when the call's reduction is the plain mean or sum, else None.

    Plain: no sample weights, normalizing weights, ignored elements or
    normalizer, and at least one element, so every element counts 1 and
    ``"mean"``, ``"sum_over_batch_size"`` and ``"sum_by_nonzero_weights"``
    all divide by the element count. A kernel may then return
    ``Reduced(value)`` from one fused operator (``F.cross_entropy``'s own
    mean: one backward node less than a per-element loss and a mean), and
    :func:`finish` only casts it. A kernel that returns a per-element loss
    instead is reduced as usual.
    """
    red = call.reduction
    if (red == "none" or call.sw is not None or call.norm is not None or call.valid is not None
            or call.normalizer is not None):
        return None
    if red == "sum":
        return "sum"
    shape = validate.shape_of(call.z)
    # a size unknown until run time (TensorFlow) may be 0: the general path's safe division
    return "mean" if validate.known(shape) and 0 not in shape else None


def finish(call: Any, loss: Any) -> Any:
    """Reduce the per-element ``loss`` of a validated call (``xent._core.record``) as it says.

    A :class:`Reduced` loss is the reduced value already: it is only cast to
    the output dtype.
    """
    if type(loss) is Reduced:
        out = loss.value
        if call.out_dtype is None or out.dtype == call.out_dtype:
            return out
        return call.be.astype(out, call.out_dtype)
    return reduce(call.be, loss, reduction=call.reduction, sample_weight=call.sw, norm=call.norm,
                  valid=call.valid, out_dtype=call.out_dtype, normalizer=call.normalizer)


def reduce_total(call: Any, total: Any, n_elements: int) -> Any:
    """The reduction of a kernel that summed ``sw_i * l_i`` itself (not ``"none"``).

    ``total``: that weighted sum, a scalar in the compute dtype; ``n_elements``:
    the number of per-element losses. Divides by exactly the denominator
    :func:`reduce` would use for the same call (a zero one gives 0); the
    result is then wrapped in :class:`Reduced` for :func:`finish` to cast.
    """
    be, red = call.be, call.reduction
    if call.normalizer is not None:
        return _safe_divide(be, total, call.normalizer)
    if red == "sum":
        return total
    w = call.norm if call.norm is not None else call.sw
    if red == "mean" and w is not None:
        den = be.xp.sum(w)
    elif red == "sum_by_nonzero_weights" and w is not None:
        den = _count(be, w != 0, total.dtype)
    elif call.valid is not None:
        den = _count(be, call.valid, total.dtype)
    else:
        den = n_elements
    return _safe_divide(be, total, den)


def ignore_and_weight(be: Backend, labels: Any, ignore_index: Any, sample_weight: Any,
                      like: Any, shape: tuple[int, ...], dtype: Any) -> tuple[Any, Any, Any]:
    """Integer labels with ``ignore_index`` folded into the sample weights.

    Returns ``(labels, sample_weight, valid)``: the labels with ignored entries
    replaced by class 0 (safe to gather), the per-element sample weights with 0
    on ignored elements (a ``where``, so a NaN weight there stays out), and the
    mask of non-ignored elements (None without ``ignore_index``).
    """
    if ignore_index is None and sample_weight is None:
        return labels, None, None  # the default call: every element counts 1
    xp = be.xp
    valid = None
    if ignore_index is not None:
        valid = labels != ignore_index
        labels = xp.where(valid, labels, xp.zeros_like(labels))
    sw = sample_weights(be, sample_weight, like, shape, dtype, shaped=labels)
    if valid is not None:
        sw = be.astype(valid, dtype) if sw is None else xp.where(valid, sw, xp.zeros_like(sw))
    return labels, sw, valid
