"""benchmarks/gpu_check.py (`make test-gpu`): skips cleanly without CUDA, fails loudly on a failing step."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_skips_every_step_cleanly_without_cuda():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stdout
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and "skip" in ln]
    names = [s.name for s in _module().steps("cuda", Path("/tmp/unused"))]
    assert len(rows) == len(names) >= 7


def test_the_plan_covers_each_gpu_path_within_eight_minutes():
    gc = _module()
    plan = gc.steps("cuda", Path("/tmp/unused"))
    text = " ".join(" ".join(s.argv) for s in plan)
    for needle in ("-m gpu", "bench_pooling.py", "bench_probe.py", "bench_similarity.py",
                   "bench_compare.py", "bench_extract.py", "--batch-sizes 8 32",
                   "bench_transformers.py",
                   "torch.distributed.run", "--device cuda"):
        assert needle in text, f"make test-gpu does not run {needle!r}"
    assert sum(s.timeout for s in plan) <= 8 * 60, "the limits must fit 8 minutes of device time"


@pytest.mark.slow
def test_benchmark_steps_accept_their_arguments():
    """Each benchmark's parser takes every flag the GPU plan passes: argparse reads them all
    before the script refuses ``--device cuda`` without CUDA, so an unknown flag would end
    in 'unrecognized arguments' instead of the script's own 'no CUDA device here'."""
    gc = _module()
    for step in gc.steps("cuda", Path("/tmp/unused"))[1:-1]:
        proc = subprocess.run(step.argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
        if torch.cuda.is_available():
            pytest.skip("CUDA present: the steps would run for real")
        assert proc.returncode == 2, f"{step.name}: {proc.stderr[-500:]}"
        assert "no CUDA device here" in proc.stderr, f"{step.name}: {proc.stderr[-500:]}"


def test_a_failing_or_hanging_step_fails_the_run(monkeypatch, capsys):
    gc = _module()
    ok = gc.Step("ok", [sys.executable, "-c", "print('RESULT fine: 3x')"], 30)
    bad = gc.Step("bad", [sys.executable, "-c", "import sys; print('RESULT 1x'); sys.exit(3)"], 30)
    slow = gc.Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1)
    outcomes = [gc.run_step(s) for s in (ok, bad, slow)]
    assert [o.status for o in outcomes] == ["pass", "FAIL", "TIMEOUT"]
    assert outcomes[0].figures == ["RESULT fine: 3x"]
    assert "exit 3" in outcomes[1].figures
    table = gc.table(outcomes)
    assert "fine: 3x" in table and "TIMEOUT" in table

    monkeypatch.setattr(gc, "steps", lambda device, work: [ok, bad])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "fake GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gc.main([]) == 1
    assert "1 of 2 steps passed" in capsys.readouterr().out


def test_a_check_that_raises_fails_the_step():
    gc = _module()

    def check(step, out):
        raise AssertionError("nccl vs gloo: accuracy 3.00 points")

    step = gc.Step("cmp", [sys.executable, "-c", "pass"], 30, check)
    outcome = gc.run_step(step)
    assert outcome.status == "FAIL" and "accuracy 3.00 points" in outcome.figures[-1]


def test_compare_runs_refuses_a_gap(tmp_path):
    import pandas as pd

    gc = _module()
    for name, acc, cka in (("a", 0.50, 0.9), ("b", 0.52, 0.9)):
        d = tmp_path / name
        d.mkdir()
        pd.DataFrame({"target": ["phone"], "method": ["ridge"], "layer": [0],
                      "accuracy": [acc]}).to_csv(d / "probes.csv", index=False)
        pd.DataFrame([[1.0, cka], [cka, 1.0]]).to_csv(d / "cka.csv")
        (d / "run.json").write_text('{"world_size": 1}')
    with pytest.raises(AssertionError, match="accuracy 2.00 points"):
        gc._compare_runs(tmp_path / "a", tmp_path / "b")
    assert "0.00 points" in gc._compare_runs(tmp_path / "a", tmp_path / "a")[0]
