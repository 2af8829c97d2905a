"""xent.choose: each label situation on every backend, the suggested weights against
their formulas, and every recommended ``code`` executed on real arrays (its value checked
against a float64 formula and PyTorch); the description form; the generated guide."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent
from xent._guide import render as _guide
from xent._guide import table as T

HAS_LINEAR = hasattr(xent, "linear_cross_entropy")


def _softplus(x):
    return np.logaddexp(0, x)


def _log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


# Weight lists in ``code`` reach torch through torch.as_tensor, i.e. float32: 1e-7 relative.
LIST_RTOL = 1e-6


def run(code, be, logits=None, labels=None, **arrays):
    """Execute a recommendation's code with arrays of backend ``be``; a float."""
    env = {"xent": xent}
    if be.name == "tensorflow":  # a TF user's code has tf imported
        import tensorflow as tf

        env["tf"] = tf
    if logits is not None:
        env["logits"] = be.asarray(logits)
    if labels is not None:
        env["labels"] = be.asarray(labels)
    env.update({k: be.asarray(v) for k, v in arrays.items()})
    out = eval(code, env)
    value = be.to_numpy(out)
    assert np.shape(value) == ()
    return float(value)


def counts_labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_recommendation_fields_are_the_contract():
    assert [f.name for f in dataclasses.fields(xent.Recommendation)] == [
        "function", "kwargs", "reason", "code", "alternatives", "equivalents"]


# -- binary -------------------------------------------------------------------------------

def test_binary_imbalanced_pos_weight(be, rng):
    y = np.array([1] * 4 + [0] * 36)
    r = xent.choose(be.asarray(y))
    assert r.function == "sigmoid_cross_entropy"
    assert r.kwargs == {"pos_weight": 9.0}  # negatives / positives = 36 / 4
    assert r.code == "xent.sigmoid_cross_entropy(logits, labels, pos_weight=9.0)"
    assert "negatives" in r.reason and "ratio 9" in r.reason
    assert r.equivalents.tensorflow.startswith("tf.nn.weighted_cross_entropy_with_logits")
    z = rng.normal(size=40)
    got = run(r.code, be, z, y)
    want = np.mean(9.0 * y * _softplus(-z) + (1 - y) * _softplus(z))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    peer = F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y, dtype=torch.float64),
                                              pos_weight=torch.tensor(9.0))
    np.testing.assert_allclose(got, peer.item(), rtol=1e-10)


@pytest.mark.parametrize("y, what", [
    (np.array([0, 1] * 10), "0/1 labels"),
    (np.array([True, False] * 10), "0/1 labels"),
    (np.array([0.2, 0.7, 1.0, 0.0] * 5), "soft binary"),
])
def test_binary_balanced_needs_no_weights(be, rng, y, what):
    r = xent.choose(be.asarray(y))
    assert (r.function, r.kwargs) == ("sigmoid_cross_entropy", {})
    assert r.code == "xent.sigmoid_cross_entropy(logits, labels)"
    assert what in r.reason and "no weights needed" in r.reason
    z = rng.normal(size=len(y))
    yf = y.astype(np.float64)
    np.testing.assert_allclose(run(r.code, be, z, y),
                               np.mean(yf * _softplus(-z) + (1 - yf) * _softplus(z)), rtol=1e-10)


def test_binary_column_keeps_its_shape(be, rng):
    y = np.array([[0], [1], [1], [0]])
    r = xent.choose(be.asarray(y))
    assert r.function == "sigmoid_cross_entropy"
    assert "[4, 1]" in r.reason and "not a broadcast" in r.reason
    z = rng.normal(size=(4, 1))
    np.testing.assert_allclose(run(r.code, be, z, y),
                               np.mean(y * _softplus(-z) + (1 - y) * _softplus(z)), rtol=1e-10)


# -- exclusive classes -------------------------------------------------------------------------

def test_multiclass_imbalanced_class_weight(be, rng):
    counts = np.array([20, 10, 5, 4, 1])
    y = rng.permutation(counts_labels(counts))
    r = xent.choose(be.asarray(y))
    assert r.function == "sparse_softmax_cross_entropy"
    want_w = 40 / (5 * counts)  # N / (C * count)
    np.testing.assert_allclose(r.kwargs["class_weight"], want_w, rtol=1e-3)
    assert "inverse frequency" in r.reason
    z = rng.normal(size=(40, 5))
    w = np.asarray(r.kwargs["class_weight"])
    nll = -_log_softmax(z)[np.arange(40), y]
    want = (w[y] * nll).sum() / w[y].sum()
    got = run(r.code, be, z, y)
    np.testing.assert_allclose(got, want, rtol=LIST_RTOL)
    peer = F.cross_entropy(torch.tensor(z), torch.tensor(y), weight=torch.tensor(w))
    np.testing.assert_allclose(got, peer.item(), rtol=LIST_RTOL)


