"""xent.parallel under jax.shard_map on 4 host devices, in a subprocess.

The rest of the suite keeps one device, so the 4-device run
(``--xla_force_host_platform_device_count=4``) happens in its own interpreter:
vocabulary-parallel values and gradients against the single-device float64
loss, the collectives in the compiled program (no all-gather, nothing added
by the backward pass), a traced bad layout giving NaN, and ordinary losses
under batch-sharded ``NamedSharding`` giving single-device values without an
all-gather of the logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]


def test_shard_map_vocab_parallel_and_batch_sharded_losses():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name(
            "_parallel_jax_worker.py"))], env=env, capture_output=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the 4-device JAX run did not finish within 240 s")
    out = proc.stdout.decode().strip().splitlines()
    assert proc.returncode == 0 and out, proc.stderr.decode()[-3000:]
    res = json.loads(out[-1])
    assert res["checks"] >= 30, res  # 36 at the time of writing
    assert not res["failures"], "\n".join(res["failures"])


def test_jax_needs_axis_name():
    import jax.numpy as jnp

    from xent import parallel as P

    with pytest.raises(ValueError, match="axis_name"):
        P.vocab_parallel_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="group="):
        P.vocab_parallel_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1]), group=object(),
                                       axis_name="v")
