"""Keras (focal losses) and optax as peers.

Keras clips probabilities to [1e-7, 1 - 1e-7] (and adds 1e-7 inside the binary
logarithm), so it is compared on moderate logits with a tolerance that covers
that clipping; optax computes the same formulas exactly and is compared
tightly, gradients included (jax.grad of both).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import xent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

B, C = 4, 5
KERAS_TOL = dict(rtol=2e-5, atol=1e-6)  # the 1e-7 clipping / epsilon of Keras


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def optax():
    return pytest.importorskip("optax")


# -- Keras -------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_keras_binary_focal_crossentropy(be, rng, keras, gamma, smoothing):
    """apply_class_balancing=False (alpha unused): the per-sample mean over the last
    axis of (1 - p_t)**gamma * BCE, with labels smoothed towards 1/2."""
    z = rng.normal(size=(B, C)) * 2
    y = (rng.random((B, C)) > 0.5).astype(float)
    per_sample = keras.losses.binary_focal_crossentropy(
        y, z, apply_class_balancing=False, gamma=gamma, from_logits=True,
        label_smoothing=smoothing)
    per_sample = np.asarray(per_sample, np.float64)
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), focal_gamma=gamma,
                                     label_smoothing=smoothing, reduction="none")
    np.testing.assert_allclose(be.to_numpy(got).mean(-1), per_sample, **KERAS_TOL)
    # the Loss object's default reduction (sum_over_batch_size of per-sample means)
    # with per-sample weights is xent's sum_over_batch_size with [B, 1] weights
    w = rng.random(B)
    loss = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=False, gamma=gamma,
                                                from_logits=True, label_smoothing=smoothing)
    want = float(loss(y, z, sample_weight=w))
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), focal_gamma=gamma,
                                     label_smoothing=smoothing,
                                     sample_weight=be.asarray(w[:, None]),
                                     reduction="sum_over_batch_size")
    np.testing.assert_allclose(float(be.to_numpy(got)), want, **KERAS_TOL)


def test_keras_binary_focal_class_balancing_is_pos_weight_and_sample_weight(be, rng, keras):
    """apply_class_balancing=True with hard labels: alpha on positives, 1 - alpha on
    negatives, i.e. pos_weight = alpha / (1 - alpha) and sample_weight = 1 - alpha."""
    z = rng.normal(size=(B, C))
    y = (rng.random((B, C)) > 0.5).astype(float)
    alpha = 0.25
    want = np.asarray(keras.losses.binary_focal_crossentropy(
        y, z, apply_class_balancing=True, alpha=alpha, gamma=2.0, from_logits=True), np.float64)
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), focal_gamma=2.0,
                                     pos_weight=alpha / (1 - alpha), sample_weight=1 - alpha,
                                     reduction="none")
    np.testing.assert_allclose(be.to_numpy(got).mean(-1), want, **KERAS_TOL)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_keras_categorical_focal_crossentropy(be, rng, keras, gamma, smoothing):
    """Keras always multiplies by alpha (default 0.25; no switch for categorical):
    xent's class_weight = alpha for every class. Moderate logits keep the softmax
    inside Keras's clipping range."""
    z = rng.normal(size=(B, C))
    y = np.eye(C)[rng.integers(0, C, B)]
    y[0] = [0.1, 0.2, 0.3, 0.3, 0.1]
    alpha = 0.25
    want = np.asarray(keras.losses.categorical_focal_crossentropy(
        y, z, alpha=alpha, gamma=gamma, from_logits=True, label_smoothing=smoothing),
        np.float64)
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), focal_gamma=gamma,
                                     label_smoothing=smoothing,
                                     class_weight=be.asarray(np.full(C, alpha)),
                                     reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), want, **KERAS_TOL)


def test_keras_categorical_focal_clips_where_xent_is_exact(be, keras):
    """Deliberate difference: Keras clips p at 1e-7, so a confidently wrong row's
    loss saturates at alpha * -log(1e-7); xent's is the exact -log p."""
    z = np.array([[30.0, 0.0, 0.0]])
    y = np.array([[0.0, 1.0, 0.0]])
    keras_value = float(np.asarray(keras.losses.categorical_focal_crossentropy(
        y, z, alpha=1.0, gamma=0.0, from_logits=True))[0])
    np.testing.assert_allclose(keras_value, -np.log(1e-7), rtol=1e-5)
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), reduction="none")
    np.testing.assert_allclose(be.to_numpy(got)[0], 30.0 + np.log1p(2 * np.exp(-30.0)),
                               rtol=1e-12)


# -- optax ---------------------------------------------------------------------------------


def _jax_grads(fn, *arrays, argnums=(0,)):
    import jax

    return [np.asarray(g) for g in jax.grad(lambda *a: fn(*a).sum(), argnums=argnums)(*arrays)]


