"""Shared fixtures: one test body per behaviour, run on every backend.

The ``be`` fixture is a small adapter per library: make arrays from NumPy,
read them back, and take gradients with the library's own autodiff.
JAX runs with float64 enabled so that float64 oracles can be checked exactly.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


class NumpyAdapter:
    name = "numpy"
    has_grad = False

    def asarray(self, x, dtype=None):
        x = np.asarray(x)
        if dtype is not None:
            x = x.astype(dtype)
        return x

    def to_numpy(self, x):
        return np.asarray(x)

    def dtype(self, name):
        return np.dtype(name)

    def grad(self, fn, *args, argnums=(0,)):
        raise NotImplementedError


class TorchAdapter:
    name = "torch"
    has_grad = True

    def asarray(self, x, dtype=None):
        x = np.asarray(x)
        if dtype is not None:
            if dtype == "bfloat16":
                return torch.as_tensor(x.astype(np.float32)).to(torch.bfloat16)
            x = x.astype(dtype)
        return torch.as_tensor(x)

    def to_numpy(self, x):
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.dtype == torch.bfloat16:
                x = x.float()
            return x.numpy()
        return np.asarray(x)

    def dtype(self, name):
        return getattr(torch, name)

    def grad(self, fn, *args, argnums=(0,)):
        """Gradients of ``fn(*args)`` (a scalar) w.r.t. ``args[i]`` for i in argnums."""
        args = list(args)
        for i in argnums:
            args[i] = args[i].detach().clone().requires_grad_(True)
        out = fn(*args)
        grads = torch.autograd.grad(out, [args[i] for i in argnums], allow_unused=True)
        return [None if g is None else self.to_numpy(g) for g in grads]


class JaxAdapter:
    name = "jax"
    has_grad = True

    def asarray(self, x, dtype=None):
        import jax.numpy as jnp

        x = np.asarray(x)
        if dtype is not None:
            if dtype == "bfloat16":
                return jnp.asarray(x.astype(np.float32)).astype(jnp.bfloat16)
            x = x.astype(dtype)
        return jnp.asarray(x)

    def to_numpy(self, x):
        x = np.asarray(x)
        if x.dtype.name == "bfloat16":
            x = x.astype(np.float32)
        return x

    def dtype(self, name):
        import jax.numpy as jnp

        return getattr(jnp, name)

    def grad(self, fn, *args, argnums=(0,)):
        grads = jax.grad(fn, argnums=tuple(argnums))(*args)
        return [self.to_numpy(g) for g in grads]


ADAPTERS = {"numpy": NumpyAdapter(), "torch": TorchAdapter(), "jax": JaxAdapter()}


@pytest.fixture(params=list(ADAPTERS))
def be(request):
    """Each backend in turn."""
    return ADAPTERS[request.param]


@pytest.fixture(params=["torch", "jax"])
def gbe(request):
    """The backends with autodiff."""
    return ADAPTERS[request.param]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
