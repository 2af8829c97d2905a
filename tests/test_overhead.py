"""The default sparse call on torch builds the autograd graph of F.cross_entropy (no extra nodes)."""

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import xent  # noqa: E402


def _nodes(loss):
    seen, todo = [], [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.append(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return sorted(type(f).__name__ for f in seen)


@pytest.mark.parametrize("reduction", ["mean", "sum", "sum_over_batch_size"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4)])
def test_plain_reduction_is_one_cross_entropy(shape, reduction):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, shape[-1], shape[:-1], generator=g)
    loss = xent.sparse_softmax_cross_entropy(z, t, reduction=reduction)
    z2, t2 = (z, t) if z.dim() == 2 else (z.reshape(-1, shape[-1]), t.reshape(-1))
    ref = F.cross_entropy(z2, t2, reduction="sum" if reduction == "sum" else "mean")
    assert _nodes(loss) == _nodes(ref)
    # float64 formula, value and gradient
    nll = torch.logsumexp(z.detach(), -1) - z.detach().gather(-1, t[..., None])[..., 0]
    want = nll.sum() if reduction == "sum" else nll.mean()
    torch.testing.assert_close(loss.detach(), want)
    (gz,) = torch.autograd.grad(loss, z)
    p = torch.softmax(z.detach(), -1) - F.one_hot(t, shape[-1]).double()
    torch.testing.assert_close(gz, p if reduction == "sum" else p / nll.numel())


def test_all_ignored_mean_is_still_zero():
    z = torch.randn(3, 4, requires_grad=True)
    t = torch.full((3,), -100)
    loss = xent.sparse_softmax_cross_entropy(z, t, ignore_index=-100)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(z.grad) == 0


def test_out_of_range_label_still_raises():
    z = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\), got 4 at position"):
        xent.sparse_softmax_cross_entropy(z, torch.tensor([0, 4, 1]))


# --- the short path of the default call (issue #9) ---------------------------------
# ``label_smoothing=0`` (an int) is not the default float: it takes the general
# path and validates to the same options, so the two paths must agree exactly.

import numpy as np  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from xent import softmax as _softmax  # noqa: E402
from xent._kernels import table  # noqa: E402


def _short(z, t):
    return xent.sparse_softmax_cross_entropy(z, t)


def _general(z, t):
    return xent.sparse_softmax_cross_entropy(z, t, label_smoothing=0)


def _records(monkeypatch):
    seen = []
    run, run_plain = table.run, table.run_plain
    monkeypatch.setattr(table, "run", lambda loss, call: seen.append(("run", call)) or run(loss, call))
    monkeypatch.setattr(table, "run_plain",
                        lambda loss, call: seen.append(("plain", call)) or run_plain(loss, call))
    return seen


@pytest.mark.parametrize("ldt", [torch.int64, torch.int32])
@pytest.mark.parametrize("dt", [torch.float32, torch.float16])
def test_short_path_builds_the_general_record(dt, ldt, monkeypatch):
    z = torch.randn(6, 5, dtype=dt, requires_grad=True)
    t = torch.randint(0, 5, (6,), dtype=ldt)
    seen = _records(monkeypatch)
    _short(z, t)
    _general(z, t)
    (k1, a), (k2, b) = seen
    assert (k1, k2) == ("plain", "run")  # the short path went through the table's plain entry
    for f in a._fields:
        x, y = getattr(a, f), getattr(b, f)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f
        else:
            assert x == y, f
    assert a.z is z and a.labels.dtype == torch.int64 and a.cdt == torch.float32


@pytest.mark.parametrize("disabled", [False, True], ids=["table", "disabled"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4), (0, 5), (300, 256)])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_short_path_values_and_gradients_are_the_general_paths(dt, shape, disabled):
    g = torch.Generator().manual_seed(1)
    z = (4 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dt).requires_grad_()
    t = torch.randint(0, shape[-1], shape[:-1], generator=g)
    z0, t0 = z.detach().clone(), t.clone()
    out = {}
    with table.disabled() if disabled else torch.enable_grad():
        for name, fn in (("short", _short), ("general", _general)):
            loss = fn(z, t)
            (gz,) = torch.autograd.grad(loss, z)
            out[name] = loss, gz
    (ls, gs), (lg, gg) = out["short"], out["general"]
    assert ls.dtype == dt and gs.dtype == dt
    assert torch.equal(ls, lg) and torch.equal(gs, gg)
    assert torch.equal(z.detach(), z0) and torch.equal(t, t0)  # the caller's arrays untouched
    # and the float64 formula (computed in float32 for the half types)
    zd = z.detach().double()
    n = max(1, t.numel())
    nll = torch.logsumexp(zd, -1) - zd.gather(-1, t[..., None])[..., 0]
    p = (torch.softmax(zd, -1) - F.one_hot(t, shape[-1]).double()) / n
    tol = {} if dt in (torch.float32, torch.float64) else {"atol": 1e-2, "rtol": 1e-2}
    torch.testing.assert_close(ls.double(), nll.sum() / n, **tol)
    torch.testing.assert_close(gs.double(), p, **tol)


