"""The wheel: what it holds, and what the installed-wheel smoke test (.ci/run) catches.

Regression for issue 13 ("build a wheel and test the installed wheel once in CI, not only
the editable tree"). Building takes a few seconds; it runs in a copy of the source tree
so nothing is written into the checkout (``build/``, ``*.egg-info``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _no_isolation_ok() -> bool:
    """Whether the build backend can run in this interpreter (no download needed)."""
    try:
        v = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    return v >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="python -m build (the test extra has it)")
    tree = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".*")
    for name in ("src", "tests", "benchmarks", "docs", "examples"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(ROOT / name, tree / name)
    out = tree / "dist"
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out)]
    if _no_isolation_ok():
        cmd.append("--no-isolation")
    r = subprocess.run(cmd + [str(tree)], capture_output=True, text=True, timeout=300,
                       cwd=tree)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_is_named_after_the_distribution_and_version(wheel):
    name, version = PYPROJECT["project"]["name"], PYPROJECT["project"]["version"]
    assert wheel.name == f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def test_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    want = {str(p.relative_to(src)).replace(os.sep, "/") for p in (src / "xent").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert "xent/data/example.npz" in want  # the demo's data
    if (src / "xent" / "py.typed").exists():
        assert "xent/py.typed" in want
    assert want <= names, sorted(want - names)


def test_wheel_has_no_tests_benchmarks_or_docs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"xent", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                    + ".dist-info"}, tops
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]


def test_wheel_metadata_has_the_console_script_and_no_framework_dependency(wheel):
    z = zipfile.ZipFile(wheel)
    info = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "xent = xent.cli:main" in z.read(info).decode()
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: xent-loss" in meta
    required = [ln for ln in meta.splitlines()
                if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    # import xent needs NumPy and array-api-compat only; frameworks are extras
    assert sorted(ln.split()[1].split(">")[0].split("=")[0] for ln in required) == [
        "array-api-compat", "numpy"]


def test_wheel_smoke_script_fails_on_a_source_tree_import(tmp_path):
    # the smoke test CI runs on the installed wheel must not pass on the editable tree
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "wheel_smoke.py"), "--wheel",
         str(tmp_path / "xent_loss-0.1.0-py3-none-any.whl"), "--source", str(ROOT),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL import xent is not from the source tree" in r.stdout


_CI_TEST_COMMAND = ('python -m pip install -q -c constraints.txt -e ".[test]" && '
                    "python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile")


def test_ci_runs_the_test_command_and_the_wheel_check():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _CI_TEST_COMMAND in ci
    assert "python -m build --wheel" in ci and "--system-site-packages" in ci
    assert "--no-deps" in ci and ".ci/wheel_smoke.py" in ci
    test_extra = PYPROJECT["project"]["optional-dependencies"]["test"]
    assert any(r.startswith("build") for r in test_extra)


def test_readme_test_command_is_the_ci_command():
    assert _CI_TEST_COMMAND in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("module", ["render", "reference"])
def test_guide_renderers_write_where_they_are_told_not_next_to_the_package(
        module, tmp_path, monkeypatch):
    # issue 13: the guide renderer wrote to parents[2]/docs, which a wheel does not have
    import importlib

    import xent

    mod = importlib.import_module(f"xent._guide.{module}")
    assert "parents[" not in Path(mod.__file__).read_text()
    monkeypatch.chdir(tmp_path)  # the default path is relative to the working directory
    target = tmp_path / "out" / ("choosing.md" if module == "render" else "ref")
    assert mod.main([str(target)]) == 0
    assert target.exists()
    pkg_root = Path(xent.__file__).resolve().parents[1]
    before = {p.name for p in pkg_root.iterdir()}
    assert mod.main([]) == 0  # the default: docs/... under the working directory
    assert (tmp_path / "docs").is_dir()
    assert {p.name for p in pkg_root.iterdir()} == before
