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
