"""Shared row helpers of the fused dense kernels: chunk sizes, threads, row formulas.

The method and formulas are in :mod:`xent._kernels.table`'s docstring.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

#: Bytes of one chunk's working buffer (per thread): about the 1 MiB L2 cache
#: next to the rows being read.
CHUNK_BYTES = 1024 * 1024
#: Below this many elements a single thread does all the work.
MIN_PARALLEL = 1 << 18


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


def safe_product(xp: Any, w: Any, v: Any) -> Any:
    """``w * v`` that is 0, in the value and every gradient, where ``w == 0`` and ``v`` is infinite.

    The one ``0 * inf = 0`` guard of every loss: a masked class (``-inf``
    logit) whose weight is 0 contributes nothing. ``xp``: the array namespace
    (``be.xp``, or numpy / torch / jax.numpy themselves).
    """
    return w * xp.where((w == 0) & xp.isinf(v), xp.zeros_like(v), v)
