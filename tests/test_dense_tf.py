"""The fused TensorFlow kernels of the softmax losses (src/xent/_kernels/dense_tf.py).

Values and GradientTape gradients against the reference composition
(``table.disabled()``), a float64 formula and TensorFlow's own ops, eager,
under ``tf.function`` and ``jit_compile=True``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import xent  # noqa: E402
from xent._kernels import table  # noqa: E402

RNG = np.random.default_rng(3)
Z = RNG.normal(size=(6, 5)) * 3
T = RNG.integers(0, 5, 6)
Y = RNG.dirichlet(np.ones(5), 6)
CW = RNG.random(5) + 0.5


@pytest.fixture
def spy(monkeypatch):
    taken = []
    orig = table.fused

    def wrapper(loss, call):
        out = orig(loss, call)
        taken.append((loss, out is not None))
        return out

    monkeypatch.setattr(table, "fused", wrapper)
    return taken


def _grads(fn, z, *watched, mode="eager"):
    def body(z, *w):
        with tf.GradientTape() as tape:
            tape.watch([z, *w])
            loss = fn(z, *w)
        return [loss] + tape.gradient(loss, [z, *w])

    if mode != "eager":
        body = tf.function(body, jit_compile=(mode == "jit"))
    return [None if v is None else tf.convert_to_tensor(v).numpy() for v in body(z, *watched)]


def _both(fn, z, *watched, mode="eager"):
    fused = _grads(fn, z, *watched, mode=mode)
    with table.disabled():
        ref = _grads(fn, z, *watched, mode=mode)
    return fused, ref


CASES = {
    "sparse": lambda z, cw: xent.sparse_softmax_cross_entropy(z, tf.constant(T)),
    "sparse_all": lambda z, cw: xent.sparse_softmax_cross_entropy(
        z, tf.constant(T), class_weight=cw, label_smoothing=0.2, z_loss=0.01),
    "sparse_ws": lambda z, cw: xent.sparse_softmax_cross_entropy(
        z, tf.constant(T), class_weight=cw, reduction="none"),
    "dense": lambda z, cw: xent.softmax_cross_entropy(z, tf.constant(Y)),
    "dense_all": lambda z, cw: xent.softmax_cross_entropy(
        z, tf.constant(Y), class_weight=cw, label_smoothing=0.2, z_loss=0.01, reduction="sum"),
}


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, mode, spy):
    fused, ref = _both(CASES[name], tf.constant(Z), tf.constant(CW), mode=mode)
    assert any(taken for _, taken in spy)
    for a, b in zip(fused, ref):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _formula(z, a, zl=0.0):
    m = z.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
    p = np.exp(z - lse[:, None])
    A = a.sum(-1)
    return (a * (lse[:, None] - z)).sum(-1) + zl * lse ** 2, (A + 2 * zl * lse)[:, None] * p - a


def test_float64_formula_and_label_gradient():
    s, zl = 0.2, 0.01
    a = ((1 - s) * Y + s / 5) * CW
    val, dz = _formula(Z, a, zl)
    y = tf.constant(Y)
    loss, gz, gy = _grads(lambda z, y: xent.softmax_cross_entropy(
        z, y, class_weight=CW, label_smoothing=s, z_loss=zl, reduction="none"), tf.constant(Z), y)
    np.testing.assert_allclose(loss, val, rtol=1e-12)
    np.testing.assert_allclose(gz, dz, rtol=1e-10, atol=1e-13)
    m = Z.max(-1, keepdims=True)
    lse = m + np.log(np.exp(Z - m).sum(-1, keepdims=True))
    np.testing.assert_allclose(gy, (1 - s) * CW * (lse - Z), rtol=1e-10)
    at = (1 - s) * CW[T][:, None] * np.eye(5)[T] + s / 5 * CW
    val, dz = _formula(Z, at, zl)
    loss, gz = _grads(lambda z: xent.sparse_softmax_cross_entropy(
        z, tf.constant(T), class_weight=CW, label_smoothing=s, z_loss=zl, reduction="none"),
        tf.constant(Z))
    np.testing.assert_allclose(loss, val, rtol=1e-12)
    np.testing.assert_allclose(gz, dz, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_matches_tf_ops(mode):
    z32 = tf.constant(Z, tf.float32)
    ours = _grads(lambda z: xent.sparse_softmax_cross_entropy(z, tf.constant(T), reduction="none"),
                  z32, mode=mode)
    theirs = _grads(lambda z: tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.constant(T), logits=z), z32, mode=mode)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    y = tf.constant(Y, tf.float32)
    ours = _grads(lambda z, y: xent.softmax_cross_entropy(z, y, reduction="none"), z32, y, mode=mode)
    theirs = _grads(lambda z, y: tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z),
                    z32, y, mode=mode)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_masks_and_extremes(mode):
    z = Z.copy()
    z[:, 4] = -np.inf                   # a masked class, never the label
    t = np.where(T == 4, 0, T)
    y = Y.copy()
    y[:, 0] += y[:, 4]
    y[:, 4] = 0
    z[0, :2] = [1e4, -1e4]
    for fn in (lambda z: xent.sparse_softmax_cross_entropy(z, tf.constant(t), z_loss=0.01),
               lambda z: xent.softmax_cross_entropy(z, tf.constant(y), class_weight=CW)):
        for dt in (tf.float32, tf.float64):
            fused, ref = _both(fn, tf.constant(z, dt), mode=mode)
            for a, b in zip(fused, ref):
                assert np.isfinite(a).all()
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            assert (fused[1][:, 4] == 0).all()


def _half_matches(fn, z, mode="eager"):
    """Value and gradient in the half dtype of ``z``, close to the reference's; returns the fused pair."""
    fused, ref = _both(fn, z, mode=mode)
    out = fn(z)
    assert out.dtype == z.dtype
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = fn(z)
    assert tape.gradient(loss, z).dtype == z.dtype
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(np.float64(a), np.float64(b), rtol=1e-2, atol=1e-3)
    return fused


