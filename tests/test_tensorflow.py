"""TensorFlow specifics: tf.Variable, tf.function, jit_compile=True, in-graph value checks,
and linear_cross_entropy without [N, V] logits. TF's own ops are the oracle."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import xent  # noqa: E402
from xent import samplers as XS  # noqa: E402

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


LIN_REDUCTIONS = ["none", "sum", "mean", "sum_over_batch_size", "sum_by_nonzero_weights"]
LIN_OPTS = {
    "plain": {},
    "bias_softcap_ignore": dict(bias=True, logit_softcap=2.5, ignore_index=-100),
    "everything": dict(bias=True, label_smoothing=0.1, z_loss=1e-2, logit_softcap=3.0,
                       class_weight=True, sample_weight=True, ignore_index=-100),
}
# chunk None: the kernel's default (256 columns here), 4 chunks, the last overlapping the
# one before (1013 = 3 * 256 + 245); 100 does not divide V either
LIN_CASES = ([("everything", r, "eager", None) for r in LIN_REDUCTIONS]
             + [("everything", r, m, 100) for r in ("none", "mean") for m in ("function", "jit")]
             + [("everything", "sum_by_nonzero_weights", "jit", None),
                ("plain", "mean", "jit", None), ("bias_softcap_ignore", "none", "jit", 100)])


def _linear_problem(rng, opts, N=37, D=7, V=1013):
    x = rng.normal(size=(N, D))
    W = rng.normal(size=(V, D)) / np.sqrt(D)
    t = rng.integers(0, V, N)
    b = rng.normal(size=V) if opts.get("bias") else None
    kw = {k: v for k, v in opts.items() if k not in ("bias", "class_weight", "sample_weight")}
    if opts.get("class_weight"):
        cw = rng.uniform(0.2, 2.0, V)
        cw[::7] = 0.0
        kw["class_weight"] = tf.constant(cw)
    if opts.get("sample_weight"):
        sw = rng.uniform(0.0, 2.0, N)
        sw[1] = 0.0
        kw["sample_weight"] = tf.constant(sw)
    if "ignore_index" in opts:
        t[::5] = opts["ignore_index"]
    return x, W, t, b, kw


@pytest.mark.parametrize("opt,reduction,mode,chunk", LIN_CASES)
def test_linear_value_and_gradients_equal_the_logits_path_in_float64(opt, reduction, mode, chunk):
    """Every option and reduction, eager, tf.function and jit_compile, against the [N, V]
    composition's value and tape gradients (x, W and the bias), float64."""
    rng = np.random.default_rng(11)
    x, W, t, b, kw = _linear_problem(rng, LIN_OPTS[opt])
    cap = kw.pop("logit_softcap", None)
    cot = tf.constant(rng.normal(size=t.shape) if reduction == "none" else np.array(1.3))
    t = tf.constant(t)
    args = [tf.constant(x), tf.constant(W)] + ([] if b is None else [tf.constant(b)])

    def mine(*a):
        return _value_and_grad(lambda x, W, *b: tf.reduce_sum(cot * xent.linear_cross_entropy(
            x, W, t, bias=b[0] if b else None, logit_softcap=cap, reduction=reduction,
            chunk_size=chunk, **kw)), *a)

    def ref(*a):
        def loss(x, W, *b):
            z = tf.matmul(x, W, transpose_b=True) + (b[0] if b else 0.0)
            if cap is not None:
                z = cap * tf.tanh(z / cap)
            return tf.reduce_sum(cot * xent.sparse_softmax_cross_entropy(
                z, t, reduction=reduction, **kw))
        return _value_and_grad(loss, *a)

    (a, ga), (r, gr) = _wrap(mine, mode)(*args), ref(*args)
    assert a.dtype == tf.float64 and len(ga) == len(args)
    np.testing.assert_allclose(a.numpy(), r.numpy(), rtol=1e-11, atol=1e-13)
    for u, v in zip(ga, gr):
        assert u.shape == v.shape
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_linear_low_precision_computes_in_float32_under_jit(dtype):
    """Inputs of a narrow dtype keep it in the value and the gradients; the numbers are the
    float64 ones of the rounded inputs, to float32 accuracy, not the narrow dtype's."""
    rng = np.random.default_rng(12)
    x, W, t, b, kw = _linear_problem(rng, dict(bias=True, label_smoothing=0.1), V=700)
    low = getattr(tf, dtype)
    xl, Wl, bl = (tf.cast(tf.constant(a), low) for a in (x, W, b))
    t = tf.constant(t)

    def mine(x, W, b):
        return _value_and_grad(lambda x, W, b: xent.linear_cross_entropy(
            x, W, t, bias=b, **kw), x, W, b)

    (a, ga) = _wrap(mine, "jit")(xl, Wl, bl)
    assert a.dtype == low and all(g.dtype == low for g in ga)
    x64, W64, b64 = (tf.cast(v, tf.float64) for v in (xl, Wl, bl))
    r, gr = _value_and_grad(lambda x, W, b: xent.sparse_softmax_cross_entropy(
        tf.matmul(x, W, transpose_b=True) + b, t, **kw), x64, W64, b64)
    # float32 compute, then one rounding to the output dtype
    eps = {"float16": 2 ** -11, "bfloat16": 2 ** -8, "float32": 2 ** -20}[dtype]
    np.testing.assert_allclose(float(tf.cast(a, tf.float64)), r.numpy(), rtol=2 * eps)
    for u, v in zip(ga, gr):
        v = v.numpy()
        np.testing.assert_allclose(tf.cast(u, tf.float64).numpy(), v, rtol=2 * eps,
                                   atol=2 * eps * np.abs(v).max())


