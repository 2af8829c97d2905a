"""The benchmark harness: output stays out of the source tree unless --write-results."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(ROOT)
    from benchmarks.__main__ import main
    from benchmarks.report import MARKDOWN

    return main, MARKDOWN


def test_quick_run_writes_only_to_out_dir(bench, tmp_path, capsys):
    main, markdown = bench
    before = os.stat(markdown).st_mtime_ns if os.path.exists(markdown) else None
    rc = main(["--quick", "--group", "linear", "--impl", "xent torch", "--size", "n=8,d=4,v=16",
               "--out", str(tmp_path), "--no-plot"])
    assert rc == 0
    names = sorted(os.listdir(tmp_path))
    assert "RESULTS.md" in names and any(n.endswith(".csv") for n in names)
    after = os.stat(markdown).st_mtime_ns if os.path.exists(markdown) else None
    assert after == before  # the committed RESULTS.md is untouched without --write-results
    assert "xent torch" in capsys.readouterr().out


def test_floor_column_in_dense_tables(bench):
    from benchmarks.report import format_tables
    from benchmarks.registry import Case

    def row(impl, peer, t):
        return {"case": Case("dense_sparse", impl, None, {}, peer), "size": {"n": 2},
                "backward": True, "time_s": t, "extra_bytes": 0}

    text = format_tables([row("floor: torch.exp (allocating)", True, 1.0),
                          row("torch F.cross_entropy", True, 3.0), row("xent torch", False, 1.5)])
    assert "t÷floor" in text
    assert "3.00" in text and "1.50" in text


def test_small_overhead_steps_are_timed_per_call(bench, monkeypatch):
    """A step with ``inner`` calls is timed as a whole and reported per call."""
    from types import SimpleNamespace

    from benchmarks import registry, runner
    from benchmarks.cases import overhead

    assert overhead.calls_per_step({"n": 64, "c": 10}) == overhead.MAX_CALLS
    assert overhead.calls_per_step({"n": 512, "c": 100}) == 390
    assert overhead.calls_per_step({"n": 4096, "c": 1000}) == 4
    assert overhead.calls_per_step({"n": 8192, "c": 32768}) == 1

    calls = []

    def make(size, backward):
        return lambda: calls.append(1)

    step = overhead._repeated(make)({"n": 512, "c": 100}, True)
    assert step.inner == 390
    step()
    assert len(calls) == 390

    clock = iter(range(0, 10**6, 1))  # each perf_counter() reads 1 s later
    monkeypatch.setattr(runner.time, "perf_counter", lambda: float(next(clock)))
    class Step:
        inner = 4

        def __call__(self):
            pass

    fake = SimpleNamespace(fn=lambda size, backward: Step(), input_bytes=None)
    monkeypatch.setattr(registry, "find", lambda key: fake)
    out = runner.measure("x", {}, True, reps=3, warmup=0)
    assert out["time_s"] == pytest.approx(1 / 4)  # 1 s between the two reads, over 4 calls


def test_rounds_take_the_median_of_fresh_processes(bench, monkeypatch, tmp_path):
    """``--rounds 3``: each job three times, alternating, its figures the rounds' medians."""
    import benchmarks.__main__ as bm

    order = []
    times = {"a": [3.0, 1.0, 2.0], "b": [5.0, 9.0, 7.0]}

    def fake_job(key, size, backward, reps, warmup, timeout=None):
        k = "a" if "xent torch" in key else "b"
        i = sum(1 for o in order if o == k)
        order.append(k)
        if k == "b" and i == 1:
            return {"error": "boom"}  # a failed round is left out
        t = times[k][i]
        return {"time_s": t, "cpu_s": 2 * t, "time_min_s": t - 0.5, "time_max_s": t + 0.5,
                "extra_bytes": int(100 * t)}

    monkeypatch.setattr(bm, "run_job", fake_job)
    rows = []
    monkeypatch.setattr(bm, "write_csv", lambda path, r, *a, **k: rows.extend(r))
    rc = bm.main(["--group", "overhead_torch", "--size", "n=4,c=3", "--rounds", "3",
                  "--out", str(tmp_path), "--no-plot", "--no-markdown"])
    assert rc == 0
    assert order == ["b", "a", "b", "a", "b", "a"] or order == ["a", "b", "a", "b", "a", "b"]
    got = {("a" if r["case"].impl == "xent torch" else "b"): r for r in rows}
    assert got["a"]["time_s"] == 2.0 and got["a"]["cpu_s"] == 4.0
    assert got["a"]["time_min_s"] == 0.5 and got["a"]["time_max_s"] == 3.5
    assert got["a"]["extra_bytes"] == 200
    assert got["b"]["time_s"] == 6.0 and got["b"]["time_max_s"] == 7.5  # rounds 1 and 3
    assert bm.combine_rounds([{"error": "x"}, {"error": "y"}]) == {"error": "x"}