@pytest.mark.parametrize("dt", ["float16", "bfloat16"])
def test_half_precision(dt):
    z = tf.cast(tf.constant(Z), dt)
    for fn in (lambda z: xent.sparse_softmax_cross_entropy(z, tf.constant(T), label_smoothing=0.1),
               lambda z: xent.softmax_cross_entropy(z, tf.constant(Y, tf.float32))):
        _half_matches(fn, z)


def test_zero_weight_nan_padding_and_all_ignored():
    z = Z.copy()
    z[2] = np.nan
    sw = np.ones(6)
    sw[2] = 0
    for fn in (lambda z: xent.sparse_softmax_cross_entropy(z, tf.constant(T), sample_weight=sw,
                                                           label_smoothing=0.1),
               lambda z: xent.softmax_cross_entropy(z, tf.constant(Y), sample_weight=sw,
                                                    class_weight=CW)):
        fused, ref = _both(fn, tf.constant(z))
        for a, b in zip(fused, ref):
            assert np.isfinite(a).all()
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        assert (fused[1][2] == 0).all()
    ign = np.full(6, -100)
    fused, ref = _both(lambda z: xent.sparse_softmax_cross_entropy(z, tf.constant(ign),
                                                                   ignore_index=-100),
                       tf.constant(Z))
    for a, b in zip(fused, ref):
        np.testing.assert_array_equal(a, b)
    assert (fused[1] == 0).all()


def _second_derivatives_match(fns, z0, rtol, atol):
    """Hessian-vector products w.r.t. the logits (nested tapes) of each ``fn``, fused vs reference."""
    wgt = tf.constant(RNG.random(z0.shape))

    def hv(fn):
        z = tf.constant(z0)
        with tf.GradientTape() as outer:
            outer.watch(z)
            with tf.GradientTape() as inner:
                inner.watch(z)
                loss = fn(z)
            total = tf.reduce_sum(inner.gradient(loss, z) * wgt)
        return outer.gradient(total, z).numpy()

    for fn in fns:
        ours = hv(fn)
        with table.disabled():
            ref = hv(fn)
        assert np.abs(ref).max() > 1e-3
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)


def test_second_derivative_wrt_logits():
    _second_derivatives_match(
        (lambda z: xent.sparse_softmax_cross_entropy(z, tf.constant(T), z_loss=0.01,
                                                     label_smoothing=0.1),
         lambda z: xent.softmax_cross_entropy(z, tf.constant(Y), z_loss=0.01)),
        Z, rtol=1e-9, atol=1e-12)


