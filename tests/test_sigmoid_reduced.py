"""The torch sigmoid kernel's in-kernel reduction (every reduction but ``"none"``).

For a reduction the fused kernel never makes a per-element loss: it sums
``sw * l`` per row inside the chunk loop (the sample weight folded into the
chunk's coefficients, and so into the stored gradient), and
``reduce.reduce_total`` divides by the reduction's own denominator. These
tests pin that path down: it is taken (a spy on the kernel's result), it
allocates one logits-sized buffer (the gradient), and its values and
gradients match a float64 formula and ``F.binary_cross_entropy_with_logits``
for each reduction, with per-row and per-element sample weights,
``pos_weight``, label smoothing and the numerics cases (+-1e4 and infinite
logits, NaN padding with weight 0, 16-bit logits).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xent
from xent._core import reduce as _reduce
from xent._kernels import dense_torch as _dt, rows as _rows, table as _table
from tests._oracle import sigmoid_ref

REDUCED = ("sum", "mean", "sum_over_batch_size", "sum_by_nonzero_weights")


@pytest.fixture(autouse=True)
def _fused_small(monkeypatch):
    """Fused path at test sizes, chunks of 3 rows and two threads (chunk and thread edges)."""
    monkeypatch.setattr(_dt, "MIN_FUSED_ELEMENTS", 0)
    monkeypatch.setattr(_rows, "CHUNK_BYTES", 3 * 13 * 4)
    monkeypatch.setattr(_rows, "MIN_PARALLEL", 0)


@pytest.fixture
def spy(monkeypatch):
    """Per call: whether the fused kernel returned an in-kernel reduced value."""
    seen: list[str] = []
    orig = _dt.sigmoid_loss

    def wrapper(call):
        out = orig(call)
        seen.append("none" if out is None else "reduced" if type(out) is _reduce.Reduced
                    else "elements")
        return out

    monkeypatch.setitem(_table.FUSED, ("sigmoid", "torch"), wrapper)
    return seen


def _sigmoid64(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _ref(z, y, *, reduction, sw=None, pw=None, s=0.0):
    """float64 value and gradient (d value / dz) of the contract's formula."""
    z = np.asarray(z, np.float64)
    y = np.asarray(y, np.float64)
    value = sigmoid_ref(z, y, pos_weight=pw, label_smoothing=s, sample_weight=sw,
                        reduction=reduction)
    yp = (1.0 - s) * y + 0.5 * s
    pos = yp * (1.0 if pw is None else np.asarray(pw, np.float64))
    with np.errstate(invalid="ignore"):
        dl = np.nan_to_num((1.0 - yp) * _sigmoid64(z)) - np.nan_to_num(pos * _sigmoid64(-z))
    w = np.ones_like(z) if sw is None else np.broadcast_to(np.asarray(sw, np.float64), z.shape)
    grad = np.where(w == 0, 0.0, w * dl)
    den = {"sum": 1.0, "mean": w.sum(), "sum_over_batch_size": z.size,
           "sum_by_nonzero_weights": (w != 0).sum()}[reduction]
    return value, (grad * 0.0 if den == 0 else grad / den)


def _run(z, y, dtype=torch.float64, **kw):
    zt = torch.tensor(z, dtype=dtype, requires_grad=True)
    kw = {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, np.ndarray) else v
          for k, v in kw.items()}
    out = xent.sigmoid_cross_entropy(zt, torch.tensor(y, dtype=dtype), **kw)
    (g,) = torch.autograd.grad(out, zt)
    return out.detach(), g


def _data(n=11, c=13, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) * 4
    y = np.where(rng.random((n, c)) < 0.5, 1.0, 0.0)
    y[1] = rng.random(c)  # one row of soft labels
    z[0, :6] = [1e4, -1e4, 1e4, -1e4, 30.0, -30.0]
    y[0, :6] = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    return z, y, rng


OPTIONS = {
    "plain": {},
    "row_weights": {"sample_weight": "row"},
    "element_weights": {"sample_weight": "element"},
    "pos_weight": {"pos_weight": "vector"},
    "pos_weight_scalar_smoothing": {"pos_weight": 2.5, "label_smoothing": 0.1},
    "all": {"pos_weight": "vector", "label_smoothing": 0.2, "sample_weight": "element"},
}


