"""The ``xent`` command: subcommands in-process through main(argv), and a few real runs of
``python -m xent`` for exit codes, one-line messages and the absence of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xent
from xent import cli
from xent._guide.data import load_example

SRC = str(Path(xent.__file__).resolve().parents[1])


@pytest.fixture
def files(tmp_path):
    """The bundled examples written in every supported format."""
    data = load_example()
    z, y = data["multiclass"]
    paths = {}
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.savetxt(tmp_path / "y.csv", y, fmt="%d", delimiter=",")
    (tmp_path / "yh.csv").write_text("label\n" + "\n".join(map(str, y)) + "\n")
    np.savetxt(tmp_path / "z.csv", z, delimiter=",")
    zm, ym = data["multilabel"]
    np.savez(tmp_path / "ml.npz", logits=zm, labels=ym)
    np.savez(tmp_path / "one.npz", anything=y)
    np.savez(tmp_path / "two.npz", a=z, b=y)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.save(tmp_path / "p.npy", p)
    torch = pytest.importorskip("torch")
    torch.save(torch.as_tensor(z), tmp_path / "z.pt")
    torch.save({"labels": torch.as_tensor(y)}, tmp_path / "y.pt")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    (tmp_path / "y.parquet").write_bytes(b"")
    for name in ("z.npy", "y.npy", "y.csv", "yh.csv", "z.csv", "ml.npz", "one.npz", "p.npy",
                 "z.pt", "y.pt", "bad.npy", "y.parquet", "two.npz"):
        paths[name] = str(tmp_path / name)
    return paths


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- demo -----------------------------------------------------------------------------------

def test_demo_shows_losses_choose_and_check(capsys):
    code, out, err = run(["demo"], capsys)
    assert code == 0 and err == ""
    data = load_example()
    for key, (z, y) in data.items():
        assert xent.choose(y).code in out
    assert "sparse_softmax_cross_entropy" in out and "class_imbalance" in out
    assert "error probabilities_as_logits" in out
    assert "\033[" not in out  # captured output is not a terminal


# -- choose ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["y.npy", "y.csv", "yh.csv", "one.npz", "y.pt", "y.pt:labels"])
def test_choose_reads_every_format(files, capsys, name):
    spec = files[name.split(":")[0]] + (":labels" if ":" in name else "")
    code, out, err = run(["choose", "--labels", spec, "--json"], capsys)
    assert (code, err) == (0, "")
    got = json.loads(out)
    want = xent.choose(load_example()["multiclass"][1])
    assert got["function"] == want.function and got["code"] == want.code
    assert got["equivalents"]["pytorch"] == want.equivalents.pytorch


def test_choose_text_output(files, capsys):
    code, out, _ = run(["choose", "--labels", files["y.npy"]], capsys)
    assert code == 0
    assert out.startswith("Use sparse_softmax_cross_entropy")
    for part in ("Why", "Alternatives", "Equivalents", "TensorFlow", "optax", "inverse frequency"):
        assert part in out


def test_choose_from_a_description(capsys):
    code, out, _ = run(["choose", "--task", "multilabel", "--classes", "20", "--imbalanced",
                        "--json"], capsys)
    assert code == 0
    got = json.loads(out)
    want = xent.choose(task="multilabel", num_classes=20, imbalanced=True)
    assert got["code"] == want.code and got["function"] == "sigmoid_cross_entropy"
    code, out, _ = run(["choose", "--no-exclusive", "--json"], capsys)
    assert json.loads(out)["function"] == "sigmoid_cross_entropy"
    code, out, _ = run(["choose", "--classes", "100000", "--json"], capsys)
    assert json.loads(out)["function"] == "linear_cross_entropy"


@pytest.mark.parametrize("argv, message", [
    (["choose"], "xent choose: give --labels FILE or describe the labels"),
    (["choose", "--task", "bogus"], "xent choose: task must be one of"),
    (["choose", "--classes", "x"], "xent choose: argument --classes: invalid int value: 'x'"),
    (["choose", "--task", "binary", "--classes", "3"], "task='binary' means 2 classes"),
    (["choose", "--labels", "/nonexistent/y.npy"], "cannot read /nonexistent/y.npy: no such file"),
])
def test_choose_bad_usage(capsys, argv, message):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


# -- check ---------------------------------------------------------------------------------------

def test_check_clean_data_exits_0(files, capsys):
    code, out, err = run(["check", files["z.npy"], files["y.npy"]], capsys)
    assert (code, err) == (0, "")
    assert "warning class_imbalance" in out and "0 errors, 1 warning" in out


def test_check_error_exits_1(files, capsys):
    code, out, _ = run(["check", files["p.npy"], files["y.npy"]], capsys)
    assert code == 1
    assert "error   probabilities_as_logits" in out and "1 error" in out


def test_npz_role_names_pick_the_array(files, capsys):
    code, out, _ = run(["check", files["ml.npz"], files["ml.npz"], "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True


def test_check_with_loss_and_npz_keys(files, capsys):
    z, y = files["ml.npz"] + ":logits", files["ml.npz"] + ":labels"
    code, out, _ = run(["check", z, y, "--loss", "CategoricalCrossentropy", "--json"], capsys)
    assert code == 1
    got = json.loads(out)
    assert got["ok"] is False
    assert [f["code"] for f in got["findings"]][0] == "multi_hot_to_softmax"
    code, out, _ = run(["check", z, y, "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True


def test_check_reads_csv_and_pt(files, capsys):
    code, out, _ = run(["check", files["z.csv"], files["y.csv"], "--json"], capsys)
    assert code == 0 and [f["code"] for f in json.loads(out)["findings"]] == ["class_imbalance"]
    code, out, _ = run(["check", files["z.pt"], files["y.pt"], "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True


def test_check_clean_balanced_says_ok(tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.random.default_rng(0).normal(size=(6, 3)))
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    code, out, _ = run(["check", str(tmp_path / "z.npy"), str(tmp_path / "y.npy")], capsys)
    assert code == 0 and out.startswith("ok  no problems found")


@pytest.mark.parametrize("argv, message", [
    (["check", "{z.npy}"], "xent check: the following arguments are required: LABELS"),
    (["check", "{z.npy}", "{y.npy}", "--loss", "sofmax"], "unknown cross-entropy name 'sofmax'"),
    (["check", "{bad.npy}", "{y.npy}"], "cannot read {bad.npy}: "),
    (["check", "{z.npy}", "{y.parquet}"], "unsupported file type '.parquet'"),
    (["check", "{two.npz}", "{y.npy}"], "it holds several arrays (a, b); pick one as"),
    (["check", "{ml.npz}:nope", "{y.npy}"], "no array 'nope' in it"),
    (["check", "{z.npy}", "{y.npy}", "--loss", "nce_loss"], "takes inputs and a classifier"),
])
def test_check_bad_usage(files, capsys, argv, message):
    def fill(text):
        for key, path in files.items():
            text = text.replace("{" + key + "}", path)
        return text

    code, out, err = run([fill(a) for a in argv], capsys)
    assert code == 2 and out == ""
    assert fill(message) in err and err.count("\n") == 1


# -- equivalents ------------------------------------------------------------------------------------

def test_equivalents_text_and_json(capsys):
    code, out, _ = run(["equivalents", "F.cross_entropy"], capsys)
    assert code == 0
    assert out.startswith("torch.nn.functional.cross_entropy")
    assert "tf.nn.sparse_softmax_cross_entropy_with_logits" in out
    code, out, _ = run(["equivalents", "tf.contrib.losses.log_loss", "--json"], capsys)
    got = json.loads(out)
    assert got["historical"] is True and got["optax"] is None
    assert got["xent"] == xent.equivalents("tf.contrib.losses.log_loss").xent


def test_equivalents_says_which_peer_call_gives_the_same_number_or_why_not(capsys):
    from xent._guide import table as _table

    code, out, _ = run(["equivalents", "nn.BCEWithLogitsLoss"], capsys)
    assert code == 0
    assert 'sample_weight=weight, reduction="sum_over_batch_size"' in out
    assert "Same number as  torch.nn.BCEWithLogitsLoss(weight=weight)(logits, labels)" in out
    code, out, _ = run(["equivalents", "tf.nn.nce_loss"], capsys)
    assert "Not checked  random candidates" in out
    code, out, _ = run(["equivalents", "keras.losses.binary_crossentropy", "--json"], capsys)
    got = json.loads(out)
    assert got["xent"].endswith(".mean(-1)")  # Keras's function averages the last axis
    entry = _table.lookup("keras.losses.binary_crossentropy")
    assert got["same_number_as"] == entry.peer and got["unchecked"] == ""
    code, out, _ = run(["equivalents", "CategoricalCrossentropy"], capsys)
    assert "xent.keras.SoftmaxCrossEntropy()" in out


def test_choose_on_one_hot_prints_the_peers_dense_calls(tmp_path, capsys):
    path = tmp_path / "labels.npy"
    np.save(path, np.eye(3)[[0, 1, 2, 1, 0, 2]])
    code, out, _ = run(["choose", "--labels", str(path)], capsys)
    assert code == 0
    assert "tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)" in out
    assert "keras.losses.categorical_crossentropy(labels, logits, from_logits=True)" in out
    assert "sparse_softmax_cross_entropy_with_logits" not in out


def test_equivalents_list(capsys):
    from xent._guide import table as _table

    code, out, _ = run(["equivalents", "--list"], capsys)
    assert code == 0 and len(out.splitlines()) == len(_table.NAMES)
    code, out, _ = run(["equivalents", "--list", "--json"], capsys)
    assert {n["name"] for n in json.loads(out)} == {n.name for n in _table.NAMES}


@pytest.mark.parametrize("argv, message", [
    (["equivalents"], "xent equivalents: give a NAME"),
    (["equivalents", "crossentropy"], "did you mean 'cross_entropy'"),
])
def test_equivalents_bad_usage(capsys, argv, message):
    code, out, err = run(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1


# -- the command as a whole -------------------------------------------------------------------------

def test_no_subcommand_prints_help_and_exits_2(capsys):
    code, out, _ = run([], capsys)
    assert code == 2 and "choose" in out and "equivalents" in out


def test_help_exits_0(capsys):
    code, out, _ = run(["check", "--help"], capsys)
    assert code == 0 and "LOGITS" in out


def test_unknown_subcommand(capsys):
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and "invalid choice: 'frobnicate'" in err and err.count("\n") == 1


def test_colour_only_where_wanted(files, capsys, monkeypatch):
    code, out, _ = run(["--color", "always", "check", files["p.npy"], files["y.npy"]], capsys)
    assert code == 1 and "\033[1;31m" in out
    code, out, _ = run(["--color", "never", "check", files["p.npy"], files["y.npy"]], capsys)
    assert "\033[" not in out

    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert cli._use_color("auto", Tty()) is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli._use_color("auto", Tty()) is False
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert cli._use_color("auto", Tty()) is False
    assert cli._use_color("auto", sys.stdout) is False  # captured, not a tty


def test_unexpected_errors_are_one_line(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("deep\ninside")

    monkeypatch.setattr(xent, "choose", boom)
    code, _, err = run(["choose", "--task", "binary"], capsys)
    assert code == 2 and err == "xent: unexpected RuntimeError: deep inside\n"


# -- real processes ----------------------------------------------------------------------------------

def _python_m(*args):
    env = dict(os.environ, PYTHONPATH=SRC, NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "xent", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_python_m_xent_exit_codes(files):
    ok = _python_m("demo")
    assert ok.returncode == 0 and "xent.choose(labels)" in ok.stdout and ok.stderr == ""
    bad = _python_m("check", files["p.npy"], files["y.npy"])
    assert bad.returncode == 1 and "probabilities_as_logits" in bad.stdout
    missing = _python_m("check", files["z.npy"], "/nonexistent.npy")
    assert missing.returncode == 2
    assert missing.stderr == "xent: cannot read /nonexistent.npy: no such file\n"
    assert "Traceback" not in missing.stderr + missing.stdout


def test_closed_pipe_is_quiet():
    """Regression: `xent demo | head` printed 'unexpected BrokenPipeError'."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "src"))
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: every write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "xent", "demo"], env=env, stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr
