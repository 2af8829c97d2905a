"""Regression tests for issue 13 (what a new user trips over), one per item."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xent
from xent import cli


def _softplus(x):
    return np.logaddexp(0.0, x)


# -- negative weights -------------------------------------------------------------------

def test_negative_sample_weight_is_a_value_error_naming_it():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="sample_weight"):
        xent.sigmoid_cross_entropy(z, np.ones((2, 3)), sample_weight=np.array([[1.0], [-1.0]]))
    with pytest.raises(ValueError, match="sample_weight"):
        xent.sparse_softmax_cross_entropy(z, np.array([0, 1]), sample_weight=[1.0, -0.5])
    with pytest.raises(ValueError, match="sample_weight"):
        xent.softmax_cross_entropy(z, np.full((2, 3), 1 / 3), sample_weight=[-1.0, 1.0])


def test_negative_pos_weight_is_a_value_error_naming_it():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="pos_weight"):
        xent.sigmoid_cross_entropy(z, np.ones((2, 3)), pos_weight=-2.0)
    with pytest.raises(ValueError, match="pos_weight"):
        xent.sigmoid_cross_entropy(z, np.ones((2, 3)), pos_weight=np.array([1.0, -1.0, 1.0]))


def test_nonnegative_weights_still_give_the_float64_number():
    z = np.array([[0.5, -1.0], [2.0, 0.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    pw, sw = np.array([2.0, 0.0]), np.array([[0.0], [3.0]])
    got = xent.sigmoid_cross_entropy(z, y, pos_weight=pw, sample_weight=sw, reduction="sum")
    want = np.sum(sw * (pw * y * _softplus(-z) + (1 - y) * _softplus(z)))
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_nan_sample_weight_padding_is_not_called_negative():
    # NaN passes the range check (as before); only negative numbers are refused
    z = np.zeros((2, 2))
    xent.sigmoid_cross_entropy(z, np.ones((2, 2)), sample_weight=np.array([[1.0], [0.0]]))


# -- messages ---------------------------------------------------------------------------

def test_got_an_eager_tensor_is_english():
    from xent._core.backend import describe

    class EagerTensor:  # the name is what matters
        pass

    class Tensor:
        pass

    assert describe(EagerTensor()) == "an EagerTensor"
    assert describe(Tensor()) == "a Tensor"
    assert describe(1.5) == "a float"
    assert describe(3) == "an int"


# -- version and demo -------------------------------------------------------------------

def test_xent_version_flag_prints_the_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"xent {xent.__version__}"


def test_version_comes_from_the_package_metadata_when_installed():
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("xent-loss")
    except PackageNotFoundError:
        installed = None
    if installed is not None:
        assert xent.__version__ == installed
    assert isinstance(xent.__version__, str) and xent.__version__[0].isdigit()


def test_demo_says_what_each_class_imbalance_finding_says(capsys):
    assert cli.main(["--color", "never", "demo"]) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if "class_imbalance" in l]
    assert len(lines) >= 4
    # each line carries its own detail, not the same bare warning
    assert len(set(lines)) == len(lines)
    assert all("ratio" in l for l in lines)
