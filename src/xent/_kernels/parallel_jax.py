"""JAX side of :mod:`xent.parallel`: per-row vocabulary-parallel loss inside ``jax.shard_map``.

Plain JAX autodiff, no ``custom_vjp``: the row maximum is a constant
(``stop_gradient`` before ``pmax``), and the one ``psum`` of the stacked row
statistics transposes, under ``shard_map``'s varying/invariant typing, into a
no-op: the backward pass has no collective. The linear variant walks the
local classifier rows with ``lax.scan`` over a ``jax.checkpoint``-ed body,
so autodiff recomputes each chunk's logits instead of saving them
(residuals: O(N) per chunk).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._core.backend import get_backend
from . import linear_rows


def _varying(a, axis):
    """``a`` typed as varying over ``axis`` (the scan carry must match its body's output)."""
    if hasattr(lax, "pcast"):
        return lax.pcast(a, (axis,), to="varying")
    if hasattr(lax, "pvary"):  # pragma: no cover - older JAX
        return lax.pvary(a, (axis,))
    return a  # pragma: no cover


def _sums(parts_fn, m_loc, S_loc, axis, slots):
    """pmax of the row maxima, then one psum of the stacked sums, ``S`` and the layout slots."""
    m = lax.pmax(lax.stop_gradient(m_loc), axis)
    m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    parts = parts_fn(m)
    k = len(parts)
    flat = jnp.concatenate([jnp.stack(parts).reshape(-1), jnp.reshape(S_loc, (1,)),
                            lax.stop_gradient(slots.astype(S_loc.dtype))])
    flat = lax.psum(flat, axis)
    n = m.shape[0]
    layout_ok = jnp.all(flat[k * n + 1:] == 1.0)
    return m, flat[:k * n].reshape(k, -1), flat[k * n], layout_ok


def _finish(m, tot, S, s, zl, nv, has_cw):
    se, zt = tot[0], tot[1]
    i = 2
    wt = None
    if has_cw:
        wt, i = tot[i], i + 1
    log_se = jnp.log(se)
    lse = m + log_se
    loss = ((1.0 - s) * (1.0 if wt is None else wt)) * (log_se - zt)
    if s:
        loss = loss + (s / nv) * (S * log_se - tot[i])
    if zl:
        loss = loss + zl * lse * lse
    return loss, wt


def rows(kind, arrays, t, keep, cw, vocab_start, axis, s, zl, n, vl, cdt, extra):
    """Per-row loss ``[n]`` (identical on every shard) and ``w_t`` (None without weights)."""
    size = lax.psum(1, axis)
    nv = size * vl
    me = lax.axis_index(axis)
    start_default = me * vl
    idx = get_backend("jax").index_dtype
    if vocab_start is None:
        start = start_default
        slots = jnp.zeros((0,))
    else:
        # every block [k vl, (k + 1) vl) claimed exactly once: a one-hot per shard, summed
        # in the same psum as the row statistics
        start = jnp.asarray(vocab_start, idx)
        slot = jnp.where(start % vl == 0, start // vl, -1)
        slots = (jnp.arange(size) == slot).astype(jnp.float32)
    t2 = jnp.reshape(t, (n,)).astype(idx)
    k2 = None if keep is None else jnp.reshape(keep, (n,))
    bad = (t2 < 0) | (t2 >= nv)
    if k2 is not None:
        bad = bad & k2
    owner = (t2 >= start) & (t2 < start + vl) & ~bad
    if k2 is not None:
        owner = owner & k2
    tl = jnp.where(owner, t2 - start, 0)
    cwc = None if cw is None else cw.astype(cdt)
    S_loc = jnp.asarray(float(vl), cdt) if cwc is None else jnp.sum(cwc)
    if kind == "dense":
        zc = arrays[1].astype(cdt)
        if k2 is not None:
            zc = jnp.where(k2[:, None], zc, 0.0)
        m_loc = jnp.max(zc, axis=1)

        def parts(m):
            out = [jnp.sum(jnp.exp(zc - m[:, None]), axis=1)]
            zt = jnp.take_along_axis(zc, tl[:, None], axis=1)[:, 0]
            out.append(jnp.where(owner, zt - m, 0.0))
            if cwc is not None:
                out.append(jnp.where(owner, cwc[tl], 0.0))
            if s:
                w = jnp.ones((vl,), cdt) if cwc is None else cwc
                out.append(jnp.where(w == 0, 0.0, zc - m[:, None]) @ w)
            return out

        m, tot, S, layout_ok = _sums(parts, m_loc, S_loc, axis, slots)
    else:
        x2, W, b = arrays[1], arrays[2], arrays[3]
        if k2 is not None:
            x2 = jnp.where(k2[:, None], x2, jnp.zeros((), x2.dtype))
        cap = extra["cap"]
        chunk = extra["chunk"](n, vl)
        nc = -(-vl // chunk)
        bc = jnp.zeros((vl,), cdt) if b is None else b.astype(cdt)
        wfull = jnp.ones((vl,), cdt) if cwc is None else cwc
        o = linear_rows.Opts(nv, chunk, s, zl, cap)

        def logits(k):
            st = jnp.minimum(k * chunk, vl - chunk)
            Wc = lax.dynamic_slice_in_dim(W, st, chunk, 0)
            u = lax.dot_general(x2, Wc, (((1,), (1,)), ((), ())), preferred_element_type=cdt)
            u = u.astype(cdt) + lax.dynamic_slice_in_dim(bc, st, chunk)
            if cap is not None:
                u = cap * jnp.tanh(u / cap)
            colvalid = st + jnp.arange(chunk) >= k * chunk
            w = jnp.where(colvalid, lax.dynamic_slice_in_dim(wfull, st, chunk), 0.0)
            return jnp.where(colvalid[None, :], u, -jnp.inf), w

        @jax.checkpoint
        def body(state, k):
            z, w = logits(k)
            return linear_rows.online_update(jnp, state, z, w, o), None

        init = linear_rows.online_init(jnp, n, cdt)
        init = jax.tree.map(lambda a: _varying(a, axis), init)
        (m_loc, se_loc, sm_loc, seen), _ = lax.scan(body, init, jnp.arange(nc))
        ut = jnp.sum(x2.astype(cdt) * W[tl].astype(cdt), axis=1) + bc[tl]
        if cap is not None:
            ut = cap * jnp.tanh(ut / cap)

        def parts(mg):
            out = [se_loc * jnp.exp(m_loc - mg), jnp.where(owner, ut - mg, 0.0)]
            if cwc is not None:
                out.append(jnp.where(owner, cwc[tl], 0.0))
            if s:
                out.append(sm_loc - seen * (mg - m_loc))
            return out

        m, tot, S, layout_ok = _sums(parts, m_loc, S_loc, axis, slots)
    loss, wt = _finish(m, tot, S, s, zl, nv, cwc is not None)
    if k2 is not None:
        loss = jnp.where(k2, loss, 0.0)
    loss = jnp.where(bad | ~layout_ok, jnp.nan, loss)
    return loss, wt
