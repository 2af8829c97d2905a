"""TensorFlow kernels of the softmax losses: ``tf.custom_gradient`` over the row formula.

Differentiating the plain composition (:mod:`xent._kernels.reference`) makes
TensorFlow keep several ``[..., C]`` intermediates (``z - m``, ``log p``, the
masks of the ``0 * inf`` guard) from the forward pass to the backward pass.
These kernels compute, per row, ``m`` (the row maximum, 0 where it is not
finite), ``log S = log sum exp(z - m)`` and the loss (formulas in
:mod:`xent._kernels.table`)::

    l     = A log S - sum_c a_c (z_c - m) + z_loss lse**2
    dl/dz = (A + 2 z_loss lse) p - a

(probability labels: summed as ``sum_c a_c (log S - (z_c - m))``, see
:func:`_capped`; row sums by ``xp.row_sum``)
and save only ``[...]``-sized statistics besides their inputs. The backward
pass recomputes ``p = exp((z - m) - log S)`` and forms
``g * ((A + 2 z_loss lse) p - a)`` in one expression, which XLA fuses into one
pass over the logits (under ``jit_compile=True``). With probability labels it
writes ``p`` as ``exp(z - m) / S``, the forward pass's own expression, so that
XLA computes the exponentials once for both passes, as for ``tf.nn``'s op
(measured at ``[4096, 32768]``, fwd+bwd with the whole gradient: 0.97x
``tf.nn.softmax_cross_entropy_with_logits``, where recomputing took 1.12x);
with integer labels it recomputes them, so that no ``[..., C]`` buffer lives
from one pass to the other (0.90x ``tf.nn``'s time at ``[8192, 32768]``, half
its peak memory). Terms with ``a_c == 0``
count 0 where ``z_c = -inf``, in the value and the gradients. float16 /
bfloat16 logits are computed in ``call.cdt`` and their gradient is returned in
their own dtype; rows that contribute nothing (``call.keep`` False) have
their logits and coefficients zeroed before the kernel, as in the reference.

Integer labels: ``a = (1 - s) w_t onehot(t) + (s / C) w`` (``w`` the class
weights or 1), the label logit by a gather (no one-hot product in the
forward pass). Probability labels: ``a = ((1 - s) y + s / C) w``.

Gradients of the weights: ``w_t`` (``cw[t]``) and, with label smoothing, the
class weights are inputs of the custom gradient and get theirs
(``(1 - s)(lse - z_t)`` and ``(s / C) sum (lse - z_c)``); with probability
labels and class weights the coefficients ``a`` are an input (their gradient
``lse - z_c`` reaches ``cw`` through TensorFlow's autodiff).

Declines (the reference runs): the focal factor (``focal_gamma != 0``) and,
for the sigmoid loss, ``focal_alpha``. Labels may always need a gradient (a
``GradientTape`` may watch any tensor): every kernel gives it.

The sigmoid loss (:func:`sigmoid_loss`) is elementwise: one ``exp`` and one
``log1p`` per entry forward, ``g (neg σ(z) - pos σ(-z))`` backward from the
logits and the coefficients (TensorFlow's autodiff of the reference saved
several ``[...]``-sized intermediates and took about 2.7 times ``tf.nn``'s
time under XLA); the plain mean or sum is taken inside the kernel
(``Reduced``), so the backward pass starts from a scalar.

Second derivatives: the backward pass of the logits is itself a
``tf.custom_gradient`` whose gradient is TensorFlow's autodiff of the same
formula with ``log S`` recomputed from the logits, so a nested
``GradientTape`` gets the exact second derivative with respect to the
logits. Second derivatives that mix the logits and the weights are not
given (None); take them with ``table.disabled()``.
"""

from __future__ import annotations

import tensorflow as tf

from .._core import tf_namespace as xp
from .._core.reduce import Reduced, plain_reduction


def _stats(zc, by_dot=True):
    """``(z - m, m, log S)``: ``m`` the row maximum (0 where not finite), ``[..., C]``, ``[...]``, ``[...]``.

    ``by_dot=False``: ``S`` by ``reduce_sum``, not ``xp.row_sum``. The
    integer-label kernel takes it: there XLA (CPU, TF 2.21) writes ``exp(z - m)``
    out either way and the two take the same time, and the product's vector of
    ones is one ``[C]`` buffer more than ``tf.nn``'s program holds (measured
    with XLA's buffer assignment). With probability labels the product is
    faster (about 12% of the step at ``[1024, 32768]``): kept there.
    """
    m = tf.reduce_max(zc, axis=-1, keepdims=True)
    m = tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))
    zs = zc - m
    e = tf.exp(zs)
    return zs, m[..., 0], tf.math.log(xp.row_sum(e) if by_dot else tf.reduce_sum(e, axis=-1))


