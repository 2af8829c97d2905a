"""Row statistics and formulas shared by the linear cross-entropy kernels, and the NumPy kernel.

The formulas are in :mod:`xent.linear`'s docstring; the torch and JAX kernels
(``linear_torch.py``, ``linear_jax.py``) import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Logits held at once by a kernel (per buffer) when chunk_size is None: the larger of
# _BUDGET_FRACTION of the logits and _DEFAULT_BUDGET.
_DEFAULT_BUDGET = 1 << 22
_BUDGET_FRACTION = 0.1


@dataclass(frozen=True)
class Opts:
    """The static options of one call, shared by every kernel."""

    num_classes: int
    chunk: int  # vocabulary columns per chunk; the kernels hold about N * chunk logits
    smoothing: float
    z_loss: float
    softcap: float | None


def row_loss(log_se: Any, zt_rel: Any, sm_rel: Any, lse: Any, w_t: Any, S: Any, o: Opts) -> Any:
    """The per-row loss from the row statistics (see the module docstring).

    ``log_se = lse - m``, ``zt_rel = z_t - m``, ``sm_rel = sum_c w_c (z_c - m)``
    (unused when there is no smoothing), ``w_t`` the label's class weight
    (a scalar 1 without class weights), ``S = sum_c w_c``.
    """
    s = o.smoothing
    loss = ((1.0 - s) * w_t) * (log_se - zt_rel)
    if s != 0.0:
        loss = loss + (s / o.num_classes) * (S * log_se - sm_rel)
    if o.z_loss != 0.0:
        loss = loss + o.z_loss * lse * lse
    return loss


def grad_scale(lse: Any, w_t: Any, S: Any, o: Opts) -> Any:
    """``A`` in ``dl/dz = p A - (1 - s) w_t onehot(t) - (s / V) w``."""
    s = o.smoothing
    a = (1.0 - s) * w_t + (s / o.num_classes) * S
    if o.z_loss != 0.0:
        a = a + (2.0 * o.z_loss) * lse
    return a


def softcap(xp: Any, u: Any, o: Opts) -> Any:
    """``c * tanh(u / c)`` (identity without a cap)."""
    return u if o.softcap is None else o.softcap * xp.tanh(u / o.softcap)


def chunk_start(k: Any, o: Opts, xp: Any = None) -> Any:
    """First column of vocabulary chunk ``k``: ``k * chunk`` clamped so the chunk fits.

    The last chunk may overlap the one before; its columns below ``k * chunk``
    were already counted and are masked by the kernels.
    """
    last = o.num_classes - o.chunk
    return min(k * o.chunk, last) if xp is None else xp.minimum(k * o.chunk, last)


def num_chunks(o: Opts) -> int:
    return -(-o.num_classes // o.chunk)


def online_init(xp: Any, n: int, dtype: Any) -> tuple:
    """Row statistics before any chunk: (m, se, sm, S_seen).

    ``m`` starts at the dtype's lowest finite value, not ``-inf``, so that the
    first rescaling ``exp(m - m_new)`` is 0 rather than NaN.
    """
    low = float(np.finfo(np.float64 if "64" in str(dtype) else np.float32).min)
    m = xp.full((n,), low, dtype=dtype)
    zero = xp.zeros((n,), dtype=dtype)
    return m, zero, zero, xp.zeros((), dtype=dtype)


def online_update(xp: Any, state: tuple, z: Any, colw: Any, o: Opts,
                  matvec: Any = None) -> tuple:
    """Fold one chunk of logits ``z`` ``[N, c]`` into the row statistics (the online log-sum-exp).

    Masked columns hold ``-inf`` in ``z`` and 0 in ``colw`` (the chunk's class
    weights; ones without class weights). ``matvec(a, v)``: the library's
    matrix-vector product where ``a @ v`` is not one (TensorFlow).
    """
    m, se, sm, seen = state
    m_new = xp.maximum(m, xp.max(z, axis=1))
    se = se * xp.exp(m - m_new) + xp.sum(xp.exp(z - m_new[:, None]), axis=1)
    if o.smoothing != 0.0:
        zr = xp.where(colw == 0, xp.zeros_like(z), z - m_new[:, None])
        sm = sm - seen * (m_new - m) + (zr @ colw if matvec is None else matvec(zr, colw))
        seen = seen + xp.sum(colw)
    return m_new, se, sm, seen


def label_logit(xp: Any, x: Any, W: Any, b: Any, t: Any, dtype: Any, o: Opts) -> Any:
    """``z_t`` per row, as a row-wise dot product (``[N, D]`` work, no logits)."""
    wt = xp.take(W, t, axis=0)
    u = xp.sum(_cast(xp, x, dtype) * _cast(xp, wt, dtype), axis=1)
    if b is not None:
        u = u + _cast(xp, xp.take(b, t, axis=0), dtype)
    return softcap(xp, u, o)


def _cast(xp: Any, x: Any, dtype: Any) -> Any:
    return x if x.dtype == dtype else xp.astype(x, dtype)


def default_chunk(n: int, v: int, chunk_size: Any) -> int:
    """Vocabulary columns per chunk: ``chunk_size``, or the default budget.

    ``n * chunk`` logits is the memory budget of every layout: the vocabulary
    layout holds ``[n, chunk]``, the token-blocked one ``[n * chunk // v, v]``.
    By default it is 10% of the ``n * v`` logits, at least 4M logits (16 MB
    in float32).
    """
    if chunk_size is None:
        budget = max(_DEFAULT_BUDGET, int(_BUDGET_FRACTION * n * v))
        return max(1, min(v, budget // max(n, 1)))
    return max(1, min(v, chunk_size))


def even_blocks(n: int, most: int, least: int) -> int:
    """Rows per block for ``n`` rows and blocks of at most ``most`` rows, or 0 below ``least``.

    The fewest blocks that fit, made as even as ``least`` allows: the last
    block is clamped to end at ``n`` and redoes the rows the block before
    already did, so 4096 rows in blocks of at most 409 take 11 blocks of 373
    (7 rows done twice), not 11 of 409 (405 rows, 10% of the products).
    """
    if most >= n:
        return n
    if most < least:
        return 0
    nb = -(-n // most)
    return max(least, -(-n // nb))


def numpy_rows(call: Any) -> Any:
    """NumPy kernel: the per-row loss of a ``LinearCall``, one vocabulary chunk at a time."""
    x, W, b, t, w_t, cw = call.x, call.W, call.b, call.t, call.w_t, call.cw
    cdt, o = call.cdt, call.opts
    xp = np
    n = x.shape[0]
    state = online_init(xp, n, cdt)
    ones = np.ones(o.chunk, dtype=cdt)
    for k in range(num_chunks(o)):
        start = chunk_start(k, o)
        u = x @ W[start:start + o.chunk].T
        z = softcap(xp, _cast(xp, u, cdt) + (0 if b is None else b[start:start + o.chunk]), o)
        colvalid = np.arange(start, start + o.chunk) >= k * o.chunk
        z = np.where(colvalid, z, -np.inf)
        colw = np.where(colvalid, ones if cw is None else cw[start:start + o.chunk], 0)
        with np.errstate(invalid="ignore", over="ignore"):
            state = online_update(xp, state, z, colw, o)
    m, se, sm, _ = state
    with np.errstate(divide="ignore"):
        log_se = np.log(se)
    zt = label_logit(xp, x, W, b, t, cdt, o)
    S = o.num_classes if cw is None else np.sum(cw)
    return row_loss(log_se, zt - m, sm, m + log_se, w_t, S, o)
