"""Candidate samplers: distributions, expected counts (formulas and TensorFlow), seeds."""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest
import torch
from scipy import stats

from xent import samplers as XS
from xent._core.backend import get_backend

tf = pytest.importorskip("tensorflow")

V_SMALL = 20
COUNTS = np.array([5, 0, 1, 3, 8, 2, 0, 4, 1, 6, 9, 1, 2, 7, 3, 1, 0, 2, 5, 4], dtype=np.float64)


def _rng_for(be, seed):
    return jax.random.key(seed) if be.name == "jax" else seed


def _p_log_uniform(V):
    k = np.arange(V, dtype=np.float64)
    return (np.log(k + 2) - np.log(k + 1)) / np.log(V + 1)


def _learned_after(V, seen):
    c = np.ones(V)
    np.add.at(c, np.asarray(seen).ravel(), 1)
    return c


LEARNED_SEEN = np.array([[3, 3], [3, 7], [19, 19]])

SAMPLERS = {
    "log_uniform": (lambda: XS.LogUniformSampler(V_SMALL), lambda: _p_log_uniform(V_SMALL)),
    "uniform": (lambda: XS.UniformSampler(V_SMALL), lambda: np.full(V_SMALL, 1 / V_SMALL)),
    "unigram": (lambda: XS.UnigramSampler(COUNTS, distortion=0.75),
                lambda: COUNTS**0.75 / np.sum(COUNTS**0.75)),
    "learned": (lambda: _learned(LEARNED_SEEN),
                lambda: _learned_after(V_SMALL, LEARNED_SEEN) / (V_SMALL + LEARNED_SEEN.size)),
}


def _learned(seen):
    s = XS.LearnedUnigramSampler(V_SMALL)
    s.update(np.asarray(seen))
    return s


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_probability_matches_formula(be, name):
    make, p = SAMPLERS[name]
    got = be.to_numpy(make().probability(be.asarray(np.arange(V_SMALL))))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, p(), rtol=2e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_draws_follow_the_distribution(be, name):
    """Chi-square goodness of fit of 20,000 independent draws (unique=False)."""
    make, p = SAMPLERS[name]
    sampler, probs = make(), p()
    labels = be.asarray(np.zeros((1, 1), dtype=np.int64))
    ids = be.to_numpy(sampler.sample(labels, 20000, unique=False, rng=_rng_for(be, 1)).ids)
    observed = np.bincount(ids, minlength=V_SMALL)
    assert observed.shape == (V_SMALL,)
    assert np.all(observed[probs == 0] == 0)
    support = probs > 0
    expected = probs[support] * ids.size
    assert stats.chisquare(observed[support], expected).pvalue > 1e-4
    # The test has power: the same draws are far from the uniform distribution
    # (for the uniform sampler: from the log-uniform one).
    other = _p_log_uniform(V_SMALL) if name == "uniform" else np.full(V_SMALL, 1 / V_SMALL)
    assert stats.chisquare(observed, other * ids.size).pvalue < 1e-6


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_unique_samples_and_expected_counts(be, name):
    make, p = SAMPLERS[name]
    sampler, probs = make(), p()
    labels = np.array([[0, 4], [10, 3], [13, 19]])
    S = 8
    out = sampler.sample(be.asarray(labels), S, unique=True, rng=_rng_for(be, 5))
    ids = be.to_numpy(out.ids)
    assert ids.shape == (S,) and len(set(ids.tolist())) == S
    assert np.all((ids >= 0) & (ids < V_SMALL)) and np.all(probs[ids] > 0)
    assert get_backend(be.name).dtype_name(out.ids.dtype) == "int64"
    te, se = be.to_numpy(out.true_expected_count), be.to_numpy(out.sampled_expected_count)
    assert te.shape == labels.shape and se.shape == (S,) and se.dtype == np.float32
    # Recover num_tries from one count, then every count must follow the formula with it.
    k = int(np.argmin(np.abs(probs[ids] - 0.05)))
    tries = round(math.log1p(-float(se[k])) / math.log1p(-probs[ids[k]]))
    assert tries >= S
    if tries == S:
        want_se, want_te = S * probs[ids], S * probs[labels]
    else:
        want_se = -np.expm1(tries * np.log1p(-probs[ids]))
        want_te = -np.expm1(tries * np.log1p(-probs[labels]))
    np.testing.assert_allclose(se, want_se, rtol=3e-6)
    np.testing.assert_allclose(te, want_te, rtol=3e-6)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_non_unique_expected_count_is_num_sampled_times_p(be, name):
    make, p = SAMPLERS[name]
    labels = np.array([[0], [7], [12]])
    out = make().sample(be.asarray(labels), 8, unique=False, rng=_rng_for(be, 2))
    ids = be.to_numpy(out.ids)
    np.testing.assert_allclose(be.to_numpy(out.sampled_expected_count), 8 * p()[ids], rtol=2e-7)
    np.testing.assert_allclose(be.to_numpy(out.true_expected_count), 8 * p()[labels], rtol=2e-7)


