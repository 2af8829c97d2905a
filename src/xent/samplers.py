"""Candidate samplers for sampled softmax and NCE, with TensorFlow's formulas.

A sampler draws ``num_sampled`` candidate classes from a fixed or learned
distribution ``P`` over ``[0, num_classes)`` and reports how often each true
and sampled class is expected to appear in such a draw (the ``Q`` that
:func:`xent.sampled_softmax_loss` and :func:`xent.nce_loss` correct for):

===========================  =====================================================
``LogUniformSampler(V)``     ``P(k) = (log(k + 2) - log(k + 1)) / log(V + 1)``
                             (Zipfian; TF's ``log_uniform_candidate_sampler``)
``UniformSampler(V)``        ``P(k) = 1 / V`` (TF's ``uniform_candidate_sampler``)
``UnigramSampler(counts,     ``P(k) = counts_k**distortion / sum_j counts_j**distortion``
distortion)``                (TF's ``fixed_unigram_candidate_sampler``)
``LearnedUnigramSampler(V)`` ``P(k) = c_k / sum_j c_j``, ``c_k = 1 + times k was``
                             passed to ``.update`` (TF's
                             ``learned_unigram_candidate_sampler``)
===========================  =====================================================

Expected counts (TF's ``ExpectedCountHelper``, in float32): with
``unique=False`` the ``num_sampled`` draws are independent and the expected
count of class ``k`` is ``num_sampled * P(k)``. With ``unique=True`` draws are
repeated until ``num_sampled`` distinct classes came up, ``num_tries`` being the
number of draws that took, and the expected count is the probability that
``k`` appeared in ``num_tries`` draws, ``-expm1(num_tries * log1p(-P(k)))``
(TensorFlow uses ``num_sampled * P(k)`` when no draw was repeated, and so does
xent).

Randomness: ``rng`` is None, an int seed, a ``numpy.random.Generator``, a
``torch.Generator``, a JAX PRNG key, a ``tf.random.Generator`` or a TensorFlow
stateless seed (an integer ``tf.Tensor`` of shape ``[2]``). Sampling runs in
the library and on the device of ``labels``, with that library's own random
source: NumPy a ``Generator``; torch ``torch.rand`` on that device (the global
generator when ``rng`` is None, so ``torch.manual_seed`` applies); JAX a key, in
one compiled function per sampler kind, class count and ``num_sampled`` (it
also runs inside ``jax.jit``; JAX has no global random state: without ``rng``
JAX labels are a ``ValueError``); TensorFlow stateless draws
(``tf.random.stateless_uniform``) from a seed ``[2]``: the one given, one made
by the ``tf.random.Generator`` given (which advances), ``[seed, 0]`` for an int,
or for None one drawn with ``tf.random.uniform`` (so ``tf.random.set_seed``
applies). TensorFlow labels sample eagerly, inside ``tf.function`` and under
``jit_compile=True`` (the unique loop is a ``tf.while_loop``); there pass a seed
tensor, a ``tf.random.Generator`` or None, since an int seed gives the same
sample on every call. A generator of another library seeds the labels'
library's source eagerly (it advances; inside a traced function it is a
``ValueError``). The same seed gives the same sample in the same library; the
libraries' streams differ from each other and from TensorFlow's.

Unique sampling consumes the draws in chunks of ``max(2 * num_sampled, 64)``:
each chunk is sorted to find first occurrences, and a ``[num_classes]`` boolean
table marks the ids already taken (O(num_classes) memory per call).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from ._core import validate
from ._core.backend import Backend, backend_of, describe, get_backend, to_numpy

__all__ = [
    "Sample",
    "LogUniformSampler",
    "UniformSampler",
    "UnigramSampler",
    "LearnedUnigramSampler",
]


class Sample(NamedTuple):
    """The result of a sampler: TensorFlow's ``sampled_values`` triple.

    ``ids``: ``[num_sampled]`` integer class ids; ``true_expected_count``:
    ``[N, num_true]`` float32 expected counts of the true labels;
    ``sampled_expected_count``: ``[num_sampled]`` float32 expected counts of
    ``ids``.
    """

    ids: Any
    true_expected_count: Any
    sampled_expected_count: Any


def _expected_count(be: Backend, p: Any, num_sampled: int, num_tries: Any) -> Any:
    """TensorFlow's ``ExpectedCountHelper`` in float32.

    ``num_sampled * p`` when ``num_tries == num_sampled`` (always so without
    uniqueness), else ``-expm1(num_tries * log1p(-p))``.
    """
    xp = be.xp
    p = be.astype(p, be.float32)
    tries = num_tries if isinstance(num_tries, int) else be.astype(num_tries, be.float32)
    with np.errstate(divide="ignore"):
        unique = -xp.expm1(tries * xp.log1p(-p))
    if isinstance(num_tries, int):
        return p * float(num_sampled) if num_tries == num_sampled else unique
    return xp.where(num_tries == num_sampled, p * float(num_sampled), unique)


# --------------------------------------------------------------------------
# Random sources: each library's own kind, or another library's seeding it.
# --------------------------------------------------------------------------

_RNG_LIBRARIES = ("numpy", "torch", "jax", "tensorflow")


def _rng_state(be: Backend, like: Any, rng: Any) -> Any:
    """The sampling loop's random state in ``be`` (see ``Backend.rng_state``)."""
    if rng is None or (isinstance(rng, numbers.Integral) and not isinstance(rng, bool)) \
            or be.is_rng(rng):
        return be.rng_state(rng, like)
    for name in _RNG_LIBRARIES:
        if name != be.name and _loaded(name) and get_backend(name).is_rng(rng):
            if not be.is_concrete(like):
                raise ValueError(
                    f"rng is a {name} generator, which cannot advance inside a traced "
                    f"{be.name} function (its draw would be frozen at trace time): pass an "
                    f"int seed or a random source of {be.name}")
            # Another library's generator seeds this one's, eagerly: it advances
            # (a JAX key does not), so the same generator state reproduces.
            return be.rng_state(get_backend(name).seed_of(rng), like)
    raise TypeError(
        "rng must be None, an int seed, a numpy.random.Generator, a torch.Generator, a "
        "JAX PRNG key, a tf.random.Generator or a TensorFlow seed [2], got "
        f"{describe(rng)}")