def test_optax_softmax_cross_entropy(be, rng, optax):
    import jax.numpy as jnp

    z = rng.normal(size=(B, C)) * 3
    y = rng.random((B, C))
    y /= y.sum(1, keepdims=True)
    want = optax.losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y))
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), np.asarray(want), rtol=1e-12)
    if be.has_grad:
        wz, wy = _jax_grads(optax.losses.softmax_cross_entropy, jnp.asarray(z), jnp.asarray(y),
                            argnums=(0, 1))
        gz, gy = be.grad(lambda a, b: xent.softmax_cross_entropy(a, b, reduction="sum"),
                         be.asarray(z), be.asarray(y), argnums=(0, 1))
        np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gy, wy, rtol=1e-10, atol=1e-14)


def test_optax_softmax_cross_entropy_with_integer_labels(be, rng, optax):
    import jax.numpy as jnp

    z = rng.normal(size=(B, C)) * 3
    z[0] = [1e4, -1e4, 0.0, 1.0, 2.0]
    t = rng.integers(0, C, B)
    want = optax.losses.softmax_cross_entropy_with_integer_labels(jnp.asarray(z), jnp.asarray(t))
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), np.asarray(want), rtol=1e-12)
    if be.has_grad:
        wz, = _jax_grads(lambda a: optax.losses.softmax_cross_entropy_with_integer_labels(
            a, jnp.asarray(t)), jnp.asarray(z))
        gz, = be.grad(lambda a: xent.sparse_softmax_cross_entropy(a, be.asarray(t),
                                                                  reduction="sum"),
                      be.asarray(z))
        np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)


def test_optax_safe_softmax_cross_entropy_on_masked_classes(gbe, optax):
    import jax.numpy as jnp

    z = np.array([[-np.inf, 1.0, 2.0, -np.inf], [0.5, -np.inf, -1.0, 3.0]])
    y = np.array([[0.0, 0.3, 0.7, 0.0], [1.0, 0.0, 0.0, 0.0]])
    want = optax.losses.safe_softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y))
    got = xent.softmax_cross_entropy(gbe.asarray(z), gbe.asarray(y), reduction="none")
    np.testing.assert_allclose(gbe.to_numpy(got), np.asarray(want), rtol=1e-12)
    wz, = _jax_grads(lambda a: optax.losses.safe_softmax_cross_entropy(a, jnp.asarray(y)),
                     jnp.asarray(z))
    gz, = gbe.grad(lambda a: xent.softmax_cross_entropy(a, gbe.asarray(y), reduction="sum"),
                   gbe.asarray(z))
    np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)


def test_optax_sigmoid_binary_cross_entropy(be, rng, optax):
    import jax.numpy as jnp

    z = rng.normal(size=(B, C)) * 3
    z[0] = [1e4, -1e4, 40.0, -40.0, 0.0]
    y = rng.random((B, C))
    want = optax.losses.sigmoid_binary_cross_entropy(jnp.asarray(z), jnp.asarray(y))
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), np.asarray(want), rtol=1e-12)
    if be.has_grad:
        wz, wy = _jax_grads(optax.losses.sigmoid_binary_cross_entropy, jnp.asarray(z),
                            jnp.asarray(y), argnums=(0, 1))
        gz, gy = be.grad(lambda a, b: xent.sigmoid_cross_entropy(a, b, reduction="sum"),
                         be.asarray(z), be.asarray(y), argnums=(0, 1))
        np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gy, wy, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_optax_sigmoid_focal_loss(be, rng, optax, gamma, alpha):
    """optax: (1 - p_t)**gamma * BCE, then alpha on positives / 1 - alpha on
    negatives; with hard labels that is pos_weight = alpha / (1 - alpha) and
    sample_weight = 1 - alpha."""
    import jax.numpy as jnp

    z = rng.normal(size=(B, C)) * 3
    z[0] = [20.0, -20.0, 5.0, -5.0, 0.0]
    y = (rng.random((B, C)) > 0.5).astype(float)
    y[0] = [1.0, 0.0, 0.0, 1.0, 1.0]
    if alpha is None:
        y[1] = [0.3, 0.9, 0.5, 0.1, 0.7]  # soft labels only without alpha
    want = optax.losses.sigmoid_focal_loss(jnp.asarray(z), jnp.asarray(y), alpha=alpha,
                                           gamma=gamma)
    kw = {} if alpha is None else {"pos_weight": alpha / (1 - alpha),
                                   "sample_weight": 1 - alpha}
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), focal_gamma=gamma,
                                     reduction="none", **kw)
    np.testing.assert_allclose(be.to_numpy(got), np.asarray(want), rtol=1e-10, atol=1e-300)
    if be.has_grad:
        wz, = _jax_grads(lambda a: optax.losses.sigmoid_focal_loss(
            a, jnp.asarray(y), alpha=alpha, gamma=gamma), jnp.asarray(z))
        gz, = be.grad(lambda a: xent.sigmoid_cross_entropy(a, be.asarray(y), focal_gamma=gamma,
                                                           reduction="sum", **kw),
                      be.asarray(z))
        np.testing.assert_allclose(gz, wz, rtol=1e-9, atol=1e-14)
