"""xent.equivalents and the name table: every name resolves in the installed library,
every peer call computes the same loss as the xent call (and a float64 formula), and
each name's xent call reproduces that name's defaults (reduction, label gradient)."""

from __future__ import annotations

import dataclasses
import importlib
import re

import numpy as np
import pytest

import xent
from xent._guide import table as T

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
optax = pytest.importorskip("optax")
torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")

ROOTS = {"tf": "tensorflow", "torch": "torch", "keras": "keras", "optax": "optax",
         "xent": "xent", "sklearn": "sklearn"}
LATER = ("linear_cross_entropy", "sampled_softmax_loss", "nce_loss")  # other branches


def resolve(dotted: str):
    """The object a dotted name denotes in the installed library (AttributeError if none)."""
    head, *rest = dotted.split(".")
    if head == "sklearn":
        obj = importlib.import_module("sklearn.metrics")
        rest = rest[1:]
    else:
        obj = importlib.import_module(ROOTS[head])
    for part in rest:
        obj = getattr(obj, part)
    return obj


def callee(call: str) -> str:
    return re.match(r"[\w.]+", call).group(0)


def test_fields_are_the_contract():
    assert [f.name for f in dataclasses.fields(xent.Equivalents)] == [
        "xent", "tensorflow", "pytorch", "keras", "optax"]


# -- names resolve ------------------------------------------------------------------------

CURRENT = [n for n in T.NAMES if not n.historical]
HISTORICAL = [n for n in T.NAMES if n.historical]


@pytest.mark.parametrize("entry", CURRENT, ids=lambda n: n.name)
def test_current_name_exists_in_installed_library(entry):
    if entry.library == "sklearn":
        pytest.importorskip("sklearn")
    head = entry.name.split(".")[0]
    if head not in ROOTS:  # torchvision, Liger, cut_cross_entropy: not installed here
        pytest.importorskip(head)
    if entry.library == "xent" and entry.name.split(".")[-1] in LATER \
            and not hasattr(xent, entry.name.split(".")[-1]):
        pytest.skip(f"{entry.name} is built on another branch")
    assert callable(resolve(entry.name))


@pytest.mark.parametrize("entry", HISTORICAL, ids=lambda n: n.name)
def test_historical_name_is_really_gone(entry):
    with pytest.raises(AttributeError):
        resolve(entry.name)


@pytest.mark.parametrize("concept", list(T.CONCEPTS.values()), ids=lambda c: c.key)
def test_every_peer_call_names_a_real_function(concept):
    for lib in ("tensorflow", "pytorch", "keras", "optax"):
        call = getattr(concept, lib)
        if call is not None:
            assert callable(resolve(callee(call))), call


def test_name_families_are_all_present():
    names = {n.name for n in T.NAMES}
    for prefix in ("tf.nn.", "tf.losses.", "tf.compat.v1.losses.", "tf.compat.v1.nn.",
                   "tf.contrib.losses.", "tf.keras.losses.", "keras.losses.", "keras.ops.",
                   "torch.nn.functional.", "torch.nn.", "optax.", "sklearn.metrics."):
        assert any(n.startswith(prefix) for n in names), prefix
    for must in ("torch.nn.AdaptiveLogSoftmaxWithLoss", "tf.keras.losses.SparseCategoricalCrossentropy",
                 "tf.keras.losses.sparse_categorical_crossentropy", "sklearn.metrics.log_loss",
                 "tf.compat.v1.nn.softmax_cross_entropy_with_logits_v2",
                 "tf.contrib.losses.sparse_softmax_cross_entropy"):
        assert must in names


def test_every_cross_entropy_attribute_of_the_libraries_is_known():
    """Nothing the installed libraries call *crossentropy* / *cross_entropy* is missing."""
    known = {n.name for n in T.NAMES}
    modules = {"tf.nn": tf.nn, "tf.keras.losses": tf.keras.losses, "keras.losses": keras.losses,
               "keras.metrics": keras.metrics, "keras.ops": keras.ops,
               "tf.compat.v1.losses": tf.compat.v1.losses, "torch.nn.functional":
               torch.nn.functional, "optax": optax, "optax.losses": optax.losses,
               "torch.nn": torch.nn, "tf.losses": tf.losses, "tf.keras.metrics": tf.keras.metrics,
               "tf.keras.backend": tf.keras.backend, "tf.compat.v1.nn": tf.compat.v1.nn,
               "tf.compat.v1.keras.losses": tf.compat.v1.keras.losses}
    for prefix, mod in modules.items():
        for attr in dir(mod):
            low = attr.lower()
            if ("crossentropy" in low or "cross_entropy" in low) and not attr.startswith("_") \
                    and not attr.endswith("Options"):  # torch.nn.LinearCrossEntropyOptions
                assert f"{prefix}.{attr}" in known, f"{prefix}.{attr}"


