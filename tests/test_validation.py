"""Bad input: clear TypeError / ValueError naming the argument, what was expected, what came."""

from __future__ import annotations

import numpy as np
import pytest

import xent

Z = np.random.default_rng(0).normal(size=(4, 5))
T = np.array([0, 1, 2, 3])
Y = np.eye(5)[T]
P = np.full((4, 5), 0.5)
YS = np.zeros((4, 5))

# (function, logits, labels) for every loss, numpy arrays
LOSSES = {
    "softmax_cross_entropy": (xent.softmax_cross_entropy, Z, Y),
    "sparse_softmax_cross_entropy": (xent.sparse_softmax_cross_entropy, Z, T),
    "sigmoid_cross_entropy": (xent.sigmoid_cross_entropy, Z, YS),
    "log_loss": (xent.log_loss, P, YS),
}


def _args(be, name):
    fn, a, b = LOSSES[name]
    return fn, be.asarray(a), be.asarray(b)


@pytest.mark.parametrize("name", list(LOSSES))
def test_integer_logits_are_a_type_error(be, name):
    fn, a, b = _args(be, name)
    arg = "probabilities" if name == "log_loss" else "logits"
    with pytest.raises(TypeError, match=rf"{arg} must be a floating-point array .*got dtype int64"):
        fn(be.asarray(np.ones((4, 5), dtype=np.int64)), b)


def test_non_array_logits_are_a_type_error():
    with pytest.raises(TypeError, match="logits must be a numpy.ndarray, torch.Tensor, "
                                        "jax.Array or tf.Tensor, got a str"):
        xent.sparse_softmax_cross_entropy("abc", T)
    with pytest.raises(TypeError, match="labels must be an array, got a NoneType"):
        xent.sigmoid_cross_entropy(Z, None)


@pytest.mark.parametrize("name", list(LOSSES))
def test_mixed_libraries_are_a_type_error_naming_both(name):
    import jax.numpy as jnp
    import torch

    fn, a, b = LOSSES[name]
    first = "probabilities" if name == "log_loss" else "logits"
    combos = [
        (a, torch.as_tensor(b), "labels is a torch.Tensor but .* is a numpy.ndarray"),
        (jnp.asarray(a), torch.as_tensor(b), "labels is a torch.Tensor but .* is a jax.Array"),
        (torch.as_tensor(a), jnp.asarray(b), "labels is a jax.Array but .* is a torch.Tensor"),
        (a, jnp.asarray(b), "labels is a jax.Array but .* is a numpy.ndarray"),
    ]
    for logits, labels, msg in combos:
        with pytest.raises(TypeError, match=msg.replace(".*", first)):
            fn(logits, labels)
    with pytest.raises(TypeError, match=f"sample_weight is a jax.Array but {first} is a torch"):
        fn(torch.as_tensor(a), torch.as_tensor(b), sample_weight=jnp.ones(4 if "softmax" in name
                                                                           else (4, 5)))


def test_mixed_library_weights_are_a_type_error():
    import jax.numpy as jnp
    import torch

    with pytest.raises(TypeError, match="class_weight is a torch.Tensor but logits is a jax.Array"):
        xent.sparse_softmax_cross_entropy(jnp.asarray(Z), T, class_weight=torch.ones(5))
    with pytest.raises(TypeError, match="pos_weight is a jax.Array but logits is a torch.Tensor"):
        xent.sigmoid_cross_entropy(torch.as_tensor(Z), YS, pos_weight=jnp.ones(5))


def test_column_labels_against_vector_logits_are_an_error_not_a_broadcast(be):
    z = be.asarray(np.zeros(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\), got \(4, 1\) "
                                         r"\(a trailing axis of size 1: squeeze it"):
        xent.sigmoid_cross_entropy(z, be.asarray(np.zeros((4, 1))))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\), got \(4, 1\)"):
        xent.log_loss(be.asarray(np.full(4, 0.5)), be.asarray(np.zeros((4, 1))))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\), got \(4, 1\).*"
                                         r"No broadcasting"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(T[:, None]))
    with pytest.raises(ValueError, match=r"labels must have shape \(4, 1\), got \(4,\) "
                                         r"\(the logits have a trailing axis of size 1"):
        xent.sigmoid_cross_entropy(be.asarray(np.zeros((4, 1))), be.asarray(np.zeros(4)))


