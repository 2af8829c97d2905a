"""Regenerate src/xent/data/example.npz, the small bundled example data set.

Four situations a practitioner meets, each with model logits and labels:
binary (0/1 labels, 5% positives), multi-class (integer labels over 10
classes), multi-label (multi-hot over 6 tags) and soft labels (rows of
probabilities from annotator votes). Run: python scripts/make_example_data.py
"""

from pathlib import Path

import numpy as np


def main() -> None:
    rng = np.random.default_rng(20261127)
    n = 256
    # binary, imbalanced: 5% positives; logits from a weak but real model
    yb = (rng.random(n) < 0.05).astype(np.int64)
    zb = rng.normal(-2.0, 1.0, n) + 3.0 * yb
    # multi-class over 10 classes, Zipf-ish class frequencies
    freq = 1.0 / np.arange(1, 11)
    ym = rng.choice(10, size=n, p=freq / freq.sum())
    zm = rng.normal(0.0, 1.0, (n, 10))
    zm[np.arange(n), ym] += 2.5
    # multi-label: 6 tags, each on with its own rate
    rates = np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.02])
    yl = (rng.random((n, 6)) < rates).astype(np.float32)
    zl = rng.normal(0.0, 1.0, (n, 6)) + 2.0 * (yl - 0.5)
    # soft labels: 5 annotators voting over 4 classes
    votes = np.stack([rng.multinomial(5, [0.6, 0.2, 0.1, 0.1]) for _ in range(n)])
    ys = votes / 5.0
    zs = rng.normal(0.0, 1.0, (n, 4)) + 2.0 * ys
    out = Path(__file__).resolve().parents[1] / "src" / "xent" / "data" / "example.npz"
    np.savez_compressed(
        out,
        binary_logits=zb.astype(np.float32), binary_labels=yb,
        multiclass_logits=zm.astype(np.float32), multiclass_labels=ym.astype(np.int64),
        multilabel_logits=zl.astype(np.float32), multilabel_labels=yl,
        soft_logits=zs.astype(np.float32), soft_labels=ys.astype(np.float32),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
