"""Turn benchmark rows into a terminal table, a CSV, a PNG plot and RESULTS.md.

A *row* is a dict with ``case`` (a :class:`benchmarks.registry.Case`), ``size``
(a dict), ``backward`` and the worker's figures (``time_s``, ``extra_bytes``,
``mem_ratio`` ... or ``error``). Rows of the same group, size and mode form a
*block*; within a block every xent row gets its time and memory as a ratio of
each peer's (``< 1`` means xent is faster / leaner).
"""

from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MARKDOWN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def size_label(size: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in size.items())


def mode_label(backward: bool) -> str:
    return "fwd+bwd" if backward else "fwd"


def blocks(rows: list[dict]) -> "OrderedDict[tuple, list[dict]]":
    """Rows grouped by (group, size, mode), peers first, in registration order."""
    out: OrderedDict[tuple, list[dict]] = OrderedDict()
    for r in rows:
        out.setdefault((r["case"].group, size_label(r["size"]), r["backward"]), []).append(r)
    for k in out:
        out[k].sort(key=lambda r: not r["case"].peer)
    return out


def _ms(r: dict, key: str = "time_s") -> str:
    return f"{r[key] * 1e3:.1f}" if key in r else "-"


def _mb(r: dict) -> str:
    return f"{r['extra_bytes'] / 2**20:.0f}" if "extra_bytes" in r else "-"


def _mem_ratio(r: dict) -> str:
    v = r.get("mem_ratio")
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _ratio(a: dict, b: dict, key: str) -> str:
    if key not in a or key not in b or not b[key]:
        return "-"
    return f"{a[key] / b[key]:.2f}"


def short(impl: str) -> str:
    """A column label for a peer: its library, plus the dtype when not float32."""
    lib = impl.split()[0].split(".")[0]
    if "chunked" in impl:
        lib += " chunked"
    if "bfloat16" in impl:
        lib += " bf16"
    elif "float16" in impl:
        lib += " fp16"
    return lib


def is_floor(r: dict) -> bool:
    """The floor row of a dense group (an allocating elementwise exp of the logits)."""
    return r["case"].impl.startswith("floor")


def _block_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    floor = next((r for r in rows if is_floor(r) and "error" not in r), None)
    peers = [r for r in rows if r["case"].peer and "error" not in r and not is_floor(r)]
    head = ["impl", "time ms", "cpu ms", "extra MB", "mem/input"]
    if floor is not None:
        head.append("t÷floor")
    head += [f"t÷{short(p['case'].impl)}" for p in peers]
    head += [f"m÷{short(p['case'].impl)}" for p in peers]
    body = []
    for r in rows:
        line = [r["case"].impl + ("" if "error" not in r else f"  ERROR: {r['error'][:80]}"),
                _ms(r), _ms(r, "cpu_s"), _mb(r), _mem_ratio(r)]
        if floor is not None:
            line.append(_ratio(r, floor, "time_s"))
        if r["case"].peer:
            line += [""] * (2 * len(peers))
        else:
            line += [_ratio(r, p, "time_s") for p in peers]
            line += [_ratio(r, p, "extra_bytes") for p in peers]
        body.append(line)
    return head, body


