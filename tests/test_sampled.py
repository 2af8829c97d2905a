"""Sampled softmax and NCE against TensorFlow and float64 formulas, on every backend."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import xent
from xent import samplers as XS
from xent._core.backend import get_backend

tf = pytest.importorskip("tensorflow")

N, D, V, S = 6, 5, 40, 7
LOSSES = {"sampled_softmax": xent.sampled_softmax_loss, "nce": xent.nce_loss}


def _problem(T, hits, seed=0):
    """inputs, classifier, bias, labels [N, T], and a Sample; hits puts labels among the ids."""
    r = np.random.default_rng(seed)
    x = r.normal(size=(N, D))
    W = r.normal(size=(V, D)) * 0.5
    b = r.normal(size=V) * 0.3
    labels = r.choice(V, size=N * T, replace=False).reshape(N, T)
    pool = np.setdiff1d(np.arange(V), labels)
    ids = r.choice(pool, size=S, replace=False)
    if hits:  # three examples' labels become candidates (example 0 twice over for T > 1)
        ids[:3] = labels[[0, 2, 4], 0]
        if T > 1:
            ids[3] = labels[0, 1]
    te = r.uniform(0.05, 1.5, size=(N, T))
    se = r.uniform(0.05, 1.5, size=S)
    return x, W, b, labels, XS.Sample(ids, te, se)


def _formula(kind, x, W, b, labels, sample, remove, subtract):
    """The float64 per-example loss, written out: accidental hits are dropped columns."""
    ids, te, se = (np.asarray(a, dtype=np.float64) for a in sample)
    ids = ids.astype(int)
    T = labels.shape[1]
    out = []
    for i in range(x.shape[0]):
        t = np.array([x[i] @ W[c] + b[c] for c in labels[i]])
        s = np.array([x[i] @ W[c] + b[c] for c in ids])
        if subtract:
            t, s = t - np.log(te[i]), s - np.log(se)
        if remove:
            s = s[~np.isin(ids, labels[i])]
        if kind == "sampled_softmax":
            z = np.concatenate([t, s])
            out.append(np.log(np.sum(np.exp(z - z.max()))) + z.max() - t.mean())
        else:
            bce = lambda z, y: np.logaddexp(0, z) - y * z  # noqa: E731
            out.append(bce(t, 1 / T).sum() + bce(s, 0.0).sum())
    return np.array(out)


def _tf(kind, x, W, b, labels, sample, remove, subtract, weights):
    """TensorFlow's per-example losses and the gradients of sum(weights * loss)."""
    xv, Wv, bv = (tf.Variable(a) for a in (x, W, b))
    sv = (tf.constant(sample[0], tf.int64), tf.constant(sample[1]), tf.constant(sample[2]))
    T = labels.shape[1]
    with tf.GradientTape() as tape:
        if kind == "sampled_softmax":
            loss = tf.nn.sampled_softmax_loss(
                Wv, bv, tf.constant(labels, tf.int64), xv, S, V, T, sampled_values=sv,
                remove_accidental_hits=remove)
        else:
            loss = tf.nn.nce_loss(Wv, bv, tf.constant(labels, tf.int64), xv, S, V, T,
                                  sampled_values=sv, remove_accidental_hits=remove)
        total = tf.reduce_sum(loss * weights)
    grads = tape.gradient(total, [xv, Wv, bv])
    return loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


CONFIGS = [  # (kind, remove_accidental_hits, subtract_log_q); TF's nce always subtracts
    ("sampled_softmax", True, True), ("sampled_softmax", False, True),
    ("nce", True, True), ("nce", False, True),
]


@pytest.mark.parametrize("hits", [False, True])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("kind,remove,subtract", CONFIGS)
def test_values_match_tensorflow_and_formula(be, kind, remove, subtract, T, hits):
    x, W, b, labels, sample = _problem(T, hits)
    lab = labels[:, 0] if T == 1 and hits else labels  # [N] labels when num_true == 1
    got = LOSSES[kind](be.asarray(x), be.asarray(W), be.asarray(lab), num_sampled=S,
                       bias=be.asarray(b), num_true=T, sampled=sample,
                       remove_accidental_hits=remove, reduction="none")
    got = be.to_numpy(got)
    want_tf, _ = _tf(kind, x, W, b, labels, sample, remove, subtract, np.ones(N))
    np.testing.assert_allclose(got, _formula(kind, x, W, b, labels, sample, remove, subtract),
                               rtol=1e-12)
    np.testing.assert_allclose(got, want_tf, rtol=1e-12)