def test_declines_focal(spy):
    xent.sparse_softmax_cross_entropy(tf.constant(Z), tf.constant(T), focal_gamma=2.0)
    xent.softmax_cross_entropy(tf.constant(Z), tf.constant(Y), focal_gamma=2.0)
    assert spy == [("sparse", False), ("dense", False)]
    xent.sparse_softmax_cross_entropy(tf.constant(Z), tf.constant(T))
    assert spy[-1] == ("sparse", True)
    del spy[:]
    for kw in ({"focal_gamma": 2.0}, {"focal_alpha": 0.25}, {}):
        xent.sigmoid_cross_entropy(tf.constant(Z), tf.constant(YB), **kw)
    assert spy == [("sigmoid", False), ("sigmoid", False), ("sigmoid", True)]


def _step_hlo(fn, z, reduce=True):
    """Optimized HLO of the fwd+bwd step (the loss and the whole gradient) under jit_compile."""
    @tf.function(jit_compile=True)
    def step(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = fn(z)
            if reduce:
                loss = tf.reduce_sum(loss)
        return loss, tape.gradient(loss, z)

    return step.experimental_get_compiler_ir(z)(stage="optimized_hlo")


def _nc_buffers(fn, z):
    """The ``[N, C]`` arrays XLA materializes for fwd+bwd: instructions of the entry computation."""
    hlo = _step_hlo(fn, z)
    entry = hlo[hlo.find("ENTRY"):]
    n, c = z.shape
    return sum(1 for line in entry.splitlines()
               if "=" in line and f"[{n},{c}]" in line.split("=", 1)[1].split("(")[0]
               and "parameter(" not in line)


def test_xla_materializes_no_more_nc_buffers_than_tf():
    z = tf.constant(RNG.normal(size=(64, 96)), tf.float32)
    t = tf.constant(RNG.integers(0, 96, 64))
    y = tf.nn.softmax(tf.constant(RNG.normal(size=(64, 96)), tf.float32))
    pairs = [
        (lambda z: xent.sparse_softmax_cross_entropy(z, t, reduction="none"),
         lambda z: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=t, logits=z)),
        (lambda z: xent.softmax_cross_entropy(z, y, reduction="none"),
         lambda z: tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z)),
        (lambda z: xent.sigmoid_cross_entropy(z, y, reduction="none"),
         lambda z: tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)),
    ]
    for ours, theirs in pairs:
        a, b = _nc_buffers(ours, z), _nc_buffers(theirs, z)
        assert 1 <= a <= b, (a, b)


def test_sigmoid_mean_writes_no_elementwise_loss_under_xla():
    """The plain mean sums the rows by a product that XLA fuses the elementwise loss into,
    so the step materializes fewer ``[N, C]`` arrays than ``tf.nn``'s (whose loss is written
    out for its ``reduce_sum``): the gradient and ``exp(-|z|)``."""
    z = tf.constant(RNG.normal(size=(64, 96)), tf.float32)
    y = tf.constant((RNG.random((64, 96)) < 0.3).astype(np.float32))
    a = _nc_buffers(lambda z: xent.sigmoid_cross_entropy(z, y), z)
    b = _nc_buffers(lambda z: tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)), z)
    assert 1 <= a < b, (a, b)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_sigmoid_mean_of_millions_of_float32_entries_is_accurate(jit, weighted):
    """Against float64: XLA's ``reduce_sum`` of 8M float32 losses was off by 3e-6 (relative);
    summing rows by the product first keeps it near 1e-8, in the kernel's own mean and in
    the general reduction (sample weights)."""
    rng = np.random.default_rng(3)
    zn = rng.normal(size=(1024, 8192)).astype(np.float32)
    yn = (rng.random((1024, 8192)) < 0.1).astype(np.float32)
    sw = (rng.random((1024, 8192)) + 0.5).astype(np.float32) if weighted else None
    z64 = zn.astype(np.float64)
    per = np.logaddexp(0.0, z64) - yn * z64
    want = per.mean() if sw is None else (per * sw).sum() / sw.astype(np.float64).sum()
    kw = {} if sw is None else {"sample_weight": tf.constant(sw)}
    f = tf.function(lambda z, y: xent.sigmoid_cross_entropy(z, y, **kw), jit_compile=jit)
    got = float(f(tf.constant(zn), tf.constant(yn)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _nc_exps(hlo, shape):
    """How many ``[N, C]`` exponentials the compiled step computes (fused computations too)."""
    n, c = shape
    return sum(1 for line in hlo.splitlines()
               if " exponential(" in line and f"f32[{n},{c}]" in line.split("exponential(")[0])


@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_sigmoid_step_computes_one_exp_per_logit_under_xla(pos_weight):
    """The forward and backward passes write ``exp(-|z|)`` alike, so XLA computes it once per
    logit for the whole step, as for ``tf.nn``'s composition (two exponentials made the step
    about 5% slower than ``tf.nn``'s under ``jit_compile``)."""
    z = tf.constant(RNG.normal(size=(64, 96)), tf.float32)
    y = tf.constant((RNG.random((64, 96)) < 0.3).astype(np.float32))
    ours = _step_hlo(lambda z: xent.sigmoid_cross_entropy(z, y, pos_weight=pos_weight), z, False)
    theirs = _step_hlo(lambda z: tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)), z, False)
    assert _nc_exps(ours, z.shape) == 1 == _nc_exps(theirs, z.shape)


