"""Linear cross-entropy: ``loss(inputs @ classifier.T, labels)`` without the logits.

Group ``linear`` (float32 ``inputs [n, d]``, ``classifier [v, d]``, integer
labels, mean reduction) over growing vocabularies ``v``:

* peers: the naive ``F.cross_entropy(inputs @ classifier.T, labels)`` (PyTorch)
  and ``optax.softmax_cross_entropy_with_integer_labels(inputs @ classifier.T,
  labels).mean()`` under ``jax.jit`` (JAX);
* xent: ``xent.linear_cross_entropy`` on torch and on JAX (``jax.jit``).

A backward step returns the gradients with respect to ``inputs`` and
``classifier`` (``torch.autograd.grad`` / ``jax.value_and_grad``), so nothing
accumulates between steps. ``input_bytes`` is the size of the float32 logits
``n * v * 4``: extra memory is reported against what the naive path must hold.

Run directly for a self-contained measurement (time and peak extra memory of
one step after a warm-up, each implementation in a fresh process)::

    PYTHONPATH=src:. python -m benchmarks.cases.linear --size full
"""

from __future__ import annotations

import numpy as np

from ..registry import case

FULL = dict(n=4096, d=1024, v=65536)
FULL_WIDE = dict(n=8192, d=512, v=131072)
SIZES = {
    "quick": [dict(n=512, d=128, v=4096)],
    # the two headline sizes; the growth with V is the "sweep" (slow: ~15 min)
    "full": [FULL, FULL_WIDE],
    "sweep": [dict(n=4096, d=1024, v=16384), FULL, dict(n=4096, d=1024, v=131072)],
}
GROUP = "linear"


def logits_bytes(size):
    return size["n"] * size["v"] * 4


def _data(size):
    rng = np.random.default_rng(0)
    n, d, v = size["n"], size["d"], size["v"]
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32)
    w *= 1.0 / np.sqrt(d)
    t = rng.integers(0, v, size=n).astype(np.int64)
    return x, w, t


def _torch_step(size, backward, loss_fn):
    import torch

    x, w, t = (torch.from_numpy(a) for a in _data(size))
    if backward:
        x.requires_grad_(True)
        w.requires_grad_(True)

        def step():
            return torch.autograd.grad(loss_fn(x, w, t), (x, w))
    else:
        def step():
            with torch.no_grad():
                return loss_fn(x, w, t).item()
    return step


def _jax_step(size, backward, loss_fn):
    import jax
    import jax.numpy as jnp

    x, w, t = (jnp.asarray(a) for a in _data(size))
    f = jax.jit(jax.value_and_grad(loss_fn, (0, 1)) if backward else loss_fn)

    def step():
        return jax.block_until_ready(f(x, w, t))

    # XLA's own account of the scratch memory beyond arguments and outputs (exact, unlike
    # the resident size, which XLA's allocator keeps between steps)
    step.xla_temp_bytes = lambda: f.lower(x, w, t).compile().memory_analysis().temp_size_in_bytes
    return step


@case(group=GROUP, impl="torch F.cross_entropy(x @ W.T)", peer=True, sizes=SIZES,
      input_bytes=logits_bytes, note="naive: holds the [n, v] logits and their gradient")
def torch_naive(size, backward):
    import torch.nn.functional as F

    return _torch_step(size, backward, lambda x, w, t: F.cross_entropy(x @ w.T, t))


@case(group=GROUP, impl="torch F.linear_cross_entropy(chunked)", peer=True,
      sizes={k: v for k, v in SIZES.items() if k != "quick"}, input_bytes=logits_bytes,
      note="torch's chunked path: options=LinearCrossEntropyOptions()")
def torch_chunked(size, backward):
    import torch.nn.functional as F

    import torch

    opts = torch.nn.LinearCrossEntropyOptions()
    return _torch_step(size, backward,
                       lambda x, w, t: F.linear_cross_entropy(x, w, t, options=opts))


@case(group=GROUP, impl="xent torch", sizes=SIZES, input_bytes=logits_bytes,
      note="token blocks within 10% of the logits: gradients formed in the forward pass")
def torch_xent(size, backward):
    import xent

    return _torch_step(size, backward, lambda x, w, t: xent.linear_cross_entropy(x, w, t))


@case(group=GROUP, impl="optax jit(x @ W.T)", peer=True, sizes=SIZES, input_bytes=logits_bytes,
      note="naive under jax.jit")
