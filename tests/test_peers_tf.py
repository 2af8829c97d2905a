"""TensorFlow as a peer: tf.nn ops and tf.compat.v1.losses under their five Reductions.

Values on every backend, gradients (logits and labels) against tf.GradientTape.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import xent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

R = tf.compat.v1.losses.Reduction
TF_REDUCTIONS = {
    "none": R.NONE,
    "sum": R.SUM,
    "mean": R.MEAN,
    "sum_over_batch_size": R.SUM_OVER_BATCH_SIZE,
    "sum_by_nonzero_weights": R.SUM_BY_NONZERO_WEIGHTS,
}
B, C = 4, 5


def tf_value_and_grads(fn, *arrays):
    """``fn(*tf_arrays)`` and its gradients w.r.t. every array (float64), via GradientTape."""
    xs = [tf.constant(a) for a in arrays]
    with tf.GradientTape() as tape:
        for x in xs:
            tape.watch(x)
        out = fn(*xs)
        total = tf.reduce_sum(out)
    grads = tape.gradient(total, xs)
    return out.numpy(), [None if g is None else g.numpy() for g in grads]


def _data(rng):
    z = rng.normal(size=(B, C)) * 2
    t = rng.integers(0, C, B)
    soft = rng.random((B, C)) + 0.05
    soft /= soft.sum(1, keepdims=True)
    return z, t, soft


# -- tf.nn ------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [-1, 0])
def test_tf_nn_softmax_cross_entropy_with_logits(be, rng, axis):
    z, _, y = _data(rng)
    y = y / y.sum(axis=axis, keepdims=True)  # see the next test for unnormalized labels
    want, (wz, wy) = tf_value_and_grads(
        lambda a, b: tf.nn.softmax_cross_entropy_with_logits(labels=b, logits=a, axis=axis), z, y)
    got = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), axis=axis, reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12)
    if be.has_grad:
        gz, gy = be.grad(lambda a, b: xent.softmax_cross_entropy(a, b, axis=axis,
                                                                 reduction="sum"),
                         be.asarray(z), be.asarray(y), argnums=(0, 1))
        np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gy, wy, rtol=1e-10, atol=1e-14)


def test_unnormalized_labels_tf_gradient_differs_deliberately(gbe, rng):
    """TF's kernel returns softmax(z) - y as the logits gradient, which is the
    derivative of its value only when each label row sums to 1. xent returns the
    derivative of the value, sum(y) * softmax(z) - y; the values agree."""
    z, _, y = _data(rng)
    y = y * np.array([0.5, 1.0, 2.0, 3.0])[:, None]  # row sums 0.5 .. 3
    want, (wz, _) = tf_value_and_grads(
        lambda a, b: tf.nn.softmax_cross_entropy_with_logits(labels=b, logits=a), z, y)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(wz, p - y, rtol=1e-10)  # TF: softmax minus labels
    gz, = gbe.grad(lambda a: xent.softmax_cross_entropy(a, gbe.asarray(y), reduction="sum"),
                   gbe.asarray(z))
    np.testing.assert_allclose(gz, y.sum(1, keepdims=True) * p - y, rtol=1e-10)
    value = xent.softmax_cross_entropy(gbe.asarray(z), gbe.asarray(y), reduction="none")
    np.testing.assert_allclose(gbe.to_numpy(value), want, rtol=1e-12)


def test_label_gradient_false_is_tf_v1_op(gbe, rng):
    z, _, y = _data(rng)
    want, (wz, wy) = tf_value_and_grads(
        lambda a, b: tf.compat.v1.nn.softmax_cross_entropy_with_logits(labels=b, logits=a), z, y)
    assert wy is None or not np.any(wy)  # the v1 op stops the gradient into the labels
    gz, gy = gbe.grad(lambda a, b: xent.softmax_cross_entropy(a, b, label_gradient=False,
                                                              reduction="sum"),
                      gbe.asarray(z), gbe.asarray(y), argnums=(0, 1))
    np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)
    assert gy is None or not np.any(gy)


def test_tf_nn_sparse_softmax_cross_entropy_with_logits(be, rng):
    z, t, _ = _data(rng)
    want, (wz,) = tf_value_and_grads(
        lambda a: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=a), z)
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), reduction="none")
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12)
    if be.has_grad:
        gz, = be.grad(lambda a: xent.sparse_softmax_cross_entropy(a, be.asarray(t),
                                                                  reduction="sum"),
                      be.asarray(z))
        np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("pos_weight", [None, 3.0, "vector"])
def test_tf_nn_sigmoid_and_weighted_cross_entropy_with_logits(be, rng, pos_weight):
    z = rng.normal(size=(B, C)) * 3
    z[0] = [1e4, -1e4, 30.0, -30.0, 0.5]  # not 0: see the next test
    y = rng.random((B, C))
    y[1] = [0.0, 1.0, 1.0, 0.0, 1.0]
    pw = np.array([0.5, 1.0, 2.0, 4.0, 0.0]) if pos_weight == "vector" else pos_weight
    if pw is None:
        fn = lambda a, b: tf.nn.sigmoid_cross_entropy_with_logits(labels=b, logits=a)  # noqa
    else:
        fn = lambda a, b: tf.nn.weighted_cross_entropy_with_logits(  # noqa: E731
            labels=b, logits=a, pos_weight=tf.constant(pw, tf.float64))
    want, (wz, wy) = tf_value_and_grads(fn, z, y)
    kw = {} if pw is None else {"pos_weight": be.asarray(np.asarray(pw))}
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), reduction="none", **kw)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12)
    if be.has_grad:
        gz, gy = be.grad(lambda a, b: xent.sigmoid_cross_entropy(a, b, reduction="sum", **kw),
                         be.asarray(z), be.asarray(y), argnums=(0, 1))
        np.testing.assert_allclose(gz, wz, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gy, wy, rtol=1e-10, atol=1e-14)


def test_tf_weighted_cross_entropy_gradient_at_zero_logit_differs_deliberately(gbe):
    """At z == 0 exactly, TF's weighted_cross_entropy_with_logits (written with
    abs and relu) returns a wrong gradient; xent returns the true derivative
    -pos_weight * y * σ(-z) + (1 - y) * σ(z), continuous in z."""
    z = np.array([0.0, 0.0, 1e-9])
    y = np.array([0.3, 0.0, 0.3])
    _, (wz, _) = tf_value_and_grads(lambda a, b: tf.nn.weighted_cross_entropy_with_logits(
        labels=b, logits=a, pos_weight=tf.constant(3.0, tf.float64)), z, y)
    np.testing.assert_allclose(wz, [0.7, 1.0, -0.1], rtol=1e-6)  # TF: jumps at 0
    gz, = gbe.grad(lambda a: xent.sigmoid_cross_entropy(a, gbe.asarray(y), pos_weight=3.0,
                                                        reduction="sum"), gbe.asarray(z))
    np.testing.assert_allclose(gz, [-0.1, 0.5, -0.1], rtol=1e-6)


# -- tf.compat.v1.losses: every Reduction, with weights and label smoothing --------------
# compute_weighted_loss casts the losses to float32 and back: float32 tolerances.
V1 = dict(rtol=1e-6, atol=1e-6)

SW = np.array([1.0, 0.0, 2.0, 0.5])


@pytest.mark.parametrize("reduction", list(TF_REDUCTIONS))
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_v1_losses_softmax_cross_entropy(be, rng, reduction, smoothing):
    z, t, _ = _data(rng)
    y = np.eye(C)[t]
    want, (wz,) = tf_value_and_grads(
        lambda a: tf.compat.v1.losses.softmax_cross_entropy(
            y, a, weights=SW, label_smoothing=smoothing, reduction=TF_REDUCTIONS[reduction]), z)
    kw = dict(sample_weight=be.asarray(SW), label_smoothing=smoothing, reduction=reduction)
    dense = lambda a: xent.softmax_cross_entropy(a, be.asarray(y), **kw)  # noqa: E731
    sparse = lambda a: xent.sparse_softmax_cross_entropy(a, be.asarray(t), **kw)  # noqa: E731
    for fn in (dense, sparse):
        np.testing.assert_allclose(be.to_numpy(fn(be.asarray(z))), want, **V1)
        if be.has_grad:
            g, = be.grad(lambda a: fn(a) if reduction != "none" else be.sum(fn(a)), be.asarray(z))
            np.testing.assert_allclose(g, wz, **V1)


@pytest.mark.parametrize("reduction", list(TF_REDUCTIONS))
def test_v1_losses_sparse_softmax_cross_entropy(be, rng, reduction):
    z, t, _ = _data(rng)
    want = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        t, z, weights=SW, reduction=TF_REDUCTIONS[reduction]).numpy()
    got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t),
                                            sample_weight=be.asarray(SW), reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(got), want, **V1)
    # weights as TF's default (1.0): every reduction again
    want1 = tf.compat.v1.losses.sparse_softmax_cross_entropy(
        t, z, reduction=TF_REDUCTIONS[reduction]).numpy()
    got1 = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(got1), want1, **V1)


@pytest.mark.parametrize("reduction", list(TF_REDUCTIONS))
@pytest.mark.parametrize("weights", ["rows", "full"])
def test_v1_losses_sigmoid_cross_entropy(be, rng, reduction, weights):
    z = rng.normal(size=(B, C)) * 2
    y = (rng.random((B, C)) > 0.5).astype(float)
    w = SW[:, None] if weights == "rows" else rng.random((B, C)) * (rng.random((B, C)) > 0.3)
    want, (wz,) = tf_value_and_grads(
        lambda a: tf.compat.v1.losses.sigmoid_cross_entropy(
            y, a, weights=w, label_smoothing=0.1, reduction=TF_REDUCTIONS[reduction]), z)
    fn = lambda a: xent.sigmoid_cross_entropy(  # noqa: E731
        a, be.asarray(y), sample_weight=be.asarray(w), label_smoothing=0.1, reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(fn(be.asarray(z))), want, **V1)
    if be.has_grad:
        g, = be.grad(lambda a: fn(a) if reduction != "none" else be.sum(fn(a)), be.asarray(z))
        np.testing.assert_allclose(g, wz, **V1)


@pytest.mark.parametrize("reduction", list(TF_REDUCTIONS))
@pytest.mark.parametrize("epsilon", [1e-7, 1e-3])
def test_v1_losses_log_loss(be, rng, reduction, epsilon):
    p = rng.uniform(0, 1, (B, C))
    p[0] = [0.0, 1.0, 0.0, 1.0, 0.5]
    y = rng.random((B, C))
    y[0] = [0.0, 1.0, 1.0, 0.0, 0.5]
    want, (wp, wy) = tf_value_and_grads(
        lambda a, b: tf.compat.v1.losses.log_loss(b, a, weights=SW[:, None], epsilon=epsilon,
                                                  reduction=TF_REDUCTIONS[reduction]), p, y)
    fn = lambda a, b: xent.log_loss(a, b, sample_weight=be.asarray(SW[:, None]),  # noqa
                                    epsilon=epsilon, reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(fn(be.asarray(p), be.asarray(y))), want, **V1)
    if be.has_grad:
        gp, gy = be.grad(lambda a, b: fn(a, b) if reduction != "none" else be.sum(fn(a, b)),
                         be.asarray(p), be.asarray(y), argnums=(0, 1))
        np.testing.assert_allclose(gp, wp, **V1)
        np.testing.assert_allclose(gy, wy, **V1)


def test_v1_all_zero_weights_give_zero_like_tf(be, rng):
    z, t, _ = _data(rng)
    for reduction in ("mean", "sum_by_nonzero_weights"):
        want = tf.compat.v1.losses.sparse_softmax_cross_entropy(
            t, z, weights=np.zeros(B), reduction=TF_REDUCTIONS[reduction]).numpy()
        got = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t),
                                                sample_weight=be.asarray(np.zeros(B)),
                                                reduction=reduction)
        assert float(be.to_numpy(got)) == float(want) == 0.0
