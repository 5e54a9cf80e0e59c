"""Run one case of a peers section in a fresh process: one thread, timed, peak memory.

A section is a module of this folder with ``NAME``, ``cases(sizes) -> list[dict]``
(JSON specs, each with a ``side``: ``"s3viz"`` or the peer's name, and optionally
``python``: another interpreter, e.g. the Python 3.12 one fastabx needs),
``run(case) -> dict`` and ``agree(results) -> dict`` (how far each peer's values
are from s3viz's). Its top level imports the standard library only, so that any
interpreter can load it; ``run`` imports what it needs and wraps the timed work in
:func:`measured`, which records wall and CPU seconds and the peak resident memory
of the block above what the process held just before it (the inputs loaded).

Every case runs in its own process, so peaks do not carry over and each side
starts cold alike; ``OMP``/``MKL``/``OPENBLAS`` threads and torch's are set to one.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

_CHILD = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("section", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
try:
    import torch; torch.set_num_threads(1)
except ImportError:
    pass
out = mod.run(json.loads(sys.argv[2]))
print("RESULT " + json.dumps(out), flush=True)
"""


def _vm(key: str) -> float | None:
    """``/proc/self/status``'s ``key`` in MiB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":")) / 1024
    except (OSError, StopIteration):
        return None


def _reset_peak() -> float | None:
    """Hand freed heap back (glibc) and reset the kernel's high-water mark (Linux), so
    that the peak after the timed block is the block's own and not the input loading's
    (which leaves memory the block would reuse unseen); the resident MiB now, or None."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _vm("VmRSS")


@contextlib.contextmanager
def measured(out: dict):
    """Record into ``out`` the block's wall ``seconds``, its ``cpu_seconds`` (one thread:
    the work, whatever else the machine runs) and ``peak_mib``: the high-water mark of
    resident memory during the block above the resident memory just before it (where
    the kernel cannot reset the mark: the growth of ``ru_maxrss``, a lower bound)."""
    rss = _reset_peak()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, cpu = time.perf_counter(), time.process_time()
    yield out
    out["seconds"] = time.perf_counter() - t
    out["cpu_seconds"] = time.process_time() - cpu
    hwm = _vm("VmHWM")
    out["peak_mib"] = (max(0.0, hwm - rss) if rss is not None and hwm is not None else
                       max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base))


def run_case(section: str, case: dict, timeout: float = 7200) -> dict:
    """``section``'s ``run(case)`` in a new process (``case["python"]`` or this one)."""
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    python = case.get("python") or sys.executable
    proc = subprocess.run([python, "-c", _CHILD, str(HERE / f"{section}.py"), json.dumps(case)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{section} case {case} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def load() -> str:
    """The machine's 1-minute load average and cores, for the record."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main(section: str, argv=None) -> None:
    """``python peers/<section>.py [sizes...]``: every case once, in order, printed."""
    import importlib
    sys.path.insert(0, str(HERE))
    mod = importlib.import_module(section)
    sizes = [int(a) for a in (argv if argv is not None else sys.argv[1:])] or [120]
    results = []
    for case in mod.cases(sizes):
        res = run_case(section, case)
        results.append((case, res))
        shown = {k: v for k, v in res.items() if not isinstance(v, (list, dict))}
        print(case, shown, load(), flush=True)
    print("agreement:", mod.agree(results))
