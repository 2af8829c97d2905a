"""The one decision table behind ``choose``, ``check``, ``equivalents`` and the guide.

Everything a user is told about *which* cross-entropy to use lives here as data:
the label situations and the loss each one needs (``SITUATIONS``), the
thresholds (``IMBALANCE_RATIO``, ``HUGE_CLASSES``, ``ROW_SUM_TOL``), the
mistakes ``check`` reports (``FINDINGS``), the loss concepts with their peer
calls in TensorFlow, PyTorch, Keras and optax (``CONCEPTS``), and every known
name in those libraries (``NAMES``). ``choose.py`` reads the table; ``_guide.py``
renders it as ``docs/choosing.md``; the tests check the table against the
installed libraries (each name resolves, each peer call computes the same loss).
"""

from __future__ import annotations

import dataclasses
import difflib
import re

# -- thresholds ---------------------------------------------------------------

#: Class weights are suggested when the most frequent class is at least this
#: many times as frequent as the least frequent one (per class for multi-label:
#: negatives over positives or the reverse).
IMBALANCE_RATIO = 5.0

#: From this many classes on, the ``[N, C]`` logits (and their gradient) are
#: the memory bottleneck: 8192 tokens x 32768 classes x 4 bytes = 1 GiB each.
HUGE_CLASSES = 32_768

#: Probability rows whose sum is within this of 1 count as normalized.
ROW_SUM_TOL = 1e-3

#: Significant digits of suggested weights (kept short so ``code`` stays readable).
WEIGHT_DIGITS = 4


# -- label situations -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Situation:
    key: str
    title: str          # short name shown to users
    labels: str         # what the labels look like
    logits: str         # what the logits must look like
    function: str       # the xent function to use
    call: str           # the call, with {args} for the labels expression and options
    why: str            # the reason, in plain words
    alternatives: tuple[str, ...]
    weight: str | None  # "pos_weight", "class_weight" or None
    #: the labels expression of ``call`` in the guide (``choose`` writes its own)
    labels_expr: str = "labels"


SITUATIONS: dict[str, Situation] = {s.key: s for s in (
    Situation(
        "binary", "binary",
        "one 0/1 (or bool, or soft in [0, 1]) label per example, shape [B]",
        "[B]: one logit per example",
        "sigmoid_cross_entropy", "xent.sigmoid_cross_entropy(logits, {labels})",
        "Two exclusive outcomes need one logit, not two: sigmoid cross-entropy on one "
        "logit per example is the two-class softmax with the other logit fixed at 0. "
        "sparse_softmax_cross_entropy on [B, 2] logits gives the same loss with a "
        "redundant logit; log_loss is for a model that already outputs probabilities.",
        ("sparse_softmax_cross_entropy", "log_loss"), "pos_weight"),
    Situation(
        "multiclass", "multi-class, integer labels",
        "one integer class index per example, shape [B] (or [B, T] for sequences)",
        "[B, C] (or [B, T, C]): one logit per class",
        "sparse_softmax_cross_entropy", "xent.sparse_softmax_cross_entropy(logits, {labels})",
        "Exactly one of C classes is true, so the C logits compete through a softmax. "
        "Integer labels are the cheap form: no one-hot array is built, and the loss and "
        "gradients are the same as softmax_cross_entropy with one-hot rows.",
        ("softmax_cross_entropy",), "class_weight"),
    Situation(
        "onehot", "multi-class, one-hot labels",
        "one-hot rows, shape [B, C]",
        "[B, C]: one logit per class",
        "sparse_softmax_cross_entropy",
        "xent.sparse_softmax_cross_entropy(logits, {labels})",
        "Each one-hot row holds one class, so the classes are exclusive: softmax. Their "
        "indices labels.argmax(-1) give exactly the same loss and gradients without the "
        "[B, C] label array; softmax_cross_entropy(logits, labels) takes the rows as "
        "they are (float or bool).",
        ("softmax_cross_entropy",), "class_weight", "labels.argmax(-1)"),
    Situation(
        "soft", "soft labels (exclusive classes)",
        "probability rows that sum to 1 (label smoothing, distillation, mixup), shape [B, C]",
        "[B, C]: one logit per class",
        "softmax_cross_entropy", "xent.softmax_cross_entropy(logits, {labels})",
        "Each row is a distribution over exclusive classes, so the loss is the "
        "cross-entropy between it and softmax(logits). When the soft labels are only "
        "smoothed one-hot labels, sparse_softmax_cross_entropy with label_smoothing "
        "gives the same loss from the integer labels.",
        ("sparse_softmax_cross_entropy",), "class_weight"),
    Situation(
        "multilabel", "multi-label",
        "0/1 (or soft) per class, any number of 1s per row, shape [B, C]",
        "[B, C]: one logit per class",
        "sigmoid_cross_entropy", "xent.sigmoid_cross_entropy(logits, {labels})",
        "Several classes can be true at once, so every class is its own yes/no question: "
        "one sigmoid per logit, never a softmax (a softmax makes the classes compete and "
        "cannot put probability near 1 on two of them).",
        ("log_loss",), "pos_weight"),
    Situation(
        "huge", "huge vocabulary",
        f"integer indices into a very large class set (>= {HUGE_CLASSES} classes), "
        "e.g. next-token prediction",
        "never built: inputs [N, D] and classifier [V, D]",
        "linear_cross_entropy", "xent.linear_cross_entropy(inputs, classifier, {labels})",
        "With this many classes the [N, V] logits and their gradient dominate memory. "
        "linear_cross_entropy computes the exact loss of inputs @ classifier.T chunk by "
        "chunk and never holds the logits. For training only, sampled_softmax_loss (or "
        "nce_loss) is cheaper per step but approximate: evaluate with the exact loss, "
        "linear_cross_entropy or sparse_softmax_cross_entropy on the full logits.",
        ("sampled_softmax_loss", "nce_loss", "sparse_softmax_cross_entropy"), None),
)}

