"""TensorFlow tensors whose batch size is unknown until run time.

``tf.data`` batches (and so Keras's ``fit``), ``TensorSpec([None, C])``
signatures and ``reduce_retracing=True`` trace with ``None`` sizes. Every loss
must then give what it gives on the same values with static shapes, and what
TF's own op gives, with the same gradients; a class axis of unknown size is a
``ValueError``; a run-time shape mismatch is an error, never a broadcast.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import xent  # noqa: E402

REDUCTIONS = ["none", "mean", "sum", "sum_over_batch_size", "sum_by_nonzero_weights"]
RNG = np.random.default_rng(7)
N, C = 6, 5
Z = RNG.normal(size=(N, C)) * 3
P = RNG.random((N, C))
Y_SOFT = P / P.sum(1, keepdims=True)
T = RNG.integers(0, C, N)
Y_BIN = (RNG.random((N, C)) < 0.4).astype(np.float64)
SW = RNG.random(N)
CW = RNG.random(C) + 0.5


def _dyn(fn, *specs):
    """``fn`` traced once with the size of the batch axis (the first) unknown."""
    return tf.function(fn, input_signature=[tf.TensorSpec([None, *s[1:]], d) for s, d in specs])


def _value_and_grad(fn, z, *rest):
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = fn(z, *rest)
    return out.numpy(), tape.gradient(out, z).numpy()


def _float64_sparse(z, t, red, sw=None, cw=None):
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    w = np.ones(len(t)) if cw is None else cw[t]
    s = np.ones(len(t)) if sw is None else sw
    per = (lse - z[np.arange(len(t)), t]) * w * s
    den = {"none": None, "sum": 1.0, "mean": (w * s).sum(), "sum_over_batch_size": len(t),
           "sum_by_nonzero_weights": np.count_nonzero(w * s)}[red]
    return per if den is None else per.sum() / den


def _weights(opt):
    return {"sample_weight": tf.constant(SW)} if opt == "sample_weight" else (
        {"class_weight": tf.constant(CW)} if opt == "class_weight" else {})


def _against_static(loss, labels, red, kw):
    """Value and gradient of ``loss`` traced with an unknown batch size, checked equal to
    the same call on static shapes."""
    def f(z, y):
        return loss(z, y, reduction=red, **kw)

    z, y = tf.constant(Z), tf.constant(labels)
    dyn = _dyn(f, (Z.shape, tf.float64), (labels.shape, tf.as_dtype(labels.dtype)))
    v, g = _value_and_grad(dyn, z, y)
    v0, g0 = _value_and_grad(f, z, y)
    np.testing.assert_allclose(v, v0, rtol=1e-12)
    np.testing.assert_allclose(g, g0, rtol=1e-12, atol=1e-15)
    return z, y, v, g


@pytest.mark.parametrize("red", REDUCTIONS)
@pytest.mark.parametrize("opt", ["plain", "sample_weight", "class_weight"])
def test_sparse_with_unknown_batch_matches_float64_and_static(red, opt):
    z, t, v, g = _against_static(xent.sparse_softmax_cross_entropy, T, red, _weights(opt))
    want = _float64_sparse(Z, T, red, SW if opt == "sample_weight" else None,
                           CW if opt == "class_weight" else None)
    np.testing.assert_allclose(v, want, rtol=1e-12)
    if red == "sum" and opt == "plain":
        with tf.GradientTape() as tape:
            tape.watch(z)
            ref = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(t, z))
        np.testing.assert_allclose(g, tape.gradient(ref, z).numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("red", REDUCTIONS)
@pytest.mark.parametrize("opt", ["plain", "sample_weight", "class_weight"])
def test_soft_labels_with_unknown_batch_match_tf_nn_and_static(red, opt):
    z, y, v, g = _against_static(xent.softmax_cross_entropy, Y_SOFT, red, _weights(opt))
    if opt == "plain":
        per = tf.nn.softmax_cross_entropy_with_logits(y, z).numpy()
        want = per if red == "none" else (per.sum() if red == "sum" else per.mean())
        np.testing.assert_allclose(v, want, rtol=1e-12)


@pytest.mark.parametrize("red", REDUCTIONS)
@pytest.mark.parametrize("opt", ["plain", "sample_weight", "pos_weight"])
def test_sigmoid_with_unknown_batch_matches_tf_nn_and_static(red, opt):
    sw = np.broadcast_to(SW[:, None], (N, C)).copy()
    kw = {"sample_weight": tf.constant(sw)} if opt == "sample_weight" else (
        {"pos_weight": tf.constant(CW)} if opt == "pos_weight" else {})
    z, y, v, g = _against_static(xent.sigmoid_cross_entropy, Y_BIN, red, kw)
    if opt != "sample_weight":
        per = (tf.nn.weighted_cross_entropy_with_logits(y, z, tf.constant(CW))
               if opt == "pos_weight" else tf.nn.sigmoid_cross_entropy_with_logits(y, z)).numpy()
        want = per if red == "none" else (per.sum() if red == "sum" else per.mean())
        np.testing.assert_allclose(v, want, rtol=1e-12)


def test_log_loss_with_unknown_batch_matches_float64():
    p = np.clip(RNG.random((N, C)), 0.05, 0.95)
    f = _dyn(lambda p, y: xent.log_loss(p, y), (p.shape, tf.float64), (Y_BIN.shape, tf.float64))
    want = -(Y_BIN * np.log(p + 1e-7) + (1 - Y_BIN) * np.log(1 - p + 1e-7)).mean()
    np.testing.assert_allclose(f(tf.constant(p), tf.constant(Y_BIN)).numpy(), want, rtol=1e-12)


def test_empty_batch_with_unknown_size_gives_zero_not_nan():
    f = _dyn(lambda z, t: xent.sparse_softmax_cross_entropy(z, t), ((0, C), tf.float64),
             ((0,), tf.int64))
    z = tf.zeros((0, C), tf.float64)
    v, g = _value_and_grad(f, z, tf.zeros((0,), tf.int64))
    assert v == 0.0 and g.shape == (0, C)
    s = _dyn(lambda z, y: xent.sigmoid_cross_entropy(z, y), ((0, C), tf.float64),
             ((0, C), tf.float64))
    assert s(z, z).numpy() == 0.0


@pytest.mark.parametrize("jit", [False, True])
def test_labels_of_another_batch_size_at_run_time_are_an_error_not_a_broadcast(jit):
    # static shapes would be a ValueError; with the sizes unknown, the in-graph
    # assertion (or TF's own shape check under XLA) stops a [1] vs [6] batch
    f = tf.function(lambda z, y: xent.sigmoid_cross_entropy(z, y),
                    input_signature=[tf.TensorSpec([None, C], tf.float64)] * 2, jit_compile=jit)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        f(tf.constant(Z), tf.constant(Y_BIN[:1])).numpy()
    g = tf.function(lambda z, t: xent.sparse_softmax_cross_entropy(z, t),
                    input_signature=[tf.TensorSpec([None, C], tf.float64),
                                     tf.TensorSpec([None], tf.int64)], jit_compile=jit)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        g(tf.constant(Z), tf.constant(T[:1])).numpy()


def test_unknown_class_axis_is_a_value_error_naming_it():
    f = tf.function(lambda z, t: xent.sparse_softmax_cross_entropy(z, t),
                    input_signature=[tf.TensorSpec([None, None], tf.float64),
                                     tf.TensorSpec([None], tf.int64)])
    with pytest.raises(ValueError, match="class axis of known size"):
        f(tf.constant(Z), tf.constant(T))


D, V = 4, 40
X = RNG.normal(size=(N, D))
W = RNG.normal(size=(V, D))
B = RNG.normal(size=(V,))
TV = RNG.integers(0, V, N)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("red", ["none", "mean", "sum"])
@pytest.mark.parametrize("opt", ["plain", "sample_weight", "ignore_index", "class_weight"])
def test_linear_with_unknown_batch_matches_the_logits_and_tf_nn(jit, red, opt):
    t = TV.copy()
    kw = {}
    if opt == "sample_weight":
        kw["sample_weight"] = tf.constant(SW)
    elif opt == "ignore_index":
        t[1] = -100
        kw["ignore_index"] = -100
    elif opt == "class_weight":
        kw["class_weight"] = tf.constant(RNG.random(V) + 0.5)
    w, b = tf.constant(W), tf.constant(B)

    def f(x, t):
        return xent.linear_cross_entropy(x, w, t, bias=b, reduction=red, chunk_size=16, **kw)

    def ref(x, t):
        return xent.sparse_softmax_cross_entropy(tf.matmul(x, w, transpose_b=True) + b, t,
                                                 reduction=red, **kw)

    dyn = tf.function(f, input_signature=[tf.TensorSpec([None, D], tf.float64),
                                          tf.TensorSpec([None], tf.int64)], jit_compile=jit)
    x, tt = tf.constant(X), tf.constant(t)
    v, g = _value_and_grad(dyn, x, tt)
    v0, g0 = _value_and_grad(ref, x, tt)
    np.testing.assert_allclose(v, v0, rtol=1e-12)
    np.testing.assert_allclose(g, g0, rtol=1e-10, atol=1e-14)
    if opt == "plain":
        per = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tt, tf.matmul(x, w, transpose_b=True) + b).numpy()
        np.testing.assert_allclose(v, {"none": per, "sum": per.sum(), "mean": per.mean()}[red],
                                   rtol=1e-12)


@pytest.mark.parametrize("loss", ["sampled_softmax_loss", "nce_loss"])
@pytest.mark.parametrize("num_true", [1, 2])
def test_sampled_losses_with_unknown_batch_match_static_shapes_and_tf_nn(loss, num_true):
    w, b = tf.constant(W), tf.constant(B)
    t = RNG.integers(0, V, (N, num_true))
    ids = tf.constant(RNG.choice(V, 7, replace=False))
    te = tf.constant(np.full((N, num_true), 0.3))
    se = tf.constant(np.full((7,), 0.2))
    fn = getattr(xent, loss)

    def f(x, t):
        return fn(x, w, t, num_sampled=7, bias=b, num_true=num_true, sampled=(ids, te, se),
                  reduction="none")

    dyn = tf.function(f, input_signature=[tf.TensorSpec([None, D], tf.float64),
                                          tf.TensorSpec([None, num_true], tf.int64)])
    x, tt = tf.constant(X), tf.constant(t)
    v, g = _value_and_grad(dyn, x, tt)
    v0, g0 = _value_and_grad(f, x, tt)
    np.testing.assert_allclose(v, v0, rtol=1e-12)
    np.testing.assert_allclose(g, g0, rtol=1e-12, atol=1e-15)
    peer = getattr(tf.nn, loss)(w, b, tt, x, 7, V, num_true=num_true, sampled_values=(ids, te, se),
                                remove_accidental_hits=(loss == "sampled_softmax_loss"))
    np.testing.assert_allclose(v, peer.numpy(), rtol=1e-10)


def test_sampled_with_a_sampler_and_unknown_batch_runs_and_is_finite():
    w = tf.constant(W)
    f = tf.function(lambda x, t: xent.sampled_softmax_loss(x, w, t, num_sampled=5, rng=3),
                    input_signature=[tf.TensorSpec([None, D], tf.float64),
                                     tf.TensorSpec([None], tf.int64)])
    v, g = _value_and_grad(f, tf.constant(X), tf.constant(TV))
    assert np.isfinite(v) and np.isfinite(g).all() and g.shape == (N, D)


def test_check_and_choose_inside_a_compiled_function_say_to_call_them_eagerly():
    seen = []

    @tf.function
    def f(z, t):
        for fn in (lambda: xent.check(z, t), lambda: xent.choose(t)):
            with pytest.raises(TypeError, match="symbolic array.*eagerly") as e:
                fn()
            seen.append(str(e.value).split(" ")[0])
        return z

    f(tf.constant(Z), tf.constant(T))
    assert seen == ["logits", "labels"]
    jax = pytest.importorskip("jax")

    def g(z):
        with pytest.raises(TypeError, match="symbolic array.*eagerly"):
            xent.check(z, np.asarray(T))
        return z

    jax.jit(g)(np.asarray(Z))
