"""Shared benchmark plumbing: interleaved timing in one process, peak memory in a fresh subprocess.

Timing: every candidate runs once per round, rounds repeat, and each candidate's minimum is kept,
so all candidates see the same machine state and ratios taken in one run are comparable.

Memory: ``peak_extra_bytes`` runs one case in a fresh Python process: it builds the inputs, runs
the case once to warm up (torch.compile compiles here), resets the kernel's peak-RSS counter
(``/proc/self/clear_refs`` with 5, Linux), runs the case again and reports VmHWM - VmRSS before
the run: the extra resident memory the case needed beyond its inputs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def interleaved_min_seconds(cases: dict, rounds: int) -> dict:
    """cases: name -> zero-argument callable (one forward+backward). Returns name -> min seconds."""
    best = {name: float("inf") for name in cases}
    for name, fn in cases.items():  # warm-up (compilation, first-touch of caches)
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_here(setup, run) -> int:
    """In this process: inputs = setup(); run(inputs) once; reset the peak; run again; extra bytes."""
    inputs = setup()
    run(inputs)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    run(inputs)
    return (_status_kb("VmHWM") - before) * 1024


def peak_extra_bytes(module: str, case: str, *args: str) -> int:
    """Run `python -m <module> --measure <case> <args>` in a fresh process; it prints the bytes."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--measure", case, *args],
        capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"])


def report_measure(nbytes: int) -> None:
    print(json.dumps({"peak_extra_bytes": nbytes}))
