"""The ``xent`` command (also ``python -m xent``).

Subcommands: ``demo`` (the bundled example data), ``choose``, ``check`` and
``equivalents`` (the functions of the same names, see ``docs/choosing.md``).
Exit codes: 0 when all is well, 1 when ``check`` finds an error-severity
finding, 2 for bad usage or unreadable files, always with a one-line message on
stderr and never a traceback. ``--json`` prints machine-readable output;
colour is used only on a terminal, never with ``NO_COLOR`` set or ``TERM=dumb``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np


class UsageError(Exception):
    """Bad usage or an unreadable file: exit code 2 with a one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# -- output -------------------------------------------------------------------------

class _Style:
    CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(self.CODES[s] for s in styles)
        return f"\033[{codes}m{text}\033[0m"


def _use_color(mode: str, stream: Any) -> bool:
    if mode in ("always", "never"):
        return mode == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def _wrap(text: str, indent: str = "  ") -> str:
    width = max(40, min(100, shutil.get_terminal_size((100, 24)).columns) - 1)
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def _json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# -- reading arrays --------------------------------------------------------------------

def load_array(spec: str, role: str) -> np.ndarray | Any:
    """An array from ``.npy``, ``.npz`` (``FILE.npz:KEY`` picks one), ``.csv`` or ``.pt``."""
    path, key = spec, None
    base, sep, tail = spec.rpartition(":")
    if sep and base.lower().endswith((".npz", ".pt", ".pth")):
        path, key = base, tail
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    ext = p.suffix.lower()
    try:
        if ext == ".npy":
            return np.load(p, allow_pickle=False)
        if ext == ".npz":
            with np.load(p, allow_pickle=False) as data:
                return data[_pick(list(data.keys()), key, role, path)]
        if ext in (".csv", ".txt"):
            return _read_csv(p)
        if ext in (".pt", ".pth"):
            return _read_torch(p, key, role)
    except UsageError:
        raise
    except Exception as err:  # any reader failure is an unreadable file
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot read {path}: {msg}") from None
    raise UsageError(f"cannot read {path}: unsupported file type {ext or '(none)'!r}; "
                     "use .npy, .npz, .csv or .pt")


def _pick(keys: list, key: str | None, role: str, path: str) -> str:
    if key is not None:
        if key not in keys:
            raise UsageError(f"cannot read {path}: no array {key!r} in it (it has "
                             f"{', '.join(map(str, keys))})")
        return key
    if len(keys) == 1:
        return keys[0]
    if role in keys:
        return role
    raise UsageError(f"cannot read {path}: it holds several arrays ({', '.join(map(str, keys))}); "
                     f"pick one as {path}:NAME")


def _read_csv(p: Path) -> np.ndarray:
    text = p.read_text()
    try:
        x = np.loadtxt(p, delimiter=",", ndmin=1)
    except ValueError:
        x = np.loadtxt(p, delimiter=",", ndmin=1, skiprows=1)  # a header line
    numeric = text.split("\n", 1)[1] if not _is_numeric_line(text.split("\n", 1)[0]) else text
    if x.size and not any(c in numeric.lower() for c in ".ena") and np.all(x == np.round(x)):
        return x.astype(np.int64)
    return x


def _is_numeric_line(line: str) -> bool:
    try:
        [float(v) for v in line.split(",") if v.strip()]
        return True
    except ValueError:
        return False


def _read_torch(p: Path, key: str | None, role: str) -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(f"cannot read {p}: .pt files need PyTorch (pip install torch)") from None
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        obj = obj[_pick(list(obj.keys()), key, role, str(p))]
    if not isinstance(obj, torch.Tensor):
        raise UsageError(f"cannot read {p}: it holds a {type(obj).__name__}, not a tensor")
    return obj


# -- subcommands --------------------------------------------------------------------------

