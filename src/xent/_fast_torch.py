"""torch fast paths for the dense losses (method and formulas: ``_fast.py``).

One private ``torch.autograd.Function`` carries every loss: its forward runs a
*kernel* that returns the per-element loss and, when a gradient is needed, the
gradient ``dl/dz`` of every element's own loss, computed chunk by chunk in the
same pass that computes the loss. The backward scales that buffer in place by
the incoming gradient and hands it back, so the whole training step holds one
logits-sized buffer and a few cache-sized chunks.

Threads (CPU only): the row blocks run in Python threads while torch's own
intra-op pool is set to one thread (it is restored afterwards); small chunks
are cheaper that way than waking the pool for every operator. A lock makes
concurrent calls from several user threads run one at a time through this
section rather than fight over the setting.

Falls back (returns None) when: the logits are not contiguous with classes
last, empty, under a ``torch.func`` transform, or when a gradient would be
needed for an argument this path does not differentiate (class weights,
probability labels, ``pos_weight``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch.autograd.function import once_differentiable

from . import _fast as F

_LOCK = threading.Lock()
_INF = float("inf")
_GPU_CHUNK_BYTES = 1 << 28


@contextmanager
def _threads(z: torch.Tensor):
    """How many Python threads to use for ``z``; torch's pool is 1 meanwhile."""
    if z.device.type != "cpu" or z.numel() < F.MIN_PARALLEL:
        yield 1
        return
    n = torch.get_num_threads()
    if n <= 1 or not _LOCK.acquire(blocking=False):
        yield 1
        return
    try:
        torch.set_num_threads(1)
        yield n
    finally:
        torch.set_num_threads(n)
        _LOCK.release()


def _chunk_rows(z2: torch.Tensor) -> int:
    nbytes = F.CHUNK_BYTES if z2.device.type == "cpu" else _GPU_CHUNK_BYTES
    return F.rows_per_chunk(z2.shape[1], 4, nbytes)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _usable(z: torch.Tensor, *others) -> bool:
    functorch = getattr(torch._C, "_are_functorch_transforms_active", None)
    if functorch is not None and functorch():
        return False
    if z.dim() == 0 or z.numel() == 0 or not z.is_contiguous():
        return False
    grad = torch.is_grad_enabled()
    return not any(o is not None and grad and o.requires_grad for o in others)


class _Fused(torch.autograd.Function):
    """Loss from ``kernel(z2, True)``; the gradient buffer it returns is the backward."""

    @staticmethod
    def forward(ctx, z2, kernel):
        loss, grad = kernel(z2, True)
        ctx.grad = grad
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        g = ctx.grad
        if g is None:
            raise RuntimeError(
                "xent's fused loss was differentiated twice; its gradient buffer is reused "
                "in place (call backward once, or disable the fast path with "
                "xent._fast.disabled())")
        ctx.grad = None
        # in place: computed in the promoted dtype, stored in the logits' dtype
        g.mul_(grad_loss.reshape(grad_loss.shape + (1,) * (g.dim() - grad_loss.dim())))
        return g, None


def _apply(z2: torch.Tensor, kernel) -> torch.Tensor:
    if torch.is_grad_enabled() and z2.requires_grad:
        return _Fused.apply(z2, kernel)
    return kernel(z2, False)[0]


class _Buffers:
    """Per-thread scratch chunks, allocated on first use."""

    def __init__(self, rows: int, cols: int, dtype, device) -> None:
        self.shape, self.dtype, self.device = (rows, cols), dtype, device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int) -> torch.Tensor:
        b = self._bufs.get(name)
        if b is None:
            b = self._bufs[name] = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return b[:n]


def _load(zc, kc, bufs, n, cd):
    """The chunk in the compute dtype, zeroed on dropped rows (a private copy if needed)."""
    if zc.dtype == cd and kc is None:
        return zc
    x = bufs.get("x", n)
    x.copy_(zc)
    if kc is not None:
        x.masked_fill_(~kc[:, None], 0)
    return x


def _work_buffer(grad, r0, r1, bufs, n, cd):
    if grad is not None and grad.dtype == cd:
        return grad[r0:r1]
    return bufs.get("w", n)