def _loaded(name: str) -> bool:
    import sys

    return name == "numpy" or name in sys.modules


# --------------------------------------------------------------------------
# The sampler base class: the unique-sampling loop lives here, once.
# --------------------------------------------------------------------------


class _Sampler:
    """Base class: a distribution (``_params``, ``_draw``, ``_probability``) and the sampling loop.

    ``_params(be, like)`` returns the arrays the distribution needs (a table
    on ``like``'s device, or nothing for closed forms); ``_draw`` and
    ``_probability`` take them as arguments so that a jitted JAX sampler is
    compiled once and sees updated counts.
    """

    num_classes: int

    # -- the distribution -------------------------------------------------
    def _params(self, be: Backend, like: Any) -> tuple:
        return ()

    def _draw(self, be: Backend, u: Any, params: tuple) -> Any:  # pragma: no cover - abstract
        """Class ids (``be`` integer array) from uniform floats ``u`` in [0, 1)."""
        raise NotImplementedError

    def _probability(self, be: Backend, ids: Any, params: tuple) -> Any:  # pragma: no cover
        """``P(ids)`` as float32 (computed as TensorFlow computes it)."""
        raise NotImplementedError

    def _support_size(self) -> int:
        """How many classes have a non-zero probability."""
        return self.num_classes

    def probability(self, ids: Any) -> Any:
        """``P(ids)``, float32, in the library and on the device of ``ids``."""
        be, ids = backend_of(ids, "ids")
        with be.device_scope(ids):
            return self._probability(be, ids, self._params(be, ids))

    # -- sampling -----------------------------------------------------------
    def sample(self, labels: Any, num_sampled: int, *, unique: bool = True,
               rng: Any = None) -> Sample:
        """Draw ``num_sampled`` candidates and the expected counts (see the module docstring).

        Args:
          labels: ``[N, num_true]`` (or ``[N]``) integer true classes, whose
            expected counts are reported; their library and device decide
            where sampling happens.
          num_sampled: how many candidates to draw (at most the number of
            classes with non-zero probability when ``unique``).
          unique: sample without replacement (draw until ``num_sampled``
            distinct ids came up) or with it.
          rng: an int seed, ``numpy.random.Generator``, ``torch.Generator``,
            JAX key (required for JAX labels), ``tf.random.Generator`` or
            TensorFlow stateless seed ``[2]``.

        Returns:
          ``Sample(ids [num_sampled], true_expected_count [labels' shape],
          sampled_expected_count [num_sampled])``, ids int64 (JAX without x64:
          int32), counts float32.
        """
        be, labels = backend_of(labels, "labels")
        S = validate.positive_int(num_sampled, "num_sampled")
        unique = bool(unique)
        if unique and S > self._support_size():
            raise ValueError(
                f"num_sampled={S} is larger than the {self._support_size()} classes that can "
                "be drawn; unique sampling needs num_sampled <= that (or unique=False)")
        with be.device_scope(labels):
            state = _rng_state(be, labels, rng)
            params = self._params(be, labels)
            # One compiled sampler (JAX) per kind, class count and size: whatever
            # else the distribution needs travels in `params`.
            fn = be.compiled((type(self), self.num_classes, S, unique),
                             functools.partial(self._sample_with, be, S=S, unique=unique))
            return fn(labels, state, params)

    def _chunk(self, S: int) -> int:
        return max(2 * S, 64)

    def _sample_with(self, be: Backend, labels: Any, state: Any, params: tuple, *, S: int,
                     unique: bool) -> Sample:
        """The sampler as one function of the labels, random state and parameters.

        Unique draws consume chunks of uniforms in ``be.while_loop``: a Python
        loop for NumPy and torch, ``lax.while_loop`` (JAX) and ``tf.while_loop``
        (TensorFlow: also inside ``tf.function`` and under XLA).
        """
        fdt = be.wide_float
        idt = be.index_dtype
        if not unique:
            u, _ = be.uniform(state, S, labels, fdt)
            ids, tries = be.astype(self._draw(be, u, params), idt), S
        else:
            M = self._chunk(S)

            def cond(carry):
                return carry[0][1] < S

            def body(carry):
                st, rs = carry
                u, rs = be.uniform(rs, M, labels, fdt)
                draws = be.astype(self._draw(be, u, params), idt)
                return _unique_step(be, st, draws, S, self.num_classes), rs

            init = (_unique_init(be, labels, S, self.num_classes), state)
            st, _ = be.while_loop(cond, body, init)
            ids, tries = st[0][:S], st[2]
        return Sample(ids, _expected_count(be, self._probability(be, labels, params), S, tries),
                      _expected_count(be, self._probability(be, ids, params), S, tries))