def test_multiclass_balanced_plain_call(be, rng):
    y = np.tile(np.arange(4), 5)
    r = xent.choose(be.asarray(y))
    assert (r.function, r.kwargs, r.code) == (
        "sparse_softmax_cross_entropy", {}, "xent.sparse_softmax_cross_entropy(logits, labels)")
    assert r.alternatives == ("softmax_cross_entropy",)
    assert r.equivalents.pytorch == "torch.nn.functional.cross_entropy(logits, labels)"
    z = rng.normal(size=(20, 4))
    np.testing.assert_allclose(run(r.code, be, z, y),
                               np.mean(-_log_softmax(z)[np.arange(20), y]), rtol=1e-10)


def test_float_class_indices_are_cast_in_the_code(be, rng):
    y = np.tile(np.arange(3), 4).astype(np.float32)
    r = xent.choose(be.asarray(y))
    assert r.function == "sparse_softmax_cross_entropy"
    want = {"torch": ".long()", "tensorflow": "tf.cast(labels, 'int64')"}
    assert want.get(be.name, ".astype('int64')") in r.code
    z = rng.normal(size=(12, 3))
    yi = y.astype(np.int64)
    np.testing.assert_allclose(run(r.code, be, z, y),
                               np.mean(-_log_softmax(z)[np.arange(12), yi]), rtol=1e-10)


def test_sequence_labels(be, rng):
    y = rng.integers(0, 6, size=(3, 7))
    y[0, :6] = np.arange(6)
    r = xent.choose(be.asarray(y), imbalanced=False)
    assert (r.function, r.kwargs) == ("sparse_softmax_cross_entropy", {})
    assert "[3, 7]" in r.reason
    z = rng.normal(size=(3, 7, 6))
    lp = _log_softmax(z)
    want = np.mean(-np.take_along_axis(lp, y[..., None], -1))
    np.testing.assert_allclose(run(r.code, be, z, y), want, rtol=1e-10)


def test_padding_value_becomes_ignore_index(be, rng):
    y = np.array([0, 1, 2, -100, 1, 0, -100, 2, 1, 0, 2, 1])
    r = xent.choose(be.asarray(y), imbalanced=False)
    assert r.kwargs == {"ignore_index": -100}
    assert "padding" in r.reason
    z = rng.normal(size=(12, 3))
    keep = y >= 0
    want = np.mean(-_log_softmax(z[keep])[np.arange(keep.sum()), y[keep]])
    np.testing.assert_allclose(run(r.code, be, z, y), want, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_one_hot_uses_the_indices(be, rng, dtype):
    idx = np.tile(np.arange(4), 3)
    y = np.eye(4)[idx].astype(dtype)
    r = xent.choose(be.asarray(y))
    assert r.function == "sparse_softmax_cross_entropy"
    if be.name == "tensorflow":  # TF tensors have no .argmax; tf.argmax has no bool kernel
        idx_expr = ("tf.argmax(tf.cast(labels, 'int64'), -1)" if dtype == "bool"
                    else "tf.argmax(labels, -1)")
    else:  # no bool argmax in torch
        idx_expr = "labels.long().argmax(-1)" if (be.name, dtype) == ("torch", "bool") \
            else "labels.argmax(-1)"
    assert r.code == f"xent.sparse_softmax_cross_entropy(logits, {idx_expr})"
    assert "one-hot" in r.reason
    z = rng.normal(size=(12, 4))
    np.testing.assert_allclose(run(r.code, be, z, y),
                               np.mean(-_log_softmax(z)[np.arange(12), idx]), rtol=1e-10)


def test_soft_labels(be, rng):
    e = rng.random((30, 3)) + 0.1
    e[:, 0] += 3.0  # class 0 holds most of the mass
    y = e / e.sum(1, keepdims=True)
    r = xent.choose(be.asarray(y))
    assert r.function == "softmax_cross_entropy"
    w = np.asarray(r.kwargs["class_weight"])
    np.testing.assert_allclose(w, y.sum() / (3 * y.sum(0)), rtol=1e-3)
    z = rng.normal(size=(30, 3))
    lp = _log_softmax(z)
    want = -(w * y * lp).sum() / (w * y).sum()
    got = run(r.code, be, z, y)
    np.testing.assert_allclose(got, want, rtol=LIST_RTOL)
    peer = F.cross_entropy(torch.tensor(z), torch.tensor(y), weight=torch.tensor(w),
                           reduction="sum") / (w * y).sum()
    np.testing.assert_allclose(got, peer.item(), rtol=LIST_RTOL)


def test_soft_labels_with_a_few_bad_rows_are_noted():
    y = np.full((20, 2), 0.5)
    y[3] = [0.5, 0.4]
    r = xent.choose(y)
    assert r.function == "softmax_cross_entropy"
    assert "1 rows do not sum to 1 (row 3 sums to 0.9)" in r.reason


# -- independent labels ------------------------------------------------------------------------

def test_multilabel_pos_weight_per_class(be, rng):
    y = np.zeros((20, 3), dtype=np.int64)
    y[:10, 0] = 1
    y[:2, 1] = 1
    y[5:9, 2] = 1
    r = xent.choose(be.asarray(y))
    assert r.function == "sigmoid_cross_entropy"
    np.testing.assert_allclose(r.kwargs["pos_weight"], [10 / 10, 18 / 2, 16 / 4])
    z = rng.normal(size=(20, 3))
    pw = np.asarray(r.kwargs["pos_weight"])
    want = np.mean(pw * y * _softplus(-z) + (1 - y) * _softplus(z))
    got = run(r.code, be, z, y)
    np.testing.assert_allclose(got, want, rtol=LIST_RTOL)
    peer = F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y, dtype=torch.float64),
                                              pos_weight=torch.tensor(pw))
    np.testing.assert_allclose(got, peer.item(), rtol=LIST_RTOL)