def _guarded(a, zs):
    """``zs``, with 0 where ``a == 0`` and ``zs`` is infinite (masked classes)."""
    return tf.where((a == 0) & tf.math.is_inf(zs), tf.zeros_like(zs), zs)


def _with_z_loss(loss, m, log_s, zl):
    """``(loss + zl lse**2, lse)``."""
    lse = m + log_s
    return (loss + zl * lse * lse if zl != 0.0 else loss), lse


def _gated(a, zs):
    """``zs``, floored at the most negative finite number where ``a == 0``: ``a * _gated(a, zs)`` is 0 there.

    Plain arithmetic instead of a select (as in ``dense_jax._gated``): the floor
    ``-big (1 + a big)`` overflows to ``-inf`` for every ``a > 0``, and XLA keeps
    the product inside the fused reduction instead of writing it out.
    """
    big = zs.dtype.max
    return tf.maximum(zs, -big * (1.0 + a * big))


def _capped(a, d):
    """``d`` (``lse - z >= 0``), capped at the largest finite number where ``a == 0``: ``a * _capped(a, d)`` is 0 there.

    The loss ``sum_c a_c (lse - z_c)`` is formed after ``log S`` (not as
    ``A log S - sum_c a_c (z_c - m)``), so that XLA schedules its pass after
    the one of ``exp``: the two never hold a ``[..., C]`` buffer at once.
    Exact for every ``a > 0``: ``a * big`` exceeds half an ulp of 1 even for
    the smallest subnormal ``a``, so the cap overflows to ``inf``.
    """
    big = d.dtype.max
    return tf.minimum(d, big * (1.0 + a * big))


def _dz(z, cdt, coef, sub, m, log_s, share=False):
    """``g (A + 2 zl lse) p - sub`` in ``z``'s dtype; exact second derivative w.r.t. ``z``.

    ``coef = g (A + 2 zl lse)`` and ``sub = g a`` (``[...]`` and ``[..., C]``,
    built by the caller from ``g``). The fused form reuses the saved ``log S``;
    its own gradient recomputes ``log S`` from ``z`` and lets TensorFlow
    differentiate (``coef`` and ``sub`` hold ``g`` and ``lse``: their gradients flow).
    """

    def plain(z, coef, sub):
        zc = tf.cast(z, cdt)
        zs, _, ls = _stats(zc)
        return tf.cast(coef[..., None] * tf.exp(zs - ls[..., None]) - sub, z.dtype)

    @tf.custom_gradient
    def fused(z, coef, sub):
        zs = tf.cast(z, cdt) - m[..., None]
        if share:  # exp(z - m), the forward pass's expression: XLA computes it once
            out = (coef * tf.exp(-log_s))[..., None] * tf.exp(zs) - sub
        else:
            out = coef[..., None] * tf.exp(zs - log_s[..., None]) - sub
        out = tf.cast(out, z.dtype)

        def grad2(u):
            with tf.GradientTape() as tape:
                tape.watch([z, coef, sub])
                o = plain(z, coef, sub)
            return tape.gradient(o, [z, coef, sub], output_gradients=u)

        return out, grad2

    return fused(z, coef, sub)


def sparse_loss(call):
    """Integer labels: ``on (lse - z_t) + (s / C) sum_c w_c (lse - z_c) + zl lse**2``, ``on = (1 - s) w_t``."""
    if call.gamma != 0.0:
        return None
    z, t, w_t, cw, keep, s, zl, cdt = (call.z, call.labels, call.w_t, call.cw, call.keep, call.s,
                                       call.zl, call.cdt)
    C = call.num_classes
    sc = s / C
    if keep is not None:
        z = tf.where(keep[..., None], z, tf.zeros_like(z))
    smooth_cw = s != 0.0 and cw is not None
    inputs = [z] + ([w_t] if w_t is not None else []) + ([cw] if smooth_cw else [])

    @tf.custom_gradient
    def f(*xs):
        z = xs[0]
        wt = xs[1] if w_t is not None else None
        cwi = xs[-1] if smooth_cw else None
        zs, m, log_s = _stats(tf.cast(z, cdt), by_dot=False)
        zt = tf.gather(zs, tf.cast(t, tf.int32)[..., None], batch_dims=len(t.shape))[..., 0]
        on = (1.0 - s) if wt is None else (1.0 - s) * wt
        A = on
        loss = on * (log_s - zt)
        if s != 0.0:
            total = float(C) if cwi is None else tf.reduce_sum(cwi)
            A = on + sc * total
            dot = tf.reduce_sum(zs, axis=-1) if cwi is None else tf.reduce_sum(
                cwi * _gated(cwi, zs), axis=-1)
            loss = loss + sc * (total * log_s - dot)
        loss, lse = _with_z_loss(loss, m, log_s, zl)

        def grad(g):
            g = tf.cast(g, cdt)
            coef = g * (A + 2.0 * zl * lse) if zl != 0.0 else g * A
            sub = tf.one_hot(t, C, dtype=cdt) * (g * on)[..., None]
            if s != 0.0:
                sub = sub + (g * sc)[..., None] * (1.0 if cwi is None else cwi)
            out = [_dz(z, cdt, coef, sub, m, log_s)]
            if wt is not None:
                out.append(g * (1.0 - s) * (log_s - zt))
            if cwi is not None:
                zs = tf.cast(z, cdt) - m[..., None]  # recomputed: nothing [..., C] is saved
                d = g[..., None] * _guarded(cwi, log_s[..., None] - zs)
                out.append(sc * tf.reshape(tf.reduce_sum(tf.reshape(d, (-1, C)), axis=0), (C,)))
            return out

        return loss, grad

    return f(*inputs)


