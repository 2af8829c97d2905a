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

When the reduction promises a cotangent proportional to the sample weights
(``g_like``) and blocks of at least ``MIN_BLOCK_ROWS`` rows fit the budget,
the token-blocked layout of the torch kernel runs instead (``_fused``): three
products per block, the gradients formed in the forward pass. A block's
``[B, V]`` products are its one large buffer: its ``dl/dz`` is formed a
vocabulary slice at a time (``slice_cols``) in their place, each slice
adding its product into its rows of ``dW``, then ``dX`` of the block is one
product with the whole ``dl/dz``. The blocks are about 2.2 times as tall as
with separate ``[B, V]`` buffers for the logits, their exponentials and
``dl/dz`` (XLA's CPU products are slow when the block, the contracted
dimension for ``dW``, is thin). Compiled (``jax.jit(jax.value_and_grad(...))``)
at N=4096, D=1024, V=65536 it keeps 9.1% of the logits as XLA scratch
(293-row blocks, 18 slices), at N=8192, D=512, V=131072 8.9% (586-row blocks,
8 slices); the naive ``optax`` composition 200%.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._core.backend import get_backend
from .linear_rows import (Opts, chunk_start, even_blocks, grad_scale, label_logit, num_chunks,
                          online_init, online_update, row_loss, softcap)


#: float16 / bfloat16 compute in float32 (the one rule, ``Backend.compute_dtype``)
_cdt = get_backend("jax").compute_dtype


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


# Token blocks of fewer rows than this make thin products; the vocabulary layout is used then.
MIN_BLOCK_ROWS = 128

# A vocabulary slice's buffers (its ``dl/dz`` and its product with the block) take at most
# this fraction of one block's logits.
_SLICE_FRACTION = 0.25


def block_rows(n: int, d: int, o: Opts, dtype: Any, bias: bool = False,
               weighted: bool = False) -> int:
    """Rows per token block within the budget of ``n * o.chunk`` logits, or 0 (see torch's).

    The compiled block holds its ``[B, V]`` products ``x_b W^T`` (``dl/dz``
    replaces them in place, a vocabulary slice at a time) and, for one slice
    at a time, the slice's ``dl/dz`` ``[B, s]`` and its product with the
    block ``[s, D]``: at most ``_SLICE_FRACTION`` of the products more
    (``slice_cols``). With a bias or a softcap XLA also stores the logits
    formed from the products (its reductions do not fuse them), and with
    label smoothing it copies the products (the loss reads them for its sum
    as well as the loop): one more ``[B, V]`` each; with sample weights
    (``weighted``) an ``[N, D]`` more. The formed ``dX``,
    ``dW`` are the returned gradients (XLA writes them into the output
    buffers, and the backward pass's scaling reuses them), so they do not
    count.
    """
    if dtype in (jnp.float16, jnp.bfloat16) or n == 0:
        return 0
    held = 1.0 + _SLICE_FRACTION + (1.0 if bias or o.softcap is not None else 0.0)
    if o.smoothing != 0.0:  # the loss reads the products for its sum: XLA copies them
        held += 1.0
    # per row: the logits, the slice's share, the block's dX and its product ([B, D] each);
    # 5% of the budget is left for XLA's smaller buffers
    most = int((0.95 * n * o.chunk - (n * d if weighted else 0)) / (held * o.num_classes + 2 * d))
    return even_blocks(n, most, MIN_BLOCK_ROWS)


