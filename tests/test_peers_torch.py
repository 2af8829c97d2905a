"""PyTorch as a peer: F.cross_entropy and F.binary_cross_entropy_with_logits.

Values on every backend; gradients (torch autograd and jax.grad) against torch
autograd of the peer. Where xent deliberately differs, a test pins the difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent

B, C = 4, 5
CW = np.array([0.5, 2.0, 1.0, 3.0, 0.0])


def peer(fn, *arrays):
    """``fn`` on float64 torch tensors: its value and its gradients w.r.t. every float array."""
    ts = [torch.tensor(a, requires_grad=np.asarray(a).dtype.kind == "f") for a in arrays]
    out = fn(*ts)
    total = out.sum()
    grads = torch.autograd.grad(total, [t for t in ts if t.requires_grad], allow_unused=True)
    return out.detach().numpy(), [None if g is None else g.numpy() for g in grads]


def _check(be, fn_x, fn_t, arrays, reduction, rtol=1e-12):
    """xent ``fn_x(*be arrays)`` against torch ``fn_t``: value, and logits gradient."""
    want, wgrads = peer(fn_t, *arrays)
    got = fn_x(*[be.asarray(a) for a in arrays])
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=rtol, atol=1e-15)
    if be.has_grad:
        g, = be.grad(lambda a, *rest: be.sum(fn_x(a, *rest)),
                     *[be.asarray(a) for a in arrays])
        np.testing.assert_allclose(g, wgrads[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", [
    {},
    {"weight": True},
    {"ignore_index": -100},
    {"label_smoothing": 0.15},
    {"weight": True, "ignore_index": 2, "label_smoothing": 0.1},
], ids=["plain", "weight", "ignore", "smoothing", "all"])
def test_f_cross_entropy_class_indices(be, rng, reduction, opts):
    z = rng.normal(size=(B, C)) * 2
    t = rng.integers(0, C, B)
    t[1] = opts.get("ignore_index", t[1])
    ignore = opts.get("ignore_index")
    s = opts.get("label_smoothing", 0.0)
    w = CW if opts.get("weight") else None
    _check(be,
           lambda a, b: xent.sparse_softmax_cross_entropy(
               a, b, class_weight=None if w is None else be.asarray(w), ignore_index=ignore,
               label_smoothing=s, reduction=reduction),
           lambda a, b: F.cross_entropy(
               a, b, weight=None if w is None else torch.tensor(w),
               ignore_index=-100 if ignore is None else ignore, label_smoothing=s,
               reduction=reduction),
           (z, t), reduction)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_f_cross_entropy_k_dimensional(be, rng, reduction):
    z = rng.normal(size=(2, C, 3))
    t = rng.integers(0, C, (2, 3))
    t[0, 0] = -100
    _check(be,
           lambda a, b: xent.sparse_softmax_cross_entropy(a, b, axis=1, ignore_index=-100,
                                                          class_weight=be.asarray(CW),
                                                          reduction=reduction),
           lambda a, b: F.cross_entropy(a, b, weight=torch.tensor(CW), reduction=reduction),
           (z, t), reduction)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_f_cross_entropy_probability_targets(be, rng, reduction, smoothing):
    z = rng.normal(size=(B, C))
    y = rng.random((B, C))
    y /= y.sum(1, keepdims=True)
    _check(be,
           lambda a, b: xent.softmax_cross_entropy(a, b, label_smoothing=smoothing,
                                                   reduction=reduction),
           lambda a, b: F.cross_entropy(a, b, label_smoothing=smoothing, reduction=reduction),
           (z, y), reduction)
    if be.has_grad:  # label gradients too
        _, (_, wy) = peer(lambda a, b: F.cross_entropy(a, b, label_smoothing=smoothing,
                                                       reduction=reduction), z, y)
        _, gy = be.grad(lambda a, b: be.sum(xent.softmax_cross_entropy(
            a, b, label_smoothing=smoothing, reduction=reduction)),
            be.asarray(z), be.asarray(y), argnums=(0, 1))
        np.testing.assert_allclose(gy, wy, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_class_weights_with_probability_targets_mean_differs_deliberately(be, rng, smoothing):
    """torch's "mean" with probability targets and class weights divides by the
    batch size; xent divides by sum_i sum_c w_c y_ic, so that one-hot and integer
    labels agree. "none" and "sum" are identical."""
    z = rng.normal(size=(B, C))
    y = rng.random((B, C))
    y /= y.sum(1, keepdims=True)
    wt = torch.tensor(CW)
    for reduction in ("none", "sum"):
        _check(be,
               lambda a, b: xent.softmax_cross_entropy(a, b, class_weight=be.asarray(CW),
                                                       label_smoothing=smoothing,
                                                       reduction=reduction),
               lambda a, b: F.cross_entropy(a, b, weight=wt, label_smoothing=smoothing,
                                            reduction=reduction),
               (z, y), reduction)
    torch_sum = F.cross_entropy(torch.tensor(z), torch.tensor(y), weight=wt,
                                label_smoothing=smoothing, reduction="sum").item()
    torch_mean = F.cross_entropy(torch.tensor(z), torch.tensor(y), weight=wt,
                                 label_smoothing=smoothing, reduction="mean").item()
    np.testing.assert_allclose(torch_mean, torch_sum / B, rtol=1e-12)
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), class_weight=be.asarray(CW),
                                     label_smoothing=smoothing)
    np.testing.assert_allclose(be.to_numpy(got), torch_sum / (y @ CW).sum(), rtol=1e-12)
    # with one-hot targets xent's mean is torch's mean for the integer labels
    t = rng.integers(0, C, B)
    onehot = xent.softmax_cross_entropy(be.asarray(z), be.asarray(np.eye(C)[t]),
                                        class_weight=be.asarray(CW), label_smoothing=smoothing)
    want = F.cross_entropy(torch.tensor(z), torch.tensor(t), weight=wt,
                           label_smoothing=smoothing).item()
    np.testing.assert_allclose(be.to_numpy(onehot), want, rtol=1e-12)


def test_all_ignored_mean_is_zero_where_torch_gives_nan(be, rng):
    """Deliberate: torch's mean over an all-ignored batch is 0/0 = NaN; xent's is 0."""
    z = rng.normal(size=(4, C))
    t = np.full(4, -100)
    torch_mean = F.cross_entropy(torch.tensor(z), torch.tensor(t), ignore_index=-100)
    assert torch.isnan(torch_mean)
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), ignore_index=-100)
    assert float(be.to_numpy(got)) == 0.0


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", [{}, {"weight": "rows"}, {"weight": "full"},
                                  {"pos_weight": True}, {"weight": "rows", "pos_weight": True}],
                         ids=["plain", "weight_rows", "weight_full", "pos_weight", "both"])
def test_f_binary_cross_entropy_with_logits(be, rng, reduction, opts):
    """torch's ``weight`` is xent's ``sample_weight``; torch's "mean" divides by the
    number of elements whatever the weights, which is xent's "sum_over_batch_size"."""
    z = rng.normal(size=(B, C)) * 3
    z[0] = [1e4, -1e4, 50.0, -50.0, 0.0]
    y = rng.random((B, C))
    w = {"rows": rng.random((B, 1)), "full": rng.random((B, C))}.get(opts.get("weight"))
    pw = np.array([0.5, 1.0, 2.0, 4.0, 0.0]) if opts.get("pos_weight") else None
    xred = "sum_over_batch_size" if reduction == "mean" else reduction

    def fx(a, b):
        return xent.sigmoid_cross_entropy(
            a, b, sample_weight=None if w is None else be.asarray(w),
            pos_weight=None if pw is None else be.asarray(pw), reduction=xred)

    def ft(a, b):
        return F.binary_cross_entropy_with_logits(
            a, b, weight=None if w is None else torch.tensor(w),
            pos_weight=None if pw is None else torch.tensor(pw), reduction=reduction)

    _check(be, fx, ft, (z, y), reduction)
    if be.has_grad:
        _, (_, wy) = peer(ft, z, y)
        _, gy = be.grad(lambda a, b: be.sum(fx(a, b)), be.asarray(z), be.asarray(y),
                        argnums=(0, 1))
        np.testing.assert_allclose(gy, wy, rtol=1e-10, atol=1e-14)


def test_bce_mean_with_weights_differs_from_xent_mean_deliberately(be, rng):
    """xent's "mean" is the weighted mean (sum w l / sum w, TF's MEAN); torch's BCE
    "mean" is sum w l / numel."""
    z = rng.normal(size=(B, C))
    y = rng.random((B, C))
    w = rng.random((B, 1))
    t_sum = F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y),
                                               weight=torch.tensor(w), reduction="sum").item()
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), sample_weight=be.asarray(w))
    np.testing.assert_allclose(be.to_numpy(got), t_sum / (w.sum() * C), rtol=1e-12)


def test_f_binary_cross_entropy_on_probabilities_is_log_loss_without_epsilon(be, rng):
    p = rng.uniform(0.01, 0.99, (B, C))
    y = rng.random((B, C))
    for reduction in ("none", "sum", "mean"):
        want = F.binary_cross_entropy(torch.tensor(p), torch.tensor(y), reduction=reduction)
        got = xent.log_loss(be.asarray(p), be.asarray(y), epsilon=0.0, reduction=reduction)
        np.testing.assert_allclose(be.to_numpy(got), want.numpy(), rtol=1e-12)
