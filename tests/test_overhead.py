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