def test_multilabel_soft_and_class_without_positives(be, rng):
    y = rng.uniform(0.1, 0.6, size=(10, 3))
    y[:, 2] = 0.0
    r = xent.choose(be.asarray(y), imbalanced=True)
    assert r.function == "sigmoid_cross_entropy"
    assert "independent soft labels" in r.reason
    assert r.kwargs["pos_weight"][2] == 1.0  # nothing to balance
    z = rng.normal(size=(10, 3))
    pw = np.asarray(r.kwargs["pos_weight"])
    np.testing.assert_allclose(run(r.code, be, z, y),
                               np.mean(pw * y * _softplus(-z) + (1 - y) * _softplus(z)),
                               rtol=LIST_RTOL)


def test_lists_are_read_like_numpy():
    r = xent.choose([[1, 0, 1], [0, 1, 1], [0, 0, 1]])
    assert r == xent.choose(np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1]]))
    assert r.function == "sigmoid_cross_entropy"


# -- huge class counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("one_hot", [False, True])
def test_huge_vocabulary_recommends_linear_cross_entropy(be, rng, one_hot):
    V = T.HUGE_CLASSES + 7
    idx = np.array([3, V - 1, 17, 5000])
    y = idx
    if one_hot:
        y = np.zeros((4, V), dtype=np.float32)
        y[np.arange(4), idx] = 1
    r = xent.choose(be.asarray(y))
    assert r.function == "linear_cross_entropy"
    assert r.kwargs == {}
    assert {"sampled_softmax_loss", "sparse_softmax_cross_entropy"} <= set(r.alternatives)
    assert "training only" in r.reason.lower() and "evaluate with the exact loss" in r.reason
    idx_expr = "labels" if not one_hot else (
        "tf.argmax(labels, -1)" if be.name == "tensorflow" else "labels.argmax(-1)")
    assert r.code == f"xent.linear_cross_entropy(inputs, classifier, {idx_expr})"
    assert r.equivalents.pytorch == ("torch.nn.functional.linear_cross_entropy(inputs, "
                                     f"classifier, {'labels.argmax(-1)' if one_hot else 'labels'})")
    if not HAS_LINEAR:
        pytest.skip("xent.linear_cross_entropy is built on another branch")
    x, W = rng.normal(size=(4, 3)), rng.normal(size=(V, 3)) * 0.1
    want = np.mean(-_log_softmax(x @ W.T)[np.arange(4), idx])
    np.testing.assert_allclose(run(r.code, be, labels=y, inputs=x, classifier=W), want,
                               rtol=1e-8)


def test_num_classes_sets_the_count_and_can_make_it_huge():
    assert xent.choose(np.array([0, 1, 2]), num_classes=T.HUGE_CLASSES).function == \
        "linear_cross_entropy"
    r = xent.choose(np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2]), num_classes=4, imbalanced=True)
    w = r.kwargs["class_weight"]  # class 3 is absent: it gets the largest weight
    assert len(w) == 4 and w[3] == max(w)
    np.testing.assert_allclose(w[:3], 10 / (4 * np.array([3, 3, 4])), rtol=1e-3)


