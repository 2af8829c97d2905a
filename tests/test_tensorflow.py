"""TensorFlow specifics: tf.Variable, tf.function, jit_compile=True, in-graph value checks,
and linear_cross_entropy without [N, V] logits. TF's own ops are the oracle."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import xent  # noqa: E402

MODES = ["eager", "function", "jit"]


def _wrap(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "jit"))


def _value_and_grad(fn, *args):
    with tf.GradientTape() as tape:
        for a in args:
            tape.watch(a)
        out = fn(*args)
    return out, tape.gradient(out, list(args))


@pytest.mark.parametrize("mode", MODES)
def test_sparse_matches_tf_nn_value_and_gradient(mode):
    rng = np.random.default_rng(0)
    z = tf.constant(rng.normal(size=(7, 5)) * 3)
    t = tf.constant(rng.integers(0, 5, 7))

    def mine(z):
        return _value_and_grad(lambda z: xent.sparse_softmax_cross_entropy(z, t), z)

    def theirs(z):
        return _value_and_grad(lambda z: tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(t, z)), z)

    (a, [ga]), (b, [gb]) = _wrap(mine, mode)(z), theirs(z)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_softmax_and_sigmoid_match_tf_nn(mode):
    rng = np.random.default_rng(1)
    z = tf.constant(rng.normal(size=(6, 4)))
    y = tf.constant(rng.dirichlet(np.ones(4), 6))

    def both(z, y):
        return (xent.softmax_cross_entropy(z, y, reduction="none"),
                xent.sigmoid_cross_entropy(z, y, reduction="none"))

    a, b = _wrap(both, mode)(z, y)
    np.testing.assert_allclose(a.numpy(), tf.nn.softmax_cross_entropy_with_logits(y, z).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(b.numpy(), tf.nn.sigmoid_cross_entropy_with_logits(y, z).numpy(),
                               rtol=1e-12)


def test_variable_logits_get_gradients_and_result_is_a_tensor():
    rng = np.random.default_rng(2)
    v = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    t = np.array([0, 2, 1, 0])
    with tf.GradientTape() as tape:
        loss = xent.sparse_softmax_cross_entropy(v, t, label_smoothing=0.1)
    g = tape.gradient(loss, v)
    assert isinstance(loss, tf.Tensor) and loss.dtype == tf.float32
    with tf.GradientTape() as tape:
        ref = tf.reduce_mean(tf.keras.losses.categorical_crossentropy(
            tf.one_hot(t, 3), v, from_logits=True, label_smoothing=0.1))
    np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=1e-5)
    np.testing.assert_allclose(g.numpy(), tape.gradient(ref, v).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_dtypes_keep_the_logits_dtype(dtype):
    rng = np.random.default_rng(3)
    z64 = rng.normal(size=(5, 6))
    t = rng.integers(0, 6, 5)
    z = tf.cast(tf.constant(z64), getattr(tf, dtype))
    out = xent.sparse_softmax_cross_entropy(z, t)
    assert out.dtype == z.dtype
    want = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        t, tf.cast(z, tf.float64))).numpy()
    np.testing.assert_allclose(float(tf.cast(out, tf.float64)), want, rtol=1e-2)


def test_bad_label_is_an_in_graph_assertion_inside_tf_function():
    f = tf.function(lambda z, t: xent.sparse_softmax_cross_entropy(z, t))
    z = tf.zeros((3, 4))
    assert np.isfinite(f(z, tf.constant([0, 1, 3])).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="class indices"):
        f(z, tf.constant([0, 1, 7]))


def test_bad_label_eager_is_a_value_error_with_position():
    with pytest.raises(ValueError, match="position"):
        xent.sparse_softmax_cross_entropy(tf.zeros((3, 4)), tf.constant([0, 9, 1]))


def test_other_library_is_a_type_error_naming_both():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="tf.Tensor"):
        xent.sparse_softmax_cross_entropy(tf.zeros((2, 3)), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("mode", MODES)
def test_linear_matches_logits_path_with_every_option(mode):
    rng = np.random.default_rng(4)
    N, D, V = 6, 4, 11
    x = tf.constant(rng.normal(size=(N, D)))
    W = tf.constant(rng.normal(size=(V, D)))
    b = tf.constant(rng.normal(size=V))
    t = tf.constant(rng.integers(0, V, N))
    cw = list(rng.random(V) + 0.5)
    opts = dict(label_smoothing=0.1, z_loss=1e-3, class_weight=cw)

    def mine(x, W, b):
        return _value_and_grad(lambda x, W, b: xent.linear_cross_entropy(
            x, W, t, bias=b, logit_softcap=3.0, chunk_size=4, **opts), x, W, b)

    def ref(x, W, b):
        return _value_and_grad(lambda x, W, b: xent.sparse_softmax_cross_entropy(
            3.0 * tf.tanh((tf.matmul(x, W, transpose_b=True) + b) / 3.0), t, **opts), x, W, b)

    (a, ga), (r, gr) = _wrap(mine, mode)(x, W, b), ref(x, W, b)
    np.testing.assert_allclose(a.numpy(), r.numpy(), rtol=1e-12)
    for u, v in zip(ga, gr):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-9, atol=1e-13)


def test_linear_never_holds_n_by_v_logits_in_the_compiled_graph():
    """The largest buffer of the XLA program (value and gradients) is far below N * V."""
    N, D, V, chunk = 64, 8, 4096, 256
    x = tf.zeros((N, D))
    W = tf.zeros((V, D))
    t = tf.zeros((N,), tf.int64)

    @tf.function(jit_compile=True)
    def step(x, W):
        return _value_and_grad(lambda x, W: xent.linear_cross_entropy(
            x, W, t, chunk_size=chunk), x, W)

    hlo = step.experimental_get_compiler_ir(x, W)(stage="optimized_hlo")
    import re

    sizes = [int(np.prod([int(d) for d in m.split(",") if d])) for m in
             re.findall(r"f32\[([0-9,]*)\]", hlo)]
    assert max(sizes) < N * V // 4  # [V, D] (dW) and [N, chunk] buffers only
    assert f"f32[{N},{V}]" not in hlo


def test_mirrored_strategy_global_count_gives_global_mean():
    import os
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")]))
    script = os.path.join(os.path.dirname(__file__), "_tf_distribute.py")
    r = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK 4" in r.stdout, r.stderr[-3000:]