# -- lookups ------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", T.NAMES, ids=lambda n: n.name)
def test_every_name_maps_to_an_xent_call_and_peers(entry):
    e = xent.equivalents(entry.name)
    c = T.CONCEPTS[entry.concept]
    assert (e.tensorflow, e.pytorch, e.keras, e.optax) == (c.tensorflow, c.pytorch, c.keras,
                                                           c.optax)
    if c.xent is None:
        assert e.xent is None
    else:
        parts = callee(e.xent).split(".")
        assert parts[0] == "xent"
        if parts[1] in ("torch", "keras", "parallel"):  # the adapters: a real class or function
            assert hasattr(getattr(xent, parts[1]), parts[2].split("(")[0]), e.xent
        else:
            assert parts[1] in T._XENT


@pytest.mark.parametrize("query, full", [
    ("F.cross_entropy", "torch.nn.functional.cross_entropy"),
    ("F.cross_entropy()", "torch.nn.functional.cross_entropy"),
    ("nn.BCEWithLogitsLoss", "torch.nn.BCEWithLogitsLoss"),
    ("functional.nll_loss", "torch.nn.functional.nll_loss"),
    ("tensorflow.nn.nce_loss", "tf.nn.nce_loss"),
    ("SparseCategoricalCrossentropy", "keras.losses.SparseCategoricalCrossentropy"),
    ("sparsecategoricalcrossentropy", "keras.losses.SparseCategoricalCrossentropy"),
    ("cross_entropy", "torch.nn.functional.cross_entropy"),
    ("log_loss", "xent.log_loss"),
    ("softmax_cross_entropy", "xent.softmax_cross_entropy"),
    ("AdaptiveLogSoftmaxWithLoss", "torch.nn.AdaptiveLogSoftmaxWithLoss"),
    ("softmax_cross_entropy_with_logits_v2", "tf.compat.v1.nn.softmax_cross_entropy_with_logits_v2"),
    ("  tf.nn.sigmoid_cross_entropy_with_logits  ", "tf.nn.sigmoid_cross_entropy_with_logits"),
])
def test_aliases_and_bare_names(query, full):
    assert T.lookup(query).name == full
    assert xent.equivalents(query) == xent.equivalents(full)


def test_contract_examples():
    e = xent.equivalents("tf.nn.sampled_softmax_loss")
    assert e.xent.startswith("xent.sampled_softmax_loss(inputs, classifier, labels")
    assert (e.pytorch, e.keras, e.optax) == (None, None, None)
    e = xent.equivalents("F.cross_entropy")
    assert e.xent == "xent.sparse_softmax_cross_entropy(logits, labels)"
    assert e.optax == "optax.softmax_cross_entropy_with_integer_labels(logits, labels)"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown cross-entropy name 'F\.cross_entropi'.*"
                       r"did you mean.*cross_entropy"):
        xent.equivalents("F.cross_entropi")
    with pytest.raises(ValueError, match="did you mean 'BinaryCrossentropy'"):
        xent.equivalents("BinaryCrossEntropyy")
    with pytest.raises(ValueError, match="known names look like"):
        xent.equivalents("zzzz")
    with pytest.raises(TypeError, match="name must be a str"):
        xent.equivalents(3)


# -- the peers compute the same loss ------------------------------------------------------

B, C, D, Q = 6, 4, 5, 0.5


def _data():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(B, C)) * 2
    e = np.exp(rng.normal(size=(B, C)))
    return {
        "logits": z,
        "indices": rng.integers(0, C, size=B),
        "probs": e / e.sum(1, keepdims=True),
        "multi_hot": (rng.random((B, C)) < 0.4).astype(np.float64),
        "binary": rng.integers(0, 2, size=B).astype(np.float64),
        "p_binary": rng.uniform(0.05, 0.95, size=B),
        "pos_weight": np.array([0.5, 2.0, 3.0, 1.5]),
        "inputs": rng.normal(size=(B, D)),
        "classifier": rng.normal(size=(C, D)),
    }


def _log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _softplus(x):
    return np.logaddexp(0, x)