def _demo(args: argparse.Namespace, style: _Style) -> int:
    import xent

    from ._guide.data import load_example

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
    print(style("xent on the bundled example data (mean loss per example):", "bold"))
    for situation, fn, value in rows:
        print(f"  {situation:<12} {fn:<30} {float(value):.4f}")
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:  # the same call on a tf.Tensor
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # TensorFlow's C++ start-up notes (absl, oneDNN) go to file descriptor 2
        # whatever the log level says: keep them out of the demo's output
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
                import tensorflow as tf

                z, y = data["multiclass"]
                v = xent.sparse_softmax_cross_entropy(tf.constant(z), tf.constant(y))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        print(f"  {'on TF':<12} {'sparse_softmax_cross_entropy':<30} {float(v):.4f} (tf.Tensor)")
    names = dict(zip(("binary", "multiclass", "multilabel", "soft"),
                     ("binary", "multi-class", "multi-label", "soft labels")))
    print(style("\nxent.choose(labels): which loss, with weights for the imbalance:", "bold"))
    for key, (z, y) in data.items():
        print(f"  {names[key]:<12} {style(xent.choose(y).code, 'cyan')}")
    print(style("\nxent.check(logits, labels): the known mistakes:", "bold"))
    for key, (z, y) in data.items():
        found = xent.check(z, y)
        if not found:
            print(f"  {names[key]:<12} no findings")
        for i, f in enumerate(found):
            head = names[key] if i == 0 else ""
            print(f"  {head:<12} {f.severity} {f.code}: {_one_line_message(f.message)}")
    z, y = data["multiclass"]
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    found = [f for f in xent.check(p, y) if f.severity == "error"]
    print(f"  {'softmax(z)':<12} {style(found[0].severity, 'red')} {found[0].code}: "
          "probabilities given as logits are caught")
    print(style("\nNext:", "bold") + " xent choose --labels FILE, xent check LOGITS LABELS, "
          "xent equivalents NAME (docs/choosing.md)")
    return 0


def _print_equivalents(e: Any, style: _Style) -> None:
    for label, value in (("xent", e.xent), ("TensorFlow", e.tensorflow),
                         ("PyTorch", e.pytorch), ("Keras", e.keras), ("optax", e.optax)):
        shown = style(value, "cyan") if value else style("none", "dim")
        print(f"  {label:<11} {shown}")


def _choose(args: argparse.Namespace, style: _Style) -> int:
    import xent

    if args.labels is None and args.task is None and args.classes is None \
            and args.exclusive is None and args.soft is None:
        raise UsageError("xent choose: give --labels FILE or describe the labels with "
                         "--task/--classes/--exclusive/--soft (see xent choose --help)")
    labels = load_array(args.labels, "labels") if args.labels is not None else None
    rec = xent.choose(labels, task=args.task, num_classes=args.classes,
                      exclusive=args.exclusive, soft=args.soft, imbalanced=args.imbalanced)
    if args.json:
        _json(dataclasses.asdict(rec))
        return 0
    print(style("Use ", "bold") + style(rec.function, "bold", "cyan"))
    print("  " + style(rec.code, "cyan"))
    print(style("Why", "bold"))
    print(_wrap(rec.reason))
    if rec.alternatives:
        print(style("Alternatives", "bold") + "  " + ", ".join(rec.alternatives))
    print(style("Equivalents", "bold"))
    _print_equivalents(rec.equivalents, style)
    return 0


def _check(args: argparse.Namespace, style: _Style) -> int:
    import xent

    logits = load_array(args.logits, "logits")
    labels = load_array(args.labels, "labels")
    found = xent.check(logits, labels, loss=args.loss)
    errors = sum(f.severity == "error" for f in found)
    if args.json:
        _json({"ok": errors == 0, "findings": [dataclasses.asdict(f) for f in found]})
        return 1 if errors else 0
    for f in found:
        color = "red" if f.severity == "error" else "yellow"
        print(style(f"{f.severity:<8}", "bold", color) + style(f.code, "bold"))
        print(_wrap(f.message, "         "))
    if not found:
        print(style("ok", "bold", "green") + f"  no problems found in {args.logits} and "
              f"{args.labels}")
    else:
        warnings = len(found) - errors
        summary = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        print(style(summary, "bold", "red" if errors else "yellow"))
    return 1 if errors else 0


