"""The torch kernels of sampled softmax and NCE: one autograd node over the sampled logits.

Forward: ``z = shift + x @ ws.T`` (one GEMM with the add), hits set to
``-FLT_MAX`` in place, then in place ``softmax(z)`` (saved) and its
logsumexp, or ``sigmoid(z)`` (saved) and ``sum softplus(z)``. Backward:
``dz = saved * g`` and two GEMMs; hit columns have ``saved == 0`` exactly,
so no gradient reaches them. With unique candidates (the built-in
samplers) the hits are found by a binary search over the sorted ids and
written at their ``N * num_true`` positions, without an ``[N, S]`` mask.
The true logits and the final combination are those of
:mod:`xent._kernels.sampled_ref`. Declines (returns None) under
``torch.compile``, which traces the reference composition without a graph
break.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._core.record import SampledCall
from . import sampled_ref


def _hit_positions(t: Any, ids: Any) -> tuple:
    """For unique ids: each label's column among the candidates (where found), without syncing."""
    S = ids.shape[0]
    sorted_ids, order = torch.sort(ids)
    pos = torch.searchsorted(sorted_ids, t).clamp_(max=S - 1)
    found = sorted_ids[pos] == t
    rows = torch.arange(t.shape[0], device=t.device)[:, None].expand_as(t)
    return rows.reshape(-1), order[pos].reshape(-1), found.reshape(-1)


class SampledColumns(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ws, shift, rows, cols, found, mask, kind):
        z = torch.addmm(shift, x, ws.t())
        if rows is not None:
            z[rows, cols] = torch.where(found, sampled_ref.HIT_LOGIT, z[rows, cols])
        elif mask is not None:
            z.masked_fill_(mask, sampled_ref.HIT_LOGIT)
        if kind == "softmax":
            m = z.amax(dim=1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            z.sub_(m).exp_()
            total = z.sum(dim=1, keepdim=True)
            z.div_(total)
            out = (total.log() + m).squeeze(1)
        else:
            out = torch.nn.functional.softplus(z).sum(dim=1)
            z.sigmoid_()
        ctx.save_for_backward(x, ws, z)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, ws, p = ctx.saved_tensors
        dz = p * g[:, None]
        dx = dz @ ws if ctx.needs_input_grad[0] else None
        dws = dz.t() @ x if ctx.needs_input_grad[1] else None
        dshift = dz.sum(dim=0) if ctx.needs_input_grad[2] else None
        return dx, dws, dshift, None, None, None, None, None


def _columns(call: SampledCall, kind: str) -> Any:
    """``(true_logits, per-row reduction of the sampled columns)``, or None when declining."""
    if not call.be.fused_sampled_columns():
        return None
    x, true_logits, ws, shift, ids = sampled_ref.terms(call)
    rows = cols = found = mask = None
    if call.remove_hits:
        if call.unique_ids:
            rows, cols, found = _hit_positions(call.t, ids)
        else:
            mask = sampled_ref.hit_mask(call.t, ids, call.num_true)
    if shift is None:
        shift = torch.zeros(ws.shape[0], dtype=x.dtype, device=x.device)
    return true_logits, SampledColumns.apply(x, ws, shift, rows, cols, found, mask, kind)


def sampled_loss(call: SampledCall) -> Any:
    """Sampled softmax's ``[N]`` loss with the fused sampled columns, or None."""
    out = _columns(call, "softmax")
    return None if out is None else sampled_ref.softmax_loss(call, *out)


def nce_loss(call: SampledCall) -> Any:
    """NCE's ``[N]`` loss with the fused sampled columns, or None."""
    out = _columns(call, "nce")
    return None if out is None else sampled_ref.nce_loss(call, *out)
