"""log_loss: values and gradients against TensorFlow's formula in float64."""

from __future__ import annotations

import numpy as np
import pytest

import xent
from tests._oracle import on_backend, REDUCTIONS, fd_grad, log_loss_ref

OPTIONS = {
    "plain": {},
    "epsilon_zero": {"epsilon": 0.0},
    "epsilon_large": {"epsilon": 1e-3},
    "sample_weight": {"sample_weight": [[1.0], [0.0], [2.5], [0.5]]},
    "sample_weight_full": {"sample_weight": np.linspace(0, 2, 20).reshape(4, 5).tolist()},
}


def _data(rng):
    p = rng.uniform(0.02, 0.98, (4, 5))
    y = rng.random((4, 5))
    return p, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_value_matches_float64_formula(be, rng, name, reduction):
    p, y = _data(rng)
    p[0, :2] = [0.0, 1.0]  # the edges are legal probabilities
    y[0, :2] = [0.0, 1.0]
    opts = OPTIONS[name]
    got = xent.log_loss(be.asarray(p), be.asarray(y), reduction=reduction, **on_backend(be, opts))
    # With epsilon = 0 the edges meet 0 * log(0), which is 0: a tiny epsilon
    # in the reference gives exactly that.
    ref_opts = {**opts, "epsilon": opts.get("epsilon", 1e-7) or 1e-300}
    want = log_loss_ref(p, y, reduction=reduction, **ref_opts)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_gradients_match_finite_differences(gbe, rng, name):
    p, y = _data(rng)
    opts = OPTIONS[name]
    gp, gy = gbe.grad(lambda a, b: xent.log_loss(a, b, **on_backend(gbe, opts)),
                      gbe.asarray(p), gbe.asarray(y), argnums=(0, 1))
    np.testing.assert_allclose(gp, fd_grad(lambda a: log_loss_ref(a, y, **opts), p),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gy, fd_grad(lambda b: log_loss_ref(p, b, **opts), y),
                               rtol=1e-6, atol=1e-8)


def test_certain_correct_predictions_have_finite_gradients_without_epsilon(gbe):
    # p = 0 with y = 0 and p = 1 with y = 1: loss 0, and the gradient is the
    # one-sided derivative of the surviving term (+1 and -1), not NaN.
    p = np.array([0.0, 1.0, 0.25])
    y = np.array([0.0, 1.0, 1.0])
    gp, = gbe.grad(lambda a: xent.log_loss(a, gbe.asarray(y), epsilon=0.0, reduction="sum"),
                   gbe.asarray(p))
    np.testing.assert_allclose(gp, [1.0, -1.0, -4.0], rtol=1e-12)
    value = xent.log_loss(gbe.asarray(p), gbe.asarray(y), epsilon=0.0, reduction="none")
    np.testing.assert_allclose(gbe.to_numpy(value), [0.0, 0.0, np.log(4.0)], rtol=1e-12)


def test_log_loss_on_sigmoid_probabilities_is_sigmoid_cross_entropy(be):
    # With epsilon = 0 and moderate logits, log_loss(σ(z)) is sigmoid_cross_entropy(z).
    z = np.array([-2.0, 0.5, 3.0])
    y = np.array([0.0, 1.0, 0.3])
    p = 1 / (1 + np.exp(-z))
    a = xent.log_loss(be.asarray(p), be.asarray(y), epsilon=0.0)
    b = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y))
    np.testing.assert_allclose(be.to_numpy(a), be.to_numpy(b), rtol=1e-12)
