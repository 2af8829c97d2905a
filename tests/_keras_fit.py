"""Run under one Keras backend (KERAS_BACKEND set by tests/test_keras.py): three models, fit,
compare loss curves to Keras's built-in loss, save/load round-trip. Prints OK on success."""
import os
import sys
import tempfile

import numpy as np
import keras
from sklearn.datasets import load_breast_cancer, load_digits

import xent.keras as xk


def model(n_in, n_out):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(n_out)])


def curve(x, y, n_out, loss):
    m = model(x.shape[1], n_out)
    m.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    # 256 rows in batches of 48: the last batch has 16, so under TensorFlow the
    # batch axis is traced as None (tf.data), as in most real fits
    h = m.fit(x, y, epochs=3, batch_size=48, shuffle=False, verbose=0)
    return m, np.array(h.history["loss"])


d = load_digits()
xd = (d.data[:256] / 16.0).astype("float32")
yd = d.target[:256]
bc = load_breast_cancer()
xb = ((bc.data - bc.data.mean(0)) / bc.data.std(0)).astype("float32")[:256]
yb = bc.target[:256].astype("float32")[:, None]
ybits = ((yd[:, None] >> np.arange(4)) & 1).astype("float32")  # multi-label: the digit's bits

cases = [
    (xb, yb, 1, xk.SigmoidCrossEntropy(), keras.losses.BinaryCrossentropy(from_logits=True)),
    (xd, yd, 10, xk.SparseSoftmaxCrossEntropy(),
     keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    (xd, ybits, 4, xk.SigmoidCrossEntropy(), keras.losses.BinaryCrossentropy(from_logits=True)),
    (xd, np.eye(10, dtype="float32")[yd], 10, xk.SoftmaxCrossEntropy(label_smoothing=0.1),
     keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)),
]
for x, y, n_out, mine, theirs in cases:
    m, a = curve(x, y, n_out, mine)
    _, b = curve(x, y, n_out, theirs)
    np.testing.assert_allclose(a, b, rtol=1e-4)
    assert a[-1] < a[0]
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    m.save(path)
    m2 = keras.models.load_model(path)
    assert type(m2.loss) is type(mine) and m2.loss.get_config() == mine.get_config()
    np.testing.assert_allclose(m2.evaluate(x, y, verbose=0), m.evaluate(x, y, verbose=0),
                               rtol=1e-5)
print("OK", keras.backend.backend())
sys.stdout.flush()