def _unique_init(be: Backend, like: Any, S: int, V_: int):
    """(ids buffer [S + 1], filled, tries, seen [V + 1]); the last slots are write sinks."""
    xp = be.xp
    idt = be.index_dtype
    kw = be.device_kw(like)
    ids = xp.zeros(S + 1, dtype=idt, **kw)
    seen = xp.zeros(V_ + 1, dtype=xp.bool, **kw)
    zero = xp.zeros((), dtype=idt, **kw)
    return ids, zero, zero, seen


def _unique_step(be: Backend, state, draws: Any, S: int, V_: int):
    """Consume one chunk of draws in order, keeping ids not seen before, until S are kept.

    ``tries`` grows by the number of draws consumed: all of the chunk, or up to
    and including the draw that completed the sample (TensorFlow's count).
    """
    xp = be.xp
    ids, n, tries, seen = state
    M = int(draws.shape[0])
    kw = be.device_kw(draws)
    order = be.stable_argsort(draws)
    sd = xp.take(draws, order)
    first_sorted = xp.concat([xp.ones(1, dtype=xp.bool, **kw), sd[1:] != sd[:-1]])
    first = be.scatter(xp.zeros(M, dtype=xp.bool, **kw), order, first_sorted)
    cand = first & ~xp.take(seen, draws)
    rank = xp.cumulative_sum(be.astype(cand, ids.dtype))
    need = S - n
    take = cand & (rank <= need)
    found = rank[-1]
    consumed = xp.sum(be.astype(rank < need, ids.dtype)) + 1
    tries = tries + xp.minimum(consumed, xp.full_like(consumed, M))
    slot = xp.where(take, n + rank - 1, xp.full_like(rank, S))
    ids = be.scatter(ids, slot, draws)
    seen = be.scatter(seen, xp.where(take, draws, xp.full_like(draws, V_)),
                      xp.ones(M, dtype=xp.bool, **kw))
    n = n + xp.minimum(found, need)
    return ids, n, tries, seen


# --------------------------------------------------------------------------
# The samplers.
# --------------------------------------------------------------------------

