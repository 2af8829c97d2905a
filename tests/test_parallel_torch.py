"""xent.parallel on real torch.distributed gloo groups (CPU, 127.0.0.1), 2 and 4 ranks.

Each world size is one group of processes running every case (see
``_parallel_torch_worker.py``); each rank checks its value and its gradient
slice against a float64 single-device reference. The group is bounded by a
timeout, so a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORKER = Path(__file__).with_name("_parallel_torch_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_group(world: int, parts: str, tmp_path: Path, timeout: float = 240.0) -> list[dict]:
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(world), str(port),
                               str(tmp_path), parts], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
             for r in range(world)]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for p in procs:
            left = max(1.0, deadline - time.monotonic())
            out, _ = p.communicate(timeout=left)
            outputs.append(out.decode(errors="replace")[-3000:])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the {world}-rank group did not finish within {timeout} s (a hang)")
    results = []
    for r in range(world):
        f = tmp_path / f"rank{r}.json"
        assert f.exists(), f"rank {r} wrote no result; output:\n{outputs[r]}"
        results.append(json.loads(f.read_text()))
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_matches_single_device_float64(world, tmp_path):
    parts = "dense,linear,errors,counts" + (",dp" if world == 4 else "")
    results = _run_group(world, parts, tmp_path)
    for r, res in enumerate(results):
        assert res["checks"] > 100, res
        assert not res["failures"], f"rank {r}: " + "\n".join(res["failures"][:20])


def test_count_without_group_is_local():
    import numpy as np
    import torch

    from xent import parallel as P

    t = torch.tensor([0, 2, -100, 1])
    cw = torch.tensor([1.0, 2.0, 3.0])
    got = P.count(t, ignore_index=-100, class_weight=cw,
                  sample_weight=torch.tensor([1.0, 0.5, 9.0, 2.0]))
    assert float(got) == pytest.approx(1.0 + 1.5 + 4.0)
    assert float(P.count(np.array([[1, 1], [0, -1]]), ignore_index=-1)) == 3.0


def test_errors_name_the_argument():
    import torch

    from xent import parallel as P

    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="axis_name"):
        P.vocab_parallel_cross_entropy(z, torch.tensor([0, 1]), axis_name="x")
    with pytest.raises(ValueError, match="normalizer"):
        P.vocab_parallel_cross_entropy(z, torch.tensor([0, 1]), reduction="sum", normalizer=2.0)
    import numpy as np

    with pytest.raises(TypeError, match="torch tensors"):
        P.vocab_parallel_cross_entropy(np.zeros((2, 3)), np.array([0, 1]))


def test_import_xent_parallel_is_lazy():
    code = ("import sys, xent; assert 'torch' not in sys.modules and 'jax' not in sys.modules; "
            "p = xent.parallel; assert 'torch' not in sys.modules and 'jax' not in sys.modules; "
            "print(p.count.__name__)")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "count", out.stderr


def test_count_under_tf_distribute_sums_replicas():
    pytest.importorskip("tensorflow")
    code = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from xent import parallel as P
assert float(P.count(tf.constant([1, -100, 2]), ignore_index=-100)) == 2.0
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
@tf.function
def f():
    ctx = tf.distribute.get_replica_context()
    n = tf.cast(ctx.replica_id_in_sync_group, tf.int32) + 1  # 1 valid label on replica 0, 2 on 1
    t = tf.where(tf.range(3) < n, 5, -100)
    return P.count(t, ignore_index=-100)
got = strategy.run(f)
print(sorted(float(v) for v in strategy.experimental_local_results(got)))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[3.0, 3.0]"
