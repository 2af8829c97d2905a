"""Each example runs at its quick size (``XENT_EXAMPLE_QUICK=1``) and prints numbers that
agree with an independent computation (float64 logits, torch, Hugging Face's own loss).

Regression for issue 13: ``examples/large_vocabulary.py`` is introduced right after
``linear_cross_entropy`` in the README but never used it; examples had no test at all.
Each run is a subprocess with a timeout.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NUM = r"([-+]?\d+\.\d+)"


def _run(name: str, tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "XENT_EXAMPLE_QUICK": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                         os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_every_example_is_tested():
    tested = {"large_vocabulary.py", "sampled_softmax_module.py", "causal_lm_linear.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_large_vocabulary_example_uses_linear_cross_entropy():
    src = (EXAMPLES / "large_vocabulary.py").read_text()
    code = src.split('"""', 2)[2]  # after the module docstring
    assert "xent.linear_cross_entropy(x, W, y, bias=b)" in code
    assert "sparse_softmax_cross_entropy(torch.addmm" not in code  # no [N, V] logits to train


def test_large_vocabulary_example_exact_evaluation_equals_float64_logits_loss(tmp_path):
    out = _run("large_vocabulary.py", tmp_path)
    assert "2,000 classes" in out and "30 steps" in out  # the quick size was taken
    checks = re.findall(rf"exact evaluation of the (.+?) run: linear_cross_entropy {NUM}, "
                        rf"float64 logits {NUM}", out)
    assert [c[0] for c in checks] == ["full softmax", "sampled softmax", "NCE"]
    for method, lce, naive in checks:
        assert float(lce) == pytest.approx(float(naive), rel=1e-5, abs=2e-6), method
    # the table prints the same exact numbers, and training beat the uniform guess
    full = float(re.search(rf"^\s*full softmax\s+{NUM}", out, re.M).group(1))
    assert full == pytest.approx(float(checks[0][1]), abs=6e-5)
    for _, lce, _ in checks:
        assert float(lce) < math.log(2000) - 0.5


def test_sampled_softmax_module_example_eval_is_torch_cross_entropy(tmp_path):
    out = _run("sampled_softmax_module.py", tmp_path)
    m = re.search(rf"exact softmax: {NUM}; torch.nn.functional.cross_entropy of its float64 "
                  rf"logits: {NUM}", out)
    assert m, out
    assert float(m.group(1)) == pytest.approx(float(m.group(2)), rel=1e-5, abs=2e-6)
    full = float(re.search(rf"^\s*full softmax\s+{NUM}", out, re.M).group(1))
    assert full < math.log(2000) - 0.5 and float(m.group(1)) < math.log(2000) - 0.5


def test_causal_lm_example_linear_loss_equals_hugging_face_loss(tmp_path):
    pytest.importorskip("transformers")
    out = _run("causal_lm_linear.py", tmp_path)
    hf = float(re.search(rf"model\(\.\.\., labels=\.\.\.\): loss {NUM}", out).group(1))
    lin = float(re.search(rf"linear_cross_entropy recipe: loss {NUM}", out).group(1))
    assert "vocabulary 1,024" in out
    assert lin == pytest.approx(hf, rel=1e-5)
    assert abs(hf - math.log(1024)) < 0.5  # an untrained model is near uniform