#: ``choose(task=...)`` names (lower case, letters and digits only) -> situation.
TASKS: dict[str, str] = {
    "binary": "binary", "multiclass": "multiclass", "categorical": "multiclass",
    "sparse": "multiclass", "onehot": "onehot", "soft": "soft", "softlabels": "soft",
    "distillation": "soft", "multilabel": "multilabel", "huge": "huge",
    "vocabulary": "huge", "languagemodel": "huge", "languagemodeling": "huge", "lm": "huge",
    "extreme": "huge", "extremeclassification": "huge",
}

#: How the suggested weights are computed (shown by ``choose`` and in the guide).
WEIGHT_FORMULAS = {
    "pos_weight": "pos_weight = (number of negatives) / (number of positives), per class "
                  "(PyTorch's advice for BCEWithLogitsLoss): the positives then weigh as much "
                  "in total as the negatives",
    "class_weight": "class_weight[c] = N / (C * count[c]) (inverse frequency, scikit-learn's "
                    "'balanced'): every class then weighs as much in total, and the weights "
                    "average to 1 over the examples",
}


# -- what check() reports ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FindingKind:
    code: str
    severity: str
    what: str
    fix: str


FINDINGS: dict[str, FindingKind] = {f.code: f for f in (
    FindingKind("probabilities_as_logits", "error",
                "the logits are already probabilities (rows in [0, 1] summing to 1: softmax "
                "applied twice), or probabilities were expected and logits came",
                "pass the scores from before the softmax / sigmoid; or, with probabilities "
                "only, xent.softmax_cross_entropy(log(p), labels) / xent.log_loss(p, labels)"),
    FindingKind("multi_hot_to_softmax", "error",
                "labels with several 1s per row given to a softmax loss",
                "use xent.sigmoid_cross_entropy: multi-label classes are independent"),
    FindingKind("labels_not_normalized", "error",
                "probability labels for a softmax loss whose rows do not sum to 1",
                "divide each row by its sum, or use sigmoid_cross_entropy if classes are "
                "independent"),
    FindingKind("shape_mismatch", "error",
                "logits and labels do not fit: [B, 1] vs [B], a transposed class axis, a "
                "single class under softmax, or shapes that only broadcast",
                "squeeze / transpose as the message says, or pass axis="),
    FindingKind("label_out_of_range", "error",
                "an integer label outside [0, C), or a probability label outside [0, 1]",
                "fix the labels; padding such as -100 needs ignore_index=-100"),
    FindingKind("non_finite", "error",
                "NaN or infinite logits or labels (-inf logits are legal on classes whose "
                "label is 0)",
                "find where they come from; padding rows need sample_weight 0"),
    FindingKind("class_imbalance", "warning",
                f"the most frequent class is at least {IMBALANCE_RATIO:g} times as frequent as "
                "the least frequent one",
                "pass the suggested pos_weight / class_weight (inverse frequency)"),
)}


# -- loss concepts and their peers --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Concept:
    key: str
    about: str
    xent: str | None
    tensorflow: str | None
    pytorch: str | None
    keras: str | None
    optax: str | None
    labels: str          # which label data the peer calls take (for the tests)


