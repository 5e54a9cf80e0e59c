"""ABX and k-means unit quality on 50k frames x 13 layers: CPU time and peak memory.

A made-up store (seeded): 13 layers of 768 dimensions, 50,000 frames in
utterances of 20 speakers, phones of 3 to 12 frames from 40 phone classes
whose means differ a little, so neither measure is at its floor or ceiling.
Each measurement runs in its own subprocess and reports its peak resident
memory above the store itself (``ru_maxrss``).

Baselines:

- ABX: the loop one writes first, per item pair a NumPy DTW (the Libri-light
  reference's recursion, one pair at a time) and per cell the full
  ``nx * na * nb`` comparison; timed against ``s3viz.abx_layers`` on the same
  work (one speaker of layer 0, all its cells), then ``abx_layers`` alone on
  every speaker and layer.
- Unit quality: scikit-learn's ``KMeans(init="k-means++", n_init=1)`` and its
  ``mutual_info_score``, against ``s3viz.unit_quality`` on every layer (same
  k, same frames, same number of iterations at most).

    .venv/bin/python benchmarks/bench_abx_units.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, math, resource, sys, time
import numpy as np, torch
sys.path.insert(0, BENCH_DIR)
from bench_abx_units import make_store
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
store = make_store(args["frames"], args["layers"], args["dim"])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = {}
if args["what"] == "abx":
    import s3viz
    res = s3viz.abx_layers(store, device="cpu")
    out["abx_error"] = res["abx_error"].round(4).tolist()
    out["n_items"] = int(res["n_items"].iat[0])
elif args["what"] == "units":
    import s3viz
    res = s3viz.unit_quality(store, k=args["k"], max_frames=None, device="cpu", iters=args["iters"])
    out["pnmi"] = res["pnmi"].round(4).tolist()
elif args["what"] == "units_sklearn":
    from sklearn.cluster import KMeans
    from sklearn.metrics import mutual_info_score
    from scipy.stats import entropy
    pn = []
    for layer in range(store.num_layer):
        lab = store.frame_labels(layer)
        keep = np.flatnonzero(lab != "")
        x = store.layer(layer)[0].numpy()[keep]
        z = KMeans(args["k"], init="k-means++", n_init=1, max_iter=args["iters"],
                   random_state=0).fit_predict(x)
        pn.append(round(mutual_info_score(lab[keep], z) / entropy(
            np.unique(lab[keep], return_counts=True)[1]), 4))
    out["pnmi"] = pn
elif args["what"] in ("abx_one", "abx_naive"):
    from s3viz.segments import segment_table
    tab = segment_table(store, 0)
    spk = tab["speaker"].iat[0]
    if args["what"] == "abx_one":
        import s3viz
        from s3viz.store import LayerStore
        # one speaker's utterances, layer 0, as a store of their own (same work as naive)
        mine = [i for i in range(len(store)) if store.labels["speaker"].iat[i] == spk]
        one = LayerStore.from_tensors(
            [[store.utterance(i)[0]] for i in mine], downsample_rates=store.downsample_rates[:1],
            labels=store.labels.iloc[mine].reset_index(drop=True),
            phones=[store.phones[i] for i in mine], receptive_fields=store.receptive_fields[:1])
        t = time.perf_counter()  # the store copy is not ABX's time
        out["abx_error"] = round(float(s3viz.abx_layers(one, device="cpu")["abx_error"].iat[0]), 4)
    else:
        from bench_abx_units import naive_abx
        out["abx_error"] = round(naive_abx(store, tab[tab["speaker"] == spk]), 4)
out["seconds"] = time.perf_counter() - t
out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def make_store(frames: int, layers: int, dim: int):
    """The seeded made-up store of the module doc."""
    import numpy as np
    import pandas as pd
    import torch

    from s3viz.store import LayerStore

    rng = np.random.default_rng(0)
    means = rng.standard_normal((40, dim)).astype(np.float32) * 0.35
    gen = torch.Generator().manual_seed(0)
    hidden, tables, labels, total, u = [], [], [], 0, 0
    while total < frames:
        n_ph = int(rng.integers(15, 40))
        lens = rng.integers(3, 13, size=n_ph)
        lab = rng.integers(40, size=n_ph)
        n = int(lens.sum())
        ends = np.cumsum(lens)
        starts = ends - lens
        mean = torch.from_numpy(np.repeat(means[lab], lens, axis=0))
        row = [mean * (0.5 + layer / layers) + torch.randn(n, dim, generator=gen)
               for layer in range(layers)]
        hidden.append(row)
        tables.append(pd.DataFrame({"phone": [f"p{v}" for v in lab], "word": "w",
                                    "start": starts * 320, "end": ends * 320}))
        labels.append({"id": f"u{u}", "speaker": f"s{u % 20}"})
        total += n
        u += 1
    return LayerStore.from_tensors(hidden, downsample_rates=[320] * layers,
                                   labels=pd.DataFrame(labels), phones=tables)


def _dtw_numpy(d):
    """Libri-light's recursion for one pair, in Python loops (the baseline)."""
    import numpy as np

    n, m = d.shape
    c = np.empty((n, m), dtype=np.float32)
    steps = np.empty((n, m), dtype=np.int64)
    c[0, 0], steps[0, 0] = d[0, 0], 1
    for i in range(1, n):
        c[i, 0], steps[i, 0] = c[i - 1, 0] + d[i, 0], i + 1
    for j in range(1, m):
        c[0, j], steps[0, j] = c[0, j - 1] + d[0, j], j + 1
    for i in range(1, n):
        for j in range(1, m):
            opts = ((c[i - 1, j - 1], steps[i - 1, j - 1]), (c[i, j - 1], steps[i, j - 1]),
                    (c[i - 1, j], steps[i - 1, j]))
            best = min(opts, key=lambda o: o[0])
            c[i, j], steps[i, j] = d[i, j] + best[0], best[1] + 1
    return c[n - 1, m - 1] / steps[n - 1, m - 1]


