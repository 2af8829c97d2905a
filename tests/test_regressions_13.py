"""Regression tests for issue 13 (what a new user trips over), one per item."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xent
from xent import cli


def _softplus(x):
    return np.logaddexp(0.0, x)


# -- negative weights -------------------------------------------------------------------

def test_negative_sample_weight_is_a_value_error_naming_it():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="sample_weight"):
        xent.sigmoid_cross_entropy(z, np.ones((2, 3)), sample_weight=np.array([[1.0], [-1.0]]))
    with pytest.raises(ValueError, match="sample_weight"):
        xent.sparse_softmax_cross_entropy(z, np.array([0, 1]), sample_weight=[1.0, -0.5])
    with pytest.raises(ValueError, match="sample_weight"):
        xent.softmax_cross_entropy(z, np.full((2, 3), 1 / 3), sample_weight=[-1.0, 1.0])


def test_negative_pos_weight_is_a_value_error_naming_it():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="pos_weight"):
        xent.sigmoid_cross_entropy(z, np.ones((2, 3)), pos_weight=-2.0)
    with pytest.raises(ValueError, match="pos_weight"):
        xent.sigmoid_cross_entropy(z, np.ones((2, 3)), pos_weight=np.array([1.0, -1.0, 1.0]))


def test_nonnegative_weights_still_give_the_float64_number():
    z = np.array([[0.5, -1.0], [2.0, 0.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    pw, sw = np.array([2.0, 0.0]), np.array([[0.0], [3.0]])
    got = xent.sigmoid_cross_entropy(z, y, pos_weight=pw, sample_weight=sw, reduction="sum")
    want = np.sum(sw * (pw * y * _softplus(-z) + (1 - y) * _softplus(z)))
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_nan_sample_weight_padding_is_not_called_negative():
    # NaN passes the range check (as before); only negative numbers are refused
    z = np.zeros((2, 2))
    xent.sigmoid_cross_entropy(z, np.ones((2, 2)), sample_weight=np.array([[1.0], [0.0]]))


# -- messages ---------------------------------------------------------------------------

def test_got_an_eager_tensor_is_english():
    from xent._core.backend import describe

    class EagerTensor:  # the name is what matters
        pass

    class Tensor:
        pass

    assert describe(EagerTensor()) == "an EagerTensor"
    assert describe(Tensor()) == "a Tensor"
    assert describe(1.5) == "a float"
    assert describe(3) == "an int"


# -- version and demo -------------------------------------------------------------------

def test_xent_version_flag_prints_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"xent {xent.__version__}"


def test_version_comes_from_the_package_metadata_when_installed():
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("xent-loss")
    except PackageNotFoundError:
        installed = None
    if installed is not None:
        assert xent.__version__ == installed
    assert isinstance(xent.__version__, str) and xent.__version__[0].isdigit()


def test_demo_says_what_each_class_imbalance_finding_says(capsys):
    assert cli.main(["--color", "never", "demo"]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if "class_imbalance" in l]
    assert len(lines) >= 4
    # each line carries its own detail, not the same bare warning
    assert len(set(lines)) == len(lines)
    assert all("ratio" in l for l in lines)


# -- focal_alpha --------------------------------------------------------------------------

def _torchvision_focal(z, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss, written out in float64 (reduction='none')."""
    p = 1 / (1 + np.exp(-z))
    ce = y * _softplus(-z) + (1 - y) * _softplus(z)
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * y + (1 - alpha) * (1 - y)) * loss


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.75, 0.0), (0.0, 1.5), (1.0, 2.0)])
def test_focal_alpha_matches_torchvision_formula(alpha, gamma):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3)) * 3
    y = (rng.random((5, 3)) < 0.4).astype(np.float64)
    got = xent.sigmoid_cross_entropy(z, y, focal_gamma=gamma, focal_alpha=alpha, reduction="none")
    np.testing.assert_allclose(got, _torchvision_focal(z, y, alpha, gamma), rtol=1e-12)


def test_focal_alpha_on_torch_declines_the_fast_path_and_has_the_right_gradient():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 3))
    y = (rng.random((4, 3)) < 0.5).astype(np.float64)
    zt = torch.tensor(z, requires_grad=True)
    loss = xent.sigmoid_cross_entropy(zt, torch.tensor(y), focal_gamma=2.0, focal_alpha=0.25,
                                      reduction="sum")
    loss.backward()
    zr = torch.tensor(z, requires_grad=True)
    yr = torch.tensor(y)
    p = torch.sigmoid(zr)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(zr, yr, reduction="none")
    p_t = p * yr + (1 - p) * (1 - yr)
    ref = ((0.25 * yr + 0.75 * (1 - yr)) * ce * (1 - p_t) ** 2).sum()
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    np.testing.assert_allclose(zt.grad.numpy(), zr.grad.numpy(), rtol=1e-10)