def test_soft_label_step_computes_one_exp_per_logit_under_xla():
    """The backward pass forms ``p`` as ``exp(z - m) / S`` from the forward pass's expression,
    so XLA computes the exponentials once per logit, as for ``tf.nn``'s op (recomputing
    them made the step about 12% slower than ``tf.nn``'s under ``jit_compile``)."""
    z = tf.constant(RNG.normal(size=(64, 96)), tf.float32)
    y = tf.nn.softmax(tf.constant(RNG.normal(size=(64, 96)), tf.float32))
    ours = _step_hlo(lambda z: xent.softmax_cross_entropy(z, y), z, False)
    theirs = _step_hlo(lambda z: tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z)), z, False)
    assert _nc_exps(ours, z.shape) == 1 == _nc_exps(theirs, z.shape)


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_unnormalized_labels_float64_formula(mode):
    """Rows of ``y`` summing to 0, 0.3 and 2.5, a masked class with zero label, a tiny label."""
    z = Z.copy()
    y = Y.copy()
    y[0] = 0.0
    y[1] *= 0.3
    y[2] *= 2.5
    z[3, 1], y[3, 1] = -np.inf, 0.0
    y[4, 2] = 1e-300
    val, dz = _formula(np.where(np.isinf(z), -1e300, z), y)
    for zl in (0.0, 0.01):
        if zl:
            val, dz = _formula(np.where(np.isinf(z), -1e300, z), y, zl)
        loss, gz = _grads(lambda z: xent.softmax_cross_entropy(z, tf.constant(y), z_loss=zl,
                                                               reduction="none"),
                          tf.constant(z), mode=mode)
        np.testing.assert_allclose(loss, val, rtol=1e-12)
        np.testing.assert_allclose(gz, dz, rtol=1e-10, atol=1e-13)
        assert gz[3, 1] == 0
    y[3, 1] = 1e-300                    # a positive label on a masked class: the loss is +inf
    loss = _grads(lambda z: xent.softmax_cross_entropy(z, tf.constant(y), reduction="none"),
                  tf.constant(z), mode=mode)[0]
    assert loss[3] == np.inf and np.isfinite(np.delete(loss, 3)).all()


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("shape", [(0, 5), (5,), (2, 3, 5)])
def test_shapes(shape, mode):
    """Row sums (a product with ones on the CPU) keep the leading shape, empty batches included."""
    z = tf.constant(RNG.normal(size=shape))
    y = tf.constant(RNG.dirichlet(np.ones(5), shape[:-1]) if len(shape) > 1 else RNG.dirichlet(np.ones(5)))
    t = tf.constant(RNG.integers(0, 5, shape[:-1]))
    for fn in (lambda z: xent.softmax_cross_entropy(z, y, reduction="none", z_loss=0.01),
               lambda z: xent.sparse_softmax_cross_entropy(z, t, reduction="none",
                                                           label_smoothing=0.1)):
        fused, ref = _both(fn, z, mode=mode)
        assert fused[0].shape == shape[:-1] and fused[1].shape == shape
        for a, b in zip(fused, ref):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if len(shape) > 1:
        m = z.numpy().max(-1, keepdims=True)
        lse = m[..., 0] + np.log(np.exp(z.numpy() - m).sum(-1))
        loss = _grads(lambda z: xent.softmax_cross_entropy(z, y, reduction="none"), z, mode=mode)[0]
        np.testing.assert_allclose(loss, (y.numpy() * (lse[..., None] - z.numpy())).sum(-1),
                                   rtol=1e-12)


