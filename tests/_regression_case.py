"""Utterance-level regression data and scikit-learn's ridge on the probe's folds, shared
by the regression-probe tests (tests/test_regression_probes.py and the attack tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def store(n_utt=60, hidden=8, n_speakers=6, seed=0, **extra):
    """A LayerStore whose layer 0's pooled vector encodes ``rate`` (plus noise) and whose
    layer 1 is noise; ``age`` is an int column unrelated to the frames; each ``extra``
    column is ``fn(labels)``."""
    from s3viz.store import LayerStore

    rng = np.random.default_rng(seed)
    w = rng.normal(size=hidden)
    rate = rng.normal(5.0, 1.0, size=n_utt)
    hs, rows = [], []
    for i in range(n_utt):
        t = int(rng.integers(3, 7))
        info = (rate[i] - 5.0) * w[None] + 0.3 * rng.normal(size=(t, hidden))
        noise = rng.normal(size=(t, hidden))
        hs.append([torch.tensor(info, dtype=torch.float32),
                   torch.tensor(noise, dtype=torch.float32)])
        rows.append({"id": f"u{i}", "speaker": f"s{i % n_speakers}", "rate": rate[i],
                     "age": int(rng.integers(20, 60))})
    labels = pd.DataFrame(rows)
    for name, fn in extra.items():
        labels[name] = fn(labels)
    return LayerStore.from_tensors(hs, downsample_rates=[320, 320], labels=labels)


def ridge_folds(x, y, fold, folds: int, lam: float) -> np.ndarray:
    """Held-out predictions of scikit-learn's Ridge per fold: features standardised on
    each training part (population sd), alpha = n_train * lam (the probe's penalty is
    relative to the standardised covariance)."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    pred = np.empty_like(y)
    for f in range(folds):
        tr, te = fold != f, fold == f
        sc = StandardScaler().fit(x[tr])
        pred[te] = Ridge(alpha=tr.sum() * lam).fit(sc.transform(x[tr]), y[tr]).predict(
            sc.transform(x[te]))
    return pred


def sklearn_predictions(store, target, layer, lam, folds=5, split_by="speaker", seed=0):
    """``(y, held-out predictions, fold)`` of :func:`ridge_folds` on the pooled vectors
    of ``layer`` with the probe's utterance-level folds."""
    from s3viz.probe.folds import probe_folds

    x = store.pooled(layer, dtype=torch.float64).numpy()
    y = store.labels[target].to_numpy(dtype=np.float64)
    fold = probe_folds(store, folds=folds, split_by=split_by, seed=seed,
                       utterance_weights=np.ones(len(store)))["fold"].to_numpy()
    return y, ridge_folds(x, y, fold, folds, lam), fold
