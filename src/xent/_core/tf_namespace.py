"""A small array-API-style namespace over TensorFlow's own ops (private).

array-api-compat has no TensorFlow namespace, and ``tf.experimental.numpy``
behaviour cannot be switched on without changing every tensor of the user's
program. So the TF backend's ``xp`` is this module: exactly the functions the
losses call, each a TF op (they run eagerly, inside ``tf.function`` and under
``jit_compile=True``, and ``tf.GradientTape`` differentiates them).

TF does not promote dtypes: operands here are cast to the first tensor
argument's dtype where the array API would promote (Python scalars always).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

bool = tf.bool  # noqa: A001 - the array-API name
float32 = tf.float32
float64 = tf.float64
int32 = tf.int32
int64 = tf.int64


def _dtype_of(*xs: Any) -> Any:
    for x in xs:
        if isinstance(x, (tf.Tensor, tf.Variable)):
            return x.dtype
    return None


def asarray(x: Any, dtype: Any = None) -> Any:
    if isinstance(x, (tf.Tensor, tf.Variable)):
        x = tf.convert_to_tensor(x)
        return x if dtype is None or x.dtype == dtype else tf.cast(x, dtype)
    a = np.asarray(x)
    if dtype is None and a.dtype.kind == "f":
        dtype = tf.as_dtype(a.dtype)
    return tf.constant(a, dtype=dtype)


def _pair(a: Any, b: Any) -> tuple[Any, Any]:
    dt = _dtype_of(a, b)
    if dt is None:
        return tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    return tf.cast(a, dt), tf.cast(b, dt)


def where(cond: Any, a: Any, b: Any) -> Any:
    a, b = _pair(a, b)
    return tf.where(cond, a, b)


_BY_DOT: list = []


def by_dot() -> bool:
    """Whether row sums are better taken as products with a vector of ones (on the CPU).

    XLA's CPU backend writes the operand of a reduction out to memory (one
    more ``[..., C]`` buffer and pass) but fuses the elementwise producer of
    a matrix-vector product into its loop, and the product's float32 sum is
    the more accurate (XLA's ``reduce_sum`` of 8M float32 entries in TF 2.21
    was off by 3e-6 relative, the product by 1e-8). On a GPU or TPU
    reductions fuse and a product would go to a library call. Decided once,
    at the first trace, from the devices TensorFlow sees.
    """
    if not _BY_DOT:
        _BY_DOT.append(not (tf.config.list_logical_devices("GPU")
                            or tf.config.list_logical_devices("TPU")))
    return _BY_DOT[0]


def row_sum(x: Any) -> Any:
    """``sum(x, axis=-1)``; on the CPU a product with a vector of ones (:func:`by_dot`)."""
    C = x.shape[-1]
    if not by_dot() or C is None:
        return tf.reduce_sum(x, axis=-1)
    rows = tf.linalg.matvec(tf.reshape(x, (-1, C)), tf.ones((C,), x.dtype))
    return tf.reshape(rows, tf.shape(x)[:-1])


#: below this many entries a whole-array sum is one ``reduce_sum`` (accurate at that size)
_SMALL_TOTAL = 1 << 16


def _total(x: Any) -> Any:
    """The sum of every entry of a float32 / float64 ``x``: by rows (:func:`row_sum`) when large."""
    shape = x.shape
    if (shape.rank is None or shape.rank < 2 or x.dtype not in (tf.float32, tf.float64)
            or shape[-1] is None or shape[-1] < 2
            or (shape.is_fully_defined() and shape.num_elements() < _SMALL_TOTAL)):
        return tf.reduce_sum(x)
    return tf.reduce_sum(row_sum(x))


def sum(x: Any, axis: Any = None, keepdims: Any = False, dtype: Any = None) -> Any:  # noqa: A001
    if dtype is not None:
        x = tf.cast(x, dtype)
    if x.dtype == tf.bool:
        x = tf.cast(x, tf.int64)
    if axis is None and not keepdims:
        return _total(x)
    return tf.reduce_sum(x, axis=axis, keepdims=keepdims)


def mean(x: Any, axis: Any = None, keepdims: Any = False) -> Any:
    if axis is None and not keepdims and x.dtype in (tf.float32, tf.float64):
        return _total(x) / tf.cast(tf.size(x), x.dtype)
    return tf.reduce_mean(x, axis=axis, keepdims=keepdims)


def max(x: Any, axis: Any = None, keepdims: Any = False) -> Any:  # noqa: A001
    return tf.reduce_max(x, axis=axis, keepdims=keepdims)


def min(x: Any, axis: Any = None, keepdims: Any = False) -> Any:  # noqa: A001
    return tf.reduce_min(x, axis=axis, keepdims=keepdims)


def minimum(a: Any, b: Any) -> Any:
    a, b = _pair(a, b)
    return tf.minimum(a, b)


def maximum(a: Any, b: Any) -> Any:
    a, b = _pair(a, b)
    return tf.maximum(a, b)


def logaddexp(a: Any, b: Any) -> Any:
    a, b = _pair(a, b)
    m = tf.maximum(a, b)
    m = tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))
    return m + tf.math.log(tf.exp(a - m) + tf.exp(b - m))


def remainder(a: Any, b: Any) -> Any:
    a, b = _pair(a, b)
    return tf.math.floormod(a, b)


exp = tf.exp
log = tf.math.log
log1p = tf.math.log1p
expm1 = tf.math.expm1
tanh = tf.tanh
abs = tf.abs  # noqa: A001
floor = tf.floor
isinf = tf.math.is_inf
isfinite = tf.math.is_finite
isnan = tf.math.is_nan
zeros_like = tf.zeros_like
ones_like = tf.ones_like
argsort_ = tf.argsort


def reshape(x: Any, shape: Any) -> Any:
    return tf.reshape(x, shape)


def broadcast_to(x: Any, shape: Any) -> Any:
    return tf.broadcast_to(x, shape)


def take(x: Any, idx: Any, axis: Any = None) -> Any:
    if axis is None:
        x, axis = tf.reshape(x, (-1,)), 0
    return tf.gather(x, idx, axis=axis)


def take_along_axis(x: Any, idx: Any, axis: int = -1) -> Any:
    axis = axis % len(x.shape)
    return tf.gather(x, idx, axis=axis, batch_dims=axis)


def astype(x: Any, dtype: Any) -> Any:
    return x if x.dtype == dtype else tf.cast(x, dtype)


def matmul(a: Any, b: Any) -> Any:
    return tf.linalg.matmul(a, b)


def full(shape: Any, fill_value: Any, dtype: Any = None, device: Any = None) -> Any:
    return tf.fill(shape, tf.constant(fill_value, dtype=dtype))


def full_like(x: Any, fill_value: Any, dtype: Any = None) -> Any:
    return tf.fill(tf.shape(x), tf.constant(fill_value, dtype=dtype or x.dtype))


def zeros(shape: Any, dtype: Any = None, device: Any = None) -> Any:
    return tf.zeros(shape, dtype=dtype or tf.float32)


def ones(shape: Any, dtype: Any = None, device: Any = None) -> Any:
    return tf.ones(shape, dtype=dtype or tf.float32)


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None, device: Any = None) -> Any:
    if stop is None:
        start, stop = 0, start
    return tf.range(start, stop, step, dtype=dtype or tf.int64)


def concat(xs: Any, axis: int = 0) -> Any:
    dt = _dtype_of(*xs)
    return tf.concat([tf.cast(x, dt) if dt is not None else x for x in xs], axis=axis)


def cumulative_sum(x: Any, axis: Any = None) -> Any:
    return tf.cumsum(x, axis=0 if axis is None else axis)


def argsort(x: Any, axis: int = -1, stable: Any = True) -> Any:
    return tf.argsort(x, axis=axis, stable=True)


def searchsorted(a: Any, v: Any, side: str = "left") -> Any:
    return tf.searchsorted(a, v, side=side)


def result_type(*dtypes: Any) -> Any:
    names = [tf.as_dtype(d).name for d in dtypes]
    out = np.result_type(*[np.float32 if n == "bfloat16" else n for n in names])
    if "bfloat16" in names and out == np.float32 and all(n in ("bfloat16",) for n in names):
        return tf.bfloat16
    return tf.as_dtype(out)


def squeeze(x: Any, axis: Any = None) -> Any:
    return tf.squeeze(x, axis=axis)


def moveaxis(x: Any, source: int, dest: int) -> Any:
    return tf.experimental.numpy.moveaxis(x, source, dest)


def matrix_transpose(x: Any) -> Any:
    return tf.linalg.matrix_transpose(x)
