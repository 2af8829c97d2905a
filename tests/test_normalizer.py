"""``normalizer=`` on every loss: sum_i sw_i * l_i / normalizer, and gradient accumulation.

The float64 formula is ``reduce_ref(..., "sum") / normalizer``; the
accumulation identity is: summing the micro-batch losses, each divided by the
global count, gives the full-batch ``"mean"`` (values and gradients).
"""

from __future__ import annotations

import numpy as np
import pytest

import xent
from tests._oracle import log_loss_ref, sigmoid_ref, softmax_ref, sparse_ref
from xent import samplers as XS

N, C, D, S = 8, 5, 4, 6
r = np.random.default_rng(3)
Z = r.normal(size=(N, C)) * 3
T_SPARSE = np.array([0, 4, -100, 2, 1, -100, 3, 3])
Y_DENSE = r.dirichlet(np.ones(C), size=N)
Y_BIN = (r.uniform(size=(N, C)) > 0.5).astype(np.float64)
P = r.uniform(0.05, 0.95, size=(N, C))
SW = r.uniform(0.5, 2.0, size=N)
SW[1] = 0.0
X = r.normal(size=(N, D))
W = r.normal(size=(C + 10, D)) * 0.5
B = r.normal(size=C + 10) * 0.3
T_LIN = np.array([0, 4, -100, 2, 11, -100, 13, 3])
T_SAMP = np.array([[0], [4], [7], [2], [11], [9], [13], [3]])
SAMPLE_IDS = np.array([1, 5, 6, 8, 10, 12])
TE = r.uniform(0.1, 1.0, size=(N, 1))
SE = r.uniform(0.1, 1.0, size=S)


def _arr(be, x, sl):
    return be.asarray(x[sl])


# Each case: first-argument data, call(be, first, sl, **kw), float64 sum over rows sl.
def _dense(be, z, sl, **kw):
    return xent.softmax_cross_entropy(z, _arr(be, Y_DENSE, sl),
                                      sample_weight=_arr(be, SW, sl), **kw)


def _sparse(be, z, sl, **kw):
    return xent.sparse_softmax_cross_entropy(z, _arr(be, T_SPARSE, sl), ignore_index=-100,
                                             sample_weight=_arr(be, SW, sl), **kw)


def _sigmoid(be, z, sl, **kw):
    return xent.sigmoid_cross_entropy(z, _arr(be, Y_BIN, sl),
                                      sample_weight=_arr(be, SW, sl)[:, None], **kw)


def _log_loss(be, p, sl, **kw):
    return xent.log_loss(p, _arr(be, Y_BIN, sl), sample_weight=_arr(be, SW, sl)[:, None], **kw)


def _linear(be, x, sl, **kw):
    return xent.linear_cross_entropy(x, be.asarray(W), _arr(be, T_LIN, sl), bias=be.asarray(B),
                                     ignore_index=-100, sample_weight=_arr(be, SW, sl), **kw)


def _sample(be, sl):
    return XS.Sample(be.asarray(SAMPLE_IDS), be.asarray(TE[sl]), be.asarray(SE))


def _sampled_softmax(be, x, sl, **kw):
    return xent.sampled_softmax_loss(x, be.asarray(W), _arr(be, T_SAMP, sl), num_sampled=S,
                                     bias=be.asarray(B), sampled=_sample(be, sl),
                                     sample_weight=_arr(be, SW, sl), **kw)


def _nce(be, x, sl, **kw):
    return xent.nce_loss(x, be.asarray(W), _arr(be, T_SAMP, sl), num_sampled=S,
                         bias=be.asarray(B), sampled=_sample(be, sl),
                         sample_weight=_arr(be, SW, sl), **kw)


def _sampled_rows(kind):
    ids = SAMPLE_IDS
    out = []
    for i in range(N):
        t = np.array([X[i] @ W[c] + B[c] for c in T_SAMP[i]]) - np.log(TE[i])
        s = np.array([X[i] @ W[c] + B[c] for c in ids]) - np.log(SE)
        if kind == "sampled_softmax":
            s = s[~np.isin(ids, T_SAMP[i])]  # remove_accidental_hits defaults to True
            zz = np.concatenate([t, s])
            out.append(np.logaddexp.reduce(zz) - t.mean())
        else:
            bce = lambda z, y: np.logaddexp(0, z) - y * z  # noqa: E731
            out.append(bce(t, 1.0).sum() + bce(s, 0.0).sum())
    return np.array(out)


