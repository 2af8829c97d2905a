"""NumPy fast paths for the dense losses (method and formulas: ``xent._kernels.table``).

NumPy has no autodiff, so these compute the per-element loss only: row
chunks that fit in the per-core cache, shifted, exponentiated and summed in
private buffers (the caller's arrays are only read), in one thread per core
(NumPy releases the GIL inside its ufuncs and reductions). float16 logits are
converted to float32 a chunk at a time.

Falls back (returns None) for logits that are not C-contiguous or are empty.
"""

from __future__ import annotations

from functools import partial

import os

import numpy as np

from . import rows as chunks


def _n_threads(size: int) -> int:
    if size < chunks.MIN_PARALLEL:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _usable(z) -> bool:
    return isinstance(z, np.ndarray) and z.ndim >= 1 and z.size > 0 and z.flags.c_contiguous


class _Buffers:
    def __init__(self, rows: int, cols: int, dtype) -> None:
        self.shape, self.dtype = (rows, cols), dtype
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int) -> np.ndarray:
        b = self._bufs.get(name)
        if b is None:
            b = self._bufs[name] = np.empty(self.shape, dtype=self.dtype)
        return b[:n]


def _load(zc, kc, bufs, n, cd):
    if zc.dtype == cd and kc is None:
        return zc
    x = bufs.get("x", n)
    np.copyto(x, zc, casting="unsafe")
    if kc is not None:
        x[~kc] = 0
    return x


def _masked_dot(a, w, tmp):
    np.multiply(a, w, out=tmp)
    tmp[a == 0] = 0
    return tmp.sum(axis=1)


def _rows(z2, cd, chunk):
    """``chunk(r0, r1, bufs)`` over row chunks of ``z2``, in threads."""
    N, C = z2.shape
    R = chunks.rows_per_chunk(C, 4)

    def work(lo, hi):
        bufs = _Buffers(R, C, cd)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for r0 in range(lo, hi, R):
                chunk(r0, min(hi, r0 + R), bufs)

    chunks.run_blocks(N, _n_threads(z2.size), work)


def _softmax_rows(z2, kc, bufs, n, cd, r0, r1):
    """(shifted chunk ``w = z - m`` in a buffer, ``m``) for rows ``r0:r1``."""
    zc = _load(z2[r0:r1], kc, bufs, n, cd)
    m = zc.max(axis=1)
    m[~np.isfinite(m)] = 0
    w = bufs.get("w", n)
    np.subtract(zc, m[:, None], out=w)
    return w, m


def _finish(w, m, a_sum, a_dot, zl, out):
    np.exp(w, out=w)
    log_s = np.log(w.sum(axis=1))
    out[...] = chunks.row_loss(log_s, m + log_s, a_sum, a_dot, zl)


def sparse_loss(call):
    z, t, w_t, cw, keep, s, zl = call.z, call.labels, call.w_t, call.cw, call.keep, call.s, call.zl
    cd = np.dtype(call.cdt)
    if call.gamma != 0.0 or not _usable(z):
        return None
    C = z.shape[-1]
    z2 = z.reshape(-1, C)
    t1 = np.asarray(t).reshape(-1)
    wt1 = None if w_t is None else np.asarray(w_t).reshape(-1)
    k1 = None if keep is None else np.asarray(keep).reshape(-1)
    loss = np.empty(z2.shape[0], dtype=cd)
    w_total = C if cw is None else cw.sum()
    sc = s / C

    def chunk(r0, r1, bufs):
        n = r1 - r0
        kc = None if k1 is None else k1[r0:r1]
        w, m = _softmax_rows(z2, kc, bufs, n, cd, r0, r1)
        wt = None if wt1 is None else wt1[r0:r1]
        a_sum, on = chunks.sparse_coefficients(wt, s, C, w_total)
        a_dot = on * w[np.arange(n), t1[r0:r1]]
        if s != 0.0:
            if cw is None:
                a_dot = a_dot + sc * w.sum(axis=1)
            else:
                a_dot = a_dot + sc * _masked_dot(np.broadcast_to(cw, (n, C)), w,
                                                 bufs.get("t", n))
        _finish(w, m, a_sum, a_dot, zl, loss[r0:r1])

    _rows(z2, cd, chunk)
    return loss.reshape(z.shape[:-1])


