"""Which library an array belongs to, and the stable primitives every loss uses.

A loss never imports torch or jax itself: it asks :func:`backend_of` for the
:class:`Backend` of its first array and computes with ``be.xp`` (the
array-API namespace from ``array_api_compat``) plus the primitives below.
Each primitive uses the library's own fused kernel where one exists
(``torch.logsumexp``, ``jax.nn.log_softmax``), so gradients come from the
library's autodiff and stay exact.

The libraries are imported lazily: ``import xent`` costs neither torch nor jax.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np

__all__ = ["Backend", "backend_of", "library_of", "to_numpy", "describe"]

_LOW_PRECISION = ("float16", "bfloat16")


def _torch_loaded() -> bool:
    return "torch" in sys.modules


def _jax_loaded() -> bool:
    return "jax" in sys.modules


def _tf_loaded() -> bool:
    return "tensorflow" in sys.modules


def _is_tf(x: Any) -> bool:
    import tensorflow as tf

    return isinstance(x, (tf.Tensor, tf.Variable))


def library_of(x: Any) -> str | None:
    """``"numpy"``, ``"torch"``, ``"jax"``, ``"tensorflow"`` for arrays of those libraries, else None.

    NumPy scalars count as NumPy; Python scalars and lists are None (they are
    converted to whatever library the logits decide).
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return "numpy"
    if _torch_loaded():
        import torch

        if isinstance(x, torch.Tensor):
            return "torch"
    if _jax_loaded():
        import jax

        if isinstance(x, jax.Array):
            return "jax"
    if _tf_loaded() and _is_tf(x):
        return "tensorflow"
    return None


def describe(x: Any) -> str:
    """A short human name for the type of ``x``, for error messages."""
    lib = library_of(x)
    if lib == "numpy":
        return "a numpy.ndarray"
    if lib == "torch":
        return "a torch.Tensor"
    if lib == "jax":
        return "a jax.Array"
    if lib == "tensorflow":
        return "a tf.Variable" if type(x).__name__.endswith("Variable") else "a tf.Tensor"
    n = type(x).__name__
    return f"{'an' if n[:1].lower() in 'aeiou' else 'a'} {n}"


def to_numpy(x: Any) -> np.ndarray:
    """Any supported array (or list / scalar) as a NumPy array, on the host.

    bfloat16 torch tensors come back as float32 (NumPy has no bfloat16).
    """
    lib = library_of(x)
    if lib == "torch":
        import torch

        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    if lib == "jax":
        return np.asarray(x)
    if lib == "tensorflow":
        import tensorflow as tf

        if x.dtype == tf.bfloat16:
            x = tf.cast(x, tf.float32)
        return np.asarray(x.numpy())
    return np.asarray(x)