# -- the imbalance threshold ------------------------------------------------------------------------

@pytest.mark.parametrize("neg, weighted", [(25, True), (24, False)])
def test_imbalance_threshold_is_the_tables(neg, weighted):
    y = np.array([1] * 5 + [0] * neg)  # ratio 5.0 and 4.8
    assert ("pos_weight" in xent.choose(y).kwargs) is weighted
    assert T.IMBALANCE_RATIO == 5.0


def test_imbalanced_flag_forces_or_suppresses():
    y = np.array([1] * 2 + [0] * 38)
    assert xent.choose(y, imbalanced=False).kwargs == {}
    assert xent.choose(np.array([0, 1] * 4), imbalanced=True).kwargs == {"pos_weight": 1.0}


def test_single_outcome_cannot_be_balanced():
    r = xent.choose(np.zeros(8, dtype=int))
    assert r.kwargs == {} and "Only one outcome" in r.reason


# -- from a description -------------------------------------------------------------------------------

DESCRIBED = [
    (dict(task="binary"), "sigmoid_cross_entropy", "binary"),
    (dict(num_classes=2), "sigmoid_cross_entropy", "binary"),
    (dict(task="multi-class", num_classes=10), "sparse_softmax_cross_entropy", "indices"),
    (dict(num_classes=10), "sparse_softmax_cross_entropy", "indices"),
    (dict(exclusive=True), "sparse_softmax_cross_entropy", "indices"),
    (dict(task="one_hot"), "softmax_cross_entropy", "one_hot"),  # rows as they are
    (dict(task="soft"), "softmax_cross_entropy", "soft"),
    (dict(task="multiclass", soft=True), "softmax_cross_entropy", "soft"),
    (dict(exclusive=True, soft=True), "softmax_cross_entropy", "soft"),
    (dict(task="Multi-Label", num_classes=20), "sigmoid_cross_entropy", "multi_hot"),
    (dict(exclusive=False), "sigmoid_cross_entropy", "multi_hot"),
    (dict(exclusive=False, soft=True), "sigmoid_cross_entropy", "multi_hot"),
    (dict(task="language_model"), "linear_cross_entropy", "huge"),
    (dict(num_classes=100_000), "linear_cross_entropy", "huge"),
    (dict(task="multiclass", num_classes=50_000), "linear_cross_entropy", "huge"),
]


def _described_data(kind, rng):
    if kind == "binary":
        return {"logits": rng.normal(size=8), "labels": np.array([0, 1, 1, 0, 0, 0, 0, 1])}
    if kind == "indices":
        return {"logits": rng.normal(size=(8, 3)), "labels": np.array([0, 1, 2, 0, 0, 0, 0, 1])}
    if kind == "one_hot":
        return {"logits": rng.normal(size=(8, 3)),
                "labels": np.eye(3)[[0, 1, 2, 0, 0, 0, 0, 1]]}
    if kind == "soft":
        return {"logits": rng.normal(size=(8, 3)), "labels": np.full((8, 3), 1 / 3)}
    if kind == "multi_hot":
        return {"logits": rng.normal(size=(8, 3)),
                "labels": (rng.random((8, 3)) < 0.3).astype(np.float64)}
    V = 50
    return {"inputs": rng.normal(size=(8, 4)), "classifier": rng.normal(size=(V, 4)),
            "labels": np.array([0, 1, 2, 49, 7, 7, 8, 9])}


@pytest.mark.parametrize("imbalanced", [None, True])
@pytest.mark.parametrize("desc, function, kind", DESCRIBED, ids=lambda v: str(v))
def test_described_situations_give_code_that_runs(be, rng, desc, function, kind, imbalanced):
    r = xent.choose(**desc, imbalanced=imbalanced)
    assert r.function == function
    assert r.reason.startswith("Described:")
    data = _described_data(kind, rng)
    if imbalanced and T.SITUATIONS[_situation(function, kind)].weight:
        assert "xent.choose(labels, imbalanced=True).kwargs" in r.code
    if kind == "huge" and not HAS_LINEAR:
        pytest.skip("xent.linear_cross_entropy is built on another branch")
    assert np.isfinite(run(r.code, be, **data))


