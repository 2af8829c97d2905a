"""JAX formulations of the dense losses that XLA fuses into fewer, cheaper passes.

Under ``jax.jit`` XLA already fuses elementwise work; what matters is how many
transcendental functions and passes over the logits the expression asks for.

* sigmoid: ``softplus(z)`` and ``softplus(-z)`` from one ``exp`` and one
  ``log1p`` (``log1p(exp(-|z|)) + max(±z, 0)``), with a custom JVP giving
  ``sigmoid(±z)``, where the plain form evaluates two ``logaddexp``.

Integer labels use the plain composition: with its fused exp-sum pass it is as
fast as optax. Probability labels use ``_soft_rows`` (a ``custom_vjp``).
Gradients come from JAX's autodiff (labels and ``pos_weight`` included).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .rows import safe_product


def sparse_loss(call):
    return None


@jax.custom_vjp
def _soft_rows(z, w):
    """``(sum_c w_c (lse - z_c), lse)`` per row, ``lse = logsumexp(z)``.

    Shifted by the row maximum ``m`` (``lse - z_c = log sum exp(z - m) - (z_c - m)``,
    no rounding of a huge ``lse``); ``0 * -inf`` terms (masked classes with zero
    weight) are 0 in the value and the gradients.
    """
    return _soft_fwd(z, w)[0]


def _soft_fwd(z, w):
    m = jnp.max(z, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    zs = z - m
    log_se = jnp.log(jnp.sum(jnp.exp(zs), axis=-1))
    A = jnp.sum(w, axis=-1)
    loss = A * log_se - jnp.sum(_safe(w, zs), axis=-1)
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

    One fused max pass and one exp-sum pass forward (``A log S - sum_c w_c (z_c - m)``,
    ``A = sum_c w_c``), and a hand-written backward ``dz = g (A p - w)``,
    ``dw = g (lse - z)``: autodiff of the rewritten form measured 1.19x optax
    fwd+bwd ([2048, 16384] float32, jit), the plain composition 1.11x
    (forward 0.86x / 1.00x). ``z_loss`` adds ``zl * lse**2``.
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