def test_focal_alpha_matches_keras_binary_focal_with_class_balancing():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(2)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    y = (rng.random((6, 4)) < 0.3).astype(np.float32)
    fn = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.3, gamma=2.0,
                                              from_logits=True)
    want = float(np.asarray(fn(y, z)))
    got = float(xent.sigmoid_cross_entropy(z.astype(np.float64), y.astype(np.float64),
                                           focal_gamma=2.0, focal_alpha=0.3,
                                           reduction="sum_over_batch_size")) * 1.0
    # Keras averages over the last axis, then over the batch: the same as the mean of all entries
    assert got == pytest.approx(want, rel=1e-5)


def test_focal_alpha_out_of_range_is_a_value_error():
    with pytest.raises(ValueError, match="focal_alpha"):
        xent.sigmoid_cross_entropy(np.zeros(3), np.ones(3), focal_alpha=1.5)


# -- equivalents printed must reproduce the peer's number -----------------------------------

def test_bcewithlogitsloss_weight_maps_to_sample_weight_with_sum_over_batch_size():
    torch = pytest.importorskip("torch")
    e = xent.equivalents("torch.nn.BCEWithLogitsLoss")
    assert 'reduction="sum_over_batch_size"' in e.xent
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 3))
    labels = (rng.random((4, 3)) < 0.5).astype(np.float64)
    weight = rng.random((4, 3))
    want = float(torch.nn.BCEWithLogitsLoss(weight=torch.tensor(weight))(
        torch.tensor(logits), torch.tensor(labels)))
    got = float(eval(e.xent, {"xent": xent, "logits": logits, "labels": labels,
                              "weight": weight}))
    assert got == pytest.approx(want, rel=1e-10)


def test_kl_div_distillation_is_soft_softmax_ce_minus_label_entropy():
    torch = pytest.importorskip("torch")
    e = xent.equivalents("F.kl_div")
    from xent._guide import table as T

    assert "entropy" in T._BY_NAME["torch.nn.functional.kl_div"].note
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(5, 6))
    p = rng.random((5, 6)); p /= p.sum(-1, keepdims=True)
    want = float(torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(logits), -1),
                                            torch.tensor(p), reduction="batchmean"))
    got = float(eval(e.xent, {"xent": xent, "logits": logits, "p": p}))
    entropy = float(-(p * np.log(p)).sum(-1).mean())
    assert got - entropy == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("name", ["torchvision.ops.sigmoid_focal_loss",
                                  "LigerCrossEntropyLoss", "LigerFusedLinearCrossEntropyLoss",
                                  "cut_cross_entropy.linear_cross_entropy",
                                  "torch.nn.LinearCrossEntropyLoss",
                                  "F.linear_cross_entropy"])
def test_names_equivalents_did_not_know(name):
    e = xent.equivalents(name)
    assert e.xent.startswith("xent.")


def test_torchvision_sigmoid_focal_loss_equivalent_runs_and_matches_formula():
    e = xent.equivalents("torchvision.ops.sigmoid_focal_loss")
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 2))
    labels = (rng.random((4, 2)) < 0.5).astype(np.float64)
    got = eval(e.xent, {"xent": xent, "logits": logits, "labels": labels})
    np.testing.assert_allclose(got, _torchvision_focal(logits, labels, 0.25, 2.0), rtol=1e-12)


# -- choose: the code it returns runs on the labels it was given ----------------------------

def _run_code(code, logits, labels):
    return eval(code, {"xent": xent, "np": np}, {"logits": logits, "labels": labels})


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_choose_on_plus_minus_one_labels_recommends_binary_on_labels_plus_one_over_two(dtype):
    rng = np.random.default_rng(6)
    labels = np.where(rng.random(50) < 0.5, -1, 1).astype(dtype)
    r = xent.choose(labels)
    assert r.function == "sigmoid_cross_entropy"
    assert "ignore_index" not in r.code and "(labels + 1) / 2" in r.code
    logits = rng.normal(size=50)
    got = float(_run_code(r.code, logits, labels))
    y = (labels.astype(np.float64) + 1) / 2
    want = float(np.mean(y * _softplus(-logits) + (1 - y) * _softplus(logits)))
    assert got == pytest.approx(want, rel=1e-12)


