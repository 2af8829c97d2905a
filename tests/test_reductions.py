"""The five reductions on every loss: denominators, zero denominators, empty batches."""

from __future__ import annotations

import numpy as np
import pytest

import xent
from tests._oracle import REDUCTIONS, log_loss_ref, sigmoid_ref, softmax_ref, sparse_ref

C = 5


def _call(be, loss, z, y, **kw):
    """Call ``loss`` on ``be``'s arrays; the float64 reference for the same call."""
    fn = getattr(xent, loss)
    conv = {k: (be.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    got = fn(be.asarray(z), be.asarray(y), **conv)
    ref = {"softmax_cross_entropy": softmax_ref, "sparse_softmax_cross_entropy": sparse_ref,
           "sigmoid_cross_entropy": sigmoid_ref, "log_loss": log_loss_ref}[loss]
    return got, ref(z, y, **kw)


def _data(rng, loss, n):
    if loss == "softmax_cross_entropy":
        return rng.normal(size=(n, C)), np.eye(C)[rng.integers(0, C, n)]
    if loss == "sparse_softmax_cross_entropy":
        return rng.normal(size=(n, C)), rng.integers(0, C, n)
    if loss == "sigmoid_cross_entropy":
        return rng.normal(size=(n, C)), rng.random((n, C))
    return rng.uniform(0.05, 0.95, (n, C)), rng.random((n, C))


LOSSES = ["softmax_cross_entropy", "sparse_softmax_cross_entropy", "sigmoid_cross_entropy",
          "log_loss"]


def test_denominators_by_hand(be):
    # Per-element losses l = [a, b, c, d], sample weights [2, 0, 1, ignored],
    # class weights on the labels [1, 1, 3, 1]: each reduction's denominator by hand.
    z = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5], [3.0, 1.0]])
    t = np.array([0, 0, 1, -1])
    l = np.log(np.exp(z).sum(1)) - z[np.arange(4), np.where(t < 0, 0, t)]
    sw = np.array([2.0, 0.0, 1.0, 5.0])
    cw = np.array([1.0, 3.0])
    num = 2 * l[0] * 1 + 0 + 1 * l[2] * 3
    expect = {"none": [2 * l[0], 0.0, 3 * l[2], 0.0], "sum": num,
              "mean": num / (2 * 1 + 0 + 1 * 3),  # sum of sw * cw[t] over non-ignored
              "sum_over_batch_size": num / 3,  # the zero-weight element counts, ignored not
              "sum_by_nonzero_weights": num / 2}
    for reduction, want in expect.items():
        got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), ignore_index=-1,
                                                sample_weight=be.asarray(sw),
                                                class_weight=be.asarray(cw), reduction=reduction)
        np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12, err_msg=reduction)


def test_zero_class_weight_is_not_a_nonzero_weight(be):
    z = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    t = np.array([0, 1, 1])
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), class_weight=[1.0, 0.0],
                                            reduction="sum_by_nonzero_weights")
    want = np.log(np.exp(z[0]).sum()) - z[0, 0]
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_empty_batch_is_defined(be, rng, loss, reduction):
    z, y = _data(rng, loss, 0)
    kw = {"reduction": reduction}
    if loss == "sparse_softmax_cross_entropy":
        kw["class_weight"] = np.ones(C)
    got, want = _call(be, loss, z, y, **kw)
    expected_shape = (0,) if reduction == "none" and loss.endswith("softmax_cross_entropy") else (
        (0, C) if reduction == "none" else ())
    assert tuple(got.shape) == expected_shape
    np.testing.assert_array_equal(be.to_numpy(got), want)
    assert not np.isnan(be.to_numpy(got)).any()


@pytest.mark.parametrize("loss", LOSSES)
def test_empty_batch_gradient_is_empty(gbe, rng, loss):
    z, y = _data(rng, loss, 0)
    for reduction in ("sum", "mean"):
        g, = gbe.grad(lambda a: getattr(xent, loss)(a, gbe.asarray(y), reduction=reduction),
                      gbe.asarray(z))
        assert g.shape == z.shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_mean_is_zero_with_zero_gradients(gbe, rng, reduction):
    z = rng.normal(size=(4, C))
    t = np.full(4, -100)
    fn = lambda a: xent.sparse_softmax_cross_entropy(  # noqa: E731
        a, gbe.asarray(t), ignore_index=-100, class_weight=gbe.asarray(np.ones(C)),
        reduction=reduction)
    out = fn(gbe.asarray(z))
    np.testing.assert_array_equal(gbe.to_numpy(out), np.zeros(np.shape(out)))
    if reduction != "none":
        g, = gbe.grad(fn, gbe.asarray(z))
        np.testing.assert_array_equal(g, np.zeros_like(z))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum_by_nonzero_weights"])
def test_all_zero_sample_weights_give_zero_and_zero_gradients(gbe, rng, loss, reduction):
    z, y = _data(rng, loss, 4)
    sw = np.zeros(4) if loss.startswith(("softmax", "sparse")) else np.zeros((4, C))

    def fn(a):
        return getattr(xent, loss)(a, gbe.asarray(y), sample_weight=gbe.asarray(sw),
                                   reduction=reduction)

    assert float(gbe.to_numpy(fn(gbe.asarray(z)))) == 0.0
    g, = gbe.grad(fn, gbe.asarray(z))
    np.testing.assert_array_equal(g, np.zeros_like(z))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_every_reduction_with_sample_weight(be, rng, loss, reduction):
    z, y = _data(rng, loss, 4)
    sw = np.array([1.0, 0.0, 2.0, 0.5])
    if not loss.startswith(("softmax", "sparse")):
        sw = sw[:, None]
    got, want = _call(be, loss, z, y, sample_weight=sw, reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_reduced_result_has_input_dtype_and_is_scalar(be, rng, loss):
    z, y = _data(rng, loss, 4)
    for dtype in ("float32", "float64"):
        out = getattr(xent, loss)(be.asarray(z, dtype), be.asarray(y))
        assert tuple(out.shape) == ()
        assert out.dtype == be.dtype(dtype)
