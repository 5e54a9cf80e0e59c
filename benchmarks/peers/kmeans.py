"""k-means Lloyd iterations: s3viz.units.kmeans against faiss-cpu and scikit-learn.

The same frames (the labelled frames of ``LAYERS`` of ``_peers_data.store(n)``, centred
as ``unit_quality`` centres them), the same ``k``, the same ``ITERS`` Lloyd steps with
no early stop, and the same starting centroids on every side: s3viz's k-means++
draw from ``SEED`` (``kmeans(x, k, iters=0)``, untimed, also reported as
``init_seconds`` on s3viz's side). Timed: the Lloyd iterations from those centroids:
``kmeans(x, k, iters=ITERS, tol=0, init=c0)``; faiss's ``Kmeans(d, k, niter=ITERS,
max_points_per_centroid=<all frames>).train(x, init_centroids=c0)``; scikit-learn's
``KMeans(k, init=c0, n_init=1, max_iter=ITERS, tol=0, algorithm="lloyd").fit(x)``.
s3viz and scikit-learn end with an assignment to the final centroids (s3viz's
inertia, scikit-learn's ``labels_``); faiss's ``train`` does not (its last ``obj`` is
of the step before), so its timed side adds the ``index.search`` a researcher runs
for the units. The units and inertia compared are then taken untimed from each
side's centroids by one exact assignment (``s3viz.units.nearest``), alike.
``agree`` compares PNMI against the phones and the inertia with s3viz's.
"""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "kmeans"
LAYERS = (6, 12)
KS = (100, 500)
ITERS = 20
SEED = 0
PEERS = ("faiss", "sklearn")


def cases(sizes) -> list[dict]:
    out = []
    for n in sizes:
        for k in KS:
            for side in ("s3viz",) + PEERS:
                out.append({"task": f"kmeans k={k} iters={ITERS}", "size": int(n), "side": side,
                            "k": k, "iters": ITERS, "layers": list(LAYERS), "seed": SEED})
    return out


def _frames(n: int, layers):
    """{layer: (centred float32 labelled frames, their phone labels)}."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import time

    import _peers_data
    import numpy as np
    from s3viz._fs import FolderBusyError

    for wait in range(60):  # another section may hold the cache folder's lock a moment
        try:
            st = _peers_data.store(n)
            break
        except FolderBusyError:
            if wait == 59:
                raise
            time.sleep(5)
    out = {}
    for layer in layers:
        x = st.layer(layer)[0]
        lab = np.asarray(st.frame_labels(layer))
        keep = lab != ""
        x = x[keep]
        out[layer] = ((x - x.double().mean(0).float()).contiguous(), lab[keep])
    return out


def run(case: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    import torch
    from _run import measured
    from s3viz.units import kmeans, nearest, unit_measures

    k, iters, seed, side = case["k"], case["iters"], case["seed"], case["side"]
    data = _frames(case["size"], case["layers"])
    init, init_s = {}, 0.0
    import time
    for layer, (x, _) in data.items():  # the same starting centroids for every side
        t = time.perf_counter()
        init[layer] = kmeans(x, k, iters=0, seed=seed)[0]
        init_s += time.perf_counter() - t
    cent = {}
    out: dict = {}
    if side == "faiss":
        import faiss
        xs = {layer: x.numpy() for layer, (x, _) in data.items()}
        c0 = {layer: c.numpy() for layer, c in init.items()}
        with measured(out):
            for layer, x in xs.items():
                km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed,
                                  max_points_per_centroid=x.shape[0] // k + 1)
                km.train(x, init_centroids=c0[layer])
                km.index.search(x, 1)  # the units of every frame, as s3viz's last step
                cent[layer] = torch.from_numpy(km.centroids)
    elif side == "sklearn":
        from sklearn.cluster import KMeans
        xs = {layer: x.numpy() for layer, (x, _) in data.items()}
        c0 = {layer: c.numpy() for layer, c in init.items()}
        n_iter = {}
        with measured(out):
            for layer, x in xs.items():
                km = KMeans(n_clusters=k, init=c0[layer], n_init=1, max_iter=iters, tol=0,
                            algorithm="lloyd", random_state=seed).fit(x)
                cent[layer] = torch.from_numpy(np.asarray(km.cluster_centers_, np.float32))
                n_iter[layer] = int(km.n_iter_)
        out["n_iter"] = n_iter
    else:
        with measured(out):
            for layer, (x, _) in data.items():
                cent[layer] = kmeans(x, k, iters=iters, tol=0, init=init[layer])[0]
        out["init_seconds"] = init_s
    out["pnmi"], out["inertia"] = {}, {}
    for layer, (x, lab) in data.items():
        units, dist = nearest(x, cent[layer])
        out["pnmi"][str(layer)] = unit_measures(lab, units.numpy())["pnmi"]
        out["inertia"][str(layer)] = float(dist.double().mean())
    out["frames"] = {str(layer): int(x.shape[0]) for layer, (x, _) in data.items()}
    return out


def agree(results) -> dict:
    ref = {(c["task"], c["size"]): r for c, r in results if c["side"] == "s3viz"}
    out = {}
    for c, r in results:
        base = ref.get((c["task"], c["size"]))
        if c["side"] == "s3viz" or base is None:
            continue
        out[f"{c['task']} n={c['size']} {c['side']}"] = {
            "pnmi_max_abs_diff": max(abs(r["pnmi"][s] - base["pnmi"][s]) for s in base["pnmi"]),
            "inertia_max_rel_diff": max(abs(r["inertia"][s] / base["inertia"][s] - 1)
                                        for s in base["inertia"]),
            "pnmi_s3viz": base["pnmi"], "pnmi_peer": r["pnmi"],
            "seconds_ratio_peer_over_s3viz": r["seconds"] / base["seconds"],
        }
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _run

    _run.main(NAME)