def test_unique_without_repeats_uses_num_sampled_times_p(be):
    """TensorFlow's shortcut: when no draw repeats, the count is num_sampled * P."""
    out = XS.UniformSampler(10**6).sample(be.asarray(np.array([[3]])), 4, rng=_rng_for(be, 0))
    np.testing.assert_array_equal(be.to_numpy(out.sampled_expected_count),
                                  np.full(4, np.float32(1e-6) * 4, np.float32))


_FRESH_SEEDS = itertools.count(1000)


def _tf_sampler(name, labels, S, unique, seed):
    tc = tf.constant(labels, tf.int64)
    T = labels.shape[1]
    if name == "log_uniform":
        return tf.random.log_uniform_candidate_sampler(tc, T, S, unique, V_SMALL, seed=seed)
    if name == "uniform":
        return tf.random.uniform_candidate_sampler(tc, T, S, unique, V_SMALL, seed=seed)
    if name == "unigram":
        return tf.random.fixed_unigram_candidate_sampler(
            tc, T, S, unique, V_SMALL, unigrams=COUNTS.tolist(), distortion=0.75, seed=seed)
    # The learned sampler: TF keeps its counts in the op's kernel (one per set of
    # attributes): a fresh seed gives a fresh kernel, and a first call with the
    # same attributes updates its counts with its true classes.
    seed = next(_FRESH_SEEDS)
    tf.random.learned_unigram_candidate_sampler(
        tf.constant(LEARNED_SEEN, tf.int64), T, S, unique, V_SMALL, seed=seed)
    return tf.random.learned_unigram_candidate_sampler(tc, T, S, unique, V_SMALL, seed=seed)


