"""The private fast paths (``xent._kernels``) against the plain composition.

Every test runs the same public call twice, with the fast path and with
``xent._kernels.table.disabled()``, and checks that the fast path was really taken
(a spy on the dispatch). Values on NumPy and torch, gradients on torch.
Chunks are made tiny (a few rows) and threads are forced on small arrays, so
that odd sizes that are not multiples of the chunk, several threads and the
chunk boundaries are all exercised. A few tests also check the fast path
against a float64 formula and against PyTorch directly.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import xent
from conftest import ADAPTERS
from xent._kernels import dense_torch as _fast_torch, rows as _rows, table as _fast

REDUCTIONS = ("none", "sum", "mean", "sum_over_batch_size", "sum_by_nonzero_weights")
BACKENDS = ("numpy", "torch", "jax")


@pytest.fixture(autouse=True)
def _fused_at_every_size(monkeypatch):
    """The tests use small arrays: take the fused torch path below its size threshold."""
    monkeypatch.setattr(_fast_torch, "MIN_FUSED_ELEMENTS", 0)


CHUNKINGS = ("one_chunk", "tiny_chunks_threads")


def _lib_chunking(libs):
    """Parametrize ``lib`` and the ``chunking`` fixture together: every chunking for NumPy
    and torch, one for JAX (its fast path has no chunks, so the other is not generated)."""
    pairs = [(lib, c) for lib in libs for c in CHUNKINGS
             if lib != "jax" or c == "one_chunk"]
    return pytest.mark.parametrize("lib,chunking", pairs, indirect=["chunking"])


every_chunking = pytest.mark.parametrize("chunking", CHUNKINGS, indirect=True)


@pytest.fixture
def chunking(request, monkeypatch):
    """How the fast paths chunk: parametrized by ``_lib_chunking`` or ``every_chunking``."""
    if request.param == "tiny_chunks_threads":
        # 3 rows of 13 float32 per chunk, threads from the first element
        monkeypatch.setattr(_rows, "CHUNK_BYTES", 3 * 13 * 4)
        monkeypatch.setattr(_rows, "MIN_PARALLEL", 0)
        monkeypatch.setattr(_fast_torch, "_threads", _two_threads)
        # the default sparse call too: never the one-chunk branch
        monkeypatch.setattr(_fast_torch, "PLAIN_ONE_CHUNK_BYTES", 0)
    return request.param


class _two_threads:
    """Two worker threads whatever the device or size (for the tests)."""

    def __init__(self, z):
        pass

    def __enter__(self):
        return 2

    def __exit__(self, *exc):
        return False


@pytest.fixture
def spy(monkeypatch):
    """Records, per loss of the dispatch table, whether the fused kernel returned a loss."""
    taken: dict[str, list[bool]] = {}
    orig = _fast.fused

    def wrapper(loss, call):
        out = orig(loss, call)
        taken.setdefault(f"{loss}_loss", []).append(out is not None)
        return out

    monkeypatch.setattr(_fast, "fused", wrapper)
    # the torch plain entry's own fused case (the one-chunk reduced sparse call)
    orig_plain = _fast_torch.sparse_plain

    def plain_wrapper(call):
        out = orig_plain(call)
        if out is not None:
            taken.setdefault("sparse_loss", []).append(True)
        return out

    monkeypatch.setattr(_fast_torch, "sparse_plain", plain_wrapper)
    return taken


def _to(lib, x, dtype=None):
    if x is None or isinstance(x, (int, float)):
        return x
    x = np.asarray(x)
    return ADAPTERS[lib].asarray(x, dtype if dtype and x.dtype.kind == "f" else None)


def _np(x):
    lib = "torch" if isinstance(x, torch.Tensor) else "jax" if isinstance(x, jax.Array) else "numpy"
    return ADAPTERS[lib].to_numpy(x)


def _run(fn, lib, z, *arrays, dtype="float64", grad=True, **kw):
    """(value, dlogits) of ``fn`` on ``lib`` (the gradient of sum(value) on torch)."""
    kw = {k: _to(lib, v, "float64" if k != "sample_weight" else dtype) if not isinstance(
        v, (str, int, float, type(None))) else v for k, v in kw.items()}
    zz = _to(lib, z, dtype)
    args = [_to(lib, a, dtype) for a in arrays]
    if lib == "torch" and grad:
        zz.requires_grad_(True)
        out = fn(zz, *args, **kw)
        (g,) = torch.autograd.grad(out.sum(), zz)
        return _np(out), _np(g)
    if lib == "jax" and grad:
        out, g = jax.value_and_grad(lambda a: fn(a, *args, **kw).sum())(zz)
        return _np(fn(zz, *args, **kw)), _np(g)
    return _np(fn(zz, *args, **kw)), None


def _compare(fn, lib, z, *arrays, spy, which, dtype="float64", rtol=None, atol=None, **kw):
    if lib == "jax" and which == "sparse_loss":
        # JAX uses the plain composition for integer labels: only the
        # behaviour checks of the calling test apply
        plain = _run(fn, lib, z, *arrays, dtype=dtype, **kw)
        assert spy[which][-1] is False
        return plain, plain
    fast = _run(fn, lib, z, *arrays, dtype=dtype, **kw)
    assert spy.get(which) and spy[which][-1], f"{which} fast path was not taken"
    with _fast.disabled():
        plain = _run(fn, lib, z, *arrays, dtype=dtype, **kw)
    if rtol is None:
        rtol, atol = {"float64": (1e-12, 1e-12), "float32": (2e-5, 2e-6)}[dtype]
    np.testing.assert_allclose(fast[0], plain[0], rtol=rtol, atol=atol)
    if fast[1] is not None:
        assert fast[1].dtype == plain[1].dtype
        np.testing.assert_allclose(fast[1], plain[1], rtol=rtol, atol=atol)
    return fast, plain


def _data(n=37, c=13, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) * 3
    t = rng.integers(0, c, n)
    y = rng.random((n, c))
    cw = rng.random(c) + 0.1
    sw = rng.random(n) + 0.1
    return z, t, y, cw, sw


def _grid(libs, options):
    """Every backend x dtype x reduction x option set."""
    def deco(f):
        for name, values, ids in (("opts", options, lambda o: "-".join(o) or "plain"),
                                  ("reduction", REDUCTIONS, None),
                                  ("dtype", ["float64", "float32"], None)):
            f = pytest.mark.parametrize(name, values, ids=ids)(f)
        return _lib_chunking(libs)(f)
    return deco


SPARSE_OPTIONS = [
    {},
    {"class_weight": "cw"},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "class_weight": "cw"},
    {"ignore_index": 4},
    {"z_loss": 1e-2},
    {"sample_weight": "sw"},
    {"class_weight": "cw", "label_smoothing": 0.3, "ignore_index": 2, "z_loss": 1e-3,
     "sample_weight": "sw"},
]


def _options(opts, cw, sw):
    return {k: (cw if v == "cw" else sw if v == "sw" else v) for k, v in opts.items()}


@_grid(["numpy", "torch"], SPARSE_OPTIONS)  # JAX: plain composition
def test_sparse_fast_matches_plain(lib, dtype, reduction, opts, chunking, spy):
    z, t, _, cw, sw = _data()
    if "ignore_index" in opts:
        t[::5] = opts["ignore_index"] + 100
        opts = {**opts, "ignore_index": opts["ignore_index"] + 100}
    _compare(xent.sparse_softmax_cross_entropy, lib, z, t, spy=spy, which="sparse_loss",
             dtype=dtype, reduction=reduction, **_options(opts, cw, sw))


DENSE_OPTIONS = [
    {},
    {"class_weight": "cw"},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"sample_weight": "sw"},
    {"class_weight": "cw", "label_smoothing": 0.25, "z_loss": 1e-3, "sample_weight": "sw"},
]


@_grid(BACKENDS, DENSE_OPTIONS)
def test_dense_fast_matches_plain(lib, dtype, reduction, opts, chunking, spy):
    z, _, y, cw, sw = _data()
    y[3] = 0.0  # an all-zero label row
    _compare(xent.softmax_cross_entropy, lib, z, y, spy=spy, which="dense_loss", dtype=dtype,
             reduction=reduction, label_gradient=False, **_options(opts, cw, sw))


SIGMOID_OPTIONS = [
    {},
    {"pos_weight": "cw"},
    {"pos_weight": 3.0},
    {"label_smoothing": 0.1},
    {"sample_weight": "sw2"},
    {"pos_weight": "cw", "label_smoothing": 0.2, "sample_weight": "sw2"},
]


@_grid(BACKENDS, SIGMOID_OPTIONS)
def test_sigmoid_fast_matches_plain(lib, dtype, reduction, opts, chunking, spy):
    z, _, y, cw, sw = _data()
    y = np.where(y < 0.3, 1.0, np.where(y > 0.8, y, 0.0))  # hard and soft labels
    z[0, :4] = [40.0, -40.0, 1e4, -1e4]
    sw2 = np.random.default_rng(1).random(z.shape)
    kw = {k: (cw if v == "cw" else sw2 if v == "sw2" else v) for k, v in opts.items()}
    _compare(xent.sigmoid_cross_entropy, lib, z, y, spy=spy, which="sigmoid_loss",
             dtype=dtype, reduction=reduction, **kw)


@_lib_chunking(["numpy", "torch"])  # chunk boundaries: JAX has none
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (1, 7), (5, 3, 11), (7,)])
def test_odd_shapes(lib, shape, chunking, spy):
    rng = np.random.default_rng(2)
    z = rng.standard_normal(shape) * 2
    t = rng.integers(0, shape[-1], shape[:-1])
    y = rng.random(shape)
    for fn, lab, which in ((xent.sparse_softmax_cross_entropy, t, "sparse_loss"),
                           (xent.softmax_cross_entropy, y, "dense_loss"),
                           (xent.sigmoid_cross_entropy, (y > 0.5) * 1.0, "sigmoid_loss")):
        _compare(fn, lib, z, lab, spy=spy, which=which, reduction="none")


@_lib_chunking(BACKENDS)
def test_zero_weight_nan_rows_contribute_exactly_zero(lib, chunking, spy):
    z, t, y, cw, sw = _data()
    sw[[0, 4, 5, 36]] = 0.0
    z[[0, 4, 5, 36]] = np.nan
    y[[0, 4, 5, 36]] = np.nan
    for fn, lab, which, kw in (
            (xent.sparse_softmax_cross_entropy, t, "sparse_loss",
             {"class_weight": cw, "label_smoothing": 0.1, "z_loss": 1e-2}),
            (xent.softmax_cross_entropy, y, "dense_loss",
             # (no class weights here: the plain normalizer sum(y * cw) is NaN on NaN labels)
             {"label_smoothing": 0.1, "z_loss": 1e-2, "label_gradient": False})):
        for red in REDUCTIONS:
            (v, g), _ = _compare(fn, lib, z, lab, spy=spy, which=which, sample_weight=sw,
                                 reduction=red, **kw)
            assert np.all(np.isfinite(v))
            if red == "none":
                assert np.all(v[[0, 4, 5, 36]] == 0.0)
            if g is not None:
                assert np.all(np.isfinite(g))
                assert np.all(g[[0, 4, 5, 36]] == 0.0)


@_lib_chunking(BACKENDS)
def test_ignored_rows_with_nan_logits_and_all_ignored_mean(lib, chunking, spy):
    z, t, _, _, _ = _data()
    t[[1, 2, 30]] = -100
    z[[1, 2, 30]] = np.nan
    (v, g), _ = _compare(xent.sparse_softmax_cross_entropy, lib, z, t, spy=spy,
                         which="sparse_loss", ignore_index=-100)
    assert np.isfinite(v)
    if g is not None:
        assert np.all(g[[1, 2, 30]] == 0.0)
    (v, g), _ = _compare(xent.sparse_softmax_cross_entropy, lib, z, np.full(37, -100), spy=spy,
                         which="sparse_loss", ignore_index=-100)
    assert v == 0.0
    if g is not None:
        assert np.all(g == 0.0)


@_lib_chunking(BACKENDS)
def test_masked_classes_minus_inf(lib, chunking, spy):
    z, t, y, cw, _ = _data()
    mask = np.random.default_rng(3).random(z.shape) < 0.3
    mask[np.arange(37), t] = False
    z[mask] = -np.inf
    y = np.where(mask, 0.0, y)
    z[7] = -np.inf  # a fully masked row, ignored
    t7 = t.copy()
    t7[7] = -1
    cw0 = cw.copy()
    cw0[[2, 5]] = 0.0
    (v, g), _ = _compare(xent.sparse_softmax_cross_entropy, lib, z, t7, spy=spy,
                         which="sparse_loss", ignore_index=-1, class_weight=cw0, z_loss=1e-3,
                         reduction="none")
    assert np.all(np.isfinite(v))
    if g is not None:
        assert np.all(np.isfinite(g)) and np.all(g[mask] == 0.0)
    sw = np.ones(37)
    sw[7] = 0.0
    (v, g), _ = _compare(xent.softmax_cross_entropy, lib, z, y, spy=spy, which="dense_loss",
                         class_weight=cw, sample_weight=sw, label_gradient=False,
                         reduction="none")
    assert np.all(np.isfinite(v))
    if g is not None:
        assert np.all(np.isfinite(g)) and np.all(g[mask] == 0.0)


@pytest.mark.parametrize("lib", BACKENDS)
def test_smoothing_over_masked_class_is_infinite_like_plain(lib, spy):
    z, t, _, _, _ = _data(n=4, c=5)
    z[0, (t[0] + 1) % 5] = -np.inf
    (v, g), _ = _compare(xent.sparse_softmax_cross_entropy, lib, z, t, spy=spy,
                         which="sparse_loss", label_smoothing=0.1, reduction="none")
    assert v[0] == np.inf and np.all(np.isfinite(v[1:]))


@_lib_chunking(BACKENDS)
def test_extreme_logits_match_float64_formula(lib, chunking, spy):
    # the last row: a tied maximum (the one-chunk branch reads 1 / S as the
    # largest probability) and a -inf masked class
    z = np.array([[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, -1e4, -1e4 + 1.0], [3.0, 1.0, 2.0, 0.0],
                  [2.0, 2.0, -np.inf, 0.0]])
    t = np.array([1, 3, 0, 3])
    lse = np.array([np.logaddexp.reduce(r) for r in z])
    expect = lse - z[np.arange(4), t]
    for dtype in ("float64", "float32"):
        v, g = _run(xent.sparse_softmax_cross_entropy, lib, z, t, dtype=dtype, reduction="none")
        assert spy["sparse_loss"][-1] or lib == "jax"
        # (JAX's plain composition rounds lse near -1e4 to float32's 1e-3 spacing)
        np.testing.assert_allclose(v, expect, rtol=1e-6 if lib != "jax" or dtype == "float64"
                                   else 1e-3)
        if g is not None:
            p = np.exp(z - lse[:, None])
            p[np.arange(4), t] -= 1.0
            np.testing.assert_allclose(g, p, atol=1e-6)


@every_chunking
def test_torch_fast_matches_pytorch(chunking, spy):
    z, t, _, cw, _ = _data()
    t[::6] = -100
    F = torch.nn.functional
    for kw, pt in (({"class_weight": cw, "ignore_index": -100},
                    {"weight": torch.tensor(cw), "ignore_index": -100}),
                   ({"label_smoothing": 0.2}, {"label_smoothing": 0.2})):
        zt = torch.tensor(z, requires_grad=True)
        tt = torch.tensor(np.where(t < 0, 0, t)) if "ignore_index" not in pt else torch.tensor(t)
        ours = xent.sparse_softmax_cross_entropy(
            zt, tt, **{k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                       for k, v in kw.items()})
        assert spy["sparse_loss"][-1]
        (g1,) = torch.autograd.grad(ours, zt)
        ref = F.cross_entropy(zt, tt, **pt)
        (g2,) = torch.autograd.grad(ref, zt)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fn,which", [(xent.sparse_softmax_cross_entropy, "sparse_loss"),
                                      (xent.softmax_cross_entropy, "dense_loss"),
                                      (xent.sigmoid_cross_entropy, "sigmoid_loss")])
@every_chunking
def test_low_precision_torch(dtype, fn, which, chunking, spy):
    z, t, y, cw, sw = _data()
    lab = t if which == "sparse_loss" else (y > 0.6) * 1.0 if which == "sigmoid_loss" else y
    kw = {"sample_weight": sw} if which != "sigmoid_loss" else {}
    tol = {"float16": 2e-3, "bfloat16": 2e-2}[dtype]
    for red in ("none", "mean"):
        (v, g), (pv, pg) = _compare(fn, "torch", z, lab, spy=spy, which=which, dtype=dtype,
                                    rtol=tol, atol=tol * 0.1, reduction=red, **kw)
        assert g.dtype == pg.dtype
    zt = torch.tensor(z).to(getattr(torch, dtype)).requires_grad_(True)
    out = fn(zt, torch.tensor(lab), reduction="sum")
    assert out.dtype == zt.dtype
    (g,) = torch.autograd.grad(out, zt)
    assert g.dtype == zt.dtype
    # the fast path is no less accurate than the plain one against float64
    exact = _run(fn, "torch", z, lab, reduction="none")[0]
    fast = _run(fn, "torch", z, lab, dtype=dtype, reduction="none", grad=False)[0]
    with _fast.disabled():
        plain = _run(fn, "torch", z, lab, dtype=dtype, reduction="none", grad=False)[0]
    assert np.max(np.abs(fast - exact)) <= np.max(np.abs(plain - exact)) * 1.01 + 1e-6


@every_chunking
def test_caller_logits_are_never_written(chunking, spy):
    z, t, y, _, sw = _data()
    for dtype in (torch.float64, torch.float32, torch.float16):
        zt = torch.tensor(z, dtype=dtype, requires_grad=True)
        before = zt.detach().clone()
        for fn, lab in ((xent.sparse_softmax_cross_entropy, torch.tensor(t)),
                        (xent.softmax_cross_entropy, torch.tensor(y)),
                        (xent.sigmoid_cross_entropy, torch.tensor(y))):
            out = fn(zt, lab, reduction="sum")
            out.backward()
            assert torch.equal(zt.detach(), before)
    zn = z.copy()
    xent.sparse_softmax_cross_entropy(zn, t, sample_weight=sw)
    xent.softmax_cross_entropy(zn, y)
    assert np.array_equal(zn, z)


def test_no_gradient_work_without_grad(monkeypatch, spy):
    def boom(*a, **k):
        raise AssertionError("the autograd Function ran although no gradient is needed")

    monkeypatch.setattr(_fast_torch._Fused, "apply", boom)
    z, t, y, _, _ = _data()
    zt = torch.tensor(z, requires_grad=True)
    with torch.no_grad():
        a = xent.sparse_softmax_cross_entropy(zt, torch.tensor(t))
        b = xent.softmax_cross_entropy(zt, torch.tensor(y))
        c = xent.sigmoid_cross_entropy(zt, torch.tensor(y))
    d = xent.sparse_softmax_cross_entropy(torch.tensor(z), torch.tensor(t))
    assert all(spy[k][-1] for k in ("sparse_loss", "dense_loss", "sigmoid_loss"))
    assert a.grad_fn is None and b.grad_fn is None and c.grad_fn is None and d.grad_fn is None
    with _fast.disabled():
        torch.testing.assert_close(a, xent.sparse_softmax_cross_entropy(zt, torch.tensor(t)))


def test_gradient_accumulates_like_plain(spy):
    z, t, _, _, _ = _data()
    grads = []
    for enabled in (True, False):
        zt = torch.tensor(z, requires_grad=True)
        _fast.ENABLED = enabled
        try:
            for scale in (1.0, 2.5):
                (scale * xent.sparse_softmax_cross_entropy(zt, torch.tensor(t))).backward()
        finally:
            _fast.ENABLED = True
        grads.append(zt.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["focal", "axis0", "label_gradient", "func_grad",
                                  "pos_weight_grad", "broadcast_pos_weight"])
def test_unsupported_combinations_fall_back(case, spy):
    z, t, y, cw, _ = _data(n=6, c=6)
    zt = torch.tensor(z, requires_grad=True)
    if case == "focal":
        xent.sparse_softmax_cross_entropy(zt, torch.tensor(t), focal_gamma=2.0)
        assert spy["sparse_loss"] == [False]
    elif case == "axis0":
        xent.sparse_softmax_cross_entropy(zt, torch.tensor(t), axis=0)
        assert spy["sparse_loss"] == [False]
    elif case == "label_gradient":
        yt = torch.tensor(y, requires_grad=True)
        out = xent.softmax_cross_entropy(zt, yt)
        assert spy["dense_loss"] == [False]
        (gy,) = torch.autograd.grad(out, yt)
        assert torch.all(gy != 0)
    elif case == "func_grad":
        g = torch.func.grad(lambda a: xent.sparse_softmax_cross_entropy(a, torch.tensor(t)))(
            torch.tensor(z))
        assert spy["sparse_loss"] == [False]
        with _fast.disabled():
            ref = torch.autograd.grad(xent.sparse_softmax_cross_entropy(zt, torch.tensor(t)),
                                      zt)[0]
        torch.testing.assert_close(g, ref)
    elif case == "pos_weight_grad":
        xent.sigmoid_cross_entropy(zt, torch.tensor(y > 0.5) * 1.0,
                                   pos_weight=torch.tensor(cw, requires_grad=True))
        assert spy["sigmoid_loss"] == [False]
    else:
        xent.sigmoid_cross_entropy(zt, torch.tensor(y > 0.5) * 1.0,
                                   pos_weight=torch.tensor(cw[:, None]))
        assert spy["sigmoid_loss"] == [False]


def test_chunk_planning_covers_every_row():
    seen = []
    for n, threads in itertools.product((1, 2, 7, 64), (1, 2, 3)):
        covered = np.zeros(n, int)

        def work(lo, hi, covered=covered):
            covered[lo:hi] += 1

        _rows.run_blocks(n, threads, work)
        seen.append(bool(np.all(covered == 1)))
    assert all(seen)
    assert _rows.rows_per_chunk(10**9) == 1 and _rows.rows_per_chunk(1, 4, 400) == 100


@_lib_chunking(BACKENDS)
def test_sigmoid_infinite_logits_with_matching_labels(lib, chunking, spy):
    z, _, y, cw, _ = _data()
    y = (y > 0.5) * 1.0
    z[0, :6] = [np.inf, -np.inf, np.inf, -np.inf, 2.0, -3.0]
    y[0, :6] = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    z[5, 1], y[5, 1] = -np.inf, 0.0
    for kw in ({}, {"pos_weight": cw}):
        (v, g), _ = _compare(xent.sigmoid_cross_entropy, lib, z, y, spy=spy,
                             which="sigmoid_loss", reduction="none", **kw)
        assert np.all(v[0, :4] == 0.0) and np.all(np.isfinite(v))
        if g is not None:
            assert np.all(g[0, :4] == 0.0) and np.all(np.isfinite(g))


@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1, "z_loss": 1e-2},
                                  {"class_weight": True}])
def test_jax_soft_labels_fast_equals_plain_with_mask_and_label_grads(rng, opts):
    import jax.numpy as jnp
    import xent

    n, c = 5, 7
    z = rng.normal(size=(n, c)) * 3
    y = rng.random((n, c))
    if "label_smoothing" not in opts:  # smoothing gives a masked class weight: infinite loss
        z[:, 2] = -np.inf  # a masked class with zero label weight
        y[:, 2] = 0.0
    y /= y.sum(1, keepdims=True)
    z[1] = np.nan  # a zero-weight row of NaN padding
    sw = np.ones(n)
    sw[1] = 0.0
    kw = dict(opts)
    if kw.pop("class_weight", False):
        kw["class_weight"] = jnp.asarray(rng.uniform(0.5, 2.0, c))

    def f(z, y):
        return xent.softmax_cross_entropy(z, y, sample_weight=jnp.asarray(sw), **kw)

    args = (jnp.asarray(z), jnp.asarray(y))
    fast = jax.value_and_grad(f, (0, 1))(*args)
    with _fast.disabled():
        plain = jax.value_and_grad(f, (0, 1))(*args)
    assert np.isfinite(float(fast[0]))
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-12)
    for a, b in zip(fast[1], plain[1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
        assert np.all(np.isfinite(np.asarray(a)))


def test_jax_tiny_chunk_cases_are_not_generated_rather_than_skipped():
    # issue 13 (-q output): 125 "JAX's fast path has no chunks" skips filled the output;
    # the (lib, chunking) pairs that do not apply are now not generated at all
    import subprocess
    import sys
    from pathlib import Path

    r = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider",
                        __file__], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    ids = [ln for ln in r.stdout.splitlines() if "::" in ln]
    assert r.returncode == 0 and len(ids) > 900, r.stdout[-2000:] + r.stderr[-2000:]
    assert not [i for i in ids if "jax" in i and "tiny_chunks" in i]
    assert [i for i in ids if "numpy" in i and "tiny_chunks" in i]  # still generated there
    assert [i for i in ids if "jax" in i and "one_chunk" in i]
    assert "pytest.skip(" not in Path(__file__).read_text().split("def test_jax_tiny")[0]


@every_chunking
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_soft_label_dot_falls_back_only_on_chunks_with_masked_classes(chunking, dtype, spy,
                                                                       monkeypatch):
    # the row dot sum_c a_c (z_c - m) is one fused vecdot per chunk; a chunk where
    # it is not finite (a -inf logit of zero label weight: 0 * -inf) is computed
    # again by the three-pass form, which counts that product 0
    calls = []
    orig = _fast_torch._masked_dot
    monkeypatch.setattr(_fast_torch, "_masked_dot",
                        lambda *a: calls.append(a[0].shape[0]) or orig(*a))
    z, _, y, _, _ = _data(n=37, c=13, seed=4)
    z[[4, 20], 3] = -np.inf  # masked classes, label 0
    y[[4, 20], 3] = 0.0
    y /= y.sum(1, keepdims=True)
    z[30] = np.nan  # padding with zero weight
    sw = np.ones(37)
    sw[30] = 0.0
    for kw in ({}, {"sample_weight": sw}, {"z_loss": 1e-2, "reduction": "none"}):
        if "sample_weight" not in kw:
            zz = np.where(np.isnan(z), 0.0, z)
        else:
            zz = z
        calls.clear()
        (v, g), _ = _compare(xent.softmax_cross_entropy, "torch", zz, y, spy=spy,
                             which="dense_loss", dtype=dtype, **kw)
        assert np.all(np.isfinite(v)) and np.all(np.isfinite(g))
        assert g[4, 3] == 0.0 and g[20, 3] == 0.0
        if "sample_weight" not in kw:
            # two chunks hold a masked class (one when the whole array is one chunk)
            assert len(calls) == (1 if chunking == "one_chunk" else 2), calls
    # the formula in float64: -sum y log softmax(z), masked classes counting 0
    zz = np.where(np.isnan(z), 0.0, z)
    (v, g), _ = _compare(xent.softmax_cross_entropy, "torch", zz, y, spy=spy,
                         which="dense_loss", reduction="none")
    lse = np.array([np.logaddexp.reduce(r) for r in zz])
    with np.errstate(invalid="ignore"):
        want = -np.nansum(np.where(y == 0, 0.0, y * (zz - lse[:, None])), axis=1)
    np.testing.assert_allclose(v, want, rtol=1e-12)
    np.testing.assert_allclose(g, np.exp(zz - lse[:, None]) - y, rtol=1e-10, atol=1e-14)


@pytest.fixture
def reduced_spy(monkeypatch):
    """How many times the one-chunk reduced sparse function ran its forward."""
    calls = []
    orig = _fast_torch._SparseReduced.forward

    def forward(ctx, *a):
        calls.append(a[2])
        return orig(ctx, *a)

    monkeypatch.setattr(_fast_torch._SparseReduced, "forward", staticmethod(forward))
    return calls


def _float64_sparse(z, t):
    """Per-row ``lse - z_t`` and ``softmax - onehot`` in float64 NumPy."""
    z = np.asarray(z, np.float64)
    lse = np.logaddexp.reduce(z, axis=1)
    p = np.exp(z - lse[:, None])
    p[np.arange(len(t)), t] -= 1.0
    return lse - z[np.arange(len(t)), t], p


@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_batch_size"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logits", ["normal", "extreme", "masked"])
def test_reduced_one_chunk_matches_float64_and_pytorch(reduction, dtype, logits, reduced_spy):
    # the plain mean / sum of the one-chunk branch returns the scalar from its
    # own autograd function; its loss is -log p_t unless some p_t underflows
    # (the +-1e4 rows), then log S - (z_t - m)
    z, t, _, _, _ = _data(n=9, c=11)
    if logits == "extreme":
        z[0, :4] = [1e4, -1e4, 0.0, 5e3]
        t[0] = 1                                  # p_t = exp(-2e4): 0 in any dtype
        z[1] = -1e4
        z[1, 3] += 1.0
        t[1] = 3
    elif logits == "masked":
        z[2, (t[2] + 1) % 11] = -np.inf           # a masked class that is not the label
        z[3, :] = 0.0
        z[3, t[3]] = 120.0                        # p_t rounds to 1, the loss to 0
    v64, g64 = _float64_sparse(z, t)
    want = v64.mean() if reduction != "sum" else v64.sum()
    gwant = g64 / (len(t) if reduction != "sum" else 1)
    zt = torch.tensor(z, dtype=dtype, requires_grad=True)
    tt = torch.tensor(t)
    out = xent.sparse_softmax_cross_entropy(zt, tt, reduction=reduction)
    assert reduced_spy and out.dim() == 0 and out.dtype == dtype
    (g,) = torch.autograd.grad(3.0 * out, zt)
    tol = {torch.float32: 2e-6, torch.float64: 1e-12}[dtype]
    np.testing.assert_allclose(out.item(), want, rtol=tol * 10, atol=tol)
    np.testing.assert_allclose(g.numpy(), 3.0 * gwant, rtol=tol * 10, atol=tol)
    zp = torch.tensor(z, dtype=dtype, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(zp, tt, reduction="sum" if reduction == "sum"
                                            else "mean")
    (gp,) = torch.autograd.grad(3.0 * ref, zp)
    torch.testing.assert_close(out, ref.detach(), rtol=tol * 10, atol=tol)
    torch.testing.assert_close(g, gp, rtol=tol * 10, atol=tol)


def test_reduced_one_chunk_inf_and_nan_rows(reduced_spy):
    # a -inf label logit: an infinite loss (as F.cross_entropy), finite gradient
    # elsewhere; a NaN row: a NaN loss, never a silently finite one
    z, t, _, _, _ = _data(n=5, c=7)
    z[1, t[1]] = -np.inf
    zt = torch.tensor(z, requires_grad=True)
    out = xent.sparse_softmax_cross_entropy(zt, torch.tensor(t), reduction="sum")
    assert reduced_spy and out.item() == np.inf
    ref = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(t), reduction="sum")
    assert ref.item() == np.inf
    (g,) = torch.autograd.grad(out, zt)
    np.testing.assert_allclose(g.numpy()[[0, 2, 3, 4]], _float64_sparse(z, t)[1][[0, 2, 3, 4]],
                               atol=1e-12)
    z[3] = np.nan
    out = xent.sparse_softmax_cross_entropy(torch.tensor(z, requires_grad=True), torch.tensor(t))
    assert np.isnan(out.item())


def test_reduced_one_chunk_second_and_higher_order_backward(reduced_spy):
    z, t, _, _, _ = _data(n=6, c=9)
    tt = torch.tensor(t)
    zt = torch.tensor(z, requires_grad=True)
    out = xent.sparse_softmax_cross_entropy(zt, tt)
    (g1,) = torch.autograd.grad(out, zt, retain_graph=True)
    (g2,) = torch.autograd.grad(out, zt, torch.tensor(0.5, dtype=torch.float64))
    assert reduced_spy
    np.testing.assert_allclose(g1.numpy(), _float64_sparse(z, t)[1] / 6, atol=1e-15)
    torch.testing.assert_close(g2, 0.5 * g1, rtol=0, atol=1e-16)
    # create_graph: Hessian-vector products equal F.cross_entropy's
    v = torch.tensor(np.random.default_rng(3).standard_normal(z.shape))
    hv = []
    for fn in (xent.sparse_softmax_cross_entropy, torch.nn.functional.cross_entropy):
        zz = torch.tensor(z, requires_grad=True)
        (g,) = torch.autograd.grad(fn(zz, tt, reduction="sum"), zz, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), zz)
        hv.append(h)
    torch.testing.assert_close(hv[0], hv[1], rtol=1e-12, atol=1e-12)
    # the per-row gradient of a 3-D batch reaches the caller's shape
    z3 = torch.tensor(z.reshape(2, 3, 9), requires_grad=True)
    before = z3.detach().clone()
    out = xent.sparse_softmax_cross_entropy(z3, tt.reshape(2, 3), reduction="sum")
    (g3,) = torch.autograd.grad(out, z3)
    assert g3.shape == z3.shape and torch.equal(z3.detach(), before)
    np.testing.assert_allclose(g3.numpy().reshape(6, 9), _float64_sparse(z, t)[1], atol=1e-15)


def _ce_grad(z, t):
    zz = z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(zz, t), zz)
    return g


def test_recycled_gradient_buffers_are_never_reused_while_reachable():
    # the gradient buffers of [8, 9000] float64 logits (576 KB) are recycled:
    # whatever still reaches one -- the tensor, a view, its storage, a NumPy
    # view, a leaf's .grad -- keeps it out of later calls
    t = torch.randint(0, 9000, (8,), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    held = []
    leaf = None
    for how in ("tensor", "view", "storage", "numpy", "leaf.grad"):
        z = torch.randn(8, 9000, dtype=torch.float64, generator=gen, requires_grad=True)
        loss = xent.sparse_softmax_cross_entropy(z, t)
        if how == "leaf.grad":
            loss.backward()
            leaf, g = z, z.grad
            holder = None
        else:
            (g,) = torch.autograd.grad(loss, z)
            holder = {"tensor": g, "view": g[2:5], "storage": g.untyped_storage(),
                      "numpy": g.numpy()}[how]
        held.append((holder, _ce_grad(z, t), g.clone()))
        del g
    for _ in range(12):  # later calls, their gradients dropped at once
        z = torch.randn(8, 9000, dtype=torch.float64, generator=gen, requires_grad=True)
        (g,) = torch.autograd.grad(xent.sparse_softmax_cross_entropy(z, t), z)
        torch.testing.assert_close(g, _ce_grad(z, t), rtol=1e-12, atol=1e-15)
    for (holder, want, snapshot), how in zip(held, ("tensor", "view", "storage", "numpy")):
        if how == "tensor":
            torch.testing.assert_close(holder, want, rtol=1e-12, atol=1e-15)
        elif how == "view":
            torch.testing.assert_close(holder, want[2:5], rtol=1e-12, atol=1e-15)
        elif how == "storage":
            got = torch.tensor([], dtype=torch.float64).set_(holder).reshape(8, 9000)
            torch.testing.assert_close(got, snapshot, rtol=0, atol=0)
        else:
            np.testing.assert_array_equal(holder, snapshot.numpy())
    torch.testing.assert_close(leaf.grad, held[4][1], rtol=1e-12, atol=1e-15)
    # a leaf's gradient accumulates into the stolen buffer, as with F.cross_entropy
    xent.sparse_softmax_cross_entropy(leaf, t).backward()
    torch.testing.assert_close(leaf.grad, 2 * held[4][1], rtol=1e-12, atol=1e-15)


def test_recycling_is_bounded_and_reuses_dropped_buffers(monkeypatch):
    z = torch.zeros(8, 9000, dtype=torch.float64)
    keep = [_fast_torch._empty_like(z) for _ in range(_fast_torch.RECYCLE_PER_SIZE + 3)]
    ptrs = {k.data_ptr() for k in keep}
    assert len(ptrs) == len(keep)  # every live buffer its own memory
    nbytes = 8 * 9000 * 8
    assert len(_fast_torch._POOL[nbytes]) == _fast_torch.RECYCLE_PER_SIZE
    pooled = {b.ctypes.data for b in _fast_torch._POOL[nbytes]}
    del keep[0]
    again = _fast_torch._empty_like(z)
    # the dropped block comes back (no fresh pages), and never one still held
    assert again.data_ptr() in pooled and again.data_ptr() not in {k.data_ptr() for k in keep}
    for i in range(_fast_torch.RECYCLE_SIZES + 2):  # many sizes: the oldest are let go
        _fast_torch._empty_like(torch.zeros(8, 9000 + i, dtype=torch.float64))
    assert len(_fast_torch._POOL) <= _fast_torch.RECYCLE_SIZES
    kept = sum(b.nbytes for bs in _fast_torch._POOL.values() for b in bs)
    assert kept <= _fast_torch.RECYCLE_MAX_BYTES
    # past the byte cap a new block is plain torch memory, and the pool does not grow
    last = torch.zeros(8, 9000 + _fast_torch.RECYCLE_SIZES + 1, dtype=torch.float64)
    block = last.numel() * 8
    monkeypatch.setattr(_fast_torch, "RECYCLE_PER_SIZE", 100)
    monkeypatch.setattr(_fast_torch, "RECYCLE_MAX_BYTES", kept + block + block // 2)
    held = [_fast_torch._empty_like(last) for _ in range(3)]
    # the kept free block, one new block under the cap, then plain memory
    assert len({h.data_ptr() for h in held}) == 3
    assert sum(b.nbytes for bs in _fast_torch._POOL.values() for b in bs) == kept + block
    small = _fast_torch._empty_like(torch.zeros(8, 10))  # below RECYCLE_MIN_BYTES
    assert small.untyped_storage().nbytes() == 8 * 10 * 4 and small.is_contiguous()


@pytest.mark.parametrize("bad", [-1, 13, -100])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_one_chunk_labels_out_of_range_raise_even_with_checks_off(bad, reduction, reduced_spy):
    # the one-chunk kernel reads the label's probability through NumPy, whose
    # negative indices would wrap silently to the last classes: never a number
    z, t, _, _, _ = _data(n=6, c=13)
    t[4] = bad
    zt = torch.tensor(z, requires_grad=True)
    with xent.value_checks("off"):
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 13\)"):
            xent.sparse_softmax_cross_entropy(zt, torch.tensor(t), reduction=reduction)
    t[4] = 12  # the largest valid class is fine
    with xent.value_checks("off"):
        out = xent.sparse_softmax_cross_entropy(zt, torch.tensor(t))
    np.testing.assert_allclose(out.item(), _float64_sparse(z, t)[0].mean(), rtol=1e-12)