CONCEPTS: dict[str, Concept] = {c.key: c for c in (
    Concept("softmax", "exclusive classes, one-hot or soft probability labels [B, C]",
            "xent.softmax_cross_entropy(logits, labels)",
            "tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)",
            "torch.nn.functional.cross_entropy(logits, labels)",
            "keras.losses.categorical_crossentropy(labels, logits, from_logits=True)",
            "optax.softmax_cross_entropy(logits, labels)", "probabilities"),
    Concept("sparse_softmax", "exclusive classes, integer labels [B]",
            "xent.sparse_softmax_cross_entropy(logits, labels)",
            "tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)",
            "torch.nn.functional.cross_entropy(logits, labels)",
            "keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)",
            "optax.softmax_cross_entropy_with_integer_labels(logits, labels)", "indices"),
    Concept("sigmoid", "binary or multi-label: every entry its own yes/no, labels in [0, 1]",
            "xent.sigmoid_cross_entropy(logits, labels)",
            "tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)",
            "torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)",
            "keras.losses.binary_crossentropy(labels, logits, from_logits=True)",
            "optax.sigmoid_binary_cross_entropy(logits, labels)", "multi_hot"),
    Concept("weighted_sigmoid", "sigmoid cross-entropy with the positive term weighted",
            "xent.sigmoid_cross_entropy(logits, labels, pos_weight=pos_weight)",
            "tf.nn.weighted_cross_entropy_with_logits(labels=labels, logits=logits, "
            "pos_weight=pos_weight)",
            "torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, "
            "pos_weight=pos_weight)",
            None, None, "multi_hot"),
    Concept("sigmoid_focal", "focal loss, independent labels (Lin et al. 2017)",
            "xent.sigmoid_cross_entropy(logits, labels, focal_gamma=2.0)",
            "tf.keras.losses.binary_focal_crossentropy(labels, logits, gamma=2.0, "
            "from_logits=True)",
            None,
            "keras.losses.binary_focal_crossentropy(labels, logits, gamma=2.0, "
            "from_logits=True)",
            "optax.sigmoid_focal_loss(logits, labels, gamma=2.0)", "multi_hot"),
    Concept("softmax_focal", "focal loss, exclusive classes",
            "xent.softmax_cross_entropy(logits, labels, focal_gamma=2.0)",
            "tf.keras.losses.categorical_focal_crossentropy(labels, logits, alpha=1.0, "
            "gamma=2.0, from_logits=True)",
            None,
            "keras.losses.categorical_focal_crossentropy(labels, logits, alpha=1.0, "
            "gamma=2.0, from_logits=True)",
            None, "probabilities"),
    Concept("log_loss", "binary cross-entropy on probabilities (not logits)",
            "xent.log_loss(probabilities, labels)",
            "tf.compat.v1.losses.log_loss(labels, probabilities)",
            "torch.nn.functional.binary_cross_entropy(probabilities, labels)",
            "keras.losses.binary_crossentropy(labels, probabilities)",
            None, "binary"),
    Concept("nll", "negative log-likelihood of log-probabilities, integer labels",
            "xent.sparse_softmax_cross_entropy(log_probabilities, labels)",
            None, "torch.nn.functional.nll_loss(log_probabilities, labels)", None, None,
            "indices"),
    Concept("linear", "exact softmax cross-entropy of inputs @ classifier.T, logits never held",
            "xent.linear_cross_entropy(inputs, classifier, labels)",
            None, "torch.nn.functional.linear_cross_entropy(inputs, classifier, labels)",
            None, None, "indices"),
    Concept("sampled_softmax", "sampled softmax (training only) for huge class counts",
            "xent.sampled_softmax_loss(inputs, classifier, labels, num_sampled=num_sampled, "
            "bias=bias)",
            "tf.nn.sampled_softmax_loss(weights=classifier, biases=bias, labels=labels, "
            "inputs=inputs, num_sampled=num_sampled, num_classes=num_classes)",
            None, None, None, "indices"),
    Concept("nce", "noise-contrastive estimation (training only) for huge class counts",
            "xent.nce_loss(inputs, classifier, labels, num_sampled=num_sampled, bias=bias)",
            "tf.nn.nce_loss(weights=classifier, biases=bias, labels=labels, inputs=inputs, "
            "num_sampled=num_sampled, num_classes=num_classes)",
            None, None, None, "indices"),
    Concept("generalized", "generalized cross-entropy (Zhang & Sabuncu 2018), noise-robust; "
            "not in xent",
            None,
            "tf.keras.losses.categorical_generalized_cross_entropy(labels, probabilities, "
            "q=0.5)",
            None,
            "keras.losses.categorical_generalized_cross_entropy(labels, probabilities, q=0.5)",
            None, "indices"),
    Concept("poly", "PolyLoss (Leng et al. 2022): cross-entropy + epsilon * (1 - p_t); not in "
            "xent (softmax_cross_entropy is its epsilon = 0)",
            None, None, None, None,
            "optax.losses.poly_loss_cross_entropy(logits, labels, epsilon=2.0)", "probabilities"),
)}


# -- every known name ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Name:
    name: str            # full dotted name as the library spells it
    library: str         # "xent", "tensorflow", "pytorch", "keras", "optax", "sklearn"
    concept: str
    reduction: str       # the xent reduction that reproduces the name's default
    note: str = ""
    historical: bool = False   # no longer in the library (kept so old code can be read)
    options: str = ""    # extra xent keyword arguments, e.g. 'label_gradient=False'
    xent: str | None = None    # a full xent call when the concept's is not right
    post: str = ""       # applied to the xent call's result, e.g. '.mean(-1)'
    #: the name's own call at its defaults (logits where it takes them), run by the
    #: tests against ``xent_call()`` on the same arrays; None with ``unchecked`` saying why
    peer: str | None = None
    unchecked: str = ""
    labels: str = ""     # the label data both calls take, when not the concept's

    def xent_call(self) -> str | None:
        """The xent call that reproduces this name's defaults."""
        call = self.xent if self.xent is not None else CONCEPTS[self.concept].xent
        if call is None:
            return None
        extra = [o for o in (self.options,) if o]
        if self.reduction != "mean":
            extra.append(f'reduction="{self.reduction}"')
        return (call[:-1] + "".join(", " + e for e in extra) + ")" if extra else call) \
            + self.post


_PROBS = ("Keras takes probabilities by default (from_logits=False); with logits pass "
          "from_logits=True. With probabilities p: {prob}.")
