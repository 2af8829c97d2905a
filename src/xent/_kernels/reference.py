"""The reference kernels: each loss as a plain composition of the library's operators.

Every loss of the dispatch table (:mod:`xent._kernels.table`) has one of
these; they work for every backend (through ``be.xp`` and the Backend
primitives), get their gradients from the library's autodiff, and are what
``table.disabled()`` runs. A fused kernel must give their values and
gradients. Each takes the frozen record of the call
(:class:`xent._core.record.Call` / ``LinearCall``) and returns the
per-element loss.
"""

from __future__ import annotations

from typing import Any

from .._core.backend import Backend
from .._core.reduce import Reduced, plain_reduction
from .._core.record import Call, LinearCall
from .rows import safe_product


def _masked(be: Backend, x: Any, keep: Any, classes: bool) -> Any:
    """``x`` with the entries of non-contributing elements replaced by 0 (or None)."""
    if keep is None or x is None:
        return x
    xp = be.xp
    return xp.where(keep[..., None] if classes else keep, x, xp.zeros_like(x))


def sparse(call: Call) -> Any:
    """Integer labels: ``-(1 - s) w_t f_t log p_t - (s / C) sum_c w_c f_c log p_c``.

    ``f_c = (1 - p_c)**gamma`` (1 without the focal factor).
    """
    be, t, w_t, cw = call.be, call.labels, call.w_t, call.cw
    s, gamma, zl = call.s, call.gamma, call.zl
    xp = be.xp
    C = call.num_classes
    z = be.astype(call.z, call.cdt)
    if call.keep is not None:
        z = _masked(be, z, call.keep, True)
    if s == 0.0 and gamma == 0.0 and zl == 0.0:
        if w_t is None and call.keep is None:
            red = plain_reduction(call)
            if red is not None:
                # the plain mean / sum in one operator (torch: F.cross_entropy)
                return Reduced(be.label_nll_reduced(z, t, red))
        nll = be.label_nll(z, t)
        return nll if w_t is None else nll * w_t
    zs, lse_s, m = be.log_normalizer(z)
    logp_t = be.label_log_prob(z, t, (zs, lse_s, m))
    nll = -logp_t
    if gamma != 0.0:
        nll = nll * be.pow(-xp.expm1(logp_t), gamma)
    if w_t is not None:
        nll = nll * w_t
    loss = nll if s == 0.0 else (1.0 - s) * nll
    if s != 0.0:
        logp = zs - lse_s
        wc = xp.ones_like(logp) if cw is None else xp.broadcast_to(cw, tuple(logp.shape))
        if gamma != 0.0:
            wc = wc * be.pow(-xp.expm1(logp), gamma)
        loss = loss - (s / C) * xp.sum(safe_product(xp, wc, logp), axis=-1)
    if zl != 0.0:
        loss = loss + zl * (lse_s + m)[..., 0] ** 2
    return loss


def sparse_plain(call: Call) -> Any:
    """:func:`sparse` of a plain record (``table.run_plain``: no option set), in fewer steps.

    The same operators as :func:`sparse` applies to that record, without
    asking for the options it is known not to have.
    """
    be, z, red = call.be, call.z, call.reduction
    if z.dtype != call.cdt:
        z = be.astype(z, call.cdt)
    if red == "sum" or (red != "none" and 0 not in z.shape):
        # plain_reduction(call) of a plain record: every element counts 1
        return Reduced(be.label_nll_reduced(z, call.labels, "sum" if red == "sum" else "mean"))
    return be.label_nll(z, call.labels)


def dense(call: Call) -> Any:
    """Probability labels: ``-sum_c w_c y'_c (1 - p_c)^g log p_c``, ``y' = (1 - s) y + s / C``."""
    be, cw, s, gamma, zl = call.be, call.cw, call.s, call.gamma, call.zl
    xp = be.xp
    z = _masked(be, be.astype(call.z, call.cdt), call.keep, True)
    y = _masked(be, call.labels, call.keep, True)
    zs, lse_s, m = be.log_normalizer(z)
    logp = zs - lse_s
    ys = y if s == 0.0 else (1.0 - s) * y + s / call.num_classes
    w = ys if cw is None else ys * cw
    if gamma != 0.0:
        w = w * be.pow(-xp.expm1(logp), gamma)
    loss = xp.sum(safe_product(xp, w, -logp), axis=-1)
    if zl != 0.0:
        loss = loss + zl * (lse_s + m)[..., 0] ** 2
    return loss


def sigmoid(call: Call) -> Any:
    """``pw y' softplus(-z) + (1 - y') softplus(z)``, times the focal and ``alpha`` factors."""
    be, pw, s, gamma, alpha = call.be, call.pw, call.s, call.gamma, call.alpha
    xp = be.xp
    z = _masked(be, be.astype(call.z, call.cdt), call.keep, False)
    y = _masked(be, call.labels, call.keep, False)
    if s != 0.0:
        y = (1.0 - s) * y + 0.5 * s
    pos = y if pw is None else pw * y
    loss = safe_product(xp, pos, be.softplus(-z)) + safe_product(xp, 1.0 - y, be.softplus(z))
    if gamma != 0.0:
        # 1 - p_t = y' (1 - σ(z)) + (1 - y') σ(z), with 1 - σ(z) = σ(-z) exactly
        loss = loss * be.pow(y * be.sigmoid(-z) + (1.0 - y) * be.sigmoid(z), gamma)
    if alpha is not None:
        # torchvision's alpha_t: alpha on the positive part, 1 - alpha on the negative
        # part, of the labels before smoothing (1 on the elements that do not count)
        y0 = call.labels
        a_t = alpha * y0 + (1.0 - alpha) * (1.0 - y0)
        if call.keep is not None:
            a_t = xp.where(call.keep, a_t, xp.ones_like(a_t))
        loss = loss * a_t
    return loss


def linear(call: LinearCall) -> Any:
    """``sparse`` of the whole ``[N, V]`` logits ``x W^T + b`` (soft-capped): O(N V) memory."""
    be, o = call.be, call.opts
    xp = be.xp
    cdt = call.cdt
    z = be.matmul_t(be.astype(call.x, cdt), be.astype(call.W, cdt))
    if call.b is not None:
        z = z + be.astype(call.b, cdt)
    if o.softcap is not None:
        z = o.softcap * xp.tanh(z / o.softcap)
    w_t = None if isinstance(call.w_t, float) else call.w_t
    rows = Call(be, z, call.t, o.num_classes, cdt, cdt, "none", s=o.smoothing, zl=o.z_loss,
                cw=call.cw, w_t=w_t)
    return sparse(rows)