def test_wrong_label_kind_points_to_the_right_loss(be):
    with pytest.raises(ValueError, match=r"labels must have shape \(4, 5\), got \(4,\).*"
                                         "integer class indices go to sparse_softmax"):
        xent.softmax_cross_entropy(be.asarray(Z), be.asarray(T))
    with pytest.raises(TypeError, match="labels must be probabilities .* got dtype int64; "
                                        "integer class indices go to sparse_softmax"):
        xent.softmax_cross_entropy(be.asarray(Z), be.asarray(Y.astype(np.int64)))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\), got \(4, 5\).*"
                                         "probability labels go to softmax_cross_entropy"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(Y))
    with pytest.raises(TypeError, match="labels must hold integer class indices, got dtype "
                                        "float64; probability labels go to softmax_cross"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(T.astype(np.float64)))


def test_out_of_range_labels_name_the_first_bad_position(be):
    t = np.array([[0, 1], [5, -1]])
    z = be.asarray(np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 5\), "
                                         r"got 5 at position \(1, 0\)"):
        xent.sparse_softmax_cross_entropy(z, be.asarray(t))
    with pytest.raises(ValueError, match=r"in \[0, 5\) or ignore_index=-100, got -1 at "
                                         r"position \(1, 1\)"):
        xent.sparse_softmax_cross_entropy(z, be.asarray(np.array([[0, 1], [4, -1]])),
                                          ignore_index=-100)
    with pytest.raises(ValueError, match=r"got 7 at position \(1,\)"):
        xent.sparse_softmax_cross_entropy(be.asarray(np.zeros((5, 3))),
                                          be.asarray(np.array([1, 7, 9])), axis=0)


def test_probabilities_outside_unit_interval_point_to_sigmoid(be):
    p = np.array([0.2, 1.5, -3.0])
    with pytest.raises(ValueError, match=r"probabilities must be in \[0, 1\], got 1.5 at position"
                                         r" \(1,\); .*pass logits to sigmoid_cross_entropy"):
        xent.log_loss(be.asarray(p), be.asarray(np.zeros(3)))


def test_labels_outside_their_range(be):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\], got 2 at position \(0, 1\)"):
        xent.sigmoid_cross_entropy(be.asarray(np.zeros((1, 2))), be.asarray(np.array([[0, 2.0]])))
    with pytest.raises(ValueError, match=r"labels must be in \[0, inf\], got -0.5 at position "
                                         r"\(0, 2\); labels are probabilities"):
        xent.softmax_cross_entropy(be.asarray(np.zeros((1, 3))),
                                   be.asarray(np.array([[1.0, 0.5, -0.5]])))


@pytest.mark.parametrize("name", list(LOSSES))
def test_bad_reduction_lists_the_five(be, name):
    fn, a, b = _args(be, name)
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'sum', 'mean', "
                                         "'sum_over_batch_size', 'sum_by_nonzero_weights'; "
                                         "got 'average'"):
        fn(a, b, reduction="average")
    with pytest.raises(ValueError, match="got None"):
        fn(a, b, reduction=None)


@pytest.mark.parametrize("option, value, match", [
    ("label_smoothing", -0.1, r"label_smoothing must be in \[0.0, 1.0\], got -0.1"),
    ("label_smoothing", 1.5, r"label_smoothing must be in \[0.0, 1.0\], got 1.5"),
    ("label_smoothing", float("nan"), r"label_smoothing must be in \[0.0, 1.0\], got nan"),
    ("focal_gamma", -1.0, r"focal_gamma must be in \[0.0, inf\], got -1.0"),
    ("z_loss", -1e-4, r"z_loss must be in \[0.0, inf\], got -0.0001"),
])
def test_bad_scalar_options_softmax(be, option, value, match):
    for fn, labels in ((xent.softmax_cross_entropy, Y), (xent.sparse_softmax_cross_entropy, T)):
        with pytest.raises(ValueError, match=match):
            fn(be.asarray(Z), be.asarray(labels), **{option: value})
    if option != "z_loss":
        with pytest.raises(ValueError, match=match):
            xent.sigmoid_cross_entropy(be.asarray(Z), be.asarray(YS), **{option: value})


