"""Ridge phone probes of all 13 layers, 5 speaker-grouped folds: s3viz vs scikit-learn.

s3viz: ``probe_layers(store, "phone")`` with its default penalty grid (``LAMBDAS``, a
penalty picked per fold on a dev fold), on the store's chunks loaded into memory first
(untimed; the profile, statistics and scoring passes read them, timed). scikit-learn,
on the same frames, phones and folds (``probe_folds``, as ``probe_layers``), features
in memory (untimed), per layer and fold ``make_pipeline(StandardScaler(), ...).fit``
then ``predict`` (timed): ``RidgeClassifier(alpha=lam * n_train)``, s3viz's chosen
penalty of that layer and fold on sklearn's scale (s3viz's ``lam`` is relative to the
standardised covariance's mean eigenvalue, 1, and its loss a mean: equal predictions),
and ``RidgeClassifierCV`` over the same 12 penalties (its leave-one-out choice).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAME = "ridge"
_TASK = "ridge phone probe, 13 layers x 5 folds"
_SIDES = ("s3viz", "sklearn RidgeClassifier (one penalty)", "sklearn RidgeClassifierCV")


def cases(sizes) -> list[dict]:
    """Every side at every size, but ``RidgeClassifierCV`` (about 10x the others) only at
    the smallest size and once (``"once"``: not repeated by the driver)."""
    out = [{"task": _TASK, "size": int(n), "side": side} for n in sizes for side in _SIDES[:2]]
    return out + [{"task": _TASK, "size": int(min(sizes)), "side": _SIDES[2], "once": True}]


def _memory_store(n: int):
    """The cached store of ``n`` utterances with its chunks read into memory."""
    import _peers_data
    from s3viz.store import MemoryChunks

    st = _peers_data.store(n)
    st._backend = MemoryChunks([[st._backend.load(c, s).clone() for s in range(st.num_layer)]
                                for c in range(len(st._plan))])
    return st


def _chosen_penalties(st):
    """s3viz's penalty per (layer, fold), recorded from an untimed ``probe_layers`` run."""
    import s3viz
    import s3viz.measures.probe as mp

    chosen, fit = [], mp.ridge_fit_folds

    def recording(*a, **kw):
        models = fit(*a, **kw)
        chosen.append([m[2][0] for m in models])
        return models

    mp.ridge_fit_folds = recording
    try:
        s3viz.probe_layers(st, "phone")
    finally:
        mp.ridge_fit_folds = fit
    return chosen


def run(case: dict) -> dict:
    import numpy as np
    from _run import measured

    import s3viz
    from s3viz.probe.ridge import LAMBDAS

    st, out = _memory_store(case["size"]), {}
    if case["side"] == "s3viz":
        s3viz.probe_layers(st, "phone", layers=[0])  # warm-up (imports, first calls)
        with measured(out):
            res = s3viz.probe_layers(st, "phone")
        out["accuracy"] = [float(v) for v in res["accuracy"]]
        out["lambda"] = [float(v) for v in res["lambda"]]
        return out
    from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fold_utt = s3viz.probe.probe_folds(st)["fold"].to_numpy()
    lam = _chosen_penalties(st) if "CV" not in case["side"] else None
    data = []
    for layer in range(st.num_layer):
        x = st.layer(layer)[0].numpy()
        lab = st.frame_labels(layer, "phone")
        keep = lab != ""
        fold = np.repeat(fold_utt, st.lengths(layer))[keep]
        data.append((x[keep], lab[keep], fold))
    acc = []
    with measured(out):
        for layer, (x, y, fold) in enumerate(data):
            right = 0
            for k in range(5):
                tr, te = fold != k, fold == k
                clf = (RidgeClassifier(alpha=lam[layer][k] * int(tr.sum())) if lam is not None
                       else RidgeClassifierCV(alphas=[v * int(tr.sum()) for v in LAMBDAS]))
                pipe = make_pipeline(StandardScaler(), clf).fit(x[tr], y[tr])
                right += int((pipe.predict(x[te]) == y[te]).sum())
            acc.append(right / len(y))
    out["accuracy"] = acc
    return out


def agree(results) -> dict:
    ref = {c["size"]: r for c, r in results if c["side"] == "s3viz"}
    out = {}
    for c, r in results:
        if c["side"] == "s3viz" or c["size"] not in ref:
            continue
        diff = [a - b for a, b in zip(r["accuracy"], ref[c["size"]]["accuracy"])]
        out[f"{c['task']} n={c['size']} {c['side']}"] = {
            "max_abs_accuracy_difference": max(abs(d) for d in diff),
            "accuracy_difference_per_layer": [round(d, 6) for d in diff],
            "seconds_ratio_peer_over_s3viz": r["seconds"] / ref[c["size"]]["seconds"]}
    return out


if __name__ == "__main__":
    import _run
    _run.main(NAME)