def _shift(zc, w):
    """``w = z - m`` with ``m`` the row maximum (0 where it is not finite)."""
    m = zc.amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    torch.sub(zc, m, out=w)
    return m[:, 0]


def _masked_dot(a, w, tmp):
    """``sum_c a_c w_c`` per row, with ``0 * -inf`` counted as 0."""
    torch.mul(a, w, out=tmp)
    tmp.masked_fill_(a == 0, 0)
    return tmp.sum(1)


def sparse_loss(z, t, w_t, cw, keep, s, zl):
    if not _usable(z, cw, w_t):
        return None
    C = z.shape[-1]
    z2 = z.reshape(-1, C)
    t1 = t.reshape(-1)
    wt1 = None if w_t is None else w_t.reshape(-1)
    k1 = None if keep is None else keep.reshape(-1)
    cd = _compute_dtype(z.dtype)
    w_total = C if cw is None else cw.sum()
    sc = s / C
    smooth_w = None if s == 0.0 else (sc if cw is None else sc * cw)

    def kernel(z2, need_grad):
        loss, grad = _softmax_rows_init(z2, cd, need_grad)

        def chunk(r0, r1, w, bufs):
            n = r1 - r0
            kc = None if k1 is None else k1[r0:r1]
            zc = _load(z2[r0:r1], kc, bufs, n, cd)
            m = _shift(zc, w)
            tc = t1[r0:r1, None]
            wt = None if wt1 is None else wt1[r0:r1]
            a_sum, on = F.sparse_coefficients(wt, s, C, w_total)
            a_dot = on * w.gather(1, tc)[:, 0]
            if s != 0.0:
                if cw is None:
                    a_dot = a_dot + sc * w.sum(1)
                else:
                    a_dot = a_dot + sc * _masked_dot(cw.expand(n, C), w, bufs.get("t", n))
            w.exp_()
            S = w.sum(1)
            log_s = torch.log(S)
            lse = m + log_s
            loss[r0:r1] = F.row_loss(log_s, lse, a_sum, a_dot, zl)
            if grad is None:
                return None
            coef = (a_sum + 2.0 * zl * lse) if zl != 0.0 else a_sum
            w.mul_((coef / S)[:, None])
            if smooth_w is not None:
                w.sub_(smooth_w)
            if isinstance(on, torch.Tensor):
                src = (-on)[:, None].to(cd)
            else:
                src = torch.full((n, 1), -on, dtype=cd, device=w.device)
            w.scatter_add_(1, tc, src)
            if kc is not None:
                w.masked_fill_(~kc[:, None], 0)
            return None if grad.dtype == cd else w

        _run_chunks(z2, cd, grad, chunk)
        return loss, grad

    return _apply(z2, kernel).reshape(z.shape[:-1])


def _softmax_rows_init(z2, cd, need_grad):
    loss = torch.empty(z2.shape[0], dtype=cd, device=z2.device)
    grad = torch.empty_like(z2) if need_grad else None
    return loss, grad


def _run_chunks(z2, cd, grad, chunk):
    """``chunk(r0, r1, w, bufs)`` over row chunks of ``z2`` in threads.

    ``w`` is the chunk's work buffer: the gradient rows themselves when the
    gradient has the compute dtype, else a private chunk whose (returned)
    content is copied into the gradient rows in the logits' dtype.
    """
    N, C = z2.shape
    R = _chunk_rows(z2)

    def work(lo, hi):
        bufs = _Buffers(R, C, cd, z2.device)
        with torch.no_grad():  # grad mode is per thread
            for r0 in range(lo, hi, R):
                r1 = min(hi, r0 + R)
                w = _work_buffer(grad, r0, r1, bufs, r1 - r0, cd)
                out = chunk(r0, r1, w, bufs)
                if out is not None:
                    grad[r0:r1].copy_(out)

    with _threads(z2) as n:
        F.run_blocks(N, n, work)


