"""xent: the whole cross-entropy family, numerically stable, on NumPy, PyTorch and JAX.

Every loss takes logits first (``log_loss`` alone takes probabilities), arrays
positional-only and options keyword-only, and returns an array of the logits'
library, device and dtype. Each function's docstring is its reference (formula, options, numerics); the
README lists them, ``docs/choosing.md`` says which loss fits which labels, and
``docs/`` has a page per adapter (torch, keras, tensorflow, parallel, value checks).
"""

from . import samplers
from ._core.checks import value_checks
from .choose import Equivalents, Finding, Recommendation, check, choose, equivalents
from .linear import linear_cross_entropy
from .sampled import nce_loss, sampled_softmax_loss
from .sigmoid import log_loss, sigmoid_cross_entropy
from .softmax import softmax_cross_entropy, sparse_softmax_cross_entropy

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("xent-loss")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.1.0"


_LAZY = ("torch", "keras", "parallel")


def __getattr__(name: str):
    # The framework adapters load on first use, so ``import xent`` imports no framework.
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Equivalents",
    "Finding",
    "Recommendation",
    "check",
    "choose",
    "equivalents",
    "linear_cross_entropy",
    "log_loss",
    "nce_loss",
    "sampled_softmax_loss",
    "samplers",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
    "value_checks",
]
