"""Reference kernels of sampled softmax and NCE: TensorFlow's ``_compute_sampled_logits``, plainly.

Each takes a :class:`xent._core.record.SampledCall` and returns the ``[N]``
per-example loss; they work for every backend and are what
``table.disabled()`` runs. Only the ``N * num_true + S`` rows of the
classifier (and entries of the bias) that are used are gathered; their
gradients are scatters into those rows.
"""

from __future__ import annotations

from typing import Any

from .._core import reduce, validate
from .._core.record import SampledCall

# TensorFlow adds -FLT_MAX to the logits of accidental hits; xent puts it there
# with a `where`, so no gradient reaches them.
HIT_LOGIT = -3.4028234663852886e38


def hit_mask(t: Any, ids: Any, T: int) -> Any:
    """``[N, S]``: True where candidate k is one of example i's labels."""
    hit = t[:, 0:1] == ids[None, :]
    for j in range(1, T):
        hit = hit | (t[:, j:j + 1] == ids[None, :])
    return hit


def terms(call: SampledCall) -> tuple:
    """What both losses share: ``(x, true_logits [N, T], ws [S, D], shift [S] or None, ids)``.

    ``x`` in ``cdt`` with zero-weight rows zeroed (NaN padding touches
    nothing); ``ws`` the gathered candidate rows; ``shift`` the per-column
    ``bias - log Q`` added to the sampled logits ``x @ ws.T``.
    """
    be, t, T, cdt = call.be, call.t, call.num_true, call.cdt
    xp = be.xp
    N, D = validate.shape_of(call.x)
    # N * T true rows; a tensor where the batch size is unknown until run time (tf.data)
    NT = N * T if N is not None else be.tf.size(t)
    ids = be.stop_gradient(call.ids)
    all_ids = xp.concat([xp.reshape(t, (-1,)), ids])
    rows = be.astype(be.gather_rows(call.W, all_ids), cdt)
    x = be.astype(call.x, cdt)
    keep = reduce.keep_mask(be, call.sw, None)
    if keep is not None:
        x = xp.where(keep[:, None], x, xp.zeros_like(x))
    true_w = xp.reshape(rows[:NT], (-1, T, D))
    true_logits = xp.sum(x[:, None, :] * true_w, axis=-1)
    shift = None
    if call.b is not None:
        all_b = be.astype(xp.take(call.b, all_ids, axis=0), cdt)
        true_logits = true_logits + xp.reshape(all_b[:NT], (-1, T))
        shift = all_b[NT:]
    if call.subtract_log_q:
        te = be.stop_gradient(be.astype(call.te, cdt))
        se = be.stop_gradient(be.astype(call.se, cdt))
        if keep is not None:
            te = xp.where(keep[:, None], te, xp.ones_like(te))
        true_logits = true_logits - xp.log(te)
        shift = -xp.log(se) if shift is None else shift - xp.log(se)
    return x, true_logits, rows[NT:], shift, ids


def sampled_logits(call: SampledCall, x: Any, ws: Any, shift: Any, ids: Any) -> Any:
    """The ``[N, S]`` sampled logits, accidental hits at ``HIT_LOGIT`` where removed."""
    be = call.be
    xp = be.xp
    z = xp.matmul(x, xp.matrix_transpose(ws))
    if shift is not None:
        z = z + shift[None, :]
    if call.remove_hits:
        z = xp.where(hit_mask(call.t, ids, call.num_true), HIT_LOGIT, z)
    return z


def softmax_loss(call: SampledCall, true_logits: Any, lse_sampled: Any) -> Any:
    """``logsumexp([t_i, s_i]) - mean_j t_ij``, without concatenating ``[N, T + S]``."""
    be = call.be
    xp = be.xp
    lse = xp.logaddexp(be.logsumexp(true_logits, axis=-1), lse_sampled)
    return lse - xp.mean(true_logits, axis=-1)


def nce_loss(call: SampledCall, true_logits: Any, noise: Any) -> Any:
    """``sum_j [(1/T) softplus(-t_ij) + (1 - 1/T) softplus(t_ij)] + noise_i``."""
    be, T = call.be, call.num_true
    xp = be.xp
    y = 1.0 / T
    true_part = y * be.softplus(-true_logits)
    if T > 1:
        true_part = true_part + (1.0 - y) * be.softplus(true_logits)
    return xp.sum(true_part, axis=-1) + noise


def sampled(call: SampledCall) -> Any:
    """Sampled softmax: the logsumexp of the sampled logits joins the true ones'."""
    x, true_logits, ws, shift, ids = terms(call)
    z = sampled_logits(call, x, ws, shift, ids)
    return softmax_loss(call, true_logits, call.be.logsumexp(z, axis=-1))


def nce(call: SampledCall) -> Any:
    """NCE: ``sum_k softplus(s_ik)`` is the noise part."""
    x, true_logits, ws, shift, ids = terms(call)
    z = sampled_logits(call, x, ws, shift, ids)
    return nce_loss(call, true_logits, call.be.xp.sum(call.be.softplus(z), axis=-1))
