"""The bundled example data set (``src/xent/data/example.npz``)."""

from __future__ import annotations

from importlib import resources

import numpy as np

SITUATIONS = ("binary", "multiclass", "multilabel", "soft")


def load_example() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{situation: (logits, labels)}`` for the four bundled situations."""
    with resources.files("xent").joinpath("data/example.npz").open("rb") as f:
        data = np.load(f)
        return {s: (data[f"{s}_logits"], data[f"{s}_labels"]) for s in SITUATIONS}
