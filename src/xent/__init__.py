"""xent: the whole cross-entropy family, numerically stable, on NumPy, PyTorch and JAX.

Every loss takes logits first (``log_loss`` alone takes probabilities), arrays
positional-only and options keyword-only, and returns an array of the logits'
library, device and dtype. The reference pages are ``docs/losses.md``,
``docs/linear.md``, ``docs/sampled.md`` and ``docs/cli.md``; ``docs/choosing.md``
says which loss fits which labels.
"""

from . import samplers
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
]
