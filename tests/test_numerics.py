"""Numerics regressions, each named after what it guards."""

from __future__ import annotations

import numpy as np
import pytest

import xent
from tests._oracle import fd_grad, log_loss_ref, sigmoid_ref, softmax_ref, sparse_ref

REDS = ("none", "sum", "mean")


# -- extreme logits -----------------------------------------------------------

EXTREME = np.array([[1e4, -1e4, 0.0, 5e3, 1.0], [-1e4, -1e4, -1e4, -1e4 + 1.0, -1e4],
                    [1e4, 1e4, 0.0, -1e4, 2.0], [-5e3, 5e3, 1e4, -1e4, 3.0]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logits_1e4_give_the_float64_answer_softmax(be, dtype):
    y = np.array([[0.0, 1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.5, 0.0], [0.2] * 5,
                  [0.0, 0.0, 0.0, 0.0, 1.0]])
    t = np.array([1, 3, 2, 4])
    z = EXTREME.astype(dtype)
    for kw in ({}, {"label_smoothing": 0.1, "focal_gamma": 2.0, "z_loss": 1e-4}):
        dense = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), reduction="none", **kw)
        sparse = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), reduction="none",
                                                   **kw)
        np.testing.assert_allclose(be.to_numpy(dense), softmax_ref(z, y, reduction="none", **kw),
                                   rtol=1e-6 if dtype == "float32" else 1e-13)
        np.testing.assert_allclose(be.to_numpy(sparse), sparse_ref(z, t, reduction="none", **kw),
                                   rtol=1e-6 if dtype == "float32" else 1e-13)