def _options(opts, rng, shape):
    n, c = shape
    sw_row = rng.random((n, 1)) + 0.1
    sw_row[3] = 0.0
    sw_el = rng.random((n, c)) * (rng.random((n, c)) < 0.8)
    pw = rng.random(c) * 3
    kw = {}
    for k, v in opts.items():
        if k == "sample_weight":
            kw[k] = sw_row if v == "row" else sw_el
        elif k == "pos_weight":
            kw[k] = pw if v == "vector" else v
        else:
            kw[k] = v
    return kw


@pytest.mark.parametrize("reduction", REDUCED)
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
def test_reduced_kernel_matches_float64_formula(reduction, opts, spy):
    z, y, rng = _data()
    kw = _options(opts, rng, z.shape)
    value, grad = _run(z, y, reduction=reduction, **kw)
    assert spy == ["reduced"]
    want, want_g = _ref(z, y, reduction=reduction, sw=kw.get("sample_weight"),
                        pw=kw.get("pos_weight"), s=kw.get("label_smoothing", 0.0))
    np.testing.assert_allclose(value.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad.numpy(), want_g, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCED)
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
def test_reduced_kernel_matches_the_reference_composition_float32(reduction, opts, spy):
    z, y, rng = _data(seed=3)
    kw = _options(opts, rng, z.shape)
    fast = _run(z, y, dtype=torch.float32, reduction=reduction, **kw)
    assert spy == ["reduced"]
    with _table.disabled():
        plain = _run(z, y, dtype=torch.float32, reduction=reduction, **kw)
    for a, b in zip(fast, plain):
        assert a.dtype == b.dtype == torch.float32
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-6, atol=1e-7)


def test_reduced_kernel_matches_pytorch_bce_with_logits(spy):
    z, y, rng = _data(n=17, c=29, seed=5)
    z[0, :6] = [40.0, -40.0, 20.0, -20.0, 0.0, 3.0]  # finite for PyTorch's own formula
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.tensor(y)
    pw = torch.tensor(rng.random(29) * 2)
    sw = torch.tensor(rng.random((17, 29)))
    sw_row = torch.tensor(rng.random((17, 1)))
    cases = [
        # PyTorch's "mean" divides by the element count whatever weight is:
        # xent's sum_over_batch_size
        (dict(), dict(), "mean", "mean"),
        (dict(), dict(), "sum", "sum"),
        (dict(pos_weight=pw), dict(pos_weight=pw), "mean", "mean"),
        (dict(sample_weight=sw), dict(weight=sw), "sum_over_batch_size", "mean"),
        (dict(sample_weight=sw_row, pos_weight=pw), dict(weight=sw_row, pos_weight=pw), "sum",
         "sum"),
    ]
    for ours, theirs, red, red_t in cases:
        spy.clear()
        a = xent.sigmoid_cross_entropy(zt, yt, reduction=red, **ours)
        (ga,) = torch.autograd.grad(a, zt)
        assert spy == ["reduced"]
        b = F.binary_cross_entropy_with_logits(zt, yt, reduction=red_t, **theirs)
        (gb,) = torch.autograd.grad(b, zt)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-15)


def test_weighted_mean_denominator_is_the_weight_sum(spy):
    """The contract's "mean" (weighted mean), not PyTorch's element count."""
    z, y, rng = _data()
    sw = rng.random((11, 1))
    got, _ = _run(z, y, reduction="mean", sample_weight=sw)
    total, _ = _run(z, y, reduction="sum", sample_weight=sw)
    assert spy == ["reduced", "reduced"]
    np.testing.assert_allclose(got.item(), total.item() / (sw.sum() * 13), rtol=1e-13)


def test_no_per_element_loss_is_allocated(monkeypatch, spy):
    """A reduction holds one logits-sized buffer, the gradient, and stores it prescaled."""
    sizes = []
    orig = _dt._empty_like

    def counting(z, dtype=None):
        sizes.append(tuple(z.shape))
        return orig(z, dtype)

    monkeypatch.setattr(_dt, "_empty_like", counting)
    checks = []
    orig_eq = _dt._uniform_equal
    monkeypatch.setattr(_dt, "_uniform_equal", lambda t, v: checks.append(orig_eq(t, v))
                        or checks[-1])
    z = torch.randn(40, 50, requires_grad=True)
    y = (torch.rand(40, 50) < 0.5).float()
    for red in REDUCED:
        sizes.clear(), checks.clear()
        torch.autograd.grad(xent.sigmoid_cross_entropy(z, y, reduction=red), z)
        assert sizes == [(40, 50)], red
        # the unweighted mean's 1 / numel (and the sum's 1) were folded in the forward pass
        assert checks == [True], red
    sizes.clear()
    torch.autograd.grad(xent.sigmoid_cross_entropy(z, y, reduction="none").sum(), z)
    assert sizes == [(40, 50), (40, 50)]  # "none" returns the per-element loss
    assert spy == ["reduced"] * 4 + ["elements"]