_PROB_SOFTMAX = _PROBS.format(prob="xent.softmax_cross_entropy(log(p), labels)")
_PROB_SPARSE = _PROBS.format(prob="xent.sparse_softmax_cross_entropy(log(p), labels)")
_PROB_SIGMOID = _PROBS.format(prob="xent.log_loss(p, labels)") + (
    " The function form averages over the last axis (the xent call's .mean(-1); "
    "tf.reduce_mean(..., -1) on TF tensors).")
_FOCAL_ALPHA = (" Keras multiplies by alpha=0.25 by default: the xent call's "
                "sample_weight=0.25 does the same (or pass alpha=1.0 to Keras).")
_KERAS = {  # Keras class / function -> (concept, note)
    "BinaryCrossentropy": ("sigmoid", _PROB_SIGMOID),
    "binary_crossentropy": ("sigmoid", _PROB_SIGMOID),
    "CategoricalCrossentropy": ("softmax", _PROB_SOFTMAX),
    "categorical_crossentropy": ("softmax", _PROB_SOFTMAX),
    "SparseCategoricalCrossentropy": ("sparse_softmax", _PROB_SPARSE),
    "sparse_categorical_crossentropy": ("sparse_softmax", _PROB_SPARSE),
    "BinaryFocalCrossentropy": ("sigmoid_focal", _PROB_SIGMOID),
    "binary_focal_crossentropy": ("sigmoid_focal", _PROB_SIGMOID),
    "CategoricalFocalCrossentropy": ("softmax_focal", _PROB_SOFTMAX + _FOCAL_ALPHA),
    "categorical_focal_crossentropy": ("softmax_focal", _PROB_SOFTMAX + _FOCAL_ALPHA),
    "CategoricalGeneralizedCrossEntropy": ("generalized", "takes probabilities; xent has none"),
    "categorical_generalized_cross_entropy": ("generalized",
                                              "takes probabilities; xent has none"),
}
#: Keras loss class -> its xent.keras class (same numbers on logits, from_logits=True)
KERAS_CLASSES = {"CategoricalCrossentropy": "SoftmaxCrossEntropy",
                 "SparseCategoricalCrossentropy": "SparseSoftmaxCrossEntropy",
                 "BinaryCrossentropy": "SigmoidCrossEntropy"}
_METRICS = ("BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy",
            "binary_crossentropy", "binary_focal_crossentropy", "categorical_crossentropy",
            "categorical_focal_crossentropy", "sparse_categorical_crossentropy")
_OPS = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")

_TF_NN = {  # tf.nn name -> (concept, note)
    "softmax_cross_entropy_with_logits": ("softmax", "TF 2: gradients reach the labels too "
                                          "(xent's label_gradient=True)."),
    "sparse_softmax_cross_entropy_with_logits": ("sparse_softmax", ""),
    "sigmoid_cross_entropy_with_logits": ("sigmoid", ""),
    "weighted_cross_entropy_with_logits": ("weighted_sigmoid", ""),
    "sampled_softmax_loss": ("sampled_softmax", "Training only; evaluate with the full softmax."),
    "nce_loss": ("nce", "Training only; evaluate with the full softmax."),
}
_TF_V1_LOSSES = {  # tf.compat.v1.losses name -> (concept, note)
    "softmax_cross_entropy": ("softmax", "Arguments (onehot_labels, logits, weights); "
                              "label_smoothing as xent's."),
    "sparse_softmax_cross_entropy": ("sparse_softmax", "Arguments (labels, logits, weights)."),
    "sigmoid_cross_entropy": ("sigmoid", "Arguments (multi_class_labels, logits, weights); "
                              "label_smoothing moves labels towards 1/2 as xent's."),
    "log_loss": ("log_loss", "Arguments (labels, predictions, weights, epsilon=1e-7)."),
}
_V1_REDUCTION = " Default reduction SUM_BY_NONZERO_WEIGHTS, xent's \"sum_by_nonzero_weights\"."
_TORCH_F = {  # torch.nn.functional name -> (concept, note, xent override)
    "cross_entropy": ("sparse_softmax", "Class-index targets; with probability targets (the "
                      "logits' shape) it is xent.softmax_cross_entropy. weight= is xent's "
                      "class_weight.", None),
    "nll_loss": ("nll", "Takes log-probabilities (log_softmax output); they are valid logits "
                 "for xent.", None),
    "binary_cross_entropy": ("log_loss", "Takes probabilities; PyTorch clamps log at -100 "
                             "where xent adds epsilon=1e-7.", None),
    "binary_cross_entropy_with_logits": ("sigmoid", "pos_weight= is xent's pos_weight; weight= "
                                         "is xent's sample_weight, with reduction="
                                         "\"sum_over_batch_size\" (PyTorch's mean divides "
                                         "by the entry count, not by the weights' sum).",
                                         "xent.sigmoid_cross_entropy(logits, labels, "
                                         "sample_weight=weight, reduction="
                                         "\"sum_over_batch_size\")"),
    "multilabel_soft_margin_loss": ("sigmoid", "Averages over classes, then over the batch: "
                                    "xent's mean over all entries.", None),
    "soft_margin_loss": ("sigmoid", "Labels in {-1, 1}: log(1 + exp(-y * x)) is the sigmoid "
                         "cross-entropy of (y + 1) / 2.",
                         "xent.sigmoid_cross_entropy(logits, (labels + 1) / 2)"),
    "linear_cross_entropy": ("linear", "", None),
}
_TORCH_NN = {  # torch.nn module -> functional name
    "CrossEntropyLoss": "cross_entropy", "NLLLoss": "nll_loss",
    "BCELoss": "binary_cross_entropy", "BCEWithLogitsLoss": "binary_cross_entropy_with_logits",
    "MultiLabelSoftMarginLoss": "multilabel_soft_margin_loss",
    "SoftMarginLoss": "soft_margin_loss", "LinearCrossEntropyLoss": "linear_cross_entropy",
}
_OPTAX = {  # optax name -> (concept, note)
    "softmax_cross_entropy": ("softmax", ""),
    "safe_softmax_cross_entropy": ("softmax", "Safe with -inf logits; so is xent."),
    "softmax_cross_entropy_with_integer_labels": ("sparse_softmax", ""),
    "sigmoid_binary_cross_entropy": ("sigmoid", ""),
    "sigmoid_focal_loss": ("sigmoid_focal", "alpha=None by default; xent has no alpha."),
}
_XENT = {  # xent name -> concept
    "softmax_cross_entropy": "softmax", "sparse_softmax_cross_entropy": "sparse_softmax",
    "sigmoid_cross_entropy": "sigmoid", "log_loss": "log_loss",
    "linear_cross_entropy": "linear", "sampled_softmax_loss": "sampled_softmax",
    "nce_loss": "nce",
}