def _outcome(fn, *args):
    try:
        out = fn(*args)
    except Exception as err:  # noqa: BLE001 - the error itself is compared
        return type(err), str(err)
    return "ok", out.item()


_BAD = {
    "too large": lambda: (torch.zeros(3, 4), torch.tensor([0, 4, 1])),
    "negative": lambda: (torch.zeros(3, 4), torch.tensor([0, -1, 1])),
    "minus 100": lambda: (torch.zeros(3, 4), torch.tensor([-100, 1, 1])),
    "float labels": lambda: (torch.zeros(3, 4), torch.tensor([0.0, 1.0, 1.0])),
    "bool labels": lambda: (torch.zeros(3, 4), torch.tensor([True, False, True])),
    "one-hot": lambda: (torch.zeros(3, 4), torch.eye(4)[:3].long()),
    "trailing 1": lambda: (torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.long)),
    "int logits": lambda: (torch.zeros(3, 4, dtype=torch.long), torch.tensor([0, 1, 1])),
    "numpy labels": lambda: (torch.zeros(3, 4), np.array([0, 1, 1])),
    "list labels": lambda: (torch.zeros(3, 4), [0, 1, 5]),
    "no classes": lambda: (torch.zeros(3, 0), torch.zeros(3, dtype=torch.long)),
    "scalar": lambda: (torch.zeros(()), torch.zeros((), dtype=torch.long)),
    "labels first": lambda: (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[2.0, 1.0]])),
    "valid": lambda: (torch.zeros(3, 4), torch.tensor([0, 3, 1])),
}


@pytest.mark.parametrize("mode", [None, "raise", "async", "off"])
@pytest.mark.parametrize("case", sorted(_BAD))
def test_short_path_errors_are_the_general_paths(case, mode):
    z, t = _BAD[case]()
    with xent.value_checks(mode):
        short, general = _outcome(_short, z, t), _outcome(_general, z, t)
        with table.disabled():
            reference = _outcome(_short, z, t)
    assert short == general == reference
    if case in ("too large", "negative", "minus 100") and mode in (None, "raise"):
        assert short[0] is ValueError and "labels must be class indices in [0, 4)" in short[1]
        assert "at position (1,)" in short[1] or "at position (0,)" in short[1]
    if case == "valid":
        assert short[0] == "ok"


class _CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.item,
                                   torch.ops.aten.is_nonzero):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", [None, "raise", "async", "off"])
def test_short_path_host_reads(mode):
    z = torch.randn(8, 5, requires_grad=True)
    t = torch.randint(0, 5, (8,))
    counts = []
    for fn in (_short, _general):
        with xent.value_checks(mode), _CountSyncs() as c:
            fn(z, t).backward()
        counts.append(c.calls)
    # "raise" (the CPU default): one reduction, two scalars read; else none
    assert counts == ([2, 2] if mode in (None, "raise") else [0, 0])


def test_short_path_declines_what_is_not_plain():
    z = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    assert _softmax._plain_sparse(z, t, "mean") is not None
    assert _softmax._plain_sparse(z, t.numpy(), "mean") is None       # another array type
    assert _softmax._plain_sparse(z, t.float(), "mean") is None       # not integer labels
    assert _softmax._plain_sparse(z, t[:3], "mean") is None           # the general path's error
    assert _softmax._plain_sparse(z.numpy(), t.numpy(), "mean") is not None  # any library


def test_numpy_short_path_matches_the_general_path():
    rng = np.random.default_rng(0)
    z, t = rng.normal(size=(5, 7)), rng.integers(0, 7, 5)
    assert _short(z, t) == _general(z, t)
    with table.disabled():
        np.testing.assert_allclose(_short(z, t), _general(z, t), rtol=1e-15)
    want = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(5), t])
    np.testing.assert_allclose(_short(z, t), want, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "none", "mean", "sum_over_batch_size"])
def test_explicit_default_options_take_the_short_path(reduction, monkeypatch):
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 0])
    seen = _records(monkeypatch)
    out = xent.sparse_softmax_cross_entropy(z, t, reduction=reduction, axis=-1, label_smoothing=0.0)
    assert [k for k, _ in seen] == ["plain"]
    with table.disabled():
        want = xent.sparse_softmax_cross_entropy(z, t, reduction=reduction, label_smoothing=0)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    g1, = torch.autograd.grad(out.sum(), z)
    g2, = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