def _formula(key, d):
    """The float64 mean loss each concept stands for."""
    z, idx = d["logits"], d["indices"]
    lp = _log_softmax(z)
    if key == "softmax":
        return np.mean(-(d["probs"] * lp).sum(-1))
    if key in ("sparse_softmax", "nll"):
        return np.mean(-lp[np.arange(B), idx])
    if key == "linear":
        lq = _log_softmax(d["inputs"] @ d["classifier"].T)
        return np.mean(-lq[np.arange(B), idx])
    y = d["multi_hot"]
    if key in ("sigmoid", "weighted_sigmoid", "sigmoid_focal"):
        pw = d["pos_weight"] if key == "weighted_sigmoid" else 1.0
        bce = pw * y * _softplus(-z) + (1 - y) * _softplus(z)
        if key == "sigmoid_focal":
            p = 1 / (1 + np.exp(-z))
            bce = bce * (1 - (y * p + (1 - y) * (1 - p))) ** 2
        return np.mean(bce)
    if key == "softmax_focal":
        return np.mean(-(d["probs"] * (1 - np.exp(lp)) ** 2 * lp).sum(-1))
    if key == "log_loss":
        p, t = d["p_binary"], d["binary"]
        return np.mean(-(t * np.log(p + 1e-7) + (1 - t) * np.log(1 - p + 1e-7)))
    if key == "poly":
        pt = (d["probs"] * np.exp(lp)).sum(-1)
        return np.mean(-(d["probs"] * lp).sum(-1) + 2.0 * (1 - pt))
    if key == "generalized":
        return np.mean((1 - d["probs"][np.arange(B), idx] ** Q) / Q)
    raise KeyError(key)


def _env(concept, lib, d):
    """Variables named as in the table's calls, as arrays of ``lib``."""
    kind = concept.labels
    labels = {"probabilities": d["probs"], "indices": d["indices"], "multi_hot": d["multi_hot"],
              "binary": d["binary"]}[kind]
    probabilities = d["p_binary"] if kind == "binary" else d["probs"]
    raw = {"logits": d["logits"], "labels": labels, "probabilities": probabilities,
           "log_probabilities": _log_softmax(d["logits"]), "pos_weight": d["pos_weight"],
           "inputs": d["inputs"], "classifier": d["classifier"]}
    conv = {"tensorflow": tf.constant, "pytorch": torch.as_tensor, "optax": jnp.asarray,
            "keras": np.asarray, "xent": np.asarray}[lib]
    env = {k: conv(v) for k, v in raw.items()}
    env.update(tf=tf, torch=torch, keras=keras, optax=optax, xent=xent)
    return env


def _mean(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().numpy()
    return float(np.mean(np.asarray(x)))


NUMERIC = [c for c in T.CONCEPTS.values() if c.key not in ("sampled_softmax", "nce")]


@pytest.mark.parametrize("concept", NUMERIC, ids=lambda c: c.key)
def test_peers_and_xent_compute_the_concepts_loss(concept):
    d = _data()
    want = _formula(concept.key, d)
    ran = 0
    for lib in ("xent", "tensorflow", "pytorch", "keras", "optax"):
        call = getattr(concept, lib)
        if call is None or (lib == "xent" and not hasattr(xent, callee(call).split(".")[1])):
            continue
        got = _mean(eval(call, _env(concept, lib, d)))
        tol = 1e-10 if lib == "xent" else 1e-5
        np.testing.assert_allclose(got, want, rtol=tol, err_msg=f"{lib}: {call}")
        ran += 1
    assert ran >= 1


# -- each name's xent call reproduces that name's defaults -----------------------------------

def _xent_with(call, **extra):
    """The table's xent call with extra keyword arguments (e.g. sample_weight)."""
    return call[:-1] + "".join(f", {k}={k}" for k in extra) + ")"


def _run_xent(call, d, concept, **extra):
    env = _env(T.CONCEPTS[concept], "xent", d)
    env.update(extra)
    return np.asarray(eval(_xent_with(call, **extra), env))


W = np.array([1.0, 0.0, 2.0, 0.5, 0.0, 3.0])


@pytest.mark.parametrize("name, peer", [
    ("tf.compat.v1.losses.sparse_softmax_cross_entropy",
     lambda d: tf.compat.v1.losses.sparse_softmax_cross_entropy(d["indices"], d["logits"],
                                                                weights=W)),
    ("tf.compat.v1.losses.softmax_cross_entropy",
     lambda d: tf.compat.v1.losses.softmax_cross_entropy(d["probs"], d["logits"], weights=W)),
    ("tf.compat.v1.losses.log_loss",
     lambda d: tf.compat.v1.losses.log_loss(d["binary"], d["p_binary"], weights=W)),
    ("keras.losses.SparseCategoricalCrossentropy",
     lambda d: keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
         d["indices"], d["logits"], sample_weight=W)),
    ("tf.keras.losses.CategoricalCrossentropy",
     lambda d: tf.keras.losses.CategoricalCrossentropy(from_logits=True)(
         d["probs"], d["logits"], sample_weight=W)),
])
def test_weighted_reduction_of_a_name_matches_the_peer(name, peer):
    d = _data()
    e = xent.equivalents(name)
    got = _run_xent(e.xent, d, T.lookup(name).concept, sample_weight=W)
    np.testing.assert_allclose(got, np.asarray(peer(d)), rtol=1e-5)