def dense_loss(z, y, cw, keep, s, zl):
    if not _usable(z, cw, y) or y.shape != z.shape:
        return None
    C = z.shape[-1]
    z2 = z.reshape(-1, C)
    y2 = y.reshape(-1, C)
    k1 = None if keep is None else keep.reshape(-1)
    cd = _compute_dtype(z.dtype)
    sc = s / C

    def kernel(z2, need_grad):
        loss, grad = _softmax_rows_init(z2, cd, need_grad)

        def chunk(r0, r1, w, bufs):
            n = r1 - r0
            kc = None if k1 is None else k1[r0:r1]
            zc = _load(z2[r0:r1], kc, bufs, n, cd)
            a = bufs.get("a", n)
            a.copy_(y2[r0:r1])
            if s != 0.0:
                a.mul_(1.0 - s).add_(sc)
            if cw is not None:
                a.mul_(cw)
            if kc is not None:
                a.masked_fill_(~kc[:, None], 0)
            m = _shift(zc, w)
            a_sum = a.sum(1)
            a_dot = _masked_dot(a, w, bufs.get("t", n))
            w.exp_()
            S = w.sum(1)
            log_s = torch.log(S)
            lse = m + log_s
            loss[r0:r1] = F.row_loss(log_s, lse, a_sum, a_dot, zl)
            if grad is None:
                return None
            coef = (a_sum + 2.0 * zl * lse) if zl != 0.0 else a_sum
            w.mul_((coef / S)[:, None]).sub_(a)
            if kc is not None:
                w.masked_fill_(~kc[:, None], 0)
            return None if grad.dtype == cd else w

        _run_chunks(z2, cd, grad, chunk)
        return loss, grad

    return _apply(z2, kernel).reshape(z.shape[:-1])


def sigmoid_loss(z, y, pw, keep, s):
    if not _usable(z, y, pw) or y.shape != z.shape:
        return None
    C = z.shape[-1] if z.dim() >= 2 else 1
    if pw is not None and pw.numel() != 1:
        if z.dim() < 2 or tuple(pw.shape[-1:]) != (C,) or pw.numel() != C:
            return None
        pw = pw.reshape(C)
    z2, y2 = z.reshape(-1, C), y.reshape(-1, C)
    k2 = None if keep is None else keep.reshape(-1, C)
    cd = _compute_dtype(z.dtype)

    def kernel(z2, need_grad):
        N = z2.shape[0]
        loss = torch.empty((N, C), dtype=cd, device=z2.device)
        grad = torch.empty_like(z2) if need_grad else None

        def chunk(r0, r1, w, bufs):
            n = r1 - r0
            kc = None if k2 is None else k2[r0:r1]
            zc = z2[r0:r1]
            if zc.dtype != cd or kc is not None:
                x = bufs.get("x", n)
                x.copy_(zc)
                if kc is not None:
                    x.masked_fill_(~kc, 0)
                zc = x
            pos = bufs.get("a", n)
            pos.copy_(y2[r0:r1])
            if kc is not None:
                pos.masked_fill_(~kc, 0)
            if s != 0.0:
                pos.mul_(1.0 - s).add_(0.5 * s)
            neg = torch.neg(pos, out=bufs.get("b", n)).add_(1.0)
            if pw is not None:
                pos.mul_(pw)
            e = torch.abs(zc, out=bufs.get("e", n)).neg_().exp_()       # exp(-|z|)
            lc = loss[r0:r1]
            torch.log1p(e, out=lc)                                      # log1p(exp(-|z|))
            lc.mul_(pos + neg)
            t = bufs.get("t", n)
            torch.clamp(zc, min=0, out=t).mul_(neg).masked_fill_(neg == 0, 0)
            lc.add_(t)
            torch.clamp(zc, max=0, out=t).neg_().mul_(pos).masked_fill_(pos == 0, 0)
            lc.add_(t)
            if grad is None:
                return None
            # sigma(z) = 1/(1+e) for z >= 0 else e/(1+e); sigma(-z) = 1 - sigma(z)
            q = torch.add(e, 1.0).reciprocal_()                         # 1 / (1 + e)
            r = e.mul_(q)                                               # e / (1 + e)
            nonneg = zc >= 0
            sig = torch.where(nonneg, q, r)
            sig_neg = torch.where(nonneg, r, q)
            torch.mul(neg, sig, out=w)
            w.sub_(pos * sig_neg)
            if kc is not None:
                w.masked_fill_(~kc, 0)
            return None if grad.dtype == cd else w

        _run_chunks(z2, cd, grad, chunk)
        return loss, grad

    return _apply(z2, kernel).reshape(z.shape)
