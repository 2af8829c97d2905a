"""Per-class weights, checked and converted once for every loss that takes them."""

from __future__ import annotations

from typing import Any

from . import validate
from .backend import Backend


def class_weight(be: Backend, class_weight: Any, like: Any, num_classes: int, dtype: Any):
    """``class_weight`` as a ``[num_classes]`` array of ``dtype`` (non-negative), or None."""
    if class_weight is None:
        return None
    cw = validate.convert(be, class_weight, like, "class_weight")
    if validate.shape_of(cw) != (num_classes,):
        raise ValueError(
            f"class_weight must have shape ({num_classes},) (one weight per class), "
            f"got {validate.shape_of(cw)}"
        )
    cw = be.astype(cw, dtype)
    validate.in_range(be, cw, 0.0, float("inf"), "class_weight", "class weights must be non-negative")
    return cw