def _compiled_scratch_bytes(fn, *args):
    """XLA's temporary buffers (not arguments, outputs or constants) of ``fn`` compiled."""
    hlo_pb2 = pytest.importorskip("tensorflow.compiler.xla.service.hlo_pb2")
    proto = hlo_pb2.HloProto()
    proto.ParseFromString(tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(
        stage="optimized_hlo_proto_serialized"))
    allocs = proto.buffer_assignment.buffer_allocations
    assert len(allocs) > 0
    return sum(a.size for a in allocs if not (a.is_entry_computation_parameter or a.maybe_live_out
                                              or a.is_constant or a.is_thread_local))


@pytest.mark.parametrize("opts", [{}, dict(logit_softcap=3.0, label_smoothing=0.1, z_loss=1e-3)])
def test_linear_compiled_step_scratch_is_a_few_percent_of_the_logits(opts):
    """Value and gradients under jit_compile keep at most 5% of the [N, V] float32 logits
    as XLA scratch (about 3% by design: one chunk's logits and dl/dz); the naive
    composition keeps 200%. An unrolled chunk loop, which XLA may schedule many chunks of
    at once, kept 150%."""
    N, D, V = 512, 64, 32768
    x, W, t = tf.zeros((N, D)), tf.zeros((V, D)), tf.zeros((N,), tf.int64)

    def step(x, W, t):
        return _value_and_grad(lambda x, W: xent.linear_cross_entropy(x, W, t, **opts), x, W)

    def naive(x, W, t):
        return _value_and_grad(lambda x, W: tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(t, tf.matmul(x, W, transpose_b=True))),
            x, W)

    logits = N * V * 4
    assert _compiled_scratch_bytes(naive, x, W, t) >= logits  # the measure sees the logits
    assert _compiled_scratch_bytes(step, x, W, t) <= 0.05 * logits


def test_linear_explicit_chunk_size_is_the_scratch_budget():
    """With chunk_size given, the scratch grows with N * chunk, never with N * V."""
    N, D, V = 256, 16, 8192
    x, W, t = tf.zeros((N, D)), tf.zeros((V, D)), tf.zeros((N,), tf.int64)

    def step(chunk):
        return lambda x, W, t: _value_and_grad(lambda x, W: xent.linear_cross_entropy(
            x, W, t, chunk_size=chunk), x, W)

    small, large = (_compiled_scratch_bytes(step(c), x, W, t) for c in (256, 1024))
    assert large > 2 * small
    assert large <= 3 * N * 1024 * 4 + N * D * 8  # two or three [N, chunk] buffers, no more


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


# --- sampled_softmax_loss, nce_loss and the samplers on TF tensors -------------------

SN, SD, SV, SS = 6, 4, 30, 5


def _sampled_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SN, SD))
    W = rng.normal(size=(SV, SD)) * 0.5
    b = rng.normal(size=SV) * 0.3
    labels = rng.choice(SV, size=SN, replace=False)[:, None]
    ids = rng.choice(np.setdiff1d(np.arange(SV), labels), size=SS, replace=False)
    ids[:2] = labels[[0, 3], 0]  # two accidental hits
    te = rng.uniform(0.1, 1.0, size=(SN, 1))
    se = rng.uniform(0.1, 1.0, size=SS)
    return x, W, b, labels, (ids, te, se)