def dense_loss(call):
    """Probability labels: ``sum_c a_c (lse - z_c) + zl lse**2``, ``a = ((1 - s) y + s / C) w``."""
    if call.gamma != 0.0:
        return None
    z, y, cw, keep, s, zl, cdt = call.z, call.labels, call.cw, call.keep, call.s, call.zl, call.cdt
    if tuple(y.shape) != tuple(z.shape):
        return None
    C = call.num_classes
    a = tf.cast(y, cdt)
    if s != 0.0:
        a = (1.0 - s) * a + s / C
    if cw is not None:
        a = a * cw
    if keep is not None:
        z = tf.where(keep[..., None], z, tf.zeros_like(z))
        a = tf.where(keep[..., None], a, tf.zeros_like(a))

    @tf.custom_gradient
    def f(z, ai):
        zs, m, log_s = _stats(tf.cast(z, cdt))
        A = xp.row_sum(ai)
        loss = xp.row_sum(ai * _capped(ai, log_s[..., None] - zs))
        loss, lse = _with_z_loss(loss, m, log_s, zl)

        def grad(g):
            g = tf.cast(g, cdt)
            coef = g * (A + 2.0 * zl * lse) if zl != 0.0 else g * A
            out = [_dz(z, cdt, coef, g[..., None] * ai, m, log_s, share=True)]
            zs = tf.cast(z, cdt) - m[..., None]  # recomputed: nothing [..., C] is saved
            out.append(g[..., None] * _guarded(ai, log_s[..., None] - zs))
            return out

        return loss, grad

    return f(z, a)


def _neg_abs(zc):
    """``-|z|`` as a select of ``-z`` and ``z`` (not ``abs``): its autodiff (second
    derivatives) is then the one-sided derivative at 0, not ``sign(0) = 0``."""
    return tf.where(zc >= 0, -zc, zc)


def _sigmoid_terms(zc, pos, neg, unit):
    """``pos softplus(-z) + neg softplus(z)`` per element, ``0 * inf`` counted 0.

    Written as ``(pos + neg) l + z c`` with ``l = log1p(exp(-|z|))`` in
    ``[0, log 2]`` (never infinite, NaN only for a NaN logit) and ``c = neg``
    for ``z >= 0``, ``-pos`` below (``pos max(-z, 0) + neg max(z, 0)`` in one
    select and one product): only ``z c`` can be infinite (``z = +-inf``), and
    ``multiply_no_nan`` makes it 0 where its coefficient is. ``unit``: ``pos +
    neg`` is 1 (no ``pos_weight``), so ``l`` is not multiplied. ``exp(-|z|)``
    is written exactly as the backward pass writes it (:func:`_neg_abs`), so
    that XLA computes it once for both passes, as ``tf.nn``'s program does:
    under ``jit_compile`` the step then makes the passes over the logits that
    ``tf.nn``'s makes, with fewer operations per element.
    """
    l1 = tf.math.log1p(tf.exp(_neg_abs(zc)))
    lin = tf.math.multiply_no_nan(zc, tf.where(zc >= 0, neg, -pos))
    return (l1 if unit else (pos + neg) * l1) + lin


def _sigmoid_grad(zc, pos, neg):
    """``neg σ(z) - pos σ(-z)`` without cancellation: with ``e = exp(-|z|)`` and
    ``q = 1 / (1 + e)``, ``q (neg - pos e)`` for ``z >= 0`` and ``q (neg e - pos)``
    below (not ``σ(z)(pos + neg) - pos``, which loses the gradient ``-pos e^-z``
    of a confident correct positive once ``σ(z)`` rounds to 1)."""
    e = tf.exp(_neg_abs(zc))
    q = 1.0 / (1.0 + e)
    return q * tf.where(zc >= 0, neg - pos * e, neg * e - pos)


