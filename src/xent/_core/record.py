"""The frozen record of one validated call: what every kernel and the reduction read.

A public loss converts and checks its arguments once and stores the result
here; from then on nothing is validated again. The kernel of the dispatch
table (``xent._kernels.table``) computes the per-element loss from the record
and :func:`xent._core.reduce.finish` reduces it with the record's reduction,
weights and output dtype.

A ``NamedTuple``, not a frozen dataclass: building one costs about a third of
a ``dataclass(frozen=True, slots=True)`` with the same fields (measured: 20
fields, keyword construction), and reading a field costs about the same.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .backend import Backend


class Call(NamedTuple):
    """One call of a dense loss (softmax, sparse softmax, sigmoid), validated.

    ``z``: the logits in their own dtype, classes last for the softmax losses
    (the fused kernels convert chunk by chunk, the reference composition
    converts to ``cdt`` itself). ``labels``: integer class indices in
    ``be.index_dtype`` with ignored ones replaced by 0 (sparse), or
    probabilities / targets in ``cdt`` (dense, sigmoid). ``w_t``: ``cw[t]``
    or None. ``keep``: False where the element contributes nothing (zero
    sample weight, ignored), or None. ``norm``: the normalizing weight
    ``n_i`` of ``"mean"`` (None: the sample weight).
    """

    be: Backend
    z: Any
    labels: Any
    num_classes: int
    cdt: Any
    out_dtype: Any
    reduction: str
    s: float = 0.0
    gamma: float = 0.0
    zl: float = 0.0
    cw: Any = None
    w_t: Any = None
    pw: Any = None
    alpha: float | None = None
    sw: Any = None
    valid: Any = None
    keep: Any = None
    norm: Any = None
    normalizer: Any = None
    #: whether the logits (and the labels) need a gradient; True where unknown (JAX)
    grad_z: bool = True
    grad_labels: bool = False


class LinearCall(NamedTuple):
    """One call of ``linear_cross_entropy``, validated and flattened to ``[N, D]`` rows.

    ``x``: ``[N, D]`` inputs with the rows that contribute nothing zeroed;
    ``t``: ``[N]`` labels in ``be.index_dtype``; ``w_t``: ``cw[t]`` or 1.0;
    ``opts``: the kernels' static options (``xent._kernels.linear_rows.Opts``);
    ``g_like``: None for ``"none"``, else the promise that the per-row
    cotangent is ``c * g_like`` (1.0 or the ``[N]`` sample weights).
    """

    be: Backend
    x: Any
    W: Any
    b: Any
    t: Any
    w_t: Any
    cw: Any
    opts: Any
    cdt: Any
    g_like: Any
    # the reduction, as in :class:`Call` (per-element shape ``lead``)
    lead: tuple
    out_dtype: Any
    reduction: str
    sw: Any = None
    valid: Any = None
    norm: Any = None
    normalizer: Any = None


class SampledCall(NamedTuple):
    """One call of ``sampled_softmax_loss`` / ``nce_loss``, validated and sampled.

    ``x``: ``[N, D]`` inputs; ``W`` / ``b``: the classifier and bias (or
    None), in their own dtypes (the kernels gather the used rows and convert
    them to ``cdt``); ``t``: ``[N, T]`` labels in ``be.index_dtype``;
    ``ids``, ``te``, ``se``: the sample's ``[S]`` candidates, ``[N, T]`` and
    ``[S]`` expected counts; ``unique_ids``: the candidates are known to be
    distinct (drawn by a built-in sampler); ``sw``: the ``[N]`` sample
    weights in ``cdt`` or None (rows with weight 0 touch nothing).
    """

    be: Backend
    x: Any
    W: Any
    b: Any
    t: Any
    ids: Any
    te: Any
    se: Any
    num_true: int
    cdt: Any
    remove_hits: bool
    subtract_log_q: bool
    unique_ids: bool
    out_dtype: Any
    reduction: str
    sw: Any = None
    normalizer: Any = None
    # as in :class:`Call`, for :func:`xent._core.reduce.finish`
    valid: Any = None
    norm: Any = None
