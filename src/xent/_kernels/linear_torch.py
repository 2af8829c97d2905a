"""PyTorch kernel of :func:`xent.linear_cross_entropy`: a ``torch.autograd.Function``.

The vocabulary is walked in chunks of ``chunk`` columns; one reused buffer
``[N, chunk]`` holds a chunk's logits and is turned in place into
``exp(z - m)`` (forward) or into ``g * dl/dz`` (backward). Nothing of size
``[N, V]`` ever exists.

* forward: one product ``x W_c^T`` per chunk, folded into the online
  log-sum-exp statistics (running max ``m``, ``se``, and the smoothing sum);
  it saves ``lse`` ``[N]`` and keeps the last chunk's buffer, which already
  holds ``exp(z - m_final)``.
* backward, with the per-row cotangent ``g`` (any ``g``: every reduction and
  ``sample_weight`` gradients are plain autograd of :mod:`xent._core.reduce` on
  the per-row output): the last chunk from the kept buffer, the others
  recomputed; per chunk ``dX += dz W_c`` and ``dW_c = dz^T x``, written once.
  A second backward of the same graph (``retain_graph=True``) recomputes
  every chunk. A backward with ``create_graph=True`` (double backward,
  Hessians) differentiates the plain ``[N, V]`` composition instead, so
  higher-order gradients are exact (and cost the naive memory).

Layouts. The memory budget is ``N * chunk`` float32 logits (``chunk`` from
``chunk_size``; by default 10% of the ``N * V`` logits, at least 4M), and the
layout is picked per call from the problem's shape:

* **token-blocked** (three products per step, the naive count): even blocks of
  at most ``BLOCK_SHARE * N * chunk // V`` rows (``even_blocks``) hold their full-vocabulary logits, so the
  normalizer is known inside the block and ``G = dl/dZ`` is formed at once in
  the forward pass: ``dX_b = G W`` (written into ``dX``), ``dW += G^T (sw_b
  X_b)``, ``db += G^T sw_b`` (the first block writes ``dW`` and ``db``: no
  zero fill). The block's elementwise work is three passes without options:
  the row max, ``softmax`` in place (each row stays in cache through its max,
  exponentials, sum and scaling) and the max of ``p`` (``1 / se``, giving
  ``lse``); the other options add their own passes. ``dX`` is per row, so the backward pass scales
  it by any cotangent ``g``; ``dW`` and ``db`` need ``g = c * sw`` for one
  scalar ``c``, which the caller promises with ``g_like`` (every reduction
  but ``"none"``; ``c`` is recovered on the device, no host read). Chosen when
  ``B >= MIN_BLOCK_ROWS`` (128; thinner blocks make slow products) or
  ``B >= N``, for float32/float64, and when ``g_like`` is given or only ``x``
  needs a gradient. The formed gradients are the returned ones (scaled in
  place), so the extra memory is the ``[B, V]`` block (twice with a softcap).
  A second backward (``retain_graph``) recomputes with the vocabulary layout.
* **vocabulary chunks** (otherwise: ``reduction="none"`` with a classifier
  gradient, float16/bfloat16, or a budget under 128 rows): described above,
  about four products per step.

Every product has two large dimensions (``B`` or ``N``, and ``D`` or ``V`` /
``chunk``); on the CPU the logits products run through NumPy's BLAS
(``NUMPY_MATMUL`` below). Measured on the loaded 2-core CPU this was written
on, in one process, interleaved, float32 fwd+bwd at ``N=2048, D=512,
V=32768``: token-blocked 0.65x the naive ``F.cross_entropy(x @ W.T)``,
vocabulary chunks 0.96x (budget 10% of the logits, 204-row blocks), both
with ``torch.mm``. At ``N=1024, D=1024, V=16384`` in 342-row blocks (the
shape of the ``N=4096, D=1024, V=65536`` blocks at a quarter of the
vocabulary), one thread, all three products on NumPy's BLAS took the
token-blocked layout from 1.01x to 0.84x the naive path's CPU time; with two
threads only the logits product gains (see ``NUMPY_MATMUL``). With no
input requiring a gradient only the forward products run.

The TensorFlow kernel can follow the same plan: the same budget and
``block_rows`` rule, the gradients formed in the forward pass of a
``tf.custom_gradient`` and scaled in its gradient function.
"""

from __future__ import annotations

import os
from typing import Any

import array_api_compat.torch as xpt
import numpy as np
import torch