@pytest.mark.parametrize("kind", ["sampled_softmax", "nce"])
@pytest.mark.parametrize("mode", MODES)
def test_sampled_losses_match_tf_nn_with_the_same_candidates(mode, kind):
    """Values and GradientTape gradients (inputs, classifier, bias) equal tf.nn's, given the
    same sampled_values, eagerly, in tf.function and under XLA; the classifier's gradient is
    IndexedSlices (rows gathered), as tf.nn's."""
    x, W, b, labels, sv = _sampled_problem()
    xv, Wv, bv = (tf.Variable(a) for a in (x, W, b))
    lab = tf.constant(labels, tf.int64)
    svt = (tf.constant(sv[0], tf.int64), tf.constant(sv[1]), tf.constant(sv[2]))
    mine_fn = xent.sampled_softmax_loss if kind == "sampled_softmax" else xent.nce_loss
    tf_fn = tf.nn.sampled_softmax_loss if kind == "sampled_softmax" else tf.nn.nce_loss
    remove = kind == "sampled_softmax"

    def mine():
        with tf.GradientTape() as tape:
            loss = mine_fn(xv, Wv, lab, num_sampled=SS, bias=bv, sampled=svt,
                           remove_accidental_hits=remove, reduction="sum")
        return loss, tape.gradient(loss, [xv, Wv, bv])

    with tf.GradientTape() as tape:
        want = tf.reduce_sum(tf_fn(Wv, bv, lab, xv, SS, SV, sampled_values=svt,
                                   remove_accidental_hits=remove))
    gwant = tape.gradient(want, [xv, Wv, bv])
    got, grads = _wrap(mine, mode)()
    assert isinstance(got, tf.Tensor) and got.dtype == tf.float64
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    if mode == "eager":
        assert isinstance(grads[1], tf.IndexedSlices)
    for g, h in zip(grads, gwant):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(),
                                   tf.convert_to_tensor(h).numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("mode", ["function", "jit"])
def test_sampling_inside_tf_function_with_a_seed_tensor(mode):
    """The built-in sampler runs in the graph (tf.while_loop): a seed tensor reproduces its
    sample, another seed gives another without a retrace, and the loss is the loss of that
    sample. In a plain tf.function the sample is the eager one; XLA's stateless random
    algorithm differs from TF's kernels (as for tf.random.stateless_uniform itself), so under
    jit_compile=True the same seed gives another, equally valid, sample."""
    x, W, b, labels, _ = _sampled_problem(1)
    X, Wt, lab = tf.constant(x), tf.constant(W), tf.constant(labels)

    def both(seed):
        sample = XS.LogUniformSampler(SV).sample(lab, SS, rng=seed)
        loss = xent.sampled_softmax_loss(X, Wt, lab, num_sampled=SS, rng=seed,
                                         reduction="none")
        return loss, tuple(sample)

    f = _wrap(both, mode)
    s1, s2 = tf.constant([1, 2], tf.int64), tf.constant([3, 4], tf.int64)
    loss1, sample1 = f(s1)
    again, sample1b = f(s1)
    _, sample2 = f(s2)
    for a, e in zip(sample1, sample1b):
        np.testing.assert_array_equal(a.numpy(), e.numpy())
    np.testing.assert_array_equal(loss1.numpy(), again.numpy())
    assert len(set(sample1[0].numpy().tolist())) == SS
    assert not np.array_equal(sample1[0].numpy(), sample2[0].numpy())
    if f.experimental_get_tracing_count() != 1:
        raise AssertionError("a new seed value retraced the function")
    given = xent.sampled_softmax_loss(X, Wt, lab, num_sampled=SS, sampled=sample1,
                                      reduction="none")
    np.testing.assert_allclose(loss1.numpy(), given.numpy(), rtol=1e-12)
    eager_loss, eager_sample = both(s1)
    if mode == "function":
        for a, e in zip(sample1, eager_sample):
            np.testing.assert_array_equal(a.numpy(), e.numpy())