def test_v1_sigmoid_losses_weights_broadcast_over_classes():
    d = _data()
    w = W[:, None]
    e = xent.equivalents("tf.compat.v1.losses.sigmoid_cross_entropy")
    got = _run_xent(e.xent, d, "sigmoid", sample_weight=w)
    want = tf.compat.v1.losses.sigmoid_cross_entropy(d["multi_hot"], d["logits"], weights=w)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6)


def test_keras_binary_class_reduction():
    d = _data()
    e = xent.equivalents("keras.losses.BinaryCrossentropy")
    got = _run_xent(e.xent, d, "sigmoid", sample_weight=W[:, None])
    want = keras.losses.BinaryCrossentropy(from_logits=True)(d["multi_hot"], d["logits"],
                                                            sample_weight=W)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5)


@pytest.mark.parametrize("name, peer", [
    ("tf.nn.sparse_softmax_cross_entropy_with_logits",
     lambda d: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=d["indices"],
                                                              logits=d["logits"])),
    ("optax.softmax_cross_entropy",
     lambda d: optax.softmax_cross_entropy(jnp.asarray(d["logits"]), jnp.asarray(d["probs"]))),
    ("optax.losses.sigmoid_binary_cross_entropy",
     lambda d: optax.sigmoid_binary_cross_entropy(jnp.asarray(d["logits"]),
                                                  jnp.asarray(d["multi_hot"]))),
    ("keras.metrics.sparse_categorical_crossentropy",
     lambda d: keras.metrics.sparse_categorical_crossentropy(d["indices"], d["logits"],
                                                             from_logits=True)),
    ("torch.nn.functional.soft_margin_loss",
     lambda d: torch.nn.functional.soft_margin_loss(torch.as_tensor(d["logits"]),
                                                    torch.as_tensor(2 * d["multi_hot"] - 1))),
    ("torch.nn.MultiLabelSoftMarginLoss",
     lambda d: torch.nn.MultiLabelSoftMarginLoss()(torch.as_tensor(d["logits"]),
                                                   torch.as_tensor(d["multi_hot"]))),
    ("torch.nn.NLLLoss",
     lambda d: torch.nn.NLLLoss()(torch.as_tensor(_log_softmax(d["logits"])),
                                  torch.as_tensor(d["indices"]))),
])
def test_name_defaults_match_the_peer(name, peer):
    """Per-example (reduction="none") and averaged names, value for value."""
    d = _data()
    entry = T.lookup(name)
    env = _env(T.CONCEPTS[entry.concept], "xent", d)
    if name.endswith("soft_margin_loss"):
        env["labels"] = 2 * d["multi_hot"] - 1
    got = np.asarray(eval(xent.equivalents(name).xent, env))
    want = peer(d)
    want = want.numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_v1_softmax_stops_the_label_gradient_like_tensorflow():
    d = _data()
    z, p = tf.constant(d["logits"]), tf.constant(d["probs"])
    grads = {}
    for name in ("tf.compat.v1.nn.softmax_cross_entropy_with_logits",
                 "tf.nn.softmax_cross_entropy_with_logits"):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = tf.reduce_sum(resolve(name)(labels=p, logits=z))
        g = tape.gradient(loss, p)
        tf_grad = np.zeros((B, C)) if g is None else g.numpy()
        labels = torch.tensor(d["probs"], requires_grad=True)
        logits = torch.tensor(d["logits"], requires_grad=True)
        env = {"xent": xent, "logits": logits, "labels": labels}
        eval(xent.equivalents(name).xent, env).sum().backward()
        got = np.zeros((B, C)) if labels.grad is None else labels.grad.numpy()
        np.testing.assert_allclose(got, tf_grad, atol=1e-12)
        grads[name] = tf_grad
    assert np.abs(grads["tf.nn.softmax_cross_entropy_with_logits"]).max() > 0.1