def naive_abx(store, tab) -> float:
    """Within-speaker, any-context ABX of the items ``tab`` of one speaker, pair by pair."""
    import math

    import numpy as np

    x = store.layer(0)[0].numpy()
    feats = []
    for r in tab.itertuples():
        f = x[r.row_start:r.row_end]
        feats.append(f / np.linalg.norm(f, axis=1, keepdims=True))
    n = len(feats)
    dist = np.empty((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(n):
            dist[i, j] = _dtw_numpy(np.arccos(np.clip(feats[i] @ feats[j].T, -1, 1)) / math.pi)
    lab = tab["label"].to_numpy()
    errs = {}
    for p in np.unique(lab):
        a = np.flatnonzero(lab == p)
        if len(a) < 2:
            continue
        for q in np.unique(lab):
            if q == p:
                continue
            b = np.flatnonzero(lab == q)
            dxa = dist[np.ix_(a, a)]
            dxb = dist[np.ix_(a, b)]
            sc = 0.5 * (1 - np.sign(dxa[:, :, None] - dxb[:, None, :]))
            sc[np.arange(len(a)), np.arange(len(a))] = 0
            errs[(p, q)] = 1 - sc.sum() / (len(a) * (len(a) - 1) * len(b))
    return float(np.mean(list(errs.values())))


def _run(args: dict) -> dict:
    code = CHILD.replace("BENCH_DIR", repr(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                       text=True)
    if p.returncode:
        raise RuntimeError(f"{args['what']} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5k frames of 128 dims")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--only", choices=["abx", "units"], help="run one of the two halves")
    a = ap.parse_args(argv)
    common = {"frames": 5000 if a.quick else 50000, "layers": 13, "dim": 128 if a.quick else 768,
              "threads": a.threads, "k": 20 if a.quick else a.k, "iters": a.iters}
    print(f"store: {common['frames']} frames x {common['layers']} layers x {common['dim']} "
          f"dims; {a.threads} thread(s); load {os.getloadavg()[0]:.1f}")
    res = {}
    whats = {"abx": ("abx_naive", "abx_one", "abx"), "units": ("units_sklearn", "units")}
    for what in whats.get(a.only, whats["abx"] + whats["units"]):
        t = time.perf_counter()
        res[what] = _run({**common, "what": what})
        r = res[what]
        print(f"{what:>14}: {r['seconds']:8.1f} s, peak {r['peak_mb']:7.0f} MB "
              f"(wall {time.perf_counter() - t:.0f} s with the store)  "
              f"{ {k: v for k, v in r.items() if k not in ('seconds', 'peak_mb')} }")
    if "abx" in res:
        _report_abx(res)
    if "units" in res:
        print(f"RESULT unit_quality: {res['units_sklearn']['seconds'] / res['units']['seconds']:.1f}x "
              f"the speed of scikit-learn's KMeans (13 layers, k={common['k']}); peak "
              f"{res['units']['peak_mb']:.0f} vs {res['units_sklearn']['peak_mb']:.0f} MB")


def _report_abx(res):
    one, naive = res["abx_one"], res["abx_naive"]
    assert abs(one["abx_error"] - naive["abx_error"]) < 1e-3, (one, naive)
    print(f"RESULT abx: {naive['seconds'] / one['seconds']:.0f}x faster than the pair-by-pair "
          f"loop on one speaker of one layer (same error {one['abx_error']}); all "
          f"{res['abx']['n_items']} items x 13 layers in {res['abx']['seconds']:.0f} s, peak "
          f"{res['abx']['peak_mb']:.0f} MB above the store")


if __name__ == "__main__":
    main()
