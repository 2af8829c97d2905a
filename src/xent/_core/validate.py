"""Argument checks and their messages.

Every check names the argument, what was expected and what came. Checks that
need values (label ranges, probabilities in [0, 1]) follow
``xent.value_checks`` (:mod:`xent._core.checks`): they raise, queue a
device-side assertion, or are skipped; under ``jax.jit`` and ``jax.vmap`` the
values are unknown and the check is skipped (an eager ``jax.grad`` or torch
autograd still checks).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import checks
from .backend import Backend, backend_of, describe, library_of

REDUCTIONS = ("none", "sum", "mean", "sum_over_batch_size", "sum_by_nonzero_weights")


def shape_of(x: Any) -> tuple[int | None, ...]:
    """The static shape of ``x`` as a tuple; ``None`` for a size unknown until run time.

    Only TensorFlow has such sizes: a tensor traced in ``tf.function`` with a
    relaxed shape (``TensorSpec([None, C])``, ``reduce_retracing=True``, or
    ``tf.data`` batches, whose batch axis is ``None``: Keras's ``fit``).
    """
    shape = x.shape
    if type(shape) is tuple:  # NumPy, JAX: already Python ints
        return shape
    if isinstance(shape, tuple):  # torch.Size: a tuple of ints already
        return tuple(shape)
    if shape.rank is None:
        raise ValueError(
            f"{describe(x)} has an unknown number of dimensions; xent needs at least the rank "
            "(give tf.function an input_signature, or tf.ensure_shape the tensor)")
    return tuple(None if d is None else int(d) for d in shape)


def known(shape: tuple[int | None, ...]) -> bool:
    """Whether every size of ``shape`` (from :func:`shape_of`) is known before run time."""
    return None not in shape


def compatible(got: tuple, expected: tuple) -> bool:
    """Equal shapes, where an unknown size (``None``) matches any size."""
    return len(got) == len(expected) and all(
        a is None or b is None or a == b for a, b in zip(got, expected))


def run_shape(x: Any, shape: tuple) -> Any:
    """``shape`` when it is known, else the run-time shape of ``x`` (which has that shape)."""
    if known(shape):
        return tuple(shape)
    import tensorflow as tf  # only TensorFlow has sizes unknown before run time

    return tf.shape(x)


def numel(be: Backend, x: Any, dtype: Any) -> Any:
    """The element count of ``x``: a Python int, or a ``dtype`` scalar where sizes are unknown."""
    shape = shape_of(x)
    if known(shape):
        return math.prod(shape)
    return be.astype(be.tf.size(x), dtype)


def _same_at_run_time(be: Backend, x: Any, like: Any, drop: int | None, name: str) -> Any:
    """``x`` held to the run-time shape of ``like`` (less axis ``drop``), with the same rank.

    An in-graph assertion compares the shapes (inside ``tf.function``), and ``x``
    is reshaped to ``like``'s shape: XLA drops assertions, but a reshape to
    another element count fails there too, so a batch of another size is an
    error and never a broadcast.
    """
    tf = be.tf
    sx = tf.shape(x, out_type=tf.int64)
    sl = tf.shape(like, out_type=tf.int64)
    if drop is not None:
        sl = tf.concat([sl[:drop], sl[drop + 1:]], 0)
    be.assert_in_graph(tf.reduce_all(tf.equal(sx, sl)),
                       f"{name} must have the shape of the logits (no broadcasting is done "
                       "between logits and labels)")
    return tf.reshape(x, sl)


def float_array(x: Any, name: str = "logits") -> tuple[Backend, Any]:
    """The backend of ``x`` and ``x``, which must hold floating-point numbers."""
    be, x = backend_of(x, name)
    if not be.is_floating(x):
        dt = be.dtype_name(x.dtype)
        first = (f"; did you pass labels first? xent takes ({name}, labels), the other way "
                 "round from TensorFlow's labels=/logits= and Keras's (y_true, y_pred)"
                 if name in ("logits", "probabilities") and dt.startswith(("int", "uint", "bool"))
                 else "")
        raise TypeError(
            f"{name} must be a floating-point array (float16, bfloat16, float32 or "
            f"float64), got dtype {dt}{first}"
        )
    return be, x


def convert(be: Backend, x: Any, like: Any, name: str, ref_name: str = "logits",
            dtype: Any = None) -> Any:
    """``x`` (an array of ``be``'s library, a NumPy array, list or scalar) as ``be``'s array.

    An array of another library than ``like``'s is a ``TypeError`` naming both.
    """
    if dtype is None and type(x) is type(like):
        return x  # an array of the logits' own type: nothing to convert or check
    lib = library_of(x)
    if lib is not None and lib != be.name and lib != "numpy":
        raise TypeError(
            f"{name} is {describe(x)} but {ref_name} is {describe(like)}; "
            f"pass arrays of one library (NumPy arrays and lists are converted)"
        )
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an array, got {describe(x)}")
    if lib == be.name and dtype is None:
        return x
    try:
        if lib == be.name:
            return be.astype(x, dtype)
        return be.asarray(x, like, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} could not be read as an array: {err}") from None


def scalar(value: Any, name: str, *, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> float:
    """A Python float in the given range, or a clear error."""
    if type(value) is float and (low < value or (value == low and not low_open)) and (
            value < high or (value == high and not high_open)):
        return value  # the common case, checked cheaply (NaN fails both tests)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if library_of(value) is not None and getattr(value, "ndim", 1) == 0:
            try:
                value = float(value)
            except Exception:
                raise TypeError(f"{name} must be a Python number, got a traced array") from None
        else:
            raise TypeError(f"{name} must be a number, got {describe(value)}")
    value = float(value)
    bad_low = value <= low if low_open else value < low
    bad_high = value >= high if high_open else value > high
    if math.isnan(value) or bad_low or bad_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value}")
    return value


def positive_int(value: Any, name: str) -> int:
    """A Python int >= 1 (a count: classes, candidates), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """A bool (Python or NumPy), or a ``TypeError``: no truthy strings or arrays."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def reduction(value: Any) -> str:
    if value not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {', '.join(repr(r) for r in REDUCTIONS)}; got {value!r}"
        )
    return value


def normalizer(value: Any, reduction: str, be: Backend, like: Any, dtype: Any) -> Any:
    """The ``normalizer=`` argument: None, a float >= 0, or a 0-d array of ``dtype``.

    Only ``reduction="mean"`` takes one (the result is then
    ``sum_i sw_i * l_i / normalizer``); a negative value is a ``ValueError``
    (checked on concrete arrays only, never under tracing).
    """
    if value is None:
        return None
    if reduction != "mean":
        raise ValueError(
            f"normalizer replaces the denominator of reduction='mean'; got it with "
            f"reduction={reduction!r} (leave reduction at 'mean' or drop normalizer)")
    if isinstance(value, bool):
        raise TypeError(f"normalizer must be a non-negative number or a scalar array, got {value!r}")
    if isinstance(value, numbers.Real):
        return scalar(value, "normalizer", low=0.0)
    if library_of(value) is None and not isinstance(value, np.ndarray):
        raise TypeError(
            f"normalizer must be a non-negative number or a scalar array, got {describe(value)}")
    arr = convert(be, value, like, "normalizer")
    if not known(shape_of(arr)) or math.prod(shape_of(arr)) != 1:
        raise ValueError(
            f"normalizer must be a scalar (one element), got shape {shape_of(arr)}")
    if be.dtype_name(arr.dtype) == "bool":
        raise TypeError("normalizer must be a number, got a bool array")
    arr = be.astype(be.xp.reshape(arr, ()), dtype)
    in_range(be, arr, 0.0, math.inf, "normalizer", "it is a count or a sum of weights")
    return arr


def axis(value: Any, ndim: int, name: str = "axis") -> int:
    if type(value) is int and -ndim <= value < ndim:  # the common case, checked cheaply
        return value % ndim
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis), got a scalar")
    if not -ndim <= value < ndim:
        raise ValueError(f"{name}={value} is out of range for logits with {ndim} dimensions")
    return int(value) % ndim


def same_shape(labels: Any, expected: tuple[int, ...], name: str, hint: str = "",
               be: Backend | None = None, like: Any = None, drop: int | None = None) -> Any:
    """``labels``, which must have shape ``expected``.

    Sizes unknown until run time (TensorFlow) match any size here; with ``like``
    (a tensor of the expected shape, less its axis ``drop``) the labels returned
    are then held to its run-time shape (:func:`_same_at_run_time`).
    """
    got = shape_of(labels)
    if not (known(got) and known(expected)) and compatible(got, tuple(expected)):
        if be is not None and like is not None:
            return _same_at_run_time(be, labels, like, drop, name)
        return labels
    if got != tuple(expected):
        msg = f"{name} must have shape {tuple(expected)}, got {got}"
        if len(got) == len(expected) + 1 and got[-1] == 1 and got[:-1] == tuple(expected):
            msg += f" (a trailing axis of size 1: squeeze it to {tuple(expected)})"
        elif len(expected) == len(got) + 1 and expected[-1] == 1 and expected[:-1] == got:
            msg += f" (the logits have a trailing axis of size 1: squeeze the logits or reshape {name})"
        if hint:
            msg += f"; {hint}"
        raise ValueError(msg + ". No broadcasting is done between logits and labels.")
    return labels


def broadcastable_to(x: Any, shape: tuple[int, ...], name: str, what: str) -> None:
    """``x`` must broadcast to ``shape`` without growing it."""
    got = shape_of(x)
    if not (known(got) and known(shape)):
        # sizes unknown until run time (TensorFlow): each known size must be 1 or the
        # target's; TensorFlow's own broadcast checks the rest when it runs
        if len(got) <= len(shape) and all(
                a in (1, None) or b is None or a == b
                for a, b in zip(got[::-1], tuple(shape)[::-1])):
            return
        out = None
    else:
        try:
            out = np.broadcast_shapes(got, tuple(shape))
        except ValueError:
            out = None
    if out != tuple(shape):
        msg = f"{name} of shape {got} must broadcast to {what} {tuple(shape)} without changing it"
        if 0 < len(got) < len(shape) and got == tuple(shape)[:len(got)]:
            fix = got + (1,) * (len(shape) - len(got))
            msg += f" (broadcasting aligns trailing axes: for weights along the leading axes use shape {fix})"
        raise ValueError(msg)


def eager(be: Backend, *arrays: Any) -> bool:
    """True when every array has concrete values (not a JAX tracer)."""
    return all(be.is_concrete(a) for a in arrays if a is not None)


def in_range(be: Backend, x: Any, low: float, high: float, name: str, hint: str = "") -> None:
    """Values of ``x`` in [low, high] (NaN passes), as ``xent.value_checks`` says.

    "raise" reads the values and names the first bad position; "async" queues
    a device-side assertion (torch) and reads nothing; "off" does nothing.
    """
    if 0 in shape_of(x):
        return
    mode = checks.mode_for(be, x)
    if mode == "off":
        return
    if hasattr(be, "assert_in_graph") and (mode == "async" or not eager(be, x)):
        # TensorFlow: an in-graph assertion (inside tf.function, or "async")
        be.assert_in_graph(~_outside(x, low, high),
                           f"{name} must be in [{low:g}, {high:g}]" + (f"; {hint}" if hint else ""))
        return
    if mode == "async":
        checks.assert_async(be, ~_outside(x, low, high).any(),
                            f"xent: {name} must be in [{low:g}, {high:g}]" + (f"; {hint}" if hint else ""))
        return
    if not eager(be, x):
        return
    with be.eager_scope():
        x = be.concrete(x)
        if _bounds_hold(be, x, low, high):
            return
        bad = _outside(x, low, high)
        if not be.any(bad):
            return
        pos = be.first_true(bad)
        value = float(be.host(x[pos]))
    msg = f"{name} must be in [{low:g}, {high:g}], got {value:g} at position {pos}"
    raise ValueError(msg + (f"; {hint}" if hint else ""))


def _outside(x: Any, low: float, high: float) -> Any:
    """``(x < low) | (x > high)``, without the comparison an infinite bound makes always False."""
    if high == math.inf:
        return x < low
    if low == -math.inf:
        return x > high
    return (x < low) | (x > high)


def _bounds_hold(be: Backend, x: Any, low: float, high: float) -> bool:
    """True when ``min(x) >= low`` and ``max(x) <= high`` (one reduction, or one per finite bound).

    The check of every call on valid data: no mask of ``x``'s shape is made.
    False (a NaN minimum or maximum, or a value out of range) leaves the
    decision to the elementwise check, which lets NaN pass and names the
    first bad position.
    """
    xp = be.xp
    if low != -math.inf and high != math.inf:
        # both bounds: one pass where the library has it (torch.aminmax)
        lo, hi = be.value_range(x)
        return float(lo) >= low and float(hi) <= high
    if low != -math.inf and not float(be.host(xp.min(x))) >= low:
        return False
    return high == math.inf or float(be.host(xp.max(x))) <= high


def class_indices(be: Backend, labels: Any, num_classes: int, ignore_index: Any,
                  name: str = "labels", shape: Any = None) -> None:
    """Integer labels in [0, num_classes) or equal to ``ignore_index`` (see :func:`in_range`).

    In "raise" mode on valid labels this costs one reduction and two scalar
    reads (``Backend.value_range``: ``torch.aminmax`` and two ``.item()``,
    measured cheaper on CPU than stacking the pair for one ``.tolist()`` or
    two separate ``min``/``max`` reads). The check is not left to
    ``F.nll_loss``: its error names neither the argument nor the first bad
    position, only ignores ``-100``, and on an accelerator it is a device
    assertion, not a ``ValueError``. ``shape``: the labels' shape where the
    caller has it (any sequence of the sizes), else read here.
    """
    if 0 in (shape_of(labels) if shape is None else shape):
        return
    mode = checks.mode_for(be, labels)
    if mode == "raise" and be.is_concrete(labels):
        # the check of every call on valid labels: one reduction, no message
        lo, hi = be.value_range(labels)  # the mask only to name a bad position
        if lo >= 0 and hi < num_classes:
            return
    elif mode == "off":
        return
    extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
    if hasattr(be, "assert_in_graph") and (mode == "async" or not eager(be, labels)):
        # TensorFlow: an in-graph assertion (inside tf.function, or "async")
        bad = (labels < 0) | (labels >= num_classes)
        if ignore_index is not None:
            bad = bad & (labels != ignore_index)
        be.assert_in_graph(~bad, f"{name} must be class indices in [0, {num_classes}){extra}")
        return
    if mode == "async":
        bad = (labels < 0) | (labels >= num_classes)
        if ignore_index is not None:
            bad = bad & (labels != ignore_index)
        checks.assert_async(be, ~bad.any(),
                            f"xent: {name} must be class indices in [0, {num_classes}){extra}")
        return
    if not eager(be, labels):
        return
    with be.eager_scope():
        labels = be.concrete(labels)
        bad = (labels < 0) | (labels >= num_classes)
        if ignore_index is not None:
            bad = bad & (labels != ignore_index)
        if not be.any(bad):
            return
        pos = be.first_true(bad)
        value = int(be.host(labels[pos]))
    hint = ""
    if value < 0 and ignore_index is None:
        hint = (f"; if {value} marks padding, pass ignore_index={value} "
                "(PyTorch's default is -100)")
    raise ValueError(
        f"{name} must be class indices in [0, {num_classes}){extra}, "
        f"got {value} at position {pos}{hint}"
    )


def integer_labels(be: Backend, labels: Any, name: str = "labels", hint: str = "") -> None:
    if not be.is_integer_dtype(labels.dtype):
        msg = f"{name} must hold integer class indices, got dtype {be.dtype_name(labels.dtype)}"
        raise TypeError(msg + (f"; {hint}" if hint else ""))


def ignore_index(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ignore_index must be an int or None, got {describe(value)}")
    return int(value)

