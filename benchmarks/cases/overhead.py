"""Per-call overhead: forward+backward of sparse softmax CE from tiny to large.

Groups ``overhead_torch`` (xent vs ``F.cross_entropy``, eager torch) and
``overhead_jax`` (xent vs optax, under ``jax.jit`` with
``jax.value_and_grad``); ``--group overhead`` runs both in one go. Float32
logits ``[n, c]``, integer labels, mean reduction, at
``[64, 10]``, ``[512, 100]``, ``[4096, 1000]``, ``[8, 50257]``, ``[1024, 8192]``
and ``[8192, 32768]`` (``--sizes quick``: the two smallest). Small sizes
measure the Python layer and the dispatch, large ones the kernels.

Targets (issue 9): xent torch at most 1.3x ``F.cross_entropy`` at the two
smallest sizes and at most 1.0x from ``[4096, 1000]`` up; xent JAX within 1.1x
optax everywhere. The step reads the loss back (``float``), as a training
loop that logs it does, for xent and the peer alike.

A timed step at a small size is many calls (``inner``: about 2e7 logits
entries per timed step, at most 5000 calls), and the runner divides its time
by that count, so that a 100-microsecond call is not timed alone against the
timer's and the scheduler's noise; xent and its peer run the same count.
"""

from __future__ import annotations

from ..registry import case
from .dense import F32, _optax, _torch_peer, _xent_jax, _xent_torch

SIZES = {
    "quick": [dict(n=64, c=10), dict(n=512, c=100)],
    "full": [dict(n=64, c=10), dict(n=512, c=100), dict(n=4096, c=1000), dict(n=8, c=50257),
             dict(n=1024, c=8192), dict(n=8192, c=32768)],
}
SIZES["sweep"] = SIZES["full"]

ENTRIES_PER_STEP = 20_000_000
MAX_CALLS = 5000


def calls_per_step(size: dict) -> int:
    """How many calls one timed step of ``size`` makes (1 from ``[4096, 1000]`` up)."""
    return max(1, min(MAX_CALLS, ENTRIES_PER_STEP // (size["n"] * size["c"])))


def _repeated(make):
    def fn(size, backward):
        one = make(size, backward)
        k = calls_per_step(size)
        if k == 1:
            return one

        def step():
            for _ in range(k):
                out = one()
            return out

        step.inner = k
        return step
    return fn


case(group="overhead_torch", impl="torch F.cross_entropy", peer=True, sizes=SIZES,
     backward=(True,), input_bytes=F32)(_repeated(_torch_peer("sparse")))
case(group="overhead_torch", impl="xent torch", sizes=SIZES, backward=(True,),
     input_bytes=F32)(_repeated(_xent_torch("sparse")))
case(group="overhead_jax", impl="optax jit", peer=True, sizes=SIZES, backward=(True,),
     input_bytes=F32)(_repeated(_optax("sparse")))
case(group="overhead_jax", impl="xent jax jit", sizes=SIZES, backward=(True,),
     input_bytes=F32)(_repeated(_xent_jax("sparse")))
