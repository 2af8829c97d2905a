"""linear_cross_entropy: exactly the naive composition, without the [N, V] logits.

Every value is checked against a float64 NumPy formula written here, against
xent's own naive composition ``sparse_softmax_cross_entropy(x @ W.T + b, ...)``
on the same backend, and against PyTorch's ``F.cross_entropy`` (the peer)
where it has the same semantics; gradients against the naive composition's
autodiff and ``F.cross_entropy``'s. Memory is checked structurally (no
operation produces ``N * V`` elements), never by timing.
"""

from __future__ import annotations

import math
from functools import partial
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import xent
from xent._core.backend import get_backend, library_of

REDUCTIONS = ["none", "sum", "mean", "sum_over_batch_size", "sum_by_nonzero_weights"]
IGNORE = -100

# name -> options; True means "make a random array for this option"
OPTIONS = {
    "plain": {},
    "bias": dict(bias=True),
    "smooth_classweight": dict(label_smoothing=0.2, class_weight=True, bias=True),
    "softcap_ignore": dict(logit_softcap=2.5, ignore_index=IGNORE),
    "zloss_sampleweight": dict(z_loss=0.05, sample_weight=True),
    "everything": dict(bias=True, label_smoothing=0.1, z_loss=1e-2, logit_softcap=3.0,
                       class_weight=True, sample_weight=True, ignore_index=IGNORE),
}
# (options, reduction, chunk): every reduction with no option and with all of them, the
# reductions with and without gradients in the forward pass ("mean", "none") for the
# others; chunk 100 does not divide V = 1013, and torch then walks ceil(37 * 100 / 1013)
# = 4 rows at a time, which does not divide N = 37 either; None is one chunk.
CASES = [(o, r, 100) for o in OPTIONS
         for r in (REDUCTIONS if o in ("plain", "everything") else ["none", "mean"])]
CASES += [("everything", r, None) for r in REDUCTIONS]


def with_backends(names, cases, jax_reductions=("none",)):
    """``cases`` on each backend. JAX's kernel only ever sees a per-row cotangent (the
    reductions are plain autodiff of ``_reduce`` on its output), and each JAX case costs a
    compilation, so there only ``jax_reductions`` run (torch's kernel differs per reduction)."""
    return [(b, *c) for c in cases for b in names if b != "jax" or c[1] in jax_reductions]


def make(rng, lead=(37,), D=19, V=1013, opts=None, scale=1.0):
    """Random float64 NumPy arrays for one problem."""
    opts = opts or {}
    x = rng.normal(size=(*lead, D)) * scale
    W = rng.normal(size=(V, D)) / math.sqrt(D)
    t = rng.integers(0, V, size=lead)
    kw = {}
    if opts.get("bias"):
        kw["bias"] = rng.normal(size=V)
    if opts.get("class_weight"):
        cw = rng.uniform(0.2, 2.0, size=V)
        cw[::7] = 0.0
        kw["class_weight"] = cw
    if opts.get("sample_weight"):
        sw = rng.uniform(0.0, 2.0, size=lead)
        sw.flat[1] = 0.0
        kw["sample_weight"] = sw
    if "ignore_index" in opts:
        t.flat[::5] = IGNORE
    for k in ("label_smoothing", "z_loss", "logit_softcap", "ignore_index"):
        if k in opts:
            kw[k] = opts[k]
    return x, W, t, kw


def ref_loss(x, W, t, *, bias=None, ignore_index=None, label_smoothing=0.0, z_loss=0.0,
             logit_softcap=None, class_weight=None, sample_weight=None, reduction="mean"):
    """The float64 formula of shared/API.md, written out with the [N, V] logits."""
    z = x @ W.T + (0 if bias is None else bias)
    if logit_softcap is not None:
        z = logit_softcap * np.tanh(z / logit_softcap)
    V = W.shape[0]
    m = z.max(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(z - m).sum(-1))
    logp = z - lse[..., None]
    valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    tt = np.where(valid, t, 0)
    cw = np.ones(V) if class_weight is None else class_weight
    w_t = cw[tt]
    logp_t = np.take_along_axis(logp, tt[..., None], -1)[..., 0]
    s = label_smoothing
    with np.errstate(invalid="ignore"):  # 0 * -inf on masked classes is 0
        smooth = np.where(cw == 0, 0.0, cw * logp).sum(-1)
    loss = -(1 - s) * w_t * logp_t - (s / V) * smooth + z_loss * lse**2
    sw = np.ones(t.shape) if sample_weight is None else np.broadcast_to(sample_weight, t.shape)
    sw = np.where(valid, sw, 0.0)
    loss = np.where(sw != 0, loss, 0.0)
    n = sw * w_t
    total = (sw * loss).sum()
    if reduction == "none":
        return sw * loss
    den = {"sum": 1.0, "mean": n.sum(), "sum_over_batch_size": valid.sum(),
           "sum_by_nonzero_weights": (n != 0).sum()}[reduction]
    return 0.0 if den == 0 else total / den


def naive(x, W, t, *, bias=None, logit_softcap=None, **kw):
    """xent's own naive composition, on any backend."""
    xp = get_backend(library_of(x)).xp
    z = xp.matmul(x, xp.matrix_transpose(W))
    if bias is not None:
        z = z + bias
    if logit_softcap is not None:
        z = logit_softcap * xp.tanh(z / logit_softcap)
    return xent.sparse_softmax_cross_entropy(z, t, **kw)


