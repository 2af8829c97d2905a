"""The benchmark case registry: the one interface between case modules and the runner.

A case module (``benchmarks/cases/<group>.py``) declares implementations with
:func:`case`. Each decorated function gets a problem size (a dict) and whether
to include the backward pass, sets up its data, and returns a zero-argument
callable that runs one step to completion (blocking: ``.block_until_ready()``
for JAX, ``.numpy()`` or a scalar read for TensorFlow). The runner times that
callable in a fresh process and measures peak memory around it.

    @case(group="dense_sparse", impl="torch F.cross_entropy", peer=True,
          sizes={"quick": [dict(n=1024, c=4096)], "full": [dict(n=8192, c=32768)]})
    def torch_peer(size, backward):
        ...
        return step

``group`` collects implementations of the same problem; ``peer=True`` marks a
reference implementation (another library) that xent's rows are compared to;
``baseline`` names the implementation that ratios in the group are taken
against by default. ``size_bytes(size)`` optionally reports the size of the
main input (for memory ratios such as "extra memory / logits").
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

Step = Callable[[], Any]


@dataclass
class Case:
    group: str
    impl: str
    fn: Callable[[dict, bool], Step]
    sizes: dict[str, list[dict]]
    peer: bool = False
    backward: tuple[bool, ...] = (False, True)
    input_bytes: Callable[[dict], int] | None = None
    note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        return f"{self.group}/{self.impl}"


CASES: list[Case] = []


def case(*, group: str, impl: str, sizes: dict[str, list[dict]], peer: bool = False,
         backward: tuple[bool, ...] = (False, True),
         input_bytes: Callable[[dict], int] | None = None, note: str = "",
         tags: tuple[str, ...] = ()) -> Callable:
    """Register an implementation of a benchmark problem (see the module docstring)."""

    def deco(fn: Callable[[dict, bool], Step]) -> Callable[[dict, bool], Step]:
        CASES.append(Case(group, impl, fn, sizes, peer, backward, input_bytes, note, tags))
        return fn

    return deco


def load_all() -> list[Case]:
    """Import every module under ``benchmarks.cases`` and return the registry."""
    from . import cases

    for mod in pkgutil.iter_modules(cases.__path__):
        importlib.import_module(f"{cases.__name__}.{mod.name}")
    return CASES


def find(key: str) -> Case:
    for c in load_all():
        if c.key == key:
            return c
    raise KeyError(key)