_XENT_TORCH = ("CrossEntropyLoss", "BCEWithLogitsLoss", "LinearCrossEntropyLoss")
_XENT_ADAPTERS = {  # the framework adapters: name -> (concept, note, call)
    "xent.torch.CrossEntropyLoss": (
        "sparse_softmax", "Drop-in for torch.nn.CrossEntropyLoss: torch's arguments, layouts "
        "(classes on dim 1) and reductions; an all-ignored mean is 0, not NaN.",
        "xent.torch.CrossEntropyLoss()(logits, labels)"),
    "xent.torch.BCEWithLogitsLoss": (
        "sigmoid", "Drop-in for torch.nn.BCEWithLogitsLoss (weight, pos_weight, torch's "
        "reductions).", "xent.torch.BCEWithLogitsLoss()(logits, labels)"),
    "xent.torch.LinearCrossEntropyLoss": (
        "linear", "Drop-in for torch 2.13's nn.LinearCrossEntropyLoss (a linear submodule and "
        "a weight buffer; state dicts load both ways).",
        "xent.torch.LinearCrossEntropyLoss(in_features, num_classes)(inputs, labels)"),
    "xent.torch.SampledSoftmaxLoss": (
        "sampled_softmax", "A layer owning its classifier: sampled loss in train(), exact "
        "softmax in eval().",
        "xent.torch.SampledSoftmaxLoss(in_features, num_classes, num_sampled)(inputs, labels)"),
    "xent.torch.NCELoss": (
        "nce", "A layer owning its classifier: NCE in train(), exact softmax in eval().",
        "xent.torch.NCELoss(in_features, num_classes, num_sampled)(inputs, labels)"),
    "xent.torch.causal_lm_loss": (
        "sparse_softmax", "transformers' ForCausalLMLoss signature: model.loss_function or "
        "Trainer(compute_loss_func=...).",
        "xent.torch.causal_lm_loss(logits, labels)"),
    "xent.keras.SoftmaxCrossEntropy": (
        "softmax", "Keras 3 Loss: (y_true, y_pred) order, Keras's reductions.",
        "xent.keras.SoftmaxCrossEntropy()(labels, logits)"),
    "xent.keras.SparseSoftmaxCrossEntropy": (
        "sparse_softmax", "Keras 3 Loss: (y_true, y_pred) order, Keras's reductions.",
        "xent.keras.SparseSoftmaxCrossEntropy()(labels, logits)"),
    "xent.keras.SigmoidCrossEntropy": (
        "sigmoid", "Keras 3 Loss: per-example mean over the last axis (BinaryCrossentropy's "
        "numbers).", "xent.keras.SigmoidCrossEntropy()(labels, logits)"),
    "xent.parallel.vocab_parallel_cross_entropy": (
        "sparse_softmax", "Classes sharded over ranks (torch.distributed group or JAX "
        "axis_name); exact with every option.",
        "xent.parallel.vocab_parallel_cross_entropy(logits, labels)"),
    "xent.parallel.vocab_parallel_linear_cross_entropy": (
        "linear", "Classifier rows sharded over ranks; no rank holds its logits.",
        "xent.parallel.vocab_parallel_linear_cross_entropy(inputs, classifier, labels)"),
}