def test_bad_option_types(be):
    with pytest.raises(TypeError, match="label_smoothing must be a number, got a str"):
        xent.sigmoid_cross_entropy(be.asarray(Z), be.asarray(YS), label_smoothing="0.1")
    with pytest.raises(TypeError, match="ignore_index must be an int or None, got a float"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(T), ignore_index=-1.0)
    with pytest.raises(TypeError, match="axis must be an int, got a float"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(T), axis=1.0)
    with pytest.raises(TypeError, match="label_gradient must be True or False, got a str"):
        xent.softmax_cross_entropy(be.asarray(Z), be.asarray(Y), label_gradient="no")
    with pytest.raises(ValueError, match=r"epsilon must be in \[0.0, inf\], got -1e-07"):
        xent.log_loss(be.asarray(P), be.asarray(YS), epsilon=-1e-7)


def test_options_are_keyword_only_and_arrays_positional_only():
    with pytest.raises(TypeError):
        xent.sparse_softmax_cross_entropy(Z, T, -1)
    with pytest.raises(TypeError):
        xent.softmax_cross_entropy(logits=Z, labels=Y)


def test_class_weight_checks(be):
    with pytest.raises(ValueError, match=r"class_weight must have shape \(5,\) \(one weight per "
                                         r"class\), got \(4,\)"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(T),
                                          class_weight=be.asarray(np.ones(4)))
    with pytest.raises(ValueError, match=r"class_weight must have shape \(5,\) .*got \(1, 5\)"):
        xent.softmax_cross_entropy(be.asarray(Z), be.asarray(Y),
                                   class_weight=be.asarray(np.ones((1, 5))))
    with pytest.raises(ValueError, match=r"class_weight must be in \[0, inf\], got -1 at "
                                         r"position \(2,\); class weights must be non-negative"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(T),
                                          class_weight=[1.0, 1.0, -1.0, 1.0, 1.0])


def test_sample_weight_may_not_grow_the_loss(be):
    with pytest.raises(ValueError, match=r"sample_weight of shape \(4, 1\) must broadcast to the "
                                         r"per-element loss shape \(4,\) without changing it"):
        xent.sparse_softmax_cross_entropy(be.asarray(Z), be.asarray(T),
                                          sample_weight=be.asarray(np.ones((4, 1))))
    with pytest.raises(ValueError, match=r"sample_weight of shape \(3,\) must broadcast"):
        xent.softmax_cross_entropy(be.asarray(Z), be.asarray(Y),
                                   sample_weight=be.asarray(np.ones(3)))
    with pytest.raises(ValueError, match=r"sample_weight of shape \(4,\) must broadcast to the "
                                         r"per-element loss shape \(4, 5\).*use shape \(4, 1\)"):
        xent.sigmoid_cross_entropy(be.asarray(Z), be.asarray(YS),
                                   sample_weight=be.asarray(np.ones(4)))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) must broadcast to the "
                                         r"logits' shape \(4, 5\)"):
        xent.sigmoid_cross_entropy(be.asarray(Z), be.asarray(YS), pos_weight=np.ones(4))


def test_bad_axis_and_shapes(be):
    with pytest.raises(ValueError, match="axis=2 is out of range for logits with 2 dimensions"):
        xent.softmax_cross_entropy(be.asarray(Z), be.asarray(Y), axis=2)
    with pytest.raises(ValueError, match="logits must have at least one dimension"):
        xent.sparse_softmax_cross_entropy(be.asarray(np.float64(1.0)), be.asarray(np.int64(0)))
    with pytest.raises(ValueError, match=r"logits must have at least one class along axis -1, "
                                         r"got shape \(4, 0\)"):
        xent.sparse_softmax_cross_entropy(be.asarray(np.zeros((4, 0))), be.asarray(T))