@pytest.mark.parametrize("hits", [False, True])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("kind,remove,subtract", CONFIGS)
def test_gradients_match_tensorflow(gbe, kind, remove, subtract, T, hits):
    """Gradients of sum_i w_i l_i for inputs, classifier and bias equal TensorFlow's."""
    x, W, b, labels, sample = _problem(T, hits, seed=1)
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=N)
    _, want = _tf(kind, x, W, b, labels, sample, remove, subtract, w)

    def f(x_, W_, b_):
        return LOSSES[kind](x_, W_, gbe.asarray(labels), num_sampled=S, bias=b_, num_true=T,
                            sampled=XS.Sample(*(gbe.asarray(a) for a in sample)),
                            remove_accidental_hits=remove, sample_weight=gbe.asarray(w),
                            reduction="sum")

    got = gbe.grad(f, gbe.asarray(x), gbe.asarray(W), gbe.asarray(b), argnums=(0, 1, 2))
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-12)


def test_subtract_log_q_false_matches_formula(be):
    x, W, b, labels, sample = _problem(3, True)
    got = xent.sampled_softmax_loss(be.asarray(x), be.asarray(W), be.asarray(labels),
                                    num_sampled=S, bias=be.asarray(b), num_true=3,
                                    sampled=sample, subtract_log_q=False, reduction="none")
    want = _formula("sampled_softmax", x, W, b, labels, sample, True, False)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12)
    with_q = _formula("sampled_softmax", x, W, b, labels, sample, True, True)
    assert not np.allclose(want, with_q)


def test_all_classes_sampled_is_the_full_softmax(be):
    """Uniform candidates covering every class, hits removed: exactly the full softmax CE."""
    r = np.random.default_rng(3)
    x, W, b = r.normal(size=(N, D)), r.normal(size=(V, D)), r.normal(size=V)
    labels = r.integers(0, V, size=N)
    rng = jax.random.key(0) if be.name == "jax" else 0
    got = xent.sampled_softmax_loss(be.asarray(x), be.asarray(W), be.asarray(labels),
                                    num_sampled=V, bias=be.asarray(b), sampler="uniform",
                                    rng=rng, reduction="none")
    logits = x @ W.T + b
    full = torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels),
                                             reduction="none").numpy()
    np.testing.assert_allclose(be.to_numpy(got), full, rtol=1e-12)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_classifier_rows_not_used_are_never_touched(gbe, kind):
    """Unused rows of classifier and bias are NaN: the loss and gradients stay finite,
    and the gradient is exactly zero outside labels and candidates (a gather, not [V, D] math)."""
    x, W, b, labels, sample = _problem(1, True, seed=4)
    used = np.union1d(labels.ravel(), sample.ids)
    W[np.setdiff1d(np.arange(V), used)] = np.nan
    b[np.setdiff1d(np.arange(V), used)] = np.nan

    def f(x_, W_, b_):
        return LOSSES[kind](x_, W_, gbe.asarray(labels), num_sampled=S, bias=b_,
                            sampled=sample)

    gx, gW, gb = gbe.grad(f, gbe.asarray(x), gbe.asarray(W), gbe.asarray(b), argnums=(0, 1, 2))
    assert np.all(np.isfinite(gx))
    unused = np.setdiff1d(np.arange(V), used)
    assert np.all(gW[unused] == 0) and np.all(gb[unused] == 0)
    assert np.all(np.isfinite(gW[used])) and np.any(gW[used] != 0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "sum_over_batch_size",
                                       "sum_by_nonzero_weights"])