def test_choose_on_b1_integer_labels_returns_code_that_runs():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=(30, 1))
    labels[:4, 0] = [0, 1, 2, 3]
    r = xent.choose(labels)
    logits = rng.normal(size=(30, 4))
    got = float(_run_code(r.code, logits, labels))
    lse = np.log(np.exp(logits).sum(-1))
    want = float(np.mean(lse - logits[np.arange(30), labels[:, 0]]))
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "onehot", "soft", "multilabel"])
def test_every_code_choose_returns_runs(kind):
    rng = np.random.default_rng(8)
    B, C = 40, 5
    if kind == "binary":
        labels, logits = (rng.random(B) < 0.5).astype(np.float32), rng.normal(size=B)
    elif kind == "multiclass":
        labels, logits = np.arange(B) % C, rng.normal(size=(B, C))
    elif kind == "onehot":
        labels, logits = np.eye(C)[np.arange(B) % C], rng.normal(size=(B, C))
    elif kind == "soft":
        p = rng.random((B, C)) + 0.1
        labels, logits = p / p.sum(-1, keepdims=True), rng.normal(size=(B, C))
    else:
        labels, logits = (rng.random((B, C)) < 0.5).astype(np.float64), rng.normal(size=(B, C))
    r = xent.choose(labels)
    value = _run_code(r.code, logits, labels)
    assert np.isfinite(float(value))


# -- hints in the losses' own errors ----------------------------------------------------------

def test_minus_100_labels_without_ignore_index_hint_ignore_index_minus_100():
    with pytest.raises(ValueError, match=r"ignore_index=-100"):
        xent.sparse_softmax_cross_entropy(np.zeros((3, 4)), np.array([0, -100, 2]))


def test_torch_bct_layout_gets_an_axis_1_hint():
    logits = np.zeros((2, 5, 7))  # [B, C, T]
    labels = np.zeros((2, 7), dtype=np.int64)
    with pytest.raises(ValueError, match="axis=1"):
        xent.sparse_softmax_cross_entropy(logits, labels)
    got = xent.sparse_softmax_cross_entropy(logits, labels, axis=1)
    assert float(got) == pytest.approx(np.log(5), rel=1e-12)


def test_ragged_list_error_names_the_argument():
    with pytest.raises(TypeError, match="logits could not be read"):
        xent.sparse_softmax_cross_entropy([[1.0, 2.0], [3.0]], np.array([0, 1]))
    with pytest.raises(TypeError, match="labels could not be read"):
        xent.sparse_softmax_cross_entropy(np.zeros((2, 2)), [[0], [1, 2]])


# -- peer-habit hints in the losses' own TypeErrors ---------------------------------------

import inspect  # noqa: E402

_LOSS_CALLS = {  # public loss -> (positional arrays) builder
    "softmax_cross_entropy": lambda: (np.zeros((3, 4)), np.full((3, 4), 0.25)),
    "sparse_softmax_cross_entropy": lambda: (np.zeros((3, 4)), np.array([0, 1, 2])),
    "sigmoid_cross_entropy": lambda: (np.zeros((3, 4)), np.ones((3, 4))),
    "log_loss": lambda: (np.full(3, 0.5), np.array([0.0, 1.0, 1.0])),
    "linear_cross_entropy": lambda: (np.zeros((3, 2)), np.zeros((4, 2)), np.array([0, 1, 2])),
    "sampled_softmax_loss": lambda: (np.zeros((3, 2)), np.zeros((4, 2)), np.array([0, 1, 2])),
    "nce_loss": lambda: (np.zeros((3, 2)), np.zeros((4, 2)), np.array([0, 1, 2])),
}


@pytest.mark.parametrize("fn", list(_LOSS_CALLS))
@pytest.mark.parametrize("key", ["weight", "weights"])
def test_weight_keyword_points_to_class_weight_or_sample_weight(fn, key):
    f = getattr(xent, fn)
    params = inspect.signature(f).parameters
    extra = {"num_sampled": 2} if "num_sampled" in params else {}
    with pytest.raises(TypeError, match=rf"no {key}= argument") as err:
        f(*_LOSS_CALLS[fn](), **{key: np.ones(3)}, **extra)
    msg = str(err.value)
    assert "sample_weight=" in msg
    assert ("class_weight=" in msg) == ("class_weight" in params)
    assert f"unexpected keyword argument '{key}'" in msg  # Python's own words kept


