"""Vocabulary-parallel cross-entropy on 2 gloo ranks against the single-device loss.

Group ``parallel`` (float32 logits ``[n, v]``, integer labels, mean reduction):

* ``torch F.cross_entropy (1 device)`` (peer) and ``xent sparse (1 device)``:
  the whole ``[n, v]`` logits in one process;
* ``xent vocab_parallel (2 gloo ranks)``: this process is rank 0 and holds
  ``[n, v/2]``; the case starts rank 1 (``python -m benchmarks.cases.parallel
  --peer ...``) on 127.0.0.1, which runs the same step in lockstep until rank
  0 exits. Time and peak memory are rank 0's (the ranks are symmetric).

``input_bytes`` is the size of the full float32 logits ``n * v * 4``, so the
memory column reads as "extra memory per rank / logits size".

Bytes communicated per call are counted by wrapping ``torch.distributed``'s
collectives in the measured process (the runner's CSV has no column for
them, so run this module directly)::

    PYTHONPATH=src:. python -m benchmarks.cases.parallel            # n=4096, v=65536
    PYTHONPATH=src:. python -m benchmarks.cases.parallel --n 64 --v 512   # a check

Per call (torch, float32 statistics, ``W`` ranks, ``k`` stacked rows: 2, +1
with class weights, +1 with label smoothing): an all-gather of ``7 * 8``
bytes per rank, an all-reduce (max) of ``4 n`` and an all-reduce (sum) of
``4 (k n + 1)`` bytes; nothing in the backward pass. That is about
``4 n (k + 1)`` = ``12 n`` bytes (``k = 2``), against ``4 n v`` bytes of
logits.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys

import numpy as np

from ..registry import case

FULL = dict(n=4096, v=65536)
SIZES = {"quick": [dict(n=128, v=2048)], "full": [FULL], "sweep": [FULL]}
GROUP = "parallel"


def logits_bytes(size):
    return size["n"] * size["v"] * 4


def _data(size, lo=0, hi=None):
    rng = np.random.default_rng(0)
    n, v = size["n"], size["v"]
    z = rng.standard_normal((n, v), dtype=np.float32)
    t = rng.integers(0, v, size=n).astype(np.int64)
    return np.ascontiguousarray(z[:, lo:hi]), t


def _step(z, t, backward, loss_fn):
    import torch

    z = torch.from_numpy(z)
    t = torch.from_numpy(t)
    if backward:
        z.requires_grad_(True)

        def step():
            return torch.autograd.grad(loss_fn(z, t), (z,))
    else:
        def step():
            with torch.no_grad():
                return loss_fn(z, t).item()
    return step


@case(group=GROUP, impl="torch F.cross_entropy (1 device)", peer=True, sizes=SIZES,
      input_bytes=logits_bytes, note="the whole [n, v] logits in one process")
def torch_single(size, backward):
    import torch.nn.functional as F

    return _step(*_data(size), backward, lambda z, t: F.cross_entropy(z, t))


@case(group=GROUP, impl="xent sparse (1 device)", sizes=SIZES, input_bytes=logits_bytes,
      note="xent.sparse_softmax_cross_entropy on the whole logits")
def xent_single(size, backward):
    import xent

    return _step(*_data(size), backward, lambda z, t: xent.sparse_softmax_cross_entropy(z, t))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank, port):
    import datetime

    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))


def _shard(size, rank):
    half = size["v"] // 2
    return (0, half) if rank == 0 else (half, size["v"])


def _parallel_step(size, backward, rank):
    from xent import parallel as P

    lo, hi = _shard(size, rank)
    return _step(*_data(size, lo, hi), backward,
                 lambda z, t: P.vocab_parallel_cross_entropy(z, t))


@case(group=GROUP, impl="xent vocab_parallel (2 gloo ranks)", sizes=SIZES,
      input_bytes=logits_bytes,
      note="rank 0 of 2 on 127.0.0.1, [n, v/2] per rank; communicates ~12 n bytes")
def xent_vocab_parallel(size, backward):
    port = _free_port()
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(root, "src"), root,
                                         env.get("PYTHONPATH", "")])
    peer = subprocess.Popen([sys.executable, "-m", "benchmarks.cases.parallel", "--peer",
                             str(port), str(size["n"]), str(size["v"]), str(int(backward))],
                            env=env, cwd=root, stdout=subprocess.DEVNULL)
    atexit.register(peer.kill)
    import torch.distributed as dist

    if dist.is_initialized():  # --quick runs every job in one process: a fresh group per job
        dist.destroy_process_group()
    _init(0, port)
    return _parallel_step(size, backward, 0)


def _peer(port, n, v, backward):
    """Rank 1: the same step, forever, until rank 0 goes away."""
    _init(1, port)
    step = _parallel_step(dict(n=n, v=v), backward, 1)
    try:
        while True:
            step()
    except Exception:  # noqa: BLE001 - rank 0 exited: the group is gone
        os._exit(0)


class CommCounter:
    """Counts the bytes each rank sends into torch.distributed's collectives."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.calls = []
        self._orig = {}
        for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast"):
            fn = getattr(dist, name, None)
            if fn is None:
                continue
            self._orig[name] = fn
            setattr(dist, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def wrapped(*args, **kwargs):
            t = args[1] if name == "all_gather" else args[0]
            self.calls.append((name, t.numel() * t.element_size()))
            return fn(*args, **kwargs)

        return wrapped

    def restore(self):
        for name, fn in self._orig.items():
            setattr(self.dist, name, fn)


def _main(argv):
    import argparse
    import time

    p = argparse.ArgumentParser()
    p.add_argument("--peer", nargs=4, type=int, default=None)
    p.add_argument("--n", type=int, default=FULL["n"])
    p.add_argument("--v", type=int, default=FULL["v"])
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    if a.peer:
        _peer(*a.peer[:3], bool(a.peer[3]))
        return
    size = dict(n=a.n, v=a.v)
    step = xent_vocab_parallel(size, True)
    counter = CommCounter()
    step()  # forward + backward of one call
    per_call = list(counter.calls)
    counter.restore()
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sent = sum(b for _, b in per_call)
    lb = logits_bytes(size)
    print(f"n={a.n} v={a.v}, 2 gloo ranks, forward + backward, rank 0:")
    for name, b in per_call:
        print(f"  {name:<12} {b:>10} bytes")
    print(f"  total sent per call {sent} bytes = {sent / a.n:.2f} n bytes; full logits "
          f"{lb} bytes; ratio {sent / lb:.2e}")
    print(f"  median step {sorted(times)[len(times) // 2] * 1e3:.1f} ms (this machine, "
          "not for reporting unless idle)")


if __name__ == "__main__":
    _main(sys.argv[1:])
