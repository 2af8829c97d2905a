"""Dispatch as data: one table from (loss, library) to the kernel of the per-element loss.

A public loss validates its arguments once into a frozen record
(:class:`xent._core.record.Call`, ``LinearCall`` or ``SampledCall``) and calls
:func:`run` with the loss's name. ``run`` asks the fused kernel registered
for ``(loss, record.be.name)``; a fused kernel returns the per-element loss
(with its own gradient) or None when it does not handle the combination
(focal loss, a gradient it does not give, a size where it does not pay),
and the loss's *reference kernel* runs instead: the plain composition of
:mod:`xent._kernels.reference`, written once for every library. The
reduction then happens in :func:`xent._core.reduce.finish`. Nothing
is validated after the record is built.

A *plain* record (every option at its default: no class or sample weights,
smoothing, focal factor, z-loss, ignored label or normalizer, classes already
last) may instead go to :func:`run_plain`, which first asks the plain entry of
``(loss, library)`` (:data:`PLAIN`) and otherwise does what :func:`run` does.
A plain entry must give exactly what :func:`run` would give; it exists to skip
work that only depends on the record being plain (torch's sparse entry: below
the fused kernel's size floor it goes to the reference kernel without asking
the fused kernel, which would decline; ~5 us of a 40 us call at ``[64, 10]``).

``ENABLED = False`` (or ``with disabled():``) makes every loss -- dense,
sparse, sigmoid, linear, sampled softmax and NCE -- use its reference
kernel; the tests compare the two.

The table (module and function, imported on first use, so that ``import
xent`` imports neither torch nor jax)::

    loss     reference (all)     numpy         torch          jax             tensorflow
    sparse   reference.sparse    dense_numpy   dense_torch    dense_jax (*)   dense_tf
    dense    reference.dense     dense_numpy   dense_torch    dense_jax       dense_tf
    sigmoid  reference.sigmoid   dense_numpy   dense_torch    dense_jax       dense_tf
    linear   reference.linear    linear_rows   linear_torch   linear_jax      linear_tf
    sampled  sampled_ref.sampled -             sampled_torch  -               -
    nce      sampled_ref.nce     -             sampled_torch  -               -

(*) declines: under ``jax.jit`` the reference fuses into as few passes as optax.

Adding a backend: one :class:`xent._core.backend.Backend` subclass (its
``name``, ``xp`` and the primitives it computes differently; the reference
kernels then work unchanged) and, for each loss it has a faster kernel for,
one ``register(loss, name, kernel)`` line below. Nothing else branches on the
library.

Adding a loss (as sampled softmax and NCE do): a reference kernel
taking the loss's record, ``register_reference("sampled", kernel)``, fused
entries with ``register("sampled", "torch", (_sampled_torch, "loss"))`` (a
callable, or a loader and the function's name: the loader is a function
whose ``from . import sampled_torch`` runs on first use; an ``import``
statement, unlike ``importlib``, is traced by ``torch.compile``), and
``run("sampled", record)`` in the public function.

The fused dense kernels (``dense_torch.py``, ``dense_numpy.py``,
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
reference composition.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable

from . import reference
from . import sampled_ref

ENABLED = True

Kernel = Callable[[Any], Any]

#: loss -> the reference kernel (the plain composition, every library)
REFERENCE: dict[str, Kernel] = {}
#: (loss, library) -> fused kernel, or (module loader, function name) until first used
FUSED: dict[tuple[str, str], Any] = {}
#: kernel modules the plain entries read, by name, once imported
_LOADED: dict[str, Any] = {}
#: (loss, library) -> kernel of a plain record: its per-element loss, or None (then ``run``)
PLAIN: dict[tuple[str, str], Kernel] = {}


def register_reference(loss: str, kernel: Kernel) -> None:
    """Make ``kernel(record)`` the reference kernel of ``loss``."""
    REFERENCE[loss] = kernel


def register(loss: str, library: str, kernel: Any) -> None:
    """Register a fused kernel of ``loss`` for ``library`` (a ``Backend.name``).

    ``kernel``: a callable ``kernel(record) -> per-element loss or None``, or
    ``(loader, "function")``: ``loader()`` returns the module, on first use.
    """
    FUSED[(loss, library)] = kernel


def register_plain(loss: str, library: str, kernel: Kernel) -> None:
    """Make ``kernel(record) -> per-element loss or None`` the plain entry of ``(loss, library)``."""
    PLAIN[(loss, library)] = kernel


@contextmanager
def disabled():
    """Run the block with the reference kernels (for tests and comparisons)."""
    global ENABLED
    old, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = old


def _resolve(key: tuple[str, str]) -> Kernel | None:
    k = FUSED.get(key)
    if isinstance(k, tuple):
        load, attr = k
        k = FUSED[key] = getattr(load(), attr)
    return k


def fused(loss: str, call: Any) -> Any:
    """The fused kernel's per-element loss for ``call``, or None (no kernel, or it declined)."""
    if not ENABLED:
        return None
    k = _resolve((loss, call.be.name))
    return None if k is None else k(call)


