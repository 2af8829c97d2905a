"""Private fused fast paths for the dense losses, and the switch that turns them off.

The public losses (``softmax.py``, ``sigmoid.py``) compute everything up to
the per-element loss the plain way: validation, sample and class weights, the
keep mask. Then they ask this module for the per-element loss. A fast path
returns it (with its own gradient), or None when it does not handle the
combination, and the plain composition runs instead. Reductions stay in
``xent._core.reduce``.

What the fast paths do (see ``dense_torch.py``, ``dense_numpy.py`` and
``dense_jax.py``, which only rewrites expressions for XLA):

* the rows of ``[N, C]`` logits are processed in chunks of a few rows that fit
  in the per-core cache, by as many threads as the library would use: each
  chunk is read once from memory, shifted by its maximum, exponentiated and
  summed in a private buffer (never in the caller's arrays);
* torch: the gradient ``dl/dz`` is written during the forward pass into one
  buffer of the logits' shape and dtype, which the backward pass scales in
  place by the incoming gradient; no gradient work is done when none is
  needed;
* float16 / bfloat16 logits are converted to float32 one chunk at a time.

Formulas (per row, ``m = max z``, ``S = sum exp(z - m)``, ``lse = m + log S``,
``p = exp(z - m) / S``; ``a_c`` the per-class coefficients of the loss
``-sum_c a_c log p_c``, ``A = sum_c a_c``)::

    l      = A * log S - sum_c a_c * (z_c - m)      (+ z_loss * lse**2)
    dl/dz  = (A + 2 * z_loss * lse) * p - a

with ``a = (1 - s) * w_t * onehot(t) + (s / C) * w`` for integer labels and
``a = ((1 - s) * y + s / C) * w`` for probability labels. Terms with
``a_c == 0`` count 0 even where ``z_c = -inf`` (masked classes), as in the
plain composition.

``ENABLED = False`` (or ``with disabled():``) makes every loss use the plain
composition; the tests compare the two.
"""

from __future__ import annotations

from contextlib import contextmanager

ENABLED = True


@contextmanager
def disabled():
    """Run the block with the plain composition (for tests and comparisons)."""
    global ENABLED
    old, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = old


def _module(be):
    if be.name == "torch":
        from . import dense_torch as m
    elif be.name == "numpy":
        from . import dense_numpy as m
    elif be.name == "jax":
        from . import dense_jax as m
    else:  # pragma: no cover - every backend has a module
        return None
    return m


def sparse_loss(be, z, t, w_t, cw, keep, s: float, gamma: float, zl: float):
    """Per-element loss of integer-label softmax CE (``[...]``), or None to fall back.

    ``z``: ``[..., C]`` logits in their own dtype, classes last; ``t``: integer
    labels (ignored ones already replaced by 0); ``w_t``: ``cw[t]`` or None;
    ``keep``: False where the element's weight is 0 (or None).
    """
    if not ENABLED or gamma != 0.0:
        return None
    m = _module(be)
    return None if m is None else m.sparse_loss(z, t, w_t, cw, keep, s, zl)


def dense_loss(be, z, y, cw, keep, s: float, gamma: float, zl: float):
    """Per-element loss of probability-label softmax CE, or None to fall back."""
    if not ENABLED or gamma != 0.0:
        return None
    m = _module(be)
    return None if m is None else m.dense_loss(z, y, cw, keep, s, zl)


def sigmoid_loss(be, z, y, pw, keep, s: float, gamma: float):
    """Per-entry sigmoid CE (logits' shape), or None to fall back."""
    if not ENABLED or gamma != 0.0:
        return None
    m = _module(be)
    return None if m is None else m.sigmoid_loss(z, y, pw, keep, s)
