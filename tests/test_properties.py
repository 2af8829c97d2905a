"""Property tests (hypothesis): one-hot vs sparse equality, extreme inputs, identities.

Shapes come from a short fixed list; the values, options and masks are what
hypothesis explores. The properties are checked on NumPy and torch (the
``be`` / ``gbe`` fixtures narrowed below): on JAX every new shape/option
combination costs fresh XLA compiles, and the same identities are checked
there deterministically, for every option (tests/test_sparse_softmax.py::test_equals_dense_with_one_hot_labels,
tests/test_numerics.py for -inf masks and +-1e4 logits).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xent
from tests._oracle import on_backend, sigmoid_ref, softmax_ref, sparse_ref

# NumPy and torch only (see the module docstring): the conftest fixtures, narrowed.
ON_NUMPY_TORCH = pytest.mark.parametrize("be", ["numpy", "torch"], indirect=True)
ON_TORCH = pytest.mark.parametrize("gbe", ["torch"], indirect=True)

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
SHAPES = [(0, 5), (1, 1), (4, 5), (2, 4, 5)]
REDUCTIONS = st.sampled_from(["none", "sum", "mean", "sum_over_batch_size",
                              "sum_by_nonzero_weights"])


@st.composite
def sparse_problem(draw, extreme=False):
    shape = draw(st.sampled_from(SHAPES))
    axis = draw(st.sampled_from([-1, 0])) if len(shape) == 3 else -1
    C = shape[axis]
    elem = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
    n = int(np.prod(shape))
    scale = 1e4 if extreme else 5.0
    z = np.array(draw(st.lists(st.floats(-scale, scale), min_size=n, max_size=n)),
                 dtype=np.float64).reshape(shape)
    t = np.array(draw(st.lists(st.integers(0, C - 1), min_size=int(np.prod(elem)),
                               max_size=int(np.prod(elem)))), dtype=np.int64).reshape(elem)
    opts = {}
    if draw(st.booleans()):
        opts["class_weight"] = np.array(draw(st.lists(st.floats(0.0, 3.0), min_size=C,
                                                      max_size=C)))
    opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 1.0]))
    opts["focal_gamma"] = draw(st.sampled_from([0.0, 0.5, 2.0]))
    opts["z_loss"] = draw(st.sampled_from([0.0, 1e-4]))
    if draw(st.booleans()):
        opts["sample_weight"] = np.array(draw(st.lists(
            st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=int(np.prod(elem)),
            max_size=int(np.prod(elem))))).reshape(elem)
    return z, t, axis, opts


@ON_NUMPY_TORCH
@SETTINGS
@given(problem=sparse_problem(), reduction=REDUCTIONS)
def test_one_hot_equals_sparse_value(be, problem, reduction):
    z, t, axis, opts = problem
    C = z.shape[axis]
    y = np.moveaxis(np.eye(C)[t], -1, axis)
    kw = dict(axis=axis, reduction=reduction, **on_backend(be, opts))
    sparse = xent.sparse_softmax_cross_entropy(be.asarray(z), be.asarray(t), **kw)
    dense = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), **kw)
    np.testing.assert_allclose(be.to_numpy(sparse), be.to_numpy(dense), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(be.to_numpy(sparse), sparse_ref(z, t, axis=axis,
                                                               reduction=reduction, **opts),
                               rtol=1e-9, atol=1e-12)


@ON_TORCH
@SETTINGS
@given(problem=sparse_problem(), reduction=REDUCTIONS.filter(lambda r: r != "none"))
def test_one_hot_equals_sparse_gradient(gbe, problem, reduction):
    z, t, axis, opts = problem
    C = z.shape[axis]
    y = np.moveaxis(np.eye(C)[t], -1, axis)
    kw = dict(axis=axis, reduction=reduction, **on_backend(gbe, opts))
    gs, = gbe.grad(lambda a: xent.sparse_softmax_cross_entropy(a, gbe.asarray(t), **kw),
                   gbe.asarray(z))
    gd, = gbe.grad(lambda a: xent.softmax_cross_entropy(a, gbe.asarray(y), **kw),
                   gbe.asarray(z))
    np.testing.assert_allclose(gs, gd, rtol=1e-10, atol=1e-13)


@ON_TORCH
@SETTINGS
@given(problem=sparse_problem(extreme=True), data=st.data())
def test_extreme_logits_and_masks_are_finite_and_exact(gbe, problem, data):
    """Logits up to +-1e4 and -inf on classes whose label is 0: finite loss and
    gradients, equal to the float64 formula."""
    z, t, axis, opts = problem
    opts = {**opts, "label_smoothing": 0.0}  # smoothing puts mass on masked classes
    C = z.shape[axis]
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=z.size, max_size=z.size)),
                    bool).reshape(z.shape)
    mask &= np.moveaxis(np.eye(C, dtype=bool)[t], -1, axis) == 0
    z = np.where(mask, -np.inf, z)
    fn = lambda a: xent.sparse_softmax_cross_entropy(  # noqa: E731
        a, gbe.asarray(t), axis=axis, reduction="sum", **on_backend(gbe, opts))
    value = gbe.to_numpy(fn(gbe.asarray(z)))
    g, = gbe.grad(fn, gbe.asarray(z))
    assert np.isfinite(value) and np.isfinite(g).all()
    assert (g[mask] == 0).all()
    want = sparse_ref(z, t, axis=axis, reduction="sum", **opts)
    np.testing.assert_allclose(value, want, rtol=1e-9, atol=1e-9)


@ON_NUMPY_TORCH
@SETTINGS
@given(z=st.lists(st.floats(-1e4, 1e4), min_size=6, max_size=6),
       # k / 1024: 1 - y is exact, so the flip below is an exact identity
       y=st.lists(st.integers(0, 1024).map(lambda k: k / 1024), min_size=6, max_size=6),
       gamma=st.sampled_from([0.0, 0.5, 2.0]), reduction=REDUCTIONS)
def test_sigmoid_is_two_class_softmax_and_symmetric(be, z, y, gamma, reduction):
    z, y = np.array(z), np.array(y)
    got = xent.sigmoid_cross_entropy(be.asarray(z), be.asarray(y), focal_gamma=gamma,
                                     reduction=reduction)
    flipped = xent.sigmoid_cross_entropy(be.asarray(-z), be.asarray(1 - y), focal_gamma=gamma,
                                         reduction=reduction)
    np.testing.assert_allclose(be.to_numpy(got), be.to_numpy(flipped), rtol=1e-12, atol=1e-300)
    if gamma == 0.0:
        two = xent.softmax_cross_entropy(be.asarray(np.stack([np.zeros(6), z], -1)),
                                         be.asarray(np.stack([1 - y, y], -1)),
                                         reduction=reduction)
        np.testing.assert_allclose(be.to_numpy(got), be.to_numpy(two), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(be.to_numpy(got), sigmoid_ref(z, y, focal_gamma=gamma,
                                                             reduction=reduction),
                               rtol=1e-9, atol=1e-12)


@ON_NUMPY_TORCH
@SETTINGS
@given(problem=sparse_problem(), shift=st.floats(-1e3, 1e3))
def test_softmax_is_shift_invariant(be, problem, shift):
    z, t, axis, opts = problem
    opts = {**opts, "z_loss": 0.0}
    C = z.shape[axis]
    y = np.moveaxis(np.eye(C)[t], -1, axis)
    a = xent.softmax_cross_entropy(be.asarray(z), be.asarray(y), axis=axis, reduction="none",
                                   **on_backend(be, opts))
    b = xent.softmax_cross_entropy(be.asarray(z + shift), be.asarray(y), axis=axis,
                                   reduction="none", **on_backend(be, opts))
    np.testing.assert_allclose(be.to_numpy(a), be.to_numpy(b), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(be.to_numpy(a), softmax_ref(z, y, axis=axis, reduction="none",
                                                           **opts), rtol=1e-9, atol=1e-12)
