"""Smoke test of an installed xent wheel (run by ``.ci/run``, and by tests/test_packaging.py).

Run it with the Python of an environment the wheel was installed into, from a
directory outside the source tree::

    VENV/bin/python wheel_smoke.py --wheel DIST/xent_loss-X.whl --source REPO --out TMPDIR

It checks that ``import xent`` comes from that environment's site-packages
(not from the source tree), that ``xent --version`` prints the wheel's version,
that ``xent demo`` runs on the data bundled in the wheel (its multi-class number
equal to a float64 computation on the same data), that the guide and the
reference render into a directory they are given, and one loss call on NumPy
against a float64 formula. Exit status 0 when all pass; each failure is one line
on stderr.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

FAILURES: list[str] = []


def expect(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


def run(*cmd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", NO_COLOR="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=300)


def wheel_version(wheel: Path) -> str:
    # name-version-pytag-abitag-platform.whl
    return wheel.name.split("-")[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, required=True)
    p.add_argument("--source", type=Path, required=True, help="the source tree the wheel came from")
    p.add_argument("--out", type=Path, required=True, help="a scratch directory for rendered docs")
    args = p.parse_args(argv)
    source = args.source.resolve()
    version = wheel_version(args.wheel)

    import numpy as np

    import xent

    where = Path(xent.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    expect(site in where.parents, f"import xent resolves to {where}, inside {site}")
    expect(source not in where.parents, f"import xent is not from the source tree {source}")
    expect(Path(sys.prefix).resolve() in where.parents, f"import xent is inside {sys.prefix}")
    expect(xent.__version__ == version, f"xent.__version__ {xent.__version__} == wheel {version}")

    script = Path(sys.executable).parent / "xent"
    expect(script.is_file(), f"the console script {script} is installed")
    r = run(str(script), "--version")
    expect(r.returncode == 0 and r.stdout.strip() == f"xent {version}",
           f"xent --version prints 'xent {version}' (got {r.stdout.strip()!r}, rc {r.returncode})")

    r = run(str(script), "demo")
    expect(r.returncode == 0, f"xent demo exits 0 (rc {r.returncode}; stderr {r.stderr[-300:]!r})")
    from xent._guide.data import load_example

    z, y = load_example()["multiclass"]
    z64 = z.astype(np.float64)
    m = z64.max(-1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z64 - m).sum(-1)))
    want = float(np.mean(lse - z64[np.arange(len(y)), y]))
    expect(f"sparse_softmax_cross_entropy   {want:.4f}" in r.stdout,
           f"xent demo prints the multi-class loss {want:.4f} (float64) from the bundled data")

    args.out.mkdir(parents=True, exist_ok=True)
    guide = args.out / "guide" / "choosing.md"
    r = run(sys.executable, "-m", "xent._guide.render", str(guide))
    from xent._guide.render import render

    expect(r.returncode == 0 and guide.is_file() and guide.read_text() == render(),
           f"python -m xent._guide.render writes the guide to {guide} (rc {r.returncode}, "
           f"{r.stderr[-300:]!r})")
    ref = args.out / "reference"
    r = run(sys.executable, "-m", "xent._guide.reference", str(ref))
    expect(r.returncode == 0 and (ref / "index.md").is_file() and (ref / "softmax.md").is_file(),
           f"python -m xent._guide.reference writes the reference to {ref} (rc {r.returncode}, "
           f"{r.stderr[-300:]!r})")
    expect(not (site / "docs").exists(), f"nothing was written to {site / 'docs'}")

    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=np.float32)
    labels = np.array([0, 2])
    got = xent.sparse_softmax_cross_entropy(logits, labels)
    l64 = logits.astype(np.float64)
    want = np.mean(np.log(np.exp(l64).sum(-1)) - l64[[0, 1], labels])
    expect(isinstance(got, (np.ndarray, np.generic)) and got.dtype == np.float32
           and abs(float(got) - want) <= 1e-6 * abs(want),
           f"sparse_softmax_cross_entropy on NumPy float32 gives {float(got)!r}, float64 {want!r}")

    if FAILURES:
        print(f"wheel smoke test: {len(FAILURES)} failure(s)", file=sys.stderr)
        for f in FAILURES:
            print(f"  {f}", file=sys.stderr)
        return 1
    print("wheel smoke test: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
