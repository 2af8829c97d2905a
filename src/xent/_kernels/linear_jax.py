"""JAX kernel of :func:`xent.linear_cross_entropy`: a ``custom_vjp`` over vocabulary chunks.

The forward pass walks the vocabulary with ``lax.scan``, ``chunk`` columns at a
time, keeping the online log-sum-exp statistics per row (O(N)); it saves only
``lse``. The backward pass walks the chunks again with the incoming per-row
cotangent ``g``: it recomputes the chunk's logits, forms ``g * dl/dz`` for the
chunk and adds its products into ``dX`` (a carried ``[N, D]``) and into the
chunk's rows of ``dW`` / ``db`` (``dynamic_update_slice`` of the carried
gradient, which XLA updates in place). Nothing of size ``[N, V]`` exists,
under ``jax.jit`` or not. The last chunk is clamped to end at ``V`` and masks
the columns the chunk before already counted, so no padded copy of the
classifier is made.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .linear_rows import (Opts, chunk_start, grad_scale, label_logit, num_chunks, online_init,
                     online_update, row_loss, softcap)


def _cdt(dtype: Any) -> Any:
    return jnp.float32 if dtype in (jnp.float16, jnp.bfloat16) else dtype


def _chunk(x: Any, W: Any, b: Any, cw: Any, k: Any, o: Opts, cdt: Any):
    """Chunk ``k``: its start, its classifier rows, logits (masked columns -inf) and weights."""
    start = chunk_start(k, o, jnp)
    Wc = lax.dynamic_slice_in_dim(W, start, o.chunk, 0)
    u = lax.dot_general(x, Wc, (((1,), (1,)), ((), ())), preferred_element_type=cdt)
    u = u + lax.dynamic_slice_in_dim(b, start, o.chunk).astype(cdt)
    th = None
    if o.softcap is not None:
        th = jnp.tanh(u / o.softcap)
        u = o.softcap * th
    cols = start + jnp.arange(o.chunk)
    colvalid = cols >= k * o.chunk
    cwc = jnp.ones((o.chunk,), cdt) if cw is None else lax.dynamic_slice_in_dim(cw, start, o.chunk)
    colw = jnp.where(colvalid, cwc, 0.0)
    return start, Wc, jnp.where(colvalid, u, -jnp.inf), colw, colvalid, cols, th


def _forward(x, W, b, t, w_t, cw, o: Opts):
    cdt = _cdt(x.dtype)
    n = x.shape[0]

    def body(state, k):
        _, _, z, colw, _, _, _ = _chunk(x, W, b, cw, k, o, cdt)
        return online_update(jnp, state, z, colw, o), None

    state, _ = lax.scan(body, online_init(jnp, n, cdt), jnp.arange(num_chunks(o)))
    m, se, sm, _ = state
    log_se = jnp.log(se)
    lse = m + log_se
    zt = label_logit(jnp, x, W, b, t, cdt, o)
    S = o.num_classes if cw is None else jnp.sum(cw)
    return row_loss(log_se, zt - m, sm, lse, 1.0 if w_t is None else w_t, S, o), lse


def _backward(x, W, b, t, w_t, cw, lse, g, o: Opts):
    cdt = _cdt(x.dtype)
    n, D = x.shape
    nv = o.num_classes
    s = o.smoothing
    wt = 1.0 if w_t is None else w_t
    S = nv if cw is None else jnp.sum(cw)
    ga = g * grad_scale(lse, wt, S, o)
    gt = (-(1.0 - s) * g * wt)[:, None]
    x32 = x.astype(cdt)

    def body(carry, k):
        dX, dW, db = carry
        start, Wc, z, colw, colvalid, cols, th = _chunk(x, W, b, cw, k, o, cdt)
        dz = jnp.exp(z - lse[:, None]) * ga[:, None]
        dz = dz + jnp.where(cols[None, :] == t[:, None], gt, 0.0)
        if s != 0.0:
            dz = dz - (s / nv) * g[:, None] * colw[None, :]
        if th is not None:
            dz = dz * (1.0 - th * th)
        dz = jnp.where(colvalid[None, :], dz, 0.0)
        dX = dX + lax.dot_general(dz, Wc.astype(cdt), (((1,), (0,)), ((), ())))
        dWc = lax.dot_general(dz, x32, (((0,), (0,)), ((), ())))
        dW = lax.dynamic_update_slice_in_dim(
            dW, lax.dynamic_slice_in_dim(dW, start, o.chunk, 0) + dWc, start, 0)
        db = lax.dynamic_update_slice_in_dim(
            db, lax.dynamic_slice_in_dim(db, start, o.chunk) + jnp.sum(dz, axis=0), start, 0)
        return (dX, dW, db), None

    init = (jnp.zeros((n, D), cdt), jnp.zeros((nv, D), cdt), jnp.zeros((nv,), cdt))
    (dX, dW, db), _ = lax.scan(body, init, jnp.arange(num_chunks(o)))
    return dX.astype(x.dtype), dW.astype(W.dtype), db.astype(b.dtype)


@lru_cache(maxsize=None)
def _kernel(o: Opts):
    @jax.custom_vjp
    def f(x, W, b, t, w_t, cw):
        return _forward(x, W, b, t, w_t, cw, o)[0]

    def fwd(x, W, b, t, w_t, cw):
        loss, lse = _forward(x, W, b, t, w_t, cw, o)
        return loss, (x, W, b, t, w_t, cw, lse)

    def bwd(res, g):
        x, W, b, t, w_t, cw, lse = res
        dX, dW, db = _backward(x, W, b, t, w_t, cw, lse, g, o)
        return (dX, dW, db, None, None, None)

    f.defvjp(fwd, bwd)
    return jax.jit(f)  # compiled once per options and shapes, also when called eagerly


def rows(x: Any, W: Any, b: Any, t: Any, w_t: Any, cw: Any, o: Opts) -> Any:
    """The per-row loss ``[N]``, differentiable for ``x``, ``W`` and ``b``."""
    bias = jnp.zeros((o.num_classes,), x.dtype) if b is None else b
    w_t = w_t if not isinstance(w_t, float) else None
    return _kernel(o)(x, W, bias, t, w_t, cw)
