"""TensorFlow kernel of :func:`xent.linear_cross_entropy`: ``tf.custom_gradient`` over vocabulary chunks.

The forward pass walks the vocabulary ``chunk`` columns at a time, keeping the
online log-sum-exp statistics per row (O(N)), and saves only ``lse``. The
backward pass walks the chunks again with the incoming per-row gradient ``g``:
it recomputes the chunk's logits, forms ``g * dl/dz`` for the chunk, adds its
product into ``dX`` and adds its ``[chunk, D]`` product into the chunk's rows
of ``dW`` (and ``db``).

Both walks are one ``tf.while_loop`` (an XLA ``While`` under
``jit_compile=True``; ``parallel_iterations=1`` in a graph, so TF's executor
does not run ahead into later chunks), carrying the row statistics, then
``dX``, ``dW`` and ``db``. The chunk's rows of the carried ``dW`` / ``db``
are updated by ``tf.tensor_scatter_nd_add`` on the chunk's row indices, which
XLA does in place in the loop carry. So one chunk's ``[N, chunk]`` buffers are
alive at a time, eager, in a graph or compiled. (A Python loop over static
slices, unrolled into the graph, let XLA's scheduler hold many chunks at once:
1.5-1.9x the logits.) The last chunk is clamped to end at ``V`` and masks the
columns the chunk before already counted.

The default chunk (``chunk_size=None``) is narrowed here to ``_TF_FRACTION``
of the vocabulary (at least ``_TF_MIN_COLUMNS`` columns): compiled, the
backward step holds the chunk's logits, its ``dl/dz`` and a ``[N, D]``
product, so at the library's default budget (a tenth of the logits per
buffer) the step would keep over 20% of the logits. An explicit
``chunk_size`` is used as given. Compiled (forward and backward,
``tf.GradientTape``) the XLA program keeps 3.5% of the float32 logits as
scratch at N=2048, D=512, V=32768 and at N=4096, D=1024, V=65536, 3.1% at
N=8192, D=512, V=131072; the naive
``tf.nn.sparse_softmax_cross_entropy_with_logits(labels, x @ W.T)`` 200%. The process's peak
resident memory over one such step after warm-up, less the returned gradients,
rose by 4.5% of the logits at N=2048, D=512, V=32768 (the unrolled loop: 150%).

float16 / bfloat16 inputs are cast to float32 (the inputs once, the
classifier one chunk at a time) and accumulated in float32.

Why not the token-blocked layout of the torch and JAX kernels (three products
per step instead of four): under XLA on the CPU its thin products are no
faster than the fourth product it saves, within this kernel's memory bound.
A prototype (blocks of ``B`` rows holding their full-vocabulary logits, the
gradient formed at once, ``dW`` accumulated in the loop carry), fwd+bwd under
``jit_compile=True`` against the naive step, measured in one process on the
2-core CPU, 2026-12-03, at N=4096, D=1024, V=65536: 1.26x at ``B=128``,
1.10x at 256, 1.03x at 512, this kernel 1.30x; at N=2048, D=512, V=32768:
1.18x / 1.03x at 128 / 256, this kernel 1.34x. Its block holds its logits
and their ``dl/dz`` (two ``[B, V]`` buffers), so keeping the scratch within
5% of the logits allows ``B`` of about N/40 (about 100 rows at N=4096), where
it is slower than this kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from .._core.backend import get_backend
from .linear_rows import (Opts, default_chunk, grad_scale, label_logit, num_chunks, online_init,
                          online_update, row_loss)
from .._core import tf_namespace as xp


#: float16 / bfloat16 compute in float32 (the one rule, ``Backend.compute_dtype``)
_cdt = get_backend("tensorflow").compute_dtype

#: the default chunk here: this fraction of the vocabulary, at least _TF_MIN_COLUMNS columns
_TF_FRACTION = 1 / 64
_TF_MIN_COLUMNS = 256


def tf_chunk(n: int, o: Opts) -> int:
    """Columns per chunk: ``o.chunk`` when it was given, else the narrower TF default."""
    nv = o.num_classes
    if o.chunk != default_chunk(n, nv, None):
        return o.chunk
    return max(1, min(o.chunk, max(_TF_MIN_COLUMNS, int(nv * _TF_FRACTION))))


def _chunk(x32, W, b, cw, k, o: Opts, cdt):
    """Chunk ``k`` (a scalar tensor): its start, classifier rows, logits and column weights."""
    c = o.chunk
    start = tf.minimum(k * c, o.num_classes - c)
    Wc = tf.cast(tf.slice(W, tf.stack([start, 0]), [c, W.shape[1]]), cdt)
    u = tf.linalg.matmul(x32, Wc, transpose_b=True)
    if b is not None:
        u = u + tf.cast(tf.slice(b, [start], [c]), cdt)
    th = None
    if o.softcap is not None:
        th = tf.tanh(u / o.softcap)
        u = o.softcap * th
    colvalid = tf.range(c) >= k * c - start  # columns below were counted by the chunk before
    cwc = tf.ones((c,), cdt) if cw is None else tf.slice(cw, [start], [c])
    colw = tf.where(colvalid, cwc, tf.zeros_like(cwc))
    z = tf.where(colvalid[None, :], u, tf.constant(float("-inf"), cdt))
    return start, Wc, z, colw, colvalid, th


def _loop(body, init, o: Opts):
    """``body(k, *carry)`` over the chunks ``k = 0 .. num_chunks - 1``; the final carry."""
    nc = num_chunks(o)
    out = tf.while_loop(lambda k, *_: k < nc, lambda k, *c: (k + 1,) + tuple(body(k, *c)),
                        (tf.constant(0, tf.int32),) + tuple(init),
                        parallel_iterations=1, maximum_iterations=nc)
    return out[1:]


def _forward(x32, W, b, t, w_t, cw, o: Opts, cdt):
    n = x32.shape[0] if x32.shape[0] is not None else tf.shape(x32)[0]  # tf.data batches: None

    def body(k, *state):
        _, _, z, colw, _, _ = _chunk(x32, W, b, cw, k, o, cdt)
        return online_update(xp, state, z, colw, o, matvec=tf.linalg.matvec)

    m, se, sm, _ = _loop(body, online_init(xp, n, cdt), o)
    log_se = tf.math.log(se)
    lse = m + log_se
    zt = label_logit(xp, x32, W, b, t, cdt, o)
    S = o.num_classes if cw is None else tf.reduce_sum(cw)
    return row_loss(log_se, zt - m, sm, lse, w_t, S, o), lse


def _backward(x32, W, b, t, w_t, cw, lse, g, o: Opts, cdt):
    nv, s, c = o.num_classes, o.smoothing, o.chunk
    S = nv if cw is None else tf.reduce_sum(cw)
    ga = (g * grad_scale(lse, w_t, S, o))[:, None]
    gt = (-(1.0 - s) * g * w_t)[:, None]
    gs = (s / nv) * g[:, None]
    t32 = tf.cast(t, tf.int32)[:, None]

    def body(k, dX, dW, db):
        start, Wc, z, colw, colvalid, th = _chunk(x32, W, b, cw, k, o, cdt)
        dz = tf.exp(z - lse[:, None]) * ga
        cols = start + tf.range(c)
        dz = dz + tf.where(cols[None, :] == t32, gt, tf.zeros_like(dz))
        if s != 0.0:
            dz = dz - gs * colw[None, :]
        if th is not None:
            dz = dz * (1.0 - th * th)
        dz = tf.where(colvalid[None, :], dz, tf.zeros_like(dz))
        dX = dX + tf.linalg.matmul(dz, Wc)
        # rows the chunk before already wrote get zeros here (the masked columns of dz)
        idx = cols[:, None]
        dW = tf.tensor_scatter_nd_add(dW, idx, tf.linalg.matmul(dz, x32, transpose_a=True))
        db = tf.tensor_scatter_nd_add(db, idx, tf.reduce_sum(dz, axis=0))
        return dX, dW, db

    init = (tf.zeros_like(x32), tf.zeros((nv, x32.shape[1]), cdt), tf.zeros((nv,), cdt))
    return _loop(body, init, o)


def rows(call: Any) -> Any:
    """The per-row loss ``[N]`` of a ``LinearCall``, differentiable (``tf.GradientTape``).

    Gradients for ``x``, ``W`` and ``b``.
    """
    x, W, b, t, w_t, cw, o = call.x, call.W, call.b, call.t, call.w_t, call.cw, call.opts
    x = tf.convert_to_tensor(x)
    W = tf.convert_to_tensor(W)
    # a batch size unknown until run time counts one row in the budget's default, as
    # in linear_cross_entropy: the default chunk is then this module's narrow one
    o = dataclasses.replace(o, chunk=tf_chunk(x.shape[0] or 1, o))
    cdt = _cdt(x.dtype)
    w_t = tf.constant(1.0, cdt) if isinstance(w_t, float) else tf.cast(w_t, cdt)
    if cw is not None:
        cw = tf.cast(cw, cdt)
    has_b = b is not None
    bias = tf.convert_to_tensor(b) if has_b else tf.zeros((o.num_classes,), W.dtype)

    @tf.custom_gradient
    def f(x, W, bias):
        x32 = tf.cast(x, cdt)
        loss, lse = _forward(x32, W, bias if has_b else None, t, w_t, cw, o, cdt)

        def grad(g):
            g = tf.cast(g, cdt)
            dX, dW, db = _backward(x32, W, bias if has_b else None, t, w_t, cw, lse, g, o, cdt)
            return tf.cast(dX, x.dtype), tf.cast(dW, W.dtype), tf.cast(db, bias.dtype)

        return loss, grad

    return f(x, W, bias)
