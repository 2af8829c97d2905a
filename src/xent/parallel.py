r"""Cross-entropy on many devices: vocabulary-parallel losses and the global normalizer.

Tensor (vocabulary) parallel: each rank holds the classes
``[vocab_start, vocab_start + V_local)`` of the logits (or of the classifier)
and the same, global, labels. The result is identical on every rank and equal
to the single-device :func:`xent.sparse_softmax_cross_entropy` /
:func:`xent.linear_cross_entropy` on the gathered classes, with every option;
each rank's gradient is its slice of the single-device gradient.

Per row, with ``m`` the global row maximum, ``se = sum_c exp(z_c - m)`` over
all ``V`` classes, ``t`` the label, ``w`` the class weights (1 without),
``S = sum_c w_c`` and ``sm = sum_c w_c (z_c - m)``::

    l     = (1 - s) w_t (log se - (z_t - m)) + (s / V) (S log se - sm) + zl lse^2
    dl/dz = p A - (1 - s) w_t onehot(t) - (s / V) w,   A = (1 - s) w_t + (s / V) S + 2 zl lse

with ``lse = m + log se`` and ``p = exp(z - lse)``. Each rank computes its
partial ``se``, ``z_t - m`` (0 unless it owns the label), ``w_t`` and ``sm``
from its classes, so one call communicates:

* torch: one all-gather of 7 int64 per rank (the layout and the argument
  checks, so that a bad call is a ``ValueError`` on every rank), one
  all-reduce (max) of ``[N]`` and one all-reduce (sum) of ``[k N + 1]``
  (``k`` = 2, plus 1 with class weights, plus 1 with label smoothing), in
  float32 (float64 for float64 logits); nothing in the backward pass
  (``vocab_parallel_linear_cross_entropy`` adds one all-reduce of the
  ``[N, D]`` inputs gradient unless ``reduce_input_grad=False``);
* JAX (inside ``jax.shard_map``): one ``pmax`` of ``[N]`` and one ``psum``
  of ``[k N + 1]``; JAX's autodiff transposes them without communication.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._core import reduce
from ._core.backend import get_backend
from ._core import validate

__all__ = ["count", "vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]

# ---------------------------------------------------------------------------
# options and the local reduction (mirrors xent._core.reduce; see the report)


def _options(label_smoothing, z_loss, reduction, normalizer):
    s = validate.scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    zl = validate.scalar(z_loss, "z_loss", low=0.0)
    red = validate.reduction(reduction)
    if normalizer is not None and red != "mean":
        raise ValueError(
            f"normalizer= replaces the reduction's denominator, so reduction must be left at "
            f"'mean', got reduction={red!r}")
    return s, zl, red


def _check_normalizer(normalizer):
    if normalizer is None or not isinstance(normalizer, (numbers.Real, np.ndarray)):
        return
    if isinstance(normalizer, bool):
        raise TypeError("normalizer must be a non-negative number or a scalar array, got a bool")
    val = np.asarray(normalizer, dtype=np.float64)
    if val.shape != ():
        raise ValueError(f"normalizer must be a scalar, got shape {val.shape}")
    if not val >= 0:
        raise ValueError(f"normalizer must be non-negative, got {float(val)!r}")


# ---------------------------------------------------------------------------
# torch: the layout check and the autograd functions


def _torch_group_info(group):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("xent.parallel with torch needs an initialized process group "
                         "(torch.distributed.init_process_group) or group=; for JAX pass "
                         "axis_name= inside jax.shard_map")
    return dist.get_world_size(group), dist.get_rank(group)


def _torch_layout(torch, group, device, vocab_start, vl, n, tmin, tmax, bad_cw, local_error):
    """One all-gather of (start, size, N, label min, label max, flags) per rank; raises on all."""
    import torch.distributed as dist

    world, rank = _torch_group_info(group)
    start = -1 if vocab_start is None else int(vocab_start)
    info = torch.tensor([start, vl, n, tmin, tmax, int(bad_cw), int(local_error is not None),
                         ], dtype=torch.int64, device=device)
    out = [torch.empty_like(info) for _ in range(world)]
    dist.all_gather(out, info, group=group)
    rows = [o.tolist() for o in out]
    failed = [r for r, row in enumerate(rows) if row[6]]
    if local_error is not None:
        raise local_error
    if failed:
        raise ValueError(f"xent.parallel: the call failed on rank(s) {failed} of the group "
                         "(see their error); every rank raises instead of waiting")
    starts = [row[0] for row in rows]
    sizes = [row[1] for row in rows]
    if len({row[2] for row in rows}) != 1:
        raise ValueError("labels must be the same (global) rows on every rank, got "
                         f"{[row[2] for row in rows]} elements per rank")
    if any(s_ == -1 for s_ in starts) and any(s_ != -1 for s_ in starts):
        raise ValueError("vocab_start must be given on every rank or on none, got "
                         f"{['None' if s_ == -1 else s_ for s_ in starts]}")
    if starts[0] == -1:
        starts = [int(sum(sizes[:r])) for r in range(world)]
    order = sorted(range(world), key=lambda r: (starts[r], sizes[r]))
    pos = 0
    for r in order:
        if starts[r] != pos:
            what = "a gap" if starts[r] > pos else "an overlap"
            raise ValueError(
                "the vocabulary shards must tile [0, V) exactly (vocab_start, V_local per rank: "
                f"{list(zip(starts, sizes))}); there is {what} at class {min(pos, starts[r])}")
        pos += sizes[r]
    num_classes = pos
    if num_classes == 0:
        raise ValueError("the vocabulary shards hold no class (every V_local is 0)")
    lo = min(row[3] for row in rows)
    hi = max(row[4] for row in rows)
    if lo < 0 or hi >= num_classes:
        bad = next(r for r, row in enumerate(rows) if row[3] < 0 or row[4] >= num_classes)
        value = rows[bad][3] if rows[bad][3] < 0 else rows[bad][4]
        raise ValueError(f"labels must be class indices in [0, {num_classes}) (V, the sum of "
                         f"the shards) or ignore_index, got {value} on rank {bad}")
    if any(row[5] for row in rows):
        bad = [r for r, row in enumerate(rows) if row[5]]
        raise ValueError(f"class_weight must be non-negative; negative weights on rank(s) {bad}")
    return starts[rank], num_classes


def _label_range(torch, t, valid):
    """(min, max) of the non-ignored labels (0, 0 when there are none): one host read."""
    if t.numel() == 0:
        return 0, 0
    if valid is not None:
        if not bool(valid.any()):
            return 0, 0
        big = torch.iinfo(t.dtype).max
        lo = int(torch.where(valid, t, big).min())
        hi = int(torch.where(valid, t, -big).max())
        return lo, hi
    return int(t.min()), int(t.max())


def _torch_stats(torch, group, parts, m_loc, S_loc):
    """Global ``m`` (all-reduce max) then the stacked sums (one all-reduce)."""
    import torch.distributed as dist

    m = m_loc.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    stack = parts(m)
    flat = torch.cat([torch.stack(stack).reshape(-1), S_loc.reshape(1)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    k = len(stack)
    return m, flat[:-1].reshape(k, -1), flat[-1]


def _finish(torch_or_xp, m, tot, S, o):
    """Per-row loss, ``lse`` and ``w_t`` from the global stacked sums."""
    s, zl, nv, has_cw = o["s"], o["zl"], o["V"], o["cw"]
    xp = torch_or_xp
    se, zt = tot[0], tot[1]
    i = 2
    wt = None
    if has_cw:
        wt, i = tot[i], i + 1
    sm = tot[i] if s else None
    log_se = xp.log(se)
    lse = m + log_se
    w = 1.0 if wt is None else wt
    loss = ((1.0 - s) * w) * (log_se - zt)
    if s:
        loss = loss + (s / nv) * (S * log_se - sm)
    if zl:
        loss = loss + zl * lse * lse
    return loss, lse, wt


def _grad_scale(lse, wt, S, o):
    s = o["s"]
    a = (1.0 - s) * (1.0 if wt is None else wt) + (s / o["V"]) * S
    if o["zl"]:
        a = a + (2.0 * o["zl"]) * lse
    return a


def _torch_fns():
    import torch

    class _VocabParallelCE(torch.autograd.Function):
        """Per-row loss of vocabulary-parallel logits; no collective in backward."""

        @staticmethod
        def forward(ctx, z, tl, owner, keep, cw, o, group):  # noqa: D102
            cdt = get_backend("torch").compute_dtype(z.dtype)
            zc = _masked(torch, z, keep, cdt)
            n, vl = zc.shape
            m_loc = zc.amax(1) if vl else torch.full((n,), -math.inf, dtype=cdt, device=z.device)
            cwc = None if cw is None else cw.to(cdt)

            def parts(m):
                e = torch.exp(zc - m[:, None])
                out = [e.sum(1)]
                zt = torch.gather(zc, 1, tl[:, None])[:, 0] if vl else torch.zeros_like(m)
                out.append(torch.where(owner, zt - m, 0.0))
                if cwc is not None:
                    out.append(torch.where(owner, cwc[tl] if vl else 0.0, 0.0))
                if o["s"]:
                    w = torch.ones(vl, dtype=cdt, device=z.device) if cwc is None else cwc
                    zr = torch.where(w == 0, 0.0, zc - m[:, None])
                    out.append(zr @ w)
                return out

            S_loc = torch.tensor(float(vl), dtype=cdt, device=z.device) if cwc is None \
                else cwc.sum()
            m, tot, S = _torch_stats(torch, group, parts, m_loc, S_loc)
            loss, lse, wt = _finish(torch, m, tot, S, o)
            if keep is not None:
                loss = torch.where(keep, loss, 0.0)
            ctx.o = o
            ctx.save_for_backward(z, tl, owner, keep, cwc, lse, wt, S)
            if wt is None:
                wt = torch.ones_like(loss)
            ctx.mark_non_differentiable(wt)
            return loss, wt

        @staticmethod
        def backward(ctx, g, _gw):  # noqa: D102
            z, tl, owner, keep, cwc, lse, wt, S = ctx.saved_tensors
            o = ctx.o
            cdt = lse.dtype
            zc = _masked(torch, z, keep, cdt)
            g = g.to(cdt)
            if keep is not None:
                g = torch.where(keep, g, 0.0)
            dz = torch.exp(zc - lse[:, None]) * (g * _grad_scale(lse, wt, S, o))[:, None]
            if zc.shape[1]:
                gt = -(1.0 - o["s"]) * g * (1.0 if wt is None else wt)
                dz.scatter_add_(1, tl[:, None], torch.where(owner, gt, 0.0)[:, None])
                if o["s"]:
                    w = torch.ones(zc.shape[1], dtype=cdt, device=z.device) if cwc is None \
                        else cwc
                    dz.addr_(g, w, alpha=-o["s"] / o["V"])
            if keep is not None:
                dz = torch.where(keep[:, None], dz, 0.0)
            return dz.to(z.dtype), None, None, None, None, None, None

    class _VocabParallelLinearCE(torch.autograd.Function):
        """Per-row loss of a row-sharded classifier, chunk by chunk (no [N, V_local])."""

        @staticmethod
        def forward(ctx, x, W, b, tl, owner, cw, o, group, reduce_input_grad):  # noqa: D102
            cdt = get_backend("torch").compute_dtype(x.dtype)
            n = x.shape[0]
            vl = W.shape[0]
            cwc = None if cw is None else cw.to(cdt)
            bc = None if b is None else b.to(cdt)
            m = torch.full((n,), float(np.finfo(np.float64 if cdt == torch.float64
                                                 else np.float32).min),
                           dtype=cdt, device=x.device)
            se = torch.zeros(n, dtype=cdt, device=x.device)
            sm = torch.zeros(n, dtype=cdt, device=x.device)
            seen = torch.zeros((), dtype=cdt, device=x.device)
            for s0, s1 in _chunks(vl, o["chunk"]):
                u, _ = _lin_logits(torch, x, W, bc, s0, s1, o, cdt)
                m_new = torch.maximum(m, u.amax(1))
                if o["s"]:
                    w = torch.ones(s1 - s0, dtype=cdt, device=x.device) if cwc is None \
                        else cwc[s0:s1]
                    sm = sm - seen * (m_new - m) + torch.where(w == 0, 0.0,
                                                               u - m_new[:, None]) @ w
                    seen = seen + w.sum()
                se = se * torch.exp(m - m_new) + torch.exp(u - m_new[:, None]).sum(1)
                m = m_new
            if vl:
                xt = x.to(cdt)
                ut = (xt * W[tl].to(cdt)).sum(1)
                if bc is not None:
                    ut = ut + bc[tl]
                if o["cap"] is not None:
                    ut = o["cap"] * torch.tanh(ut / o["cap"])
            m_loc = m

            def parts(mg):
                scale = torch.exp(m_loc - mg)
                out = [se * scale]
                out.append(torch.where(owner, ut - mg, 0.0) if vl else torch.zeros_like(mg))
                if cwc is not None:
                    out.append(torch.where(owner, cwc[tl], 0.0) if vl else torch.zeros_like(mg))
                if o["s"]:
                    out.append(sm - seen * (mg - m_loc))
                return out

            S_loc = torch.tensor(float(vl), dtype=cdt, device=x.device) if cwc is None \
                else cwc.sum()
            m_g, tot, S = _torch_stats(torch, group, parts, m_loc, S_loc)
            loss, lse, wt = _finish(torch, m_g, tot, S, o)
            ctx.o, ctx.group, ctx.reduce = o, group, reduce_input_grad
            ctx.save_for_backward(x, W, b, tl, owner, cwc, lse, wt, S)
            if wt is None:
                wt = torch.ones_like(loss)
            ctx.mark_non_differentiable(wt)
            return loss, wt

        @staticmethod
        def backward(ctx, g, _gw):  # noqa: D102
            import torch.distributed as dist

            x, W, b, tl, owner, cwc, lse, wt, S = ctx.saved_tensors
            o = ctx.o
            want_x, want_w, want_b = ctx.needs_input_grad[:3]
            cdt = lse.dtype
            low = x.dtype != cdt
            bc = None if b is None else b.to(cdt)
            g = g.to(cdt)
            ga = (g * _grad_scale(lse, wt, S, o))[:, None]
            gt = -(1.0 - o["s"]) * g * (1.0 if wt is None else wt)
            n, D = x.shape
            dX = torch.zeros((n, D), dtype=cdt, device=x.device) if want_x else None
            dW = torch.empty_like(W) if want_w else None
            db = torch.empty(W.shape[0], dtype=cdt, device=x.device) if want_b else None
            for s0, s1 in _chunks(W.shape[0], o["chunk"]):
                u, th = _lin_logits(torch, x, W, bc, s0, s1, o, cdt)
                dz = torch.exp(u - lse[:, None]) * ga
                inside = owner & (tl >= s0) & (tl < s1)
                col = (tl - s0).clamp(0, s1 - s0 - 1)[:, None]
                dz.scatter_add_(1, col, torch.where(inside, gt, 0.0)[:, None])
                if o["s"]:
                    w = torch.ones(s1 - s0, dtype=cdt, device=x.device) if cwc is None \
                        else cwc[s0:s1]
                    dz.addr_(g, w, alpha=-o["s"] / o["V"])
                if th is not None:
                    dz.mul_(1.0 - th * th)
                if want_x:
                    dX.addmm_(dz, W[s0:s1].to(cdt))
                if want_w:
                    dW[s0:s1] = ((dz.to(x.dtype) if low else dz).T @ x)
                if want_b:
                    db[s0:s1] = dz.sum(0)
            if want_x and ctx.reduce:
                dist.all_reduce(dX, op=dist.ReduceOp.SUM, group=ctx.group)
            return (None if dX is None else dX.to(x.dtype), dW,
                    None if db is None else db.to(b.dtype), None, None, None, None, None, None)

    return _VocabParallelCE, _VocabParallelLinearCE


def _chunks(vl, chunk):
    return [(s0, min(s0 + chunk, vl)) for s0 in range(0, vl, chunk)]


def _lin_logits(torch, x, W, bc, s0, s1, o, cdt):
    u = (x @ W[s0:s1].T).to(cdt)
    if bc is not None:
        u = u + bc[s0:s1]
    th = None
    if o["cap"] is not None:
        th = torch.tanh(u / o["cap"])
        u = o["cap"] * th
    return u, th


def _masked(torch, z, keep, cdt):
    zc = z.to(cdt)
    if keep is not None:
        zc = torch.where(keep[:, None], zc, 0.0)
    return zc


_TORCH_FNS = None


def _torch_fn(i):
    global _TORCH_FNS
    if _TORCH_FNS is None:
        _TORCH_FNS = _torch_fns()
    return _TORCH_FNS[i]


# ---------------------------------------------------------------------------
# shared set-up


def _labels_and_weights(be, t, ignore, sample_weight, like, lead, cdt):
    xp = be.xp
    valid = None
    if ignore is not None:
        valid = t != ignore
        t = xp.where(valid, t, xp.zeros_like(t))
    sw = None
    if sample_weight is not None:
        sw = validate.convert(be, sample_weight, like, "sample_weight", "logits")
        validate.broadcastable_to(sw, lead, "sample_weight", "the per-element loss shape")
        sw = be.astype(sw, cdt)
        if validate.shape_of(sw) != tuple(lead):
            sw = xp.broadcast_to(sw, tuple(lead))
        if validate.eager(be, sw):
            validate.in_range(be, sw, 0.0, float("inf"), "sample_weight",
                       "sample weights must be non-negative")
    if valid is not None:
        sw = be.astype(valid, cdt) if sw is None else xp.where(valid, sw, xp.zeros_like(sw))
    keep = None
    if sw is not None:
        keep = sw != 0
    if valid is not None:
        keep = valid if keep is None else (keep & valid)
    return t, sw, valid, keep


def _group_args(be, group, axis_name):
    if be.collective == "group":
        if axis_name is not None:
            raise ValueError("axis_name= is for JAX arrays inside jax.shard_map; torch tensors "
                             "take group= (a torch.distributed process group, None: the default)")
    elif be.collective == "axis_name":
        if group is not None:
            raise ValueError("group= is a torch.distributed process group; JAX arrays take "
                             "axis_name= (the mesh axis of jax.shard_map)")
        if axis_name is None:
            raise ValueError("JAX arrays need axis_name= (the mesh axis the classes are "
                             "sharded over, inside jax.shard_map)")
    else:
        raise TypeError(f"xent.parallel works on torch tensors (torch.distributed) and JAX "
                        f"arrays (jax.shard_map), got {be.name} arrays")


def _cw_local(be, class_weight, like, vl, cdt):
    if class_weight is None:
        return None, False
    cw = validate.convert(be, class_weight, like, "class_weight")
    if validate.shape_of(cw) != (vl,):
        raise ValueError(f"class_weight must be this rank's slice, shape ({vl},) (one weight per "
                         f"local class), got {validate.shape_of(cw)}")
    cw = be.stop_gradient(be.astype(cw, cdt))
    bad = False
    if validate.eager(be, cw) and vl:
        with be.eager_scope():
            bad = bool(be.any(be.concrete(cw) < 0))
    return cw, bad


def _core(be, kind, arrays, lead, labels, vocab_start, group, axis_name, class_weight, s, zl,
          ignore, sample_weight, red, normalizer, extra):
    """Validate, learn the layout, compute the per-row loss, reduce."""
    xp = be.xp
    like = arrays[0]
    vl = extra["vl"]
    cdt = be.compute_dtype(like.dtype)
    n = int(math.prod(lead))
    err = None
    tmin = tmax = 0
    bad_cw = False
    t = sw = valid = keep = cw = None
    # torch.distributed: every rank first reaches the layout exchange, which
    # also shares any rank's validation error, so that no rank hangs in a
    # collective another one never enters; JAX traces and raises at once
    eager_ranks = be.collective == "group"
    try:
        t = validate.convert(be, labels, like, "labels", extra["ref"])
        validate.same_shape(t, lead, "labels", extra["hint"])
        validate.integer_labels(be, t, "labels")
        t, sw, valid, keep = _labels_and_weights(be, t, ignore, sample_weight, like, lead, cdt)
        cw, bad_cw = _cw_local(be, class_weight, like, vl, cdt)
        _check_normalizer(normalizer)
        if eager_ranks:
            tmin, tmax = _label_range(be.torch, xp.reshape(t, (-1,)),
                                      None if valid is None else xp.reshape(valid, (-1,)))
    except (ValueError, TypeError) as e:
        if not eager_ranks:
            raise
        err = e
    if eager_ranks:
        torch = be.torch
        start, nv = _torch_layout(torch, group, like.device, vocab_start, vl, n, tmin, tmax,
                                  bad_cw, err)
        t2 = xp.reshape(be.astype(t, be.index_dtype), (n,))
        owner = (t2 >= start) & (t2 < start + vl)
        k2 = None if keep is None else xp.reshape(keep, (n,))
        if k2 is not None:
            owner = owner & k2
        tl = torch.where(owner, t2 - start, 0)
        o = dict(s=s, zl=zl, V=nv, cw=cw is not None)
        if kind == "dense":
            rows, wt = _torch_fn(0).apply(arrays[1], tl, owner, k2, cw, o, group)
        else:
            x2, W, b = arrays[1], arrays[2], arrays[3]
            if k2 is not None:
                x2 = torch.where(k2[:, None], x2, torch.zeros((), dtype=x2.dtype,
                                                                 device=x2.device))
            o.update(chunk=extra["chunk"](n, vl), cap=extra["cap"])
            rows, wt = _torch_fn(1).apply(x2, W, b, tl, owner, cw, o, group,
                                          extra["reduce_input_grad"])
    else:
        from ._kernels import parallel_jax

        rows, wt = parallel_jax.rows(kind, arrays, t, keep, cw, vocab_start, axis_name, s, zl,
                                     n, vl, cdt, extra)
    rows = xp.reshape(rows, lead)
    norm = None
    if cw is not None:
        wt = xp.reshape(wt, lead)
        norm = wt if sw is None else wt * sw
    # the one reduction helper every loss uses (the normalizer was checked on every rank above)
    return reduce.reduce(be, rows, reduction=red, sample_weight=sw, norm=norm, valid=valid,
                         out_dtype=like.dtype,
                         normalizer=validate.normalizer(normalizer, red, be, like, cdt))


# ---------------------------------------------------------------------------
# public functions


def vocab_parallel_cross_entropy(logits: Any, labels: Any, /, *, vocab_start: Any = None,
                                 group: Any = None, axis_name: Any = None,
                                 class_weight: Any = None, label_smoothing: float = 0.0,
                                 ignore_index: int | None = None, z_loss: float = 0.0,
                                 sample_weight: Any = None, reduction: str = "mean",
                                 normalizer: Any = None) -> Any:
    r"""Sparse softmax cross-entropy of logits whose classes are sharded over ranks.

    Each rank holds ``logits [..., V_local]``: the classes
    ``[vocab_start, vocab_start + V_local)`` of the global ``V``; ``labels [...]``
    (global class indices), ``sample_weight`` are the same on every rank and
    ``class_weight`` is this rank's ``[V_local]`` slice. The result is the same
    on every rank and equals ``xent.sparse_softmax_cross_entropy`` of the
    logits gathered along the class axis, with every option (per row)::

        l = -(1 - s) * w_t * log p_t - (s / V) * sum_c w_c * log p_c
            + z_loss * logsumexp(z)**2

    over the *global* ``V`` classes and log-sum-exp, normalizing weight
    ``n_i = sample_weight_i * w_{t_i}``, reduced by ``reduction`` (the five of
    xent) or divided by ``normalizer`` (then ``reduction`` stays ``"mean"``).
    Each rank's logits gradient is its slice of the single-device gradient.

    Args:
      logits: ``[..., V_local]`` this rank's classes (torch tensor with a
        process group, or a JAX array inside ``jax.shard_map``).
      labels: integer class indices ``[...]`` in ``[0, V)``, same on every rank.
      vocab_start: this rank's first class; None lays the shards out
        contiguously in rank order (torch: sizes may differ, one all-gather
        learns them; JAX: ``axis_index * V_local``). Under JAX a given
        ``vocab_start`` may be traced; a layout that does not tile ``[0, V)``
        then gives NaN (it cannot raise inside a compiled program).
      group: torch process group (None: the default group).
      axis_name: JAX mesh axis name over which the classes are sharded.
      class_weight: this rank's ``[V_local]`` non-negative class weights.
      label_smoothing, ignore_index, z_loss, sample_weight, reduction: as in
        :func:`xent.sparse_softmax_cross_entropy`.
      normalizer: a non-negative number or scalar array; the result is
        ``sum_i sample_weight_i * l_i / normalizer`` (0 when it is 0).

    Returns:
      ``[...]`` for ``"none"``, else a scalar, in the logits' dtype.

    Communication (torch): one all-gather of 7 int64 per rank (layout and
    checks), an all-reduce (max) of ``[N]`` and an all-reduce (sum) of
    ``[k N + 1]`` float32 (``k`` between 2 and 4), never the logits; nothing
    in the backward pass. JAX: one ``pmax`` and one ``psum``.

    Numerics: statistics are float32 for 16-bit logits (float64 for float64);
    sums are taken relative to the global row maximum, so logits of +-1e4 are
    exact. Ignored and zero-weight rows contribute exactly 0 even with NaN
    logits.

    Errors: a layout that does not tile ``[0, V)``, ``vocab_start`` given on
    some ranks only, labels of different shapes, a label outside ``[0, V)``,
    a negative class weight, or any argument error on one rank is a
    ``ValueError`` on every rank (torch: the one all-gather carries the
    checks, so no rank waits for another). Under JAX (traced) label values
    are not checked; an out-of-range label makes its row NaN.

    Example (one process, a group of one; gloo on CPU):
      >>> import tempfile, torch, torch.distributed as dist, xent.parallel
      >>> dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1),
      ...                         rank=0, world_size=1)
      >>> z = torch.tensor([[2.0, 0.0, -1.0]])
      >>> y = torch.tensor([0])
      >>> round(float(xent.parallel.vocab_parallel_cross_entropy(z, y)), 6)
      0.169846
      >>> dist.destroy_process_group()
    """
    be, logits = validate.float_array(logits, "logits")
    s, zl, red = _options(label_smoothing, z_loss, reduction, normalizer)
    ignore = validate.ignore_index(ignore_index)
    _group_args(be, group, axis_name)
    shape = validate.shape_of(logits)
    if len(shape) == 0:
        raise ValueError("logits must have shape [..., V_local], got a scalar")
    lead, vl = shape[:-1], shape[-1]
    z2 = be.xp.reshape(logits, (int(math.prod(lead)), vl))
    extra = dict(vl=vl, ref="logits", hint=f"logits are [..., V_local] = {shape}")
    return _core(be, "dense", (logits, z2), lead, labels, vocab_start, group, axis_name,
                 class_weight, s, zl, ignore, sample_weight, red, normalizer, extra)


def vocab_parallel_linear_cross_entropy(inputs: Any, classifier: Any, labels: Any, /, *,
                                        vocab_start: Any = None, group: Any = None,
                                        axis_name: Any = None, bias: Any = None,
                                        reduce_input_grad: bool = True,
                                        ignore_index: int | None = None,
                                        label_smoothing: float = 0.0, z_loss: float = 0.0,
                                        logit_softcap: float | None = None,
                                        class_weight: Any = None, sample_weight: Any = None,
                                        reduction: str = "mean", normalizer: Any = None,
                                        chunk_size: int | None = None) -> Any:
    r"""Linear cross-entropy with the classifier's rows sharded over ranks.

    Exactly :func:`vocab_parallel_cross_entropy` of
    ``z = inputs @ classifier.T + bias`` (soft-capped ``c * tanh(z / c)``
    when ``logit_softcap=c``), i.e. the single-device
    :func:`xent.linear_cross_entropy` on the gathered classifier, without any
    rank holding its ``[N, V_local]`` logits: they are computed
    ``chunk_size`` rows of the classifier at a time (online log-sum-exp in the
    forward pass, recomputed in the backward pass).

    Args:
      inputs: ``[..., D]`` features, the same on every rank.
      classifier: this rank's rows ``[V_local, D]`` (classes
        ``[vocab_start, vocab_start + V_local)``).
      labels: global class indices ``[...]``.
      bias, class_weight: this rank's ``[V_local]`` slices.
      reduce_input_grad: torch only: all-reduce (sum) the ``inputs`` gradient
        over the group in the backward pass (the one collective there); turn
        it off where the surrounding layer already reduces it. Under
        ``shard_map`` JAX's autodiff sums the gradient of a replicated input
        itself.
      chunk_size: classifier rows per chunk (default: about 4M logits at once).
      Other arguments: as in :func:`vocab_parallel_cross_entropy` and
      :func:`xent.linear_cross_entropy`.

    Returns:
      ``[...]`` for ``"none"``, else a scalar, in the inputs' dtype.

    Example (one process, a group of one):
      >>> import tempfile, torch, torch.distributed as dist, xent.parallel
      >>> dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1),
      ...                         rank=0, world_size=1)
      >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
      >>> W = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
      >>> y = torch.tensor([0, 2])
      >>> loss = xent.parallel.vocab_parallel_linear_cross_entropy(x, W, y, reduction="sum")
      >>> round(float(loss), 6)
      1.268458
      >>> dist.destroy_process_group()
    """
    be, x = validate.float_array(inputs, "inputs")
    s, zl, red = _options(label_smoothing, z_loss, reduction, normalizer)
    ignore = validate.ignore_index(ignore_index)
    reduce_input_grad = validate.flag(reduce_input_grad, "reduce_input_grad")
    cap = None if logit_softcap is None else validate.scalar(logit_softcap, "logit_softcap", low=0.0,
                                                      low_open=True)
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    _group_args(be, group, axis_name)
    shape = validate.shape_of(x)
    if len(shape) == 0:
        raise ValueError("inputs must have shape [..., D], got a scalar")
    D, lead = shape[-1], shape[:-1]
    W = validate.convert(be, classifier, x, "classifier", "inputs")
    if len(validate.shape_of(W)) != 2 or validate.shape_of(W)[1] != D:
        raise ValueError(f"classifier must have shape [V_local, D] = [V_local, {D}] (D from "
                         f"inputs {shape}), got {validate.shape_of(W)}")
    if W.dtype != x.dtype:
        raise TypeError(f"classifier must have the inputs' dtype {be.dtype_name(x.dtype)}, "
                        f"got {be.dtype_name(W.dtype)}")
    vl = validate.shape_of(W)[0]
    b = None
    if bias is not None:
        b = validate.convert(be, bias, x, "bias", "inputs")
        if validate.shape_of(b) != (vl,):
            raise ValueError(f"bias must have shape ({vl},) (this rank's classes), "
                             f"got {validate.shape_of(b)}")
        b = be.astype(b, x.dtype)
    n = int(math.prod(lead))
    x2 = be.xp.reshape(x, (n, D))

    def chunk(n_, v_):
        if chunk_size is not None:
            return max(1, min(max(v_, 1), chunk_size))
        return max(1, min(max(v_, 1), (1 << 22) // max(n_, 1)))

    extra = dict(vl=vl, ref="inputs", hint=f"inputs are [..., D] = {shape}, so labels must be "
                 f"{lead}", chunk=chunk, cap=cap, reduce_input_grad=reduce_input_grad)
    return _core(be, "linear", (x, x2, W, b), lead, labels, vocab_start, group, axis_name,
                 class_weight, s, zl, ignore, sample_weight, red, normalizer, extra)


def count(labels: Any, /, *, ignore_index: int | None = None, sample_weight: Any = None,
          class_weight: Any = None, group: Any = None, axis_name: Any = None) -> Any:
    r"""The global normalizer ``sum_i n_i`` of these labels, summed over the ranks.

    ``n_i = sample_weight_i * class_weight[label_i]`` (1 without weights, 0 for
    ``ignore_index``): the ``"mean"`` denominator of every xent loss. Summed
    over the torch ``group`` (an all-reduce; pass ``torch.distributed.group.WORLD``
    for the default group), over ``axis_name`` (a
    ``psum`` inside ``jax.shard_map``), or over the replicas in a
    ``tf.distribute`` replica context; otherwise the local count. Pass the
    sum over the micro-batches of one step as ``normalizer=`` to the losses:
    summing their results over micro-batches and ranks then gives exactly the
    global mean.

    Args:
      labels: integer labels ``[...]`` (NumPy, torch, JAX or TensorFlow).
      ignore_index: label value that counts 0.
      sample_weight: per-element weights broadcastable to ``[...]``.
      class_weight: the full ``[V]`` class weights.
      group: torch process group (None: no reduction, the local count);
        axis_name: JAX mesh axis name.

    Returns:
      A scalar of the labels' library: float32, or the weights' floating dtype.

    Example:
      >>> import numpy as np, xent.parallel
      >>> float(xent.parallel.count(np.array([3, -100, 1]), ignore_index=-100))
      2.0
    """
    ignore = validate.ignore_index(ignore_index)
    if type(labels).__module__.startswith("tensorflow") or "tensorflow" in str(type(labels)):
        return _count_tf(labels, ignore, sample_weight, class_weight)
    from ._core.backend import backend_of

    be, labels = backend_of(labels, "labels")
    xp = be.xp
    validate.integer_labels(be, labels, "labels")
    lead = validate.shape_of(labels)
    dt = be.float32
    swa = cwa = None
    if sample_weight is not None:
        swa = validate.convert(be, sample_weight, labels, "sample_weight", "labels")
    if class_weight is not None:
        cwa = validate.convert(be, class_weight, labels, "class_weight", "labels")
    for w in (swa, cwa):  # float64 weights give a float64 count
        if w is not None and be.dtype_name(w.dtype) == "float64":
            dt = w.dtype
    t = labels
    valid = None if ignore is None else t != ignore
    if valid is not None:
        t = xp.where(valid, t, xp.zeros_like(t))
    n = xp.ones(lead, dtype=dt) if valid is None else be.astype(valid, dt)
    if class_weight is not None:
        cw = be.astype(cwa, dt)
        if len(validate.shape_of(cw)) != 1:
            raise ValueError(f"class_weight must be the full [V] vector, got {validate.shape_of(cw)}")
        n = n * xp.reshape(xp.take(cw, xp.reshape(be.astype(t, be.index_dtype), (-1,)), axis=0),
                           lead)
    if sample_weight is not None:
        sw = be.astype(swa, dt)
        validate.broadcastable_to(sw, lead, "sample_weight", "the labels' shape")
        n = n * sw
    total = xp.sum(n)
    if axis_name is not None and be.collective != "axis_name":
        raise ValueError("axis_name= is for JAX arrays inside jax.shard_map")
    if axis_name is None and group is not None and be.collective != "group":
        raise ValueError("group= is a torch.distributed process group; these labels are "
                         f"{be.name} arrays")
    return be.all_sum(total, group if axis_name is None else axis_name)


def _count_tf(labels, ignore, sample_weight, class_weight):
    import tensorflow as tf

    t = tf.convert_to_tensor(labels)
    dt = tf.float32
    n = tf.ones(tf.shape(t), dt)
    if ignore is not None:
        valid = tf.not_equal(t, ignore)
        n = tf.cast(valid, dt)
        t = tf.where(valid, t, tf.zeros_like(t))
    if class_weight is not None:
        n = n * tf.gather(tf.cast(class_weight, dt), tf.cast(t, tf.int64))
    if sample_weight is not None:
        n = n * tf.broadcast_to(tf.cast(sample_weight, dt), tf.shape(n))
    total = tf.reduce_sum(n)
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context() is False:
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, total)
    return total