from .._core.backend import get_backend
from .linear_rows import Opts, even_blocks, grad_scale, label_logit, row_loss, softcap

_LOW = (torch.float16, torch.bfloat16)
#: float16 / bfloat16 compute in float32 (the one rule, ``Backend.compute_dtype``)
_cdt = get_backend("torch").compute_dtype


#: The CPU logits products ``Z = X W^T`` of float32 / float64 go through NumPy's
#: BLAS (``numpy.matmul`` with ``out=``, no copy: the arrays share the tensors'
#: memory) rather than ``torch.mm``. Measured in one process, interleaved, on the
#: 2-core AMD EPYC this was written on (torch's MKL, NumPy's OpenBLAS): the
#: token-block product ``[342, 1024] x [1024, V]`` took 0.6x the CPU time of
#: ``torch.mm`` with one thread, 0.7x with two. The gradient products stay with
#: torch: ``[342, V] x [V, 1024]`` was 0.85x with one thread but 2x with two, and
#: ``dW += G^T X`` (``addmm_``) has no in-place NumPy form. NumPy's BLAS has its own thread
#: pool (one thread per available core unless ``OPENBLAS_NUM_THREADS`` /
#: ``OMP_NUM_THREADS`` say otherwise), so the path is taken only while torch also
#: uses one thread per available core: after ``torch.set_num_threads(k)`` with
#: fewer, ``torch.mm`` runs. Off under ``torch.compile`` (traced code keeps
#: ``torch.mm``), for other devices and for other dtypes; set to False to use
#: ``torch.mm`` everywhere.
NUMPY_MATMUL = True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _numpy_ok(*ts: Any) -> bool:
    return (NUMPY_MATMUL and not torch.compiler.is_compiling()
            and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
                    and t.dtype == ts[0].dtype and not t.is_conj() and not t.is_neg()
                    for t in ts)
            and torch.get_num_threads() == _cores())


def mm(a: Any, b: Any, out: Any) -> Any:
    """``out = a @ b`` (2-D; ``out`` a buffer of the kernel, no autograd)."""
    if _numpy_ok(a, b, out):
        np.matmul(a.detach().numpy(), b.detach().numpy(), out=out.detach().numpy())
    else:
        torch.mm(a, b, out=out)
    return out


def _chunks(o: Opts) -> list[tuple[int, int]]:
    return [(s0, min(s0 + o.chunk, o.num_classes)) for s0 in range(0, o.num_classes, o.chunk)]


def _logits(x: Any, W: Any, b: Any, s0: int, s1: int, o: Opts, buf: Any, th_buf: Any):
    """The chunk's logits ``z`` in ``buf`` (soft-capped) and ``tanh`` in ``th_buf``."""
    z = buf[:, : s1 - s0]
    if x.dtype in _LOW:
        z.copy_(x @ W[s0:s1].T)
    else:
        mm(x, W[s0:s1].T, z)
    if b is not None:
        z.add_(b[s0:s1])
    th = None
    if o.softcap is not None:
        th = th_buf[:, : s1 - s0]
        torch.div(z, o.softcap, out=th).tanh_()
        torch.mul(th, o.softcap, out=z)
    return z, th


def _forward(x, W, b, t, w_t, cw, o: Opts, keep: bool):
    """Pass 1: the per-row loss and ``lse``; with ``keep``, the last chunk's buffers."""
    n = x.shape[0]
    s = o.smoothing
    cdt = _cdt(x.dtype)
    kw = dict(dtype=cdt, device=x.device)
    buf = torch.empty((n, min(o.chunk, o.num_classes)), **kw)
    th_buf = torch.empty_like(buf) if o.softcap is not None else None
    bc = None if b is None else b.to(cdt)
    m = torch.full((n,), float(np.finfo(np.float64 if cdt == torch.float64 else np.float32).min),
                   **kw)
    se = torch.zeros(n, **kw)
    sm = torch.zeros(n, **kw) if s else None
    seen = 0.0
    for s0, s1 in _chunks(o):
        z, _ = _logits(x, W, bc, s0, s1, o, buf, th_buf)
        m_new = torch.maximum(m, z.amax(1))
        z.sub_(m_new[:, None])
        if s:
            cwc = None if cw is None else cw[s0:s1]
            part = z.sum(1) if cwc is None else torch.where(cwc != 0, z, 0.0) @ cwc
            sm = sm - seen * (m_new - m) + part
            seen = seen + ((s1 - s0) if cwc is None else cwc.sum())
        se.mul_(torch.exp(m - m_new))
        se.add_(z.exp_().sum(1))
        m = m_new
    log_se = se.log()
    lse = m + log_se
    zt = label_logit(xpt, x, W, bc, t, cdt, o)
    S = float(o.num_classes) if cw is None else cw.sum()
    loss = row_loss(log_se, zt - m, sm, lse, 1.0 if w_t is None else w_t, S, o)
    last = (buf, th_buf, se) if keep else None
    return loss, lse, last