class Backend:
    """The array library of one call, with the primitives the losses need."""

    name: str = "numpy"
    #: how ``xent.parallel`` reaches the other ranks: ``"group"`` (a
    #: torch.distributed process group, eager collectives), ``"axis_name"``
    #: (a mesh axis inside ``jax.shard_map``), or None (no vocabulary parallelism)
    collective: str | None = None
    _compute_dtypes: dict | None = None
    _integer_dtypes: dict | None = None

    def __init__(self) -> None:
        import array_api_compat.numpy as xp

        self.xp = xp

    # -- dtypes -----------------------------------------------------------
    def dtype_name(self, dtype: Any) -> str:
        return np.dtype(dtype).name if not isinstance(dtype, str) else dtype

    def is_floating(self, x: Any) -> bool:
        return np.dtype(x.dtype).kind == "f" or self.dtype_name(x.dtype) == "bfloat16"

    def compute_dtype(self, dtype: Any) -> Any:
        """float16 / bfloat16 are computed in float32; others as they are.

        The one place this rule is written; decided once per dtype.
        """
        if self._compute_dtypes is None:
            self._compute_dtypes = {}
        cdt = self._compute_dtypes.get(dtype)
        if cdt is None:
            cdt = self.float32 if self.dtype_name(dtype) in _LOW_PRECISION else dtype
            self._compute_dtypes[dtype] = cdt
        return cdt

    def is_integer_dtype(self, dtype: Any) -> bool:
        """Whether ``dtype`` holds integers (signed or unsigned; bool is not one).

        Decided once per dtype, in a cache of this backend instance's own (as
        :meth:`compute_dtype`: ``torch.compile`` traces the lookup, and a
        cache shared with TensorFlow's dtypes would not trace).
        """
        if self._integer_dtypes is None:
            self._integer_dtypes = {}
        known = self._integer_dtypes.get(dtype)
        if known is None:
            known = self._integer_dtypes[dtype] = self.dtype_name(dtype).startswith(("int", "uint"))
        return known

    @property
    def float32(self) -> Any:
        return np.float32

    def is_low_precision(self, dtype: Any) -> bool:
        return self.dtype_name(dtype) in _LOW_PRECISION

    @property
    def index_dtype(self) -> Any:
        """The integer dtype of class indices and sampled ids (the library's 64-bit int).

        Written once for every loss and sampler; a subclass overrides it only
        where the library's default integer differs (JAX without x64: int32).
        """
        return self.xp.int64

    # -- conversion -------------------------------------------------------
    def asarray(self, x: Any, like: Any, dtype: Any = None) -> Any:
        """``x`` as an array of this library, on ``like``'s device."""
        return np.asarray(x, dtype=dtype)

    def astype(self, x: Any, dtype: Any) -> Any:
        return x if x.dtype == dtype else x.astype(dtype)

    # -- tracing ----------------------------------------------------------
    def is_concrete(self, x: Any) -> bool:
        """False when ``x`` is a JAX tracer whose values are unknown."""
        return True

    def concrete(self, x: Any) -> Any:
        """``x`` with known values as an array that eager ops run on (see ``is_concrete``)."""
        return x

    def eager_scope(self) -> Any:
        """A context in which ops on concrete arrays run eagerly, also inside ``jax.jit``."""
        return contextlib.nullcontext()

    def host(self, x: Any) -> np.ndarray:
        """The values of ``x`` as a NumPy array (eager only: ``is_concrete(x)``)."""
        return to_numpy(x)

    # -- value checks (``xent.value_checks``, :mod:`xent._core.checks`) ------
    def on_host(self, x: Any) -> bool:
        """Whether ``x``'s values are in host memory (reading them stalls nothing)."""
        return True

    def tracing(self, x: Any) -> bool:
        """Whether ``x`` is being traced (``jax.jit``, ``torch.compile``, ``tf.function``)."""
        return not self.is_concrete(x)

    def async_mode(self, tracing: bool) -> str:
        """What the "async" value-check mode becomes: "async", "raise" or "off".

        NumPy has no device to queue an assertion on: it raises.
        """
        return "raise"

    def assert_async(self, ok: Any, message: str) -> None:
        """Queue a device-side assertion that the boolean scalar ``ok`` holds (torch only)."""

    def any(self, mask: Any) -> bool:
        """``bool(mask.any())`` (eager only)."""
        return bool(np.any(self.host(mask)))

    def first_true(self, mask: Any) -> tuple[int, ...]:
        """The index of the first True entry of ``mask`` (eager only)."""
        return tuple(int(i) for i in np.argwhere(self.host(mask))[0])

    # -- math -------------------------------------------------------------
    def stop_gradient(self, x: Any) -> Any:
        return x

    def logsumexp(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        m = np.max(x, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):
            out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
        return out if keepdims else np.squeeze(out, axis=axis)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        return x - self.logsumexp(x, axis=axis, keepdims=True)

    def logsumexp_shifted(self, x: Any, axis: int = -1) -> Any:
        """``logsumexp(x)`` (keepdims) for ``x`` already shifted by its row maximum.

        The library's ``logsumexp`` subtracts the maximum again; JAX overrides
        this with the direct ``log(sum(exp(x)))``, which XLA fuses into one pass.
        """
        return self.logsumexp(x, axis=axis, keepdims=True)

    def log_normalizer(self, z: Any) -> tuple[Any, Any, Any]:
        """``(z - m, logsumexp(z - m), m)`` along the last axis, ``m`` the row maximum.

        ``log p = (z - m) - logsumexp(z - m)``: the shift ``z - m`` is exact and
        the log-sum is at most ``log C``, so no rounding of a huge
        ``logsumexp(z)`` reaches ``log p`` (float32 logits near -1e4 keep
        float32 precision; the unshifted ``z - logsumexp(z)`` loses three
        digits there). ``m`` is a constant for autodiff (the loss does not
        depend on it); a non-finite row maximum is replaced by 0.
        """
        xp = self.xp
        m = xp.max(z, axis=-1, keepdims=True)
        m = self.stop_gradient(xp.where(xp.isfinite(m), m, xp.zeros_like(m)))
        zs = z - m
        return zs, self.logsumexp_shifted(zs, axis=-1), m

    def label_log_prob(self, z: Any, t: Any, normalizer: Any = None) -> Any:
        """``log softmax(z)[..., t]`` (``[...]``) for integer labels ``t`` (``be.index_dtype``).

        ``normalizer``: ``log_normalizer(z)`` when the caller already has it.
        Gathered from ``z``, not ``z - m``: the same numbers, but XLA then need
        not write the shifted logits to memory for the gather.
        """
        zs, lse_s, m = self.log_normalizer(z) if normalizer is None else normalizer
        return ((self.take_along_axis(z, t[..., None], axis=-1) - m) - lse_s)[..., 0]

    def label_nll(self, z: Any, t: Any) -> Any:
        """``-log softmax(z)[..., t]``: the negative log-likelihood of integer labels."""
        return -self.label_log_prob(z, t)

    def label_nll_reduced(self, z: Any, t: Any, reduction: str) -> Any:
        """The ``"mean"`` or ``"sum"`` of :meth:`label_nll` over every element."""
        nll = self.label_nll(z, t)
        return self.xp.mean(nll) if reduction == "mean" else self.xp.sum(nll)

    def matmul_t(self, x: Any, w: Any) -> Any:
        """``x @ w^T`` for ``[N, D]`` and ``[V, D]`` matrices."""
        return x @ w.T

    def needs_grad(self, x: Any) -> bool:
        """Whether a gradient may flow to ``x`` (True where the library cannot tell)."""
        return False

    def value_range(self, x: Any) -> tuple[Any, Any]:
        """``(min, max)`` of a real array as host numbers (eager, non-empty only; NaN propagates)."""
        with self.eager_scope():
            c = self.concrete(x)
            return self.host(self.xp.min(c)).item(), self.host(self.xp.max(c)).item()

    def all_sum(self, x: Any, over: Any) -> Any:
        """``x`` summed over the ranks of ``over`` (a group or mesh axis; None: ``x`` itself)."""
        return x

    def softplus(self, x: Any) -> Any:
        """``log(1 + exp(x))`` without overflow."""
        return np.logaddexp(x, np.zeros((), dtype=x.dtype))

    def sigmoid(self, x: Any) -> Any:
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def take_along_axis(self, x: Any, idx: Any, axis: int = -1) -> Any:
        return np.take_along_axis(x, idx, axis=axis)

    def moveaxis(self, x: Any, source: int, dest: int) -> Any:
        return np.moveaxis(x, source, dest)

    def pow(self, x: Any, gamma: float) -> Any:
        """``x**gamma`` for ``x >= 0`` and ``gamma > 0``, with gradient 0 (not NaN) at 0.

        The focal factor ``(1 - p)**gamma`` meets ``x == 0`` when a prediction is
        certain; there ``d x**gamma / dx`` is infinite for ``gamma < 1`` and the
        plain power's gradient becomes ``0 * inf = NaN``. Every focal loss
        multiplies this factor by a cross-entropy that is itself 0 where
        ``x == 0``, so the true derivative of the product is 0.
        """
        xp = self.xp
        pos = x > 0
        safe = xp.where(pos, x, xp.ones_like(x))
        return xp.where(pos, safe**gamma, xp.zeros_like(x))

    # --- sampling (samplers.py / sampled.py) ---
    @property
    def wide_float(self) -> Any:
        """float64 where the library has it (samplers compute probabilities in double, as TF)."""
        return np.float64

    def device_kw(self, like: Any) -> dict:
        """``device=`` keyword for array constructors that put a new array on ``like``'s device."""
        return {}

    def device_scope(self, like: Any) -> Any:
        """A context in which new arrays and ops are placed on ``like``'s device."""
        return contextlib.nullcontext()

    def scatter(self, arr: Any, idx: Any, values: Any) -> Any:
        """A copy of the 1-D ``arr`` with ``arr[idx] = values`` (no autodiff; repeated
        indices write one of their values)."""
        out = arr.copy()
        out[idx] = values
        return out

    def stable_argsort(self, x: Any) -> Any:
        return self.xp.argsort(x, stable=True)

    def promote(self, a: Any, b: Any) -> Any:
        """The dtype that ``a`` and ``b`` (dtypes) promote to."""
        return self.xp.result_type(a, b)

    def gather_rows(self, table: Any, idx: Any) -> Any:
        """``table[idx]`` along axis 0, with the library's fastest backward."""
        return self.xp.take(table, idx, axis=0)

    def after_checks(self, x: Any) -> Any:
        """``x``, computed after the in-graph value checks queued so far (TensorFlow graphs:
        a consumer such as a gather must not run before the assertion on its indices)."""
        return x

    def fused_sampled_columns(self) -> bool:
        """Whether _kernels/sampled_torch's fused autograd node applies now (torch, not compiling)."""
        return False

    def while_loop(self, cond: Any, body: Any, init: Any) -> Any:
        """``while cond(c): c = body(c)``; traced as one loop where the library has one."""
        c = init
        while bool(cond(c)):
            c = body(c)
        return c

    def compiled(self, key: Any, fn: Any) -> Any:
        """``fn``, compiled once per ``key`` where eager calls gain from it (JAX)."""
        return fn

    # Random draws. A sampler's loop carries a library "rng state" (NumPy: a
    # Generator; torch: a Generator or None for the global one; JAX: a key;
    # TensorFlow: a stateless seed [2]). Another library's generator is turned
    # into an int seed with that library's ``seed_of`` (eagerly).
    def is_rng(self, rng: Any) -> bool:
        """Whether ``rng`` is a random source of this library."""
        return isinstance(rng, np.random.Generator)

    def rng_state(self, rng: Any, like: Any) -> Any:
        """The loop state for ``rng``: None (the library's default source), an int seed,
        or a source of this library (``is_rng``)."""
        if rng is None:
            return np.random.default_rng()
        if isinstance(rng, np.random.Generator):
            return rng
        return np.random.default_rng(int(rng))

    def seed_of(self, rng: Any) -> int:
        """An int seed drawn from this library's ``rng`` (advancing it where it has state)."""
        return int(rng.integers(0, 2**62))

    def uniform(self, state: Any, m: int, like: Any, dtype: Any) -> tuple[Any, Any]:
        """``m`` uniform floats in [0, 1) of ``dtype`` on ``like``'s device, and the next state."""
        return state.random(m), state


class TorchBackend(Backend):
    name = "torch"
    collective = "group"

    def __init__(self) -> None:
        import array_api_compat.torch as xp
        import torch

        self.xp = xp
        self.torch = torch
        # bound once: the value checks ask on every call
        self._is_compiling = torch.compiler.is_compiling
        self._functorch = getattr(torch._C, "_are_functorch_transforms_active", None)

    def dtype_name(self, dtype: Any) -> str:
        return str(dtype).replace("torch.", "")

    def is_floating(self, x: Any) -> bool:
        return x.dtype.is_floating_point

    @property
    def float32(self) -> Any:
        return self.torch.float32

    def asarray(self, x: Any, like: Any, dtype: Any = None) -> Any:
        if not isinstance(x, self.torch.Tensor):
            # Through NumPy: torch would make Python floats float32 (rounding a
            # weight of 1/3 before it meets float64 logits); NumPy keeps float64.
            x = np.asarray(x)
            if not x.flags.writeable:
                x = np.array(x)  # torch warns on read-only NumPy arrays (np.broadcast_to)
        return self.torch.as_tensor(x, dtype=dtype, device=like.device)

    def astype(self, x: Any, dtype: Any) -> Any:
        return x if x.dtype == dtype else x.to(dtype)

    def any(self, mask: Any) -> bool:
        return bool(mask.any())  # one element crosses to the host, not the mask

    def on_host(self, x: Any) -> bool:
        # ``is_cpu``: ``x.device.type`` builds a device object, several times slower
        cpu = getattr(x, "is_cpu", None)
        return x.device.type == "cpu" if cpu is None else cpu

    def _compiling(self) -> bool:
        return bool(self._is_compiling())

    def _func_transform(self) -> bool:
        return self._functorch is not None and bool(self._functorch())

    def tracing(self, x: Any) -> bool:
        # _func_transform inlined: every value check asks
        return bool(self._is_compiling()) or (self._functorch is not None
                                              and bool(self._functorch()))

    def async_mode(self, tracing: bool) -> str:
        # torch.func transforms: no data-dependent assertion there
        return "off" if tracing and not self._compiling() else "async"

    def assert_async(self, ok: Any, message: str) -> None:
        self.torch._assert_async(ok, message)

    def stop_gradient(self, x: Any) -> Any:
        return x.detach()

    def logsumexp(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        return self.torch.logsumexp(x, dim=axis, keepdim=keepdims)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        return self.torch.log_softmax(x, dim=axis)

    def label_nll(self, z: Any, t: Any) -> Any:
        # two fused operators forward and backward (log_softmax, nll_loss), the
        # same shifted formula; t holds no ignored entries (they are 0 by now)
        C = z.shape[-1]
        logp = self.torch.log_softmax(z.reshape(-1, C) if z.dim() != 2 else z, dim=-1)
        nll = self.torch.nn.functional.nll_loss(logp, t.reshape(-1), reduction="none")
        return nll if z.dim() == 2 else nll.reshape(t.shape)

    def label_nll_reduced(self, z: Any, t: Any, reduction: str) -> Any:
        # one operator and two backward nodes, as F.cross_entropy(z, t): a
        # per-element loss and a mean would add a third (~40 us on [64, 10])
        C = z.shape[-1]
        if z.dim() != 2:
            z, t = z.reshape(-1, C), t.reshape(-1)
        return self.torch.nn.functional.cross_entropy(z, t, reduction=reduction)

    def matmul_t(self, x: Any, w: Any) -> Any:
        return x @ w.mT

    def needs_grad(self, x: Any) -> bool:
        return bool(x.requires_grad) and self.torch.is_grad_enabled()

    def value_range(self, x: Any) -> tuple[Any, Any]:
        lo, hi = self.torch.aminmax(x)  # one pass; two scalars cross to the host
        return lo.item(), hi.item()

    def all_sum(self, x: Any, over: Any) -> Any:
        if over is None:
            return x
        import torch.distributed as dist

        x = x.clone()  # never the caller's tensor
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=over)
        return x

    def softplus(self, x: Any) -> Any:
        # Above the threshold softplus(x) == x to within exp(-40) relative.
        return self.torch.nn.functional.softplus(x, beta=1.0, threshold=40.0)

    def sigmoid(self, x: Any) -> Any:
        return self.torch.sigmoid(x)

    def take_along_axis(self, x: Any, idx: Any, axis: int = -1) -> Any:
        return self.torch.gather(x, axis, idx)

    def moveaxis(self, x: Any, source: int, dest: int) -> Any:
        return self.torch.movedim(x, source, dest)

    # --- sampling (samplers.py / sampled.py) ---
    @property
    def wide_float(self) -> Any:
        return self.torch.float64

    def device_kw(self, like: Any) -> dict:
        return {"device": like.device}

    def scatter(self, arr: Any, idx: Any, values: Any) -> Any:
        return arr.index_put((idx,), values)

    def stable_argsort(self, x: Any) -> Any:
        return self.torch.sort(x, stable=True).indices

    def promote(self, a: Any, b: Any) -> Any:
        return self.torch.promote_types(a, b)

    def gather_rows(self, table: Any, idx: Any) -> Any:
        # the embedding lookup's backward is one scatter-add
        return self.torch.nn.functional.embedding(idx, table)

    def fused_sampled_columns(self) -> bool:
        # torch.compile traces the plain composition (no graph break)
        return not self.torch.compiler.is_compiling()

    def is_rng(self, rng: Any) -> bool:
        return isinstance(rng, self.torch.Generator)

    def rng_state(self, rng: Any, like: Any) -> Any:
        if rng is None or isinstance(rng, self.torch.Generator):
            return rng  # None: the global generator (torch.manual_seed applies)
        return self.torch.Generator(device=like.device).manual_seed(int(rng))

    def seed_of(self, rng: Any) -> int:
        return int(self.torch.randint(0, 2**62, (1,), generator=rng, device=rng.device))

    def uniform(self, state: Any, m: int, like: Any, dtype: Any) -> tuple[Any, Any]:
        dev = like.device if state is None else state.device
        return self.torch.rand(m, generator=state, dtype=dtype, device=dev).to(like.device), state


class JaxBackend(Backend):
    name = "jax"
    collective = "axis_name"

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        self.xp = jnp
        self.jax = jax
        self.jnp = jnp

    def dtype_name(self, dtype: Any) -> str:
        return self.jnp.dtype(dtype).name

    def is_floating(self, x: Any) -> bool:
        return bool(self.jnp.issubdtype(x.dtype, self.jnp.floating))

    @property
    def float32(self) -> Any:
        return self.jnp.float32

    @property
    def index_dtype(self) -> Any:
        # int64 with jax_enable_x64, else int32 (what jnp.asarray(0) gives)
        return self.jax.dtypes.canonicalize_dtype(self.jnp.int64)

    def asarray(self, x: Any, like: Any, dtype: Any = None) -> Any:
        return self.jnp.asarray(x, dtype=dtype)

    def _concrete(self, x: Any) -> Any:
        """``x``'s value, or None for a tracer whose value is unknown (``jax.jit``, ``vmap``).

        Under an eager ``jax.grad`` the arrays are tracers with known values:
        validation runs there, and its messages read the values through
        ``to_concrete_value`` (``np.asarray`` refuses any tracer). Without that
        (private) function, tracers count as unknown and the checks are skipped.
        """
        if not isinstance(x, self.jax.core.Tracer):
            return x
        try:
            from jax._src.core import to_concrete_value
        except ImportError:  # pragma: no cover - depends on the JAX version
            return None
        return to_concrete_value(x)

    def is_concrete(self, x: Any) -> bool:
        return self._concrete(x) is not None

    def concrete(self, x: Any) -> Any:
        return self._concrete(x)

    def eager_scope(self) -> Any:
        # Inside jax.jit, ops on a closed-over concrete array would be staged
        # (and np.asarray of the result would fail): evaluate them now.
        return self.jax.ensure_compile_time_eval()

    def host(self, x: Any) -> np.ndarray:
        return to_numpy(self._concrete(x))

    def on_host(self, x: Any) -> bool:
        try:
            return all(d.platform == "cpu" for d in x.devices())
        except Exception:  # a tracer: no devices to ask
            return True

    def async_mode(self, tracing: bool) -> str:
        return "off"  # no device-side assertion in JAX: the check is skipped

    def stop_gradient(self, x: Any) -> Any:
        return self.jax.lax.stop_gradient(x)

    def logsumexp(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        return self.jax.nn.logsumexp(x, axis=axis, keepdims=keepdims)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        return self.jax.nn.log_softmax(x, axis=axis)

    def logsumexp_shifted(self, x: Any, axis: int = -1) -> Any:
        # x <= 0 (or a row of -inf): exp cannot overflow, and one fused
        # exp-sum pass replaces jax.nn.logsumexp's second max and selects
        return self.jnp.log(self.jnp.sum(self.jnp.exp(x), axis=axis, keepdims=True))

    def needs_grad(self, x: Any) -> bool:
        return True  # a tracer of jax.grad looks like any other array

    def all_sum(self, x: Any, over: Any) -> Any:
        return x if over is None else self.jax.lax.psum(x, over)

    def softplus(self, x: Any) -> Any:
        return self.jnp.logaddexp(x, 0.0)

    def sigmoid(self, x: Any) -> Any:
        return self.jax.nn.sigmoid(x)

    def take_along_axis(self, x: Any, idx: Any, axis: int = -1) -> Any:
        return self.jnp.take_along_axis(x, idx, axis=axis)

    def moveaxis(self, x: Any, source: int, dest: int) -> Any:
        return self.jnp.moveaxis(x, source, dest)

    # --- sampling (samplers.py / sampled.py) ---
    @property
    def wide_float(self) -> Any:
        return self.jax.dtypes.canonicalize_dtype(self.jnp.float64)

    def scatter(self, arr: Any, idx: Any, values: Any) -> Any:
        return arr.at[idx].set(values)

    def while_loop(self, cond: Any, body: Any, init: Any) -> Any:
        return self.jax.lax.while_loop(cond, body, init)

    def compiled(self, key: Any, fn: Any) -> Any:
        # one compiled sampler per key (a call inside jax.jit nests the jitted one)
        out = _COMPILED.get(key)
        if out is None:
            out = _COMPILED[key] = self.jax.jit(fn)
        return out

    def is_rng(self, rng: Any) -> bool:
        if library_of(rng) != "jax":
            return False
        dt = self.jax.dtypes
        return bool(dt.issubdtype(rng.dtype, dt.prng_key)) or (
            tuple(rng.shape) == (2,) and str(rng.dtype) == "uint32")

    def rng_state(self, rng: Any, like: Any) -> Any:
        if rng is None:
            raise ValueError(
                "rng must be given for JAX arrays (JAX has no global random state): "
                "pass rng=jax.random.key(seed) or an int seed")
        return rng if self.is_rng(rng) else self.jax.random.key(int(rng))

    def seed_of(self, rng: Any) -> int:
        return int(self.jax.random.randint(rng, (), 0, 2**31 - 1))

    def uniform(self, state: Any, m: int, like: Any, dtype: Any) -> tuple[Any, Any]:
        state, sub = self.jax.random.split(state)
        return self.jax.random.uniform(sub, (m,), dtype=dtype), state


class TFBackend(Backend):
    """TensorFlow tensors and variables: eager, ``tf.function`` and ``jit_compile=True``.

    ``xp`` is xent's own small namespace over TF ops (``tf_namespace``); no
    ``tf.experimental.numpy`` behaviour is switched on. Symbolic tensors (inside
    ``tf.function``) are not concrete: value checks there become in-graph
    assertions (``tf.debugging``) instead of host reads.
    """

    name = "tensorflow"

    def __init__(self) -> None:
        import tensorflow as tf

        from . import tf_namespace

        self.xp = tf_namespace
        self.tf = tf
        self._pending_checks: list = []

    def dtype_name(self, dtype: Any) -> str:
        return self.tf.as_dtype(dtype).name

    def is_floating(self, x: Any) -> bool:
        return bool(x.dtype.is_floating)

    @property
    def float32(self) -> Any:
        return self.tf.float32

    @property
    def index_dtype(self) -> Any:
        return self.tf.int64

    def asarray(self, x: Any, like: Any, dtype: Any = None) -> Any:
        tf = self.tf
        with tf.device(like.device) if getattr(like, "device", "") else contextlib.nullcontext():
            if isinstance(x, (tf.Tensor, tf.Variable)):
                x = tf.convert_to_tensor(x)
                return x if dtype is None or x.dtype == dtype else tf.cast(x, dtype)
            a = np.asarray(x)
            if dtype is not None and self.dtype_name(dtype) == "bfloat16":
                return tf.cast(tf.constant(a.astype(np.float32)), tf.bfloat16)
            return tf.constant(a, dtype=dtype)

    def astype(self, x: Any, dtype: Any) -> Any:
        return x if x.dtype == dtype else self.tf.cast(x, dtype)

    def is_concrete(self, x: Any) -> bool:
        return self.tf.executing_eagerly() and not self.tf.is_symbolic_tensor(x)

    def concrete(self, x: Any) -> Any:
        return self.tf.convert_to_tensor(x)

    def host(self, x: Any) -> np.ndarray:
        return to_numpy(x)

    def on_host(self, x: Any) -> bool:
        device = str(getattr(x, "device", "") or "")
        return "GPU" not in device and "TPU" not in device

    def async_mode(self, tracing: bool) -> str:
        return "async"  # an in-graph assertion (``assert_in_graph``)

    def any(self, mask: Any) -> bool:
        return bool(self.tf.reduce_any(mask))

    def stop_gradient(self, x: Any) -> Any:
        return self.tf.stop_gradient(x)

    def logsumexp(self, x: Any, axis: int = -1, keepdims: bool = False) -> Any:
        return self.tf.reduce_logsumexp(x, axis=axis, keepdims=keepdims)

    def log_softmax(self, x: Any, axis: int = -1) -> Any:
        return self.tf.nn.log_softmax(x, axis=axis)

    def logsumexp_shifted(self, x: Any, axis: int = -1) -> Any:
        # x <= 0 (or a row of -inf): exp cannot overflow; one exp-sum pass
        tf = self.tf
        return tf.math.log(tf.reduce_sum(tf.exp(x), axis=axis, keepdims=True))

    def matmul_t(self, x: Any, w: Any) -> Any:
        return self.tf.linalg.matmul(x, w, transpose_b=True)

    def needs_grad(self, x: Any) -> bool:
        return True  # a GradientTape may watch any tensor

    def softplus(self, x: Any) -> Any:
        return self.tf.nn.softplus(x)

    def sigmoid(self, x: Any) -> Any:
        return self.tf.sigmoid(x)

    def take_along_axis(self, x: Any, idx: Any, axis: int = -1) -> Any:
        # inside tf.function the gather waits for the assertions on its indices
        return self.xp.take_along_axis(x, self.after_checks(idx), axis=axis)

    def moveaxis(self, x: Any, source: int, dest: int) -> Any:
        n = len(x.shape)
        source, dest = source % n, dest % n
        perm = [i for i in range(n) if i != source]
        perm.insert(dest, source)
        return self.tf.transpose(x, perm)

    def assert_in_graph(self, ok: Any, message: str) -> None:
        """An in-graph assertion that all of ``ok`` holds (inside ``tf.function``)."""
        tf = self.tf
        op = tf.debugging.Assert(tf.reduce_all(ok), [message])
        if op is not None and not tf.executing_eagerly():
            self._pending_checks.append(op)  # ordered before use by ``after_checks``

    # --- sampling (samplers.py / sampled.py) ---
    @property
    def wide_float(self) -> Any:
        return self.tf.float64

    def device_scope(self, like: Any) -> Any:
        dev = getattr(like, "device", "") if self.tf.executing_eagerly() else ""
        return self.tf.device(dev) if dev else contextlib.nullcontext()

    def scatter(self, arr: Any, idx: Any, values: Any) -> Any:
        tf = self.tf
        return tf.tensor_scatter_nd_update(arr, tf.reshape(idx, (-1, 1)), values)

    def promote(self, a: Any, b: Any) -> Any:
        return self.xp.result_type(a, b)

    def after_checks(self, x: Any) -> Any:
        tf = self.tf
        pending, self._pending_checks = self._pending_checks, []
        graph = getattr(x, "graph", None)
        pending = [op for op in pending if getattr(op, "graph", None) is graph]
        if not pending:
            return x
        with tf.control_dependencies(pending):
            return tf.identity(x)

    def while_loop(self, cond: Any, body: Any, init: Any) -> Any:
        # eagerly a Python loop; inside tf.function (and under XLA) one graph loop
        return self.tf.while_loop(lambda *c: cond(c), lambda *c: tuple(body(c)), tuple(init))

    def is_rng(self, rng: Any) -> bool:
        tf = self.tf
        if isinstance(rng, tf.random.Generator):
            return True
        return library_of(rng) == "tensorflow" and rng.dtype.is_integer and \
            tuple(rng.shape) == (2,)

    def rng_state(self, rng: Any, like: Any) -> Any:
        # The state is a stateless seed [2] (int64), split once per chunk of draws:
        # valid eagerly, inside tf.function and under jit_compile=True.
        tf = self.tf
        if rng is None:  # TF's global seed (tf.random.set_seed) applies
            return tf.random.uniform((2,), 0, 2**62, dtype=tf.int64)
        if isinstance(rng, tf.random.Generator):
            return tf.cast(rng.make_seeds(1)[:, 0], tf.int64)
        if library_of(rng) == "tensorflow":
            return tf.cast(rng, tf.int64)
        return tf.constant([int(rng), 0], tf.int64)

    def seed_of(self, rng: Any) -> int:
        tf = self.tf
        if isinstance(rng, tf.random.Generator):
            return int(rng.uniform_full_int((), tf.int64)) % 2**62
        a, b = (int(v) for v in to_numpy(rng))
        return (a * 1_000_003 + b) % 2**62

    def uniform(self, state: Any, m: int, like: Any, dtype: Any) -> tuple[Any, Any]:
        tf = self.tf
        seeds = tf.random.experimental.stateless_split(state, 2)
        return tf.random.stateless_uniform((m,), seeds[0], dtype=dtype), seeds[1]


_BACKENDS: dict[str, Backend] = {}
_COMPILED: dict[Any, Any] = {}  # JaxBackend.compiled
_BY_TYPE: dict[type, Backend] = {}
_CLASSES = {"numpy": Backend, "torch": TorchBackend, "jax": JaxBackend,
            "tensorflow": TFBackend}


def get_backend(name: str) -> Backend:
    be = _BACKENDS.get(name)
    if be is None:
        be = _BACKENDS[name] = _CLASSES[name]()
    return be


def backend_of(x: Any, name: str = "logits") -> tuple[Backend, Any]:
    """The backend that ``x`` decides, and ``x`` as an array of it.

    Python lists and scalars become NumPy arrays. Anything else that is not a
    NumPy, torch or JAX array is a ``TypeError`` naming ``name``.
    """
    be = _BY_TYPE.get(type(x))
    if be is not None:  # an array type seen before: no isinstance chain
        return be, x
    lib = library_of(x)
    if lib is not None:
        be = _BY_TYPE[type(x)] = get_backend(lib)
        return be, x
    if lib is None:
        if isinstance(x, (list, tuple, int, float, bool)):
            try:
                x = np.asarray(x)
            except ValueError as err:  # a ragged list
                raise TypeError(f"{name} could not be read as an array (are its rows of "
                                f"different lengths?): {err}") from None
            lib = "numpy"
        else:
            raise TypeError(
                f"{name} must be a numpy.ndarray, torch.Tensor, jax.Array or tf.Tensor, "
                f"got {describe(x)}"
            )
    return get_backend(lib), x
