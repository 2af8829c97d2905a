"""torch fast paths for the dense losses (method and formulas: ``xent._kernels.table``).

One private ``torch.autograd.Function`` carries every loss: its forward runs a
*kernel* that returns the per-element loss and, when a gradient is needed, the
gradient ``dl/dz`` of every element's own loss, computed chunk by chunk in the
same pass that computes the loss. The backward scales that buffer in place by
the incoming gradient and hands it back, so the whole training step holds one
logits-sized buffer and a few cache-sized chunks. (The sigmoid kernel, for
every reduction but ``"none"``, returns per-row sums of the weighted loss
instead of the per-element loss: see :func:`sigmoid_loss`. The default sparse
call small enough for one chunk returns its ``"mean"`` or ``"sum"`` itself,
from its own function: see :class:`_SparseReduced`.) CPU gradient buffers of
a few MB are recycled once nothing references them (:func:`_recycled`), so a
training loop does not page-fault a fresh buffer on every step.

Threads (CPU only): the row blocks run in Python threads while torch's own
intra-op pool is set to one thread (it is restored afterwards); small chunks
are cheaper that way than waking the pool for every operator. A lock makes
concurrent calls from several user threads run one at a time through this
section rather than fight over the setting. Rows too few to give every
thread a whole chunk (``[8, 50257]``) are one chunk instead, each operator
split by torch's own pool (``_one_chunk``).

Falls back (returns None) when: the logits are not contiguous with classes
last, fewer than ``MIN_FUSED_ELEMENTS``, under ``torch.compile`` (which
traces the plain composition instead: same values and gradients, no graph
break) or a ``torch.func`` transform, or when a gradient would be
needed for an argument this path does not differentiate (class weights,
probability labels, ``pos_weight``).
"""

from __future__ import annotations

from functools import partial

import sys
import threading
from contextlib import contextmanager

import torch
import numpy as np

from .._core import reduce
from . import rows as chunks

_LOCK = threading.Lock()
_INF = float("inf")
_GPU_CHUNK_BYTES = 1 << 28


@contextmanager
def _threads(z: torch.Tensor):
    """How many Python threads to use for the rows of ``z``; torch's pool is 1 meanwhile.

    One (and torch's pool left alone) on an accelerator, below
    ``MIN_PARALLEL`` elements, and when the rows do not give every thread a
    whole chunk: a few long rows (``[8, 50257]``) are then one chunk whose
    operators torch's own pool splits (see :func:`_one_chunk`), cheaper than
    starting threads and resetting the pool's size twice per call.
    """
    if z.device.type != "cpu" or z.numel() < chunks.MIN_PARALLEL:
        yield 1
        return
    n = torch.get_num_threads()
    if n <= 1 or z.shape[0] < n * _chunk_rows(z) or not _LOCK.acquire(blocking=False):
        yield 1
        return
    try:
        torch.set_num_threads(1)
        yield n
    finally:
        torch.set_num_threads(n)
        _LOCK.release()


def _chunk_rows(z2: torch.Tensor) -> int:
    nbytes = chunks.CHUNK_BYTES if z2.device.type == "cpu" else _GPU_CHUNK_BYTES
    return chunks.rows_per_chunk(z2.shape[-1], 4, nbytes)


#: Bytes per torch thread up to which the default sparse call (no smoothing,
#: weights, z-loss or dropped rows) runs as one chunk on torch's own pool:
#: its passes (softmax, scale) then cost less than ``F.cross_entropy``'s,
#: while the chunked kernel pays Python work per chunk. ``python -m benchmarks --group overhead_torch``, session 19:
#: ``[4096, 1000]`` (16 row chunks) went from 1.21x to 0.82x
#: ``F.cross_entropy``. ``[1024, 8192]`` (32 MB) stays chunked: at 16 MB per
#: thread it took this branch and measured 1.01x, against 0.48x chunked.
PLAIN_ONE_CHUNK_BYTES = 8 * 1024 * 1024


def _one_chunk(z2: torch.Tensor, n_threads: int, per_thread: int | None = None) -> bool:
    """Whether the rows of ``z2`` are best one chunk (``n_threads`` from :func:`_threads`).

    On the CPU without Python threads, when the whole array (counted as
    float32) is no larger than ``per_thread`` bytes (default: one chunk,
    ``CHUNK_BYTES``) per thread of torch's pool: the chunk then stays in those
    threads' caches, and each operator is one parallel region over all rows
    instead of one per small chunk.
    """
    per_thread = chunks.CHUNK_BYTES if per_thread is None else per_thread
    return (n_threads == 1 and z2.device.type == "cpu"
            and z2.numel() * 4 <= torch.get_num_threads() * per_thread)


#: Below this many logits the fused path is not taken: the plain composition
#: (a handful of torch operators) costs less than the chunked kernel's fixed
#: per-call work there.
MIN_FUSED_ELEMENTS = 1 << 16


def _usable(z: torch.Tensor, *others) -> bool:
    if torch.compiler.is_compiling():
        # torch.compile traces the plain composition (Inductor fuses it); the
        # chunked kernel, its threads and its in-place buffers are eager-only
        return False
    if z.dim() == 0 or z.numel() < max(1, MIN_FUSED_ELEMENTS):
        return False  # before the functorch look: small calls skip it
    functorch = getattr(torch._C, "_are_functorch_transforms_active", None)
    if functorch is not None and functorch():
        return False
    if not z.is_contiguous():
        return False
    grad = torch.is_grad_enabled()
    return not any(o is not None and grad and o.requires_grad for o in others)


