"""Keras 3 ``Loss`` classes over xent's losses (TensorFlow, JAX and torch Keras backends).

``import xent`` does not import this module; ``import xent.keras`` imports
Keras. Each class is called in Keras's order, ``loss(y_true, y_pred,
sample_weight=None)``, with ``y_pred`` the logits; ``call`` returns the
per-example loss and Keras applies ``sample_weight`` (per example) and the
reduction (``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
``"mean_with_sample_weight"``, ``"none"``/None) with Keras's meanings. Under
each backend ``y_pred`` is that backend's tensor, which xent's functions take
directly.

With ``ignore_index``, ignored labels contribute 0, and the per-example losses
are rescaled by ``B / M`` (``M`` non-ignored of ``B``) so that Keras's
``"sum_over_batch_size"`` is the mean over the non-ignored labels; an
all-ignored batch gives 0.

Example (TensorFlow backend):

    >>> import numpy as np, xent.keras
    >>> loss = xent.keras.SparseSoftmaxCrossEntropy()
    >>> round(float(loss(np.array([0, 1]), np.zeros((2, 2), np.float32))), 4)
    0.6931
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from . import sigmoid as _sigmoid
from . import softmax as _softmax

__all__ = ["SoftmaxCrossEntropy", "SparseSoftmaxCrossEntropy", "SigmoidCrossEntropy"]


def _list(x: Any) -> Any:
    if x is None:
        return None
    import numpy as np

    return np.asarray(x, dtype=np.float64).tolist()


@keras.saving.register_keras_serializable(package="xent")
class SoftmaxCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on probability (one-hot or soft) labels: ``xent.softmax_cross_entropy``."""

    def __init__(self, *, axis=-1, class_weight=None, label_smoothing=0.0, focal_gamma=0.0,
                 z_loss=0.0, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name or "softmax_cross_entropy", reduction=reduction, dtype=dtype)
        self.axis, self.class_weight = axis, _list(class_weight)
        self.label_smoothing, self.focal_gamma, self.z_loss = label_smoothing, focal_gamma, z_loss

    def _opts(self):
        return dict(axis=self.axis, class_weight=self.class_weight,
                    label_smoothing=self.label_smoothing, focal_gamma=self.focal_gamma,
                    z_loss=self.z_loss)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        return _softmax.softmax_cross_entropy(y_pred, y_true, reduction="none", **self._opts())

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, **self._opts()}


@keras.saving.register_keras_serializable(package="xent")
class SparseSoftmaxCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on integer labels: ``xent.sparse_softmax_cross_entropy``."""

    def __init__(self, *, axis=-1, class_weight=None, label_smoothing=0.0, ignore_index=None,
                 focal_gamma=0.0, z_loss=0.0, reduction="sum_over_batch_size", name=None,
                 dtype=None):
        super().__init__(name=name or "sparse_softmax_cross_entropy", reduction=reduction,
                         dtype=dtype)
        self.axis, self.class_weight = axis, _list(class_weight)
        self.label_smoothing, self.ignore_index = label_smoothing, ignore_index
        self.focal_gamma, self.z_loss = focal_gamma, z_loss

    def _opts(self):
        return dict(axis=self.axis, class_weight=self.class_weight,
                    label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
                    focal_gamma=self.focal_gamma, z_loss=self.z_loss)

    def call(self, y_true, y_pred):
        t = ops.cast(y_true, "int32")
        nd = len(y_pred.shape) - 1
        if len(t.shape) == nd + 1 and t.shape[-1] == 1:  # Keras habit: [B, 1] labels
            t = ops.squeeze(t, axis=-1)
        loss = _softmax.sparse_softmax_cross_entropy(y_pred, t, reduction="none", **self._opts())
        if self.ignore_index is not None:
            valid = ops.cast(ops.not_equal(t, self.ignore_index), loss.dtype)
            total = ops.cast(ops.size(valid), loss.dtype)
            m = ops.sum(valid)
            loss = loss * ops.where(m > 0, total / ops.maximum(m, 1.0), 0.0)
        return loss

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, **self._opts()}


@keras.saving.register_keras_serializable(package="xent")
class SigmoidCrossEntropy(keras.losses.Loss):
    """Sigmoid cross-entropy; per example the mean over the last axis (Keras's BinaryCrossentropy)."""

    def __init__(self, *, pos_weight=None, label_smoothing=0.0, focal_gamma=0.0,
                 reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name or "sigmoid_cross_entropy", reduction=reduction, dtype=dtype)
        self.pos_weight, self.label_smoothing = _list(pos_weight), label_smoothing
        self.focal_gamma = focal_gamma

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        loss = _sigmoid.sigmoid_cross_entropy(
            y_pred, y_true, pos_weight=self.pos_weight, label_smoothing=self.label_smoothing,
            focal_gamma=self.focal_gamma, reduction="none")
        return ops.mean(loss, axis=-1)

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction, "pos_weight": self.pos_weight,
                "label_smoothing": self.label_smoothing, "focal_gamma": self.focal_gamma}
