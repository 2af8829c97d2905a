"""The private layout imports only downward: _core <- _kernels <- public modules."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import xent

SRC = Path(xent.__file__).parent
PUBLIC = {"softmax", "sigmoid", "linear", "sampled", "samplers", "choose", "cli"}


def _modules():
    for info in pkgutil.walk_packages([str(SRC)], prefix="xent."):
        if info.name != "xent.__main__":  # running it is the CLI
            yield info.name


def _imports(name):
    """The xent modules that module ``name`` imports (top level and inside functions)."""
    spec = importlib.util.find_spec(name)
    tree = ast.parse(Path(spec.origin).read_text())
    pkg = name if spec.submodule_search_locations else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = base + ("." + node.module if node.module else "")
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("xent") and _is_module(m)}


def _is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, AttributeError):
        return False  # a name inside a module, not a module


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(m for m in _modules() if m.startswith("xent._core")))
def test_core_imports_only_core(name):
    bad = {m for m in _imports(name) if not m.startswith("xent._core")}
    assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize("name", sorted(m for m in _modules() if m.startswith("xent._kernels")))
def test_kernels_import_no_public_module(name):
    bad = {m for m in _imports(name)
           if not (m.startswith("xent._kernels") or m.startswith("xent._core"))}
    assert not bad, f"{name} imports {bad}"
