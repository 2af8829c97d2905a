"""``python -m benchmarks``: xent and its peers side by side, time and peak memory.

Examples::

    python -m benchmarks --quick                      # about a minute
    python -m benchmarks                              # the "full" sizes (headline)
    python -m benchmarks --sizes sweep --group dense_sparse
    python -m benchmarks --impl torch --impl optax --reps 5
    python -m benchmarks --list

Every job runs in a fresh process (see :mod:`benchmarks.runner` for the
measurement method); ``--rounds K`` runs the whole list K times, so that xent
and its peers alternate and no ratio rests on one process's allocator luck. Results go to the terminal (a table per problem with
ratios of xent against each peer), and into the output directory (``--out DIR``;
default ``$XENT_BENCH_OUT`` or ``$TMPDIR/xent-bench``, outside the source tree):
``<stamp>-<sizes>.csv`` (machine, versions and a UTC timestamp on every row), a
PNG plot (time and memory against problem size; bars when a case has one
size) and ``RESULTS.md``. The committed ``benchmarks/RESULTS.md`` (and its CSV
under ``benchmarks/results/``) is written only with ``--write-results``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from .registry import load_all
from .report import (MARKDOWN, RESULTS_DIR, format_tables, read_csv, write_csv, write_markdown,
                     write_plot)
from .runner import machine, run_job, versions


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in at most a minute: the cases' quick sizes, 1 warm-up "
                        "and 2 reps, every job in this one process (memory less exact)")
    p.add_argument("--fresh", action="store_true",
                   help="with --quick: still run every job in a fresh process")
    p.add_argument("--sizes", default=None,
                   help="which size list of each case to run: quick, full, sweep "
                        "(default: full, or quick with --quick)")
    p.add_argument("--size", action="append", default=[], metavar="K=V,K=V",
                   help="run this problem size instead of the case's lists, e.g. "
                        "--size n=2048,c=32768 (repeatable)")
    p.add_argument("--group", action="append", default=[],
                   help="run only groups containing this substring (repeatable)")
    p.add_argument("--impl", action="append", default=[],
                   help="run only implementations containing this substring (repeatable)")
    p.add_argument("--mode", choices=("forward", "backward", "both"), default="both",
                   help="forward only, forward+backward only, or both (default)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per job (median)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before timing")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per job")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole job list this many times, each job in a fresh process "
                        "every round, xent and its peers alternating; a job's time is the "
                        "median of its rounds' medians (default 1)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory for the CSV, plot and RESULTS.md (default "
                        "$XENT_BENCH_OUT or $TMPDIR/xent-bench)")
    p.add_argument("--write-results", action="store_true",
                   help="also write the committed benchmarks/RESULTS.md and its CSV under "
                        "benchmarks/results/ (never without this flag)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--no-markdown", action="store_true",
                   help="write no RESULTS.md at all")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--from-csv", nargs="+", metavar="CSV", default=None,
                   help="run nothing: rebuild the tables, plot and RESULTS.md from saved CSVs "
                        "(e.g. the headline run plus a sweep)")
    return p.parse_args(argv)


def _selected(cases, args):
    out = []
    for c in cases:
        if args.group and not any(g in c.group for g in args.group):
            continue
        if args.impl and not any(s in c.impl for s in args.impl):
            continue
        out.append(c)
    return out


def _parse_size(text: str) -> dict:
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = int(v)
        except ValueError:
            out[k.strip()] = float(v) if v.replace(".", "", 1).isdigit() else v
    return out


def _jobs(cases, size_key, mode, explicit=()):
    jobs = []
    for c in cases:
        sizes = list(explicit) or c.sizes.get(size_key) or []
        for size in sizes:
            for bwd in c.backward:
                if (mode == "forward" and bwd) or (mode == "backward" and not bwd):
                    continue
                jobs.append((c, size, bwd))
    return jobs


def out_dir(args) -> str:
    """The output directory: --out, $XENT_BENCH_OUT, or $TMPDIR/xent-bench."""
    import tempfile

    d = args.out or os.environ.get("XENT_BENCH_OUT") or os.path.join(tempfile.gettempdir(),
                                                                      "xent-bench")
    os.makedirs(d, exist_ok=True)
    return d


def combine_rounds(results: list[dict]) -> dict:
    """One job's figures from its rounds (``--rounds``): each a fresh process's result.

    The time, CPU time and extra memory are the medians of the rounds'
    (a process's allocator history -- which buffers come back as fresh,
    page-faulting memory -- moves a sub-millisecond step by tens of percent,
    for xent and its peers alike), the min and max the extremes of all
    rounds. Rounds that failed are left out; when every round failed, the
    first error is the result.
    """
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    out = dict(ok[0])
    for key in ("time_s", "cpu_s", "extra_bytes", "mem_ratio"):
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            out[key] = statistics.median(vals)
    out["time_min_s"] = min(r["time_min_s"] for r in ok)
    out["time_max_s"] = max(r["time_max_s"] for r in ok)
    return out


def _in_process(key, size, bwd, reps, warmup) -> dict:
    """One job in this process (--quick): fast, but memory includes earlier jobs' caches."""
    from .runner import measure

    try:
        res = measure(key, size, bwd, reps, warmup)
    except Exception as e:  # noqa: BLE001 - reported in the table like a failed subprocess
        return {"error": f"{type(e).__name__}: {e}"}
    res["mem_method"] = f"{res.get('mem_method', '')} (in-process, --quick)".strip()
    return res