def dense_loss(call):
    z, y, cw, keep, s, zl, cd = call.z, call.labels, call.cw, call.keep, call.s, call.zl, call.cdt
    cd = np.dtype(cd)
    if call.gamma != 0.0 or not _usable(z) or y.shape != z.shape:
        return None
    C = z.shape[-1]
    z2 = z.reshape(-1, C)
    y2 = np.asarray(y).reshape(-1, C)
    k1 = None if keep is None else np.asarray(keep).reshape(-1)
    loss = np.empty(z2.shape[0], dtype=cd)
    sc = s / C

    def chunk(r0, r1, bufs):
        n = r1 - r0
        kc = None if k1 is None else k1[r0:r1]
        a = bufs.get("a", n)
        np.copyto(a, y2[r0:r1], casting="unsafe")
        if s != 0.0:
            a *= 1.0 - s
            a += sc
        if cw is not None:
            a *= cw
        if kc is not None:
            a[~kc] = 0
        w, m = _softmax_rows(z2, kc, bufs, n, cd, r0, r1)
        _finish(w, m, a.sum(axis=1), _masked_dot(a, w, bufs.get("t", n)), zl, loss[r0:r1])

    _rows(z2, cd, chunk)
    return loss.reshape(z.shape[:-1])


_safe_product = partial(chunks.safe_product, np)


def sigmoid_loss(call):
    z, y, pw, keep, s, cd = call.z, call.labels, call.pw, call.keep, call.s, np.dtype(call.cdt)
    if call.gamma != 0.0 or call.alpha is not None or not _usable(z) or y.shape != z.shape:
        return None
    C = z.shape[-1] if z.ndim >= 2 else 1
    if pw is not None and np.size(pw) != 1:
        if z.ndim < 2 or np.shape(pw)[-1:] != (C,) or np.size(pw) != C:
            return None
        pw = np.reshape(pw, (C,))
    z2, y2 = z.reshape(-1, C), np.asarray(y).reshape(-1, C)
    k2 = None if keep is None else np.asarray(keep).reshape(-1, C)
    loss = np.empty(z2.shape, dtype=cd)

    def chunk(r0, r1, bufs):
        n = r1 - r0
        kc = None if k2 is None else k2[r0:r1]
        zc = z2[r0:r1]
        if zc.dtype != cd or kc is not None:
            x = bufs.get("x", n)
            np.copyto(x, zc, casting="unsafe")
            if kc is not None:
                x[~kc] = 0
            zc = x
        pos = bufs.get("a", n)
        np.copyto(pos, y2[r0:r1], casting="unsafe")
        if kc is not None:
            pos[~kc] = 0
        if s != 0.0:
            pos *= 1.0 - s
            pos += 0.5 * s
        neg = np.subtract(1.0, pos, out=bufs.get("b", n))
        if pw is not None:
            pos *= pw
        lc = loss[r0:r1]
        e = np.abs(zc, out=bufs.get("e", n))
        np.negative(e, out=e)
        np.exp(e, out=e)                                    # exp(-|z|)
        np.log1p(e, out=lc)                                 # log1p(exp(-|z|))
        t = bufs.get("t", n)
        if np.isfinite(zc.sum()):  # cheaper than isfinite(zc).all()
            # pos softplus(-z) + neg softplus(z)
            #   = (pos + neg) log1p(exp(-|z|)) + pos max(-z, 0) + neg max(z, 0):
            # non-negative terms only, so a small loss keeps its digits
            if pw is not None:
                lc *= pos + neg
            np.maximum(zc, 0, out=t)
            t *= neg
            lc += t
            np.minimum(zc, 0, out=t)
            t *= pos
            lc -= t
        else:
            # infinite logits: each term on its own, 0 where its weight is 0
            sp = np.log1p(e) + np.maximum(zc, 0)            # softplus(z)
            lc -= np.minimum(zc, 0, out=t)                  # softplus(-z)
            lc[...] = _safe_product(pos, lc) + _safe_product(neg, sp)

    _rows(z2, cd, chunk)
    return loss.reshape(z.shape)
