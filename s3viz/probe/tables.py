"""The probe tables: one row per target, method, level and layer (:func:`probe_layers`,
the ``RidgeProbe`` and ``SegmentProbe`` measures), from each layer's confusion counts."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _scores(conf: np.ndarray, train_counts: np.ndarray) -> dict:
    """Scores from per-fold confusion matrices ``(folds, C, C)`` (true, pred)."""
    fold_n = conf.sum((1, 2))
    fold_acc = np.trace(conf, axis1=1, axis2=2) / np.maximum(fold_n, 1)
    fold_acc = np.where(fold_n > 0, fold_acc, np.nan)
    pooled = conf.sum(0)
    n = pooled.sum()
    tp = np.diag(pooled).astype(np.float64)
    fp = pooled.sum(0) - tp
    fn = pooled.sum(1) - tp
    present = (tp + fp + fn) > 0
    f1 = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    # chance: always predict the majority class of the fold's training part
    test_counts = conf.sum(2)  # (folds, C)
    majority = train_counts.argmax(1)
    chance_hits = test_counts[np.arange(len(majority)), majority].sum()
    used = fold_n > 0
    return {
        "accuracy": float(tp.sum() / max(n, 1)),
        "accuracy_std": float(np.std(fold_acc[used])) if used.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "chance": float(chance_hits / max(n, 1)),
        "fold_accuracy": [float(v) for v in fold_acc],
    }


def segment_result(res: pd.DataFrame, layers, layer_ids) -> pd.DataFrame:
    """An utterance-level probe table of a store of segments, as segment-level rows of
    the original layers (``layers[i]`` was layer ``i`` of the segments)."""
    res["level"] = "segment"
    res["layer"] = [layers[i] for i in res["layer"]]
    res["upstream_layer"] = [int(layer_ids[v]) for v in res["layer"]]
    res.attrs["fold_accuracy"] = {(t, m, layers[i]): v
                                  for (t, m, i), v in res.attrs["fold_accuracy"].items()}
    draws = res.attrs.get("bootstrap")
    if draws is not None:  # the replicates keyed as the rows now are
        draws = dict(draws)
        draws["replicates"] = type(res.attrs["bootstrap"]["replicates"])(
            {(t, m, "segment", layers[i]): v for (t, m, _, i), v in draws["replicates"].items()})
        res.attrs["bootstrap"] = draws
    return res


def concat_tables(parts: list, **attrs) -> pd.DataFrame:
    """One probe table from ``(target, table)`` parts: the target's rows of each table
    (None: all of them), in the columns of the widest, their ``fold_accuracy`` merged."""
    frames = [t if tgt is None else t[t["target"] == tgt] for tgt, t in parts]
    out = pd.concat(frames, ignore_index=True)
    if "n_unseen" in out.columns:  # some target had unseen classes, the others none
        out = out.fillna({"n_unseen": 0, "unseen_fraction": 0.0}).astype({"n_unseen": int})
        out = out[max((list(t.columns) for t in frames), key=len)]
    out.attrs = {**parts[0][1].attrs, **attrs, "fold_accuracy": {
        k: v for tgt, t in parts for k, v in t.attrs["fold_accuracy"].items()
        if tgt is None or k[0] == tgt}}
    out.attrs["split_by"] = split_attr(dict(zip(out["target"], out["split_by"])))
    draws = [t.attrs.get("bootstrap") for _, t in parts]
    if draws[0] is not None:  # every part's replicates, when the parts share the draws
        same = all(d is not None and all(d[k] == draws[0][k] for k in ("units", "seed",
                                                                         "resamples"))
                   for d in draws)
        if same:
            merged = dict(draws[0])
            merged["replicates"] = type(draws[0]["replicates"])(
                {k: v for d in draws for k, v in d["replicates"].items()})
            out.attrs["bootstrap"] = merged
    return out


_RESULT_COLUMNS = ["target", "method", "level", "layer", "upstream_layer", "accuracy",
                   "accuracy_std", "macro_f1", "chance", "n_classes", "n_train", "n_test", "lambda"]
_UNSEEN_COLUMNS = ["n_unseen", "unseen_fraction"]
_REGRESSION_COLUMNS = ["target", "method", "level", "layer", "upstream_layer", "r2", "r2_std",
                       "rmse", "chance_r2", "unit", "n_train", "n_test", "lambda", "n_undefined"]


def result_row(tgt, meth, lev, layer: int, upstream_layer: int, c: int, folds: int,
               control: bool, result, fold_accuracy: dict) -> dict:
    """One row of the table from ``(conf (heads, folds, C, C), train counts (folds,
    heads * C), n_train (folds,), lambdas, degenerate)``."""
    conf, counts, n_fold, lam, degenerate = result
    main = _scores(conf[0], counts[:, :c])
    if degenerate:  # a degenerate layer (s3viz._numerics.layer_guard)
        main.update(accuracy=np.nan, accuracy_std=np.nan, macro_f1=np.nan,
                    fold_accuracy=[np.nan] * len(main["fold_accuracy"]))
    fold_accuracy[(tgt, meth, layer)] = main.pop("fold_accuracy")
    n_total = conf[0].sum()
    # test examples whose class the fold's training part lacks (check_heldout warned)
    n_unseen = int((conf[0].sum(2) * (counts[:, :c] == 0)).sum())
    row = dict(target=tgt, method=meth, level=lev, layer=layer, upstream_layer=upstream_layer,
               **main, n_classes=c, n_train=round(float(np.mean(n_fold))),
               n_test=round(n_total / folds),
               **{"lambda": float(lam[0]) if lam is not None else float("nan")},
               n_unseen=n_unseen, unseen_fraction=n_unseen / max(int(n_total), 1))
    if control:
        ctrl = _scores(conf[1], counts[:, c:])["accuracy"]
        row["control_accuracy"] = ctrl if np.isfinite(row["accuracy"]) else np.nan
        row["selectivity"] = row["accuracy"] - ctrl
    return row


def _r2(sums: np.ndarray) -> tuple[float, float, float]:
    """``(R\u00b2, RMSE, chance R\u00b2)`` of held-out sums ``(..., 6)`` per fold (count,
    sum (y - c), sum (y - c)^2, squared residuals, squared deviations from the training
    mean, sum c; ``c`` near the fold's mean) pooled over the leading axes: R\u00b2 = 1 -
    SSE / SST, SST about the held-out mean, each fold's spread plus the spread of the
    folds' means (no raw sum of squares cancels)."""
    n, d1, d2, sse, base, sc = sums.reshape(-1, 6).T
    keep = n > 0
    n, d1, d2, sse, base, sc = (v[keep] for v in (n, d1, d2, sse, base, sc))
    total = float(n.sum())
    if not total > 0:
        return np.nan, np.nan, np.nan
    mean_f = (d1 + sc) / n
    mean = float((n * mean_f).sum()) / total
    sst = float((d2 - d1 * d1 / n).sum() + (n * (mean_f - mean) ** 2).sum())
    if not sst > 0:
        return np.nan, np.nan, np.nan
    err = float(sse.sum())
    return 1.0 - err / sst, float(np.sqrt(err / total)), 1.0 - float(base.sum()) / sst


def regression_row(tgt, meth, lev, layer: int, upstream_layer: int, folds: int,
                   control: bool, result, fold_scores: dict) -> dict:
    """One row of a regression target from ``(sums (heads, folds, 5), training sums,
    n_train (folds,), lambdas, degenerate)``: R\u00b2 and RMSE pooled over the held-out
    folds, ``chance_r2`` that of predicting each fold's training mean (about 0)."""
    sums, _, n_fold, lam, degenerate = result
    r2, rmse, chance = _r2(sums[0])
    per_fold = [_r2(sums[0, f])[0] for f in range(folds)]
    if degenerate:
        r2 = rmse = np.nan
        per_fold = [np.nan] * folds
    fold_scores[(tgt, meth, layer)] = per_fold
    used = [v for v in per_fold if np.isfinite(v)]
    row = dict(target=tgt, method=meth, level=lev, layer=layer, upstream_layer=upstream_layer,
               r2=r2, r2_std=float(np.std(used)) if used else np.nan, rmse=rmse,
               chance_r2=chance, n_train=round(float(np.mean(n_fold))),
               n_test=round(float(sums[0, :, 0].sum()) / folds),
               **{"lambda": float(lam[0]) if lam is not None else float("nan")})
    if control:
        ctrl = _r2(sums[1])[0]
        row["control_r2"] = ctrl if np.isfinite(r2) else np.nan
        row["selectivity"] = r2 - ctrl
    return row


def score_replicates(boot, per_unit: np.ndarray, continuous: bool, control: bool,
                     degenerate) -> dict:
    """Each score's ``(resamples,)`` values over resampled units from held-out sums per
    unit and head ``(units, heads, stats)``: ``(right, examples)`` of a classifier, or
    ``(examples, sum (y - c), sum (y - c)^2, squared residuals, sum c)`` of a regression,
    ``c`` the unit's mean (NaN: degenerate)."""
    with np.errstate(all="ignore"):
        if continuous:  # per unit (count, sum (y - c), sum (y - c)^2, SSE, sum c), c its mean
            w = boot.counts  # (R, units)
            n_u, d1, d2, sse_u, sc = (per_unit[..., j] for j in range(5))
            has = n_u > 0
            mean_u = np.where(has, (d1 + sc) / np.where(has, n_u, 1), 0.0)
            ss_u = np.where(has, d2 - d1 * d1 / np.where(has, n_u, 1), 0.0)
            n, sse = w @ n_u, w @ sse_u  # (R, heads)
            ybar = (w @ (n_u * mean_u)) / n
            between = np.stack([((w * n_u[None, :, h]) * (mean_u[None, :, h] - ybar[:, h:h + 1])
                                 ** 2).sum(1) for h in range(n_u.shape[1])], 1)
            r2 = 1.0 - sse / (w @ ss_u + between)
            out = {"r2": r2[:, 0], "rmse": np.sqrt(sse[:, 0] / n[:, 0])}
            if control:
                out["control_r2"], out["selectivity"] = r2[:, 1], r2[:, 0] - r2[:, 1]
        else:
            sums = boot.replicate_sums(per_unit)  # (R, heads, right and tested)
            acc = sums[..., 0] / sums[..., 1]
            out = {"accuracy": acc[:, 0]}
            if control:
                out["control_accuracy"] = acc[:, 1]
                out["selectivity"] = acc[:, 0] - acc[:, 1]
    if degenerate:
        out = {c: np.full_like(v, np.nan) for c, v in out.items()}
    return out


def interval_table(table: pd.DataFrame, boot, replicates: dict) -> pd.DataFrame:
    """The probe table with ``<score>_lo`` / ``<score>_hi`` of every resampled score
    (:func:`s3viz._bootstrap.add_interval_columns`, rows keyed by target, method,
    level and layer)."""
    from .._bootstrap import add_interval_columns

    cols = [c for c in ("accuracy", "control_accuracy", "r2", "rmse", "control_r2",
                        "selectivity") if c in table.columns]
    return add_interval_columns(table, boot, ["target", "method", "level", "layer"],
                                replicates, cols)


def split_attr(splits: dict):
    """``attrs["split_by"]``: the one split of every target, or the dict target -> split."""
    if len(set(splits.values())) == 1:
        return next(iter(splits.values()))
    return dict(splits)


def result_table(rows: list[dict], fold_accuracy: dict, control: bool, splits: dict,
                 **attrs) -> pd.DataFrame:
    """The probe table; ``splits`` maps each target to the split it used (column ``split_by``)."""
    cols = []
    if not rows or any("accuracy" in r for r in rows):
        cols += _RESULT_COLUMNS + (["control_accuracy", "selectivity"] if control else [])
    if any("r2" in r for r in rows):  # continuous targets: R^2 and RMSE in the target's unit
        ctrl = ["control_r2", "selectivity"] if any("control_r2" in r for r in rows) else []
        cols += [c for c in _REGRESSION_COLUMNS + ctrl if c not in cols]
    if any(r.get("n_unseen", 0) for r in rows):  # only then: tables without unseen classes unchanged
        cols += _UNSEEN_COLUMNS
    df = pd.DataFrame(rows, columns=cols)
    df["split_by"] = [splits[t] for t in df["target"]]
    attrs["split_by"] = split_attr(splits)
    df.attrs["fold_accuracy"] = fold_accuracy
    df.attrs.update(attrs)
    return df