def _from_csv(args, argv) -> int:
    rows, info = read_csv(args.from_csv)
    print(format_tables(rows))
    out = out_dir(args)
    if not args.no_plot:
        png = os.path.join(out, os.path.splitext(os.path.basename(args.from_csv[-1]))[0]
                           + "-combined.png")
        if write_plot(png, rows):
            print(f"plot: {png}")
    if not args.no_markdown:
        cmds = "; ".join(f"from {os.path.basename(p)}" for p in args.from_csv)
        for path in [os.path.join(out, "RESULTS.md")] + ([MARKDOWN] if args.write_results else []):
            md = write_markdown(rows, info, info.get("size_key", "?"), info.get("reps", 0),
                                ["--from-csv"] + [os.path.relpath(p) for p in args.from_csv],
                                list(args.from_csv), path=path)
            print(f"summary: {md} ({cmds})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.from_csv:
        return _from_csv(args, argv)
    cases = _selected(load_all(), args)
    size_key = "custom" if args.size else args.sizes or ("quick" if args.quick else "full")
    if args.list:
        for c in cases:
            kinds = ", ".join(f"{k}: {len(v)}" for k, v in c.sizes.items())
            print(f"{c.key:60s} {'peer' if c.peer else 'xent':5s} sizes({kinds})")
        return 0
    reps = args.reps or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    jobs = _jobs(cases, size_key, args.mode, [_parse_size(x) for x in args.size])
    if not jobs:
        print(f"no jobs: no selected case has sizes for {size_key!r}", file=sys.stderr)
        return 2
    info = {"machine": machine(), "versions": versions(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from tqdm import tqdm

    rounds = max(1, args.rounds)
    results: list[list[dict]] = [[] for _ in jobs]
    bar = tqdm([(r, i) for r in range(rounds) for i in range(len(jobs))], unit="job",
               file=sys.stderr, dynamic_ncols=True)
    for r, i in bar:
        c, size, bwd = jobs[i]
        bar.set_description(f"{c.impl[:28]:28s} {'fwd+bwd' if bwd else 'fwd':7s}"
                            + (f" round {r + 1}/{rounds}" if rounds > 1 else ""))
        if args.quick and not args.fresh:
            res = _in_process(c.key, size, bwd, reps, warmup)
        else:
            res = run_job(c.key, size, bwd, reps, warmup, timeout=args.timeout)
        results[i].append(res)
    rows = [{"case": c, "size": size, "backward": bwd, **combine_rounds(results[i])}
            for i, (c, size, bwd) in enumerate(jobs)]
    print(format_tables(rows))
    stamp = info["timestamp"].replace(":", "").replace("-", "")
    dirs = [out_dir(args)]
    if args.write_results:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        dirs.append(RESULTS_DIR)
    cmd = argv if argv is not None else sys.argv[1:]
    for d in dirs:
        csv_path = os.path.join(d, f"{stamp}-{size_key}.csv")
        write_csv(csv_path, rows, info, size_key, reps, warmup)
        print(f"\nCSV: {csv_path}")
        if not args.no_plot:
            png = os.path.splitext(csv_path)[0] + ".png"
            if write_plot(png, rows):
                print(f"plot: {png}")
        if not args.no_markdown:
            md_path = MARKDOWN if d == RESULTS_DIR else os.path.join(d, "RESULTS.md")
            md = write_markdown(rows, info, size_key, reps, cmd, csv_path, path=md_path)
            print(f"summary: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
