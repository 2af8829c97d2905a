"""xent.torch modules against torch's own modules: values, gradients, state dicts, dtypes."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import xent  # noqa: E402
import xent.torch as xt  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _close(a, b, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


def _value_and_grads(module, x, t):
    x = x.detach().clone().requires_grad_(True)
    params = [p for p in module.parameters()]
    out = module(x, t)
    g = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, [x] + params, g)
    return out, grads


def _compare(ours, theirs, x, t, dtype):
    torch.manual_seed(7)
    a, ga = _value_and_grads(ours, x, t)
    torch.manual_seed(7)
    b, gb = _value_and_grads(theirs, x, t)
    assert a.dtype == b.dtype and a.shape == b.shape
    _close(a, b, dtype)
    for u, v in zip(ga, gb):
        _close(u, v, dtype)


SHAPES = [(6, 5), (3, 5, 4), (2, 5, 3, 2), (5,)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("prob", [False, True])
def test_cross_entropy_matches_torch(dtype, shape, reduction, weighted, smoothing, prob):
    g = torch.Generator().manual_seed(hash((shape, reduction, weighted, prob)) % 2**31)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    if prob:
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1 if len(shape) > 1 else 0).to(dtype)
    else:
        tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
        t = torch.randint(0, C, tshape, generator=g)
        if t.dim() and t.numel() > 1:
            t.view(-1)[0] = -100
    w = torch.rand(C, generator=g, dtype=torch.float64).to(dtype) + 0.5 if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    _compare(xt.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw), x, t, dtype)


def test_cross_entropy_ignore_index_other_value_and_extreme_logits():
    x = torch.tensor([[1e4, -1e4, 0.0], [0.0, 1.0, 2.0], [float("-inf"), 0.0, 1.0]],
                     dtype=torch.float64)
    t = torch.tensor([1, 3, 2])
    kw = dict(ignore_index=3)
    _compare(xt.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw), x, t, torch.float64)


def test_cross_entropy_all_ignored_mean_is_zero_where_torch_is_nan():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.full((4,), -100)
    assert torch.isnan(torch.nn.CrossEntropyLoss()(x, t))
    out = xt.CrossEntropyLoss()(x, t)
    assert out.item() == 0.0
    (gx,) = torch.autograd.grad(out, x)
    assert torch.all(gx == 0)


def test_cross_entropy_extras_are_keyword_only_and_match_functions():
    with pytest.raises(TypeError):
        xt.CrossEntropyLoss(None, -100, "mean", 0.0, 0.1)
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    m = xt.CrossEntropyLoss(z_loss=1e-2, focal_gamma=2.0)
    ref = xent.sparse_softmax_cross_entropy(x, t, z_loss=1e-2, focal_gamma=2.0)
    torch.testing.assert_close(m(x, t), ref)
    # float64 formula for the z-loss term
    m = xt.CrossEntropyLoss(z_loss=0.5, reduction="sum")
    lse = torch.logsumexp(x, 1)
    formula = (lse - x.gather(1, t[:, None])[:, 0] + 0.5 * lse**2).sum()
    torch.testing.assert_close(m(x, t), formula)


def test_xent_reduction_names_have_table_meanings():
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, -100, 2, 0])
    m = xt.CrossEntropyLoss(reduction="sum_over_batch_size", weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    ref = xent.sparse_softmax_cross_entropy(x, t, ignore_index=-100, class_weight=m.weight,
                                            reduction="sum_over_batch_size")
    torch.testing.assert_close(m(x, t), ref)
    with pytest.raises(ValueError, match="reduction"):
        xt.CrossEntropyLoss(reduction="batchmean")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4), (7,)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos", [False, True])
def test_bce_with_logits_matches_torch(dtype, shape, reduction, weighted, pos):
    g = torch.Generator().manual_seed(11)
    x = (4 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    C = shape[-1]
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    pw = (torch.rand(C, generator=g, dtype=torch.float64) * 3).to(dtype) if pos else None
    kw = dict(weight=w, reduction=reduction, pos_weight=pw)
    _compare(xt.BCEWithLogitsLoss(**kw), torch.nn.BCEWithLogitsLoss(**kw), x, y, dtype)


def test_bce_extreme_logits_and_formula():
    x = torch.tensor([1e4, -1e4, 0.0, 3.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.5, 1.0], dtype=torch.float64)
    out = xt.BCEWithLogitsLoss(reduction="none")(x, y)
    formula = torch.tensor([1e4, 1e4, np.log(2.0), np.log1p(np.exp(-3.0))], dtype=torch.float64)
    torch.testing.assert_close(out, formula)


def test_weights_are_buffers_and_follow_to_and_state_dict():
    w = torch.tensor([1.0, 2.0, 3.0])
    for ours, theirs in [(xt.CrossEntropyLoss(weight=w), torch.nn.CrossEntropyLoss(weight=w)),
                         (xt.BCEWithLogitsLoss(weight=w, pos_weight=w),
                          torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=w))]:
        assert set(ours.state_dict()) == set(theirs.state_dict())
        ours.load_state_dict(theirs.state_dict())
        theirs.load_state_dict(ours.state_dict())
        m = ours.to(torch.float64)
        assert m.weight.dtype == torch.float64
        x = torch.randn(4, 3, dtype=torch.float64)
        t = torch.tensor([0, 1, 2, 1]) if isinstance(ours, xt.CrossEntropyLoss) else torch.rand(4, 3, dtype=torch.float64)
        assert m(x, t).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_linear_cross_entropy_matches_torch(dtype, reduction, bias, weighted, smoothing):
    torch.manual_seed(3)
    D, V, N = 8, 13, 10
    w = (torch.rand(V, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    kw = dict(bias=bias, dtype=dtype, reduction=reduction, weight=w, label_smoothing=smoothing)
    theirs = torch.nn.LinearCrossEntropyLoss(D, V, **kw)
    ours = xt.LinearCrossEntropyLoss(D, V, **kw, chunk_size=4)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(N, D, dtype=torch.float64).to(dtype)
    t = torch.randint(0, V, (N,))
    t[2] = -100
    _compare(ours, theirs, x, t, dtype)


def test_linear_cross_entropy_chunked_torch_and_prob_targets():
    torch.manual_seed(4)
    D, V, N = 6, 11, 9
    theirs = torch.nn.LinearCrossEntropyLoss(
        D, V, bias=True, dtype=torch.float64,
        options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4))
    ours = xt.LinearCrossEntropyLoss(D, V, bias=True, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    x, t = torch.randn(N, D, dtype=torch.float64), torch.randint(0, V, (N,))
    _compare(ours, theirs, x, t, torch.float64)
    theirs.options = None
    p = torch.softmax(torch.randn(N, V, dtype=torch.float64), 1)
    _compare(ours, theirs, x, p, torch.float64)


def test_linear_cross_entropy_state_dict_both_ways_and_layout():
    w = torch.rand(7) + 0.1
    theirs = torch.nn.LinearCrossEntropyLoss(5, 7, bias=True, weight=w)
    ours = xt.LinearCrossEntropyLoss(5, 7, bias=True, weight=w)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"linear.weight", "linear.bias", "weight"}
    assert isinstance(ours.linear, torch.nn.Linear)
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.linear.weight, theirs.linear.weight)
    ours2 = xt.LinearCrossEntropyLoss(5, 7, bias=True, weight=w)
    theirs.load_state_dict(ours2.state_dict())
    assert torch.equal(ours2.linear.weight, theirs.linear.weight)
    m = ours.to(torch.float64)
    assert m.linear.weight.dtype == torch.float64 and m.weight.dtype == torch.float64
    out = m(torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 6, 3]))
    assert out.dtype == torch.float64


def test_linear_cross_entropy_extras_and_leading_dims():
    torch.manual_seed(5)
    m = xt.LinearCrossEntropyLoss(4, 9, bias=True, z_loss=1e-3, logit_softcap=5.0,
                                  reduction="none", dtype=torch.float64)
    x, t = torch.randn(2, 3, 4, dtype=torch.float64), torch.randint(0, 9, (2, 3))
    z = m.linear(x)
    z = 5.0 * torch.tanh(z / 5.0)
    ref = xent.sparse_softmax_cross_entropy(z, t, z_loss=1e-3, reduction="none")
    torch.testing.assert_close(m(x, t), ref)
    with pytest.raises(ValueError, match="out_features"):
        xt.LinearCrossEntropyLoss(4, 9, out_features=(2,))


def _sampled_setup(cls, **kw):
    torch.manual_seed(0)
    m = cls(6, 50, 8, dtype=torch.float64, **kw)
    x = torch.randn(5, 6, dtype=torch.float64)
    t = torch.tensor([1, 4, 7, 49, 0])
    return m, x, t


@pytest.mark.parametrize("cls,fn", [(xt.SampledSoftmaxLoss, xent.sampled_softmax_loss),
                                    (xt.NCELoss, xent.nce_loss)])
def test_sampled_modules_train_is_the_function_eval_is_full_softmax(cls, fn):
    m, x, t = _sampled_setup(cls)
    assert m.weight.shape == (50, 6) and m.bias.shape == (50,)
    out = m(x, t, rng=3)
    ref = fn(x, m.weight, t, num_sampled=8, bias=m.bias, rng=3,
             remove_accidental_hits=m.remove_accidental_hits)
    torch.testing.assert_close(out, ref)
    out.backward()
    assert m.weight.grad is not None and m.bias.grad is not None
    m.eval()
    full = torch.nn.functional.cross_entropy(x @ m.weight.T + m.bias, t)
    torch.testing.assert_close(m(x, t), full)


def test_sampled_module_num_true_eval_and_leading_dims():
    torch.manual_seed(1)
    m = xt.SampledSoftmaxLoss(4, 20, 5, num_true=2, dtype=torch.float64).eval()
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.randint(0, 20, (3, 2))
    logp = torch.log_softmax(x @ m.weight.T + m.bias, 1)
    ref = -(logp.gather(1, t).mean(1)).mean()
    torch.testing.assert_close(m(x, t), ref)
    m1 = xt.SampledSoftmaxLoss(4, 20, 5, dtype=torch.float64, reduction="none")
    y = m1(torch.randn(2, 3, 4, dtype=torch.float64), torch.randint(0, 20, (2, 3)), rng=0)
    assert y.shape == (2, 3)


@pytest.mark.parametrize("make,args", [
    (lambda: xt.CrossEntropyLoss(label_smoothing=0.1), lambda: (torch.randn(4, 5), torch.tensor([0, 1, -100, 4]))),
    (lambda: xt.BCEWithLogitsLoss(pos_weight=torch.ones(5)), lambda: (torch.randn(4, 5), torch.rand(4, 5))),
    (lambda: xt.LinearCrossEntropyLoss(3, 5), lambda: (torch.randn(4, 3), torch.tensor([0, 1, -100, 4]))),
])
def test_modules_compile_fullgraph(make, args):
    # values and input gradients of the compiled module equal eager's
    m = make()
    x, t = args()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = m(x1, t)
    eager.backward()
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    got = compiled(x2, t)
    got.backward()
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(x2.grad, x1.grad)


def test_import_xent_does_not_import_torch():
    code = "import sys, xent; assert 'torch' not in sys.modules; import xent.torch; assert 'torch' in sys.modules"
    import os
    src = os.path.dirname(os.path.dirname(xent.__file__))
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("cls,binary", [(xt.CrossEntropyLoss, False), (xt.BCEWithLogitsLoss, True)])
def test_float16_matches_torch_in_float32_and_keeps_dtype(cls, binary):
    g = torch.Generator().manual_seed(2)
    x = (3 * torch.randn(6, 5, generator=g)).half()
    t = torch.rand(6, 5, generator=g).half() if binary else torch.tensor([0, 1, 2, 3, 4, -100])
    ours = cls()(x, t)
    assert ours.dtype == torch.float16
    ref_cls = torch.nn.BCEWithLogitsLoss if binary else torch.nn.CrossEntropyLoss
    ref = ref_cls()(x.float(), t.float() if binary else t)
    torch.testing.assert_close(ours.float(), ref, rtol=2e-3, atol=2e-3)


def test_bad_target_shape_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="target"):
        xt.CrossEntropyLoss()(torch.randn(4, 3), torch.rand(4, 2))
    with pytest.raises(ValueError, match="weight"):
        xt.LinearCrossEntropyLoss(3, 5, weight=torch.ones(4))


def test_ignored_rows_with_nan_logits_contribute_nothing():
    x = torch.randn(3, 4, dtype=torch.float64)
    x[1] = float("nan")
    x.requires_grad_(True)
    t = torch.tensor([0, -100, 3])
    out = xt.CrossEntropyLoss()(x, t)
    ref = torch.nn.functional.cross_entropy(x.detach()[[0, 2]], t[[0, 2]])
    torch.testing.assert_close(out.detach(), ref)
    (g,) = torch.autograd.grad(out, x)
    assert torch.all(g[1] == 0) and torch.isfinite(g).all()


def test_sampled_softmax_example_reaches_full_softmax_quality():
    """examples/sampled_softmax_module.py, shrunk: eval loss within 10% of full-softmax training."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "sampled_softmax_module.py")
    spec = importlib.util.spec_from_file_location("sampled_softmax_module", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--steps", "40", "--classes", "1000", "--num-sampled", "128",
                    "--batch", "32", "--eval-size", "512"])
    assert res["eval_sampled"] < 1.10 * res["eval_full"]
    assert res["eval_full"] < 0.8 * np.log(1000)  # it learned something
