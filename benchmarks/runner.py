"""Run one benchmark measurement in a fresh process, and the driver that runs many.

Method (one *job* = one case, one problem size, forward or forward+backward):

1. The driver starts ``python -m benchmarks.runner <json>`` for the job, so
   every job has a clean heap, clean allocator caches and no JIT caches from
   other jobs: its peak memory is its own.
2. The worker imports the case module, calls the case function (which builds
   the data and returns the step callable) and reads its resident set size
   (``VmRSS`` in ``/proc/self/status``): the *baseline*.
3. It resets the kernel's high-water mark (writing ``5`` to
   ``/proc/self/clear_refs`` sets ``VmHWM`` back to the current RSS), then runs
   ``warmup`` steps (compilation, allocator warm-up) and ``reps`` timed steps.
   Each step is timed with ``time.perf_counter`` around the blocking call
   (a step that carries an ``inner`` attribute runs that many calls, and its
   time is divided by it: tiny problems are timed over enough calls to be
   above the timer's and the scheduler's noise);
   the process CPU time (all threads, ``time.process_time``) is recorded too,
   as a check that is less sensitive to other load on the machine.
4. *Peak extra memory* = ``VmHWM - baseline``: everything the steps allocated
   at their peak beyond the inputs (gradients, temporaries, JIT code and
   allocator pools), measured by the kernel, so allocations outside Python
   (XLA, oneDNN, Eigen) count too. Where ``/proc/self/clear_refs`` is not
   writable, a thread samples ``VmRSS`` every millisecond instead (the method
   used is recorded in the ``mem_method`` column).
5. The worker prints one JSON line with the median, min and max time, the
   extra memory in bytes and, where the case gives ``input_bytes``, that
   memory as a multiple of the main input's bytes.

Times are wall-clock medians on whatever threads the library uses by default;
the machine (CPU model, core count), library versions and a UTC timestamp are
written on every CSV row.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

MB = 1024 * 1024


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class _PeakMeter:
    """Peak RSS over a region: the kernel's VmHWM after a reset, or sampling."""

    def __init__(self) -> None:
        self.method = "VmHWM"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "sampled"
        self.baseline = _status("VmRSS")
        self._peak = self.baseline
        self._stop = threading.Event()
        self._thread = None
        if self.method == "sampled":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _status("VmRSS"))
            time.sleep(0.001)

    def extra(self) -> int:
        if self.method == "VmHWM":
            return max(0, _status("VmHWM") - self.baseline)
        self._stop.set()
        self._thread.join()
        return max(0, self._peak - self.baseline)


def _quiet() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import warnings

    warnings.filterwarnings("ignore")


def measure(key: str, size: dict, backward: bool, reps: int, warmup: int) -> dict:
    """Run one job in this process (the worker side) and return its figures."""
    _quiet()
    from .registry import find

    c = find(key)
    step = c.fn(dict(size), backward)
    inner = int(getattr(step, "inner", 1))
    import gc

    gc.collect()
    meter = _PeakMeter()
    for _ in range(warmup):
        step()
    times, cpu = [], []
    for _ in range(reps):
        c0 = time.process_time()
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) / inner)
        cpu.append((time.process_time() - c0) / inner)
    extra = meter.extra()
    out = {
        "time_s": statistics.median(times),
        "cpu_s": statistics.median(cpu),
        "time_min_s": min(times),
        "time_max_s": max(times),
        "extra_bytes": extra,
        "mem_method": meter.method,
    }
    if c.input_bytes is not None:
        nbytes = int(c.input_bytes(size))
        out["input_bytes"] = nbytes
        out["mem_ratio"] = extra / nbytes if nbytes else float("nan")
    return out


def run_job(key: str, size: dict, backward: bool, reps: int, warmup: int,
            timeout: float | None = None) -> dict:
    """Run one job in a fresh subprocess (the driver side)."""
    arg = json.dumps({"key": key, "size": size, "backward": backward, "reps": reps,
                      "warmup": warmup})
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = os.path.join(root, "src")
    env["PYTHONPATH"] = os.pathsep.join(
        [src, root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.runner", arg], env=env,
                              cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def versions() -> dict[str, str]:
    """Versions of the libraries in the comparison (those importable)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "jax", "jaxlib", "optax", "tensorflow-cpu", "tensorflow",
                 "xent"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def machine() -> str:
    """CPU model and core count (from /proc/cpuinfo where available)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def _main(argv: list[str]) -> None:
    job: dict[str, Any] = json.loads(argv[0])
    res = measure(job["key"], job["size"], job["backward"], job["reps"], job["warmup"])
    print(json.dumps(res))


if __name__ == "__main__":
    _main(sys.argv[1:])
