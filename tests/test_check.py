"""xent.check: every finding on every backend (with its position and its advice), and its
absence on clean data; the loss that a finding protects against, computed, shows why."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import xent
from xent._guide import table as T
from xent._guide.data import load_example
from xent.choose import _fmt


def codes(found, severity=None):
    return [f.code for f in found if severity is None or f.severity == severity]


def only(found, code):
    hits = [f for f in found if f.code == code]
    assert len(hits) == 1, found
    return hits[0]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_finding_fields_are_the_contract():
    assert [f.name for f in dataclasses.fields(xent.Finding)] == ["code", "severity", "message"]


# -- clean data ---------------------------------------------------------------------------

def _balanced(rng):
    z = rng.normal(size=(24, 3))
    return {
        "sparse": (z, np.tile(np.arange(3), 8)),
        "one-hot": (z, np.eye(3)[np.tile(np.arange(3), 8)]),
        "soft": (z, softmax(rng.normal(size=(24, 3)))),
        "binary": (z[:, 0], np.tile([0, 1], 12)),
        "binary column": (z[:, :1], np.tile([0.0, 1.0], 12)[:, None]),
        "multi-label": (z, (np.arange(72).reshape(24, 3) % 2).astype(np.float64)),
        "masked classes": (np.where(np.eye(3, dtype=bool)[np.tile([1, 2, 0], 8)], -np.inf, z),
                           np.tile(np.arange(3), 8)),
        "log-probabilities": (np.log(softmax(z)), np.tile(np.arange(3), 8)),
    }


@pytest.mark.parametrize("case", list(_balanced(np.random.default_rng(0))))
def test_clean_data_has_no_findings(be, rng, case):
    z, y = _balanced(rng)[case]
    assert xent.check(be.asarray(z), be.asarray(y)) == []


@pytest.mark.parametrize("situation", ["binary", "multiclass", "multilabel", "soft"])
def test_bundled_examples_have_no_errors(be, situation):
    z, y = load_example()[situation]
    found = xent.check(be.asarray(z), be.asarray(y))
    assert codes(found, "error") == []
    assert codes(found) == ["class_imbalance"]  # the examples are imbalanced on purpose


@pytest.mark.parametrize("loss", ["sparse_softmax_cross_entropy", "F.cross_entropy",
                                  "SparseCategoricalCrossentropy", "nll_loss"])
def test_clean_sparse_with_named_loss(be, rng, loss):
    z, y = _balanced(rng)["sparse"]
    assert xent.check(be.asarray(z), be.asarray(y), loss=loss) == []


# -- probabilities_as_logits -----------------------------------------------------------------

def test_softmax_applied_twice_is_an_error(be, rng):
    z = rng.normal(size=(8, 4)) * 3
    y = np.arange(8) % 4
    p = softmax(z)
    f = only(xent.check(be.asarray(p), be.asarray(y)), "probabilities_as_logits")
    assert f.severity == "error" and "softmax a second time" in f.message
    # why it matters: softmax of values in [0, 1] never exceeds e / (e + C - 1)
    assert softmax(p).max() < np.e / (np.e + 3) < 0.5
    assert xent.check(be.asarray(np.log(p)), be.asarray(y)) == []


def test_sigmoid_outputs_as_logits_is_a_warning(be, rng):
    p = 1 / (1 + np.exp(-rng.normal(size=20)))
    y = np.tile([0.0, 1.0], 10)
    f = only(xent.check(be.asarray(p), be.asarray(y)), "probabilities_as_logits")
    assert f.severity == "warning" and "all 20 logits lie in [0, 1]" in f.message
    assert codes(xent.check(be.asarray(p[:8]), be.asarray(y[:8]))) == []  # too few to tell


def test_logits_given_to_log_loss(be, rng):
    z = rng.normal(size=10) * 3
    y = np.tile([0.0, 1.0], 5)
    f = only(xent.check(be.asarray(z), be.asarray(y), loss="log_loss"), "probabilities_as_logits")
    assert f.severity == "error" and "sigmoid_cross_entropy" in f.message
    assert xent.check(be.asarray(1 / (1 + np.exp(-z))), be.asarray(y), loss="BCELoss") == []


# -- multi_hot_to_softmax -----------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "CategoricalCrossentropy",
                                  "tf.nn.softmax_cross_entropy_with_logits", "F.cross_entropy"])
def test_multi_hot_labels_under_softmax(be, rng, loss):
    y = np.eye(4)[np.arange(8) % 4]
    y[5, 2] = 1
    z = rng.normal(size=(8, 4))
    f = only(xent.check(be.asarray(z), be.asarray(y), loss=loss), "multi_hot_to_softmax")
    assert f.severity == "error"
    assert "1 label rows have several 1s (row 5 has 2)" in f.message
    assert "sigmoid_cross_entropy" in f.message
    # without a loss the labels read as multi-label: sigmoid, nothing wrong
    assert codes(xent.check(be.asarray(z), be.asarray(y)), "error") == []


# -- labels_not_normalized ------------------------------------------------------------------------

def test_rows_that_do_not_sum_to_one(be, rng):
    y = softmax(rng.normal(size=(10, 3)))
    y[7] *= 0.8
    z = rng.normal(size=(10, 3))
    for loss in (None, "softmax_cross_entropy"):
        f = only(xent.check(be.asarray(z), be.asarray(y), loss=loss), "labels_not_normalized")
        assert f.severity == "error"
        assert "1 label rows do not sum to 1 (row 7 sums to 0.8)" in f.message


def test_all_zero_rows_are_a_warning(be, rng):
    y = np.eye(3)[np.arange(9) % 3]
    y[4] = 0
    z = rng.normal(size=(9, 3))
    f = only(xent.check(be.asarray(z), be.asarray(y), loss="softmax_cross_entropy"),
             "labels_not_normalized")
    assert f.severity == "warning" and "all zero (row 4)" in f.message


def test_sigmoid_rows_need_not_sum_to_one(be, rng):
    y = rng.uniform(0, 1, size=(10, 3))
    z = rng.normal(size=(10, 3))
    found = xent.check(be.asarray(z), be.asarray(y), loss="sigmoid_cross_entropy")
    assert "labels_not_normalized" not in codes(found)


# -- shape_mismatch ------------------------------------------------------------------------------

@pytest.mark.parametrize("zshape, yshape, yvals, loss, match", [
    ((6,), (6, 1), "binary", None, r"labels have a trailing axis of size 1; squeeze it so "
                                    r"both are \(6,\)"),
    ((6, 1), (6,), "binary", None, r"logits have a trailing axis of size 1"),
    ((6, 3), (6, 1), "indices", None, r"squeeze the labels to \(6,\)"),
    ((3, 6), (6,), "indices", None, r"classes seem to be on axis 0, not last. Pass axis=0"),
    ((2, 5, 4), (2, 4), "indices", "sparse_softmax_cross_entropy",
     r"classes seem to be on axis 1"),
    ((6, 3), (3, 6), "binary", "sigmoid_cross_entropy", "is transposed"),
    ((6, 1), (6, 1), "binary", "softmax_cross_entropy", "a single class. The softmax of one "
                                                        "logit is always 1"),
    ((6, 1), (6,), "indices0", "sparse_softmax_cross_entropy", "a single class"),
    ((6, 3), (6,), "indices", "softmax_cross_entropy", "integer class indices go to "
                                                      "sparse_softmax_cross_entropy"),
    ((6, 3), (6, 3), "binary", "sparse_softmax_cross_entropy", "labels have the logits' shape"),
    ((6, 3), (5,), "indices", "sparse_softmax_cross_entropy", r"needs labels of shape \(6,\)"),
    ((6, 3), (4, 2), "binary", "sigmoid_cross_entropy", "must have the same shape"),
])
def test_shape_traps(be, rng, zshape, yshape, yvals, loss, match):
    z = rng.normal(size=zshape)
    n = int(np.prod(yshape))
    y = {"binary": np.arange(n) % 2, "indices": np.arange(n) % 3,
         "indices0": np.zeros(n, dtype=int)}[yvals].reshape(yshape)
    f = only(xent.check(be.asarray(z), be.asarray(y), loss=loss), "shape_mismatch")
    assert f.severity == "error"
    assert re.search(match, f.message), f.message


def test_the_b1_trap_really_broadcasts_in_numpy(rng):
    """[B, 1] against [B] broadcasts to [B, B]: the bug check reports."""
    z, y = rng.normal(size=6), (np.arange(6) % 2)[:, None]
    assert (y * z).shape == (6, 6)


# -- label_out_of_range ----------------------------------------------------------------------

def test_index_out_of_range_gives_first_position(be, rng):
    y = np.array([[0, 1, 2], [2, 3, 0]])
    z = rng.normal(size=(2, 3, 3))
    f = only(xent.check(be.asarray(z), be.asarray(y)), "label_out_of_range")
    assert f.severity == "error"
    assert "labels hold 3 at position (1, 1) (1 labels outside [0, 3))" in f.message


def test_padding_value_suggests_ignore_index(be, rng):
    y = np.array([0, 1, -100, 2])
    f = only(xent.check(be.asarray(rng.normal(size=(4, 3))), be.asarray(y)), "label_out_of_range")
    assert "at position (2,)" in f.message and "ignore_index=-100" in f.message


def test_fractional_indices(be, rng):
    f = only(xent.check(be.asarray(rng.normal(size=(3, 3))), be.asarray(np.array([0, 1.5, 2]))),
             "label_out_of_range")
    assert "1.5 at position (1,)" in f.message and "whole numbers" in f.message


def test_probability_labels_outside_unit_interval(be, rng):
    y = np.array([[0.0, 1.0], [1.2, 0.0]])
    f = only(xent.check(be.asarray(rng.normal(size=(2, 2))), be.asarray(y),
                        loss="sigmoid_cross_entropy"), "label_out_of_range")
    assert "1.2 at position (1, 0)" in f.message and "[0, 1]" in f.message
    y = np.array([[0.0, 1.0], [-0.5, 1.5]])
    f = only(xent.check(be.asarray(rng.normal(size=(2, 2))), be.asarray(y),
                        loss="softmax_cross_entropy"), "label_out_of_range")
    assert "-0.5 at position (1, 0)" in f.message


def test_plus_minus_one_labels(be, rng):
    y = np.array([1, -1, -1, 1.0])
    f = only(xent.check(be.asarray(rng.normal(size=4)), be.asarray(y)), "label_out_of_range")
    assert "(labels + 1) / 2" in f.message and "position (1,)" in f.message


# -- non_finite ------------------------------------------------------------------------------

def test_nan_logits(be, rng):
    z = rng.normal(size=(4, 3))
    z[2, 1] = np.nan
    f = only(xent.check(be.asarray(z), be.asarray(np.array([0, 1, 2, 0]))), "non_finite")
    assert f.severity == "error" and "logits hold nan at position (2, 1)" in f.message


def test_positive_inf_logits(be, rng):
    z = rng.normal(size=(4, 3))
    z[3, 0] = np.inf
    f = only(xent.check(be.asarray(z), be.asarray(np.array([0, 1, 2, 0]))), "non_finite")
    assert "inf at position (3, 0)" in f.message


def test_nan_labels(be, rng):
    y = np.array([[0.5, 0.5], [np.nan, 1.0]])
    f = only(xent.check(be.asarray(rng.normal(size=(2, 2))), be.asarray(y)), "non_finite")
    assert "labels hold nan at position (1, 0)" in f.message


@pytest.mark.parametrize("dense", [False, True])
def test_minus_inf_on_the_true_class(be, rng, dense):
    z = rng.normal(size=(4, 3))
    z[1, 2] = -np.inf
    y = np.array([0, 2, 1, 0])
    labels = np.eye(3)[y] if dense else y
    f = only(xent.check(be.asarray(z), be.asarray(labels)), "non_finite")
    assert "infinite" in f.message
    masked = z.copy()
    masked[1, 2], masked[1, 0] = 0.0, -np.inf  # -inf on a class with label 0: legal
    assert xent.check(be.asarray(masked), be.asarray(labels)) == []


def test_sigmoid_infinities_that_make_the_loss_infinite(be):
    z = np.array([-np.inf, np.inf, -np.inf, 0.5])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    f = only(xent.check(be.asarray(z), be.asarray(y)), "non_finite")
    assert "position (2,)" in f.message


# -- class_imbalance --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sparse", "binary", "multilabel", "soft"])
def test_imbalance_warning_carries_the_weights_choose_suggests(be, rng, kind):
    if kind == "sparse":
        y, z = np.array([0] * 30 + [1] * 5 + [2] * 2), rng.normal(size=(37, 3))
    elif kind == "binary":
        y, z = np.array([1.0] * 3 + [0.0] * 30), rng.normal(size=33)
    elif kind == "multilabel":
        y = np.zeros((30, 3))
        y[:15, 0], y[:2, 1], y[3:13, 2] = 1, 1, 1
        z = rng.normal(size=(30, 3))
    else:
        y = np.tile([[0.9, 0.05, 0.05]], (20, 1))
        z = rng.normal(size=(20, 3))
    f = only(xent.check(be.asarray(z), be.asarray(y)), "class_imbalance")
    assert f.severity == "warning"
    (name, value), = xent.choose(y).kwargs.items()
    assert f"Pass {name}={_fmt(value)}." in f.message


def test_long_weight_lists_are_shortened(rng):
    y = np.concatenate([np.zeros(100, dtype=int), np.arange(1, 40)])
    f = only(xent.check(rng.normal(size=(139, 40)), y), "class_imbalance")
    assert "(40 values; xent.choose(labels).kwargs has them all)" in f.message


def test_balanced_data_has_no_imbalance_warning(rng):
    assert xent.check(rng.normal(size=(30, 3)), np.arange(30) % 3) == []


# -- arguments -------------------------------------------------------------------------------

def test_errors_come_first(rng):
    z = softmax(rng.normal(size=(20, 3)))
    y = np.array([0] * 17 + [1, 2, 5])
    found = xent.check(z, y)
    sev = [f.severity for f in found]
    assert sev == sorted(sev, key=lambda s: s != "error")
    assert {"probabilities_as_logits", "label_out_of_range"} <= set(codes(found, "error"))


def test_bad_arguments(rng):
    z = rng.normal(size=(3, 2))
    with pytest.raises(ValueError, match="unknown cross-entropy name 'sofmax'"):
        xent.check(z, np.array([0, 1, 0]), loss="sofmax")
    with pytest.raises(ValueError, match="takes inputs and a classifier"):
        xent.check(z, np.array([0, 1, 0]), loss="tf.nn.sampled_softmax_loss")
    with pytest.raises(TypeError, match="logits must be a numpy.ndarray"):
        xent.check("z", np.array([0, 1, 0]))
    with pytest.raises(TypeError, match="logits must be floating point"):
        xent.check(np.array([[1, 2]]), np.array([0]))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="labels is a torch.Tensor but logits is a numpy"):
        xent.check(z, torch.tensor([0, 1, 0]))


def test_lists_and_low_precision(be, rng):
    z = rng.normal(size=(6, 3))
    assert xent.check(z.tolist(), [0, 1, 2, 0, 1, 2]) == []
    if be.name != "numpy":
        zb = be.asarray(z, dtype="bfloat16")
        assert xent.check(zb, be.asarray(np.arange(6) % 3)) == []


def test_empty_batch(be):
    assert xent.check(be.asarray(np.zeros((0, 3))), be.asarray(np.zeros((0,), dtype=int))) == []


def test_every_code_is_in_the_table():
    assert set(T.FINDINGS) == {"probabilities_as_logits", "multi_hot_to_softmax",
                               "labels_not_normalized", "shape_mismatch", "label_out_of_range",
                               "non_finite", "class_imbalance"}
