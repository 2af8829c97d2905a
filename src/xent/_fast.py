"""Private fused fast paths for the dense losses, and the switch that turns them off.

The public losses (``softmax.py``, ``sigmoid.py``) compute everything up to
the per-element loss the plain way: validation, sample and class weights, the
keep mask. Then they ask this module for the per-element loss. A fast path
returns it (with its own gradient), or None when it does not handle the
combination, and the plain composition runs instead. Reductions stay in
``_reduce.py``.

What the fast paths do (see ``_fast_torch.py``, ``_fast_numpy.py`` and
``_fast_jax.py``, which only rewrites expressions for XLA):

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

import threading
from contextlib import contextmanager
from typing import Any, Callable

ENABLED = True

#: Bytes of one chunk's working buffer (per thread): about the 1 MiB L2 cache
#: next to the rows being read.
CHUNK_BYTES = 1024 * 1024
#: Below this many elements a single thread does all the work.
MIN_PARALLEL = 1 << 18


@contextmanager
def disabled():
    """Run the block with the plain composition (for tests and comparisons)."""
    global ENABLED
    old, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = old


def rows_per_chunk(num_classes: int, itemsize: int = 4, chunk_bytes: int | None = None) -> int:
    """How many rows of ``num_classes`` entries fill one chunk buffer."""
    return max(1, (chunk_bytes or CHUNK_BYTES) // max(1, num_classes * itemsize))


def run_blocks(n_rows: int, n_threads: int, work: Callable[[int, int], None]) -> None:
    """``work(lo, hi)`` over contiguous row blocks, one per thread.

    Threads pay off only where the library releases the GIL in its kernels
    (NumPy ufuncs and reductions; torch operators); exceptions in a worker are
    raised here.
    """
    n_threads = max(1, min(n_threads, n_rows))
    if n_threads == 1:
        work(0, n_rows)
        return
    bounds = [n_rows * i // n_threads for i in range(n_threads + 1)]
    errors: list[BaseException] = []

    def run(lo: int, hi: int) -> None:
        try:
            work(lo, hi)
        except BaseException as e:  # pragma: no cover - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(bounds[i], bounds[i + 1]))
               for i in range(1, n_threads)]
    for th in threads:
        th.start()
    run(bounds[0], bounds[1])
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def row_loss(log_s: Any, lse: Any, a_sum: Any, a_dot: Any, zl: float) -> Any:
    """Per-row loss ``A log S - sum_c a_c (z_c - m) + z_loss lse^2`` (any array type)."""
    loss = a_sum * log_s - a_dot
    if zl != 0.0:
        loss = loss + zl * lse * lse
    return loss


def sparse_coefficients(w_t: Any, s: float, num_classes: int, w_total: Any) -> tuple[Any, Any]:
    """``A`` for integer labels, and the weight ``(1 - s) w_t`` of the label class."""
    on = (1.0 - s) if w_t is None else (1.0 - s) * w_t
    return on + (s / num_classes) * w_total if s != 0.0 else on, on


# -- dispatch -------------------------------------------------------------
def _module(be):
    if be.name == "torch":
        from . import _fast_torch as m
    elif be.name == "numpy":
        from . import _fast_numpy as m
    elif be.name == "jax":
        from . import _fast_jax as m
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