@pytest.mark.parametrize("kind", list(LOSSES))
def test_reductions_and_sample_weight(be, kind, reduction):
    x, W, b, labels, sample = _problem(1, False, seed=5)
    w = np.array([0.5, 0.0, 2.0, 1.0, 0.0, 3.0])
    per = _formula(kind, x, W, b, labels, sample, kind == "sampled_softmax", True)
    want = {"none": w * per, "sum": np.sum(w * per), "mean": np.sum(w * per) / w.sum(),
            "sum_over_batch_size": np.sum(w * per) / N,
            "sum_by_nonzero_weights": np.sum(w * per) / 4}[reduction]
    got = LOSSES[kind](be.asarray(x), be.asarray(W), be.asarray(labels), num_sampled=S,
                       bias=be.asarray(b), sampled=sample, sample_weight=be.asarray(w),
                       reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_nan_padding_with_zero_weight_contributes_nothing(gbe, kind):
    x, W, b, labels, sample = _problem(1, True, seed=6)
    w = np.ones(N)
    w[[1, 4]] = 0.0
    x_nan = x.copy()
    x_nan[[1, 4]] = np.nan
    te = np.asarray(sample[1]).copy()
    te[1] = np.nan

    def f(x_, W_, b_):
        return LOSSES[kind](x_, W_, gbe.asarray(labels), num_sampled=S, bias=b_,
                            sampled=(sample[0], te, sample[2]), sample_weight=w,
                            reduction="sum")

    def g(x_, W_, b_):  # the same batch without the padded rows
        keep = w != 0
        return LOSSES[kind](x_, W_, gbe.asarray(labels[keep]), num_sampled=S, bias=b_,
                            sampled=(sample[0], te[keep], sample[2]), reduction="sum")

    args = (gbe.asarray(x_nan), gbe.asarray(W), gbe.asarray(b))
    gx, gW, gb = gbe.grad(f, *args, argnums=(0, 1, 2))
    hx, hW, hb = gbe.grad(g, gbe.asarray(x[w != 0]), gbe.asarray(W), gbe.asarray(b),
                          argnums=(0, 1, 2))
    assert np.all(gx[[1, 4]] == 0)
    np.testing.assert_allclose(gx[w != 0], hx, rtol=1e-12)
    np.testing.assert_allclose(gW, hW, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gb, hb, rtol=1e-12, atol=1e-15)


def test_all_zero_weights_mean_is_zero(gbe):
    x, W, b, labels, sample = _problem(1, False)
    f = lambda x_: xent.sampled_softmax_loss(  # noqa: E731
        x_, gbe.asarray(W), gbe.asarray(labels), num_sampled=S, sampled=sample,
        sample_weight=np.zeros(N))
    assert float(gbe.to_numpy(f(gbe.asarray(x)))) == 0.0
    assert np.all(gbe.grad(f, gbe.asarray(x))[0] == 0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", list(LOSSES))
def test_low_precision_accumulates_in_float32(gbe, kind, dtype):
    x, W, b, labels, sample = _problem(3, True, seed=7)
    x, W, b = x * 3, W * 3, b * 3  # logits of tens: float16 arithmetic would lose digits
    low = [gbe.asarray(a, dtype) for a in (x, W, b)]
    ref = [gbe.to_numpy(a).astype(np.float64) for a in low]  # the rounded inputs
    got = LOSSES[kind](low[0], low[1], gbe.asarray(labels), num_sampled=S, bias=low[2],
                       num_true=3, sampled=sample, reduction="none")
    assert get_backend(gbe.name).dtype_name(got.dtype) == dtype
    want = _formula(kind, *ref, labels, sample, kind == "sampled_softmax", True)
    tol = 4e-3 if dtype == "float16" else 2e-2  # only the final rounding to the dtype
    np.testing.assert_allclose(gbe.to_numpy(got).astype(np.float64), want, rtol=tol)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_extreme_logits_are_finite(be, kind):
    x, W, b, labels, sample = _problem(1, True, seed=8)
    got = LOSSES[kind](be.asarray(x * 1e3), be.asarray(W * 10), be.asarray(labels),
                       num_sampled=S, sampled=sample, reduction="none")
    want = _formula(kind, x * 1e3, W * 10, np.zeros(V), labels, sample,
                    kind == "sampled_softmax", True)
    np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-12)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_sampling_is_seeded_and_sampled_makes_it_deterministic(be, kind):
    x, W, b, labels, _ = _problem(1, False, seed=9)
    key = (lambda s: jax.random.key(s)) if be.name == "jax" else (lambda s: s)
    args = (be.asarray(x), be.asarray(W), be.asarray(labels))
    a = LOSSES[kind](*args, num_sampled=S, rng=key(1), reduction="none")
    c = LOSSES[kind](*args, num_sampled=S, rng=key(2), reduction="none")
    # The built-in path is the log-uniform sampler with unique draws, labels' library.
    sample = XS.LogUniformSampler(V).sample(be.asarray(labels), S, rng=key(1))
    d = LOSSES[kind](*args, num_sampled=S, sampled=sample, reduction="none")
    np.testing.assert_array_equal(be.to_numpy(a), be.to_numpy(d))
    assert not np.allclose(be.to_numpy(a), be.to_numpy(c))
    want = _formula(kind, x, W, np.zeros(V), labels, tuple(be.to_numpy(s) for s in sample),
                    kind == "sampled_softmax", True)
    np.testing.assert_allclose(be.to_numpy(a), want, rtol=1e-6)  # float32 expected counts


def test_learned_sampler_object_is_used(be):
    x, W, b, labels, _ = _problem(1, False, seed=10)
    s = XS.LearnedUnigramSampler(V)
    s.update(labels)
    rng = jax.random.key(3) if be.name == "jax" else 3
    got = xent.nce_loss(be.asarray(x), be.asarray(W), be.asarray(labels), num_sampled=S,
                        sampler=s, rng=rng, reduction="none")
    sample = s.sample(be.asarray(labels), S, rng=jax.random.key(3) if be.name == "jax" else 3)
    want = xent.nce_loss(be.asarray(x), be.asarray(W), be.asarray(labels), num_sampled=S,
                         sampled=sample, reduction="none")
    np.testing.assert_array_equal(be.to_numpy(got), be.to_numpy(want))


def test_jax_jit_and_grad_with_a_key():
    x, W, b, labels, _ = _problem(1, False, seed=11)
    jnp = jax.numpy

    def loss(x_, W_, key):
        return xent.sampled_softmax_loss(x_, W_, jnp.asarray(labels), num_sampled=S, rng=key)

    args = (jnp.asarray(x), jnp.asarray(W), jax.random.key(5))
    np.testing.assert_allclose(jax.jit(loss)(*args), loss(*args), rtol=1e-12)
    gj = jax.jit(jax.grad(loss, argnums=(0, 1)))(*args)
    ge = jax.grad(loss, argnums=(0, 1))(*args)
    for a, c in zip(gj, ge):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_bad_input_is_a_clear_error(be, kind):
    x, W, b, labels, sample = _problem(1, False)
    f = LOSSES[kind]
    X, Wb = be.asarray(x), be.asarray(W)
    rng = jax.random.key(0) if be.name == "jax" else 0
    bad = labels.copy()
    bad[2, 0] = V
    with pytest.raises(ValueError, match=rf"labels must be class indices in \[0, {V}\), "
                                         r"got 40 at position \(2, 0\)"):
        f(X, Wb, be.asarray(bad), num_sampled=S, rng=rng)
    with pytest.raises(ValueError, match=rf"num_sampled={V + 1} is larger than num_classes={V}"):
        f(X, Wb, be.asarray(labels), num_sampled=V + 1, rng=rng)
    with pytest.raises(ValueError, match=r"labels must have shape \(6, num_true=1\) or \(6,\), "
                                         r"got \(6, 3\) \(labels have 3 columns: pass num_true=3"):
        f(X, Wb, be.asarray(np.tile(labels, 3)), num_sampled=S, rng=rng)
    with pytest.raises(ValueError, match=r"labels must have shape \(6, num_true=2\), got \(6,\)"):
        f(X, Wb, be.asarray(labels[:, 0]), num_sampled=S, num_true=2, rng=rng)
    with pytest.raises(ValueError, match=r"sampled.ids must have shape \(7,\), got \(6,\)"):
        f(X, Wb, be.asarray(labels), num_sampled=S, sampled=(sample[0][:6], *sample[1:]))
    with pytest.raises(ValueError, match=r"sampled.true_expected_count must have shape "
                                         r"\(6, 1\), got \(3, 1\)"):
        f(X, Wb, be.asarray(labels), num_sampled=S, sampled=(sample[0], sample[1][:3],
                                                               sample[2]))
    with pytest.raises(ValueError, match=r"sampled.sampled_expected_count must have shape"):
        f(X, Wb, be.asarray(labels), num_sampled=S, sampled=(*sample[:2], sample[2][:3]))
    with pytest.raises(TypeError, match="sampled must be an xent.samplers.Sample or a 3-tuple"):
        f(X, Wb, be.asarray(labels), num_sampled=S, sampled=sample[:2])
    with pytest.raises(ValueError, match=r"classifier must have shape \(num_classes, 5\)"):
        f(X, be.asarray(W[:, :4]), be.asarray(labels), num_sampled=S, rng=rng)
    with pytest.raises(ValueError, match=r"bias must have shape \(40,\)"):
        f(X, Wb, be.asarray(labels), bias=be.asarray(b[:5]), num_sampled=S, rng=rng)
    with pytest.raises(ValueError, match="sampler draws from 10 classes but classifier has 40"):
        f(X, Wb, be.asarray(labels), num_sampled=S, sampler=XS.UniformSampler(10), rng=rng)
    with pytest.raises(ValueError, match="sampler must be 'log_uniform', 'uniform'"):
        f(X, Wb, be.asarray(labels), num_sampled=S, sampler="zipf", rng=rng)
    with pytest.raises(ValueError, match="reduction must be one of"):
        f(X, Wb, be.asarray(labels), num_sampled=S, rng=rng, reduction="avg")
    with pytest.raises(TypeError, match="labels must hold integer class indices"):
        f(X, Wb, be.asarray(labels.astype(float)), num_sampled=S, rng=rng)
    if be.name != "numpy":
        other = torch.as_tensor(labels) if be.name == "jax" else jax.numpy.asarray(labels)
        with pytest.raises(TypeError, match="labels is a .* but inputs is a"):
            f(X, Wb, other, num_sampled=S, rng=rng)


@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("kind", list(LOSSES))
def test_torch_fast_path_equals_the_composition(monkeypatch, kind, T, given):
    """torch's fused sampled-columns node gives the plain composition's values and gradients,
    both with its binary-search hit removal (built-in unique sampler) and the [N, S] mask."""
    import contextlib

    from xent._kernels import table

    r = np.random.default_rng(12)
    Vs = 10  # 8 of 10 classes sampled: every example has accidental hits
    x, W, b = r.normal(size=(N, D)), r.normal(size=(Vs, D)), r.normal(size=Vs)
    labels = torch.as_tensor(r.integers(0, Vs, size=(N, T)))
    sampler = XS.UniformSampler(Vs)
    sample = sampler.sample(labels, 8, rng=0) if given else None
    w = torch.as_tensor(r.uniform(0.5, 2, size=N))

    def run(fused):
        args = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
        with contextlib.nullcontext() if fused else table.disabled():
            loss = LOSSES[kind](*args[:2], labels, num_sampled=8, bias=args[2], num_true=T,
                                sampler=sampler, sampled=sample, rng=0,
                                remove_accidental_hits=True, reduction="none")
        grads = torch.autograd.grad((loss * w).sum(), args)
        return [loss.detach().numpy()] + [g.numpy() for g in grads]

    for fast, plain in zip(run(True), run(False)):
        np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_empty_batch(be, kind):
    W = np.random.default_rng(0).normal(size=(V, D))
    rng = jax.random.key(0) if be.name == "jax" else 0
    args = (be.asarray(np.zeros((0, D))), be.asarray(W), be.asarray(np.zeros(0, np.int64)))
    assert float(be.to_numpy(LOSSES[kind](*args, num_sampled=S, rng=rng))) == 0.0
    assert be.to_numpy(LOSSES[kind](*args, num_sampled=S, rng=rng, reduction="none")).shape == (0,)


def test_repeated_candidates_are_all_removed_unlike_tensorflow(be):
    """A non-unique sample whose repeated id is a label: xent masks every repeat (the
    documented difference); TensorFlow masks only the last one."""
    x, W, b, labels, sample = _problem(1, False, seed=13)
    ids = np.asarray(sample.ids).copy()
    ids[[1, 4]] = labels[0, 0]  # example 0's label drawn twice
    rep = XS.Sample(ids, *sample[1:])
    got = be.to_numpy(xent.sampled_softmax_loss(
        be.asarray(x), be.asarray(W), be.asarray(labels), num_sampled=S, bias=be.asarray(b),
        sampled=rep, reduction="none"))
    np.testing.assert_allclose(got, _formula("sampled_softmax", x, W, b, labels, rep, True, True),
                               rtol=1e-12)
    want_tf, _ = _tf("sampled_softmax", x, W, b, labels, rep, True, True, np.ones(N))
    np.testing.assert_allclose(got[1:], want_tf[1:], rtol=1e-12)
    assert got[0] < want_tf[0] - 1e-6  # TF kept one copy of the hit in the softmax