def _situation(function, kind):
    return {"binary": "binary", "indices": "multiclass", "one_hot": "onehot", "soft": "soft",
            "multi_hot": "multilabel", "huge": "huge"}[kind]


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "choose needs labels, or a description"),
    (dict(task="multilable"), "did you mean 'multilabel'"),
    (dict(task="binary", num_classes=3), "task='binary' means 2 classes, got num_classes=3"),
    (dict(task="multilabel", exclusive=True), "means exclusive=False"),
    (dict(task="multiclass", exclusive=False), "means exclusive classes"),
    (dict(num_classes=0), "num_classes must be a positive int, got 0"),
    (dict(task="huge", soft=True), "soft labels over a huge vocabulary"),
])
def test_bad_descriptions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xent.choose(**kwargs)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="exclusive must be True, False or None, got 'yes'"):
        xent.choose(task="binary", exclusive="yes")
    with pytest.raises(TypeError, match="task must be a str, got a int"):
        xent.choose(task=3)
    with pytest.raises(TypeError, match="labels must be a numpy.ndarray.*got a str"):
        xent.choose("abc")


# -- labels and description together; labels that fit nothing --------------------------------------------

@pytest.mark.parametrize("labels, kwargs, match", [
    (np.array([[1, 1, 0], [0, 1, 0]]), dict(exclusive=True), "exclusive=True does not fit"),
    (np.array([0, 1, 2]), dict(task="multilabel"), "task='multilabel' does not fit the labels"),
    (np.array([0, 1, 2]), dict(exclusive=False), "exclusive=False .* does not fit integer"),
    (np.array([0, 5, 2]), dict(num_classes=3), r"class 5 at position \(1,\) but num_classes=3"),
    (np.array([0, 1, 2]), dict(soft=True), "soft=True does not fit"),
    (np.full((4, 2), 0.5), dict(soft=False), "soft=False does not fit"),
    (np.array([0.0, 2.5, 1.0]), {}, r"2.5 at position \(1,\): neither class indices"),
    (np.array([[0.1, -0.3]]), {}, "neither class indices"),
    (np.array([0.2, 0.5]), dict(num_classes=10), "one value per example are binary, but "
                                                 "num_classes=10"),
    (np.array([0.0, np.nan]), {}, r"labels must be finite, got nan at position \(1,\)"),
    (np.zeros((0,), dtype=int), {}, r"labels is empty \(shape \(0,\)\)"),
    (np.array(1), {}, "got a scalar"),
    (np.array([0, -1, -2, 3]), {}, "several negative values"),
])
def test_labels_that_do_not_fit(be, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        xent.choose(be.asarray(labels), **kwargs)


def test_labels_and_description_that_agree():
    y = np.eye(3)[[0, 1, 2, 1]]
    assert xent.choose(y, task="soft").function == "softmax_cross_entropy"
    assert xent.choose(y, exclusive=False).function == "sigmoid_cross_entropy"
    assert xent.choose(np.array([0, 1, 1]), num_classes=10).function == \
        "sparse_softmax_cross_entropy"
    assert xent.choose(np.array([0, 1, 2]), task="huge").function == "linear_cross_entropy"


def test_every_situation_is_reachable():
    seen = {xent.choose(**d).function for d, _, _ in DESCRIBED}
    assert seen == {s.function for s in T.SITUATIONS.values()}


# -- the guide ---------------------------------------------------------------------------------------

REPO_GUIDE = Path(__file__).resolve().parents[1] / "docs" / "choosing.md"


def test_checked_in_guide_is_fresh():
    assert REPO_GUIDE.is_file(), "docs/choosing.md is missing: run python -m xent._guide.render"
    assert _guide.main([str(REPO_GUIDE), "--check"]) == 0
    assert REPO_GUIDE.read_text() == _guide.render(), (
        "docs/choosing.md differs from the decision table: run python -m xent._guide.render")


def test_guide_renders_every_situation_finding_and_name():
    text = _guide.render()
    for s in T.SITUATIONS.values():
        assert s.call.format(labels=s.labels_expr) in text
    for code in T.FINDINGS:
        assert f"`{code}`" in text
    for n in T.NAMES:
        assert f"`{n.name}`" in text


def test_guide_check_mode(tmp_path):
    path = str(tmp_path / "choosing.md")
    assert _guide.main([path, "--check"]) == 1
    assert _guide.main([path]) == 0
    assert _guide.main([path, "--check"]) == 0


def test_guide_renderer_writes_to_the_given_path_not_next_to_the_package(tmp_path, monkeypatch):
    # issue 13: in a wheel there is no docs/ folder above the package
    monkeypatch.chdir(tmp_path)
    assert _guide.main([]) == 0
    assert (tmp_path / "docs" / "choosing.md").read_text() == _guide.render()
    assert not hasattr(_guide, "GUIDE")
