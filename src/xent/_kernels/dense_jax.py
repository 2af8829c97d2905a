"""JAX formulations of the dense losses that XLA fuses into fewer, cheaper passes.

Under ``jax.jit`` XLA already fuses elementwise work; what matters is how many
transcendental functions and passes over the logits the expression asks for.

* sigmoid: ``softplus(z)`` and ``softplus(-z)`` from one ``exp`` and one
  ``log1p`` (``log1p(exp(-|z|)) + max(±z, 0)``), with a custom JVP giving
  ``sigmoid(±z)``, where the plain form evaluates two ``logaddexp``.

Integer labels use the plain composition: with its fused exp-sum pass it is as
fast as optax. Probability labels use ``_soft_rows`` (a ``custom_vjp``);
the other gradients come from JAX's autodiff (``pos_weight`` included).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .rows import safe_product


def sparse_loss(call):
    return None


def _shift(z):
    """``(m, z - m, log sum exp(z - m))`` per row (``[..., 1]``, ``[..., C]``, ``[..., 1]``).

    ``m`` is the row maximum, floored at the most negative finite number by the
    reduction's initial value (not by a ``where`` afterwards): a row of
    ``-inf`` then gives ``z - m = -inf`` instead of NaN, and XLA fuses the
    maximum and the subtraction into one pass, as for ``jax.nn.log_softmax``.
    """
    big = jnp.finfo(z.dtype).max
    m = jax.lax.reduce(z, jnp.asarray(-big, z.dtype), jax.lax.max, (z.ndim - 1,))[..., None]
    zs = z - m
    return m, zs, jnp.log(jnp.sum(jnp.exp(zs), axis=-1, keepdims=True))


def _gated(w, zs):
    """``zs`` where ``w > 0``, and at least the most negative finite number where ``w == 0``.

    ``w * _gated(w, zs)`` is ``w * zs``, except that a masked class (``zs = -inf``)
    with ``w == 0`` gives 0 instead of NaN. The floor ``-big * (1 + w * big)`` is
    ``-big`` for ``w == 0`` and overflows to ``-inf`` for every ``w > 0`` (the
    smallest subnormal included), so ``max`` leaves ``zs`` as it is there. Plain
    arithmetic, not a ``where``: XLA keeps it inside its fused reductions, where
    a select splits them into separate passes over the logits.
    """
    big = jnp.finfo(zs.dtype).max
    return jnp.maximum(zs, -big * (1.0 + w * big))


@jax.custom_vjp
def _soft_rows(z, w):
    """``(sum_c w_c (lse - z_c), lse)`` per row, ``lse = logsumexp(z)``.

    Shifted by the row maximum ``m`` (``lse - z_c = log sum exp(z - m) - (z_c - m)``,
    no rounding of a huge ``lse``); ``0 * -inf`` terms (masked classes with zero
    weight) are 0 in the value and the gradients.

    Without differentiation this is optax's pass structure: one fused
    max-and-shift pass that writes ``z - m``, one exp-sum pass, and one pass
    over ``w`` and ``z - m`` for the loss.
    """
    m, zs, log_se = _shift(z)
    return jnp.sum(w * (log_se - _gated(w, zs)), axis=-1), (log_se + m)[..., 0]


def _soft_fwd(z, w):
    # ``A log S - sum_c w_c (z_c - m)``: ``A = sum_c w_c`` is needed by the
    # backward pass anyway, and this form keeps ``log S`` out of the
    # elementwise part, so XLA writes no ``[..., C]`` buffer besides ``z - m``
    # (which it reuses for the gradient)
    m, zs, log_se = _shift(z)
    A = jnp.sum(w, axis=-1)
    log_se = log_se[..., 0]
    loss = A * log_se - jnp.sum(w * _gated(w, zs), axis=-1)
    return (loss, log_se + m[..., 0]), (z, w, m, log_se, A)


def _soft_bwd(res, gs):
    z, w, m, log_se, A = res
    g1, g2 = gs
    zs = z - m
    p = jnp.exp(zs - log_se[..., None])
    dz = (g1 * A + g2)[..., None] * p - g1[..., None] * w
    # d/dw_c = lse - z_c, and 0 where the term was 0 * -inf
    dw = g1[..., None] * jnp.where((w == 0) & jnp.isinf(zs), 0.0, log_se[..., None] - zs)
    return dz, dw


_soft_rows.defvjp(_soft_fwd, _soft_bwd)


def dense_loss(call):
    """Probability labels: ``sum_c w_c (lse - z_c)`` with ``w = ((1 - s) y + s / C) cw``.

    ``_soft_rows`` gives the value with optax's passes (fused max-and-shift,
    exp-sum, weighted sum) and, under differentiation, a hand-written backward
    ``dz = g (A p - w)``, ``dw = g (lse - z)``. No ``where`` touches the
    ``[..., C]`` arrays (``_gated`` instead): on the CPU a select there keeps
    XLA from fusing, which cost the forward pass two extra passes and twice
    optax's time. ``z_loss`` adds ``zl * lse**2``.
    """
    if call.gamma != 0.0:
        return None
    z, y, cw, keep, s, zl = call.z.astype(call.cdt), call.labels, call.cw, call.keep, call.s, call.zl
    y = y.astype(z.dtype)
    C = z.shape[-1]
    if keep is not None:
        z = jnp.where(keep[..., None], z, 0.0)
        y = jnp.where(keep[..., None], y, 0.0)
    w = y if s == 0.0 else (1.0 - s) * y + s / C
    if cw is not None:
        w = w * cw
    loss, lse = _soft_rows(z, w)
    if zl != 0.0:
        loss = loss + zl * lse * lse
    return loss


@jax.custom_jvp
def _softplus_pair(z):
    """``(softplus(z), softplus(-z))`` from one exp and one log1p."""
    l1 = jnp.log1p(jnp.exp(-jnp.abs(z)))
    return l1 + jnp.maximum(z, 0.0), l1 + jnp.maximum(-z, 0.0)


@_softplus_pair.defjvp
def _softplus_pair_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    e = jnp.exp(-jnp.abs(z))
    l1 = jnp.log1p(e)
    q = 1.0 / (1.0 + e)
    nonneg = z >= 0
    sig, sig_neg = jnp.where(nonneg, q, e * q), jnp.where(nonneg, e * q, q)
    out = (l1 + jnp.maximum(z, 0.0), l1 + jnp.maximum(-z, 0.0))
    return out, (sig * dz, -sig_neg * dz)


_safe = partial(safe_product, jnp)


def sigmoid_loss(call):
    z, y, pw, keep, s = call.z.astype(call.cdt), call.labels, call.pw, call.keep, call.s
    if call.gamma != 0.0 or call.alpha is not None or y.shape != z.shape:
        return None
    if keep is not None:
        z = jnp.where(keep, z, 0.0)
        y = jnp.where(keep, y, 0.0)
    if s != 0.0:
        y = (1.0 - s) * y + 0.5 * s
    pos = y if pw is None else pw * y
    sp, sp_neg = _softplus_pair(z)
    return _safe(pos, sp_neg) + _safe(1.0 - y, sp)