class _Fused(torch.autograd.Function):
    """Loss from ``kernel(z2, True)``; the gradient buffer it returns is the backward.

    ``plain(z2)`` is the same per-element loss as a differentiable composition
    of torch operators. The backward uses it when it must itself be
    differentiable (``create_graph=True``: Hessians, double backward), so
    higher-order gradients are exact. The first backward scales the stored
    buffer in place; a later one (``retain_graph=True``, ``jacobian``) runs the
    kernel again on the saved logits, so every backward gives the same exact
    gradient. No backward reads a value on the host.
    """

    @staticmethod
    def forward(ctx, z2, kernel, plain):
        loss, grad, scale = kernel(z2, True)
        ctx.grad, ctx.scale, ctx.kernel, ctx.plain = grad, scale, kernel, plain
        ctx.save_for_backward(z2)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (z2,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: a gradient that is itself differentiable (in
            # the logits and in grad_loss), from the plain composition
            with torch.enable_grad():
                (g,) = torch.autograd.grad(ctx.plain(z2), z2, grad_loss, create_graph=True)
            return g, None, None
        g, scale = ctx.grad, ctx.scale
        ctx.grad = None
        if g is None:  # a second backward of the same graph: compute the buffer again
            with torch.no_grad():
                _, g, scale = ctx.kernel(z2, True)
        gl = grad_loss.reshape(grad_loss.shape + (1,) * (g.dim() - grad_loss.dim()))
        if g.dtype == gl.dtype:
            # the forward pass stored scale * dl/dz: an unweighted mean needs no
            # further pass over the gradient
            if _uniform_equal(grad_loss, scale):
                return g, None, None
            g.mul_(gl if scale == 1.0 else gl / scale)
            return g, None, None
        # 16-bit gradient: multiply in float32 a chunk of rows at a time (a
        # whole-tensor mixed-dtype product would make a float32 temporary)
        R = _chunk_rows(g)

        def work(lo, hi):
            with torch.no_grad():
                for r0 in range(lo, hi, R):
                    r1 = min(hi, r0 + R)
                    rows = g[r0:r1]
                    rows.copy_(rows.to(gl.dtype).mul_(gl if gl.shape[0] == 1 else gl[r0:r1]))

        with _threads(g) as n:
            chunks.run_blocks(g.shape[0], n, work)
        return g, None, None


def _uniform_equal(t: torch.Tensor, value: float) -> bool:
    """True when every entry of ``t`` is ``value``, decided without a host sync.

    Only a CPU tensor is looked at, through NumPy on its memory (no torch
    operator, so nothing to dispatch or synchronise), by comparing its
    entries. ``grad_loss`` is one value per row, ``C`` times smaller than the
    gradient this saves a pass over; torch's ``mean`` backward hands it over
    materialised (``grad / n``, contiguous), not broadcast, so the broadcast
    test alone never saw the common case. Any other tensor answers False and
    the caller multiplies.
    """
    if t.device.type != "cpu" or t.requires_grad:
        return False
    if t.dtype not in (torch.float32, torch.float64):
        return False
    try:
        return bool((t.detach().numpy() == value).all())
    except (RuntimeError, TypeError):  # pragma: no cover - e.g. a tensor subclass
        return False


_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None


def _empty_like(z: torch.Tensor, dtype=None) -> torch.Tensor:
    """A new buffer of ``z``'s shape, backed by huge pages where Linux allows.

    A fresh logits-sized buffer is mostly page faults on its first write (one
    per 4 KiB); asking for transparent huge pages (``madvise(MADV_HUGEPAGE)``,
    honoured when THP is in "madvise" or "always" mode) makes that 512 times
    fewer. A CPU buffer below that size is recycled (:func:`_recycled`).
    Anywhere else this is a plain ``torch.empty_like``.
    """
    if z.device.type == "cpu":
        dt = z.dtype if dtype is None else dtype
        nbytes = z.numel() * dt.itemsize
        if RECYCLE_MIN_BYTES <= nbytes < 4 * _HUGE:
            return _recycled(nbytes, dt, z.shape)
    out = torch.empty_like(z, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if out.device.type == "cpu" and nbytes >= 4 * _HUGE:
        global _madvise
        try:
            if _madvise is None:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                _madvise = libc.madvise
            p = out.data_ptr()
            lo, hi = -(-p // _HUGE) * _HUGE, (p + nbytes) // _HUGE * _HUGE
            if _madvise:
                _madvise(lo, hi - lo, _MADV_HUGEPAGE)
        except (OSError, AttributeError):  # pragma: no cover - not Linux / no libc
            _madvise = False
    return out


#: CPU buffers from this many bytes up to the huge-page size of :func:`_empty_like`
#: are recycled: below it a fresh buffer costs few page faults
RECYCLE_MIN_BYTES = 1 << 18
#: how many buffers of one size are kept, for how many sizes, and how many bytes in all
RECYCLE_PER_SIZE = 4
RECYCLE_SIZES = 8
RECYCLE_MAX_BYTES = 64 << 20
_POOL: dict[int, list] = {}
_POOL_LOCK = threading.Lock()


def _free_refs() -> int:
    """The reference count :func:`_recycled` sees of a block that only its list holds."""
    for b in [np.empty(1, dtype=np.uint8)]:
        return sys.getrefcount(b)
    raise AssertionError  # pragma: no cover


_FREE_REFS = _free_refs()


def _recycled(nbytes: int, dtype, shape) -> torch.Tensor:
    """An uninitialised CPU tensor, on a block of memory that nothing else references.

    A gradient buffer of a few MB handed to the caller is freed when the
    caller drops it, and glibc's allocator often gives such a block back to
    the kernel (``munmap``, or trimming the top of the heap), so the next
    call's buffer starts as one page fault per 4 KiB: at ``[8, 50257]``
    about 400 faults, more than the loss's own arithmetic. Instead the
    buffers are NumPy blocks this module keeps (at most
    ``RECYCLE_PER_SIZE`` per size, for ``RECYCLE_SIZES`` sizes, and
    ``RECYCLE_MAX_BYTES`` in all: the memory a finished loop leaves idle), each lent
    as a tensor that references it (``torch.from_numpy``). A block is lent
    again only when no tensor, view, storage or array holds it any more:
    its reference count is then the pool's own, so memory a caller can
    still reach is never reused. When every kept block is in use the
    buffer is a plain ``torch.empty`` (never blocks, never waits). Such a
    gradient is an ordinary contiguous tensor, except that its storage
    (NumPy's memory) cannot be resized in place (``resize_`` raises; no
    optimizer or gradient hook does that).
    """
    with _POOL_LOCK:
        blocks = _POOL.get(nbytes)
        if blocks is None:
            if len(_POOL) >= RECYCLE_SIZES:
                del _POOL[next(iter(_POOL))]  # the oldest size: its blocks in use stay alive
            blocks = _POOL[nbytes] = []
        for b in blocks:
            if sys.getrefcount(b) == _FREE_REFS:  # the list's, the loop's and the call's
                break
        else:
            kept = sum(b.nbytes for bs in _POOL.values() for b in bs)  # only on a new block
            if len(blocks) >= RECYCLE_PER_SIZE or kept + nbytes > RECYCLE_MAX_BYTES:
                return torch.empty(shape, dtype=dtype)
            b = np.empty(nbytes, dtype=np.uint8)
            blocks.append(b)
        return torch.from_numpy(b).view(dtype).view(shape)


def _apply(z2: torch.Tensor, kernel, plain) -> torch.Tensor:
    if torch.is_grad_enabled() and z2.requires_grad:
        return _Fused.apply(z2, kernel, plain)
    return kernel(z2, False)[0]


def _grad_prescale(grad, cd, n_elements: int) -> float:
    """The factor the forward pass folds into the stored gradient.

    The most common caller is an unweighted ``"mean"``, whose backward brings
    exactly ``1 / n_elements`` for every element: storing the gradient
    already multiplied by it saves a whole pass over the gradient in the
    backward (which checks the guess and rescales when it was wrong). Only for
    float32 / float64 gradients: a 16-bit gradient is rescaled in float32 in
    the backward anyway, and pre-scaling could underflow it.
    """
    if grad is None or grad.dtype != cd or n_elements == 0:
        return 1.0
    # 1 / n rounded to the compute dtype, as torch's mean backward computes it
    # (NumPy on the host: no device value is read)
    one = np.float64(1.0) if cd == torch.float64 else np.float32(1.0)
    return float(one / one.dtype.type(n_elements))


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


def _shift(zc, w, m):
    """``w = z - m`` with ``m`` (a ``[n, 1]`` slice) the row maximum, 0 where not finite."""
    torch.amax(zc, 1, keepdim=True, out=m)
    m.nan_to_num_(0.0, 0.0, 0.0)
    torch.sub(zc, m, out=w)


def _masked_dot(a, w, tmp, out):
    """``sum_c a_c w_c`` per row into ``out``, with ``0 * -inf`` counted as 0.

    (A NaN product is set to 0 too: it can only come from a NaN logit or
    label of the row, which makes ``S`` or ``A`` and so the loss NaN anyway.)
    """
    torch.mul(a, w, out=tmp)
    tmp.nan_to_num_(0.0, _INF, -_INF)
    torch.sum(tmp, 1, keepdim=True, out=out)


def _row_dot(a, w, bufs, n, out):
    """``sum_c a_c w_c`` per row into the ``[n, 1]`` column ``out`` (``0 * -inf`` counted 0).

    On the CPU one fused pass (``torch.linalg.vecdot``: no product buffer, no
    ``nan_to_num`` pass), then a look at the ``n`` results: a row with a
    non-finite dot (a masked class of weight 0, an infinite or NaN logit,
    rare) is computed again by :func:`_masked_dot`, so the value is the same
    as that of the three-pass form. The ``n`` numbers of the CPU buffer are
    read through NumPy, which waits for nothing and dispatches no torch
    scalar read; on an accelerator it would be a host sync, so there the
    three-pass form is used directly.
    """
    if a.device.type != "cpu":
        _masked_dot(a, w, bufs.get("t", n), out)
        return
    torch.linalg.vecdot(a, w, dim=1, out=out[:, 0])
    # read through NumPy (the buffer's own memory): no torch scalar read, so a
    # call under ``value_checks("off")`` / ``("async")`` dispatches no host read
    if not np.isfinite(out.detach().numpy()).all():
        _masked_dot(a, w, bufs.get("t", n), out)


def _grad_scale(w, a_sum, m, S, zl, g):
    """``w *= g (A + 2 z_loss lse) / S`` (rows): turns ``exp(z - m)`` into ``g (A + ...) p``."""
    if zl != 0.0:
        w.mul_((a_sum + 2.0 * zl * (m + torch.log(S))) * g / S)
    else:
        w.mul_((a_sum * g) / S)


def _stats(n_rows, k, cd, device):
    """``k`` per-row statistics, each an ``[N, 1]`` column that chunks fill."""
    return list(torch.empty((k, n_rows, 1), dtype=cd, device=device).unbind(0))


def _col(x, r0, r1):
    """Rows ``r0:r1`` of a per-row vector as a column (or a float as it is)."""
    return x if isinstance(x, float) else x[r0:r1, None]


def sparse_loss(call):
    z, t, w_t, cw, keep, s, zl, cd = (call.z, call.labels, call.w_t, call.cw, call.keep, call.s,
                                      call.zl, call.cdt)
    if call.gamma != 0.0 or not _usable(z, cw, w_t):
        return None
    C = z.shape[-1]
    z2 = z.reshape(-1, C)
    N = z2.shape[0]
    t2 = t.reshape(-1, 1)
    wt1 = None if w_t is None else w_t.reshape(-1)
    k1 = None if keep is None else keep.reshape(-1)
    # the default options (no smoothing, weights, z-loss or dropped rows), logits
    # in the compute dtype
    plain_rows = s == 0.0 and wt1 is None and zl == 0.0 and k1 is None and z2.dtype == cd
    one_chunk = plain_rows and _one_chunk(z2, 1, PLAIN_ONE_CHUNK_BYTES)
    red = reduce.plain_reduction(call) if one_chunk else None
    if red is not None and torch.is_grad_enabled() and z2.requires_grad:
        return reduce.Reduced(_SparseReduced.apply(z2, t2, red == "mean"))
    w_total = C if cw is None else cw.sum()
    sc = s / C
    smooth_w = None if s == 0.0 else (sc if cw is None else sc * cw)
    a_sum, on = chunks.sparse_coefficients(wt1, s, C, w_total)
    a_sum = a_sum if isinstance(a_sum, float) else a_sum.to(cd)

    def kernel(z2, need_grad):
        grad = _empty_like(z2) if need_grad else None
        g = _grad_prescale(grad, cd, N)
        if need_grad and one_chunk:
            return torch.from_numpy(_sparse_one_chunk(z2, t2, grad, g)), grad, g
        M, S, D, SZ = _stats(N, 4 if s != 0.0 else 3, cd, z2.device) + [None] * (s == 0.0)
        if need_grad:
            src = (-on * g).to(cd)[:, None] if isinstance(on, torch.Tensor) else torch.full(
                (N, 1), -on * g, dtype=cd, device=z2.device)
            smooth_g = None if smooth_w is None else smooth_w * g
        def chunk(r0, r1, w, bufs):
            n = r1 - r0
            kc = None if k1 is None else k1[r0:r1]
            zc = _load(z2[r0:r1], kc, bufs, n, cd)
            m, tc = M[r0:r1], t2[r0:r1]
            _shift(zc, w, m)
            torch.gather(w, 1, tc, out=D[r0:r1])                        # z_t - m
            if s != 0.0:
                if cw is None:
                    torch.sum(w, 1, keepdim=True, out=SZ[r0:r1])
                else:
                    _row_dot(cw.expand(n, C), w, bufs, n, SZ[r0:r1])
            w.exp_()
            Sc = S[r0:r1]
            torch.sum(w, 1, keepdim=True, out=Sc)
            if grad is None:
                return None
            _grad_scale(w, _col(a_sum, r0, r1), m, Sc, zl, g)
            if smooth_g is not None:
                w.sub_(smooth_g)
            w.scatter_add_(1, tc, src[r0:r1])
            if kc is not None:
                w.masked_fill_(~kc[:, None], 0)
            return None if grad.dtype == cd else w

        _run_chunks(z2, cd, grad, chunk)
        log_s = torch.log(S[:, 0])
        a_dot = on * D[:, 0]
        if s != 0.0:
            a_dot = a_dot + sc * SZ[:, 0]
        return chunks.row_loss(log_s, M[:, 0] + log_s, a_sum, a_dot, zl), grad, g

    def plain(z2):
        a = torch.zeros(z2.shape, dtype=cd, device=z2.device)
        if s != 0.0:
            a += sc if cw is None else sc * cw
        on_col = on.reshape(-1, 1).to(cd) if isinstance(on, torch.Tensor) else torch.full(
            (N, 1), on, dtype=cd, device=z2.device)
        a.scatter_add_(1, t2, on_col)
        return _plain_rows(z2.to(cd), a, k1, zl)

    return _apply(z2, kernel, plain).reshape(z.shape[:-1])


def sparse_plain(call):
    """The plain sparse record's ``Reduced`` mean or sum, or None: ``sparse_loss`` decides.

    The torch plain entry (``table.run_plain``) from ``MIN_FUSED_ELEMENTS``
    logits: where :func:`sparse_loss` would take its one-chunk reduced branch
    (CPU logits of the compute dtype that need a gradient, a ``"mean"`` or
    ``"sum"``, classes last and contiguous, at most ``PLAIN_ONE_CHUNK_BYTES``
    per torch thread: ``[8, 50257]``), the same :class:`_SparseReduced`
    without the general kernel's setup (its options, coefficients and
    closures): about a tenth of such a call.
    """
    z, red = call.z, call.reduction
    if (red == "none" or z.dtype != call.cdt or not z.requires_grad
            or not torch.is_grad_enabled() or not _one_chunk(z, 1, PLAIN_ONE_CHUNK_BYTES)
            or not _usable(z)):
        return None
    z2 = z if z.dim() == 2 else z.reshape(-1, z.shape[-1])
    return reduce.Reduced(_SparseReduced.apply(z2, call.labels.reshape(-1, 1), red != "sum"))


class _SparseReduced(torch.autograd.Function):
    """The plain ``"mean"`` (``mean=True``) or ``"sum"`` of the default sparse loss, one chunk (CPU).

    Returns the reduced scalar itself, as ``F.cross_entropy`` does: one
    backward node instead of three (the function, a reshape and the mean).
    The forward stores the scalar's own gradient (``(p - onehot) / N`` for
    the mean, with ``1 / N`` rounded as torch's mean backward rounds it), so
    the backward of the usual ``loss.backward()`` (an incoming 1, read
    through NumPy: the tensor is on the CPU) returns that buffer untouched;
    any other incoming value scales it once, in place. A second backward of
    the same graph (``retain_graph=True``) computes the buffer again from the
    saved logits; a differentiable one (``create_graph=True``) is the
    gradient of ``F.cross_entropy``'s composition (same formula), so
    higher-order gradients are exact.
    """

    @staticmethod
    def forward(ctx, z2, t2, mean):
        grad = _empty_like(z2)
        g = _grad_prescale(grad, z2.dtype, z2.shape[0]) if mean else 1.0
        rows = _sparse_one_chunk(z2, t2, grad, g)
        ctx.grad, ctx.g, ctx.mean = grad, g, mean
        ctx.save_for_backward(z2, t2)
        # NumPy's pairwise sum in the compute dtype (as torch's), over N for the mean
        total = np.add.reduce(rows)
        return torch.from_numpy(np.asarray(total / total.dtype.type(rows.shape[0]) if mean
                                           else total))

    @staticmethod
    def backward(ctx, grad_loss):
        g = ctx.grad
        ctx.grad = None
        if not torch.is_grad_enabled():
            if g is None:  # a second backward of the same graph
                z2, t2 = ctx.saved_tensors
                g = _empty_like(z2)
                _sparse_one_chunk(z2, t2, g, ctx.g)
            if not _uniform_equal(grad_loss, 1.0):
                g.mul_(grad_loss)
            return g, None, None
        z2, t2 = ctx.saved_tensors
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(z2, t2[:, 0],
                                                     reduction="mean" if ctx.mean else "sum")
            (g,) = torch.autograd.grad(loss, z2, grad_loss, create_graph=True)
        return g, None, None


def _sparse_one_chunk(z2, t2, grad, g):
    """The default sparse loss per row (a NumPy array) and ``g * (p - onehot)`` in ``grad`` (CPU).

    Two torch operators, each one parallel region of torch's pool over the
    whole array (it stays in the threads' caches, see
    ``PLAIN_ONE_CHUNK_BYTES``): the softmax written into the gradient and
    the scale by ``g``; one ``exp`` per entry, no chunk loop, no scratch
    buffer. The ``N`` numbers of each row's label -- its probability ``p_t``
    read, then ``-g`` added -- are handled by NumPy on the CPU tensors' own
    memory: no torch operator to dispatch for them, no sync (a torch
    ``gather``, ``log`` or ``scatter`` of eight numbers costs about what the
    scale of the whole ``[8, 50257]`` gradient does). The loss is
    ``-log p_t``, exact to a few units in the last place while ``p_t`` is a
    normal number. When any row's ``p_t`` is below the dtype's smallest
    normal number (a label logit far below the row maximum, as with logits
    of +-1e4 or a ``-inf`` label logit) or NaN, the loss is
    ``log S - (z_t - m)`` instead, from the row maximum ``m`` and
    ``1 / S = max(p)`` (``exp(0) / S``, in ``[1/C, 1]``: nothing underflows),
    exact for any logits.
    """
    t = t2.numpy()[:, 0]
    if (t.view(np.uint64) >= z2.shape[1]).any():  # negative ones too, as huge unsigned
        # only under value_checks("off"): NumPy would wrap a negative index
        # silently, where torch's own gather raises
        raise ValueError(f"labels must be class indices in [0, {z2.shape[1]}) (value checks "
                         "are off, but a label outside the classes has no loss)")
    torch._softmax(z2, 1, False, out=grad)
    p = grad.numpy()
    rows = np.arange(t.shape[0])
    p_t = p[rows, t]
    if (p_t >= _TINY[grad.dtype]).all():
        loss = -np.log(p_t)
    else:
        m = torch.amax(z2, 1, keepdim=True)
        inv_s = torch.amax(grad, 1)                                  # 1 / S
        shifted_t = torch.gather(z2, 1, t2).sub_(m)[:, 0]            # z_t - m
        loss = torch.log(inv_s).neg_().sub_(shifted_t).numpy()
    if g != 1.0:
        grad.mul_(g)
    p[rows, t] -= p.dtype.type(g)
    return loss


#: the smallest normal number of the compute dtypes of :func:`_sparse_one_chunk`
_TINY = {torch.float32: float(np.finfo(np.float32).tiny),
         torch.float64: float(np.finfo(np.float64).tiny)}


def _plain_rows(z, a, keep, zl):
    """``-sum_c a_c log p_c + z_loss lse**2`` per row, by differentiable torch operators.

    The reference form of the kernels' row formula (for higher-order
    gradients): dropped rows have their logits zeroed (their loss is weighted
    by 0 afterwards, and no gradient reaches them), terms with ``a_c == 0``
    count 0 even where ``log p_c = -inf``.
    """
    if keep is not None:
        z = torch.where(keep[:, None], z, torch.zeros_like(z))
    m = torch.amax(z, 1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    zs = z - m
    lse_s = torch.logsumexp(zs, 1, keepdim=True)
    loss = -_safe_product(a, zs - lse_s).sum(1)
    if zl != 0.0:
        loss = loss + zl * (lse_s + m)[:, 0] ** 2
    return loss


def _run_chunks(z2, cd, grad, chunk):
    """``chunk(r0, r1, w, bufs)`` over row chunks of ``z2`` in threads.

    ``w`` is the chunk's work buffer: the gradient rows themselves when the
    gradient has the compute dtype, else a private chunk whose (returned)
    content is copied into the gradient rows in the logits' dtype.
    """
    N, C = z2.shape

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
        R = max(1, N) if _one_chunk(z2, n) else _chunk_rows(z2)
        chunks.run_blocks(N, n, work)


def dense_loss(call):
    """Probability labels: per row ``A log S - sum_c a_c (z_c - m)`` and ``g (A p - a)``.

    Per chunk, with the defaults (``a`` the labels themselves): the row
    maximum, ``w = z - m`` written into the gradient rows, the dot
    ``sum a w`` (:func:`_row_dot`: one fused pass), ``A = sum a``, one
    ``exp`` in place, ``S = sum w``, and the gradient finished in place
    while the chunk is in cache (``w *= A g / S``, ``w -= g a``): eight passes
    over cache-sized chunks and one exponential per entry, no buffer but the
    gradient. (The former product buffer, its ``nan_to_num`` and its sum
    were three passes and one more chunk in cache.)
    """
    z, y, cw, keep, s, zl, cd = call.z, call.labels, call.cw, call.keep, call.s, call.zl, call.cdt
    if call.gamma != 0.0 or not _usable(z, cw, y) or y.shape != z.shape:
        return None
    C = z.shape[-1]
    z2 = z.reshape(-1, C)
    N = z2.shape[0]
    y2 = y.reshape(-1, C)
    k1 = None if keep is None else keep.reshape(-1)
    sc = s / C

    def kernel(z2, need_grad):
        grad = _empty_like(z2) if need_grad else None
        g = _grad_prescale(grad, cd, N)
        M, S, A, D = _stats(N, 4, cd, z2.device)

        def chunk(r0, r1, w, bufs):
            n = r1 - r0
            kc = None if k1 is None else k1[r0:r1]
            zc = _load(z2[r0:r1], kc, bufs, n, cd)
            if s == 0.0 and cw is None and kc is None and y2.dtype == cd:
                a = y2[r0:r1]  # only read: no private copy
            else:
                a = bufs.get("a", n)
                a.copy_(y2[r0:r1])
                if s != 0.0:
                    a.mul_(1.0 - s).add_(sc)
                if cw is not None:
                    a.mul_(cw)
                if kc is not None:
                    a.masked_fill_(~kc[:, None], 0)
            m, Ac, Sc = M[r0:r1], A[r0:r1], S[r0:r1]
            torch.sum(a, 1, keepdim=True, out=Ac)
            _shift(zc, w, m)
            _row_dot(a, w, bufs, n, D[r0:r1])
            w.exp_()
            torch.sum(w, 1, keepdim=True, out=Sc)
            if grad is None:
                return None
            _grad_scale(w, Ac, m, Sc, zl, g)
            w.sub_(a, alpha=g)
            if kc is not None:
                w.masked_fill_(~kc[:, None], 0)
            return None if grad.dtype == cd else w

        _run_chunks(z2, cd, grad, chunk)
        log_s = torch.log(S[:, 0])
        return chunks.row_loss(log_s, M[:, 0] + log_s, A[:, 0], D[:, 0], zl), grad, g

    def plain(z2):
        a = y2.to(cd)
        if s != 0.0:
            a = a * (1.0 - s) + sc
        if cw is not None:
            a = a * cw
        if k1 is not None:
            a = torch.where(k1[:, None], a, torch.zeros_like(a))
        return _plain_rows(z2.to(cd), a, k1, zl)

    return _apply(z2, kernel, plain).reshape(z.shape[:-1])


_safe_product = partial(chunks.safe_product, torch)


_ONE = torch.ones(())


def _sigmoid_fold_weights(call, C):
    """The ``[N, C]`` view of the sample weights when the kernel may reduce rows itself.

    Returns ``(fold, sw2)``: ``fold`` is True for every reduction but ``"none"``,
    unless the sample weights need a gradient (they then stay outside, in the
    reduction) or cannot be viewed as ``[N, C]`` without a copy; ``sw2`` is that
    view, or None without sample weights.
    """
    if call.reduction == "none":
        return False, None
    sw = call.sw
    if sw is None:
        return True, None
    if torch.is_grad_enabled() and sw.requires_grad:
        return False, None
    try:
        return True, sw.view(-1, C)
    except RuntimeError:  # a broadcast that does not flatten to rows: reduce outside
        return False, None


def _sigmoid_prescale(call, grad, cd, n_elements):
    """The factor the reduced kernel folds into the gradient: what the backward will bring.

    The reduction's backward reaches the per-row sums with ``1 / n_elements``
    (an unweighted mean, every element counting 1) or 1 (``"sum"``); any other
    value (weighted means, a normalizer) is applied in the backward instead.
    """
    if call.normalizer is not None or grad is None or grad.dtype != cd:
        return 1.0
    if call.reduction == "sum":
        return 1.0
    if call.sw is None and call.norm is None and call.valid is None:
        return _grad_prescale(grad, cd, n_elements)
    return 1.0


def _sigmoid_coefficients(zc, yc, kc, swc, pw, s, cd, bufs, n):
    """A chunk's ``(z, pos, neg, lw)``: ``pos = sw pw y'``, ``neg = sw (1 - y')``, ``lw = pos + neg``.

    ``z`` and ``pos`` are private copies where they differ from the inputs
    (another dtype, dropped entries zeroed, smoothing, weights); ``lw`` is None
    when it is 1 (no ``pos_weight``, no folded sample weights).
    """
    if zc.dtype != cd or kc is not None:
        x = bufs.get("x", n)
        x.copy_(zc)
        if kc is not None:
            x.masked_fill_(~kc, 0)
        zc = x
    if s == 0.0 and pw is None and kc is None and swc is None and yc.dtype == cd:
        pos = yc  # only read: no private copy
    else:
        pos = bufs.get("a", n)
        pos.copy_(yc)
        if kc is not None:
            pos.masked_fill_(~kc, 0)
        if s != 0.0:
            pos.mul_(1.0 - s).add_(0.5 * s)
    neg = torch.add(_ONE, pos, alpha=-1, out=bufs.get("b", n))      # 1 - pos
    if swc is not None:
        # sw folded into both coefficients: the loss and the gradient are
        # weighted (0 on dropped entries, whose logits are zeroed above)
        pos.mul_(swc)
        neg.mul_(swc)
    if pw is not None:
        pos.mul_(pw)
    lw = None if pw is None and swc is None else torch.add(pos, neg, out=bufs.get("c", n))
    return zc, pos, neg, lw


def _log_group(C: int) -> int:
    """Entries per float64 product in the float32 sigmoid kernel's ``sum log(1 + e)``; 0: none.

    The largest divisor of ``C`` in ``[16, 128]`` (products of at most 128
    values in ``[1, 2]`` stay below ``2**128``; groups of a row do not mix
    rows). One float64 product reduction and a logarithm per group cost a
    third of one ``log`` per entry (session 18, AVX2). Rows of no such
    divisor take the logarithm per entry.
    """
    for k in range(128, 15, -1):
        if C % k == 0:
            return k
    return 0


def sigmoid_loss(call):
    """The per-element loss, or for a reduction ``Reduced`` from per-row sums.

    For every reduction but ``"none"`` the chunks never leave the cache: each
    chunk's ``sw * l`` is summed into one value per row, and the sample weight
    is folded into the chunk's coefficients (so also into the stored
    gradient); :func:`xent._core.reduce.reduce_total` then divides the total
    by the reduction's own denominator, and its backward brings the per-row
    cotangent that scales the stored gradient.

    Per entry, with ``e = exp(-|z|)``, ``u = 1 + e`` (rounded) and ``r = 1 / u``::

        l          = lw log1p(e) + neg max(z, 0) + pos max(-z, 0)
        log1p(e)   = log(u) - ((u - 1) - e) r        (u - 1 and the difference are exact)
        sigmoid(-z) = max(e, [z < 0]) r       (e r for z >= 0, r for z < 0)
        dl/dz      = neg - lw sigmoid(-z)

    one exponential and one logarithm per entry (``torch.log1p`` and
    ``torch.sigmoid`` measured 1.25x one ``log`` and 3.5x one reciprocal per
    entry on CPU, session 18); the correction term makes the logarithm as
    accurate as ``log1p`` (``log(u)`` is 0 where ``e`` is below half an ulp
    of 1, and the term is then ``e`` itself). ``-|z|`` is ``min(z, 0) -
    max(z, 0)`` of the two clamps the ``max`` terms need anyway, and the two
    terms are summed as one (``neg max(z, 0) - pos min(z, 0)``, both
    non-negative). For float32 logits without per-entry weights (``lw`` 1)
    the row sum of ``log(u)`` is the sum of the logarithms of float64
    products of groups of a row (:func:`_log_group`): a third of the cost of
    a logarithm per entry, as exact. About 20 passes over a chunk where
    there were 24. What bounds it (fwd+bwd, one thread, ``[512, 32768]``,
    session 18): 1.86x an allocating ``torch.exp`` of the logits (2.09x
    before); the exponential, the products and the reciprocal are about half
    of it and the light passes the rest. With two threads at ``[4096, 32768]``
    (2026-12-03) the step is 4.1x the floor: in cache, one ``F.softplus`` of
    a chunk costs eight light passes and the floor itself is mostly page
    faults and memory traffic, so no composition of torch operators gets
    near it. ``torch.compile`` of the step (inductor's fused C++ of the plain
    composition) measured 5.9x the floor there, and 3.7x for probability
    labels where :func:`dense_loss` takes 2.0x. ``0 * inf`` products of
    infinite logits with a zero coefficient count 0 (``nansum``; a NaN logit
    keeps the row NaN through ``log(u)``).
    """
    z, y, pw, keep, s, cd = call.z, call.labels, call.pw, call.keep, call.s, call.cdt
    if call.gamma != 0.0 or call.alpha is not None or not _usable(z, y, pw) or y.shape != z.shape:
        return None
    C = z.shape[-1] if z.dim() >= 2 else 1
    if pw is not None and pw.numel() != 1:
        if z.dim() < 2 or tuple(pw.shape[-1:]) != (C,) or pw.numel() != C:
            return None
        pw = pw.reshape(C)
    z2, y2 = z.reshape(-1, C), y.reshape(-1, C)
    k2 = None if keep is None else keep.reshape(-1, C)
    fold, sw2 = _sigmoid_fold_weights(call, C)

    def kernel(z2, need_grad):
        N = z2.shape[0]
        grad = _empty_like(z2) if need_grad else None
        if not fold:
            loss = _empty_like(z2, dtype=cd)
            g = _grad_prescale(grad, cd, z2.numel())
            _run_chunks(z2, cd, grad, partial(_sigmoid_elements, z2, y2, k2, pw, s, cd, loss,
                                              grad, g))
            return loss, grad, g
        g = _sigmoid_prescale(call, grad, cd, z2.numel())
        R1, R2 = _stats(N, 2, cd, z2.device)
        group = _log_group(C) if cd == torch.float32 and pw is None and sw2 is None else 0

        def chunk(r0, r1, w, bufs):
            n = r1 - r0
            zc, pos, neg, lw = _sigmoid_coefficients(
                z2[r0:r1], y2[r0:r1], None if k2 is None else k2[r0:r1],
                None if sw2 is None else sw2[r0:r1], pw, s, cd, bufs, n)
            # max(z, 0) and min(z, 0); -|z| is their difference (no abs, no negation)
            zp = torch.clamp(zc, min=0, out=bufs.get("d", n))
            zm = torch.clamp(zc, max=0, out=bufs.get("u", n))
            e = torch.sub(zm, zp, out=bufs.get("e", n)).exp_()         # exp(-|z|)
            # neg max(z, 0) + pos max(-z, 0): 0 * inf (an infinite logit whose
            # coefficient is 0) is NaN here and dropped by nansum (a NaN logit
            # keeps the row NaN through log(u) below)
            torch.nansum(zp.mul_(neg).addcmul_(zm, pos, value=-1), 1, keepdim=True,
                         out=R2[r0:r1])
            u = torch.add(e, 1.0, out=bufs.get("u", n))                 # 1 + e, rounded
            d = torch.sub(u, 1.0, out=bufs.get("d", n)).sub_(e)         # (u - 1) - e, exact
            if group:
                # sum log(u) as the logarithms of float64 products of `group`
                # entries (u in [1, 2]: no overflow, products exact to 1e-14)
                lp = torch.prod(u.view(n, C // group, group), 2, dtype=torch.float64)
                lsum = lp.log_().sum(1, keepdim=True)
                r = u.reciprocal_()
                torch.sum(d.mul_(r), 1, keepdim=True, out=R1[r0:r1])
                torch.sub(lsum, R1[r0:r1], out=lsum)
                R1[r0:r1].copy_(lsum)                                   # sum log1p(e)
            else:
                lg = w if grad is not None else bufs.get("l", n)        # scratch before the gradient
                torch.log(u, out=lg)
                r = u.reciprocal_()
                lg.addcmul_(d, r, value=-1)                             # log1p(e)
                if lw is not None:
                    lg.mul_(lw)
                torch.sum(lg, 1, keepdim=True, out=R1[r0:r1])
            if grad is None:
                return None
            # sigmoid(-z) = max(e, [z < 0]) r: no select (torch.where and
            # a bool mask cost more than the two passes of this)
            torch.maximum(e, torch.lt(zc, 0, out=d), out=w)
            if lw is not None:
                w.mul_(lw)
            torch.addcmul(neg, w, r, value=-1, out=w)                   # neg - lw sigmoid(-z)
            if g != 1.0:
                w.mul_(g)
            return None if grad.dtype == cd else w

        _run_chunks(z2, cd, grad, chunk)
        return (R1 + R2)[:, 0], grad, g

    def plain(z2):
        zc = z2.to(cd)
        pos = y2.to(cd)
        if k2 is not None:
            zc = torch.where(k2, zc, torch.zeros_like(zc))
            pos = torch.where(k2, pos, torch.zeros_like(pos))
        if s != 0.0:
            pos = pos * (1.0 - s) + 0.5 * s
        neg = 1.0 - pos
        if pw is not None:
            pos = pos * pw
        sp = torch.nn.functional.softplus
        loss = _safe_product(pos, sp(-zc)) + _safe_product(neg, sp(zc))
        if not fold:
            return loss
        if sw2 is not None:
            loss = loss * sw2  # 0 on dropped entries (their loss is finite: zeroed logits)
        return loss.sum(1)

    out = _apply(z2, kernel, plain)
    if not fold:
        return out.reshape(z.shape)
    return reduce.Reduced(reduce.reduce_total(call, out.sum(), z.numel()))


def _sigmoid_elements(z2, y2, k2, pw, s, cd, loss, grad, g, r0, r1, w, bufs):
    """One chunk of the per-element sigmoid loss (``"none"``) and its gradient."""
    n = r1 - r0
    kc = None if k2 is None else k2[r0:r1]
    zc, pos, neg, lw = _sigmoid_coefficients(z2[r0:r1], y2[r0:r1], kc, None, pw, s, cd, bufs, n)
    e = torch.abs(zc, out=bufs.get("e", n)).neg_().exp_()       # exp(-|z|)
    lc = loss[r0:r1]
    torch.log1p(e, out=lc)                                      # log1p(exp(-|z|))
    t = bufs.get("t", n)
    # pos softplus(-z) + neg softplus(z)
    #   = (pos + neg) log1p(exp(-|z|)) + pos max(-z, 0) + neg max(z, 0):
    # a sum of non-negative terms, so no cancellation (PyTorch's
    # neg z + softplus(-z) loses all digits of a small loss at z << 0).
    # An infinite logit whose weight is 0 makes 0 * inf = NaN in its
    # term, which is set to 0 (no data-dependent branch: no host read)
    if lw is not None:
        lc.mul_(lw)
    torch.clamp(zc, min=0, out=t).mul_(neg).nan_to_num_(0.0, _INF, -_INF)
    lc.add_(t)
    torch.clamp(zc, max=0, out=t).mul_(pos).nan_to_num_(0.0, _INF, -_INF)
    lc.sub_(t)
    if grad is None:
        return None
    # neg sigmoid(z) - pos sigmoid(-z) = neg - (pos + neg) sigmoid(-z)
    torch.neg(zc, out=w).sigmoid_()
    if lw is not None:
        w.mul_(lw)
    w.mul_(-g).add_(neg, alpha=g)                               # g (neg - lw sigmoid(-z))
    if kc is not None:
        w.masked_fill_(~kc, 0)
    return None if grad.dtype == cd else w
