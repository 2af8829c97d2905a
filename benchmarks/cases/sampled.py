"""Sampled softmax and NCE over a huge vocabulary: xent against TensorFlow and the full softmax.

Groups (one problem each: float32 ``inputs [n, d]``, ``classifier [v, d]``,
``bias [v]``, one log-uniform (Zipfian) label per example, ``s`` candidates
drawn per step by the log-uniform sampler without replacement, mean over the
batch):

* ``sampled_softmax``: ``tf.nn.sampled_softmax_loss`` (the peer, in a
  ``tf.function`` with ``GradientTape``), ``xent.sampled_softmax_loss`` on
  torch and on JAX (``jax.jit`` of ``value_and_grad``), and the exact full
  softmax (torch ``F.cross_entropy`` of ``inputs @ classifier.T + bias`` over
  all ``v`` classes, in row chunks so that the logits fit in memory) for the
  ratio sampled / exact;
* ``nce``: the same with ``tf.nn.nce_loss`` / ``xent.nce_loss``.

Every step draws a fresh sample (each implementation with its own sampler)
and, with ``backward``, returns the gradients for inputs, classifier and bias
(TensorFlow's classifier gradient is ``IndexedSlices``; torch's and JAX's are
dense ``[v, d]`` arrays written only at the gathered rows).
"""

from __future__ import annotations

import numpy as np

from ..registry import case

FULL = dict(v=1_000_000, d=256, n=4096, s=8192)
SIZES = {"quick": [dict(v=20_000, d=64, n=512, s=1024)], "full": [FULL]}


def _classifier_bytes(size):
    return size["v"] * size["d"] * 4


def _data(size):
    v, d, n = size["v"], size["d"], size["n"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((v, d), dtype=np.float32)
    W *= 0.05
    b = np.zeros(v, dtype=np.float32)
    # Zipfian labels: the log-uniform distribution the sampler assumes.
    u = rng.random(n)
    labels = (np.floor(np.exp(u * np.log(v + 1))) - 1).astype(np.int64) % v
    return x, W, b, labels[:, None]


# ------------------------------------------------------------ TensorFlow ---
def _tf(kind):
    def fn(size, backward):
        import tensorflow as tf

        x, W, b, labels = _data(size)
        xv, Wv, bv = tf.Variable(x), tf.Variable(W), tf.Variable(b)
        y = tf.constant(labels)
        loss_fn = tf.nn.sampled_softmax_loss if kind == "sampled_softmax" else tf.nn.nce_loss
        v, s = size["v"], size["s"]

        @tf.function
        def step_fn():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(Wv, bv, y, xv, s, v))
            if not backward:
                return loss, ()
            return loss, tape.gradient(loss, [xv, Wv, bv])

        def step():
            loss, _ = step_fn()
            return float(loss.numpy())
        return step
    return fn


# ----------------------------------------------------------------- torch ---
def _xent_torch(kind):
    def fn(size, backward):
        import torch

        import xent

        x, W, b, labels = (torch.from_numpy(a) for a in _data(size))
        loss_fn = xent.sampled_softmax_loss if kind == "sampled_softmax" else xent.nce_loss
        gen = torch.Generator(device=x.device).manual_seed(0)
        params = [x.requires_grad_(backward), W.requires_grad_(backward),
                  b.requires_grad_(backward)]

        def step():
            with torch.set_grad_enabled(backward):
                loss = loss_fn(x, W, labels, num_sampled=size["s"], bias=b, rng=gen)
                if backward:
                    grads = torch.autograd.grad(loss, params)
                    del grads
            return float(loss)
        return step
    return fn


# ------------------------------------------------------------------- jax ---
def _xent_jax(kind):
    def fn(size, backward):
        import jax
        import jax.numpy as jnp

        import xent

        x, W, b, labels = (jnp.asarray(a) for a in _data(size))
        loss_fn = xent.sampled_softmax_loss if kind == "sampled_softmax" else xent.nce_loss
        base = jax.random.key(0)

        def loss(x_, W_, b_, i):
            return loss_fn(x_, W_, labels, num_sampled=size["s"], bias=b_,
                           rng=jax.random.fold_in(base, i))

        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)) if backward else loss)
        counter = [0]

        def step():
            counter[0] += 1
            out = f(x, W, b, counter[0])
            jax.block_until_ready(out)
            return out
        return step
    return fn


# ------------------------------------------------------ exact full softmax ---
def _full_softmax(size, backward):
    """torch ``F.cross_entropy`` over all v classes, 256 rows of logits at a time."""
    import torch
    import torch.nn.functional as F

    x, W, b, labels = (torch.from_numpy(a) for a in _data(size))
    labels = labels[:, 0]
    n = x.shape[0]
    chunk = 256

    def step():
        total = 0.0
        for p in (W, b):
            p.grad = None
            p.requires_grad_(backward)
        for i in range(0, n, chunk):
            xc = x[i:i + chunk].requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                loss = F.cross_entropy(xc @ W.T + b, labels[i:i + chunk], reduction="sum") / n
                if backward:
                    loss.backward()
            total += float(loss)
        return total
    return step


for _kind, _tf_name in (("sampled_softmax", "tf.nn.sampled_softmax_loss"),
                        ("nce", "tf.nn.nce_loss")):
    case(group=_kind, impl=_tf_name, peer=True, sizes=SIZES,
         input_bytes=_classifier_bytes)(_tf(_kind))
    case(group=_kind, impl="xent torch", sizes=SIZES, input_bytes=_classifier_bytes)(
        _xent_torch(_kind))
    case(group=_kind, impl="xent jax (jit)", sizes=SIZES, input_bytes=_classifier_bytes)(
        _xent_jax(_kind))
    case(group=_kind, impl="exact full softmax (torch F.cross_entropy)", peer=True, sizes=SIZES,
         input_bytes=_classifier_bytes,
         note="all v classes, logits in 256-row chunks: the cost sampling avoids")(_full_softmax)
