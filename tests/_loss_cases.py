"""Every loss with a few option sets, as torch callables (shared by the host-sync,
compile and higher-order tests). Each case is ``(name, make)``; ``make()``
returns ``(fn, args)`` where ``fn(*args)`` is the loss and ``args[0]`` the
float tensor to differentiate (logits, probabilities or inputs)."""

from __future__ import annotations

import numpy as np

import xent
from xent import samplers

N, C, D = 6, 5, 4


def _t(a, dtype=None):
    import torch

    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _data():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((N, C)) * 2
    labels = rng.integers(0, C, N)
    labels[1] = -100
    y = rng.random((N, C))
    y /= y.sum(1, keepdims=True)
    yb = (rng.random((N, C)) < 0.4).astype(np.float64)
    sw = rng.random(N) + 0.5
    sw[2] = 0.0
    cw = rng.random(C) + 0.5
    return z, labels, y, yb, sw, cw


def cases(reductions=("mean", "sum", "none", "sum_over_batch_size", "sum_by_nonzero_weights")):
    import torch

    z, labels, y, yb, sw, cw = _data()
    f32 = torch.float32
    out = []

    def add(name, fn, *args):
        out.append((name, fn, args))

    lab = np.where(labels < 0, 0, labels)
    for red in reductions:
        add(f"sparse-{red}", lambda a, t, red=red: xent.sparse_softmax_cross_entropy(
            a, t, reduction=red), _t(z, f32), _t(lab))
    add("sparse-ignore-cw-sw", lambda a, t, cw, sw: xent.sparse_softmax_cross_entropy(
        a, t, ignore_index=-100, class_weight=cw, sample_weight=sw), _t(z, f32), _t(labels),
        _t(cw, f32), _t(sw, f32))
    add("sparse-smooth-zloss", lambda a, t: xent.sparse_softmax_cross_entropy(
        a, t, label_smoothing=0.1, z_loss=1e-2, ignore_index=-100), _t(z, f32), _t(labels))
    add("sparse-focal", lambda a, t: xent.sparse_softmax_cross_entropy(
        a, t, focal_gamma=2.0), _t(z, f32), _t(lab))
    for red in ("mean", "sum_by_nonzero_weights"):
        add(f"softmax-{red}", lambda a, y, red=red: xent.softmax_cross_entropy(
            a, y, reduction=red), _t(z, f32), _t(y, f32))
    add("softmax-cw-sw-smooth", lambda a, y, cw, sw: xent.softmax_cross_entropy(
        a, y, class_weight=cw, sample_weight=sw, label_smoothing=0.1, z_loss=1e-2),
        _t(z, f32), _t(y, f32), _t(cw, f32), _t(sw, f32))
    for red in ("mean", "sum", "none"):
        add(f"sigmoid-{red}", lambda a, y, red=red: xent.sigmoid_cross_entropy(
            a, y, reduction=red), _t(z, f32), _t(yb, f32))
    add("sigmoid-pw-sw", lambda a, y, pw, sw: xent.sigmoid_cross_entropy(
        a, y, pos_weight=pw, sample_weight=sw[:, None], label_smoothing=0.1),
        _t(z, f32), _t(yb, f32), _t(cw, f32), _t(sw, f32))
    add("sigmoid-focal", lambda a, y: xent.sigmoid_cross_entropy(a, y, focal_gamma=2.0),
        _t(z, f32), _t(yb, f32))
    p = 1 / (1 + np.exp(-z))
    add("log_loss", lambda p, y: xent.log_loss(p, y), _t(p, f32), _t(yb, f32))
    add("log_loss-sw", lambda p, y, sw: xent.log_loss(p, y, sample_weight=sw[:, None],
                                                      reduction="sum"),
        _t(p, f32), _t(yb, f32), _t(sw, f32))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D))
    W = rng.standard_normal((C, D))
    add("linear", lambda x, W, t: xent.linear_cross_entropy(x, W, t), _t(x, f32), _t(W, f32),
        _t(lab))
    add("linear-ignore-cw-smooth", lambda x, W, t, cw: xent.linear_cross_entropy(
        x, W, t, ignore_index=-100, class_weight=cw, label_smoothing=0.1, z_loss=1e-2,
        reduction="sum"), _t(x, f32), _t(W, f32), _t(labels), _t(cw, f32))
    V = 12
    Wv = rng.standard_normal((V, D))
    tv = rng.integers(0, V, N)
    sample = samplers.LogUniformSampler(V).sample(tv[:, None], 4, rng=0)
    sample = tuple(_t(a) if a.dtype.kind in "iu" else _t(a, f32) for a in
                   (np.asarray(sample.ids), np.asarray(sample.true_expected_count),
                    np.asarray(sample.sampled_expected_count)))
    add("sampled_softmax", lambda x, W, t, *smp: xent.sampled_softmax_loss(
        x, W, t, num_sampled=4, sampled=smp), _t(x, f32), _t(Wv, f32), _t(tv), *sample)
    add("sampled_softmax-sw", lambda x, W, t, sw, *smp: xent.sampled_softmax_loss(
        x, W, t, num_sampled=4, sampled=smp, sample_weight=sw, reduction="sum"),
        _t(x, f32), _t(Wv, f32), _t(tv), _t(sw, f32), *sample)
    add("nce", lambda x, W, t, *smp: xent.nce_loss(x, W, t, num_sampled=4, sampled=smp),
        _t(x, f32), _t(Wv, f32), _t(tv), *sample)
    return out


def grad_args(name, args):
    """Copies of a case's arrays, with the logits (or inputs and classifier) requiring grad."""
    args = [a.clone() for a in args]
    args[0].requires_grad_(True)
    if name.startswith(("linear", "sampled", "nce")):
        args[1].requires_grad_(True)
    return args