def _names() -> list[Name]:
    """Every known name, in priority order (earlier wins for a bare, ambiguous name)."""
    out = [Name(f"xent.{n}", "xent", c, "mean") for n, c in _XENT.items()]
    for f, (c, note, xent) in _TORCH_F.items():
        out.append(Name(f"torch.nn.functional.{f}", "pytorch", c, "mean", note, xent=xent))
    for m, f in _TORCH_NN.items():
        c, note, xent = _TORCH_F[f]
        if m in _XENT_TORCH:
            note = (note + " " if note else "") + f"Module form here: xent.torch.{m}."
        out.append(Name(f"torch.nn.{m}", "pytorch", c, "mean", note, xent=xent))
    out.append(Name("torch.nn.AdaptiveLogSoftmaxWithLoss", "pytorch", "linear", "mean",
                    "An approximation with frequency clusters (Grave et al. 2017); the exact "
                    "memory-light loss is linear_cross_entropy."))
    out.append(Name("torch.nn.functional.kl_div", "pytorch", "softmax", "mean",
                    "Distillation: kl_div(log_softmax(logits), p, reduction='batchmean') is the "
                    "soft-label softmax cross-entropy minus the labels' entropy sum(p log p) "
                    "per row, a constant: same gradient in the logits, a different number.",
                    xent="xent.softmax_cross_entropy(logits, p)"))
    out.append(Name("torchvision.ops.sigmoid_focal_loss", "pytorch", "sigmoid_focal", "none",
                    "Defaults alpha=0.25, gamma=2, reduction='none'.",
                    xent="xent.sigmoid_cross_entropy(logits, labels, focal_gamma=2.0, "
                         "focal_alpha=0.25)"))
    out.append(Name("liger_kernel.transformers.LigerCrossEntropyLoss", "pytorch",
                    "sparse_softmax", "mean", "Liger's fused Triton kernel (ignore_index=-100, "
                    "label_smoothing, z-loss as lse_square_scale).",
                    xent="xent.sparse_softmax_cross_entropy(logits, labels, ignore_index=-100)"))
    out.append(Name("liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss", "pytorch",
                    "linear", "mean", "Arguments (weight, hidden, labels): the hidden states "
                    "and the [V, D] weight, never the [N, V] logits.",
                    xent="xent.linear_cross_entropy(hidden, weight, labels, ignore_index=-100)"))
    out.append(Name("cut_cross_entropy.linear_cross_entropy", "pytorch", "linear", "mean",
                    "Apple's Cut Cross-Entropy: arguments (embeddings, classifier, labels); "
                    "ignore_index=-100.",
                    xent="xent.linear_cross_entropy(embeddings, classifier, labels, "
                         "ignore_index=-100)"))
    out.append(Name("torch.nn.NLLLoss2d", "pytorch", "nll", "mean",
                    "Deprecated alias of NLLLoss (classes on axis 1: xent axis=1)."))
    for prefix, library, lo, cls in (("keras.losses", "keras", "none", "sum_over_batch_size"),
                                     ("tf.keras.losses", "tensorflow", "none",
                                      "sum_over_batch_size"),
                                     ("tf.losses", "tensorflow", "none", "sum_over_batch_size"),
                                     ("tf.compat.v1.keras.losses", "tensorflow", "none",
                                      "sum_over_batch_size")):
        for n, (c, note) in _KERAS.items():
            red = cls if n[0].isupper() else lo
            if n in KERAS_CLASSES:
                note += (f" Keras Loss class here: xent.keras.{KERAS_CLASSES[n]}() takes "
                         "(y_true, y_pred) and Keras's reductions.")
            out.append(Name(f"{prefix}.{n}", library, c, red, note))
    for prefix, library in (("keras.metrics", "keras"), ("tf.keras.metrics", "tensorflow")):
        for n in _METRICS:
            c, note = _KERAS[n]
            if n[0].isupper():
                note = "A metric: the running mean over every batch seen. " + note
            out.append(Name(f"{prefix}.{n}", library, c, "mean" if n[0].isupper() else "none",
                            note))
    for n in _OPS:
        c, note = _KERAS[n]
        out.append(Name(f"keras.ops.{n}", "keras", c, "none", note))
    for n in ("binary_crossentropy", "binary_focal_crossentropy", "categorical_crossentropy",
              "categorical_focal_crossentropy", "sparse_categorical_crossentropy"):
        c, note = _KERAS[n]
        out.append(Name(f"tf.keras.backend.{n}", "tensorflow", c, "none", note))
    for n in ("binary_crossentropy", "categorical_crossentropy",
              "sparse_categorical_crossentropy"):
        c, note = _KERAS[n]
        out.append(Name(f"keras.backend.{n}", "keras", c, "none",
                        "Keras 2; gone from Keras 3 (use keras.ops). " + note, historical=True))
    for prefix in ("tf.nn", "tf.compat.v2.nn", "tf.compat.v1.nn"):
        for n, (c, note) in _TF_NN.items():
            options = ""
            if prefix == "tf.compat.v1.nn" and n == "softmax_cross_entropy_with_logits":
                note, options = ("TF 1 semantics: the labels are constants (no gradient "
                                 "reaches them)."), "label_gradient=False"
            out.append(Name(f"{prefix}.{n}", "tensorflow", c, "none", note, options=options))
    out.append(Name("tf.compat.v1.nn.softmax_cross_entropy_with_logits_v2", "tensorflow",
                    "softmax", "none", "TF 1's name for TF 2's softmax_cross_entropy_with_logits."))
    out.append(Name("tf.nn.softmax_cross_entropy_with_logits_v2", "tensorflow", "softmax",
                    "none", "TF 1.x; now tf.nn.softmax_cross_entropy_with_logits.",
                    historical=True))
    for n, (c, note) in _TF_V1_LOSSES.items():
        out.append(Name(f"tf.compat.v1.losses.{n}", "tensorflow", c, "sum_by_nonzero_weights",
                        note + _V1_REDUCTION))
    for n, (c, note) in _TF_V1_LOSSES.items():
        out.append(Name(f"tf.losses.{n}", "tensorflow", c, "sum_by_nonzero_weights",
                        f"TF 1.x; now tf.compat.v1.losses.{n}. " + note + _V1_REDUCTION,
                        historical=True))
    for n, (c, note) in _TF_V1_LOSSES.items():
        out.append(Name(f"tf.contrib.losses.{n}", "tensorflow", c, "sum_by_nonzero_weights",
                        "tf.contrib was removed in TF 2.0. " + note + _V1_REDUCTION,
                        historical=True))
    out.append(Name("tf.contrib.nn.sampled_sparse_softmax_loss", "tensorflow",
                    "sampled_softmax", "none", "tf.contrib was removed in TF 2.0.",
                    historical=True))
    out.append(Name("tf.contrib.seq2seq.sequence_loss", "tensorflow", "sparse_softmax", "mean",
                    "tf.contrib was removed in TF 2.0. Averages over time steps and batch "
                    "with the weights mask.", historical=True,
                    xent="xent.sparse_softmax_cross_entropy(logits, labels, "
                         "sample_weight=weights)"))
    for prefix in ("optax", "optax.losses"):
        for n, (c, note) in _OPTAX.items():
            out.append(Name(f"{prefix}.{n}", "optax", c, "none", note))
    out.append(Name("optax.losses.poly_loss_cross_entropy", "optax", "poly", "none",
                    "Not in xent: softmax_cross_entropy is its epsilon=0 case."))
    out.append(Name("sklearn.metrics.log_loss", "sklearn", "log_loss", "mean",
                    "Takes probabilities. For multi-class probabilities p: "
                    "xent.sparse_softmax_cross_entropy(log(p), labels)."))
    for n, (c, note, call) in _XENT_ADAPTERS.items():
        out.append(Name(n, "xent", c, "mean", note, xent=call))
    return out


