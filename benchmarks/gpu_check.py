"""`make test-gpu`: every CUDA path of s3viz run once, as one prepared script.

On a machine with CUDA it runs, each as a subprocess with its own time limit:

1. the CUDA-marked tests (``pytest -m gpu``);
2. each benchmark's GPU mode with ``--quick``: pooling (target >= 10x the
   per-utterance loop), ridge and logistic probes, CKA (GPU vs CPU), the
   frame- vs utterance-level comparison (GPU vs CPU), extraction of a
   random-weight HuBERT base at batch sizes 8 and 32, and the batch-invariant
   Hugging Face adapter against HF's padded batch;
3. a 1-node ``torchrun`` of ``s3viz.run`` with the nccl backend on every GPU,
   checked against a 1-process gloo run on the CPU (probe accuracies within
   ``ACC_POINTS`` points, CKA within ``CKA_ATOL``; the CNN front end runs in
   TF32 on the GPU, so the figures are close, not bit-equal).

It prints one table (step, status, seconds, the RESULT lines each step printed)
and exits 1 if any step failed or ran past its limit. Without CUDA it prints
the same table with every step skipped and exits 0, so the script can be tried
anywhere; ``--device cpu`` runs the benchmark steps on the CPU instead (slow:
for trying the script itself, not for figures). The limits add up to 8
minutes so that a rerun fits a 15-minute device budget.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda|cpu] [--only STEP ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ACC_POINTS = 1.0   # nccl (GPU) vs gloo (CPU) probe accuracy, percentage points
CKA_ATOL = 1e-3    # nccl (GPU) vs gloo (CPU) CKA, absolute


@dataclass
class Step:
    name: str
    argv: List[str]
    timeout: int                      # seconds
    check: Optional[Callable[["Step", str], List[str]]] = None  # extra figures / raises
    env: dict = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    status: str                       # pass, FAIL, TIMEOUT, skip
    seconds: float
    figures: List[str]
    tail: str = ""


def _results(output: str) -> List[str]:
    return [ln.strip() for ln in output.splitlines() if ln.strip().startswith("RESULT")]


def _pytest_summary(output: str) -> List[str]:
    lines = [ln.strip("= ").strip() for ln in output.splitlines()
             if (" passed" in ln or " failed" in ln or " skipped" in ln or "no tests ran" in ln)
             and ln.strip().startswith("=")]
    return lines[-1:]


def run_step(step: Step) -> Outcome:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    try:
        proc = subprocess.run(step.argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=step.timeout)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return Outcome(step.name, "TIMEOUT", time.perf_counter() - t0,
                       _results(out) + [f"past its {step.timeout} s limit"], out[-2000:])
    out = proc.stdout + proc.stderr
    figures = _results(out) or _pytest_summary(out)
    status = "pass" if proc.returncode == 0 else "FAIL"
    if status == "pass" and step.check is not None:
        try:
            figures += step.check(step, out)
        except Exception as err:  # the check's own verdict: report it, keep going
            status, figures = "FAIL", figures + [f"check: {err}"]
    if status == "FAIL" and proc.returncode != 0:
        figures.append(f"exit {proc.returncode}")
    return Outcome(step.name, status, time.perf_counter() - t0, figures, out[-3000:])


# --------------------------------------------------------------------------- nccl vs gloo


def _compare_runs(gpu_dir: Path, cpu_dir: Path, backend: str = "nccl") -> List[str]:
    """nccl's probes.csv and cka.csv against gloo's: raises on a difference past tolerance."""
    import pandas as pd

    probes = {k: pd.read_csv(d / "probes.csv") for k, d in (("nccl", gpu_dir), ("gloo", cpu_dir))}
    keys = [c for c in ("target", "method", "layer") if c in probes["gloo"].columns]
    both = probes["nccl"].merge(probes["gloo"], on=keys, suffixes=("_nccl", "_gloo"))
    if len(both) != len(probes["gloo"]) or len(both) == 0:
        raise AssertionError(f"probe rows differ: nccl {len(probes['nccl'])}, gloo "
                             f"{len(probes['gloo'])}, matched {len(both)}")
    gap = float((both["accuracy_nccl"] - both["accuracy_gloo"]).abs().max()) * 100
    cka = {k: pd.read_csv(d / "cka.csv", index_col=0) for k, d in (("nccl", gpu_dir),
                                                                    ("gloo", cpu_dir))}
    cka_gap = float((cka["nccl"] - cka["gloo"]).abs().to_numpy().max())
    ranks = json.loads((gpu_dir / "run.json").read_text()).get("world_size", "?")
    if gap > ACC_POINTS or cka_gap > CKA_ATOL:
        raise AssertionError(f"{backend} vs gloo: accuracy {gap:.2f} points (<= {ACC_POINTS}), "
                             f"CKA {cka_gap:.1e} (<= {CKA_ATOL})")
    return [f"RESULT {backend} ({ranks} rank(s)) vs gloo on the CPU: max |accuracy difference| {gap:.2f} points "
            f"over {len(both)} rows, max |CKA difference| {cka_gap:.1e}"]


def _run_cmd(nproc: int, device: str, out: Path) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--standalone", "-m", "s3viz.run", "--upstream", "tiny", "--random-weights",
            "--corpus", "synthetic:24", "--targets", "phone", "speaker",
            "--measures", "probe", "cka", "--no-figures", "--device", device, "--out", str(out)]


def _nccl_step(device: str, work: Path) -> Step:
    import torch

    ngpu = max(1, torch.cuda.device_count()) if device == "cuda" else 1
    gpu_dir, cpu_dir = work / "nccl", work / "gloo"
    # one shell step: the gloo reference on the CPU, then the run under test
    script = (f"{' '.join(_run_cmd(1, 'cpu', cpu_dir))} && "
              f"{' '.join(_run_cmd(ngpu, device, gpu_dir))}")

    def check(_step, _out):
        return _compare_runs(gpu_dir, cpu_dir, backend)

    backend = "nccl" if device == "cuda" else "gloo"
    return Step(f"torchrun {backend} x{ngpu} vs gloo",
                ["bash", "-c", script], 90, check)


# --------------------------------------------------------------------------- the steps


def steps(device: str, work: Path) -> List[Step]:
    py = sys.executable
    cache = str(work / "bench-cache")
    env = {"S3VIZ_BENCH_CACHE": cache}
    return [
        Step("CUDA-marked tests", [py, "-m", "pytest", "tests", "-m", "gpu", "-q",
                                   "-p", "no:cacheprovider"], 100),
        Step("pooling", [py, str(BENCH / "bench_pooling.py"), "--device", device, "--quick"], 40),
        Step("logistic probe", [py, str(BENCH / "bench_probe.py"), "--device", device,
                                "--quick", "--threads", "4", "--cache", cache], 90,
             env=env),
        Step("CKA", [py, str(BENCH / "bench_similarity.py"), "--device", device, "--quick",
                     "--no-memory", "--threads", "4", "--cache", cache], 40, env=env),
        Step("compare CPU vs GPU", [py, str(BENCH / "bench_compare.py"), "--device", device,
                                    "--quick"], 30),
        Step("extract HuBERT base, batch 8/32", [py, str(BENCH / "bench_extract.py"), "--device",
                                                 device, "--quick", "--batch-sizes", "8", "32",
                                                 "--only-batch-sizes"], 60),
        Step("HF model, batch invariant", [py, str(BENCH / "bench_transformers.py"),
                                           "--device", device, "--quick"], 30),
        _nccl_step(device, work),
    ]


def table(outcomes: List[Outcome]) -> str:
    rows = [f"| {'step':34s} | {'status':7s} | {'s':>5s} | figures |",
            f"| {'-' * 34} | {'-' * 7} | {'-' * 5} | ------- |"]
    for o in outcomes:
        figs = "; ".join(f.replace("RESULT ", "") for f in o.figures) or "-"
        rows.append(f"| {o.name:34s} | {o.status:7s} | {o.seconds:5.0f} | {figs} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--only", nargs="+", default=None, metavar="STEP",
                    help="run the steps whose name starts with one of these words")
    ap.add_argument("--scale-limits", type=float, default=1.0,
                    help="multiply every step's time limit (for a trial with --device cpu)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="s3viz-gpu-check-") as work:
        return _run(args, steps(args.device, Path(work)))


def _run(args, plan) -> int:
    """Run ``plan`` (the steps write only under their scratch folder, removed after)."""
    import torch

    if args.only:
        plan = [s for s in plan if any(s.name.lower().startswith(w.lower()) for w in args.only)]
    for s in plan:
        s.timeout = int(s.timeout * args.scale_limits)
    budget = sum(s.timeout for s in plan)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"make test-gpu: no CUDA device (torch {torch.__version__}, "
              f"torch.version.cuda {torch.version.cuda}): {len(plan)} steps skipped")
        print(table([Outcome(s.name, "skip", 0.0, ["no CUDA"]) for s in plan]))
        return 0
    where = (f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, CUDA "
             f"{torch.version.cuda}" if args.device == "cuda" else "CPU")
    print(f"make test-gpu on {where}, torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"{len(plan)} steps, limits adding up to {budget} s", flush=True)
    outcomes = []
    for step in plan:
        outcome = run_step(step)
        outcomes.append(outcome)
        print(f"  {outcome.status:7s} {outcome.name} ({outcome.seconds:.0f} s)", flush=True)
        if outcome.status != "pass":
            print("    " + outcome.tail.replace("\n", "\n    ")[-2500:], flush=True)
    print(table(outcomes))
    failed = [o.name for o in outcomes if o.status != "pass"]
    print(f"gpu check: {len(outcomes) - len(failed)} of {len(outcomes)} steps passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