def peer_torch(x, W, t, *, bias=None, ignore_index=None, label_smoothing=0.0, z_loss=0.0,
               logit_softcap=None, class_weight=None, sample_weight=None, reduction="mean"):
    """PyTorch's F.cross_entropy on the logits, or None where its semantics differ."""
    if z_loss or sample_weight is not None or reduction not in ("none", "sum", "mean"):
        return None
    z = x @ W.T
    if bias is not None:
        z = z + bias
    if logit_softcap is not None:
        z = logit_softcap * torch.tanh(z / logit_softcap)
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), t.reshape(-1), weight=class_weight,
                           ignore_index=IGNORE if ignore_index is None else ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction
                           ).reshape(t.shape if reduction == "none" else ())


def convert(be, kw):
    return {k: be.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


def split(be, kw):
    """Array options (converted to ``be``) and static ones (Python numbers)."""
    arrays = {k: be.asarray(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
    return arrays, {k: v for k, v in kw.items() if k not in arrays}


def run(be, fn, *arrays):
    """``fn(*arrays)``; JAX under one ``jax.jit`` (one compilation, not one per operation)."""
    return jax.jit(fn)(*arrays) if be.name == "jax" else fn(*arrays)


def grads(be, fn, *arrays, argnums):
    """Gradients of the scalar ``fn(*arrays)``; JAX's under one ``jax.jit``."""
    if be.name == "jax":
        out = jax.jit(jax.grad(fn, argnums))(*arrays)
        return [jax.tree_util.tree_map(be.to_numpy, g) for g in out]
    args = list(arrays)
    if be.name == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch([args[i] for i in argnums])
            out = fn(*args)
        got = tape.gradient(out, [args[i] for i in argnums])
        return [tf.nest.map_structure(lambda g: be.to_numpy(tf.convert_to_tensor(g)), g)
                for g in got]
    for i in argnums:  # an argument may be a dict of tensors (array options)
        args[i] = torch.utils._pytree.tree_map(lambda v: v.detach().clone().requires_grad_(True),
                                               args[i])
    leaves, specs = zip(*(torch.utils._pytree.tree_flatten(args[i]) for i in argnums))
    flat = torch.autograd.grad(fn(*args), [v for group in leaves for v in group])
    out, k = [], 0
    for group, spec in zip(leaves, specs):
        out.append(torch.utils._pytree.tree_unflatten(
            [be.to_numpy(g) for g in flat[k:k + len(group)]], spec))
        k += len(group)
    return out


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize("be,opt,reduction,chunk",
                         with_backends(["numpy", "torch", "jax"], CASES), indirect=["be"])
def test_value_equals_formula_and_naive(be, rng, opt, reduction, chunk):
    x, W, t, kw = make(rng, opts=OPTIONS[opt])
    expected = ref_loss(x, W, t, reduction=reduction, **kw)
    arrays, static = split(be, kw)
    args = (be.asarray(x), be.asarray(W), be.asarray(t), arrays)
    got = run(be, lambda x, W, t, a: xent.linear_cross_entropy(
        x, W, t, reduction=reduction, chunk_size=chunk, **a, **static), *args)
    assert be.to_numpy(got).shape == np.shape(expected)
    close(be.to_numpy(got), expected)
    if be.name != "numpy":
        slow = run(be, lambda x, W, t, a: naive(x, W, t, reduction=reduction, **a, **static),
                   *args)
        close(be.to_numpy(got), be.to_numpy(slow))


@pytest.mark.parametrize("gbe,opt,reduction,chunk", with_backends(["torch", "jax"], CASES),
                         indirect=["gbe"])
def test_gradients_equal_naive_and_peer(gbe, rng, opt, reduction, chunk):
    x, W, t, kw = make(rng, opts=OPTIONS[opt])
    arrays, static = split(gbe, kw)
    bias = arrays.pop("bias", None)
    cot = gbe.asarray(rng.normal(size=t.shape) if reduction == "none" else np.array(1.3))

    def fast(x, W, b, t, cot, a):
        out = xent.linear_cross_entropy(x, W, t, bias=b, reduction=reduction,
                                        chunk_size=chunk, **a, **static)
        return (out * cot).sum()

    def slow(x, W, b, t, cot, a):
        return (naive(x, W, t, bias=b, reduction=reduction, **a, **static) * cot).sum()

    argnums = (0, 1, 2) if bias is not None else (0, 1)
    args = (gbe.asarray(x), gbe.asarray(W), bias, gbe.asarray(t), cot, arrays)
    got = grads(gbe, fast, *args, argnums=argnums)
    want = grads(gbe, slow, *args, argnums=argnums)
    assert len(got) == len(argnums)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        close(g, w)
    peer_kw = {k: torch.tensor(np.array(gbe.to_numpy(v))) for k, v in arrays.items()}
    tx, tW = (torch.tensor(x, requires_grad=True), torch.tensor(W, requires_grad=True))
    tb = None if bias is None else torch.tensor(gbe.to_numpy(bias), requires_grad=True)
    peer = peer_torch(tx, tW, torch.as_tensor(t), bias=tb, reduction=reduction, **peer_kw,
                      **static)
    if peer is not None:
        (peer * torch.as_tensor(np.array(gbe.to_numpy(cot)))).sum().backward()
        for g, p in zip(got, (tx.grad, tW.grad, None if tb is None else tb.grad)):
            close(g, p.numpy())


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_3d_inputs_and_broadcast_sample_weight(be, rng, reduction):
    x, W, t, kw = make(rng, lead=(3, 7), D=11, V=257, opts=dict(bias=True, ignore_index=IGNORE,
                                                                label_smoothing=0.1))
    kw["sample_weight"] = rng.uniform(0.5, 1.5, size=(3, 1))
    expected = ref_loss(x, W, t, reduction=reduction, **kw)
    arrays, static = split(be, kw)
    args = (be.asarray(x), be.asarray(W), be.asarray(t), arrays)

    def fast(x, W, t, a):
        return xent.linear_cross_entropy(x, W, t, reduction=reduction, chunk_size=50, **a,
                                         **static)

    got = run(be, fast, *args)
    assert be.to_numpy(got).shape == ((3, 7) if reduction == "none" else ())
    close(be.to_numpy(got), expected)
    if be.has_grad:
        def slow(x, W, t, a):
            return be.sum(naive(x, W, t, reduction=reduction, **a, **static))

        argnums = (0, 1, 3)  # inputs, classifier, and the weights (bias, sample_weight)
        got = grads(be, lambda *a: be.sum(fast(*a)), *args, argnums=argnums)
        want = grads(be, slow, *args, argnums=argnums)
        got, want = got[:2] + list(got[2].values()), want[:2] + list(want[2].values())
        assert len(got) == 4  # d/d sample_weight flows through the reduction's autodiff
        for g, w in zip(got, want):
            assert g.shape == w.shape
            close(g, w)


def test_jax_jit_matches_eager(rng):
    x, W, t, kw = make(rng, opts=OPTIONS["everything"])
    arrays, static = split(ADAPTER_JAX, kw)

    def f(x, W, t, a):
        return xent.linear_cross_entropy(x, W, t, chunk_size=100, **a, **static)

    args = (jnp.asarray(x), jnp.asarray(W), jnp.asarray(t), arrays)
    eager_v, eager_g = jax.value_and_grad(f, (0, 1, 3))(*args)
    jit_v, jit_g = jax.jit(jax.value_and_grad(f, (0, 1, 3)))(*args)
    close(jit_v, ref_loss(x, W, t, **kw))
    close(jit_v, eager_v)
    for a, c in zip(jax.tree_util.tree_leaves(jit_g), jax.tree_util.tree_leaves(eager_g)):
        close(a, c)
    per_row = jax.jit(jax.vmap(lambda xi, ti: xent.linear_cross_entropy(
        xi[None], args[1], ti[None], reduction="sum", chunk_size=100)))(args[0], args[2])
    close(per_row, ref_loss(x, W, t, reduction="none"))


ADAPTER_JAX = type("J", (), {"asarray": staticmethod(jnp.asarray)})()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_no_less_accurate_than_naive(gbe, rng, dtype):
    """Both measured against float64: the fast path's error is at most the naive one's."""
    x, W, t, kw = make(rng, lead=(64,), D=32, V=500, opts=dict(bias=True), scale=3.0)
    lo = [gbe.asarray(a, dtype) for a in (x, W, kw["bias"])] + [gbe.asarray(t)]
    exact = [gbe.asarray(gbe.to_numpy(a).astype(np.float64)) for a in lo[:3]] + lo[3:]

    def fast(x, W, b, t, reduction="sum"):
        return xent.linear_cross_entropy(x, W, t, bias=b, reduction=reduction, chunk_size=64)

    def slow(x, W, b, t, reduction="sum"):
        return naive(x, W, t, bias=b, reduction=reduction)

    rows = [gbe.to_numpy(run(gbe, partial(f, reduction="none"), *a)).astype(np.float64)
            for f, a in ((fast, lo), (slow, lo), (slow, exact))]
    assert get_backend(gbe.name).dtype_name(run(gbe, fast, *lo).dtype) == dtype
    assert np.abs(rows[0] - rows[2]).max() <= np.abs(rows[1] - rows[2]).max()
    g_fast, g_naive, want = (grads(gbe, f, *a, argnums=(0, 1, 2))
                             for f, a in ((fast, lo), (slow, lo), (slow, exact)))
    for gf, gn, w in zip(g_fast, g_naive, want):
        e_fast = np.abs(gf.astype(np.float64) - w).max()
        e_naive = np.abs(gn.astype(np.float64) - w).max()
        assert e_fast <= e_naive, (e_fast, e_naive)


# -- memory: no [N, V] buffer, checked structurally ---------------------------

class Recorder(TorchDispatchMode):
    """Every aten operation run under it (forward and backward): its name and output sizes."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        if func.__name__.split(".")[0] in ("mm", "addmm", "addmm_", "bmm", "matmul"):
            self.products += 1
        return out


MEM_N, MEM_D, MEM_V, MEM_CHUNK = 64, 8, 2048, 64  # torch: blocks of 2 rows, 32 blocks


def _mem_problem(rng):
    x = torch.tensor(rng.normal(size=(MEM_N, MEM_D)), dtype=torch.float32, requires_grad=True)
    W = torch.tensor(rng.normal(size=(MEM_V, MEM_D)), dtype=torch.float32, requires_grad=True)
    return x, W, torch.as_tensor(rng.integers(0, MEM_V, MEM_N))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_never_allocates_the_logits(rng, reduction):
    x, W, t = _mem_problem(rng)
    with Recorder() as rec:
        loss = xent.linear_cross_entropy(x, W, t, chunk_size=MEM_CHUNK, reduction=reduction,
                                         label_smoothing=0.1, logit_softcap=5.0)
        loss.sum().backward()
    # the largest tensors are the classifier and its gradient ([V, D] = N * V / 8)
    assert rec.largest <= MEM_V * MEM_D < MEM_N * MEM_V / 4
    with Recorder() as control:  # the check can fail: the naive composition trips it
        F.cross_entropy(x @ W.T, t).backward()
    assert control.largest >= MEM_N * MEM_V


class NumpyProducts:
    """``numpy`` for the torch kernel, counting the products it runs through ``np.matmul``."""

    def __init__(self):
        self.products = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, *args, **kwargs):
        self.products += 1
        return np.matmul(*args, **kwargs)


def count_products(monkeypatch, f):
    """A ``Recorder`` of ``f()`` whose ``products`` include those run by NumPy's BLAS."""
    from xent._kernels import linear_torch

    npc = NumpyProducts()
    with monkeypatch.context() as m:
        m.setattr(linear_torch, "np", npc)
        with Recorder() as rec:
            f()
    rec.numpy_products = npc.products
    rec.products += npc.products
    return rec


@pytest.mark.parametrize("numpy_matmul", [True, False])
def test_torch_products_per_step_and_none_without_grad(rng, monkeypatch, numpy_matmul):
    from xent._kernels import linear_torch

    monkeypatch.setattr(linear_torch, "NUMPY_MATMUL", numpy_matmul)
    monkeypatch.setattr(linear_torch, "_cores", torch.get_num_threads)
    x, W, t = _mem_problem(rng)
    nc = MEM_V // MEM_CHUNK

    def products(f):
        rec = count_products(monkeypatch, f)
        # the dispatcher does not see NumPy's products; with them on, the large ones go there
        assert (rec.numpy_products > 0) == numpy_matmul
        return rec.products

    # forward x W_c^T per chunk; backward dz W_c and dz^T x per chunk, and x W_c^T again
    # for every chunk but the last (kept from the forward pass)
    assert products(lambda: xent.linear_cross_entropy(x, W, t, chunk_size=MEM_CHUNK)
                    .backward()) == nc + 3 * nc - 1
    # one chunk: the naive three products
    assert products(lambda: xent.linear_cross_entropy(x, W, t, chunk_size=MEM_V)
                    .backward()) == 3
    with torch.no_grad():
        assert products(lambda: xent.linear_cross_entropy(x, W, t, chunk_size=MEM_CHUNK)) == nc
    assert products(lambda: xent.linear_cross_entropy(x.detach(), W.detach(), t,
                                                      chunk_size=MEM_CHUNK)) == nc


def test_jax_compiled_step_has_no_logits_buffer(rng):
    x = jnp.asarray(rng.normal(size=(MEM_N, MEM_D)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(MEM_V, MEM_D)), jnp.float32)
    t = jnp.asarray(rng.integers(0, MEM_V, MEM_N))
    logits_shape = re.compile(rf"\[{MEM_N},{MEM_V}\]|\[{MEM_V},{MEM_N}\]")
    logits_bytes = MEM_N * MEM_V * 4

    def compiled(f):
        return jax.jit(jax.value_and_grad(f, (0, 1))).lower(x, W, t).compile()

    fast = compiled(lambda x, W, t: xent.linear_cross_entropy(x, W, t, chunk_size=MEM_CHUNK,
                                                              label_smoothing=0.1))
    assert not logits_shape.search(fast.as_text())
    assert fast.memory_analysis().temp_size_in_bytes < logits_bytes / 4
    slow = compiled(lambda x, W, t: naive(x, W, t, label_smoothing=0.1))
    assert logits_shape.search(slow.as_text())  # the check can fail
    assert slow.memory_analysis().temp_size_in_bytes >= logits_bytes


# -- numerics -------------------------------------------------------------------

@pytest.mark.parametrize("be,reduction", [(b, r) for b, _, r in with_backends(
    ["numpy", "torch", "jax"], [(None, r) for r in REDUCTIONS], ("none", "mean"))],
    indirect=["be"])
def test_ignored_and_zero_weight_rows_with_nan_contribute_nothing(be, rng, reduction):
    x, W, t, kw = make(rng, lead=(12,), D=5, V=97, opts=dict(bias=True, label_smoothing=0.1))
    t[[1, 4]] = IGNORE
    kw.update(ignore_index=IGNORE, sample_weight=np.ones(12), z_loss=0.01)
    kw["sample_weight"][[2, 7]] = 0.0
    bad = [1, 2, 4, 7]
    xn = x.copy()
    xn[bad] = np.nan
    arrays, static = split(be, kw)

    def fast(x, W, t, a):
        return xent.linear_cross_entropy(x, W, t, reduction=reduction, chunk_size=20, **a,
                                         **static).sum()

    def slow(x, W, t, a):
        return naive(x, W, t, reduction=reduction, **a, **static).sum()

    args = (be.asarray(xn), be.asarray(W), be.asarray(t), arrays)
    close(be.to_numpy(run(be, fast, *args)), ref_loss(x, W, t, reduction=reduction, **kw).sum())
    if be.has_grad:
        got = grads(be, fast, *args, argnums=(0, 1, 3))
        clean = grads(be, slow, be.asarray(x), *args[1:], argnums=(0, 1, 3))
        assert np.all(got[0][bad] == 0)
        for g, c in zip(got[:2] + [got[2]["bias"]], clean[:2] + [clean[2]["bias"]]):
            close(g, c)


@pytest.mark.parametrize("gbe,reduction", [(b, r) for b, _, r in with_backends(
    ["torch", "jax"], [(None, r) for r in REDUCTIONS], ("mean",))], indirect=["gbe"])
def test_all_ignored_batch_is_zero_with_zero_grads(gbe, rng, reduction):
    x, W, t, kw = make(rng, lead=(6,), D=5, V=31)
    t[:] = IGNORE

    def f(x, W, t):
        return xent.linear_cross_entropy(x, W, t, ignore_index=IGNORE, reduction=reduction).sum()

    args = (gbe.asarray(x), gbe.asarray(W), gbe.asarray(t))
    assert float(run(gbe, f, *args)) == 0.0
    for g in grads(gbe, f, *args, argnums=(0, 1)):
        assert np.all(g == 0)


def test_empty_batch(be, rng):
    x, W, t, _ = make(rng, lead=(0,), D=5, V=31)
    args = (be.asarray(x), be.asarray(W), be.asarray(t.astype(np.int64)))
    assert float(xent.linear_cross_entropy(*args)) == 0.0
    assert be.to_numpy(xent.linear_cross_entropy(*args, reduction="none")).shape == (0,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_logits(be, rng, dtype):
    x, W, t, kw = make(rng, lead=(9,), D=4, V=50, opts=dict(label_smoothing=0.1))
    x = x * 3e3  # logits of order +-1e4
    got = xent.linear_cross_entropy(be.asarray(x, dtype), be.asarray(W, dtype), be.asarray(t),
                                    reduction="none", chunk_size=7, **kw)
    x32, W32 = (np.asarray(a, dtype).astype(np.float64) for a in (x, W))
    close(be.to_numpy(got), ref_loss(x32, W32, t, reduction="none", **kw),
          rtol=1e-10 if dtype == "float64" else 1e-5)


def test_masked_classes_by_minus_inf_bias(be, rng):
    x, W, t, _ = make(rng, lead=(10,), D=4, V=40)
    bias = rng.normal(size=40)
    bias[::3] = -np.inf
    t = np.where(t % 3 == 0, t + 1, t)
    cw = np.where(np.isinf(bias), 0.0, 1.0)
    kw = dict(bias=bias, class_weight=cw, label_smoothing=0.2, reduction="none")
    expected = ref_loss(x, W, t, **kw)
    assert np.all(np.isfinite(expected))
    got = xent.linear_cross_entropy(be.asarray(x), be.asarray(W), be.asarray(t), chunk_size=9,
                                    **convert(be, kw))
    close(be.to_numpy(got), expected)


def test_torch_backward_twice_with_retain_graph(rng):
    x, W, t, kw = make(rng, lead=(5,), D=3, V=11, opts=dict(logit_softcap=2.0))
    x, W = (torch.tensor(a, requires_grad=True) for a in (x, W))
    loss = xent.linear_cross_entropy(x, W, torch.as_tensor(t), chunk_size=4, **kw)
    first = torch.autograd.grad(loss, (x, W), retain_graph=True)
    second = torch.autograd.grad(loss, (x, W))  # the kept last chunk was consumed: recomputed
    for a, b in zip(first, second):
        close(a, b)


# -- validation -------------------------------------------------------------------

def test_bad_shapes_are_value_errors(be, rng):
    x, W, t, _ = make(rng, lead=(4, 3), D=5, V=7)
    X, Wb, T = be.asarray(x), be.asarray(W), be.asarray(t)
    lce = xent.linear_cross_entropy
    with pytest.raises(ValueError, match=r"classifier must have shape \[V, D\] = \[V, 5\].*\(7, 6\)"):
        lce(X, be.asarray(rng.normal(size=(7, 6))), T)
    with pytest.raises(ValueError, match=r"classifier must have shape .*got \(35,\)"):
        lce(X, be.asarray(rng.normal(size=35)), T)
    with pytest.raises(ValueError, match=r"labels must have shape \(4, 3\), got \(12,\)"):
        lce(X, Wb, be.asarray(t.reshape(-1)))
    with pytest.raises(ValueError, match=r"labels must have shape \(4, 3\), got \(4, 3, 1\)"):
        lce(X, Wb, be.asarray(t[..., None]))
    with pytest.raises(ValueError, match=r"bias must have shape \(7,\).*got \(1, 7\)"):
        lce(X, Wb, T, bias=be.asarray(np.zeros((1, 7))))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 7\).*got 7"):
        lce(X, Wb, be.asarray(np.full((4, 3), 7)))
    with pytest.raises(ValueError, match="sample_weight of shape \\(4, 2\\)"):
        lce(X, Wb, T, sample_weight=be.asarray(np.ones((4, 2))))
    with pytest.raises(ValueError, match="class_weight must have shape \\(7,\\)"):
        lce(X, Wb, T, class_weight=be.asarray(np.ones(6)))
    with pytest.raises(ValueError, match="at least one class"):
        lce(X, be.asarray(np.zeros((0, 5))), T)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        lce(X, Wb, T, chunk_size=0)
    with pytest.raises(ValueError, match=r"logit_softcap must be in \(0"):
        lce(X, Wb, T, logit_softcap=0.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        lce(X, Wb, T, reduction="avg")


def test_bad_types_are_type_errors(be, rng):
    x, W, t, _ = make(rng, lead=(4,), D=5, V=7)
    lce = xent.linear_cross_entropy
    with pytest.raises(TypeError, match="inputs must be a floating-point array"):
        lce(be.asarray(x.astype(np.int64)), be.asarray(W), be.asarray(t))
    with pytest.raises(TypeError, match="labels must hold integer class indices"):
        lce(be.asarray(x), be.asarray(W), be.asarray(t.astype(np.float64)))
    with pytest.raises(TypeError, match="classifier must have the inputs' dtype float64, got float32"):
        lce(be.asarray(x), be.asarray(W, "float32"), be.asarray(t))
    other = jnp.asarray(W) if be.name != "jax" else torch.as_tensor(W)
    with pytest.raises(TypeError, match="classifier is a .* but inputs is a"):
        lce(be.asarray(x), other, be.asarray(t))
    if be.name != "numpy":  # NumPy arrays are converted to the inputs' library and dtype
        got = lce(be.asarray(x, "float32"), W, t)
        assert get_backend(be.name).dtype_name(got.dtype) == "float32"


def test_nan_sample_weight_on_ignored_row_stays_out(be, rng):
    """Regression: the ignored rows' sample weight was multiplied by 0, so a NaN
    weight there (padding) made the whole loss NaN; it is now masked out."""
    x, W, t, kw = make(rng, lead=(8,), D=5, V=31)
    t[[2, 5]] = IGNORE
    sw = np.ones(8)
    sw[[2, 5]] = np.nan
    got = xent.linear_cross_entropy(be.asarray(x), be.asarray(W), be.asarray(t),
                                    ignore_index=IGNORE, sample_weight=be.asarray(sw),
                                    reduction="sum")
    keep = t != IGNORE
    want = ref_loss(x[keep], W, t[keep], reduction="sum")
    close(be.to_numpy(got), want)


# -- token-blocked layout (three products per step) and the memory budget -----------------

@pytest.mark.parametrize("opt", [{}, {"label_smoothing": 0.2, "z_loss": 1e-3, "logit_softcap": 4.0,
                                     "class_weight": True, "bias": True, "sample_weight": True}])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "sum_by_nonzero_weights"])
@pytest.mark.parametrize("chunk", [130, 200])  # blocks of 7 / 11 rows of N = 37: the last clamped
def test_torch_token_blocks_equal_naive(rng, monkeypatch, opt, reduction, chunk):
    from xent._kernels import linear_torch

    monkeypatch.setattr(linear_torch, "MIN_BLOCK_ROWS", 1)
    n, d, v = 37, 6, 700
    x = torch.tensor(rng.normal(size=(n, d)), requires_grad=True)
    W = torch.tensor(rng.normal(size=(v, d)), requires_grad=True)
    t = torch.as_tensor(rng.integers(0, v, n))
    kw = {}
    b = None
    if opt.get("bias"):
        b = torch.tensor(rng.normal(size=v), requires_grad=True)
        kw["bias"] = b
    if opt.get("class_weight"):
        kw["class_weight"] = torch.tensor(rng.uniform(0.5, 2.0, v))
    sw = None
    if opt.get("sample_weight"):
        sw = torch.tensor(rng.uniform(0.0, 2.0, n))
        sw[3] = 0.0
        kw["sample_weight"] = sw
    for k in ("label_smoothing", "z_loss", "logit_softcap"):
        if k in opt:
            kw[k] = opt[k]
    from xent._kernels.linear_rows import Opts

    assert linear_torch.block_rows(n, Opts(v, chunk, 0.0, 0.0, None), torch.float64) > 0
    got = xent.linear_cross_entropy(x, W, t, reduction=reduction, chunk_size=chunk, **kw)
    z = x @ W.T + (0 if b is None else b)
    if "logit_softcap" in kw:
        z = kw["logit_softcap"] * torch.tanh(z / kw["logit_softcap"])
    want = xent.sparse_softmax_cross_entropy(z, t, reduction=reduction, **kw_dense(kw))
    cot = torch.tensor(rng.normal(size=n)) if reduction == "none" else torch.tensor(1.7)
    leaves = [x, W] + ([b] if b is not None else [])
    g_got = torch.autograd.grad(got, leaves, cot)
    g_want = torch.autograd.grad(want, leaves, cot)
    np.testing.assert_allclose(got.detach(), want.detach(), rtol=1e-10, atol=1e-12)
    for a, e in zip(g_got, g_want):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)


def kw_dense(kw):
    return {k: v for k, v in kw.items() if k not in ("bias", "logit_softcap")}


def test_torch_token_blocks_three_products_per_block(rng, monkeypatch):
    from xent._kernels import linear_torch

    x, W, t = _mem_problem(rng)
    # a budget of the whole logits: the block takes at most 3/4 of it (BLOCK_SHARE, the rest
    # is for the libraries' work buffers), 48 rows, so 2 even blocks of 32
    chunk = MEM_V
    monkeypatch.setattr(linear_torch, "MIN_BLOCK_ROWS", 16)
    rec = count_products(
        monkeypatch, lambda: xent.linear_cross_entropy(x, W, t, chunk_size=chunk).backward())
    assert rec.products == 3 * 2
    # the block, within its share of the budget (W and its gradient are smaller)
    assert MEM_V * MEM_D < rec.largest <= 0.75 * MEM_N * chunk
    # reduction "none" with a classifier gradient: g is arbitrary, so the vocabulary layout
    rec = count_products(monkeypatch, lambda: xent.linear_cross_entropy(
        x, W, t, chunk_size=chunk, reduction="none").sum().backward())
    nc = -(-MEM_V // chunk)
    assert rec.products == nc + 3 * nc - 1


def test_torch_token_blocks_backward_twice_with_retain_graph(rng):
    n, d, v = 16, 4, 50
    x = torch.tensor(rng.normal(size=(n, d)), requires_grad=True)
    W = torch.tensor(rng.normal(size=(v, d)), requires_grad=True)
    t = torch.as_tensor(rng.integers(0, v, n))
    loss = xent.linear_cross_entropy(x, W, t)  # default budget: one block of all rows
    first = torch.autograd.grad(loss, (x, W), retain_graph=True)
    second = torch.autograd.grad(loss, (x, W))  # the formed gradients were consumed: recomputed
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_default_budget_is_a_tenth_of_the_logits():
    from xent._kernels.linear_rows import default_chunk

    n, v = 4096, 65536
    assert n * default_chunk(n, v, None) <= 0.1 * n * v
    assert n * default_chunk(n, v, None) >= 0.09 * n * v
    assert default_chunk(8, 1000, None) == 1000  # small problems: 4M logits at least


@pytest.mark.parametrize("reduction", ["mean", "sum_by_nonzero_weights"])
@pytest.mark.parametrize("opt", [{}, {"label_smoothing": 0.2, "z_loss": 1e-3, "logit_softcap": 4.0,
                                     "class_weight": True, "bias": True}])
def test_jax_token_blocks_equal_naive(rng, monkeypatch, opt, reduction):
    from xent._kernels import linear_jax
    from xent._kernels.linear_rows import Opts

    monkeypatch.setattr(linear_jax, "MIN_BLOCK_ROWS", 1)
    n, d, v, chunk = 37, 3, 300, 200  # 37 * 200 // 900 = 8 rows: 5 blocks, the last clamped
    assert 0 < linear_jax.block_rows(n, d, Opts(v, chunk, 0.0, 0.0, None), jnp.float64) < n
    x = rng.normal(size=(n, d))
    W = rng.normal(size=(v, d))
    b = rng.normal(size=v) if opt.get("bias") else None
    t = jnp.asarray(rng.integers(0, v, n))
    sw = jnp.asarray(rng.uniform(0.0, 2.0, n)).at[3].set(0.0)
    kw = {k: opt[k] for k in ("label_smoothing", "z_loss", "logit_softcap") if k in opt}
    if opt.get("class_weight"):
        kw["class_weight"] = jnp.asarray(rng.uniform(0.5, 2.0, v))

    def fast(x, W, b):
        return xent.linear_cross_entropy(x, W, t, bias=b, chunk_size=chunk, reduction=reduction,
                                         sample_weight=sw, **kw)

    def slow(x, W, b):
        z = x @ W.T + (0 if b is None else b)
        if "logit_softcap" in kw:
            z = kw["logit_softcap"] * jnp.tanh(z / kw["logit_softcap"])
        return xent.sparse_softmax_cross_entropy(z, t, reduction=reduction, sample_weight=sw,
                                                 **kw_dense(kw))

    if True:  # float64: conftest enables x64
        args = tuple(None if a is None else jnp.asarray(a, jnp.float64) for a in (x, W, b))
        argn = (0, 1) if b is None else (0, 1, 2)
        vg, gg = jax.value_and_grad(fast, argn)(*args)
        vw, gw = jax.value_and_grad(slow, argn)(*args)
        np.testing.assert_allclose(vg, vw, rtol=1e-10)
        for a, e in zip(gg, gw):
            np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias,d,B,cols", [(True, 19, 8, 22), (False, 21, 13, 28)])
def test_jax_token_blocks_in_vocabulary_slices(rng, monkeypatch, bias, d, B, cols):
    from xent._kernels import linear_jax
    from xent._kernels.linear_rows import Opts

    monkeypatch.setattr(linear_jax, "MIN_BLOCK_ROWS", 1)
    # the blocks' dl/dz is formed in vocabulary slices, a last narrower one taking the
    # remainder (13 of 22 columns and a last of 14 with a bias, 10 of 28 and a last of 20
    # without), and the last block is clamped to end at N (8 / 13 rows of 37)
    n, v, chunk = 37, 300, 200
    # with a bias or not, with sample weights (below)
    assert linear_jax.block_rows(n, d, Opts(v, chunk, 0.0, 0.0, None), jnp.float64, bias, True) == B
    assert linear_jax.slice_cols(B, d, v) == cols
    assert v % cols != 0 and n % B != 0
    x = jnp.asarray(rng.normal(size=(n, d)))
    W = jnp.asarray(rng.normal(size=(v, d)) / 4)
    b = jnp.asarray(rng.normal(size=v)) if bias else None
    t = jnp.asarray(rng.integers(0, v, n))
    sw = jnp.asarray(rng.uniform(0.0, 2.0, n)).at[5].set(0.0)

    def fast(x, W, b):
        return xent.linear_cross_entropy(x, W, t, bias=b, chunk_size=chunk, label_smoothing=0.1,
                                         sample_weight=sw)

    def slow(x, W, b):
        z = x @ W.T + (0 if b is None else b)
        return xent.sparse_softmax_cross_entropy(z, t, label_smoothing=0.1, sample_weight=sw)

    argn = (0, 1, 2) if bias else (0, 1)
    vg, gg = jax.jit(jax.value_and_grad(fast, argn))(x, W, b)
    vw, gw = jax.value_and_grad(slow, argn)(x, W, b)
    np.testing.assert_allclose(vg, vw, rtol=1e-10)
    for a, e in zip(gg, gw):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)


def test_jax_token_blocks_memory_within_budget(rng, monkeypatch):
    from xent._kernels import linear_jax

    monkeypatch.setattr(linear_jax, "MIN_BLOCK_ROWS", 1)
    n, d, v = 512, 16, 4096
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(v, d)), jnp.float32)
    t = jnp.asarray(rng.integers(0, v, n))
    chunk = v // 8  # a budget of 1/8 of the logits

    def temp(f):
        c = jax.jit(jax.value_and_grad(f, (0, 1))).lower(x, W, t).compile()
        return c.memory_analysis().temp_size_in_bytes

    got = temp(lambda x, W, t: xent.linear_cross_entropy(x, W, t, chunk_size=chunk))
    # the budget, plus the formed gradients held until the backward pass
    assert got <= 1.1 * (n * chunk + (v + n) * d) * 4
    assert temp(lambda x, W, t: naive(x, W, t)) >= n * v * 4  # the check can fail