_PEAK = """
import glob, os, re, sys, tempfile
d = tempfile.mkdtemp()
os.environ["XLA_FLAGS"] = "--xla_dump_to=" + d
import tensorflow as tf
import xent
N, C = 256, 4096
z = tf.random.normal((N, C))
y = tf.nn.softmax(tf.random.normal((N, C)))

def total(lf):
    @tf.function(jit_compile=True)
    def step(z, y):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = lf(z, y)
        return loss, tape.gradient(loss, z)
    before = set(glob.glob(d + "/*buffer-assignment*"))
    step(z, y)
    (f,) = set(glob.glob(d + "/*buffer-assignment*")) - before
    return int(re.search(r"Total bytes used: ([0-9]+)", open(f).read()).group(1))

print(total(xent.softmax_cross_entropy),
      total(lambda z, y: tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z))),
      N * C * 4)
t = tf.random.uniform((N,), 0, C, tf.int64)
yb = tf.cast(tf.random.uniform((N, C)) < 0.1, tf.float32)
print(total(lambda z, y: xent.sparse_softmax_cross_entropy(z, t)),
      total(lambda z, y: tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=t, logits=z))))
print(total(lambda z, y: xent.sigmoid_cross_entropy(z, yb)),
      total(lambda z, y: tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
          labels=yb, logits=z))))
"""


def test_xla_peak_memory_of_soft_loss_not_above_tf():
    """XLA's buffer assignment (all live buffers at the peak, inputs included) for fwd+bwd.

    The benchmark's step (mean loss and the whole gradient): the loss's pass
    over ``[N, C]`` must not hold a buffer while ``exp``'s is alive (it did:
    one ``[N, C]`` buffer more than ``tf.nn``). A fresh process, as XLA reads
    its flags once.
    """
    src = os.path.dirname(os.path.dirname(xent.__file__))
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _PEAK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    ours, theirs, nc = map(int, lines[-3].split())
    assert theirs >= 3 * nc             # the inputs and tf.nn's one temporary
    assert ours < theirs + nc // 2, (ours, theirs, nc)
    # integer labels: no buffer more than tf.nn, not even the [C] vector of a row-sum product
    ours, theirs = map(int, lines[-2].split())
    assert theirs >= nc and ours <= theirs, (ours, theirs, nc)
    # sigmoid: exp(-|z|) shared by both passes, as in tf.nn's step; the row-sum product of
    # the mean adds its [C] vector of ones (C float32 and XLA's small buffers), nothing [N, C]
    ours, theirs = map(int, lines[-1].split())
    assert theirs >= 4 * nc and ours <= theirs + 4 * 4096 + 4096, (ours, theirs, nc)


# ------------------------------------------------------------- sigmoid ---
YB = (RNG.random((6, 5)) < 0.4).astype(np.float64)
YS = RNG.random((6, 5))
PW = RNG.random(5) + 0.5
SW = RNG.random((6, 1)) + 0.1

SIGMOID = {
    "mean": lambda z, y, pw: xent.sigmoid_cross_entropy(z, y),
    "none_pw_smooth": lambda z, y, pw: xent.sigmoid_cross_entropy(
        z, y, pos_weight=pw, label_smoothing=0.2, reduction="none"),
    "sum_pw": lambda z, y, pw: xent.sigmoid_cross_entropy(z, y, pos_weight=pw, reduction="sum"),
    "mean_sw": lambda z, y, pw: xent.sigmoid_cross_entropy(
        z, y, pos_weight=pw, sample_weight=SW, label_smoothing=0.1),
    "sobs_normalizer": lambda z, y, pw: xent.sigmoid_cross_entropy(
        z, y, sample_weight=SW[:, 0][:, None] * np.ones(5), normalizer=7.0),
}


