"""TensorFlow kernel of :func:`xent.linear_cross_entropy`: ``tf.custom_gradient`` over vocabulary chunks.

The forward pass walks the vocabulary ``chunk`` columns at a time, keeping the
online log-sum-exp statistics per row (O(N)), and saves only ``lse``. The
backward pass walks the chunks again with the incoming per-row gradient ``g``:
it recomputes the chunk's logits, forms ``g * dl/dz`` for the chunk, adds its
product into ``dX`` and writes the chunk's rows of ``dW`` / ``db``. The chunk
loop is a Python loop over static slices (unrolled into the graph under
``tf.function``; each chunk's ``[N, chunk]`` buffers die before the next one
is computed), so nothing of size ``[N, V]`` exists, eager, in a graph or
under ``jit_compile=True``. The last chunk is clamped to end at ``V`` and
masks the columns the chunk before already counted.

float16 / bfloat16 inputs are cast to float32 (the inputs once, the
classifier one chunk at a time) and accumulated in float32.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from .._core.backend import get_backend
from .linear_rows import (Opts, chunk_start, grad_scale, label_logit, num_chunks, online_init,
                          online_update, row_loss)
from .._core import tf_namespace as xp


#: float16 / bfloat16 compute in float32 (the one rule, ``Backend.compute_dtype``)
_cdt = get_backend("tensorflow").compute_dtype


def _chunk(x32, W, b, cw, k: int, o: Opts, cdt):
    start = chunk_start(k, o)
    Wc = tf.cast(W[start:start + o.chunk], cdt)
    u = tf.linalg.matmul(x32, Wc, transpose_b=True)
    if b is not None:
        u = u + tf.cast(b[start:start + o.chunk], cdt)
    th = None
    if o.softcap is not None:
        th = tf.tanh(u / o.softcap)
        u = o.softcap * th
    first = k * o.chunk - start  # columns below this were counted by the chunk before
    colvalid = tf.range(o.chunk) >= first
    cwc = tf.ones((o.chunk,), cdt) if cw is None else tf.cast(cw[start:start + o.chunk], cdt)
    colw = tf.where(colvalid, cwc, tf.zeros_like(cwc))
    z = tf.where(colvalid[None, :], u, tf.constant(float("-inf"), cdt))
    return start, first, Wc, z, colw, colvalid, th


def _update(state, z, colw, o: Opts):
    return online_update(xp, state, z, colw, o, matvec=tf.linalg.matvec)


def _forward(x32, W, b, t, w_t, cw, o: Opts, cdt):
    n = x32.shape[0]
    state = online_init(xp, n, cdt)
    for k in range(num_chunks(o)):
        _, _, _, z, colw, _, _ = _chunk(x32, W, b, cw, k, o, cdt)
        state = _update(state, z, colw, o)
    m, se, sm, _ = state
    log_se = tf.math.log(se)
    lse = m + log_se
    zt = label_logit(xp, x32, W, b, t, cdt, o)
    S = o.num_classes if cw is None else tf.reduce_sum(cw)
    return row_loss(log_se, zt - m, sm, lse, w_t, S, o), lse


def _backward(x32, W, b, t, w_t, cw, lse, g, o: Opts, cdt):
    nv, s = o.num_classes, o.smoothing
    S = nv if cw is None else tf.reduce_sum(cw)
    ga = g * grad_scale(lse, w_t, S, o)
    gt = (-(1.0 - s) * g * w_t)[:, None]
    dX = tf.zeros_like(x32)
    dW_parts, db_parts = [], []
    for k in range(num_chunks(o)):
        start, first, Wc, z, colw, colvalid, th = _chunk(x32, W, b, cw, k, o, cdt)
        dz = tf.exp(z - lse[:, None]) * ga[:, None]
        cols = tf.range(start, start + o.chunk, dtype=t.dtype)
        dz = dz + tf.where(cols[None, :] == t[:, None], gt, tf.zeros_like(dz))
        if s != 0.0:
            dz = dz - (s / nv) * g[:, None] * colw[None, :]
        if th is not None:
            dz = dz * (1.0 - th * th)
        dz = tf.where(colvalid[None, :], dz, tf.zeros_like(dz))
        dX = dX + tf.linalg.matmul(dz, Wc)
        dWc = tf.linalg.matmul(dz, x32, transpose_a=True)
        # the clamped last chunk overlaps the one before: keep only its new rows
        dW_parts.append(dWc[first:])
        db_parts.append(tf.reduce_sum(dz, axis=0)[first:])
    return dX, tf.concat(dW_parts, axis=0), tf.concat(db_parts, axis=0)


def rows(call: Any) -> Any:
    """The per-row loss ``[N]`` of a ``LinearCall``, differentiable (``tf.GradientTape``).

    Gradients for ``x``, ``W`` and ``b``.
    """
    x, W, b, t, w_t, cw, o = call.x, call.W, call.b, call.t, call.w_t, call.cw, call.opts
    x = tf.convert_to_tensor(x)
    W = tf.convert_to_tensor(W)
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
