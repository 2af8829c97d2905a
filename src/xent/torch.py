"""PyTorch ``nn.Module`` losses and the Hugging Face hook, built on xent's functions.

``import xent`` never imports torch; ``import xent.torch`` (or the attribute
``xent.torch``) does.

Drop-in modules (torch's argument names, layouts and meanings; classes on dim
1, inputs ``[N, C, d1, ...]``, integer or probability targets):

- :class:`CrossEntropyLoss` for ``torch.nn.CrossEntropyLoss``;
- :class:`BCEWithLogitsLoss` for ``torch.nn.BCEWithLogitsLoss``;
- :class:`LinearCrossEntropyLoss` for ``torch.nn.LinearCrossEntropyLoss``
  (same ``linear`` submodule and ``weight`` buffer, so state dicts load both
  ways), without ever holding the ``[N, V]`` logits.

They reduce as torch does (``"mean"`` with probability targets divides by the
number of elements N, whatever the class weights; ``BCEWithLogitsLoss``'s
``"mean"`` is the mean over elements), except that where torch gives NaN
(every target ignored under ``"mean"``) these give 0. ``reduction`` also
accepts xent's ``"sum_over_batch_size"`` and ``"sum_by_nonzero_weights"``,
with the meanings of xent's functions.

Classifier-owning modules: :class:`SampledSoftmaxLoss` and :class:`NCELoss`
(sampled loss in ``train()``, exact full softmax in ``eval()``).

Hugging Face: :func:`causal_lm_loss` has the signature of transformers'
``ForCausalLMLoss``.

>>> import torch, xent.torch
>>> loss = xent.torch.CrossEntropyLoss(label_smoothing=0.1)
>>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
>>> target = torch.tensor([0, -100])
>>> torch.allclose(loss(logits, target),
...                torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, target))
True
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .linear import linear_cross_entropy
from .sampled import nce_loss, sampled_softmax_loss
from .sigmoid import sigmoid_cross_entropy
from .softmax import softmax_cross_entropy, sparse_softmax_cross_entropy

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "NCELoss",
    "SampledSoftmaxLoss",
    "causal_lm_loss",
]

_REDUCTIONS = ("none", "mean", "sum", "sum_over_batch_size", "sum_by_nonzero_weights")


def _reduction(value: Any) -> str:
    if not isinstance(value, str) or value not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, _REDUCTIONS))}; "
                         f"got {value!r}")
    return value


def _buffer(value: Any, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
    return value


def _elements_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """``total / count`` with a Python count (static under ``torch.compile``); 0 when empty."""
    return total / max(count, 1)


def _class_axis_views(input: torch.Tensor, target: torch.Tensor, prob: bool):
    """Unbatched ``[C]`` input becomes ``[1, C]`` (torch's unbatched form)."""
    if input.dim() == 1:
        return input.unsqueeze(0), target.unsqueeze(0), True
    return input, target, False


def _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                   z_loss, focal_gamma):
    """torch's ``cross_entropy`` reductions over xent's softmax functions."""
    if input.dim() == 0:
        raise ValueError("input must have the classes on dim 1 ([N, C, d1, ...]) or be [C]; "
                         "got a 0-d tensor")
    prob = torch.is_floating_point(target)
    x, t, unbatched = _class_axis_views(input, target, prob)
    axis = 1
    if prob:
        if tuple(t.shape) != tuple(x.shape):
            raise ValueError(f"probability target must have the input's shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
        red = "sum" if reduction == "mean" else reduction
        out = softmax_cross_entropy(x, t, axis=axis, class_weight=weight,
                                    label_smoothing=label_smoothing, focal_gamma=focal_gamma,
                                    z_loss=z_loss, reduction=red)
        if reduction == "mean":  # torch: divided by the number of elements N
            out = _elements_mean(out, x.numel() // max(x.shape[1], 1) if x.shape[1] else 0)
    else:
        out = sparse_softmax_cross_entropy(x, t, axis=axis, class_weight=weight,
                                           label_smoothing=label_smoothing,
                                           ignore_index=ignore_index, focal_gamma=focal_gamma,
                                           z_loss=z_loss, reduction=reduction)
    if unbatched and reduction == "none":
        out = out.squeeze(0)
    return out


class CrossEntropyLoss(nn.Module):
    """``torch.nn.CrossEntropyLoss``, computed by xent's softmax losses.

    Per element, with ``p = softmax(input)`` along dim 1, class weights ``w``
    (1 without) and ``y' = (1 - s) * y + s / C`` (``y`` one-hot for class
    indices)::

        l = -sum_c w_c * y'_c * (1 - p_c)**focal_gamma * log p_c + z_loss * logsumexp(input)**2

    Shapes: input ``[C]``, ``[N, C]`` or ``[N, C, d1, ...]``; target class
    indices ``[]``, ``[N]``, ``[N, d1, ...]`` or probabilities of the input's
    shape. ``"mean"`` is torch's: ``sum_i l_i / sum_i w_{t_i}`` for class
    indices (0, not NaN, when every target is ignored) and ``sum_i l_i / N``
    for probabilities. Float16/bfloat16 inputs are accumulated in float32;
    the result has the input's dtype. ``weight`` is a registered buffer.

    >>> import torch
    >>> m = CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    >>> x, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([1])
    >>> round(float(m(x, t)), 4)
    1.4076
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, focal_gamma: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", _buffer(weight, "weight"))
        self.ignore_index = int(ignore_index)
        self.reduction = _reduction(reduction)
        self.label_smoothing = float(label_smoothing)
        self.z_loss = float(z_loss)
        self.focal_gamma = float(focal_gamma)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                              self.label_smoothing, self.z_loss, self.focal_gamma)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"focal_gamma={self.focal_gamma}")


class BCEWithLogitsLoss(nn.Module):
    """``torch.nn.BCEWithLogitsLoss``, computed by ``xent.sigmoid_cross_entropy``.

    Per entry, with ``y' = (1 - s) * y + s / 2``, ``pos_weight`` broadcast
    against the input (usually ``[C]``, classes last) and ``weight`` the
    per-entry rescaling (broadcast against the input)::

        l = weight * -(pos_weight * y' * log σ(z) + (1 - y') * log(1 - σ(z))) * (1 - p_t)**focal_gamma

    ``"mean"`` is torch's mean over all entries (weights do not divide);
    ``"sum"`` the sum; ``"none"`` the input's shape. The log-sigmoids are
    computed as softplus, so ±1e4 logits stay finite. ``weight`` and
    ``pos_weight`` are registered buffers.

    >>> import torch
    >>> m = BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0]))
    >>> x, y = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.0]])
    >>> round(float(m(x, y)), 4)
    0.6307
    """

    def __init__(self, weight: torch.Tensor | None = None, reduction: str = "mean",
                 pos_weight: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
                 focal_gamma: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", _buffer(weight, "weight"))
        self.register_buffer("pos_weight", _buffer(pos_weight, "pos_weight"))
        self.reduction = _reduction(reduction)
        self.label_smoothing = float(label_smoothing)
        self.focal_gamma = float(focal_gamma)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        red = "sum" if self.reduction == "mean" else self.reduction
        out = sigmoid_cross_entropy(input, target, pos_weight=self.pos_weight,
                                    label_smoothing=self.label_smoothing,
                                    focal_gamma=self.focal_gamma, sample_weight=self.weight,
                                    reduction=red)
        if self.reduction == "mean":
            out = _elements_mean(out, input.numel())
        return out

    def extra_repr(self) -> str:
        return (f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, "
                f"focal_gamma={self.focal_gamma}")


class LinearCrossEntropyLoss(nn.Module):
    """``torch.nn.LinearCrossEntropyLoss``: cross-entropy of ``linear(input)``, logits never held.

    ``z = input @ linear.weight.T + linear.bias`` (``c * tanh(z / c)`` when
    ``logit_softcap=c``), then :class:`CrossEntropyLoss`'s per-element loss,
    computed by ``xent.linear_cross_entropy`` in chunks of classes: extra
    memory O(N * chunk) instead of O(N * num_classes). Gradients reach
    ``input``, ``linear.weight`` and ``linear.bias``.

    Shapes: input ``[..., in_features]``, class-index target ``[...]``; the
    result is a scalar, or ``[...]`` with ``"none"``. Probability targets
    ``[N, num_classes]`` are accepted as torch does, but computed from the
    full logits (there is no chunked form for them).

    Attribute layout is torch's: the classifier is the ``linear`` submodule
    (``nn.Linear(in_features, num_classes)``) and the class weight the
    ``weight`` buffer, so ``state_dict``s load both ways. torch's
    ``out_features`` is supported only as ``()``; ``options`` (torch's
    chunking settings) is accepted and ignored: xent picks its own chunks
    (``chunk_size`` sets them).

    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> m = LinearCrossEntropyLoss(4, 10)
    >>> x, t = torch.randn(3, 4), torch.tensor([1, 2, -100])
    >>> ref = torch.nn.functional.cross_entropy(m.linear(x), t)
    >>> torch.allclose(m(x, t), ref)
    True
    """

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = False,
                 device: Any = None, dtype: Any = None, reduction: str = "mean",
                 weight: torch.Tensor | None = None, ignore_index: int | None = -100,
                 label_smoothing: float = 0.0, z_loss: float = 0.0,
                 logit_softcap: float | None = None, chunk_size: int | None = None,
                 out_features: tuple = (), options: Any = None) -> None:
        super().__init__()
        if tuple(out_features) != ():
            raise ValueError(f"out_features must be () (K-dimensional classifiers are not "
                             f"supported), got {tuple(out_features)}")
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise ValueError(f"weight must have shape ({num_classes},), got {tuple(weight.shape)}")
        self.num_classes = int(num_classes)
        self.out_features = ()
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.register_buffer("weight", _buffer(weight, "weight"))
        self.reduction = _reduction(reduction)
        self.ignore_index = -100 if ignore_index is None else int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.z_loss = float(z_loss)
        self.logit_softcap = logit_softcap
        self.chunk_size = chunk_size
        self.options = options

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        W, b = self.linear.weight, self.linear.bias
        if torch.is_floating_point(target):
            z = F.linear(input, W, b)
            if self.logit_softcap is not None:
                z = self.logit_softcap * torch.tanh(z / self.logit_softcap)
            return _cross_entropy(z, target, self.weight, self.ignore_index, self.reduction,
                                  self.label_smoothing, self.z_loss, 0.0)
        return linear_cross_entropy(input, W, target, bias=b, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    logit_softcap=self.logit_softcap, class_weight=self.weight,
                                    reduction=self.reduction, chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"bias={self.linear.bias is not None}, reduction={self.reduction!r}, "
                f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
                f"z_loss={self.z_loss}, logit_softcap={self.logit_softcap}")


class _SampledBase(nn.Module):
    _remove_default = True

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *,
                 bias: bool = True, num_true: int = 1, sampler: Any = "log_uniform",
                 remove_accidental_hits: bool | None = None, device: Any = None,
                 dtype: Any = None, reduction: str = "mean") -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.num_sampled, self.num_true = int(num_sampled), int(num_true)
        self.sampler = sampler
        self.remove_accidental_hits = (self._remove_default if remove_accidental_hits is None
                                       else bool(remove_accidental_hits))
        self.reduction = _reduction(reduction)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(num_classes, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight as ``nn.Linear`` initialises it (Kaiming uniform); bias zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _flat(self, inputs, labels):
        lead = tuple(inputs.shape[:-1])
        if inputs.dim() != 2:
            inputs = inputs.reshape(-1, inputs.shape[-1])
            labels = labels.reshape(-1, self.num_true) if self.num_true > 1 else labels.reshape(-1)
        return inputs, labels, lead

    def _full(self, x, t):
        T = self.num_true
        if T == 1:
            t = t.reshape(-1)
            return linear_cross_entropy(x, self.weight, t, bias=self.bias,
                                        reduction=self.reduction)
        N, D = x.shape
        per = linear_cross_entropy(x.unsqueeze(1).expand(N, T, D), self.weight, t,
                                   bias=self.bias, reduction="none").mean(-1)
        if self.reduction == "none":
            return per
        if self.reduction == "sum":
            return per.sum()
        return _elements_mean(per.sum(), N)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, *, rng: Any = None,
                sampled: Any = None) -> torch.Tensor:
        x, t, lead = self._flat(inputs, labels)
        if self.training:
            out = self._sampled(x, t, rng, sampled)
        else:
            out = self._full(x, t)
        if self.reduction == "none" and len(lead) != 1:
            out = out.reshape(lead)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"num_sampled={self.num_sampled}, bias={self.bias is not None}, "
                f"num_true={self.num_true}, sampler={self.sampler!r}, "
                f"remove_accidental_hits={self.remove_accidental_hits}, "
                f"reduction={self.reduction!r}")


class SampledSoftmaxLoss(_SampledBase):
    """Sampled softmax (TensorFlow's ``sampled_softmax_loss``) as a layer that owns its classifier.

    In ``train()`` mode: ``xent.sampled_softmax_loss(inputs, self.weight,
    labels, num_sampled=..., bias=self.bias, ...)``, i.e. the softmax over
    the true classes and ``num_sampled`` candidates shared by the batch, all
    logits minus ``log(expected_count)``, accidental hits removed. In
    ``eval()`` mode: the exact full-softmax loss ``-(1/num_true) sum_j log
    p_{t_j}`` over all ``num_classes`` (``xent.linear_cross_entropy``, logits
    never held), which is what to report.

    Parameters: ``weight [num_classes, in_features]`` (Kaiming uniform, as
    ``nn.Linear``), ``bias [num_classes]`` (zeros). ``inputs [..., in_features]``,
    ``labels [..., num_true]`` (or ``[...]`` with ``num_true == 1``).
    ``forward(inputs, labels, *, rng=None, sampled=None)``: ``rng`` seeds the
    sampler, ``sampled`` passes a precomputed sample (deterministic).

    >>> import torch
    >>> m = SampledSoftmaxLoss(8, 100, 10)
    >>> x, t = torch.randn(4, 8), torch.tensor([1, 5, 7, 99])
    >>> m(x, t, rng=0).shape, m.eval()(x, t).shape
    (torch.Size([]), torch.Size([]))
    """

    _remove_default = True

    def _sampled(self, x, t, rng, sampled):
        return sampled_softmax_loss(x, self.weight, t, num_sampled=self.num_sampled,
                                    bias=self.bias, num_true=self.num_true, sampler=self.sampler,
                                    sampled=sampled,
                                    remove_accidental_hits=self.remove_accidental_hits, rng=rng,
                                    reduction=self.reduction)


class NCELoss(_SampledBase):
    """Noise-contrastive estimation (TensorFlow's ``nce_loss``) as a layer that owns its classifier.

    In ``train()`` mode: ``xent.nce_loss(inputs, self.weight, labels,
    num_sampled=..., bias=self.bias, ...)`` (sigmoid cross-entropy of true and
    sampled logits minus ``log(expected_count)``); in ``eval()`` mode the
    exact full-softmax loss via ``xent.linear_cross_entropy``. Shapes,
    parameters and ``forward`` as :class:`SampledSoftmaxLoss`; accidental
    hits are kept by default, as in TensorFlow.

    >>> import torch
    >>> m = NCELoss(8, 100, 10)
    >>> float(m(torch.randn(4, 8), torch.tensor([1, 5, 7, 99]), rng=0).detach()) > 0
    True
    """

    _remove_default = False

    def _sampled(self, x, t, rng, sampled):
        return nce_loss(x, self.weight, t, num_sampled=self.num_sampled, bias=self.bias,
                        num_true=self.num_true, sampler=self.sampler, sampled=sampled,
                        remove_accidental_hits=self.remove_accidental_hits, rng=rng,
                        reduction=self.reduction)


_CAUSAL_OPTIONS = ("z_loss", "label_smoothing", "focal_gamma", "class_weight")


def causal_lm_loss(logits: Any, labels: torch.Tensor | None, vocab_size: int | None = None,
                   num_items_in_batch: Any = None, ignore_index: int = -100,
                   shift_labels: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """Next-token cross-entropy with the signature of transformers' ``ForCausalLMLoss``.

    ``loss = sum_{b,t} -log softmax(logits[b, t])[labels[b, t + 1]] / n`` over
    tokens whose shifted label is not ``ignore_index``, where ``n`` is
    ``num_items_in_batch`` when given (the gradient-accumulation-correct
    denominator: the count over every micro-batch) and the count of
    non-ignored tokens otherwise; 0 when there are none. ``shift_labels``
    (already shifted) replaces the shift. Logits are upcast to float32 first
    and the result is float32, as transformers does.

    Use as ``model.loss_function = causal_lm_loss`` or
    ``Trainer(compute_loss_func=causal_lm_loss)`` (the first argument may be a
    model output with ``.logits``). ``options`` may hold
    ``sparse_softmax_cross_entropy``'s ``z_loss``, ``label_smoothing``,
    ``focal_gamma``, ``class_weight``; any other keyword (transformers passes
    e.g. ``position_ids``) is ignored.

    Shapes: logits ``[B, T, V]`` (or anything ``[..., V]``), labels ``[B, T]``.

    >>> import torch
    >>> logits = torch.zeros(1, 3, 4)
    >>> round(float(causal_lm_loss(logits, torch.tensor([[0, 1, 2]]), vocab_size=4)), 4)
    1.3863
    """
    if not isinstance(logits, torch.Tensor) and hasattr(logits, "logits"):
        logits = logits.logits
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor or a model output with .logits, "
                        f"got {type(logits).__name__}")
    opts = {k: v for k, v in options.items() if k in _CAUSAL_OPTIONS}
    V = int(vocab_size) if vocab_size is not None else int(logits.shape[-1])
    z = logits.float()
    if shift_labels is None:
        if labels is None:
            raise ValueError("labels (or shift_labels) must be given, got None")
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    z = z.reshape(-1, V)
    t = shift_labels.reshape(-1).to(z.device)
    if num_items_in_batch is None:
        return sparse_softmax_cross_entropy(z, t, ignore_index=ignore_index, reduction="mean",
                                            **opts)
    total = sparse_softmax_cross_entropy(z, t, ignore_index=ignore_index, reduction="sum",
                                         **opts)
    if isinstance(num_items_in_batch, torch.Tensor):
        n = num_items_in_batch.to(device=total.device, dtype=total.dtype)
        return total / torch.where(n == 0, torch.ones_like(n), n)
    n = float(num_items_in_batch)
    return total / (n if n != 0 else 1.0)