def jax_naive(size, backward):
    import optax

    return _jax_step(size, backward, lambda x, w, t: optax.softmax_cross_entropy_with_integer_labels(
        x @ w.T, t).mean())


@case(group=GROUP, impl="xent jax jit", sizes=SIZES, input_bytes=logits_bytes,
      note="lax.scan over vocabulary chunks (or token blocks when they fit), custom_vjp")
def jax_xent(size, backward):
    import xent

    return _jax_step(size, backward, lambda x, w, t: xent.linear_cross_entropy(x, w, t))


def _tf_step(size, backward, loss_fn):
    import tensorflow as tf

    x, w, t = (tf.constant(a) for a in _data(size))

    @tf.function(jit_compile=True)
    def f(x, w, t):
        if not backward:
            return loss_fn(x, w, t)
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = loss_fn(x, w, t)
        return tape.gradient(loss, [x, w])

    def step():
        out = f(x, w, t)
        return [float(tf.reduce_sum(o)) for o in tf.nest.flatten(out)]
    return step


@case(group=GROUP, impl="tf.nn jit(x @ W.T)", peer=True, sizes=SIZES, input_bytes=logits_bytes,
      note="naive under tf.function(jit_compile=True)")
def tf_naive(size, backward):
    import tensorflow as tf

    return _tf_step(size, backward, lambda x, w, t: tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(t, tf.matmul(x, w, transpose_b=True))))


@case(group=GROUP, impl="xent tensorflow jit", sizes=SIZES, input_bytes=logits_bytes,
      note="vocabulary chunks, tf.custom_gradient")
def tf_xent(size, backward):
    import xent

    return _tf_step(size, backward, lambda x, w, t: xent.linear_cross_entropy(x, w, t))


# -- standalone measurement (the runner does the same in its own way) ---------------

def _rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _measure_one(impl, size, backward, repeats):
    """Seconds per step (best of ``repeats`` after a warm-up) and peak extra bytes.

    Extra memory: the peak resident size during one step (``VmHWM`` after
    resetting it through ``/proc/self/clear_refs``) minus the resident size
    before it, minus the gradients the step returns (glibc is told to return
    freed blocks of 64 KiB or more at once). For JAX also XLA's compiled
    ``temp_size_in_bytes``, the reliable figure there.
    """
    import time

    from ..registry import find

    step = find(f"{GROUP}/{impl}").fn(size, backward)
    out = step()  # warm-up (compilation, thread pools)
    del out
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    out = step()
    first = time.perf_counter() - t0
    peak = _rss("VmHWM") - before
    grads = size["n"] * size["d"] * 4 + size["v"] * size["d"] * 4 if backward else 0
    del out
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    xla = getattr(step, "xla_temp_bytes", None)
    return min(times), peak - grads, None if xla is None else xla()


def main(argv=None):
    import argparse
    import json
    import os
    import subprocess
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="quick", choices=list(SIZES))
    p.add_argument("--impl", action="append", help="only these implementations")
    p.add_argument("--forward", action="store_true", help="forward only")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--v", type=int, action="append", help="only these vocabulary sizes")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        impl, idx = json.loads(a.one)
        print(json.dumps(_measure_one(impl, SIZES[a.size][idx], not a.forward, a.repeats)))
        return
    impls = a.impl or ["torch F.cross_entropy(x @ W.T)", "xent torch", "optax jit(x @ W.T)",
                       "xent jax jit"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    for idx, size in enumerate(SIZES[a.size]):
        if a.v and size["v"] not in a.v:
            continue
        lb = logits_bytes(size)
        for impl in impls:
            cmd = [sys.executable, "-m", "benchmarks.cases.linear", "--size", a.size,
                   "--repeats", str(a.repeats), "--one", json.dumps([impl, idx])]
            if a.forward:
                cmd.append("--forward")
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode:
                print(f"{size} {impl}: failed\n{res.stderr[-2000:]}")
                continue
            sec, extra, xla = json.loads(res.stdout.strip().splitlines()[-1])
            line = (f"n={size['n']} d={size['d']} v={size['v']:>6}  {impl:<32} {sec:8.3f} s  "
                    f"RSS extra {extra / 2**20:8.1f} MiB = {extra / lb:6.1%} of logits")
            if xla is not None:
                line += f"  XLA temp {xla / 2**20:8.1f} MiB = {xla / lb:6.1%}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
