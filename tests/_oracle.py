"""Float64 reference formulas, written independently of xent, for the tests.

Everything here is plain NumPy in float64, straight from the formulas of
``shared/API.md``; gradients come from central finite differences of these
functions. Nothing here imports xent.
"""

from __future__ import annotations

import numpy as np

REDUCTIONS = ("none", "sum", "mean", "sum_over_batch_size", "sum_by_nonzero_weights")


def reduce_ref(loss, reduction, sw=None, norm=None, valid=None):
    """The five reductions of the contract.

    ``loss``: per-element loss; ``sw``: sample weight (0 on ignored elements);
    ``norm``: n_i (defaults to sw, or 1); ``valid``: non-ignored mask.
    """
    loss = np.asarray(loss, dtype=np.float64)
    sw = np.ones_like(loss) if sw is None else np.broadcast_to(np.asarray(sw, np.float64), loss.shape)
    norm = sw if norm is None else np.broadcast_to(np.asarray(norm, np.float64), loss.shape)
    valid = np.ones(loss.shape, bool) if valid is None else np.asarray(valid, bool)
    weighted = np.where(sw == 0, 0.0, sw * loss)  # 0 * NaN = 0: ignored elements
    total = weighted.sum()
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return total
    if reduction == "mean":
        den = norm.sum()
    elif reduction == "sum_over_batch_size":
        den = valid.sum()
    elif reduction == "sum_by_nonzero_weights":
        den = (norm != 0).sum()
    else:
        raise ValueError(reduction)
    return 0.0 if den == 0 else total / den


def _log_softmax(z):
    """(log p, logsumexp(z)), with the row maximum subtracted before anything else."""
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sum = np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))
    return (z - m) - log_sum, log_sum + m


def softmax_elements(z, y, *, axis=-1, class_weight=None, label_smoothing=0.0,
                     focal_gamma=0.0, z_loss=0.0):
    """Per-element softmax loss l and the class-weight part of n (sum_c w_c y_c)."""
    z = np.moveaxis(np.asarray(z, np.float64), axis, -1)
    y = np.moveaxis(np.asarray(y, np.float64), axis, -1)
    C = z.shape[-1]
    logp, lse = _log_softmax(z)
    p = np.exp(logp)
    ys = (1 - label_smoothing) * y + label_smoothing / C
    cw = np.ones(C) if class_weight is None else np.asarray(class_weight, np.float64)
    w = ys * cw * (1 - p) ** focal_gamma
    with np.errstate(invalid="ignore"):
        term = np.where(w == 0, 0.0, w * logp)
    loss = -term.sum(-1) + z_loss * lse[..., 0] ** 2
    cwn = (y * cw).sum(-1)
    return loss, cwn


def softmax_ref(z, y, *, axis=-1, class_weight=None, label_smoothing=0.0, focal_gamma=0.0,
                z_loss=0.0, sample_weight=None, reduction="mean"):
    loss, cwn = softmax_elements(z, y, axis=axis, class_weight=class_weight,
                                 label_smoothing=label_smoothing, focal_gamma=focal_gamma,
                                 z_loss=z_loss)
    sw = np.ones(loss.shape) if sample_weight is None else np.broadcast_to(
        np.asarray(sample_weight, np.float64), loss.shape)
    norm = sw * cwn if class_weight is not None else sw
    return reduce_ref(loss, reduction, sw=sw, norm=norm)


def one_hot(t, C, axis=-1, ignore_index=None):
    """One-hot of integer labels, class axis at ``axis``; ignored labels give zero rows."""
    t = np.asarray(t)
    valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    oh = (np.where(valid, t, 0)[..., None] == np.arange(C)).astype(np.float64)
    oh = oh * valid[..., None]
    return np.moveaxis(oh, -1, axis)


def sparse_ref(z, t, *, axis=-1, class_weight=None, label_smoothing=0.0, ignore_index=None,
               focal_gamma=0.0, z_loss=0.0, sample_weight=None, reduction="mean"):
    z = np.asarray(z, np.float64)
    C = z.shape[axis]
    t = np.asarray(t)
    valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    y = one_hot(t, C, axis, ignore_index)
    zz = np.where(np.expand_dims(valid, axis), z, 0.0)  # ignored rows may hold NaN
    loss, cwn = softmax_elements(zz, y, axis=axis, class_weight=class_weight,
                                 label_smoothing=label_smoothing, focal_gamma=focal_gamma,
                                 z_loss=z_loss)
    sw = np.ones(t.shape) if sample_weight is None else np.broadcast_to(
        np.asarray(sample_weight, np.float64), t.shape)
    sw = np.where(valid, sw, 0.0)
    norm = sw * cwn if class_weight is not None else sw
    return reduce_ref(loss, reduction, sw=sw, norm=norm, valid=valid)


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def sigmoid_elements(z, y, *, pos_weight=None, label_smoothing=0.0, focal_gamma=0.0):
    z = np.asarray(z, np.float64)
    y = np.asarray(y, np.float64)
    ys = (1 - label_smoothing) * y + label_smoothing / 2
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    with np.errstate(invalid="ignore"):
        pos = np.where(ys == 0, 0.0, pw * ys * _log_sigmoid(z))
        neg = np.where(ys == 1, 0.0, (1 - ys) * _log_sigmoid(-z))
    sig = 0.5 * (1 + np.tanh(z / 2))  # no overflow at +-1e4
    pt = ys * sig + (1 - ys) * (1 - sig)
    return -(pos + neg) * (1 - pt) ** focal_gamma


def sigmoid_ref(z, y, *, pos_weight=None, label_smoothing=0.0, focal_gamma=0.0,
                sample_weight=None, reduction="mean"):
    loss = sigmoid_elements(z, y, pos_weight=pos_weight, label_smoothing=label_smoothing,
                            focal_gamma=focal_gamma)
    return reduce_ref(loss, reduction, sw=sample_weight)


def log_loss_ref(p, y, *, epsilon=1e-7, sample_weight=None, reduction="mean"):
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    loss = -(y * np.log(p + epsilon) + (1 - y) * np.log(1 - p + epsilon))
    return reduce_ref(loss, reduction, sw=sample_weight)


def fd_grad(f, x, h=1e-6):
    """Central finite-difference gradient of the scalar ``f`` at ``x`` (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f(x)
        flat[i] = old - h
        down = f(x)
        flat[i] = old
        gf[i] = (up - down) / (2 * h)
    return g


def random_probs(rng, shape, axis=-1):
    """Soft labels that sum to 1 along ``axis``."""
    a = rng.random(shape) + 0.05
    return a / a.sum(axis=axis, keepdims=True)


def on_backend(be, options):
    """``options`` with array-like values (lists, NumPy arrays) as ``be``'s arrays.

    Python scalars stay as they are; the float64 references take the raw lists.
    """
    return {k: be.asarray(np.asarray(v)) if isinstance(v, (list, np.ndarray)) else v
            for k, v in options.items()}


def check_value(be, fn, ref, z, y, reduction, options, rtol=1e-10):
    """``fn`` on ``be``'s arrays equals the float64 ``ref``: shape and value."""
    got = fn(be.asarray(z), be.asarray(y), reduction=reduction, **on_backend(be, options))
    want = ref(z, y, reduction=reduction, **options)
    assert tuple(got.shape) == np.shape(want)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=rtol, atol=1e-12)