def run(loss: str, call: Any) -> Any:
    """The per-element loss of ``call``: the fused kernel where it applies, else the reference."""
    out = fused(loss, call)
    return REFERENCE[loss](call) if out is None else out


def run_plain(loss: str, call: Any) -> Any:
    """:func:`run` for a plain record (see the module docstring): the plain entry where it answers.

    With the table disabled it is :func:`run` (the reference kernel).
    """
    if ENABLED:
        k = PLAIN.get((loss, call.be.name))
        if k is not None:
            out = k(call)
            if out is not None:
                return out
    return run(loss, call)


register_reference("sparse", reference.sparse)
register_reference("dense", reference.dense)
register_reference("sigmoid", reference.sigmoid)
register_reference("linear", reference.linear)
register_reference("sampled", sampled_ref.sampled)
register_reference("nce", sampled_ref.nce)

# the kernel modules, imported on first use by ``import`` statements


def _dense_numpy():
    from . import dense_numpy
    return dense_numpy


def _dense_torch():
    from . import dense_torch
    return dense_torch


def _dense_jax():
    from . import dense_jax
    return dense_jax


def _dense_tf():
    from . import dense_tf
    return dense_tf


def _linear_rows():
    from . import linear_rows
    return linear_rows


def _linear_torch():
    from . import linear_torch
    return linear_torch


def _linear_jax():
    from . import linear_jax
    return linear_jax


def _linear_tf():
    from . import linear_tf
    return linear_tf


def _sampled_torch():
    from . import sampled_torch
    return sampled_torch


for _lib, _load in (("numpy", _dense_numpy), ("torch", _dense_torch), ("jax", _dense_jax),
                    ("tensorflow", _dense_tf)):
    for _loss in ("sparse", "dense", "sigmoid"):
        register(_loss, _lib, (_load, f"{_loss}_loss"))
register("linear", "numpy", (_linear_rows, "numpy_rows"))
register("linear", "torch", (_linear_torch, "rows"))
register("linear", "jax", (_linear_jax, "rows"))
register("linear", "tensorflow", (_linear_tf, "rows"))
register("sampled", "torch", (_sampled_torch, "sampled_loss"))
register("nce", "torch", (_sampled_torch, "nce_loss"))


def _torch_sparse_plain(call: Any) -> Any:
    """The plain sparse record on torch: the reference kernel below the fused floor, else the fused one.

    ``dense_torch.sparse_loss`` declines every record with fewer than
    ``dense_torch.MIN_FUSED_ELEMENTS`` logits (read on each call, so a test
    that lowers it reaches the fused kernel), so those go straight to the
    reference kernel. From the floor on, ``dense_torch.sparse_plain`` takes
    the one-chunk reduced case (``[8, 50257]`` with a gradient) without the
    general kernel's setup; anything else is None: ``run`` asks the fused
    kernel as usual. The module is kept in ``_LOADED`` (an ``import``
    statement in a function goes through importlib's Python code: ~1 us a
    call).
    """
    dt = _LOADED.get("dense_torch")
    if dt is None:
        dt = _LOADED["dense_torch"] = _dense_torch()
    if call.z.numel() < dt.MIN_FUSED_ELEMENTS:
        return reference.sparse_plain(call)
    return dt.sparse_plain(call)


register_plain("sparse", "torch", _torch_sparse_plain)