def _sum_ref(name, sl):
    """float64 sum_i sw_i * l_i over the rows ``sl``."""
    sw = SW[sl]
    if name == "dense":
        return softmax_ref(Z[sl], Y_DENSE[sl], sample_weight=sw, reduction="sum")
    if name == "sparse":
        return sparse_ref(Z[sl], T_SPARSE[sl], ignore_index=-100, sample_weight=sw,
                          reduction="sum")
    if name == "sigmoid":
        return sigmoid_ref(Z[sl], Y_BIN[sl], sample_weight=sw[:, None], reduction="sum")
    if name == "log_loss":
        return log_loss_ref(P[sl], Y_BIN[sl], sample_weight=sw[:, None], reduction="sum")
    if name == "linear":
        return sparse_ref(X[sl] @ W.T + B, T_LIN[sl], ignore_index=-100, sample_weight=sw,
                          reduction="sum")
    return float(np.sum(sw * _sampled_rows(name)[sl]))


CASES = {
    "dense": (_dense, Z), "sparse": (_sparse, Z), "sigmoid": (_sigmoid, Z),
    "log_loss": (_log_loss, P), "linear": (_linear, X),
    "sampled_softmax": (_sampled_softmax, X), "nce": (_nce, X),
}
ALL = slice(None)
MICRO = [slice(0, 3), slice(3, 5), slice(5, N)]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("kind", ["float", "int", "array"])
def test_normalizer_divides_the_weighted_sum(be, name, kind):
    call, data = CASES[name]
    value = {"float": 3.5, "int": 7, "array": be.asarray(np.array(2.25))}[kind]
    got = call(be, be.asarray(data), ALL, normalizer=value)
    den = {"float": 3.5, "int": 7.0, "array": 2.25}[kind]
    np.testing.assert_allclose(be.to_numpy(got), _sum_ref(name, ALL) / den, rtol=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_zero_normalizer_gives_zero(be, name):
    call, data = CASES[name]
    for value in (0, 0.0, be.asarray(np.array(0.0))):
        got = call(be, be.asarray(data), ALL, normalizer=value)
        assert float(be.to_numpy(got)) == 0.0


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_accumulation_with_global_count_equals_full_mean(be, name):
    call, data = CASES[name]
    full = call(be, be.asarray(data), ALL)  # reduction="mean"
    ref = _sum_ref(name, ALL)
    count = SW[T_SPARSE != -100].sum() if name in ("sparse", "linear") else SW.sum()
    if name in ("sigmoid", "log_loss"):
        count = SW.sum() * C
    np.testing.assert_allclose(be.to_numpy(full), ref / count, rtol=1e-10)

    def accumulated(first):
        total = 0.0
        for sl in MICRO:
            total = total + call(be, first[sl], sl, normalizer=count)
        return total

    np.testing.assert_allclose(be.to_numpy(accumulated(be.asarray(data))),
                               be.to_numpy(full), rtol=1e-10)
    if be.has_grad:
        (g_acc,) = be.grad(accumulated, be.asarray(data))
        (g_full,) = be.grad(lambda a: call(be, a, ALL), be.asarray(data))
        np.testing.assert_allclose(g_acc, g_full, rtol=1e-10, atol=1e-14)


def test_normalizer_with_float32_logits_keeps_dtype(be):
    z = be.asarray(Z, "float32")
    got = xent.sparse_softmax_cross_entropy(z, be.asarray(T_SPARSE), ignore_index=-100,
                                            normalizer=4)
    assert be.to_numpy(got).dtype == np.float32
    np.testing.assert_allclose(be.to_numpy(got), sparse_ref(Z, T_SPARSE, ignore_index=-100,
                                                            reduction="sum") / 4, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("reduction", ["none", "sum", "sum_over_batch_size",
                                       "sum_by_nonzero_weights"])
def test_normalizer_with_other_reduction_is_a_value_error(name, reduction):
    call, data = CASES[name]
    from tests.conftest import ADAPTERS

    be = ADAPTERS["numpy"]
    with pytest.raises(ValueError, match="normalizer"):
        call(be, data, ALL, normalizer=2.0, reduction=reduction)


@pytest.mark.parametrize("bad, err", [(-1.0, ValueError), (float("nan"), ValueError),
                                      (True, TypeError), ("3", TypeError),
                                      (np.array([1.0, 2.0]), ValueError),
                                      (np.array(-2.0), ValueError)])
def test_bad_normalizer_is_rejected_naming_it(bad, err):
    with pytest.raises(err, match="normalizer"):
        xent.sparse_softmax_cross_entropy(Z, T_SPARSE, ignore_index=-100, normalizer=bad)
