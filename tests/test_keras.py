"""xent.keras: Keras-order calls, Keras numbers, serialization; model.fit under each backend."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("sklearn")

import xent.keras as xk  # noqa: E402


def test_sigmoid_matches_binary_crossentropy_with_sample_weight():
    rng = np.random.default_rng(0)
    y = (rng.random((5, 3)) > 0.5).astype("float32")
    z = rng.normal(size=(5, 3)).astype("float32")
    sw = rng.random(5).astype("float32")
    for red in ["sum_over_batch_size", "sum", "none"]:
        a = xk.SigmoidCrossEntropy(reduction=red)(y, z, sample_weight=sw)
        b = keras.losses.BinaryCrossentropy(from_logits=True, reduction=red)(y, z, sample_weight=sw)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_ignore_index_mean_is_over_non_ignored_and_all_ignored_is_zero():
    z = np.array([[1, -2, 3], [0.5, 1, -1], [0, 0, 1]], "float32")
    got = float(xk.SparseSoftmaxCrossEntropy(ignore_index=-1)(np.array([2, -1, 0]), z))
    want = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        np.array([2, 0]), z[[0, 2]]))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(xk.SparseSoftmaxCrossEntropy(ignore_index=-1)(np.array([-1, -1, -1]), z)) == 0.0


def test_config_round_trip():
    loss = xk.SparseSoftmaxCrossEntropy(class_weight=[1.0, 2.0], ignore_index=-100, z_loss=1e-4)
    again = xk.SparseSoftmaxCrossEntropy.from_config(loss.get_config())
    assert again.get_config() == loss.get_config()
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is xk.SparseSoftmaxCrossEntropy


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_three_models_fit_match_builtin_losses_and_save_load(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")]))
    script = os.path.join(os.path.dirname(__file__), "_keras_fit.py")
    r = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and f"OK {backend}" in r.stdout, r.stderr[-3000:]