def _softplus_pair(zc):
    """``(softplus(z), softplus(-z))``: ``max(+-z, 0) + log1p(exp(-|z|))``, one ``exp`` and one
    ``log1p`` (written as the loss writes them, so XLA shares them with it)."""
    l1 = tf.math.log1p(tf.exp(_neg_abs(zc)))
    return l1 + tf.maximum(zc, 0.0), l1 + tf.maximum(-zc, 0.0)


def _safe(w, v):
    """``v``, 0 where ``w == 0`` and ``v`` is infinite (``w * _safe(w, v)`` is ``safe_product``)."""
    return tf.where((w == 0) & tf.math.is_inf(v), tf.zeros_like(v), v)


def sigmoid_loss(call):
    """Per element ``pos softplus(-z) + neg softplus(z)``, ``pos = pw y'``, ``neg = 1 - y'``.

    ``y' = (1 - s) y + s / 2``. The forward pass computes ``exp(-|z|)`` and
    its ``log1p`` once per element (both softplus terms share them); the
    backward pass recomputes ``e = exp(-|z|)`` from the logits (nothing of the
    logits' size is saved besides the inputs; under ``jit_compile`` XLA sees
    the same expression in both passes and computes it once, as for
    ``tf.nn``'s composition) and forms ``g (neg σ(z) - pos σ(-z))`` in one
    expression without cancellation (:func:`_sigmoid_grad`). The plain mean
    or sum adds up the rows by ``xp.row_sum`` first: on the CPU, XLA fuses
    the elementwise loss into that product instead of writing it out, and
    the product's float32 sum is the more accurate one (at ``[4096, 32768]``
    a relative error of 4e-9 against float64, where ``reduce_sum`` over all
    entries had 4e-4). Measured under ``jit_compile`` at ``[4096, 32768]``,
    fwd+bwd with the whole gradient returned, in one process: 0.93x
    ``tf.nn.sigmoid_cross_entropy_with_logits``'s time (1.01x with
    ``reduce_sum``). Peak memory: the same as ``tf.nn``'s but for the
    product's ``[C]`` vector of ones (XLA's buffer assignment, tested).
    Where a coefficient is 0 and its softplus infinite (``-inf`` logit with
    label 0, ``+inf`` with label 1) the term is 0 in the value and in every
    gradient, as ``reference.safe_product`` makes it.

    ``pos`` and ``neg`` are built outside the custom gradient and are inputs
    of it (their gradients: ``g softplus(-z)`` and ``g softplus(z)``, guarded
    alike), so TensorFlow's autodiff takes the gradients on to the labels
    and ``pos_weight`` (a ``GradientTape`` may watch them: the record always
    says the labels may need one); under ``tf.function`` / XLA the unused
    ones are pruned. The backward pass is plain TensorFlow on the logits and
    those inputs, so its own autodiff gives exact second derivatives.
    Declines the focal factor and ``focal_alpha`` (the reference runs).
    """
    if call.gamma != 0.0 or call.alpha is not None:
        return None
    z, y, pw, keep, s, cdt = call.z, call.labels, call.pw, call.keep, call.s, call.cdt
    if tuple(y.shape) != tuple(z.shape):
        return None
    if keep is not None:
        z = tf.where(keep, z, tf.zeros_like(z))
        y = tf.where(keep, y, tf.zeros_like(y))
    if s != 0.0:
        y = (1.0 - s) * y + 0.5 * s
    pos = y if pw is None else pw * y
    neg = 1.0 - y
    unit = pw is None  # pos + neg = 1
    red = plain_reduction(call)

    @tf.custom_gradient
    def f(z, pos, neg):
        loss = _sigmoid_terms(tf.cast(z, cdt), pos, neg, unit)
        if red is not None:
            loss = tf.reduce_sum(xp.row_sum(loss) if loss.shape.rank else loss)
            if red == "mean":
                loss = loss / tf.cast(tf.size(z), cdt)

        def grad(g):
            g = tf.cast(g, cdt)
            if red == "mean":
                g = g / tf.cast(tf.size(z), cdt)
            zc = tf.cast(z, cdt)
            dz = tf.cast(g * _sigmoid_grad(zc, pos, neg), z.dtype)
            sp, sp_neg = _softplus_pair(zc)
            return dz, g * _safe(pos, sp_neg), g * _safe(neg, sp)

        return loss, grad

    out = f(z, pos, neg)
    return out if red is None else Reduced(out)
