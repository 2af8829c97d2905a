"""The ``xent`` command (also ``python -m xent``)."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    import xent

    from ._data import load_example

    data = load_example()
    rows = []
    z, y = data["binary"]
    rows.append(("binary", "sigmoid_cross_entropy", xent.sigmoid_cross_entropy(z, y.astype("float32"))))
    z, y = data["multiclass"]
    rows.append(("multi-class", "sparse_softmax_cross_entropy", xent.sparse_softmax_cross_entropy(z, y)))
    z, y = data["multilabel"]
    rows.append(("multi-label", "sigmoid_cross_entropy", xent.sigmoid_cross_entropy(z, y)))
    z, y = data["soft"]
    rows.append(("soft labels", "softmax_cross_entropy", xent.softmax_cross_entropy(z, y)))
    print("xent on the bundled example data (mean loss per example):")
    for situation, fn, value in rows:
        print(f"  {situation:<12} {fn:<30} {float(value):.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xent", description="The cross-entropy family, and which one to use.")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("demo", help="run xent on the bundled example data")
    p.set_defaults(func=_demo)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
