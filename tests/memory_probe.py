"""Peak memory of one training step, each case in a fresh process: shared by the memory tests.

The probe runs a step once (warm-up: allocator pools, first touch of library code), resets the
peak resident set (Linux: writing 5 to /proc/self/clear_refs sets VmHWM to the current VmRSS),
runs the step again and reports how far the peak rose above the resident set before it. crossent's
buffer cache is emptied before the reset, so buffers it kept from the warm-up count in the peak. Where
the peak cannot be reset, the rise of ru_maxrss over the whole run: a looser upper bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_MEASURE = """
def _rss_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
step()  # warm-up: allocator pools, first-touch of library code
import sys as _sys
if "crossent" in _sys.modules:  # its cached buffers are the step's memory, not the baseline's
    _sys.modules["crossent"].empty_cache()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    _before = _rss_kb("VmRSS")
    step()
    _extra = _rss_kb("VmHWM") - _before
except OSError:  # no resettable peak: ru_maxrss over the whole run, a looser upper bound
    import resource
    _before = _rss_kb("VmRSS")
    step()
    _extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _before
import json
print(json.dumps({"extra_bytes": _extra * 1024}))
"""


def peak_extra_bytes(setup: str, cases, *args) -> dict:
    """case -> bytes the peak resident set rises by during one ``step()``, each case in its own
    fresh process (run side by side). ``setup``: Python source that reads ``sys.argv[1:]`` =
    (*args, case) and defines ``step()``."""
    script = textwrap.dedent(setup) + _MEASURE
    procs = {case: subprocess.Popen([sys.executable, "-c", script, *map(str, args), case],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for case in cases}
    result = {}
    for case, proc in procs.items():
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        result[case] = json.loads(out.strip().splitlines()[-1])["extra_bytes"]
    return result
