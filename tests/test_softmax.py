"""softmax_cross_entropy: values and gradients against the float64 formula, every option."""

from __future__ import annotations

import numpy as np
import pytest

import xent
from tests._oracle import check_value, on_backend, REDUCTIONS, fd_grad, random_probs, softmax_ref

B, C = 4, 5
CW = [0.5, 1.0, 2.0, 0.0, 1.5]
OPTIONS = {
    "plain": {},
    "class_weight": {"class_weight": CW},
    "label_smoothing": {"label_smoothing": 0.2},
    "focal": {"focal_gamma": 2.0},
    "focal_fractional": {"focal_gamma": 0.5},
    "z_loss": {"z_loss": 0.01},
    "sample_weight": {"sample_weight": [1.0, 0.0, 2.5, 0.5]},
    "scalar_sample_weight": {"sample_weight": 3.0},
    "everything": {"class_weight": CW, "label_smoothing": 0.1, "focal_gamma": 1.5,
                   "z_loss": 1e-3, "sample_weight": [1.0, 0.0, 2.5, 0.5]},
}


def _data(rng, soft=True):
    z = rng.normal(size=(B, C)) * 2
    y = random_probs(rng, (B, C)) if soft else np.eye(C)[rng.integers(0, C, B)]
    return z, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_value_matches_float64_formula(be, rng, name, reduction):
    z, y = _data(rng)
    opts = OPTIONS[name]
    check_value(be, xent.softmax_cross_entropy, softmax_ref, z, y, reduction, opts)


@pytest.mark.parametrize("reduction", ["sum", "mean", "sum_by_nonzero_weights"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradients_match_finite_differences(gbe, rng, name, reduction):
    z, y = _data(rng)
    opts = OPTIONS[name]
    gz, gy = gbe.grad(lambda a, b: xent.softmax_cross_entropy(a, b, reduction=reduction,
                                                              **on_backend(gbe, opts)),
                      gbe.asarray(z), gbe.asarray(y), argnums=(0, 1))
    np.testing.assert_allclose(gz, fd_grad(lambda a: softmax_ref(a, y, reduction=reduction,
                                                                 **opts), z),
                               rtol=1e-6, atol=1e-8)
    # label_gradient=True (the default): the labels get the formula's gradient,
    # including the one through the class-weighted "mean" denominator.
    np.testing.assert_allclose(gy, fd_grad(lambda b: softmax_ref(z, b, reduction=reduction,
                                                                 **opts), y),
                               rtol=1e-6, atol=1e-8)


def test_label_gradient_false_gives_zero_label_gradient(gbe, rng):
    z, y = _data(rng)
    fn = lambda a, b: xent.softmax_cross_entropy(a, b, label_gradient=False,  # noqa: E731
                                                 class_weight=gbe.asarray(np.array(CW)))
    gz, gy = gbe.grad(fn, gbe.asarray(z), gbe.asarray(y), argnums=(0, 1))
    assert gy is None or np.array_equal(gy, np.zeros_like(y))
    np.testing.assert_allclose(gz, fd_grad(lambda a: softmax_ref(a, y, class_weight=CW), z),
                               rtol=1e-6, atol=1e-8)
    gz_true, = gbe.grad(lambda a: xent.softmax_cross_entropy(a, gbe.asarray(y),
                                                             class_weight=gbe.asarray(np.array(CW))),
                        gbe.asarray(z))
    np.testing.assert_array_equal(gz, gz_true)


@pytest.mark.parametrize("sw_shape", [(2, 1), (1, 3), (2, 3), ()])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_last_class_axis_with_broadcast_sample_weight(be, rng, reduction, sw_shape):
    z = rng.normal(size=(2, C, 3))
    y = random_probs(rng, (2, C, 3), axis=1)
    sw = rng.random(sw_shape) + 0.1
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), axis=1,
                                     sample_weight=be.asarray(sw), class_weight=CW,
                                     label_smoothing=0.1, reduction=reduction)
    want = softmax_ref(z, y, axis=1, sample_weight=sw, class_weight=CW, label_smoothing=0.1,
                       reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-10, atol=1e-12)
    moved = xent.softmax_cross_entropy(be.asarray(np.moveaxis(z, 1, -1)),
                                       be.asarray(np.moveaxis(y, 1, -1)), axis=-1,
                                       sample_weight=be.asarray(sw), class_weight=CW,
                                       label_smoothing=0.1, reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(got), be.to_numpy(moved), rtol=1e-12)


def test_non_last_class_axis_gradient(gbe, rng):
    z = rng.normal(size=(2, C, 3))
    y = random_probs(rng, (2, C, 3), axis=1)
    gz, = gbe.grad(lambda a: xent.softmax_cross_entropy(a, gbe.asarray(y), axis=-2,
                                                        focal_gamma=1.0),
                   gbe.asarray(z))
    np.testing.assert_allclose(gz, fd_grad(lambda a: softmax_ref(a, y, axis=1, focal_gamma=1.0),
                                           z), rtol=1e-6, atol=1e-8)


def test_unnormalized_labels_follow_the_formula(be, rng):
    # TensorFlow's rule: rows need not sum to 1; the formula is applied as written.
    z = rng.normal(size=(B, C))
    y = rng.random((B, C)) * 2
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), softmax_ref(z, y, reduction="none"), rtol=1e-12)


def test_bool_labels_are_one_hot(be, rng):
    z = rng.normal(size=(B, C))
    y = np.eye(C, dtype=bool)[[0, 2, 4, 1]]
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), softmax_ref(z, y.astype(float), reduction="none"),
                               rtol=1e-12)


def test_list_inputs_are_numpy(rng):
    got = xent.softmax_cross_entropy([[2.0, 0.0, -1.0]], [[1.0, 0.0, 0.0]])
    # A reduced NumPy result is a NumPy float64 scalar (np.generic), as np.sum gives.
    assert isinstance(got, (np.ndarray, np.generic)) and got.dtype == np.float64
    assert got.shape == ()
    np.testing.assert_allclose(got, softmax_ref([[2.0, 0.0, -1.0]], [[1.0, 0.0, 0.0]]))
