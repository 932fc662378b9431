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


def interleaved_seconds(cases: dict, rounds: int) -> dict:
    """cases: name -> zero-argument callable (one forward+backward), run once each per round, in
    order, after one warm-up call each. Returns name -> list of seconds, one per round."""
    times = {name: [] for name in cases}
    for fn in cases.values():  # warm-up (compilation, first-touch of caches)
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_min_seconds(cases: dict, rounds: int) -> dict:
    """Name -> the minimum over rounds of interleaved_seconds."""
    return {name: min(t) for name, t in interleaved_seconds(cases, rounds).items()}


def paired_median_ratio(times: dict, name: str, base: str) -> float:
    """Median over rounds of time[name] / time[base] within the same round: robust to the speed of
    the machine drifting between rounds, which a ratio of two minima is not (a lucky round for
    one case alone moves that)."""
    ratios = sorted(a / b for a, b in zip(times[name], times[base]))
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_here(setup, run) -> int:
    """In this process: inputs = setup(); run(inputs) once; reset the peak; run again; extra bytes.
    crossent's buffer cache (backends/_memory.py) is emptied before the reset: the buffers it kept
    from the first run are memory the step needs, so they count in its peak, not in the baseline."""
    inputs = setup()
    run(inputs)
    import crossent

    crossent.empty_cache()
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