@pytest.mark.parametrize("reduction", REDUCED)
def test_infinite_logits_and_nan_padding_with_zero_weight(reduction, spy):
    z, y, rng = _data()
    z[2, :4] = [np.inf, -np.inf, np.inf, -np.inf]
    y[2, :4] = [1.0, 0.0, 0.0, 1.0]
    sw = np.ones_like(z)
    sw[2, 2:4] = 0.0  # the two infinite, disagreeing entries are dropped
    z[4] = np.nan  # a padding row with weight 0
    y[4] = np.nan
    sw[4] = 0.0
    zt = torch.tensor(z, requires_grad=True)
    out = xent.sigmoid_cross_entropy(zt, torch.tensor(np.nan_to_num(y)), reduction=reduction,
                                     sample_weight=torch.tensor(sw))
    (g,) = torch.autograd.grad(out, zt)
    assert spy == ["reduced"]
    ok = sw != 0
    zf, yf = np.where(ok, z, 0.0), np.where(ok, np.nan_to_num(y), 0.0)
    want, want_g = _ref(zf, yf, reduction=reduction, sw=sw)
    assert np.isfinite(out.item()) and torch.isfinite(g).all()
    np.testing.assert_allclose(out.item(), want, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-10, atol=1e-15)
    assert (g[4] == 0).all() and (g[2, :4] == 0).all()


def test_infinite_logits_on_disagreeing_labels_are_infinite(spy):
    z = np.zeros((3, 4))
    y = np.zeros((3, 4))
    z[0, 0], y[0, 0] = -np.inf, 1.0
    z[1, 1], y[1, 1] = np.inf, 0.5  # a soft label: the loss is infinite too
    for red in ("sum", "mean"):
        out = xent.sigmoid_cross_entropy(torch.tensor(z), torch.tensor(y), reduction=red)
        assert out.item() == np.inf
    assert spy == ["reduced", "reduced"]


