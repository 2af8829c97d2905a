"""PyTorch kernel of :func:`xent.linear_cross_entropy`.

The tokens are walked in blocks of whole rows: a block's logits
``[rows, V]`` (``rows = ceil(N * chunk / V)``, so about ``N * chunk`` logits)
live in one reused buffer, which is turned in place into ``exp(z - m)``, then
into ``dl/dz``, then multiplied into the gradients. With whole rows the
log-sum-exp is exact after one product, so a training step costs the three
matrix products of the naive version (``x W^T``, ``dz W``, ``dz^T x``) and no
``[N, V]`` tensor ever exists.

For the scalar reductions the gradients are computed in the forward pass with
the per-row coefficients ``c_i = d reduce / d l_i`` (taken by autograd from
:func:`xent._reduce.reduce` itself, which is linear in ``l``). The backward
pass receives ``g = k * c`` (``l`` feeds only that reduction) and scales the
stored gradients by ``k = <g, c> / <c, c>``. For ``reduction="none"`` the
forward pass computes the loss only and the backward pass walks the blocks
again with ``g`` (four products instead of three).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .linear import Opts, grad_scale, row_loss

_LOW = (torch.float16, torch.bfloat16)


def _block_rows(n: int, o: Opts) -> int:
    return max(1, min(n, -(-n * o.chunk // o.num_classes)))


def _run(x: Any, W: Any, b: Any, t: Any, w_t: Any, cw: Any, o: Opts, coef: Any,
         need: tuple[bool, bool, bool]):
    """One walk over the token blocks: the per-row loss, and the gradients scaled by ``coef``."""
    n, D = x.shape
    nv = o.num_classes
    s = o.smoothing
    lowp = x.dtype in _LOW
    cdt = torch.float32 if lowp else x.dtype
    dev = x.device
    rows = _block_rows(n, o)
    buf = torch.empty((rows, nv), dtype=cdt, device=dev)
    th_buf = torch.empty_like(buf) if o.softcap is not None else None
    loss = torch.empty(n, dtype=cdt, device=dev)
    bc = None if b is None else b.to(cdt)
    S = float(nv) if cw is None else cw.sum()
    grads = coef is not None
    want_x, want_w, want_b = need if grads else (False, False, False)
    dX = torch.empty_like(x) if want_x else None
    dW = torch.zeros((nv, D), dtype=cdt, device=dev) if want_w else None
    db = torch.zeros(nv, dtype=cdt, device=dev) if want_b else None
    ones = torch.ones(nv, dtype=cdt, device=dev) if (grads and s and cw is None) else None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        z = buf[: r1 - r0]
        xb, tb = x[r0:r1], t[r0:r1, None]
        wtb = 1.0 if w_t is None else w_t[r0:r1]
        if lowp:
            z.copy_(xb @ W.T)
        else:
            torch.mm(xb, W.T, out=z)
        if bc is not None:
            z.add_(bc)
        if o.softcap is not None:
            th = th_buf[: r1 - r0]
            torch.div(z, o.softcap, out=th).tanh_()
            torch.mul(th, o.softcap, out=z)
        m = z.amax(1)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        z.sub_(m[:, None])
        zt = z.gather(1, tb)[:, 0]
        sm = None
        if s:
            sm = z.sum(1) if cw is None else torch.where(cw != 0, z, 0.0) @ cw
        z.exp_()
        se = z.sum(1)
        log_se = se.log()
        lse = m + log_se
        loss[r0:r1] = row_loss(log_se, zt, sm, lse, wtb, S, o)
        if not grads:
            continue
        cb = coef[r0:r1]
        # dl/dz = p A - (1 - s) w_t onehot(t) - (s / V) w, times the row coefficient
        z.mul_((cb * grad_scale(lse, wtb, S, o) / se)[:, None])
        if s != 1.0:
            z.scatter_add_(1, tb, (-(1.0 - s) * cb * wtb)[:, None])
        if s:
            z.addr_(cb, cw if cw is not None else ones, alpha=-s / nv)
        if o.softcap is not None:
            th.mul_(th).neg_().add_(1.0)
            z.mul_(th)
        if want_x:
            torch.mm(z.to(x.dtype) if lowp else z, W, out=dX[r0:r1])
        if want_w:
            dW.addmm_(z.T, xb.to(cdt) if lowp else xb)
        if want_b:
            db.add_(z.sum(0))
    if dW is not None:
        dW = dW.to(W.dtype)
    if db is not None:
        db = db.to(b.dtype)
    return loss, dX, dW, db


class _LinearCE(torch.autograd.Function):
    """Per-row loss of the linear classifier; see the module docstring."""

    @staticmethod
    def forward(ctx, x, W, b, t, w_t, cw, coef, o):  # noqa: D102
        need = tuple(bool(v) for v in ctx.needs_input_grad[:3])
        ctx.o, ctx.need = o, need
        if coef is not None and any(need):
            loss, dX, dW, db = _run(x, W, b, t, w_t, cw, o, coef, need)
            ctx.fused = True
            ctx.grads, ctx.coef = (dX, dW, db), coef
        else:
            loss = _run(x, W, b, t, w_t, cw, o, None, need)[0]
            ctx.fused = False
            ctx.save_for_backward(x, W, b, t, w_t, cw)
        return loss

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        if ctx.fused:
            if ctx.grads is None:
                raise RuntimeError(
                    "linear_cross_entropy computes its gradients in the forward pass and "
                    "can be differentiated once; call it again to backpropagate again"
                )
            c = ctx.coef
            den = (c * c).sum()
            pos = den > 0
            k = torch.where(pos, (g * c).sum() / torch.where(pos, den, 1.0), 0.0)
            grads = tuple(None if v is None else v.mul_(k.to(v.dtype)) for v in ctx.grads)
            ctx.grads = None
        else:
            x, W, b, t, w_t, cw = ctx.saved_tensors
            grads = _run(x, W, b, t, w_t, cw, ctx.o, g, ctx.need)[1:]
        return (*grads, None, None, None, None, None)


def rows(be: Any, x: Any, W: Any, b: Any, t: Any, w_t: Any, cw: Any, o: Opts,
         reduce: Callable[[Any], Any], lead: tuple[int, ...]) -> Any:
    """The per-row loss ``[N]``, differentiable for ``x``, ``W`` and ``b``."""
    cdt = torch.float32 if x.dtype in _LOW else x.dtype
    w_t = w_t if isinstance(w_t, torch.Tensor) else None
    coef = None
    need = torch.is_grad_enabled() and any(
        v is not None and v.requires_grad for v in (x, W, b))
    if need:
        with torch.enable_grad():
            u = torch.zeros(lead, dtype=cdt, device=x.device, requires_grad=True)
            out = reduce(u)
            if out.ndim == 0:
                coef = torch.autograd.grad(out, u)[0].detach().reshape(-1)
    return _LinearCE.apply(x, W, b, t, w_t, cw, coef, o)
