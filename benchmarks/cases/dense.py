"""Dense losses: sparse (integer-label) softmax, soft-label softmax and sigmoid CE.

Groups (every problem: float32 logits ``[n, c]``, mean reduction):

* ``dense_sparse``: softmax CE with integer labels (the issue's headline,
  ``[8192, 32768]`` as the "full" size);
* ``dense_soft``: softmax CE with probability labels of the logits' shape;
* ``dense_sigmoid``: sigmoid CE with 0/1 labels of the logits' shape.

Peers: PyTorch (``F.cross_entropy`` / ``F.binary_cross_entropy_with_logits``),
TensorFlow (``tf.nn.*`` in a ``tf.function``, gradients by ``GradientTape``),
optax under ``jax.jit`` (``jax.value_and_grad`` for the backward), and a naive
NumPy composition (``max / exp / sum / log``, forward only). xent runs on
NumPy (forward), torch and JAX (``jax.jit``), plus torch in bfloat16 and
float16. A backward step returns the gradient with respect to the logits
(``torch.autograd.grad``, so nothing accumulates between steps).
"""

from __future__ import annotations

import numpy as np

from ..registry import case

FULL = dict(n=8192, c=32768)
SIZES_SPARSE = {
    "quick": [dict(n=512, c=4096)],
    "full": [FULL],
    "sweep": [dict(n=1024, c=4096), dict(n=2048, c=8192), dict(n=4096, c=16384), FULL],
}
SIZES_DENSE = {  # no "quick" entry: --quick runs the headline problem only
    "full": [dict(n=4096, c=32768)],
    "sweep": [dict(n=1024, c=4096), dict(n=2048, c=8192), dict(n=4096, c=16384),
              dict(n=4096, c=32768)],
}


def _bytes(itemsize):
    return lambda size: size["n"] * size["c"] * itemsize


F32 = _bytes(4)
F16 = _bytes(2)


def _data(size, kind):
    """float32 logits ``[n, c]`` (scale 2) and labels of the kind (seeded)."""
    n, c = size["n"], size["c"]
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, c), dtype=np.float32)
    z *= 2.0
    if kind == "sparse":
        y = rng.integers(0, c, size=n).astype(np.int64)
    elif kind == "soft":
        y = rng.random((n, c), dtype=np.float32)
        y /= y.sum(axis=1, keepdims=True)
    else:
        y = (rng.random((n, c), dtype=np.float32) < 0.1).astype(np.float32)
    return z, y


# ----------------------------------------------------------------- torch ---
def _torch_step(loss_fn, z, y, backward):
    import torch

    if backward:
        z.requires_grad_(True)

        def step():
            loss = loss_fn(z, y)
            (g,) = torch.autograd.grad(loss, z)
            return float(loss), g
    else:
        def step():
            with torch.no_grad():
                return float(loss_fn(z, y))
    return step


def _torch_data(size, kind, dtype="float32"):
    import torch

    z, y = _data(size, kind)
    zt = torch.from_numpy(z)
    if dtype != "float32":
        zt = zt.to(getattr(torch, dtype))
        del z
        if kind != "sparse":
            y = torch.from_numpy(y).to(getattr(torch, dtype))
    return zt, torch.as_tensor(y)


def _torch_peer(kind, dtype="float32"):
    def fn(size, backward):
        import torch.nn.functional as F

        z, y = _torch_data(size, kind, dtype)
        if kind == "sigmoid":
            return _torch_step(F.binary_cross_entropy_with_logits, z, y, backward)
        return _torch_step(F.cross_entropy, z, y, backward)
    return fn


def _xent_torch(kind, dtype="float32"):
    def fn(size, backward):
        import xent

        z, y = _torch_data(size, kind, dtype)
        f = {"sparse": xent.sparse_softmax_cross_entropy, "soft": xent.softmax_cross_entropy,
             "sigmoid": xent.sigmoid_cross_entropy}[kind]
        return _torch_step(f, z, y, backward)
    return fn


# ------------------------------------------------------------------- jax ---
def _jax_step(loss_fn, size, kind, backward):
    import jax
    import jax.numpy as jnp

    z, y = _data(size, kind)
    zj, yj = jnp.asarray(z), jnp.asarray(y if kind != "sparse" else y.astype(np.int32))
    del z, y
    if backward:
        f = jax.jit(jax.value_and_grad(loss_fn))

        def step():
            loss, g = f(zj, yj)
            g.block_until_ready()
            return float(loss)
    else:
        f = jax.jit(loss_fn)

        def step():
            return float(f(zj, yj).block_until_ready())
    return step


def _optax(kind):
    def fn(size, backward):
        import optax

        op = {"sparse": optax.softmax_cross_entropy_with_integer_labels,
              "soft": optax.softmax_cross_entropy,
              "sigmoid": optax.sigmoid_binary_cross_entropy}[kind]
        return _jax_step(lambda z, y: op(z, y).mean(), size, kind, backward)
    return fn


def _xent_jax(kind):
    def fn(size, backward):
        import xent

        f = {"sparse": xent.sparse_softmax_cross_entropy, "soft": xent.softmax_cross_entropy,
             "sigmoid": xent.sigmoid_cross_entropy}[kind]
        return _jax_step(f, size, kind, backward)
    return fn