@pytest.mark.parametrize("mode", MODES)
def test_generator_and_global_seed_advance_and_reproduce(mode):
    """A tf.random.Generator advances on every call (also in tf.function / XLA) and the same
    Generator seed reproduces; rng=None draws anew every call and follows
    tf.random.set_seed (eagerly and in tf.function; XLA's own generator ignores it)."""
    lab = tf.constant([[1], [2]], tf.int64)
    s = XS.UniformSampler(1000)

    def draws(gen):
        f = _wrap(lambda: s.sample(lab, 8, rng=gen).ids, mode)
        return [f().numpy() for _ in range(3)]

    a = draws(tf.random.Generator.from_seed(7))
    b = draws(tf.random.Generator.from_seed(7))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], a[1])
    f = _wrap(lambda: s.sample(lab, 8).ids, mode)
    tf.random.set_seed(3)
    c = f().numpy()
    assert len(set(c.tolist())) == 8 and not np.array_equal(f().numpy(), c)
    if mode != "jit":  # XLA's stateful random numbers ignore tf.random.set_seed (TF's rule)
        tf.random.set_seed(3)
        f = _wrap(lambda: s.sample(lab, 8).ids, mode)
        np.testing.assert_array_equal(f().numpy(), c)


def test_jit_compiled_sampler_follows_the_distribution():
    """Chi-square goodness of fit of XLA-compiled draws of the unigram sampler."""
    from scipy import stats

    counts = np.arange(1.0, 11.0)
    s = XS.UnigramSampler(counts, distortion=0.5)
    lab = tf.zeros((1, 1), tf.int64)
    f = tf.function(lambda seed: s.sample(lab, 20000, unique=False, rng=seed).ids,
                    jit_compile=True)
    ids = f(tf.constant([5, 6], tf.int64)).numpy()
    p = counts**0.5 / np.sum(counts**0.5)
    obs = np.bincount(ids, minlength=10)
    assert stats.chisquare(obs, p * ids.size).pvalue > 1e-4
    assert stats.chisquare(obs, np.full(10, ids.size / 10)).pvalue < 1e-6


def test_foreign_generator_inside_tf_function_is_a_clear_error():
    lab = tf.constant([[1]], tf.int64)
    f = tf.function(lambda: XS.UniformSampler(10).sample(lab, 2, rng=np.random.default_rng(0)))
    with pytest.raises(ValueError, match="cannot advance inside a traced tensorflow"):
        f()


def test_sampled_bad_label_is_an_in_graph_assertion_inside_tf_function():
    x, W, b, labels, sv = _sampled_problem()
    f = tf.function(lambda lab: xent.nce_loss(tf.constant(x), tf.constant(W), lab,
                                              num_sampled=SS, sampled=sv))
    assert np.isfinite(f(tf.constant(labels)).numpy())
    bad = labels.copy()
    bad[2, 0] = SV
    with pytest.raises(tf.errors.InvalidArgumentError, match="class indices"):
        f(tf.constant(bad))
    with pytest.raises(ValueError, match="position"):
        xent.nce_loss(tf.constant(x), tf.constant(W), tf.constant(bad), num_sampled=SS,
                      sampled=sv)


@pytest.mark.parametrize("loss", ["sparse", "nce"])
def test_value_checks_eager_and_tf_function_raise_and_xla_skips_them(loss):
    """The documented rule: eagerly a bad label is a ValueError, inside a plain tf.function
    an InvalidArgumentError from the in-graph assertion; under jit_compile=True XLA drops
    assertions, so the same call returns a tensor without raising (validate eagerly or in a
    plain tf.function first)."""
    x, W, b, labels, sv = _sampled_problem()
    bad = labels.copy()
    bad[2, 0] = SV

    def f(lab):
        if loss == "sparse":
            return xent.sparse_softmax_cross_entropy(tf.constant(x @ W.T), lab[:, 0])
        return xent.nce_loss(tf.constant(x), tf.constant(W), lab, num_sampled=SS, sampled=sv)

    good = f(tf.constant(labels)).numpy()
    with pytest.raises(ValueError, match=r"class indices in \[0, 30\), got 30 at position"):
        f(tf.constant(bad))
    with pytest.raises(tf.errors.InvalidArgumentError, match="class indices"):
        tf.function(f)(tf.constant(bad))
    jitted = tf.function(f, jit_compile=True)
    np.testing.assert_allclose(jitted(tf.constant(labels)).numpy(), good, rtol=1e-12)
    out = jitted(tf.constant(bad))  # no error: XLA does not run tf.debugging assertions
    assert isinstance(out, tf.Tensor) and out.shape == ()