_HISTORICAL = "historical: not in the installed library, nothing to run"
_SAMPLED = ("random candidates: not comparable at the peer's defaults (test_sampled.py checks "
            "the sampled losses against TensorFlow's with the same candidates)")
_NOT_IN_XENT = "not in xent: no xent call to compare"
_KERAS_PREFIXES = ("keras.losses.", "tf.keras.losses.", "tf.losses.", "tf.compat.v1.keras.losses.",
                   "keras.metrics.", "tf.keras.metrics.", "keras.ops.", "tf.keras.backend.")
_TORCH_ARGS = {"nll": "log_probabilities, labels", "log_loss": "probabilities, labels",
               "linear": "inputs, classifier, labels"}
_UNCHECKED = {
    "torch.nn.functional.kl_div": "a different number by design: the labels' entropy, a "
    "constant (test_regressions_13.py checks cross-entropy = kl_div + entropy)",
    "torch.nn.AdaptiveLogSoftmaxWithLoss": "an approximation with its own cluster layers, not "
    "the same loss",
    "torch.nn.LinearCrossEntropyLoss": "owns its classifier (a Linear submodule): "
    "test_torch_modules.py checks xent.torch.LinearCrossEntropyLoss against it by state dict",
    "liger_kernel.transformers.LigerCrossEntropyLoss": "Triton kernels: needs a CUDA GPU",
    "liger_kernel.transformers.LigerFusedLinearCrossEntropyLoss": "Triton kernels: needs a "
    "CUDA GPU",
    "cut_cross_entropy.linear_cross_entropy": "Triton kernels: needs a CUDA GPU",
    "xent.torch.LinearCrossEntropyLoss": "owns its classifier: test_torch_modules.py checks "
    "it against torch.nn.LinearCrossEntropyLoss by state dict",
    "xent.torch.causal_lm_loss": "shifts the labels by one token: test_hf.py checks it "
    "against transformers' ForCausalLMLoss",
    "xent.parallel.vocab_parallel_cross_entropy": "needs a torch.distributed group or a JAX "
    "axis_name: test_parallel_torch.py / test_parallel_jax.py check it against the unsharded "
    "loss",
    "xent.parallel.vocab_parallel_linear_cross_entropy": "needs a torch.distributed group or a "
    "JAX axis_name: test_parallel_torch.py / test_parallel_jax.py check it against the "
    "unsharded loss",
}
_XENT_PEERS = {  # xent's own names -> the peer call at its defaults
    "xent.torch.CrossEntropyLoss": "torch.nn.CrossEntropyLoss()(logits, labels)",
    "xent.torch.BCEWithLogitsLoss": "torch.nn.BCEWithLogitsLoss()(logits, labels)",
    "xent.keras.SoftmaxCrossEntropy":
        "keras.losses.CategoricalCrossentropy(from_logits=True)(labels, logits)",
    "xent.keras.SparseSoftmaxCrossEntropy":
        "keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)",
    "xent.keras.SigmoidCrossEntropy":
        "keras.losses.BinaryCrossentropy(from_logits=True)(labels, logits)",
}