def test_confident_entries_keep_their_digits_float32(spy):
    """``log1p(exp(-|z|))`` keeps the digits of tiny losses: they are not rounded to 0."""
    z = np.array([[8.0, 17.0, 25.0, 60.0, -8.0, -17.0, -25.0, -60.0]] * 3, np.float32)
    y = np.array([[1.0] * 4 + [0.0] * 4] * 3, np.float32)
    got = xent.sigmoid_cross_entropy(torch.tensor(z), torch.tensor(y), reduction="sum")
    assert spy == ["reduced"]
    want = sigmoid_ref(z.astype(np.float64), y, reduction="sum")
    np.testing.assert_allclose(got.item(), want, rtol=1e-6)
    zz = np.linspace(-30, 30, 2001).reshape(1, -1)
    for lab in (0.0, 1.0, 0.3):
        yy = np.full_like(zz, lab)
        got = xent.sigmoid_cross_entropy(torch.tensor(zz, dtype=torch.float32),
                                         torch.tensor(yy, dtype=torch.float32), reduction="sum")
        np.testing.assert_allclose(got.item(), sigmoid_ref(zz, yy, reduction="sum"), rtol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_16_bit_logits_compute_in_float32(dtype, reduction, spy):
    z, y, rng = _data()
    z[0, :4] = [300.0, -300.0, 60.0, -60.0]  # finite in float16
    sw = rng.random((11, 1))
    zt = torch.tensor(z, dtype=dtype, requires_grad=True)
    out = xent.sigmoid_cross_entropy(zt, torch.tensor(y, dtype=dtype), reduction=reduction,
                                     sample_weight=torch.tensor(sw, dtype=torch.float32))
    (g,) = torch.autograd.grad(out, zt)
    assert spy == ["reduced"]
    assert out.dtype == dtype and g.dtype == dtype
    z64 = zt.detach().double().numpy()
    want, want_g = _ref(z64, y, reduction=reduction, sw=sw)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    np.testing.assert_allclose(out.float().item(), want, rtol=tol)
    np.testing.assert_allclose(g.float().numpy(), want_g, rtol=tol, atol=tol * np.abs(want_g).max())


def test_empty_batches_are_zero_not_nan():
    z = torch.zeros((0, 5), requires_grad=True)
    for red, want in (("sum", 0.0), ("mean", 0.0), ("sum_over_batch_size", 0.0)):
        out = xent.sigmoid_cross_entropy(z, torch.zeros((0, 5)), reduction=red)
        (g,) = torch.autograd.grad(out, z)
        assert out.item() == want and g.shape == (0, 5)


def test_all_zero_weights_give_zero_and_zero_gradient(spy):
    z, y, _ = _data()
    for red in REDUCED:
        out, g = _run(z, y, reduction=red, sample_weight=np.zeros((11, 1)))
        assert out.item() == 0.0 and (g == 0).all()
    assert spy == ["reduced"] * 4


def test_normalizer_and_gradient_scaling(spy):
    z, y, rng = _data()
    sw = rng.random((11, 13))
    out, g = _run(z, y, reduction="mean", sample_weight=sw, normalizer=7.0)
    total, g_sum = _run(z, y, reduction="sum", sample_weight=sw)
    np.testing.assert_allclose(out.item(), total.item() / 7.0, rtol=1e-13)
    np.testing.assert_allclose(g.numpy(), g_sum.numpy() / 7.0, rtol=1e-13)
    # an arbitrary upstream gradient scales the stored one (no prescaling guess)
    zt = torch.tensor(z, requires_grad=True)
    out = xent.sigmoid_cross_entropy(zt, torch.tensor(y))
    (g3,) = torch.autograd.grad(out * 3.0, zt)
    _, want_g = _ref(z, y, reduction="mean")
    np.testing.assert_allclose(g3.numpy(), 3.0 * want_g, rtol=1e-10, atol=1e-15)
    assert spy == ["reduced"] * 3


def test_weights_needing_a_gradient_reduce_outside(spy):
    """Differentiable sample weights: the per-element path, so they get their gradient."""
    z, y, rng = _data()
    sw = torch.tensor(rng.random((11, 13)), requires_grad=True)
    zt = torch.tensor(z, requires_grad=True)
    out = xent.sigmoid_cross_entropy(zt, torch.tensor(y), reduction="sum", sample_weight=sw)
    gz, gw = torch.autograd.grad(out, (zt, sw))
    assert spy == ["elements"]
    elements = xent.sigmoid_cross_entropy(torch.tensor(z), torch.tensor(y), reduction="none")
    torch.testing.assert_close(gw, elements.detach())
    _, want_g = _ref(z, y, reduction="sum", sw=sw.detach().numpy())
    np.testing.assert_allclose(gz.numpy(), want_g, rtol=1e-10, atol=1e-15)


def test_weights_that_do_not_flatten_to_rows_reduce_outside(spy):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((3, 4, 13)) * 3
    y = (rng.random((3, 4, 13)) < 0.5) * 1.0
    sw = rng.random((3, 1, 13))  # broadcast over the middle axis: no [N, C] view
    out, g = _run(z, y, reduction="mean", sample_weight=sw)
    assert spy == ["elements"]
    want, want_g = _ref(z, y, reduction="mean", sw=sw)
    np.testing.assert_allclose(out.item(), want, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-10, atol=1e-15)
    spy.clear()
    out, g = _run(z, y, reduction="mean", sample_weight=rng.random((3, 4, 1)))
    assert spy == ["reduced"]


def test_higher_order_and_repeated_backward(spy):
    z, y, rng = _data()
    sw = torch.tensor(rng.random((11, 13)))
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.tensor(y)
    out = xent.sigmoid_cross_entropy(zt, yt, sample_weight=sw, pos_weight=2.0)
    (g1,) = torch.autograd.grad(out, zt, retain_graph=True)
    (g2,) = torch.autograd.grad(out, zt, retain_graph=True)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    (gg,) = torch.autograd.grad(out, zt, create_graph=True)
    (hv,) = torch.autograd.grad(gg.sum(), zt)
    with _table.disabled():
        zp = torch.tensor(z, requires_grad=True)
        ref = xent.sigmoid_cross_entropy(zp, yt, sample_weight=sw, pos_weight=2.0)
        (gp,) = torch.autograd.grad(ref, zp, create_graph=True)
        (hp,) = torch.autograd.grad(gp.sum(), zp)
    torch.testing.assert_close(gg.detach(), gp.detach())
    torch.testing.assert_close(hv, hp)
    assert spy[0] == "reduced"


def test_reduce_total_denominators_match_reduce():
    """``reduce_total`` divides by exactly what ``reduce`` divides by, for every record."""
    from xent._core.backend import get_backend
    from xent._core.record import Call

    rng = np.random.default_rng(0)
    loss = torch.tensor(rng.random((5, 6)))
    sw = torch.tensor(rng.random((5, 6)) * (rng.random((5, 6)) < 0.7))
    norm = torch.tensor(rng.random((5, 6)))
    valid = torch.tensor(rng.random((5, 6)) < 0.8)
    be = get_backend("torch")
    for red in REDUCED:
        for kw in ({}, {"sw": sw}, {"sw": sw, "norm": norm}, {"valid": valid},
                   {"sw": sw, "valid": valid}, {"sw": sw, "normalizer": torch.tensor(3.0)}):
            if "normalizer" in kw and red != "mean":
                continue
            call = Call(be, loss, None, 6, torch.float64, None, red, **kw)
            total = (loss * (kw["sw"] if "sw" in kw else 1.0)).sum()
            want = _reduce.reduce(be, loss, reduction=red, sample_weight=kw.get("sw"),
                                  norm=kw.get("norm"), valid=kw.get("valid"),
                                  normalizer=kw.get("normalizer"))
            got = _reduce.reduce_total(call, total, loss.numel())
            torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("c", [96, 128, 13])
@pytest.mark.parametrize("opts", [{}, {"pos_weight": "vector"}, {"label_smoothing": 0.1}],
                         ids=["plain", "pos_weight", "smoothing"])
def test_float32_log_sum_by_float64_group_products_keeps_tiny_losses(c, opts, spy, monkeypatch):
    """float32, no weights: sum log(1 + e) from logarithms of float64 products of
    groups of a row (C = 96, 128: one group of the row; C = 13: no divisor, per
    entry). A row of zero logits has u = 2: a product of 128 of them is 2**128,
    past the float32 range."""
    groups = []
    orig = _dt._log_group
    monkeypatch.setattr(_dt, "_log_group", lambda C: groups.append(orig(C)) or groups[-1])
    rng = np.random.default_rng(11)
    z = (rng.standard_normal((11, c)) * 6).astype(np.float32)
    y = np.where(rng.random((11, c)) < 0.3, 1.0, 0.0).astype(np.float32)
    z[2] = np.where(y[2] == 1, 1.0, -1.0) * rng.uniform(15, 40, c)  # confident row: tiny losses
    z[5, :4] = [np.inf, -np.inf, 1e4, -1e4]
    y[5, :4] = [1.0, 0.0, 1.0, 0.0]
    z[7] = 0.0
    kw = _options(opts, rng, z.shape)
    for reduction in ("sum", "mean"):
        spy.clear(), groups.clear()
        value, grad = _run(z, y, dtype=torch.float32, reduction=reduction, **kw)
        assert spy == ["reduced"]
        # (a pos_weight multiplies each logarithm: no grouping asked for)
        assert groups == ([] if "pos_weight" in opts else [c] if c != 13 else [0])
        want, want_g = _ref(z, y, reduction=reduction, pw=kw.get("pos_weight"),
                            s=kw.get("label_smoothing", 0.0))
        np.testing.assert_allclose(value.numpy(), want, rtol=2e-6)
        # (float32 gradient: neg - sigmoid(-z) is exact to half an ulp of 1)
        np.testing.assert_allclose(grad.numpy(), want_g, rtol=2e-5,
                                   atol=1.2e-7 / (1 if reduction == "sum" else z.size))
        # the confident row alone: its total (about 1e-7) keeps its digits
        spy.clear()
        v2, _ = _run(z[2:3], y[2:3], dtype=torch.float32, reduction="sum")
        w2, _ = _ref(z[2:3], y[2:3], reduction="sum")
        assert 0 < w2 < 1e-5
        np.testing.assert_allclose(v2.numpy(), w2, rtol=2e-6)