def test_jit_skips_the_label_range_check():
    import jax
    import jax.numpy as jnp

    fn = jax.jit(lambda z, t: xent.sparse_softmax_cross_entropy(z, t, reduction="none"))
    out = fn(jnp.asarray(Z), jnp.asarray(np.array([0, 1, 2, 9])))  # no error under jit
    assert out.shape == (4,)
    np.testing.assert_allclose(out[:3], xent.sparse_softmax_cross_entropy(
        jnp.asarray(Z[:3]), jnp.asarray(T[:3]), reduction="none"), rtol=1e-12)


def test_python_scalars_and_lists_keep_float64_precision(be):
    # torch.as_tensor(1/3) is float32; the weight must reach float64 logits unrounded.
    z, y = be.asarray(Z), be.asarray((Z > 0).astype(float))
    a = xent.sigmoid_cross_entropy(z, y, pos_weight=1 / 3, sample_weight=0.1, reduction="sum")
    b = xent.sigmoid_cross_entropy(z, y, pos_weight=[1 / 3] * 5, sample_weight=[[0.1]] * 4,
                                   reduction="sum")
    pos = Z > 0
    want = 0.1 * (np.log1p(np.exp(-Z[pos])).sum() / 3 + np.log1p(np.exp(Z[~pos])).sum())
    np.testing.assert_allclose(be.to_numpy(a), want, rtol=1e-14)
    np.testing.assert_allclose(be.to_numpy(b), want, rtol=1e-14)
    cw = [0.1, 1 / 3, 0.7, 1 / 7, 1.1]
    c = xent.sparse_softmax_cross_entropy(be.asarray(Z), T.tolist(), class_weight=cw,
                                          reduction="sum")
    lse = np.log(np.exp(Z).sum(1))
    want = (np.array(cw)[T] * (lse - Z[np.arange(4), T])).sum()
    np.testing.assert_allclose(be.to_numpy(c), want, rtol=1e-14)


def test_value_checks_run_under_eager_autodiff(gbe):
    # Under torch autograd and an eager jax.grad the values are known: the checks
    # run and their messages can read the offending value (a JAX tracer refuses
    # np.asarray, which once turned this ValueError into a TracerArrayConversionError).
    with pytest.raises(ValueError, match=r"labels must be in \[0, inf\], got -1 at position "
                                         r"\(1, 1\)"):
        gbe.grad(lambda y: xent.softmax_cross_entropy(gbe.asarray(Z[:2, :3]), y),
                 gbe.asarray(np.array([[1.0, 0, 0], [0, -1.0, 0]])))
    with pytest.raises(ValueError, match=r"probabilities must be in \[0, 1\], got 2 at "
                                         r"position \(1,\)"):
        gbe.grad(lambda p: xent.log_loss(p, gbe.asarray(np.array([0.0, 1.0]))),
                 gbe.asarray(np.array([0.5, 2.0])))
    with pytest.raises(ValueError, match=r"got 5 at position \(1,\)"):
        gbe.grad(lambda z: xent.sparse_softmax_cross_entropy(z, gbe.asarray(np.array([0, 5]))),
                 gbe.asarray(Z[:2, :3]))


def test_jit_closed_over_concrete_labels_are_still_checked():
    """Regression: labels closed over by a jitted function are concrete; the
    range check must run on them (it used to crash converting a staged tracer)."""
    import jax
    import jax.numpy as jnp

    import xent

    bad = jnp.asarray([0, 5])
    with pytest.raises(ValueError, match=r"got 5 at position \(1,\)"):
        jax.jit(lambda z: xent.sparse_softmax_cross_entropy(z, bad))(jnp.zeros((2, 3)))
    good = jnp.asarray([0, 2])
    out = jax.jit(lambda z: xent.sparse_softmax_cross_entropy(z, good))(jnp.zeros((2, 3)))
    np.testing.assert_allclose(float(out), np.log(3.0), rtol=1e-6)