def _backward(x, W, b, t, w_t, cw, lse, g, o: Opts, need, last):
    """Pass 2: ``g``-weighted gradients for ``x``, ``W``, ``b`` (those in ``need``)."""
    n, D = x.shape
    s = o.smoothing
    lowp = x.dtype in _LOW
    cdt = torch.float32 if lowp else x.dtype
    kw = dict(dtype=cdt, device=x.device)
    want_x, want_w, want_b = need
    wt = 1.0 if w_t is None else w_t
    S = float(o.num_classes) if cw is None else cw.sum()
    g = g.to(cdt)
    ga = (g * grad_scale(lse, wt, S, o))[:, None]
    gt = (-(1.0 - s) * g * wt)[:, None]
    dX = torch.zeros((n, D), **kw) if want_x else None
    dW = torch.empty_like(W) if want_w else None
    db = torch.empty(o.num_classes, **kw) if want_b else None
    bc = None if b is None else b.to(cdt)
    chunks = _chunks(o)
    if last is not None:  # the forward's last chunk holds exp(z - m) with the final m
        buf, th_buf, se = last
        chunks = chunks[-1:] + chunks[:-1]
    else:
        buf = torch.empty((n, min(o.chunk, o.num_classes)), **kw)
        th_buf = torch.empty_like(buf) if o.softcap is not None else None
    for i, (s0, s1) in enumerate(chunks):
        if i == 0 and last is not None:
            z = buf[:, : s1 - s0]
            th = None if th_buf is None else th_buf[:, : s1 - s0]
            z.mul_(ga / se[:, None])
        else:
            z, th = _logits(x, W, bc, s0, s1, o, buf, th_buf)
            z.sub_(lse[:, None]).exp_().mul_(ga)
        # dl/dz = p A - (1 - s) w_t onehot(t) - (s / V) w, times g (no host sync)
        inside = (t >= s0) & (t < s1)
        col = (t - s0).clamp(0, s1 - s0 - 1)[:, None]
        z.scatter_add_(1, col, torch.where(inside[:, None], gt, 0.0))
        if s:
            cwc = torch.ones(s1 - s0, **kw) if cw is None else cw[s0:s1]
            z.addr_(g, cwc, alpha=-s / o.num_classes)
        if th is not None:
            th.mul_(th).neg_().add_(1.0)
            z.mul_(th)
        if want_x:
            dX.addmm_(z, W[s0:s1].to(cdt) if lowp else W[s0:s1])
        if want_w:
            torch.mm((z.to(x.dtype) if lowp else z).T, x, out=dW[s0:s1])
        if want_b:
            torch.sum(z, 0, out=db[s0:s1])
    return (None if dX is None else dX.to(x.dtype), dW,
            None if db is None else db.to(b.dtype))


def _plain_rows(x, W, b, t, w_t, cw, o: Opts):
    """The per-row loss as a differentiable composition over the whole ``[N, V]`` logits."""
    cdt = _cdt(x.dtype)
    z = x.to(cdt) @ W.to(cdt).T
    if b is not None:
        z = z + b.to(cdt)
    if o.softcap is not None:
        z = softcap(xpt, z, o)
    lse = torch.logsumexp(z, 1)
    zt = z.gather(1, t.reshape(-1, 1).long())[:, 0]
    sm = None
    if o.smoothing:
        sm = z.sum(1) if cw is None else torch.where(cw != 0, z, 0.0) @ cw
    S = float(o.num_classes) if cw is None else cw.sum()
    return row_loss(lse, zt, sm, lse, 1.0 if w_t is None else w_t, S, o)


# Token blocks of fewer rows than this make thin products; the vocabulary layout is used then.
MIN_BLOCK_ROWS = 128

