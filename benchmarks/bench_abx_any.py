"""ABX on any label, at the issue's two sizes, against fastabx 0.9.0 on the same items.

1. Across-speaker phone ABX (``across="speaker"``) on ``../shared/realspeech/sppas`` (20
   files, 3 minutes of French and Catalan), every layer of the shipped tiny model.
2. Speaker ABX by phone (``on="speaker", by="phone"``) on the embedded corpus of 240
   utterances, every layer of the tiny model.

Each with s3viz's default subsampling (at most 10 items per group, 5 X speakers per
cell), timed end to end on the store (the target: under 2 minutes on 2 cores). Then the
same items without the X-speaker draw, by s3viz and by fastabx's ``Task`` + ``Score``
(``max_size_group=None``, ``max_x_across=None``: both score every cell of those items),
with the values compared and the ratio of times printed. fastabx needs Python >= 3.12:
the venv ``bench_peers.py`` makes (``build/peers-venv312``).

    .venv/bin/python benchmarks/bench_abx_any.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REAL = ROOT.parent / "shared" / "realspeech"
VENV = ROOT / "build" / "peers-venv312" / "bin" / "python"

FASTABX_SCRIPT = r'''
import json, sys, time
import torch
from fastabx import Dataset, Score, Task
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
out = []
t0 = time.perf_counter()
for layer in args["layers"]:
    ds = Dataset.from_item(args["item"], f"{args['root']}/layer{layer}", 50)
    task = Task(ds, on=args["on"], by=args["by"] or None, across=args["across"] or None)
    levels = list(reversed(args["by"])) + ([tuple(args["across"])] if args["across"] else [])
    out.append(Score(task, "angular").collapse(levels=levels or None))
print(json.dumps({"seconds": time.perf_counter() - t0, "abx_error": out}))
'''


def _items_and_features(store, on, by, across, folder: Path):
    """The items s3viz keeps with its default group cap (no X draw), as a fastabx item
    file and one .pt per utterance and layer."""
    import torch

    from s3viz.measures._abx_task import item_tier, label_values, resolve_conditions, subsample
    from s3viz.segments import segment_table

    on, by, across = resolve_conditions(on, by, across)
    tier = item_tier(on, by, across)
    table = segment_table(store, 0, tier)
    values = {n: label_values(table, store.labels, n, tier) for n in [on, *by, *across]}
    table = table.iloc[subsample(table, values, 10, 0)].reset_index(drop=True)
    values = {n: label_values(table, store.labels, n, tier) for n in [on, *by, *across]}
    names = list(values)
    lines = ["#file onset offset " + " ".join(names)]
    for k, r in enumerate(table.itertuples()):
        on_s, off_s = (r.frame_start + 0.5) / 50, (r.frame_end - 0.5) / 50
        lines.append(f"u{r.utt} {on_s:.2f} {off_s:.2f} " + " ".join(
            str(values[n][k]).replace(" ", "_") for n in names))
    (folder / "items.item").write_text("\n".join(lines) + "\n")
    for layer in range(store.num_layer):
        d = folder / f"layer{layer}"
        d.mkdir(exist_ok=True)
        for i in range(len(store)):  # ids may hold "/" and spaces: files by position
            torch.save(store.utterance(i)[layer].clone(), d / f"u{i}.pt")
    return len(table), table


def case(name, store, on, by, across, threads: int) -> dict:
    import numpy as np

    import s3viz

    t0 = time.perf_counter()
    res = s3viz.abx_layers(store, on=on, by=by, across=across, device="cpu", progress=False)
    default_s = time.perf_counter() - t0
    row = {"case": name, "utterances": len(store), "layers": store.num_layer,
           "default_seconds": round(default_s, 1), "default_items": int(res["n_items"].iat[0]),
           "default_cells": int(res["n_cells"].iat[0]),
           "abx_error": [round(float(v), 4) for v in res["abx_error"]]}
    print(json.dumps(row), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_items, table = _items_and_features(store, on, by, across, folder)
        keep = table["utt"].unique()
        t0 = time.perf_counter()
        same = s3viz.abx_layers(store, on=on, by=by, across=across, device="cpu",
                                max_items=(10, None), progress=False)
        s3viz_s = time.perf_counter() - t0
        assert int(same["n_items"].iat[0]) == n_items, (same["n_items"].iat[0], n_items)
        row.update(same_items=n_items, same_utterances=len(keep),
                   s3viz_seconds=round(s3viz_s, 1))
        if VENV.exists():
            from s3viz.measures._abx_task import resolve_conditions

            on_, by_, across_ = resolve_conditions(on, by, across)
            arg = json.dumps({"item": str(folder / "items.item"), "root": str(folder),
                              "layers": list(range(store.num_layer)), "on": on_, "by": by_,
                              "across": across_, "threads": threads})
            env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
            got = subprocess.run([str(VENV), "-c", FASTABX_SCRIPT, arg], env=env, check=True,
                                 capture_output=True, text=True)
            fa = json.loads(got.stdout.strip().splitlines()[-1])
            diff = float(np.max(np.abs(np.asarray(fa["abx_error"])
                                       - same["abx_error"].to_numpy())))
            row.update(fastabx_seconds=round(fa["seconds"], 1), max_difference=diff,
                       fastabx_over_s3viz=round(fa["seconds"] / s3viz_s, 2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import s3viz
    from s3viz.data import load_folder, synthetic_corpus
    from s3viz.upstreams import get_upstream

    up = get_upstream("tiny")
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; torch threads "
          f"{args.threads}; fastabx venv: {'yes' if VENV.exists() else 'missing'}", flush=True)
    rows = []
    if (REAL / "sppas").exists():
        root = REAL / "sppas" / "samples"
        corpus = load_folder(root, REAL / "sppas" / "speakers.csv", pattern="samples-*/*.wav",
                             alignments=root / "annotation-results",
                             alignment_pattern="{parent}/{stem}-merge.TextGrid",
                             phone_tier="PhonAlign", word_tier="TokensAlign", strict=False)
        store = s3viz.extract(up, corpus, device="cpu", progress=False)
        rows.append(case("across-speaker phone ABX, SPPAS", store, "phone", None, "speaker",
                         args.threads))
        print(json.dumps(rows[-1]), flush=True)
    store = s3viz.extract(up, synthetic_corpus(240, seed=0), device="cpu", progress=False)
    rows.append(case("speaker ABX by phone, embedded 240", store, "speaker", "phone", None,
                     args.threads))
    print(json.dumps(rows[-1]), flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