@pytest.mark.parametrize("key, match", [
    ("size_average", "reduction='mean', 'sum' or 'none'"),
    ("reduce", "reduction='mean', 'sum' or 'none'"),
    ("pos_weight", "pos_weight is for sigmoid_cross_entropy"),
    ("from_logits", "always takes logits"),
])
def test_old_torch_and_keras_keywords_get_a_hint(key, match):
    z, y = np.zeros((3, 4)), np.array([0, 1, 2])
    with pytest.raises(TypeError, match=match):
        xent.sparse_softmax_cross_entropy(z, y, **{key: True})


@pytest.mark.parametrize("fn", ["softmax_cross_entropy", "sparse_softmax_cross_entropy",
                                "sigmoid_cross_entropy"])
@pytest.mark.parametrize("names", [("labels", "logits"), ("y_true", "y_pred")])
def test_tf_labels_logits_keywords_say_xent_takes_logits_labels_positionally(fn, names):
    z, y = _LOSS_CALLS[fn]()
    kw = dict(zip(names, (y, z)))
    with pytest.raises(TypeError) as err:
        getattr(xent, fn)(**kw)
    msg = str(err.value)
    assert f"{fn}(logits, labels)" in msg and "positionally" in msg
    assert "labels=..., logits=..." in msg and "(y_true, y_pred)" in msg
    assert "other way round" in msg


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_labels_first_order_says_did_you_pass_labels_first(be, dtype):
    labels = np.array([0, 1, 1, 0]).astype(dtype)
    logits = np.array([0.3, -1.2, 2.0, 0.1])
    for fn, lab in (("sparse_softmax_cross_entropy", np.array([[0.1, 0.2]] * 4)),
                    ("sigmoid_cross_entropy", logits),
                    ("softmax_cross_entropy", np.array([[0.1, 0.2]] * 4))):
        with pytest.raises(TypeError, match=r"did you pass labels first\? xent takes "
                                            r"\(logits, labels\)"):
            getattr(xent, fn)(be.asarray(labels if fn == "sigmoid_cross_entropy"
                                         else np.eye(2)[labels.astype(int)].astype(dtype)),
                              be.asarray(lab))
    with pytest.raises(TypeError, match=r"did you pass labels first\? xent takes "
                                        r"\(probabilities, labels\)"):
        xent.log_loss(be.asarray(labels), be.asarray(np.full(4, 0.5)))


def test_hinted_losses_keep_signature_docstring_and_other_errors():
    for fn in _LOSS_CALLS:
        f = getattr(xent, fn)
        assert f.__name__ == fn and f.__doc__ and f.__wrapped__.__name__ == fn
        assert str(inspect.signature(f)) == str(inspect.signature(f.__wrapped__))
    # a TypeError the keywords do not explain comes through unchanged
    with pytest.raises(TypeError, match=r"^.*unexpected keyword argument 'bogus'$"):
        xent.sparse_softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), bogus=1)
    # the right call still gives the float64 number
    z = np.array([[0.5, -1.0, 2.0], [0.0, 1.0, -2.0]])
    y = np.array([2, 0])
    m = z.max(1, keepdims=True)
    lp = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
    np.testing.assert_allclose(xent.sparse_softmax_cross_entropy(z, y),
                               -lp[[0, 1], y].mean(), rtol=1e-12)


# -- choose: the peer equivalents run on the labels the user has ------------------------------

def _peer_env(lib, logits, labels):
    """``logits`` / ``labels`` as arrays of peer ``lib``, with its modules imported."""
    if lib == "tensorflow":
        tf = pytest.importorskip("tensorflow")
        return {"tf": tf, "logits": tf.constant(logits), "labels": tf.constant(labels)}
    if lib == "pytorch":
        torch = pytest.importorskip("torch")
        return {"torch": torch, "logits": torch.as_tensor(logits),
                "labels": torch.as_tensor(labels)}
    if lib == "keras":
        keras = pytest.importorskip("keras")
        return {"keras": keras, "logits": logits, "labels": labels}
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    return {"optax": optax, "logits": jnp.asarray(logits), "labels": jnp.asarray(labels)}