#: The token block's ``[B, V]`` buffer takes at most this share of the budget. The rest is
#: left for what the step holds besides it: the BLAS libraries' work buffers (about 13 MB
#: on first use here, OpenBLAS's and MKL's packing space) and the per-row vectors. Measured
#: at N=4096, D=1024, V=65536 in a fresh process (the benchmark's ``VmHWM`` method), the
#: step's extra memory beyond the returned gradients was 11.2% of the logits with the whole
#: budget in the block (373-row blocks) and 9.1% with this share (293 rows), at about 3% more time.
BLOCK_SHARE = 0.75


def block_rows(n: int, o: Opts, dtype: Any) -> int:
    """Rows per token block within the budget of ``n * o.chunk`` logits, or 0 (vocabulary layout).

    The token-blocked layout holds a block's full-vocabulary logits, so the
    budget of ``n * chunk`` logits allows ``BLOCK_SHARE * n * chunk // V`` rows (the
    rest of the budget is left for the libraries' work buffers). It is chosen
    when that is at least ``MIN_BLOCK_ROWS`` rows (or the whole batch) and the
    dtype is float32 / float64 (low precision keeps the vocabulary layout,
    which writes the classifier's gradient once, with no float32 accumulator).
    """
    if dtype in _LOW or n == 0:
        return 0
    return even_blocks(n, int(BLOCK_SHARE * n * o.chunk) // o.num_classes, MIN_BLOCK_ROWS)


def _blocks(n: int, B: int) -> list[tuple[int, int, int]]:
    """``(r0, r1, fresh)``: blocks of ``B`` rows; the last one is clamped to end at ``n``
    and its rows below ``fresh`` were already done by the block before."""
    out = []
    for k in range(-(-n // B)):
        r0 = min(k * B, n - B)
        out.append((r0, r0 + B, k * B))
    return out


def _fused(x, W, b, t, w_t, cw, sw, o: Opts, B: int, need):
    """Token-blocked forward that also forms the gradients (three products per block).

    Per block of ``B`` rows: ``Z = X_b W^T`` (full vocabulary), the row
    statistics and loss, then ``G = dl/dZ`` in place, ``dX_b = G W`` and
    ``dW += G^T (sw_b X_b)``, ``db += G^T sw_b``. ``dX`` is per row, so the
    backward pass scales it by any cotangent ``g``; ``dW`` and ``db`` are
    weighted by ``sw`` (ones when None), so they are exact when the backward's
    ``g`` is ``c * sw`` for one scalar ``c`` (what every reduction but
    ``"none"`` gives).
    """
    n, D = x.shape
    s = o.smoothing
    nv = o.num_classes
    want_x, want_w, want_b = need
    kw = dict(dtype=x.dtype, device=x.device)
    buf = torch.empty((B, nv), **kw)
    th_buf = torch.empty_like(buf) if o.softcap is not None else None
    loss = torch.empty(n, **kw)
    lse_all = torch.empty(n, **kw)
    dX = torch.empty((n, D), **kw) if want_x else None
    # written by the first block's product, accumulated by the others (no zero fill)
    dW = torch.empty_like(W) if want_w else None
    db = torch.empty(nv, **kw) if want_b else None
    S = float(nv) if cw is None else cw.sum()
    grad = any(need)
    for r0, r1, fresh in _blocks(n, B):
        xb = x[r0:r1]
        tb = t[r0:r1]
        z, th = _logits(xb, W, b, 0, nv, o, buf, th_buf)
        m = z.amax(1)
        zt_rel = z.gather(1, tb[:, None])[:, 0] - m
        sm = None
        if s:  # sum_c w_c (z_c - m), from the shifted logits (no cancellation)
            z.sub_(m[:, None])
            sm = z.sum(1) if cw is None else torch.where(cw != 0, z, 0.0) @ cw
        # p = softmax(z) in place: one pass over the block (each row in cache), not
        # separate passes for exp, the sum and the scaling
        torch.softmax(z, 1, out=z)
        # the largest p is exp(0) / se (at the row max), so log_se = -log(max p)
        log_se = -z.amax(1).log()
        lse = m + log_se
        wt = 1.0 if w_t is None else w_t[r0:r1]
        loss[r0:r1] = row_loss(log_se, zt_rel, sm, lse, wt, S, o)
        lse_all[r0:r1] = lse
        if not grad:
            continue
        a = grad_scale(lse, wt, S, o)
        if not (isinstance(a, float) and a == 1.0):  # 1 without options: p as it is
            z.mul_(a[:, None] if isinstance(a, torch.Tensor) and a.ndim else a)
        z.scatter_add_(1, tb[:, None], (-(1.0 - s) * (wt * torch.ones_like(lse)))[:, None])
        if s:
            cwc = torch.ones(nv, **kw) if cw is None else cw
            z.sub_(cwc[None, :], alpha=s / nv)
        if th is not None:
            th.mul_(th).neg_().add_(1.0)
            z.mul_(th)
        if want_w or want_b:
            swb = None if sw is None else sw[r0:r1].to(x.dtype)
            if fresh > r0:  # rows the block before already added
                swb = torch.where(torch.arange(r0, r1, device=x.device) >= fresh,
                                  1.0 if swb is None else swb, 0.0).to(x.dtype)
            if want_w:
                xw = xb if swb is None else xb * swb[:, None]
                if r0 == 0:
                    torch.mm(z.T, xw, out=dW)
                else:
                    dW.addmm_(z.T, xw)
            if want_b:
                zb = z.sum(0) if swb is None else z.T @ swb
                if r0 == 0:
                    db.copy_(zb)
                else:
                    db.add_(zb)
        if want_x:
            torch.mm(z, W, out=dX[r0:r1])
    return loss, lse_all, (dX, dW, db)


class _LinearCE(torch.autograd.Function):
    """Per-row loss of the linear classifier; see the module docstring."""

    @staticmethod
    def forward(ctx, x, W, b, t, w_t, cw, o, sw=None, proportional=False):  # noqa: D102
        need = tuple(bool(v) for v in ctx.needs_input_grad[:3])
        B = block_rows(x.shape[0], o, x.dtype)
        ctx.fused = None
        if B and (proportional or not (need[1] or need[2]) or not any(need)):
            loss, lse, grads = _fused(x, W, b, t, w_t, cw, sw if proportional else None, o, B,
                                      need)
            last = None
            if any(need):
                ctx.fused = (grads, proportional)
        else:
            loss, lse, last = _forward(x, W, b, t, w_t, cw, o, keep=any(need))
        ctx.o, ctx.need, ctx.last = o, need, last
        if any(need):
            ctx.save_for_backward(x, W, b, t, w_t, cw, lse, sw)
        return loss

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, W, b, t, w_t, cw, lse, sw = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: differentiable gradients from the plain
            # composition (it holds the [N, V] logits: higher order only)
            inputs = [v for v, n in zip((x, W, b), ctx.need) if n]
            with torch.enable_grad():
                grads = iter(torch.autograd.grad(_plain_rows(x, W, b, t, w_t, cw, ctx.o),
                                                 inputs, g, create_graph=True))
            out = tuple(next(grads) if n else None for n in ctx.need)
            return (*out, None, None, None, None, None, None)
        fused, ctx.fused = ctx.fused, None  # scaled in place; a second backward recomputes
        if fused is not None:
            (dX, dW, db), prop = fused
            g = g.to(x.dtype)
            if dX is not None:
                dX.mul_(g[:, None])
            if dW is not None or db is not None:
                # g = c * sw for one scalar c (the reductions); recover c without a host read
                w = torch.ones_like(g) if sw is None else sw.to(g.dtype)
                den = (w * w).sum()
                c = torch.where(den > 0, (g * w).sum() / torch.where(den > 0, den, 1.0), 0.0)
                if dW is not None:
                    dW.mul_(c)
                if db is not None:
                    db.mul_(c)
            return (dX, dW, db, None, None, None, None, None, None)
        last, ctx.last = ctx.last, None  # consumed in place; a second backward recomputes
        grads = _backward(x, W, b, t, w_t, cw, lse, g, ctx.o, ctx.need, last)
        return (*grads, None, None, None, None, None, None)


def rows(call: Any) -> Any:
    """The per-row loss ``[N]`` of a ``LinearCall``, differentiable for ``x``, ``W`` and ``b``.

    ``call.g_like`` (optional): a promise that the backward's per-row cotangent is
    ``c * g_like`` for one scalar ``c`` -- ``1.0`` (uniform rows) or an ``[N]``
    tensor (the sample weights), as every reduction but ``"none"`` gives. With
    it (or when only ``x`` needs a gradient) the token-blocked layout may form
    the gradients in the forward pass: three products per step, not four.
    """
    x, W, b, t, w_t, cw = call.x, call.W, call.b, call.t, call.w_t, call.cw
    o, g_like = call.opts, call.g_like
    w_t = w_t if isinstance(w_t, torch.Tensor) else None
    sw = g_like.detach() if isinstance(g_like, torch.Tensor) else None
    return _LinearCE.apply(x, W, b, t, w_t, cw, o, sw, g_like is not None)
