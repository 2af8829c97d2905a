"""JAX formulations of the dense losses that XLA fuses into fewer, cheaper passes.

Under ``jax.jit`` XLA already fuses elementwise work; what matters is how many
transcendental functions and passes over the logits the expression asks for.

* probability labels: ``l = A (lse - m) - sum_c a_c (z_c - m)`` (the form in
  ``_fast.py``) instead of building ``log p`` and weighting it: one pass for
  ``lse``, one for the weighted sum, no logits-sized ``log p``;
* sigmoid: ``softplus(z)`` and ``softplus(-z)`` from one ``exp`` and one
  ``log1p`` (``log1p(exp(-|z|)) + max(±z, 0)``), with a custom JVP giving
  ``sigmoid(±z)``, where the plain form evaluates two ``logaddexp``.

Integer labels use the plain composition (it is already as fast as optax).
Measured on [4096, 16384] float32 (CPU time, jit): probability labels
forward+backward 384 ms against the plain form's 484 ms (optax 349 ms); the
forward alone is the same for both forms.
Gradients come from JAX's autodiff (labels and ``pos_weight`` included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _compute(z):
    return z.astype(jnp.float32) if z.dtype in (jnp.float16, jnp.bfloat16) else z


def sparse_loss(z, t, w_t, cw, keep, s, zl):
    return None


def dense_loss(z, y, cw, keep, s, zl):
    if z.ndim == 0 or y.shape != z.shape:
        return None
    z = _compute(z)
    C = z.shape[-1]
    if keep is not None:
        z = jnp.where(keep[..., None], z, 0.0)
        y = jnp.where(keep[..., None], y, 0.0)
    a = y if s == 0.0 else (1.0 - s) * y + s / C
    if cw is not None:
        a = a * cw
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    zm = z - m
    log_s = jnp.log(jnp.sum(jnp.exp(zm), axis=-1))
    # masked classes (a_c == 0, z_c == -inf): their term is 0, and so is their
    # label gradient (the plain composition's convention), so a_c is cut there
    bad = (a == 0) & jnp.isinf(zm)
    a = jnp.where(bad, 0.0, a)
    term = jnp.where(bad, 0.0, zm)
    loss = jnp.sum(a, axis=-1) * log_s - jnp.sum(a * term, axis=-1)
    if zl != 0.0:
        lse = log_s + m[..., 0]
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


def _safe(w, v):
    return w * jnp.where((w == 0) & jnp.isinf(v), 0.0, v)


def sigmoid_loss(z, y, pw, keep, s):
    if y.shape != z.shape:
        return None
    z = _compute(z)
    if keep is not None:
        z = jnp.where(keep, z, 0.0)
        y = jnp.where(keep, y, 0.0)
    if s != 0.0:
        y = (1.0 - s) * y + 0.5 * s
    pos = y if pw is None else pw * y
    sp, sp_neg = _softplus_pair(z)
    return _safe(pos, sp_neg) + _safe(1.0 - y, sp)