def slice_cols(B: int, d: int, nv: int) -> int:
    """Vocabulary columns per slice of a ``B``-row block: ``s (B + D) <= B V / 4``, as
    even as the fewest slices allow (a last, narrower slice takes the remainder)."""
    most = max(1, min(nv, int(_SLICE_FRACTION * B * nv) // (B + d)))
    return -(-nv // -(-nv // most))


def _fused(x, W, b, t, w_t, cw, sw, o: Opts, B: int):
    """Token-blocked forward that also forms ``dX`` (per row) and the ``sw``-weighted
    ``dW``, ``db``: per block of ``B`` rows the product for the logits, their row
    statistics, then per vocabulary slice its ``dl/dz``, written over the slice's
    products, and its product into the slice's rows of ``dW``; last the block's
    ``dX`` from the whole ``dl/dz``. Three products per block, two of them whole."""
    n, D = x.shape
    nv = o.num_classes
    s = o.smoothing
    dt = x.dtype
    S = nv if cw is None else jnp.sum(cw)
    wt_all = jnp.ones((n,), dt) if w_t is None else w_t
    sw_all = jnp.ones((n,), dt) if sw is None else sw.astype(dt)
    nb = -(-n // B)
    sc = slice_cols(B, D, nv)

    def body(carry, k):
        loss, dX, dW, db = carry
        r0 = jnp.minimum(k * B, n - B)
        xb = lax.dynamic_slice_in_dim(x, r0, B, 0)
        tb = lax.dynamic_slice_in_dim(t, r0, B)
        wt = lax.dynamic_slice_in_dim(wt_all, r0, B)
        # the products: the block's one [B, V] buffer, overwritten by dl/dz below (the
        # logits with a bias or a cap are a second one: XLA's reductions do not fuse them)
        ur = lax.dot_general(xb, W, (((1,), (1,)), ((), ())))
        u = softcap(jnp, ur if b is None else ur + b[None, :], o)
        m = jnp.max(u, axis=1)
        # the label's logit as a row-wise product: a gather from the products would be
        # one more reader of their buffer, which the slice loop overwrites, and XLA would copy it
        zt_rel = label_logit(jnp, xb, W, b, tb, dt, o) - m
        sm = None
        if s != 0.0:
            zr = u - m[:, None]
            sm = jnp.sum(zr, axis=1) if cw is None else jnp.where(cw != 0, zr, 0.0) @ cw
        log_se = jnp.log(jnp.sum(jnp.exp(u - m[:, None]), axis=1))
        lse = m + log_se
        w1 = wt if w_t is not None else 1.0
        lb = row_loss(log_se, zt_rel, sm, lse, w1, S, o)
        ga = grad_scale(lse, w1, S, o) * jnp.ones_like(lse)
        gt = (-(1.0 - s) * wt)[:, None]
        swb = lax.dynamic_slice_in_dim(sw_all, r0, B)
        swb = jnp.where(r0 + jnp.arange(B) >= k * B, swb, 0.0)  # rows the block before added
        xw = xb * swb[:, None]

        def part(c0, size, acc):
            """Columns ``c0 : c0 + size``: their ``dl/dz`` replaces their products in ``ur``
            (read once, in place) and adds its product into their rows of ``dW``."""
            ur, dW = acc
            cols = c0 + jnp.arange(size)
            uc = lax.dynamic_slice_in_dim(ur, c0, size, 1)
            if b is not None:
                uc = uc + lax.dynamic_slice_in_dim(b, c0, size)[None, :]
            uc = softcap(jnp, uc, o)
            dz = jnp.exp(uc - lse[:, None]) * ga[:, None]
            dz = dz + jnp.where(cols[None, :] == tb[:, None], gt, 0.0)
            if s != 0.0:
                cwc = (jnp.ones((size,), dt) if cw is None
                       else lax.dynamic_slice_in_dim(cw, c0, size))
                dz = dz - (s / nv) * cwc[None, :]
            if o.softcap is not None:
                th = uc / o.softcap
                dz = dz * (1.0 - th * th)
            prod = lax.dot_general(dz, xw, (((0,), (0,)), ((), ())))
            dW = lax.dynamic_update_slice_in_dim(
                dW, lax.dynamic_slice_in_dim(dW, c0, size, 0) + prod, c0, 0)
            return lax.dynamic_update_slice_in_dim(ur, dz, c0, 1), dW

        full = nv // sc
        acc = lax.fori_loop(0, full, lambda i, acc: part(i * sc, sc, acc), (ur, dW))
        if nv - full * sc:
            acc = part(full * sc, nv - full * sc, acc)
        dz, dW = acc  # the block's whole dl/dz, in the products' buffer
        dXb = lax.dot_general(dz, W, (((1,), (0,)), ((), ())))
        if b is not None:
            db = db + swb @ dz
        loss = lax.dynamic_update_slice_in_dim(loss, lb, r0, 0)
        dX = lax.dynamic_update_slice_in_dim(dX, dXb, r0, 0)
        return (loss, dX, dW, db), None

    init = (jnp.zeros((n,), dt), jnp.zeros((n, D), dt), jnp.zeros((nv, D), dt),
            None if b is None else jnp.zeros((nv,), dt))
    (loss, dX, dW, db), _ = lax.scan(body, init, jnp.arange(nb))
    return loss, (dX, dW, db)


@lru_cache(maxsize=None)
def _fused_kernel(o: Opts, B: int):
    @jax.custom_vjp
    def f(x, W, b, t, w_t, cw, sw):
        bias = jnp.zeros((o.num_classes,), x.dtype) if b is None else b
        return _forward(x, W, bias, t, w_t, cw, o)[0]

    def fwd(x, W, b, t, w_t, cw, sw):
        loss, grads = _fused(x, W, b, t, w_t, cw, sw, o, B)
        return loss, (grads, sw)

    def bwd(res, g):
        (dX, dW, db), sw = res
        w = jnp.ones_like(g) if sw is None else sw.astype(g.dtype)
        den = jnp.sum(w * w)
        c = jnp.where(den > 0, jnp.sum(g * w) / jnp.where(den > 0, den, 1.0), 0.0)
        # g = c * sw (the reductions): dX scales per row, dW and db by the scalar
        return (dX * g[:, None].astype(dX.dtype), dW * c.astype(dW.dtype),
                None if db is None else db * c.astype(db.dtype), None, None, None, None)

    f.defvjp(fwd, bwd)
    return jax.jit(f)


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


def rows(call: Any) -> Any:
    """The per-row loss ``[N]`` of a ``LinearCall``, differentiable for ``x``, ``W`` and ``b``.

    ``call.g_like``: as in the torch kernel, a promise that the cotangent is
    ``c * g_like`` (``1.0`` or ``[N]`` sample weights); it allows the
    token-blocked layout (three products per step).
    """
    x, W, b, t, w_t, cw = call.x, call.W, call.b, call.t, call.w_t, call.cw
    o, g_like = call.opts, call.g_like
    w_t = w_t if not isinstance(w_t, float) else None
    B = (block_rows(x.shape[0], x.shape[1], o, x.dtype, b is not None,
                    not isinstance(g_like, float)) if g_like is not None else 0)
    if B:
        sw = None if isinstance(g_like, float) else lax.stop_gradient(g_like)
        return _fused_kernel(o, B)(x, W, b, t, w_t, cw, sw)
    bias = jnp.zeros((o.num_classes,), x.dtype) if b is None else b
    return _kernel(o)(x, W, bias, t, w_t, cw)
