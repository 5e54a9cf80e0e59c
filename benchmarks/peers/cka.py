"""Peers section: the 13x13 frame-level linear CKA of every stored layer.

s3viz: ``s3viz.layer_similarity(store, device="cpu")`` (exact, streamed). The peer
is what a researcher writes in plain torch: read each layer's frames
(``store.layer(i)``), centre them, and for every pair ``i <= j`` the feature-space
form ``||X_j^T X_i||_F^2 / (||X_i^T X_i||_F ||X_j^T X_j||_F)`` with float32
matmuls (``torch-float32``); the same in float64 (``torch-float64``) is the
accuracy reference. Every side starts from the opened store and reads its frames
inside the timed block. ``agree`` gives, per size, each side's largest |CKA
difference| from the float64 reference and from s3viz, and each side's peak memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "cka"
TASK = "cka 13x13 frame"
SIDES = ("s3viz", "torch-float32", "torch-float64")


def cases(sizes):
    """Every side at every size (s3viz first, then the peers)."""
    return [{"task": TASK, "size": int(n), "side": side} for n in sizes for side in SIDES]


def _plain_cka(store, dtype):
    """The researcher's version: all layers in memory, centred, every pair's matmul."""
    import torch

    xs = []
    for i in range(store.num_layer):
        x = store.layer(i)[0].to(dtype)
        xs.append(x - x.mean(0))
    n_l = len(xs)
    hs = torch.zeros(n_l, n_l, dtype=torch.float64)
    for i in range(n_l):
        for j in range(i, n_l):
            hs[i, j] = hs[j, i] = float((xs[j].T @ xs[i]).pow(2).sum())
    d = hs.diagonal().sqrt()
    return (hs / torch.outer(d, d)).tolist()


def run(case):
    """One side at one size: the CKA table (list of rows), seconds, peak MiB."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch
    from _peers_data import store as peers_store
    from _run import measured

    st = peers_store(case["size"])
    out = {"frames": int(sum(st.lengths(0)))}
    if case["side"] == "s3viz":
        import s3viz

        with measured(out):
            table = s3viz.layer_similarity(st, device="cpu").to_numpy().tolist()
    else:
        dtype = torch.float32 if case["side"] == "torch-float32" else torch.float64
        with measured(out):
            table = _plain_cka(st, dtype)
    out["cka"] = table
    return out


def agree(results):
    """Per size: each side's max |CKA - float64 reference| and |CKA - s3viz|, its wall and
    CPU seconds and peak MiB; the ratios peer / s3viz (above 1: s3viz faster)."""
    by = {(c["size"], c["side"]): r for c, r in results}
    out = {}
    for size in sorted({c["size"] for c, _ in results}):
        ref, ours = by.get((size, "torch-float64")), by.get((size, "s3viz"))
        row = {}
        for side in SIDES:
            r = by.get((size, side))
            if r is None:
                continue
            info = {"seconds": round(r["seconds"], 3), "cpu_seconds": round(r["cpu_seconds"], 3),
                    "peak_mib": round(r["peak_mib"], 1)}
            if ref is not None:
                info["max_diff_float64"] = _maxdiff(r["cka"], ref["cka"])
            if ours is not None and side != "s3viz":
                info["max_diff_s3viz"] = _maxdiff(r["cka"], ours["cka"])
                info["time_ratio_vs_s3viz"] = round(r["seconds"] / ours["seconds"], 3)
                info["cpu_ratio_vs_s3viz"] = round(r["cpu_seconds"] / ours["cpu_seconds"], 3)
            row[side] = info
        out[f"{TASK}, {size} utterances"] = row
    return out


def _maxdiff(a, b) -> float:
    return max(abs(u - v) for ra, rb in zip(a, b) for u, v in zip(ra, rb))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _run

    _run.main(NAME)