def _peer(n: Name) -> Name:
    """``n`` with its runnable peer call (or the reason there is none)."""
    name, last = n.name, n.name.rsplit(".", 1)[-1]
    peer, why, labels = None, _UNCHECKED.get(name, ""), ""
    if n.historical:
        why = _HISTORICAL
    elif n.concept in ("sampled_softmax", "nce"):
        why = _SAMPLED
    elif n.xent_call() is None:
        why = _NOT_IN_XENT
    elif why:
        pass
    elif name in _XENT_PEERS:
        peer = _XENT_PEERS[name]
    elif n.library == "xent":
        peer = CONCEPTS[n.concept].pytorch  # xent's mean is PyTorch's
    elif name.startswith(_KERAS_PREFIXES):
        peer = (f"{name}(from_logits=True)(labels, logits)" if last[0].isupper()
                else f"{name}(labels, logits, from_logits=True)")
    elif name.startswith(("tf.nn.", "tf.compat.v2.nn.", "tf.compat.v1.nn.")):
        extra = ", pos_weight=pos_weight" if n.concept == "weighted_sigmoid" else ""
        peer = f"{name}(labels=labels, logits=logits{extra})"
    elif name.startswith("tf.compat.v1.losses."):
        peer = f"{name}(labels, {'probabilities' if n.concept == 'log_loss' else 'logits'})"
    elif name.startswith(("torch.nn.", "torchvision.")):
        args = _TORCH_ARGS.get(n.concept, "logits, labels")
        module = "" if name.startswith(("torch.nn.functional.", "torchvision.")) else "()"
        if last in ("binary_cross_entropy_with_logits", "BCEWithLogitsLoss"):
            # the printed xent call takes weight=: so does the peer
            peer = (f"{name}(weight=weight)({args})" if module
                    else f"{name}({args}, weight=weight)")
        else:
            peer = f"{name}{module}({args})"
        if last in ("soft_margin_loss", "SoftMarginLoss"):
            labels = "plus_minus_one"
    elif n.library == "optax":
        peer = f"{name}(logits, labels)"
    elif name == "sklearn.metrics.log_loss":
        peer = "sklearn.metrics.log_loss(labels, probabilities)"
    if peer is None and not why:
        raise AssertionError(f"{name}: no peer call and no reason")
    return dataclasses.replace(n, peer=peer, unchecked=why, labels=labels)


def _keras_defaults(n: Name) -> Name:
    """Keras's defaults the concept's call lacks: the binary function forms average over
    the last axis; categorical focal multiplies by alpha=0.25."""
    last = n.name.rsplit(".", 1)[-1]
    if n.historical:
        return n
    if last in ("binary_crossentropy", "binary_focal_crossentropy") and n.name.startswith(
            ("keras.losses.", "tf.keras.losses.", "tf.losses.", "tf.compat.v1.keras.losses.",
             "keras.metrics.", "tf.keras.metrics.")):
        return dataclasses.replace(n, post=".mean(-1)")
    if last.lower() == "categoricalfocalcrossentropy".lower() or \
            last == "categorical_focal_crossentropy":
        return dataclasses.replace(n, options="sample_weight=0.25")
    return n


NAMES: tuple[Name, ...] = tuple(_peer(_keras_defaults(n)) for n in _names())
_BY_NAME: dict[str, Name] = {}
for _n in NAMES:
    _BY_NAME.setdefault(_n.name, _n)

_ALIASES = (("tensorflow.", "tf."), ("F.", "torch.nn.functional."),
            ("functional.", "torch.nn.functional."), ("nn.", "torch.nn."))


def lookup(name: str) -> Name:
    """The table entry for a name from any library (full, aliased or bare)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got a {type(name).__name__}")
    q = re.sub(r"\(.*\)$", "", name.strip())
    for short, full in _ALIASES:
        if q.startswith(short):
            q = full + q[len(short):]
            break
    if q in _BY_NAME:
        return _BY_NAME[q]
    for fold in (False, True):
        key = q.lower() if fold else q
        hits = [n for n in NAMES
                if (n.name.lower() if fold else n.name) == key
                or (n.name.rsplit(".", 1)[-1].lower() if fold
                    else n.name.rsplit(".", 1)[-1]) == key]
        current = [n for n in hits if not n.historical]
        if current or hits:
            return (current or hits)[0]
    raise ValueError(unknown_message(name))


def unknown_message(name: str) -> str:
    pool = sorted({n.name for n in NAMES} | {n.name.rsplit(".", 1)[-1] for n in NAMES})
    close = difflib.get_close_matches(name.strip(), pool, n=4, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name.strip().rsplit(".", 1)[-1], pool, n=4,
                                          cutoff=0.5)
    hint = ("did you mean " + ", ".join(repr(c) for c in close) + "?") if close else (
        "known names look like 'F.cross_entropy', 'tf.nn.sampled_softmax_loss', "
        "'SparseCategoricalCrossentropy'; `xent equivalents --list` lists them all")
    return f"unknown cross-entropy name {name!r}: {hint}"