@pytest.mark.parametrize("unique", [False, True])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_expected_counts_match_tensorflow(be, name, unique):
    """Given TensorFlow's ids (and its num_tries), xent's counts are TensorFlow's."""
    labels = np.array([[1, 4], [10, 3], [13, 19]])
    S = 8
    tf_ids, tf_te, tf_se = (t.numpy() for t in _tf_sampler(name, labels, S, unique, seed=11))
    sampler = SAMPLERS[name][0]()
    b = get_backend(be.name)
    p_ids = sampler.probability(be.asarray(tf_ids))
    p_true = sampler.probability(be.asarray(labels))
    if not unique:
        np.testing.assert_allclose(S * be.to_numpy(p_ids), tf_se, rtol=2e-7)
    pids = be.to_numpy(p_ids).astype(np.float64)
    tries = S
    if unique and not np.allclose(tf_se, S * pids, rtol=1e-6):
        k = int(np.argmax(pids))
        tries = round(math.log1p(-float(tf_se[k])) / math.log1p(-pids[k]))
    np.testing.assert_allclose(be.to_numpy(XS._expected_count(b, p_ids, S, tries)), tf_se,
                               rtol=2e-6)
    np.testing.assert_allclose(be.to_numpy(XS._expected_count(b, p_true, S, tries)), tf_te,
                               rtol=2e-6)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_seeds_reproduce(be, name):
    make = SAMPLERS[name][0]
    labels = be.asarray(np.array([[2], [5]]))
    a = make().sample(labels, 8, rng=_rng_for(be, 7))
    b = make().sample(labels, 8, rng=_rng_for(be, 7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(be.to_numpy(x), be.to_numpy(y))
    draws = {tuple(be.to_numpy(make().sample(labels, 8, rng=_rng_for(be, s)).ids))
             for s in range(8)}
    assert len(draws) > 1


@pytest.mark.parametrize("kind", ["numpy", "torch", "jax", "tensorflow", "tf_seed"])
def test_every_rng_type_is_accepted(be, kind):
    rngs = {"numpy": lambda: np.random.default_rng(3),
            "torch": lambda: torch.Generator().manual_seed(3),
            "jax": lambda: jax.random.key(3),
            "tensorflow": lambda: tf.random.Generator.from_seed(3),
            "tf_seed": lambda: tf.constant([3, 4], tf.int64)}
    labels = be.asarray(np.array([[2], [5]]))
    a = XS.LogUniformSampler(50).sample(labels, 10, rng=rngs[kind]())
    b = XS.LogUniformSampler(50).sample(labels, 10, rng=rngs[kind]())
    assert type(a.ids) is type(labels)
    np.testing.assert_array_equal(be.to_numpy(a.ids), be.to_numpy(b.ids))
    assert len(set(be.to_numpy(a.ids).tolist())) == 10


def test_jax_sampler_under_jit_equals_eager():
    s = XS.LogUniformSampler(1000)
    labels = jax.numpy.asarray(np.array([[1], [2], [3]]))
    jitted = jax.jit(lambda lab, key: s.sample(lab, 64, rng=key))(labels, jax.random.key(4))
    eager = s.sample(labels, 64, rng=jax.random.key(4))
    for x, y in zip(jitted, eager):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert len(set(np.asarray(jitted.ids).tolist())) == 64


def test_jax_needs_a_key():
    with pytest.raises(ValueError, match="rng must be given for JAX"):
        XS.UniformSampler(10).sample(jax.numpy.asarray(np.array([1])), 2)


def test_torch_default_rng_follows_manual_seed():
    labels = torch.tensor([[1]])
    torch.manual_seed(0)
    a = XS.LogUniformSampler(100).sample(labels, 5).ids
    torch.manual_seed(0)
    b = XS.LogUniformSampler(100).sample(labels, 5).ids
    assert torch.equal(a, b)


def test_unigram_from_vocabulary_file(tmp_path):
    path = tmp_path / "vocab.csv"
    path.write_text("".join(f"word{i},x,{c:g}\n" for i, c in enumerate(COUNTS)))
    from_file = XS.UnigramSampler(str(path), distortion=0.75)
    from_counts = XS.UnigramSampler(COUNTS, distortion=0.75)
    np.testing.assert_array_equal(from_file.probabilities(), from_counts.probabilities())
    bad = tmp_path / "bad.csv"
    bad.write_text("a,1\nb,many\n")
    with pytest.raises(ValueError, match="line 2.*must be a count, got 'many'"):
        XS.UnigramSampler(str(bad))


def test_unigram_reserved_ids_and_zero_counts_are_never_drawn(be):
    s = XS.UnigramSampler([1.0, 0.0, 2.0], num_reserved_ids=2)
    np.testing.assert_allclose(s.probabilities(), [0, 0, 1 / 3, 0, 2 / 3], rtol=1e-7)
    out = s.sample(be.asarray(np.array([[2]])), 2, rng=_rng_for(be, 0))
    assert sorted(be.to_numpy(out.ids).tolist()) == [2, 4]
    with pytest.raises(ValueError, match="num_sampled=3 is larger than the 2 classes"):
        s.sample(be.asarray(np.array([[2]])), 3, rng=_rng_for(be, 0))


def test_learned_unigram_update_counts_repeats():
    s = XS.LearnedUnigramSampler(5)
    s.update(torch.tensor([[1, 1], [4, 1]]))
    np.testing.assert_array_equal(s.counts, [1, 4, 1, 1, 2])
    np.testing.assert_allclose(s.probabilities(), np.array([1, 4, 1, 1, 2]) / 9, rtol=1e-7)
    with pytest.raises(ValueError, match=r"class ids in \[0, 5\), got 5 at flat position 1"):
        s.update(np.array([0, 5]))
    with pytest.raises(TypeError, match="integer class ids"):
        s.update(np.array([0.5]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        XS.LogUniformSampler(0)
    with pytest.raises(ValueError, match="non-negative, got -1.0 at position 1"):
        XS.UnigramSampler([1.0, -1.0])
    with pytest.raises(ValueError, match="num_sampled=11 is larger than the 10 classes"):
        XS.UniformSampler(10).sample(np.array([1]), 11, rng=0)
    with pytest.raises(ValueError, match="num_sampled must be at least 1, got 0"):
        XS.UniformSampler(10).sample(np.array([1]), 0, rng=0)
    with pytest.raises(TypeError, match="rng must be None, an int seed"):
        XS.UniformSampler(10).sample(np.array([1]), 2, rng="seed")
    # Non-unique sampling may ask for more candidates than classes.
    assert XS.UniformSampler(3).sample(np.array([1]), 7, unique=False, rng=0).ids.shape == (7,)


def test_num_tries_counts_the_draws_up_to_the_last_new_id():
    """Replay the NumPy stream by hand: ids are the first S distinct draws in order, and
    the expected counts use exactly the number of draws that took (TensorFlow's num_tries)."""
    V, S, seed = 50, 48, 4
    out = XS.UniformSampler(V).sample(np.array([[0]]), S, rng=seed)
    u = np.random.default_rng(seed).random(1000)
    ids, tries = [], 0
    for k in np.floor(u * V).astype(int):
        tries += 1
        if k not in ids:
            ids.append(k)
        if len(ids) == S:
            break
    assert tries > 2 * S  # the sample needed more than one chunk of draws
    np.testing.assert_array_equal(out.ids, ids)
    want = -np.expm1(tries * np.log1p(-np.float32(1 / V)))
    np.testing.assert_allclose(out.sampled_expected_count, np.full(S, want), rtol=1e-6)
    off_by_one = -np.expm1((tries + 1) * np.log1p(-1 / V))
    assert not np.allclose(out.sampled_expected_count, off_by_one, rtol=1e-6)