def _sig_formula(z, y, pw=1.0, s=0.0):
    """float64: loss, d/dz, d/dy, d/dpw (per element) of ``pw y' sp(-z) + (1 - y') sp(z)``."""
    ys = (1 - s) * y + s / 2
    sp = np.logaddexp(z, 0.0)
    spn = np.logaddexp(-z, 0.0)
    sig, sig_neg = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))
    loss = pw * ys * spn + (1 - ys) * sp
    return loss, (1 - ys) * sig - pw * ys * sig_neg, (1 - s) * (pw * spn - sp), ys * spn


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
@pytest.mark.parametrize("name", list(SIGMOID))
def test_sigmoid_matches_reference(name, mode, spy):
    """Values and the gradients to the logits, labels and ``pos_weight`` (float64)."""
    fused, ref = _both(SIGMOID[name], tf.constant(Z), tf.constant(YS), tf.constant(PW), mode=mode)
    assert ("sigmoid", True) in spy
    assert fused[2] is not None         # the labels' gradient
    for a, b in zip(fused, ref):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_sigmoid_float64_formula(mode):
    s = 0.2
    val, dz, dy, dpw = _sig_formula(Z, YS, PW, s)
    loss, gz, gy, gpw = _grads(lambda z, y, pw: xent.sigmoid_cross_entropy(
        z, y, pos_weight=pw, label_smoothing=s, reduction="none"),
        tf.constant(Z), tf.constant(YS), tf.constant(PW), mode=mode)
    np.testing.assert_allclose(loss, val, rtol=1e-13)
    np.testing.assert_allclose(gz, dz, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gy, dy, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gpw, dpw.sum(0), rtol=1e-12)
    loss, gz = _grads(lambda z: xent.sigmoid_cross_entropy(z, tf.constant(YS)), tf.constant(Z),
                      mode=mode)
    val, dz, _, _ = _sig_formula(Z, YS)
    np.testing.assert_allclose(loss, val.mean(), rtol=1e-13)
    np.testing.assert_allclose(gz, dz / Z.size, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_sigmoid_matches_tf_ops(mode):
    """``tf.nn.sigmoid_cross_entropy_with_logits`` / ``weighted_cross_entropy_with_logits``."""
    z, y = tf.constant(Z, tf.float32), tf.constant(YS, tf.float32)
    pairs = [
        (lambda z, y: xent.sigmoid_cross_entropy(z, y, reduction="none"),
         lambda z, y: tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)),
        (lambda z, y: xent.sigmoid_cross_entropy(z, y, pos_weight=2.5, reduction="none"),
         lambda z, y: tf.nn.weighted_cross_entropy_with_logits(labels=y, logits=z, pos_weight=2.5)),
        (lambda z, y: xent.sigmoid_cross_entropy(z, y),
         lambda z, y: tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z))),
    ]
    for ours, theirs in pairs:
        a, b = _grads(ours, z, y, mode=mode), _grads(theirs, z, y, mode=mode)
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_sigmoid_extremes_and_infinities(mode):
    """+-1e4 logits; -inf with label 0 and +inf with label 1 give 0 loss and 0 gradients."""
    z, y = Z.copy(), YB.copy()
    z[0], y[0] = [1e4, -1e4, 1e4, -1e4, 0.0], [1, 0, 0, 1, 0.5]
    z[1], y[1] = [-np.inf, np.inf, -np.inf, np.inf, 3.0], [0, 1, 0, 1, 1]
    for dt in (tf.float32, tf.float64):
        fn = lambda z, y: xent.sigmoid_cross_entropy(z, y, pos_weight=PW, reduction="none")  # noqa
        fused, ref = _both(fn, tf.constant(z, dt), tf.constant(y, dt), mode=mode)
        for a, b in zip(fused, ref):
            np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        loss, gz, gy = fused
        np.testing.assert_allclose(loss[0], [0, 0, 1e4, 1e4 * PW[3], np.log(2) * (PW[4] + 1) / 2],
                                   rtol=1e-6)
        assert (loss[1, :4] == 0).all() and (gz[1, :4] == 0).all() and (gy[1, :4] == 0).all()
        assert np.isfinite(gz).all() and np.isfinite(gy[2:]).all()
    z[1, 0], y[1, 0] = -np.inf, 1.0     # a positive label on a -inf logit: loss +inf, gradient -pw
    fused, ref = _both(lambda z: xent.sigmoid_cross_entropy(z, tf.constant(y), pos_weight=PW,
                                                            reduction="none"),
                       tf.constant(z), mode=mode)
    assert fused[0][1, 0] == np.inf and fused[1][1, 0] == -PW[0] == ref[1][1, 0]


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_sigmoid_zero_weight_nan_and_empty(mode):
    z, y = Z.copy(), YS.copy()
    z[2], y[3, 1] = np.nan, np.nan
    sw = np.ones((6, 5))
    sw[2], sw[3, 1] = 0, 0
    for red in ("mean", "none", "sum_by_nonzero_weights"):
        fn = lambda z, y: xent.sigmoid_cross_entropy(  # noqa: E731
            z, y, pos_weight=PW, sample_weight=sw, label_smoothing=0.1, reduction=red)
        fused, ref = _both(fn, tf.constant(z), tf.constant(y), mode=mode)
        for a, b in zip(fused, ref):
            assert np.isfinite(a).all()
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        assert (fused[1][2] == 0).all() and fused[2][3, 1] == 0
    for shape in ((0, 5), (5,), (2, 3, 5)):
        z = tf.constant(RNG.normal(size=shape))
        y = tf.constant(RNG.random(shape))
        for red in ("none", "mean", "sum"):
            fn = lambda z, y: xent.sigmoid_cross_entropy(z, y, reduction=red)  # noqa: E731
            fused, ref = _both(fn, z, y, mode=mode)
            assert fused[1].shape == shape and fused[2].shape == shape
            for a, b in zip(fused, ref):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dt", ["float16", "bfloat16"])
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_sigmoid_half_precision(dt, mode):
    z = tf.cast(tf.constant(Z), dt)
    y = tf.constant(YS, tf.float32)
    for red in ("none", "mean"):
        fused = _half_matches(
            lambda z: xent.sigmoid_cross_entropy(z, y, pos_weight=PW, reduction=red), z, mode)
        val, dz, _, _ = _sig_formula(np.float64(z.numpy()), YS, PW)
        if red == "none":
            np.testing.assert_allclose(np.float64(fused[0]), val, rtol=1e-2, atol=1e-3)
            np.testing.assert_allclose(np.float64(fused[1]), dz, rtol=2e-2, atol=2e-3)


