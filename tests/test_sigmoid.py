"""sigmoid_cross_entropy: values and gradients against the float64 formula, every option."""

from __future__ import annotations

import numpy as np
import pytest

import xent
from tests._oracle import check_value, on_backend, REDUCTIONS, fd_grad, sigmoid_ref

B, C = 4, 5
OPTIONS = {
    "plain": {},
    "pos_weight_vector": {"pos_weight": [2.0, 0.5, 1.0, 3.0, 0.0]},
    "pos_weight_scalar": {"pos_weight": 3.0},
    "pos_weight_full": {"pos_weight": np.linspace(0.5, 3.0, B * C).reshape(B, C).tolist()},
    "label_smoothing": {"label_smoothing": 0.2},
    "focal": {"focal_gamma": 2.0},
    "focal_fractional": {"focal_gamma": 0.5},
    "sample_weight_rows": {"sample_weight": [[1.0], [0.0], [2.5], [0.5]]},
    "sample_weight_cols": {"sample_weight": [1.0, 0.0, 2.0, 0.5, 1.0]},
    "everything": {"pos_weight": [2.0, 0.5, 1.0, 3.0, 0.0], "label_smoothing": 0.1, "focal_gamma": 1.5,
                   "sample_weight": [[1.0], [0.0], [2.5], [0.5]]},
}


def _data(rng):
    z = rng.normal(size=(B, C)) * 3
    y = rng.random((B, C))
    y[0] = [0.0, 1.0, 1.0, 0.0, 1.0]  # hard labels too
    return z, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_value_matches_float64_formula(be, rng, name, reduction):
    z, y = _data(rng)
    opts = OPTIONS[name]
    check_value(be, xent.sigmoid_cross_entropy, sigmoid_ref, z, y, reduction, opts)


@pytest.mark.parametrize("reduction", ["sum", "mean", "sum_by_nonzero_weights"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradients_match_finite_differences(gbe, rng, name, reduction):
    z, y = _data(rng)
    y[0] = [0.3, 0.9, 0.6, 0.1, 0.5]  # the label gradient is one-sided at 0 and 1
    opts = OPTIONS[name]
    gz, gy = gbe.grad(lambda a, b: xent.sigmoid_cross_entropy(a, b, reduction=reduction,
                                                              **on_backend(gbe, opts)),
                      gbe.asarray(z), gbe.asarray(y), argnums=(0, 1))
    np.testing.assert_allclose(gz, fd_grad(lambda a: sigmoid_ref(a, y, reduction=reduction,
                                                                 **opts), z),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gy, fd_grad(lambda b: sigmoid_ref(z, b, reduction=reduction,
                                                                 **opts), y),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("label_dtype", ["bool", "int64", "float32"])
def test_hard_labels_of_any_dtype(be, rng, label_dtype):
    z = rng.normal(size=(B, C))
    y = rng.integers(0, 2, (B, C))
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y.astype(label_dtype)),
                                     reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), sigmoid_ref(z, y, reduction="none"),
                               rtol=1e-12)


def test_binary_one_dimensional_logits(be, rng):
    z = rng.normal(size=(4,))
    y = rng.integers(0, 2, 4).astype(float)
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y))
    np.testing.assert_allclose(be.to_numpy(got), sigmoid_ref(z, y), rtol=1e-12)


def test_pos_weight_scales_positive_term_not_the_mean_denominator(be):
    z = np.array([0.3, -0.2])
    y = np.array([1.0, 0.0])
    plain = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), reduction="none")
    weighted = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), pos_weight=4.0)
    want = (4 * be.to_numpy(plain)[0] + be.to_numpy(plain)[1]) / 2
    np.testing.assert_allclose(be.to_numpy(weighted), want, rtol=1e-12)
