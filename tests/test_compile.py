"""``torch.compile(fullgraph=True)`` of every loss: it compiles on the CPU and
matches eager in values and gradients.

Decision (see ``xent._kernels.dense_torch``): while compiling, the fused torch
kernels are not taken; the plain composition is traced (Inductor fuses it),
and value checks become in-graph ``torch._assert_async``. Sampled losses
compile with a precomputed ``sampled=`` sample; drawing the sample with
``rng`` inside the compiled function is not supported (the unique sampler
loops on a data-dependent count).

torch.compile is slow on the CPU, so all losses are compiled inside one test
(one backend, ``aot_eager``, which traces forward and backward graphs
exactly as Inductor receives them) and one Inductor test covers the headline
loss.
"""

from __future__ import annotations

import pytest
import torch

import xent
from _loss_cases import cases, grad_args as _grad_args


def _run(fn, name, args):
    args = _grad_args(name, args)
    out = fn(*args)
    diff = [a for a in args if a.requires_grad]
    grads = torch.autograd.grad(out.sum(), diff)
    return out.detach(), grads


def test_every_loss_compiles_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    failures = {}
    for name, fn, args in cases(reductions=("mean", "none")):
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)
        try:
            out_c, grads_c = _run(compiled, name, args)
        except Exception as err:  # collect every failing loss, then fail once
            failures[name] = f"{type(err).__name__}: {str(err)[:300]}"
            continue
        out_e, grads_e = _run(fn, name, args)
        torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6, msg=name)
        for gc, ge in zip(grads_c, grads_e):
            torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-6, msg=name)
    assert not failures


def test_sparse_compiles_with_inductor_and_matches_eager():
    # the case: "Unsupported torch.* op returned non-Tensor ... item"
    torch._dynamo.reset()
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 3, 4, 0, 1, -100])

    def f(z, t):
        return xent.sparse_softmax_cross_entropy(z, t, ignore_index=-100, label_smoothing=0.1)

    compiled = torch.compile(f, fullgraph=True)
    zc, ze = z.clone().requires_grad_(), z.clone().requires_grad_()
    out_c, out_e = compiled(zc, t), f(ze, t)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(zc.grad, ze.grad, rtol=1e-5, atol=1e-6)


def test_compiled_out_of_range_label_is_an_in_graph_assertion():
    torch._dynamo.reset()
    f = torch.compile(lambda z, t: xent.sparse_softmax_cross_entropy(z, t), fullgraph=True,
                      backend="aot_eager")
    with pytest.raises(RuntimeError, match="labels must be class indices"):
        f(torch.zeros(2, 3), torch.tensor([0, 7]))


def test_compiles_after_other_libraries_filled_the_dtype_caches():
    # regression: a per-dtype cache shared by every library held TensorFlow's
    # DType keys after a TF call, and Dynamo cannot hash those ("Untraceable C
    # tp_hash"), so every torch loss compiled after a TF loss broke the graph
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    xent.sparse_softmax_cross_entropy(tf.zeros([2, 3]), tf.constant([0, 2]))
    xent.sparse_softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 2]))
    z = torch.randn(4, 5, requires_grad=True)
    t = torch.tensor([0, 4, 2, 1])
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b: xent.sparse_softmax_cross_entropy(a, b), fullgraph=True,
                       backend="aot_eager")
    got = fn(z, t)
    z64 = z.detach().double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(z64, t)
    assert torch.allclose(got.double(), ref, rtol=1e-6)
    (gz,) = torch.autograd.grad(got, z)
    (rz,) = torch.autograd.grad(ref, z64)
    assert torch.allclose(gz.double(), rz, rtol=1e-5, atol=1e-7)


def test_dense_losses_compile_with_dynamic_batch_sizes():
    """``torch.compile(dynamic=True)`` traces the batch size as a symbol: batches of 5 and 7
    rows give eager's values and gradients and torch's own losses' values. (Not yet
    ``linear_cross_entropy``: its chunk is sized from the row count, which is symbolic there.)"""
    torch._dynamo.reset()

    def step(z, t, y):
        return (xent.sparse_softmax_cross_entropy(z, t, label_smoothing=0.1)
                + xent.softmax_cross_entropy(z, torch.softmax(y, -1))
                + xent.sigmoid_cross_entropy(z, (y > 0).to(z.dtype), reduction="sum"))

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=True)
    gen = torch.Generator().manual_seed(0)
    for n in (5, 7):
        z = torch.randn(n, 11, dtype=torch.float64, generator=gen)
        t = torch.randint(0, 11, (n,), generator=gen)
        y = torch.randn(n, 11, dtype=torch.float64, generator=gen)
        outs = []
        for fn in (compiled, step):
            zz = z.clone().requires_grad_()
            v = fn(zz, t, y)
            outs.append((v.detach(), *torch.autograd.grad(v, zz)))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        sparse = torch.nn.functional.cross_entropy(z, t, label_smoothing=0.1)
        soft = torch.nn.functional.cross_entropy(z, torch.softmax(y, -1))
        sig = torch.nn.functional.binary_cross_entropy_with_logits(z, (y > 0).to(z.dtype),
                                                                   reduction="sum")
        torch.testing.assert_close(outs[0][0], sparse + soft + sig, rtol=1e-10, atol=1e-12)
