"""sparse_softmax_cross_entropy: values and gradients against the float64 formula."""

from __future__ import annotations

import numpy as np
import pytest

import xent
from tests._oracle import check_value, on_backend, REDUCTIONS, fd_grad, one_hot, sparse_ref

B, C = 4, 5
CW = [0.5, 1.0, 2.0, 0.0, 1.5]
LABELS = np.array([0, 2, -100, 4])
OPTIONS = {
    "plain": {},
    "class_weight": {"class_weight": CW},
    "label_smoothing": {"label_smoothing": 0.2},
    "ignore_index": {"ignore_index": -100},
    "focal": {"focal_gamma": 2.0},
    "z_loss": {"z_loss": 0.01},
    "sample_weight": {"sample_weight": [1.0, 0.0, 2.5, 0.5]},
    "everything": {"class_weight": CW, "label_smoothing": 0.1, "focal_gamma": 1.5,
                   "z_loss": 1e-3, "ignore_index": -100,
                   "sample_weight": [1.0, 0.0, 2.5, 0.5]},
}


def _labels(opts):
    return LABELS if "ignore_index" in opts else np.where(LABELS < 0, 2, LABELS)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_value_matches_float64_formula(be, rng, name, reduction):
    z = rng.normal(size=(B, C)) * 2
    opts = OPTIONS[name]
    t = _labels(opts)
    check_value(be, xent.sparse_softmax_cross_entropy, sparse_ref, z, t, reduction, opts)


@pytest.mark.parametrize("reduction", ["sum", "mean", "sum_over_batch_size"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradient_matches_finite_differences(gbe, rng, name, reduction):
    z = rng.normal(size=(B, C)) * 2
    opts = OPTIONS[name]
    t = _labels(opts)
    gz, = gbe.grad(lambda a: xent.sparse_softmax_cross_entropy(a, gbe.asarray(t),
                                                               reduction=reduction,
                                                               **on_backend(gbe, opts)),
                   gbe.asarray(z))
    want = fd_grad(lambda a: sparse_ref(a, t, reduction=reduction, **opts), z)
    np.testing.assert_allclose(gz, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_equals_dense_with_one_hot_labels(gbe, rng, name):
    """Same value and logits gradient as softmax_cross_entropy on the one-hot labels."""
    z = rng.normal(size=(B, C))
    opts = dict(OPTIONS[name])
    t = _labels(opts)
    ignore = opts.pop("ignore_index", None)
    y = one_hot(t, C, ignore_index=ignore)
    sw = np.broadcast_to(np.asarray(opts.pop("sample_weight", 1.0)), (B,)).copy()
    if ignore is not None:
        sw = np.where(t == ignore, 0.0, sw)
    for reduction in ("none", "mean", "sum_by_nonzero_weights"):
        if ignore is not None and reduction != "none":
            continue  # sum_over_batch_size etc. count ignored rows differently by design
        sparse = lambda a: xent.sparse_softmax_cross_entropy(  # noqa: E731
            a, gbe.asarray(t), reduction=reduction, ignore_index=ignore,
            sample_weight=gbe.asarray(sw), **on_backend(gbe, opts))
        dense = lambda a: xent.softmax_cross_entropy(  # noqa: E731
            a, gbe.asarray(y), reduction=reduction, sample_weight=gbe.asarray(sw),
            **on_backend(gbe, opts))
        np.testing.assert_allclose(gbe.to_numpy(sparse(gbe.asarray(z))),
                                   gbe.to_numpy(dense(gbe.asarray(z))), rtol=1e-12, atol=1e-15)
        if reduction != "none":
            np.testing.assert_allclose(gbe.grad(sparse, gbe.asarray(z))[0],
                                       gbe.grad(dense, gbe.asarray(z))[0], rtol=1e-12,
                                       atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_last_class_axis(be, rng, reduction):
    z = rng.normal(size=(2, C, 3))
    t = rng.integers(0, C, (2, 3))
    t[0, 1] = -1
    sw = rng.random((2, 1)) + 0.5
    kw = dict(class_weight=CW, ignore_index=-1, label_smoothing=0.1, reduction=reduction)
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), axis=1,
                                            sample_weight=be.asarray(sw), **kw)
    want = sparse_ref(z, t, axis=1, sample_weight=sw, **kw)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64"])
def test_any_integer_label_dtype(be, rng, dtype):
    z = rng.normal(size=(B, C))
    t = np.array([0, 1, 4, 3])
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t.astype(dtype)),
                                            reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), sparse_ref(z, t, reduction="none"), rtol=1e-12)


def test_ignore_index_inside_class_range(be, rng):
    # ignore_index may be a real class id (e.g. a padding token 0): those rows vanish.
    z = rng.normal(size=(B, C))
    t = np.array([0, 1, 0, 4])
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), ignore_index=0)
    np.testing.assert_allclose(be.to_numpy(got), sparse_ref(z, t, ignore_index=0), rtol=1e-12)
    assert abs(float(be.to_numpy(got)) - sparse_ref(z, t)) > 1e-3