class LogUniformSampler(_Sampler):
    """Log-uniform (Zipfian) candidates: ``P(k) = (log(k+2) - log(k+1)) / log(V+1)``.

    Suits classes sorted by decreasing frequency (word ids by rank). A draw is
    ``floor(exp(u * log(V + 1))) - 1`` for ``u ~ U[0, 1)`` (mod ``V``), as in
    TensorFlow's ``LogUniformSampler``.

    Example:
      >>> import numpy as np
      >>> from xent.samplers import LogUniformSampler
      >>> s = LogUniformSampler(1000)
      >>> s.probability(np.array([0, 1, 999])).round(6)
      array([0.100329, 0.058689, 0.000145], dtype=float32)
      >>> out = s.sample(np.array([[3], [7]]), 5, rng=0)
      >>> out.ids.shape, out.true_expected_count.shape
      ((5,), (2, 1))
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = validate.positive_int(num_classes, "num_classes")
        self._log_range = math.log(self.num_classes + 1)

    def _draw(self, be, u, params):
        xp = be.xp
        k = xp.floor(xp.exp(u * self._log_range)) - 1
        return xp.remainder(be.astype(k, be.index_dtype), self.num_classes)

    def _probability(self, be, ids, params):
        xp = be.xp
        k = be.astype(ids, be.wide_float)
        return be.astype(xp.log((k + 2.0) / (k + 1.0)) / self._log_range, be.float32)

    def __repr__(self) -> str:
        return f"LogUniformSampler({self.num_classes})"


class UniformSampler(_Sampler):
    """Uniform candidates: ``P(k) = 1 / V`` (TensorFlow's ``uniform_candidate_sampler``).

    Example:
      >>> import numpy as np
      >>> from xent.samplers import UniformSampler
      >>> out = UniformSampler(10).sample(np.array([1, 2]), 4, unique=False, rng=0)
      >>> out.sampled_expected_count
      array([0.4, 0.4, 0.4, 0.4], dtype=float32)
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = validate.positive_int(num_classes, "num_classes")

    def _draw(self, be, u, params):
        xp = be.xp
        k = be.astype(xp.floor(u * self.num_classes), be.index_dtype)
        return xp.minimum(k, xp.full_like(k, self.num_classes - 1))

    def _probability(self, be, ids, params):
        shape = validate.run_shape(ids, validate.shape_of(ids))  # run-time batch: tf.shape
        return be.xp.full(shape, 1.0 / self.num_classes, dtype=be.float32, **be.device_kw(ids))

    def __repr__(self) -> str:
        return f"UniformSampler({self.num_classes})"


class _TableSampler(_Sampler):
    """Samplers over an explicit weight table: inverse-CDF draws, table lookups.

    Tables are kept on the host as float32 weights (TensorFlow's arithmetic)
    and copied once per library and device.
    """

    def _set_weights(self, weights: np.ndarray) -> None:
        w = np.asarray(weights, dtype=np.float32)
        self.num_classes = int(w.shape[0])
        # TensorFlow sums the weights one by one in float32; cumsum does the same.
        self._total = np.cumsum(w, dtype=np.float32)[-1]
        self._prob = (w / self._total).astype(np.float32)
        self._cdf = np.cumsum(w.astype(np.float64))
        self._support = int(np.count_nonzero(w))
        self._tables: dict[Any, tuple[Any, Any]] = {}

    def _support_size(self) -> int:
        return self._support

    def _params(self, be: Backend, like: Any):
        key = (be.name, str(getattr(like, "device", "")))
        t = self._tables.get(key)
        if t is None:
            cdf = be.asarray(self._cdf, like, dtype=be.wide_float)
            prob = be.asarray(self._prob, like, dtype=be.float32)
            t = (cdf, prob)
            if be.is_concrete(like):  # arrays made while tracing must not outlive the trace
                self._tables[key] = t
        return t

    def _draw(self, be, u, params):
        xp = be.xp
        cdf, _ = params
        k = xp.searchsorted(cdf, u * cdf[-1], side="right")
        k = be.astype(k, be.index_dtype)
        return xp.minimum(k, xp.full_like(k, self.num_classes - 1))

    def _probability(self, be, ids, params):
        _, prob = params
        flat = be.xp.reshape(ids, (-1,))
        return be.xp.reshape(be.xp.take(prob, be.astype(flat, be.index_dtype)),
                             validate.run_shape(ids, validate.shape_of(ids)))

    def probabilities(self) -> np.ndarray:
        """The whole distribution ``P`` as a float32 NumPy vector."""
        return self._prob.copy()


class UnigramSampler(_TableSampler):
    """Candidates from fixed counts: ``P(k) ∝ counts_k ** distortion`` (TF's fixed unigram).

    Args:
      counts: ``[V]`` non-negative counts (a sequence or array), or the path
        of a vocabulary file with one class per line whose last
        comma-separated field is its count (TensorFlow's ``vocab_file``).
      distortion: the exponent; 1 keeps the unigram, 0 makes it uniform,
        0.75 is word2vec's choice.
      num_reserved_ids: ids ``[0, num_reserved_ids)`` prepended with count 0
        (never sampled), as TensorFlow's argument of that name.

    Example:
      >>> from xent.samplers import UnigramSampler
      >>> UnigramSampler([1.0, 3.0, 0.0, 4.0], distortion=0.5).probabilities().round(6)
      array([0.211325, 0.366025, 0.      , 0.42265 ], dtype=float32)
    """

    def __init__(self, counts: Any, distortion: float = 1.0, *,
                 num_reserved_ids: int = 0) -> None:
        self.distortion = validate.scalar(distortion, "distortion", low=0.0)
        if isinstance(counts, (str, bytes)) or hasattr(counts, "__fspath__"):
            counts = _read_vocab_counts(counts)
        c = to_numpy(counts).astype(np.float64)
        if c.ndim != 1 or c.shape[0] == 0:
            raise ValueError(f"counts must be a non-empty vector [V], got shape {c.shape}")
        if not np.all(np.isfinite(c)) or np.any(c < 0):
            bad = int(np.argmax(~np.isfinite(c) | (c < 0)))
            raise ValueError(
                f"counts must be finite and non-negative, got {c[bad]} at position {bad}")
        reserved = int(num_reserved_ids)
        w = np.power(c.astype(np.float32), np.float32(self.distortion))
        if reserved:
            w = np.concatenate([np.zeros(reserved, np.float32), w])
        if not np.any(w > 0):
            raise ValueError("counts must have at least one positive entry")
        self._set_weights(w)

    def __repr__(self) -> str:
        return f"UnigramSampler(<{self.num_classes} counts>, distortion={self.distortion})"


def _read_vocab_counts(path: Any) -> np.ndarray:
    counts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            field = line.rsplit(",", 1)[-1]
            try:
                counts.append(float(field))
            except ValueError:
                raise ValueError(
                    f"vocabulary file {path!s} line {lineno}: the last comma-separated field "
                    f"must be a count, got {field!r}") from None
    return np.asarray(counts, dtype=np.float64)


class LearnedUnigramSampler(_TableSampler):
    """Candidates from counts learned from the labels seen (TF's learned unigram).

    Every class starts with count 1; ``.update(labels)`` adds 1 per occurrence,
    and ``P(k) = c_k / sum_j c_j``. TensorFlow's op updates its counts with the
    true classes after each draw; here the caller decides: sample, then
    ``update`` (the counts live on the host, so ``update`` reads the labels
    back from the device).

    Example:
      >>> import numpy as np
      >>> from xent.samplers import LearnedUnigramSampler
      >>> s = LearnedUnigramSampler(4)
      >>> s.update(np.array([2, 2, 3]))
      >>> s.probability(np.array([0, 2])).round(6)
      array([0.142857, 0.428571], dtype=float32)
    """

    def __init__(self, num_classes: int) -> None:
        n = validate.positive_int(num_classes, "num_classes")
        self.counts = np.ones(n, dtype=np.int64)
        self._set_weights(self.counts)

    def update(self, labels: Any) -> None:
        """Add 1 to the count of each class in ``labels`` (any shape, repeats count)."""
        be, labels = backend_of(labels, "labels")
        flat = to_numpy(labels).reshape(-1)
        if flat.size and (flat.dtype.kind not in "iu"):
            raise TypeError(f"labels must hold integer class ids, got dtype {flat.dtype}")
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_classes):
            pos = int(np.argmax((flat < 0) | (flat >= self.num_classes)))
            raise ValueError(
                f"labels must be class ids in [0, {self.num_classes}), got {flat[pos]} at "
                f"flat position {pos}")
        np.add.at(self.counts, flat, 1)
        self._set_weights(self.counts)

    def __repr__(self) -> str:
        return f"LearnedUnigramSampler({self.num_classes})"


def as_sampler(sampler: Any, num_classes: int) -> _Sampler:
    """``"log_uniform"``, ``"uniform"`` or a sampler object, checked against ``num_classes``."""
    if isinstance(sampler, str):
        if sampler == "log_uniform":
            return LogUniformSampler(num_classes)
        if sampler == "uniform":
            return UniformSampler(num_classes)
        raise ValueError(
            f"sampler must be 'log_uniform', 'uniform' or a sampler object, got {sampler!r}")
    if not hasattr(sampler, "sample") or not hasattr(sampler, "num_classes"):
        raise TypeError(
            "sampler must be 'log_uniform', 'uniform' or an xent.samplers object with "
            f".sample() and .num_classes, got {describe(sampler)}")
    if int(sampler.num_classes) != num_classes:
        raise ValueError(
            f"sampler draws from {sampler.num_classes} classes but classifier has "
            f"{num_classes} rows; they must agree")
    return sampler
