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


# ---------------------------------------------------------------------------
# one call path: dispatch by table, no library branches outside the backends

def _sources():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path.read_text()


def test_no_library_name_branches_outside_backend():
    """``be.name == ...`` belongs in a Backend subclass or a table entry."""
    import re

    pat = re.compile(r"\bbe\.name\s*(==|!=)|\bbe\.name\s+(not\s+)?in\b")
    bad = [f"{rel}:{i}" for rel, text in _sources()
           if rel != "_core/backend.py"
           for i, line in enumerate(text.splitlines(), 1) if pat.search(line)]
    assert not bad, f"library-name branches: {bad}"


_FUSED_MODULES = ("dense_torch", "dense_numpy", "dense_jax", "dense_tf", "linear_torch", "linear_jax",
                  "linear_tf", "sampled_torch")


@pytest.mark.parametrize("name", sorted(m for m in _modules()
                                        if not m.startswith("xent._kernels")))
def test_fused_kernels_reached_only_through_the_table(name):
    """No public module imports a fused kernel module: ``table.run`` picks it."""
    bad = {m for m in _imports(name) if m.rsplit(".", 1)[-1] in _FUSED_MODULES}
    assert not bad, f"{name} imports {bad} (register the kernel in xent._kernels.table)"


def test_every_loss_has_a_reference_and_its_entries_resolve():
    from xent._kernels import table

    assert {"sparse", "dense", "sigmoid", "linear", "sampled", "nce"} <= set(table.REFERENCE)
    for (loss, lib), kernel in table.FUSED.items():
        assert loss in table.REFERENCE, (loss, lib)
        if isinstance(kernel, tuple):
            load, attr = kernel
            mod = load.__name__.lstrip("_")
            assert mod in _FUSED_MODULES + ("linear_rows",), kernel
            assert f"def {attr}(call" in (SRC / "_kernels" / f"{mod}.py").read_text(), (
                f"{mod}.{attr} takes the call record")


def _spy_reference(monkeypatch):
    from xent._kernels import table

    used = []
    for loss, k in list(table.REFERENCE.items()):
        monkeypatch.setitem(table.REFERENCE, loss,
                            lambda call, _k=k, _loss=loss: used.append(_loss) or _k(call))
    return used


def test_disabled_forces_the_reference_kernel_for_every_loss(monkeypatch):
    import numpy as np

    from xent._kernels import table

    used = _spy_reference(monkeypatch)
    rng = np.random.default_rng(0)
    z, x, W = rng.normal(size=(4, 5)), rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    t, y = np.array([0, 1, 4, 2]), rng.dirichlet(np.ones(5), 4)
    calls = {"sparse": lambda: xent.sparse_softmax_cross_entropy(z, t),
             "dense": lambda: xent.softmax_cross_entropy(z, y),
             "sigmoid": lambda: xent.sigmoid_cross_entropy(z, y),
             "linear": lambda: xent.linear_cross_entropy(x, W, t)}
    for loss, fn in calls.items():
        used.clear()
        fast = fn()
        assert used == [], f"{loss}: NumPy has a fused kernel, the reference ran"
        with table.disabled():
            plain = fn()
        assert used == [loss], f"{loss}: disabled() ran {used}"
        np.testing.assert_allclose(plain, fast, rtol=1e-12)


@pytest.mark.parametrize("loss", ["sampled", "nce"])
def test_disabled_forces_the_reference_kernel_for_the_sampled_losses(monkeypatch, loss):
    """NumPy has only the reference; torch's fused node runs unless disabled(), same values."""
    import numpy as np

    from xent._kernels import table

    torch = pytest.importorskip("torch")
    used = _spy_reference(monkeypatch)
    rng = np.random.default_rng(1)
    x, W, b = rng.normal(size=(4, 3)), rng.normal(size=(7, 3)), rng.normal(size=7)
    t = np.array([[0, 1], [4, 2], [6, 6], [3, 0]])
    fn = {"sampled": xent.sampled_softmax_loss, "nce": xent.nce_loss}[loss]

    def call(lib):
        arr = (lambda a: torch.as_tensor(a)) if lib == "torch" else np.asarray
        out = fn(arr(x), arr(W), arr(t), num_sampled=5, bias=arr(b), num_true=2, rng=0,
                 remove_accidental_hits=True, sample_weight=arr([1.0, 0.0, 2.0, 0.5]),
                 reduction="none")
        return np.asarray(out)

    for lib, has_fused in (("numpy", False), ("torch", True)):
        used.clear()
        fast = call(lib)
        assert fast.dtype == np.float64
        assert used == ([] if has_fused else [loss]), f"{loss}/{lib} ran {used}"
        used.clear()
        with table.disabled():
            plain = call(lib)
        assert used == [loss], f"{loss}/{lib}: disabled() ran {used}"
        np.testing.assert_allclose(plain, fast, rtol=1e-12, atol=1e-15)
        assert np.all(np.isfinite(fast)) and fast[1] == 0.0