def test_sigmoid_second_derivative():
    z0 = Z.copy()
    z0[0, 0] = 0.0                      # the select's one-sided derivative at 0
    _second_derivatives_match(
        (lambda z: xent.sigmoid_cross_entropy(z, tf.constant(YS), pos_weight=PW),
         lambda z: xent.sigmoid_cross_entropy(z, tf.constant(YS), label_smoothing=0.1,
                                              sample_weight=SW, reduction="none")),
        z0, rtol=1e-10, atol=1e-13)


def test_sigmoid_xla_materializes_no_more_nc_buffers_than_tf():
    z = tf.constant(RNG.normal(size=(64, 96)), tf.float32)
    y = tf.constant((RNG.random((64, 96)) < 0.2).astype(np.float32))
    for kw, theirs in (({}, lambda z: tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)),
                       ({"pos_weight": 3.0}, lambda z: tf.nn.weighted_cross_entropy_with_logits(
                           labels=y, logits=z, pos_weight=3.0))):
        a = _nc_buffers(lambda z: xent.sigmoid_cross_entropy(z, y, reduction="none", **kw), z)
        b = _nc_buffers(theirs, z)
        assert a <= b, (a, b)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_sigmoid_confident_gradients_keep_relative_precision(mode):
    """float32 ``z = +-20, +-60`` on their correct labels: the gradient ``-+pw e^-|z|``, not 0."""
    z = np.array([20.0, -20.0, 60.0, -60.0])
    y = np.array([1.0, 0.0, 1.0, 0.0])
    _, dz, _, _ = _sig_formula(z, y, 2.0)
    _, gz = _grads(lambda z: xent.sigmoid_cross_entropy(z, tf.constant(y, tf.float32), pos_weight=2.0,
                                                        reduction="none"),
                   tf.constant(z, tf.float32), mode=mode)
    assert (np.abs(dz) > 0).all()
    np.testing.assert_allclose(gz, dz, rtol=1e-5)