def test_jax_token_blocks_masked_classes_by_minus_inf_bias(rng, monkeypatch):
    from xent._kernels import linear_jax
    from xent._kernels.linear_rows import Opts

    monkeypatch.setattr(linear_jax, "MIN_BLOCK_ROWS", 1)
    n, d, v, chunk = 37, 5, 300, 200
    assert 0 < linear_jax.block_rows(n, d, Opts(v, chunk, 0.2, 0.0, None), jnp.float64, True) < n
    x = rng.normal(size=(n, d))
    W = rng.normal(size=(v, d))
    bias = rng.normal(size=v)
    bias[::3] = -np.inf
    t = rng.integers(0, v, n)
    t = np.where(t % 3 == 0, t + 1, t)
    cw = np.where(np.isinf(bias), 0.0, 1.0)
    kw = dict(class_weight=jnp.asarray(cw), label_smoothing=0.2)
    want = ref_loss(x, W, t, bias=bias, class_weight=cw, label_smoothing=0.2, reduction="none")
    assert np.all(np.isfinite(want))
    b = jnp.asarray(bias)

    def fast(x, W):  # mean: the token-blocked layout
        return xent.linear_cross_entropy(x, W, jnp.asarray(t), bias=b, chunk_size=chunk, **kw)

    def slow(x, W):  # per row, then the mean: the vocabulary layout
        return jnp.mean(xent.linear_cross_entropy(x, W, jnp.asarray(t), bias=b, chunk_size=chunk,
                                                  reduction="none", **kw))

    args = (jnp.asarray(x), jnp.asarray(W))
    fused, calls = linear_jax._fused, []
    monkeypatch.setattr(linear_jax, "_fused", lambda *a: calls.append(1) or fused(*a))
    vg, gg = jax.jit(jax.value_and_grad(fast, (0, 1)))(*args)
    assert calls  # the token-blocked layout ran
    vw, gw = jax.value_and_grad(slow, (0, 1))(*args)
    assert len(calls) == 1
    np.testing.assert_allclose(vg, np.mean(want), rtol=1e-10)
    np.testing.assert_allclose(vw, np.mean(want), rtol=1e-10)
    for a, e in zip(gg, gw):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(gg[1])[::3], 0.0)  # masked classes: no gradient


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk", [130, 64])  # token blocks of 7 rows; vocabulary chunks
def test_torch_numpy_products_equal_torch_mm(rng, monkeypatch, dtype, chunk):
    """The CPU products through NumPy's BLAS give what ``torch.mm`` gives (the path
    under ``torch.compile`` and on other devices), in both layouts."""
    from xent._kernels import linear_torch

    monkeypatch.setattr(linear_torch, "MIN_BLOCK_ROWS", 4)
    monkeypatch.setattr(linear_torch, "_cores", torch.get_num_threads)
    n, d, v = 37, 6, 700
    x = torch.tensor(rng.normal(size=(n, d)), dtype=dtype, requires_grad=True)
    W = torch.tensor(rng.normal(size=(v, d)), dtype=dtype, requires_grad=True)
    b = torch.tensor(rng.normal(size=v), dtype=dtype, requires_grad=True)
    t = torch.as_tensor(rng.integers(0, v, n))
    kw = dict(bias=b, chunk_size=chunk, label_smoothing=0.1, logit_softcap=4.0)
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(linear_torch, "NUMPY_MATMUL", flag)
        rec = count_products(monkeypatch, lambda: out.__setitem__(flag, (
            lambda loss: (loss.detach(), *torch.autograd.grad(loss, (x, W, b))))(
                xent.linear_cross_entropy(x, W, t, **kw))))
        assert (rec.numpy_products > 0) == flag
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for a, e in zip(out[True], out[False]):
        np.testing.assert_allclose(a, e, **tol)


def test_torch_numpy_products_only_with_torch_threads_on_every_core(rng, monkeypatch):
    """NumPy's BLAS has its own thread pool (one thread per core): after
    ``torch.set_num_threads`` with fewer threads than cores the products stay with torch."""
    from xent._kernels import linear_torch

    x, W, t = _mem_problem(rng)
    for cores, used in ((torch.get_num_threads(), True), (torch.get_num_threads() + 1, False)):
        monkeypatch.setattr(linear_torch, "_cores", lambda cores=cores: cores)
        rec = count_products(monkeypatch, lambda: xent.linear_cross_entropy(
            x, W, t, chunk_size=MEM_CHUNK).backward())
        assert (rec.numpy_products > 0) == used
