"""``xent.value_checks``: the three modes, the defaults, and no host read on torch's path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xent
from _loss_cases import cases, grad_args as _grad_args
from xent._core import checks
from xent._kernels import dense_torch

SYNCS = (torch.ops.aten._local_scalar_dense, torch.ops.aten.item, torch.ops.aten.is_nonzero)


class _CountSyncs(TorchDispatchMode):
    """Counts the operators that copy a tensor's value to the host."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNCS:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("mode", ["async", "off"])
def test_no_host_sync_in_forward_backward_of_any_loss(mode, fused, monkeypatch):
    # issue: value checks and the fused backward read labels and weights back
    # to the host (three aten._local_scalar_dense per sparse step)
    monkeypatch.setattr(dense_torch, "MIN_FUSED_ELEMENTS", 0 if fused else 1 << 62)
    failures = {}
    for name, fn, args in cases():
        args = _grad_args(name, args)
        with xent.value_checks(mode), _CountSyncs() as counter:
            out = fn(*args)
            out.sum().backward()
        if counter.calls:
            failures[name] = counter.calls
    assert not failures


def test_raise_mode_still_reads_and_raises():
    z = torch.zeros(3, 4)
    with xent.value_checks("raise"):
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\), got 9 at"):
            xent.sparse_softmax_cross_entropy(z, torch.tensor([0, 9, 1]))


def test_async_mode_is_a_device_assertion_on_torch():
    z = torch.zeros(3, 4)
    with xent.value_checks("async"):
        # on the CPU the assertion fires at once, without naming a position
        with pytest.raises(RuntimeError, match="labels must be class indices"):
            xent.sparse_softmax_cross_entropy(z, torch.tensor([0, 9, 1]))
        with pytest.raises(RuntimeError, match=r"labels must be in \[0, 1\]"):
            xent.sigmoid_cross_entropy(z, torch.full((3, 4), 2.0))


def test_off_mode_skips_value_checks_but_not_shape_checks():
    z = torch.zeros(3, 4)
    with xent.value_checks("off"):
        out = xent.sigmoid_cross_entropy(z, torch.full((3, 4), 2.0), reduction="sum")
        assert torch.isfinite(out)
        with pytest.raises(ValueError, match="labels must have shape"):
            xent.sigmoid_cross_entropy(z, torch.zeros(3, 5))


def test_mode_is_process_wide_and_with_restores():
    assert checks.value_checks.current() is None
    try:
        xent.value_checks("off")
        assert checks.value_checks.current() == "off"
        with xent.value_checks("raise"):
            assert checks.value_checks.current() == "raise"
            with pytest.raises(ValueError):
                xent.log_loss(np.array([1.5]), np.array([1.0]))
        assert checks.value_checks.current() == "off"
        with np.errstate(invalid="ignore"):
            xent.log_loss(np.array([1.5]), np.array([1.0]))  # not checked
    finally:
        xent.value_checks(None)
    assert checks.value_checks.current() is None


def test_bad_mode_is_a_value_error():
    with pytest.raises(ValueError, match="value_checks mode must be one of"):
        xent.value_checks("warn")
    assert checks.value_checks.current() is None


def test_defaults_raise_on_host_arrays():
    import jax.numpy as jnp

    be_t = xent._core.backend.backend_of(torch.zeros(1))[0]
    be_n = xent._core.backend.backend_of(np.zeros(1))[0]
    be_j = xent._core.backend.backend_of(jnp.zeros(1))[0]
    assert checks.mode_for(be_t, torch.zeros(1)) == "raise"
    assert checks.mode_for(be_n, np.zeros(1)) == "raise"
    assert checks.mode_for(be_j, jnp.zeros(1)) == "raise"
    with xent.value_checks("async"):
        assert checks.mode_for(be_t, torch.zeros(1)) == "async"
        assert checks.mode_for(be_j, jnp.zeros(1)) == "off"     # JAX skips
        assert checks.mode_for(be_n, np.zeros(1)) == "raise"    # NumPy is the host


def test_default_is_async_on_an_accelerator():
    class _Fake:
        class device:
            type = "cuda"

    be_t = xent._core.backend.backend_of(torch.zeros(1))[0]
    assert checks.mode_for(be_t, _Fake()) == "async"


def test_jax_jit_skips_value_checks():
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda z, t: xent.sparse_softmax_cross_entropy(z, t, reduction="none"))
    out = f(jnp.zeros((2, 3)), jnp.array([0, 1]))
    np.testing.assert_allclose(np.asarray(out), np.log(3.0), rtol=1e-6)