def test_logits_1e4_give_the_float64_gradient_softmax(gbe):
    y = np.array([[0.0, 1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.5, 0.0], [0.2] * 5,
                  [0.0, 0.0, 0.0, 0.0, 1.0]])
    gz, = gbe.grad(lambda a: xent.softmax_cross_entropy(a, gbe.asarray(y), reduction="sum"),
                   gbe.asarray(EXTREME))
    p = np.exp(EXTREME - EXTREME.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(gz, p - y, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logits_1e4_give_the_float64_answer_sigmoid(gbe, dtype):
    z = np.array([1e4, -1e4, 1e4, -1e4, 30.0, -30.0]).astype(dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.7])
    for kw in ({}, {"pos_weight": 2.0, "focal_gamma": 2.0, "label_smoothing": 0.1}):
        fn = lambda a: xent.sigmoid_cross_entropy(a, gbe.asarray(y), reduction="sum",  # noqa
                                                  **kw)
        got = xent.sigmoid_cross_entropy(gbe.asarray(z), gbe.asarray(y), reduction="none", **kw)
        np.testing.assert_allclose(gbe.to_numpy(got), sigmoid_ref(z, y, reduction="none", **kw),
                                   rtol=1e-6 if dtype == "float32" else 1e-13, atol=1e-300)
        gz, = gbe.grad(fn, gbe.asarray(z.astype(np.float64)))
        assert np.isfinite(gz).all()
        np.testing.assert_allclose(
            gz, fd_grad(lambda a: sigmoid_ref(a, y, reduction="sum", **kw), z.astype(np.float64),
                        h=1e-4), rtol=1e-6, atol=1e-8)  # FD of a loss of ~1e3


# -- -inf masked classes ----------------------------------------------------------

MASKED = np.array([[-np.inf, 1.0, 2.0, -np.inf, 0.0], [0.5, -np.inf, -1.0, 3.0, -np.inf],
                   [1.0, 2.0, 3.0, 4.0, 5.0], [-np.inf, -np.inf, -np.inf, -np.inf, 7.0]])
MASK_Y = np.array([[0.0, 0.3, 0.7, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0],
                   [0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize("focal_gamma", [0.0, 0.5, 2.0])
def test_minus_inf_on_label_zero_classes_gives_finite_loss_and_grads_softmax(gbe, focal_gamma):
    """-inf logits on label-0 classes: the loss and gradients of the unmasked problem, 0 elsewhere."""
    cw = np.array([1.0, 2.0, 0.5, 1.5, 1.0])
    kw = dict(focal_gamma=focal_gamma, z_loss=1e-3, reduction="mean")

    def dense(a, b):
        return xent.softmax_cross_entropy(a, b, class_weight=gbe.asarray(cw), **kw)

    value = dense(gbe.asarray(MASKED), gbe.asarray(MASK_Y))
    gz, gy = gbe.grad(dense, gbe.asarray(MASKED), gbe.asarray(MASK_Y), argnums=(0, 1))
    assert np.isfinite(gbe.to_numpy(value)) and np.isfinite(gz).all() and np.isfinite(gy).all()
    # The same rows without the masked classes (row by row, "sum" then the mean by hand).
    keep = np.isfinite(MASKED)
    total, den, ref_gz, ref_gy = 0.0, 0.0, np.zeros_like(MASKED), np.zeros_like(MASKED)
    for i in range(4):
        z_i, y_i, cw_i = MASKED[i, keep[i]][None], MASK_Y[i, keep[i]][None], cw[keep[i]]
        f = lambda a, b: softmax_ref(a, b, class_weight=cw_i, focal_gamma=focal_gamma,  # noqa
                                     z_loss=1e-3, reduction="sum")
        total += f(z_i, y_i)
        den += (y_i * cw_i).sum()
        ref_gz[i, keep[i]] = fd_grad(lambda a: f(a, y_i), z_i)[0]
        ref_gy[i, keep[i]] = fd_grad(lambda b: f(z_i, b), y_i)[0]
    np.testing.assert_allclose(gbe.to_numpy(value), total / den, rtol=1e-12)
    np.testing.assert_allclose(gz, ref_gz / den, rtol=1e-6, atol=1e-9)
    # label gradient: the loss term of a masked entry gives 0 (its log p is -inf,
    # by convention); the mean's denominator sum_c w_c y_c gives every entry
    # -total / den**2 * w_c, the masked ones included.
    ref_gy = ref_gy / den - total / den**2 * cw
    np.testing.assert_allclose(gy, ref_gy, rtol=1e-6, atol=1e-9)

    t = np.array([2, 0, 1, 4])
    sparse = xent.sparse_softmax_cross_entropy(gbe.asarray(MASKED), gbe.asarray(t),
                                               focal_gamma=focal_gamma, z_loss=1e-3)
    gs, = gbe.grad(lambda a: xent.sparse_softmax_cross_entropy(a, gbe.asarray(t),
                                                               focal_gamma=focal_gamma,
                                                               z_loss=1e-3), gbe.asarray(MASKED))
    assert np.isfinite(gbe.to_numpy(sparse)) and np.isfinite(gs).all()
    np.testing.assert_array_equal(gs[~keep], 0.0)


def test_minus_inf_with_label_smoothing_is_infinite_like_the_formula(be):
    # s / C > 0 lands on the masked class: the formula's loss is +inf (as in PyTorch).
    got = xent.sparse_softmax_cross_entropy(be.asarray(MASKED), be.asarray(np.array([2, 0, 1, 4])),
                                            label_smoothing=0.1)
    assert np.isposinf(be.to_numpy(got))


@pytest.mark.parametrize("focal_gamma", [0.0, 0.5, 2.0])
def test_infinite_logits_on_agreeing_labels_give_zero_sigmoid(gbe, focal_gamma):
    z = np.array([-np.inf, np.inf, 1.0])
    y = np.array([0.0, 1.0, 0.0])
    fn = lambda a, b: xent.sigmoid_cross_entropy(a, b, focal_gamma=focal_gamma,  # noqa: E731
                                                 pos_weight=3.0, reduction="sum")
    value = fn(gbe.asarray(z), gbe.asarray(y))
    gz, gy = gbe.grad(fn, gbe.asarray(z), gbe.asarray(y), argnums=(0, 1))
    want = sigmoid_ref(z[2:], y[2:], focal_gamma=focal_gamma, reduction="sum")
    np.testing.assert_allclose(gbe.to_numpy(value), want, rtol=1e-12)
    np.testing.assert_array_equal(gz[:2], 0.0)
    np.testing.assert_array_equal(gy[:2], 0.0)
    assert np.isfinite(gz).all() and np.isfinite(gy).all()


def test_certain_predictions_with_fractional_focal_gamma_have_zero_not_nan_gradient(gbe):
    z = np.array([[1e4, 0.0, -3.0], [0.0, 1.0, 2.0]])
    t = np.array([0, 2])
    for fn in (lambda a: xent.sparse_softmax_cross_entropy(a, gbe.asarray(t), focal_gamma=0.5),
               lambda a: xent.softmax_cross_entropy(a, gbe.asarray(np.eye(3)[t]),
                                                    focal_gamma=0.5),
               lambda a: xent.sigmoid_cross_entropy(a, gbe.asarray(np.eye(3)[t]),
                                                    focal_gamma=0.5)):
        g, = gbe.grad(fn, gbe.asarray(z))
        assert np.isfinite(g).all()
        np.testing.assert_array_equal(g[0, 0], 0.0)


# -- low precision ---------------------------------------------------------------

LOW = {"float16": np.finfo(np.float16).eps, "bfloat16": 2.0**-7}


def _round(x, dtype):
    """``x`` rounded to ``dtype`` and back to float64 (bfloat16 through torch)."""
    import torch

    return torch.as_tensor(np.asarray(x, np.float64)).to(getattr(torch, dtype)).double().numpy()


@pytest.mark.parametrize("dtype", list(LOW))
def test_low_precision_accumulates_in_float32_and_returns_input_dtype(be, rng, dtype):
    if be.name == "numpy" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    # 2000 classes: a float16 sum of exponentials would lose several digits.
    z = _round(rng.normal(size=(4, 2000)) * 3 + 20, dtype)
    t = rng.integers(0, 2000, 4)
    y = np.eye(2000)[t]
    zs = _round(rng.normal(size=(4, 2000)) * 4, dtype)
    ys = (rng.random((4, 2000)) > 0.5).astype(float)
    ps = _round(rng.uniform(0.01, 0.99, (4, 2000)), dtype)
    cases = [
        (xent.sparse_softmax_cross_entropy, z, t, sparse_ref),
        (xent.softmax_cross_entropy, z, y, softmax_ref),
        (xent.sigmoid_cross_entropy, zs, ys, sigmoid_ref),
        (xent.log_loss, ps, ys, log_loss_ref),
    ]
    for fn, a, b, ref in cases:
        for reduction in REDS:
            out = fn(be.asarray(a, dtype), be.asarray(b), reduction=reduction)
            assert out.dtype == be.dtype(dtype)
            want = ref(a, b, reduction=reduction)
            # float32 accumulation: the only error left is the final rounding to
            # dtype (half an ulp; absolute below float16's normal range)
            np.testing.assert_allclose(be.to_numpy(out), want, rtol=LOW[dtype],
                                       atol=float(np.finfo(np.float16).smallest_subnormal),
                                       err_msg=f"{fn.__name__} {reduction}")


@pytest.mark.parametrize("dtype", list(LOW))
def test_low_precision_gradients_have_input_dtype(gbe, rng, dtype):
    z = _round(rng.normal(size=(4, 50)), dtype)
    t = rng.integers(0, 50, 4)
    g, = gbe.grad(lambda a: xent.sparse_softmax_cross_entropy(a, gbe.asarray(t), reduction="sum"),
                  gbe.asarray(z, dtype))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = p - np.eye(50)[t]
    np.testing.assert_allclose(g, want, atol=LOW[dtype], rtol=LOW[dtype])
    out = xent.sparse_softmax_cross_entropy(gbe.asarray(z, dtype), gbe.asarray(t))
    assert out.dtype == gbe.dtype(dtype)


# -- zero-weight elements with NaN / inf -----------------------------------------------

def _nan_cases(gbe, rng):
    """(loss, logits, labels, kwargs, padding mask on the logits) with NaN in padded rows."""
    z = rng.normal(size=(4, 5))
    z[1] = np.nan
    z[3] = [-np.inf, np.inf, np.nan, 0.0, 1.0]
    y = np.eye(5)[[0, 1, 2, 1]]
    y[1] = np.nan
    t = np.array([0, -1, 2, -1])
    sw = np.array([1.0, 0.0, 2.0, 0.0])
    pad = np.zeros((4, 5), bool)
    pad[[1, 3]] = True
    p = rng.uniform(0.1, 0.9, (4, 5))
    p[1] = np.nan
    return [
        ("softmax_cross_entropy", z, y, {"sample_weight": sw, "class_weight": np.ones(5)}),
        ("softmax_cross_entropy", z, y, {"sample_weight": sw, "focal_gamma": 2.0,
                                         "label_smoothing": 0.1, "z_loss": 0.1}),
        ("sparse_softmax_cross_entropy", z, t, {"ignore_index": -1, "class_weight": np.ones(5)}),
        ("sparse_softmax_cross_entropy", z, np.where(t < 0, 0, t),
         {"sample_weight": sw, "focal_gamma": 2.0, "label_smoothing": 0.1, "z_loss": 0.1}),
        ("sigmoid_cross_entropy", z, y, {"sample_weight": sw[:, None], "pos_weight": 2.0,
                                         "focal_gamma": 2.0}),
        ("log_loss", p, y, {"sample_weight": sw[:, None]}),
    ], pad


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "sum_over_batch_size",
                                       "sum_by_nonzero_weights"])
def test_zero_weight_nan_padding_contributes_exactly_zero(gbe, rng, reduction):
    cases, pad = _nan_cases(gbe, rng)
    for loss, z, y, kw in cases:
        fn = getattr(xent, loss)
        conv = {k: gbe.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        dense_labels = y.dtype.kind == "f"

        def f(a, b):
            out = fn(a, b, reduction=reduction, **conv)
            return out if reduction != "none" else gbe.sum(out)

        args = (gbe.asarray(z), gbe.asarray(y))
        value = gbe.to_numpy(fn(*args, reduction=reduction, **conv))
        assert np.isfinite(value).all(), loss
        grads = gbe.grad(f, *args, argnums=(0, 1) if dense_labels else (0,))
        for g in grads:
            assert np.isfinite(g).all(), loss
            np.testing.assert_array_equal(g[pad], 0.0)
        # the same as the batch with clean values in the padded rows
        clean_z = np.where(pad, 0.3, z)
        clean_y = np.where(pad, 0.0, y) if dense_labels else y
        clean = gbe.to_numpy(fn(gbe.asarray(clean_z), gbe.asarray(clean_y),
                                reduction=reduction, **conv))
        np.testing.assert_array_equal(value, clean)


def test_all_minus_inf_row_with_zero_weight_is_zero(gbe):
    z = np.array([[1.0, 2.0], [-np.inf, -np.inf]])
    t = np.array([0, 1])
    fn = lambda a: xent.sparse_softmax_cross_entropy(  # noqa: E731
        a, gbe.asarray(t), sample_weight=gbe.asarray(np.array([1.0, 0.0])))
    np.testing.assert_allclose(gbe.to_numpy(fn(gbe.asarray(z))), np.log1p(np.e), rtol=1e-12)
    g, = gbe.grad(fn, gbe.asarray(z))
    np.testing.assert_array_equal(g[1], 0.0)


# -- JAX transformations and torch placement -------------------------------------------------

def _jax_cases(rng):
    import jax.numpy as jnp

    z = jnp.asarray(rng.normal(size=(4, 5)))
    y = jnp.asarray(np.eye(5)[[0, 3, 1, 4]])
    t = jnp.asarray(np.array([0, 3, -1, 2]))
    ys = jnp.asarray(rng.random((4, 5)))
    p = jnp.asarray(rng.uniform(0.1, 0.9, (4, 5)))
    return [
        (lambda a, b: xent.softmax_cross_entropy(a, b, label_smoothing=0.1, focal_gamma=1.0,
                                                 class_weight=jnp.arange(1.0, 6.0)), z, y),
        (lambda a, b: xent.sparse_softmax_cross_entropy(a, b, ignore_index=-1, z_loss=0.01,
                                                        class_weight=jnp.arange(1.0, 6.0)), z, t),
        (lambda a, b: xent.sigmoid_cross_entropy(a, b, pos_weight=jnp.arange(1.0, 6.0),
                                                 focal_gamma=2.0), z, ys),
        (lambda a, b: xent.log_loss(a, b), p, ys),
    ]


def test_jax_jit_grad_vmap(rng):
    import jax

    for fn, a, b in _jax_cases(rng):
        eager = fn(a, b)
        g = jax.grad(fn)(a, b)
        value, grad = jax.jit(jax.value_and_grad(fn))(a, b)
        np.testing.assert_allclose(value, eager, rtol=1e-12)
        np.testing.assert_allclose(grad, g, rtol=1e-12)
        # vmap over a leading batch of 2 copies: each slice gives the eager answer
        stack = lambda x: jax.numpy.stack([x, x])  # noqa: E731
        values, grads = jax.jit(jax.vmap(jax.value_and_grad(fn)))(stack(a), stack(b))
        np.testing.assert_allclose(values, [eager, eager], rtol=1e-12)
        np.testing.assert_allclose(grads, [g, g], rtol=1e-12)
        # eager vmap too: batch tracers have no values, so value checks are skipped
        np.testing.assert_allclose(jax.vmap(fn)(stack(a), stack(b)), [eager, eager], rtol=1e-12)


def test_jit_skips_value_checks(rng):
    import jax
    import jax.numpy as jnp

    # Out-of-range labels and probabilities are only caught in eager mode.
    p = jnp.array([1.5, 0.5])
    with pytest.raises(ValueError):
        xent.log_loss(p, jnp.array([1.0, 0.0]))
    out = jax.jit(lambda a: xent.log_loss(a, jnp.array([1.0, 0.0])))(p)
    assert out.shape == ()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_result_on_input_device_and_dtype(dtype):
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        z = torch.randn(3, 4, dtype=getattr(torch, dtype), device=device)
        t = torch.tensor([0, 1, 3], device=device)
        for out in (xent.sparse_softmax_cross_entropy(z, [0, 1, 3], class_weight=[1.0] * 4,
                                                      reduction="none"),
                    xent.softmax_cross_entropy(z, np.eye(4)[[0, 1, 3]]),
                    xent.sparse_softmax_cross_entropy(z, t, sample_weight=np.ones(3)),
                    xent.sigmoid_cross_entropy(z, torch.rand(3, 4, device=device),
                                               pos_weight=[2.0] * 4),
                    xent.log_loss(torch.sigmoid(z), torch.rand(3, 4, device=device))):
            assert out.device == z.device and out.dtype == z.dtype


def test_confident_sigmoid_losses_keep_their_digits_in_float32(be, rng):
    """Regression: the fused sigmoid form ``(1 - y) z + softplus(-z)`` cancels for
    z << 0 with y = 0 (and the loss of 3e-7 came out as 0 or 1e-6); every entry
    must keep float32's relative precision."""
    z = -rng.uniform(8.0, 16.0, size=(64, 512))
    z[:, ::2] *= -1.0                       # half confident positives, half negatives
    y = (z > 0).astype(np.float64)
    want = np.log1p(np.exp(-np.abs(z)))     # the exact loss of a correct confident prediction
    for pos_weight in (None, 2.0):
        got = xent.sigmoid_cross_entropy(be.asarray(z, "float32"), be.asarray(y),
                                         pos_weight=pos_weight, reduction="none")
        w = np.where(y == 1, 1.0 if pos_weight is None else pos_weight, 1.0)
        np.testing.assert_allclose(be.to_numpy(got), w * want, rtol=1e-5)