def format_tables(rows: list[dict]) -> str:
    """The terminal tables: one per (group, size, mode)."""
    out = []
    for (group, size, bwd), rs in blocks(rows).items():
        head, body = _block_table(rs)
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        out.append(f"\n== {group}  [{size}]  {mode_label(bwd)}")
        out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for line in body:
            out.append("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    out.append("\nt÷peer / m÷peer: xent's time / extra memory divided by the peer's (< 1: xent "
               "is faster / leaner); mem/input: extra peak memory / bytes of the main input; "
               "t÷floor: time divided by the floor row's (an allocating torch.exp of the "
               "logits: the memory traffic of writing the gradient).")
    return "\n".join(out)


FIELDS = ["timestamp", "machine", "versions", "size_key", "group", "impl", "peer", "size",
          "mode", "reps", "warmup", "time_s", "cpu_s", "time_min_s", "time_max_s", "extra_bytes",
          "input_bytes", "mem_ratio", "mem_method", "note", "error"]


def write_csv(path: str, rows: list[dict], info: dict, size_key: str, reps: int,
              warmup: int) -> None:
    vers = ";".join(f"{k}={v}" for k, v in info["versions"].items())
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            c = r["case"]
            w.writerow({
                "timestamp": info["timestamp"], "machine": info["machine"], "versions": vers,
                "size_key": size_key, "group": c.group, "impl": c.impl, "peer": int(c.peer),
                "size": size_label(r["size"]), "mode": mode_label(r["backward"]),
                "reps": reps, "warmup": warmup,
                **{k: r.get(k, "") for k in ("time_s", "cpu_s", "time_min_s", "time_max_s",
                                             "extra_bytes", "input_bytes", "mem_ratio",
                                             "mem_method", "error")},
                "note": c.note,
            })


class _Saved:
    """The parts of a registry Case that a saved CSV row remembers."""

    def __init__(self, group: str, impl: str, peer: bool, note: str) -> None:
        self.group, self.impl, self.peer, self.note = group, impl, peer, note


def read_csv(paths: list[str]) -> tuple[list[dict], dict]:
    """Rows (and the first row's machine info) back from CSVs written by :func:`write_csv`.

    Where several CSVs hold the same job (group, impl, size, mode), the last
    one given wins, so a re-measured row replaces the old one.
    """
    rows, info = [], None
    for path in paths:
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                size = {}
                for part in rec["size"].split():
                    k, _, v = part.partition("=")
                    size[k] = int(v) if v.lstrip("-").isdigit() else v
                row = {"case": _Saved(rec["group"], rec["impl"], rec["peer"] == "1", rec["note"]),
                       "size": size, "backward": rec["mode"] == "fwd+bwd"}
                for k in ("time_s", "cpu_s", "time_min_s", "time_max_s", "mem_ratio"):
                    if rec.get(k):
                        row[k] = float(rec[k])
                for k in ("extra_bytes", "input_bytes"):
                    if rec.get(k):
                        row[k] = int(float(rec[k]))
                if rec.get("error"):
                    row["error"] = rec["error"]
                if rec.get("mem_method"):
                    row["mem_method"] = rec["mem_method"]
                rows.append(row)
                if info is None:
                    vers = dict(x.split("=", 1) for x in rec["versions"].split(";") if "=" in x)
                    info = {"machine": rec["machine"], "versions": vers,
                            "timestamp": rec["timestamp"], "reps": int(rec["reps"] or 0),
                            "size_key": rec["size_key"]}
    # a later CSV's measurement of the same job replaces an earlier one
    latest: OrderedDict[tuple, dict] = OrderedDict()
    for r in rows:
        latest[(r["case"].group, r["case"].impl, size_label(r["size"]), r["backward"])] = r
    return list(latest.values()), info or {}


def _x(r: dict) -> float:
    """Problem size: the product of the size's numbers (elements of the logits)."""
    v = 1
    for x in r["size"].values():
        if isinstance(x, (int, float)):
            v *= x
    return float(v)


def good_first(series: dict) -> dict:
    return next(iter(series.values()))[0]


def write_plot(path: str, rows: list[dict]) -> bool:
    """Time and extra memory against problem size, one pair of panels per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "time_s" in r]
    groups = list(OrderedDict.fromkeys(r["case"].group for r in good))
    if not groups:
        return False
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 4.2 * len(groups)), squeeze=False)
    for gi, g in enumerate(groups):
        series: OrderedDict[tuple, list] = OrderedDict()
        for r in good:
            if r["case"].group == g:
                series.setdefault((r["case"].impl, r["backward"], r["case"].peer), []).append(r)
        colors = plt.get_cmap("tab20").colors
        if all(len(rs) == 1 for rs in series.values()):  # one size: bars, one per series
            labels = [f"{impl} ({mode_label(bwd)})" for impl, bwd, _ in series]
            ys = list(range(len(labels)))
            for j, key in enumerate(("time_s", "extra_bytes")):
                ax = axes[gi, j]
                vals = [rs[0][key] * (1e3 if j == 0 else 1 / 2**20) for rs in series.values()]
                cols = [colors[i % len(colors)] for i in ys]
                ax.barh(ys, vals, color=cols,
                        alpha=0.95, edgecolor="black",
                        linewidth=[0.0 if p else 1.5 for _, _, p in series])
                for y, v in zip(ys, vals):
                    ax.text(v, y, f" {v:.0f}", va="center", fontsize=7)
                ax.set_yticks(ys)
                ax.set_yticklabels(labels if j == 0 else [], fontsize=7)
                ax.invert_yaxis()
                ax.set_xlabel("median time (ms)" if j == 0 else "peak extra memory (MiB)")
                ax.set_title(f"{g} [{size_label(good_first(series)['size'])}]: "
                             f"{'time' if j == 0 else 'memory'} (xent outlined)")
                ax.grid(True, axis="x", alpha=0.3)
            continue
        for si, ((impl, bwd, peer), rs) in enumerate(series.items()):
            rs = sorted(rs, key=_x)
            xs = [_x(r) for r in rs]
            style = dict(color=colors[si % len(colors)], marker="o" if bwd else "s",
                         linestyle="-" if bwd else ":",
                         linewidth=2.2 if not peer else 1.2, alpha=1.0 if not peer else 0.8)
            label = f"{impl} ({mode_label(bwd)})"
            axes[gi, 0].plot(xs, [r["time_s"] * 1e3 for r in rs], label=label, **style)
            axes[gi, 1].plot(xs, [r["extra_bytes"] / 2**20 for r in rs], label=label, **style)
        xlabel = "problem size (" + " x ".join(good[0]["size"]) + ")"
        for j, (yl, title) in enumerate((("median time (ms)", "time"),
                                         ("peak extra memory (MiB)", "memory"))):
            ax = axes[gi, j]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(yl)
            ax.set_title(f"{g}: {title}")
            ax.grid(True, which="both", alpha=0.3)
        if series:
            axes[gi, 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_markdown(rows: list[dict], info: dict, size_key: str, reps: int, argv: list[str],
                   csv_path: str, path: str = MARKDOWN) -> str:
    """``benchmarks/RESULTS.md``: the figures of this run, ready for the README."""
    lines = [
        "# Benchmark results",
        "",
        f"- machine: {info['machine']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- run: {info['timestamp']}, sizes `{size_key}`, median of {reps} runs after warm-up",
        (f"- reproduce: `python -m benchmarks --sizes {size_key}` (every case; these tables were "
         f"rebuilt from the CSVs below with `python -m benchmarks {' '.join(argv)}`)"
         if argv[:1] == ["--from-csv"] else
         f"- reproduce: `python -m benchmarks {' '.join(argv)}`".rstrip()),
        "- raw data: " + ", ".join(f"`{os.path.relpath(c, os.path.dirname(path))}`"
                                   for c in ([csv_path] if isinstance(csv_path, str) else csv_path)),
        "",
        "`time` is the median wall-clock time of one step, `cpu` its CPU time over all threads; `extra` the peak resident memory "
        "beyond the inputs during the steps (kernel high-water mark); `mem/input` that memory "
        "divided by the bytes of the main input (the logits); `t÷X` and `m÷X` xent's time and "
        "extra memory divided by peer X's (below 1: xent is faster / leaner).",
    ]
    for (group, size, bwd), rs in blocks(rows).items():
        head, body = _block_table(rs)
        lines += ["", f"### {group}, {size}, {mode_label(bwd)}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(x if x else " " for x in line) + " |" for line in body]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
