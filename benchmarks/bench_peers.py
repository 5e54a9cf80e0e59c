"""Benchmark: s3viz against the library a researcher would otherwise use, on the same work.

One run measures every section of ``benchmarks/peers/`` on the same frames (a
random-weight HuBERT base over synthesized utterances, ``_peers_data.py``):

- ``abx``: ``s3viz.abx_layers`` vs fastabx 0.9.0's ``zerospeech_abx`` (same items);
- ``kmeans``: ``s3viz.units.kmeans`` vs faiss-cpu's ``Kmeans`` and scikit-learn's
  ``KMeans`` (same k, iterations and initial centroids);
- ``cka``: ``s3viz.layer_similarity`` vs a plain float32 torch CKA;
- ``ridge``: ``s3viz.probe_layers`` (penalty chosen per fold) vs scikit-learn's
  ``RidgeClassifier`` at one fixed penalty and ``RidgeClassifierCV`` over the grid.

Every case runs in its own process on one thread (``peers/_run.py``); the cases of
a section are interleaved ``--repeats`` times (a case marked ``once``, a slow peer,
runs once) and the medians compared: ``ratio`` is
the peer's CPU time over s3viz's (above 1: s3viz is faster; one thread, so CPU time
is the work whatever else the machine runs; the wall-time ratio in brackets),
``peak MiB`` the high-water mark of resident memory during the timed work above
what the process held before it, ``agreement`` how far each peer's values are
from s3viz's. fastabx needs Python >= 3.12: the script makes
a virtual environment for it once (``--venv312``, from the first ``python3.12``
found) and reuses it.

    make bench-peers        # installs faiss-cpu into .venv, then runs this
    .venv/bin/python benchmarks/bench_peers.py [--sizes 120 480] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
import _run  # noqa: E402

SECTIONS = ("abx", "kmeans", "cka", "ridge")
FASTABX = ("fastabx==0.9.0", "torch==2.11.0", "numpy", "pandas")


def python312(venv: Path) -> str:
    """The venv's interpreter with fastabx, made once from the first Python >= 3.12 found."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import fastabx"],
                                      capture_output=True).returncode == 0:
        return str(py)
    base = next((p for p in (shutil.which("python3.13"), shutil.which("python3.12"),
                             *sorted(Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python")))
                 if p), None)
    if base is None:
        raise SystemExit("fastabx needs Python >= 3.12 and none was found (python3.12 on "
                         "PATH or under ~/.pyenv); install one or run --sections without abx")
    print(f"(making {venv} with {base} for fastabx; once)", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", *FASTABX], check=True)
    return str(py)


def run_section(name: str, sizes: list[int], repeats: int, py312: str | None) -> dict:
    """Every case of section ``name`` ``repeats`` times, interleaved; medians per case."""
    mod = importlib.import_module(name)
    cases = mod.cases(sizes)
    for c in cases:
        if c.get("python"):  # only fastabx runs under another interpreter
            c["python"] = py312
    runs: dict[int, list[dict]] = {i: [] for i in range(len(cases))}
    loads = [_run.load()]
    for r in range(repeats):
        for i, case in enumerate(cases):
            if r and case.get("once"):  # a slow peer a section runs once
                continue
            runs[i].append(_run.run_case(name, case))
            print(f"  {name} {case['task']} n={case['size']} {case['side']}: "
                  f"{runs[i][-1]['seconds']:.2f} s (repeat {r + 1}, {_run.load()})", flush=True)
        loads.append(_run.load())
    results = [(case, dict(runs[i][0], **{key: statistics.median(x[key] for x in runs[i])
                                          for key in ("seconds", "cpu_seconds", "peak_mib")},
                           all_seconds=[x["seconds"] for x in runs[i]]))
               for i, case in enumerate(cases)]
    return {"results": results, "agreement": mod.agree(results), "loads": loads}


def table(name: str, out: dict) -> str:
    """Markdown rows: per task and size, s3viz's time and peak, each peer's, the ratio."""
    rows = ["| task | utterances | side | wall s | CPU s | peak MiB | ratio, CPU (wall) |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    ref = {(c["task"], c["size"]): r for c, r in out["results"] if c["side"] == "s3viz"}
    for c, r in out["results"]:
        base = ref.get((c["task"], c["size"]))
        ratio = ("" if c["side"] == "s3viz" or base is None
                 else f"**{r['cpu_seconds'] / base['cpu_seconds']:.2f}x** "
                      f"({r['seconds'] / base['seconds']:.2f}x)")
        rows.append(f"| {c['task']} | {c['size']} | {c['side']} | {r['seconds']:.2f} | "
                    f"{r['cpu_seconds']:.2f} | {r['peak_mib']:.0f} | {ratio} |")
    agree = "\n".join(f"- {k}: {v}" for k, v in out["agreement"].items())
    return (f"### {name}\n\n" + "\n".join(rows) + f"\n\nAgreement:\n{agree}\n\n"
            f"Load during the section: {', '.join(out['loads'])}\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[120, 480],
                    help="utterances of the synthesized corpus (each built once and cached)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="120 utterances, one repeat")
    ap.add_argument("--venv312", type=Path, default=HERE.parent / "build" / "peers-venv312")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [120], 1
    py312 = python312(args.venv312) if "abx" in args.sections else None
    sys.path.insert(0, str(HERE))
    import _peers_data  # the frames, built before any timing

    for n in args.sizes:
        print(f"frames: {_peers_data.describe(_peers_data.store(n))}", flush=True)
    report, everything = [f"one thread per side, medians of {args.repeats} interleaved runs, "
                          f"{os.cpu_count()} cores"], {}
    for name in args.sections:
        everything[name] = run_section(name, args.sizes, args.repeats, py312)
        report.append(table(name, everything[name]))
        print(report[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1, default=str))
    print("\n".join(report))


if __name__ == "__main__":
    main()