def _situation_data(kind, rng):
    B, C = 12, 4
    idx = np.arange(B) % C
    if kind.endswith("_imbalanced"):  # class 0 (or the negatives) 5x and more frequent
        kind = kind[:-len("_imbalanced")]
        B = 30
        idx = np.where(np.arange(B) < 25, 0, np.arange(B) % 3 + 1)
        if kind.startswith("onehot"):
            return rng.normal(size=(B, C)) * 2, np.eye(C)[idx].astype(kind.split("_")[1])
        if kind == "integer":
            return rng.normal(size=(B, C)) * 2, idx
        if kind == "pm1":
            return rng.normal(size=B), np.where(idx == 0, -1, 1)
        if kind == "binary":
            return rng.normal(size=B), (idx > 0).astype(np.float64)
        multi = np.zeros((B, C))
        multi[np.arange(B), idx] = 1
        multi[:3, 2] = 1  # some rows with two 1s
        return rng.normal(size=(B, C)), multi
    z = rng.normal(size=(B, C)) * 2
    if kind.startswith("onehot"):
        return z, np.eye(C)[idx].astype(kind.split("_")[1])
    if kind.startswith("pm1"):
        y = np.where(np.arange(B) % 2 == 0, -1, 1).astype(kind.split("_")[1])
        return rng.normal(size=B), y
    if kind == "b1_integer":
        return z, idx[:, None]
    if kind == "integer":
        return z, idx
    if kind == "float_indices":
        return z, idx.astype(np.float32)
    if kind == "binary":
        return rng.normal(size=B), (np.arange(B) % 2).astype(np.float64)
    if kind == "binary_int":
        return rng.normal(size=B), np.arange(B) % 2
    multi = (rng.random((B, C)) < 0.4).astype(np.float64)
    multi[0] = [1, 1, 0, 0]  # at least one row with two 1s
    return z, multi


SITUATION_KINDS = ["onehot_float64", "onehot_float32", "onehot_int64", "onehot_bool",
                   "pm1_float64", "pm1_int64", "b1_integer", "integer", "float_indices",
                   "binary", "binary_int", "multilabel", "onehot_float64_imbalanced",
                   "onehot_int64_imbalanced", "integer_imbalanced", "pm1_imbalanced",
                   "binary_imbalanced", "multilabel_imbalanced"]


@pytest.mark.parametrize("kind", SITUATION_KINDS)
@pytest.mark.parametrize("lib", ["tensorflow", "pytorch", "keras", "optax"])
def test_choose_peer_equivalents_run_on_the_labels_the_user_has(kind, lib):
    """One-hot labels get the peers' dense calls (not sparse ops on one-hot rows), -1/+1
    labels the peers' binary calls on (labels + 1) / 2; every peer number is the xent
    code's number on the same data."""
    rng = np.random.default_rng(13)
    logits, labels = _situation_data(kind, rng)
    if logits.dtype != np.float64:
        logits = logits.astype(np.float64)
    r = xent.choose(labels)
    want = float(_run_code(r.code, logits, labels))
    call = getattr(r.equivalents, lib)
    weighted = {"pos_weight", "class_weight"} & set(r.kwargs)
    assert bool(weighted) == kind.endswith("_imbalanced"), r.kwargs
    if weighted and lib in ("keras", "optax"):  # their losses take no class weights
        assert call is None, call
        return
    assert call is not None, (lib, r.equivalents)
    if kind.startswith("onehot"):
        assert "sparse" not in call and "integer_labels" not in call, call
    if kind.startswith("pm1"):
        assert "(labels + 1) / 2" in call and "sparse" not in call, call
    got = eval(call, _peer_env(lib, logits, labels))
    got = got.detach().numpy() if hasattr(got, "detach") else np.asarray(got)
    np.testing.assert_allclose(float(np.mean(got)), want, rtol=1e-6, err_msg=call)


@pytest.mark.parametrize("fn", ["softmax_cross_entropy", "sigmoid_cross_entropy"])
def test_keras_order_one_hot_floats_first_says_did_you_pass_labels_first(be, fn):
    """Keras's (y_true, y_pred) order with float one-hot labels: the 'labels' (really the
    logits) leave [0, 1] and the first array is all 0/1, so the error names the order."""
    y = np.eye(3)[[0, 1, 2, 1]]
    z = np.array([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3], [0.0, 1.0, -2.0], [2.0, -0.5, 0.1]])
    with pytest.raises(ValueError, match=r"labels must be in \[0, .*did you pass labels "
                                         r"first\? xent takes \(logits, labels\)"):
        getattr(xent, fn)(be.asarray(y), be.asarray(z))
    with pytest.raises(ValueError) as err:  # out-of-range labels with real logits: no hint
        getattr(xent, fn)(be.asarray(z), be.asarray(z))
    assert "labels first" not in str(err.value)


def test_all_zero_logits_with_bad_labels_get_no_labels_first_hint():
    # zero logits (a fresh model's) hold only 0s: that is not a sign of swapped arrays
    with pytest.raises(ValueError) as err:
        xent.sigmoid_cross_entropy(np.zeros(2), np.array([0.0, 2.0]))
    assert "labels must be in [0, 1]" in str(err.value)
    assert "labels first" not in str(err.value)