# ------------------------------------------------------------ tensorflow ---
def _tf(kind, use_xent=False, jit=False):
    """TF's op (or xent on TF tensors) in a ``tf.function``, optionally ``jit_compile=True``."""
    def fn(size, backward):
        import tensorflow as tf

        z, y = _data(size, kind)
        zt, yt = tf.constant(z), tf.constant(y)
        del z, y
        if use_xent:
            import xent

            loss_fn = {"sparse": xent.sparse_softmax_cross_entropy,
                       "soft": xent.softmax_cross_entropy,
                       "sigmoid": xent.sigmoid_cross_entropy}[kind]
        else:
            op = {"sparse": tf.nn.sparse_softmax_cross_entropy_with_logits,
                  "soft": tf.nn.softmax_cross_entropy_with_logits,
                  "sigmoid": tf.nn.sigmoid_cross_entropy_with_logits}[kind]

            def loss_fn(z, y):
                return tf.reduce_mean(op(labels=y, logits=z))

        if backward:
            @tf.function(jit_compile=jit)
            def f(z, y):
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    loss = loss_fn(z, y)
                # the whole gradient is an output: with only g[0, 0] returned, XLA would
                # compute that one element (it slices through the elementwise backward),
                # and the step would time little more than the forward pass
                return loss, tape.gradient(loss, z)
        else:
            @tf.function(jit_compile=jit)
            def f(z, y):
                return loss_fn(z, y), tf.constant(0.0)

        def step():
            loss, g = f(zt, yt)  # g: the [n, c] gradient (backward) or 0, held until return
            return float(loss.numpy()), g.shape
        return step
    return fn


# ----------------------------------------------------------------- floor ---
FLOOR_IMPL = "floor: torch.exp (allocating)"


def _floor(kind):
    """The floor of a torch fwd+bwd step: one allocating elementwise ``exp`` of the logits.

    It reads the logits once and writes (and page-faults) one new ``[n, c]``
    tensor, the memory traffic of writing the gradient; no loss does less.
    """

    def fn(size, backward):
        import torch

        z, _ = _torch_data(size, kind)

        def step():
            g = torch.exp(z)
            return float(g[0, 0])
        return step
    return fn


# ----------------------------------------------------------------- numpy ---
def _naive_numpy(kind):
    """The textbook composition: max, exp, sum, log (and a gather)."""

    def fn(size, backward):
        z, y = _data(size, kind)

        def lse(z):
            m = z.max(axis=-1, keepdims=True)
            return np.log(np.exp(z - m).sum(axis=-1)) + m[:, 0]

        if kind == "sparse":
            rows = np.arange(z.shape[0])

            def step():
                return float((lse(z) - z[rows, y]).mean())
        elif kind == "soft":
            def step():
                return float(-(y * (z - lse(z)[:, None])).sum(axis=-1).mean())
        else:
            def step():
                return float((np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean())
        return step
    return fn


def _xent_numpy(kind):
    def fn(size, backward):
        import xent

        z, y = _data(size, kind)
        f = {"sparse": xent.sparse_softmax_cross_entropy, "soft": xent.softmax_cross_entropy,
             "sigmoid": xent.sigmoid_cross_entropy}[kind]

        def step():
            return float(f(z, y))
        return step
    return fn


# ------------------------------------------------------------- register ---
_PEER_NAMES = {
    "sparse": ("torch F.cross_entropy", "tf.nn.sparse_softmax_cross_entropy_with_logits",
               "optax softmax_cross_entropy_with_integer_labels (jit)"),
    "soft": ("torch F.cross_entropy (prob. targets)", "tf.nn.softmax_cross_entropy_with_logits",
             "optax softmax_cross_entropy (jit)"),
    "sigmoid": ("torch F.binary_cross_entropy_with_logits",
                "tf.nn.sigmoid_cross_entropy_with_logits",
                "optax sigmoid_binary_cross_entropy (jit)"),
}

for _kind, _group, _sizes in (("sparse", "dense_sparse", SIZES_SPARSE),
                              ("soft", "dense_soft", SIZES_DENSE),
                              ("sigmoid", "dense_sigmoid", SIZES_DENSE)):
    _t, _f, _o = _PEER_NAMES[_kind]
    case(group=_group, impl=FLOOR_IMPL, peer=True, sizes=_sizes, input_bytes=F32,
         backward=(True,), tags=("floor",))(_floor(_kind))
    case(group=_group, impl=_t, peer=True, sizes=_sizes, input_bytes=F32)(_torch_peer(_kind))
    case(group=_group, impl=_f, peer=True, sizes=_sizes, input_bytes=F32)(_tf(_kind))
    case(group=_group, impl=f"{_f} (jit_compile)", peer=True, sizes=_sizes,
         input_bytes=F32)(_tf(_kind, jit=True))
    case(group=_group, impl="xent tensorflow (jit_compile)", sizes=_sizes,
         input_bytes=F32)(_tf(_kind, use_xent=True, jit=True))
    case(group=_group, impl=_o, peer=True, sizes=_sizes, input_bytes=F32)(_optax(_kind))
    case(group=_group, impl="numpy naive", peer=True, sizes=_sizes, input_bytes=F32,
         backward=(False,))(_naive_numpy(_kind))
    case(group=_group, impl="xent numpy", sizes=_sizes, input_bytes=F32,
         backward=(False,))(_xent_numpy(_kind))
    case(group=_group, impl="xent torch", sizes=_sizes, input_bytes=F32)(_xent_torch(_kind))
    case(group=_group, impl="xent jax (jit)", sizes=_sizes, input_bytes=F32)(_xent_jax(_kind))
    for _dt in ("bfloat16", "float16"):
        _sz = {k: v for k, v in _sizes.items() if k != "sweep" and (_dt == "bfloat16" or k != "quick")}
        case(group=_group, impl=f"xent torch {_dt}", sizes=_sz, input_bytes=F16,
             note="extra memory relative to the 16-bit logits")(_xent_torch(_kind, _dt))
    case(group=_group, impl=f"{_t} bfloat16", peer=True, input_bytes=F16,
         sizes={k: v for k, v in _sizes.items() if k != "sweep"})(_torch_peer(_kind, "bfloat16"))