@pytest.mark.parametrize("key", ["sampled_softmax", "nce"])
def test_sampled_xent_calls_run_once_built(key):
    call = T.CONCEPTS[key].xent
    if not hasattr(xent, callee(call).split(".")[1]):
        pytest.skip(f"{callee(call)} is built on another branch")
    rng = np.random.default_rng(0)
    env = {"xent": xent, "inputs": rng.normal(size=(4, 3)), "classifier": rng.normal(size=(10, 3)),
           "labels": np.array([1, 2, 3, 9]), "num_sampled": 3, "bias": np.zeros(10)}
    assert np.isfinite(float(np.asarray(eval(call, env))))


# -- every name: its own call at its defaults against the xent call the table prints ----------

PEER_ROOTS = {"tf": "tensorflow", "torch": "torch", "torchvision": "torchvision",
              "keras": "keras", "optax": "optax", "sklearn": "sklearn", "xent": "xent"}


def _name_env(entry, side, d):
    """The variables of a name's calls as arrays of the library that runs ``side``."""
    kind = entry.labels or T.CONCEPTS[entry.concept].labels
    labels = {"probabilities": d["probs"], "indices": d["indices"],
              "multi_hot": d["multi_hot"], "binary": d["binary"],
              "plus_minus_one": 2 * d["multi_hot"] - 1}[kind]
    raw = {"logits": d["logits"], "labels": labels,
           "probabilities": d["p_binary"] if kind == "binary" else d["probs"],
           "log_probabilities": _log_softmax(d["logits"]), "pos_weight": d["pos_weight"],
           "weight": W[:, None], "inputs": d["inputs"], "classifier": d["classifier"]}
    head = side.split(".")[0] if side != "xent" else "xent"
    if side == "xent" and (entry.xent_call() or "").startswith("xent.torch."):
        head = "torch"
    conv = {"tf": tf.constant, "torch": torch.as_tensor, "torchvision": torch.as_tensor,
            "optax": jnp.asarray}.get(head, np.asarray)
    env = {k: conv(v) for k, v in raw.items()}
    env.update(tf=tf, torch=torch, keras=keras, optax=optax, xent=xent)
    for lib, sub in (("sklearn", "sklearn.metrics"), ("torchvision", "torchvision.ops")):
        if head == lib:
            importlib.import_module(sub)  # a submodule is an attribute once imported
            env[lib] = importlib.import_module(lib)
    return env


def _value(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().numpy()
    return np.asarray(x, dtype=np.float64)


@pytest.mark.parametrize("entry", T.NAMES, ids=lambda n: n.name)
def test_every_name_reproduces_its_peer_at_the_peers_defaults(entry):
    """The xent call ``equivalents`` and docs/choosing.md print for a name gives that
    name's own number, at its defaults (from_logits=True where Keras takes logits), value
    for value and shape for shape; a name that cannot be run says why in the table."""
    if entry.peer is None:
        assert entry.unchecked, f"{entry.name}: neither a peer call nor a reason"
        pytest.skip(f"{entry.name}: {entry.unchecked}")
    assert not entry.unchecked
    root = PEER_ROOTS.get(entry.peer.split(".")[0])
    assert root is not None, entry.peer
    pytest.importorskip(root, reason=f"{entry.name}: the peer library {root} is not installed")
    d = _data()
    want = _value(eval(entry.peer, _name_env(entry, entry.peer, d)))
    call = xent.equivalents(entry.name).xent
    assert call == entry.xent_call()
    got = _value(eval(call, _name_env(entry, "xent", d)))
    assert got.shape == want.shape, (call, entry.peer)
    # Keras computes in float32 (its floatx); everything else here is float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7,
                               err_msg=f"{entry.peer} vs {call}")


KERAS_CLASS_NAMES = [n for n in T.NAMES if n.library in ("keras", "tensorflow")
                     and ".losses." in n.name and n.name.rsplit(".", 1)[-1] in T.KERAS_CLASSES]


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", None])
@pytest.mark.parametrize("entry", KERAS_CLASS_NAMES, ids=lambda n: n.name)
def test_keras_class_names_point_to_the_xent_keras_class_with_keras_numbers(entry, reduction):
    """Every Keras / tf.keras loss class the table knows names its xent.keras class, and
    that class gives the Keras class's number (from_logits=True), with fit's sample_weight
    and each of Keras's reductions."""
    ours_name = T.KERAS_CLASSES[entry.name.rsplit(".", 1)[-1]]
    assert f"xent.keras.{ours_name}()" in entry.note
    d = _data()
    env = _name_env(entry, "keras", d)
    theirs = resolve(entry.name)(from_logits=True, reduction=reduction)
    ours = getattr(xent.keras, ours_name)(reduction=reduction)
    for sw in (None, W):
        want = _value(theirs(env["labels"], env["logits"], sample_weight=sw))
        got = _value(ours(env["labels"], env["logits"], sample_weight=sw))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