def _equivalents(args: argparse.Namespace, style: _Style) -> int:
    import xent

    from ._guide import table as _table

    if args.list:
        if args.json:
            _json([{"name": n.name, "library": n.library, "xent": n.xent_call(),
                    "historical": n.historical} for n in _table.NAMES])
            return 0
        for n in _table.NAMES:
            tag = style(" (historical)", "dim") if n.historical else ""
            print(f"{n.name}{tag}")
        return 0
    if args.name is None:
        raise UsageError("xent equivalents: give a NAME (or --list) (see xent equivalents "
                         "--help)")
    e = xent.equivalents(args.name)
    entry = _table.lookup(args.name)
    if args.json:
        _json({"name": entry.name, "historical": entry.historical, "note": entry.note,
               **dataclasses.asdict(e), "same_number_as": entry.peer,
               "unchecked": entry.unchecked})
        return 0
    tag = " (historical: no longer in the library)" if entry.historical else ""
    print(style(entry.name, "bold") + style(tag, "yellow"))
    if entry.note:
        print(_wrap(entry.note))
    _print_equivalents(e, style)
    if entry.peer:
        print(style("Same number as", "bold") + "  " + style(entry.peer, "cyan")
              + " (at its defaults; checked by xent's tests)")
    elif entry.unchecked:
        print(style("Not checked", "bold") + "  " + entry.unchecked)
    return 0


# -- main ------------------------------------------------------------------------------------

def _parser() -> _Parser:
    parser = _Parser(prog="xent", description="The cross-entropy family, and which one to use.")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the output (auto: on a terminal without NO_COLOR)")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"xent {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p = sub.add_parser("demo", help="run xent, choose and check on the bundled example data")
    p.set_defaults(func=_demo)
    p = sub.add_parser("choose", help="which cross-entropy fits these labels",
                       description="Which cross-entropy fits the labels in FILE, or the "
                       "labels described by --task/--classes/--exclusive/--soft.")
    p.add_argument("--labels", metavar="FILE", help=".npy, .npz[:KEY], .csv or .pt labels")
    p.add_argument("--task", help="binary, multiclass, onehot, soft, multilabel or huge")
    p.add_argument("--classes", type=int, metavar="N", help="number of classes")
    p.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None,
                   help="exactly one class per example (--no-exclusive: multi-label)")
    p.add_argument("--soft", action=argparse.BooleanOptionalAction, default=None,
                   help="labels are probabilities")
    p.add_argument("--imbalanced", action=argparse.BooleanOptionalAction, default=None,
                   help="always (or, with --no-imbalanced, never) suggest class weights")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_choose)
    p = sub.add_parser("check", help="look for the known mistakes in logits and labels",
                       description="Look for the known cross-entropy mistakes; exit code 1 "
                       "when one of error severity is found.")
    p.add_argument("logits", metavar="LOGITS", help=".npy, .npz[:KEY], .csv or .pt logits")
    p.add_argument("labels", metavar="LABELS", help=".npy, .npz[:KEY], .csv or .pt labels")
    p.add_argument("--loss", metavar="NAME", help="the loss you mean to use (any known name)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_check)
    p = sub.add_parser("equivalents", help="a loss name in xent, TensorFlow, PyTorch, Keras, "
                       "optax", description="Map a cross-entropy name from any library to "
                       "the xent call and its peers.")
    p.add_argument("name", metavar="NAME", nargs="?", help='e.g. "F.cross_entropy"')
    p.add_argument("--list", action="store_true", help="list every known name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_equivalents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``xent`` command; returns the exit code (0 fine, 1 check error, 2 usage)."""
    parser = _parser()
    args = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help and --version exit 0
            return 0 if exc.code in (0, None) else 2
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args, _Style(_use_color(args.color, sys.stdout)))
    except UsageError as err:
        print(f"xent: {err}" if not str(err).startswith("xent") else str(err), file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:
        command = f" {args.command}" if args is not None else ""
        print(f"xent{command}: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`xent demo | head`): stop quietly, like other tools;
        # point stdout at devnull so the interpreter's final flush does not complain
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # never a traceback
        print(f"xent: unexpected {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line_message(text: str) -> str:
    """The first sentence of a finding's message, on one line."""
    text = " ".join(str(text).split())
    return text.split(". ")[0].rstrip(".")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
