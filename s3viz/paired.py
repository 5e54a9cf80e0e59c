"""Paired comparison of two bootstrapped scores on one corpus (:func:`compare_scores`):
two layers of one result, or one layer of two models, from the replicates their tables
recorded (``attrs["bootstrap"]``); the maths: ``docs/measures.md``, "Error bars".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._bootstrap import percentile_interval

__all__ = ["SCORES", "compare_scores"]

# the score compared when a table has several interval columns, first found first
SCORES = ("accuracy", "r2", "abx_error", "pwcca", "cka", "pnmi")
# what must agree between the two tables (attrs, or columns of the paired rows)
_SAME_SPLIT = ("folds", "seed", "split_by")


def _record(table, name: str) -> dict:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a DataFrame made with bootstrap=..., got "
                        f"{type(table).__name__}")
    info = table.attrs.get("bootstrap")
    if not isinstance(info, dict) or not info.get("replicates"):
        raise ValueError(f"{name} has no bootstrap replicates (attrs['bootstrap']); make it "
                         "with bootstrap=1000 (and the same seed as the other table)")
    return info


def _check_same_draws(ia: dict, ib: dict) -> None:
    """Refuse two tables whose resamples differ (their replicates would not pair)."""
    for field, fix in (("unit", "the same corpus (with or without speakers in both)"),
                       ("units", "the same corpus (the same speakers/utterances)"),
                       ("resamples", "the same bootstrap= in both"),
                       ("seed", "the same seed= in both"),
                       ("items", "the same corpus and the same selected utterances "
                                 "(utterances=)")):
        if field == "items" and ia.get(field) != ib.get(field):
            raise ValueError("a and b measured different items (other utterances, texts or "
                             "lengths under the same unit names: another corpus, or another "
                             "selection of it), so their replicates do not pair; compare "
                             f"tables of {fix}")
        if field == "items":
            continue
        if field == "units" and tuple(ia[field]) == tuple(ib[field]):
            continue
        if field != "units" and ia[field] == ib[field]:
            continue
        got = (f"{len(ia[field])} vs {len(ib[field])} units" if field == "units"
               else f"{ia[field]!r} vs {ib[field]!r}")
        raise ValueError(f"a and b were resampled differently: their bootstrap {field} differ "
                         f"({got}), so their replicates do not pair; make both with {fix}")


def _check_same_split(a: pd.DataFrame, b: pd.DataFrame) -> None:
    for key in _SAME_SPLIT:
        va, vb = a.attrs.get(key), b.attrs.get(key)
        if va is not None and vb is not None and str(va) != str(vb):
            raise ValueError(f"a and b differ in attrs[{key!r}] ({va!r} vs {vb!r}): a paired "
                             f"comparison needs one split of one corpus; make both with the "
                             f"same {key}")


def _pick_score(a: pd.DataFrame, b: pd.DataFrame, score) -> str:
    have = [c for c in a.columns if f"{c}_lo" in a.columns and f"{c}_lo" in b.columns]
    if score is not None:
        if score not in have:
            raise ValueError(f"score={score!r} has no interval in both tables; choose one of "
                             f"{have}")
        return score
    for s in SCORES:
        if s in have:
            return s
    if len(have) == 1:
        return have[0]
    raise ValueError(f"no obvious score to compare among {have}: pass score=")


def _pairs(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> list[tuple[int, int]]:
    """Positions ``(row of a, row of b)`` compared: one row with one row, else rows with
    equal ``key`` columns."""
    if len(a) == 1 and len(b) == 1:
        return [(0, 0)]
    # a key with one value in each table does not pair rows (e.g. method "ridge" against
    # "logistic", or two models' labels): pair on the others
    key = [k for k in key if k not in a.columns or k not in b.columns
           or a[k].nunique(dropna=False) > 1 or b[k].nunique(dropna=False) > 1]
    if not key or any(k not in a.columns or k not in b.columns for k in key):
        raise ValueError(f"a has {len(a)} rows and b {len(b)}, and no key columns pair them; "
                         "select one row of each (e.g. res[res.layer == 9]) or pass layers=")
    kb = {tuple(r): i for i, r in enumerate(b[key].itertuples(index=False, name=None))}
    out = [(i, kb[tuple(r)]) for i, r in enumerate(a[key].itertuples(index=False, name=None))
           if tuple(r) in kb]
    if not out:
        raise ValueError(f"no row of a has the {key} of a row of b; select the rows to compare")
    return out


def _p_value(diff: np.ndarray, point: float) -> float:
    """Two-sided paired-bootstrap p-value of ``point`` against 0 (see docs/measures.md)."""
    diff = diff[np.isfinite(diff)]
    if not len(diff) or not np.isfinite(point):
        return float("nan")
    if point == 0:
        return 1.0
    other = int((diff <= 0).sum() if point > 0 else (diff >= 0).sum())
    return float(min(1.0, 2.0 * (1 + other) / (len(diff) + 1)))


def compare_scores(a: pd.DataFrame, b: pd.DataFrame | None = None, *, score: str | None = None,
                   layers: tuple | None = None) -> pd.DataFrame:
    """Paired bootstrap test of ``a``'s score minus ``b``'s on one corpus.

    Both tables come from a measure run with ``bootstrap=`` on the same corpus with the
    same ``seed`` and number of resamples (and, for probes, the same folds): their
    resamples of speakers (or utterances) are then the same draws, and each replicate's
    difference is one resample's. Two tables resampled differently are refused.

    Args:
        a, b: tables (or row selections, e.g. ``res[res.layer == 9]``) with intervals.
            One row each: those two; else rows with equal key columns (e.g. every layer
            of two models). ``b`` None: ``a`` with itself (with ``layers``).
        score: the column compared (default the first of :data:`SCORES` with an
            interval, or the only one).
        layers: ``(layer of a, layer of b)``: compare those layers' rows (e.g. two
            layers of one result: ``compare_scores(res, layers=(9, 10))``); rows with
            several other keys (targets, k) pair on those.

    Returns:
        One row per pair: its key columns (``<key>_a``/``<key>_b`` where they differ),
        ``score``, ``value_a``, ``value_b``, ``difference`` (a - b), ``difference_lo``,
        ``difference_hi`` (percentile interval at ``a``'s confidence), ``p_value``
        (two-sided: ``min(1, 2 (1 + #{replicates on the other side of 0, or at 0}) /
        (R + 1))``, 1 for a difference of 0), ``unit``, ``resamples``.
    """
    b = a if b is None else b
    ia, ib = _record(a, "a"), _record(b, "b")
    _check_same_draws(ia, ib)
    _check_same_split(a, b)
    key = [k for k in ia.get("key", ()) if k in ib.get("key", ())]
    if layers is not None:
        if not isinstance(layers, (tuple, list)) or len(layers) != 2 or "layer" not in a.columns \
                or "layer" not in b.columns:
            raise ValueError(f"layers must be (layer of a, layer of b) of tables with a "
                             f"'layer' column, got {layers!r}")
        a, b = a[a["layer"] == layers[0]], b[b["layer"] == layers[1]]
        for t, la, name in ((a, layers[0], "a"), (b, layers[1], "b")):
            if t.empty:
                raise ValueError(f"{name} has no row of layer {la!r}; layers= names the "
                                 "'layer' values compared")
        key = [k for k in key if k != "layer"]
    name = _pick_score(a, b, score)
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    pairs = _pairs(a, b, key)
    reps_a, reps_b = ia["replicates"], ib["replicates"]
    shown = [k for k in ia.get("key", ()) if k in a.columns and k in b.columns]
    same = {k: all(a[k].iloc[i] == b[k].iloc[j] for i, j in pairs) for k in shown}
    rows = []
    for i, j in pairs:
        ra, rb = a.iloc[i], b.iloc[j]
        ka = tuple(ra[k] for k in ia["key"])
        kb = tuple(rb[k] for k in ib["key"])
        if ka not in reps_a or kb not in reps_b:
            raise ValueError(f"a row has no recorded replicates (keys {ka} / {kb}); compare "
                             "rows of the tables the measure returned")
        diff = (np.asarray(reps_a[ka][name], dtype=np.float64)
                - np.asarray(reps_b[kb][name], dtype=np.float64))
        point = float(ra[name]) - float(rb[name])
        lo, hi = percentile_interval(diff, ia["confidence"])
        row = {}
        for k in shown:
            if same[k]:
                row[k] = ra[k]
            else:
                row[f"{k}_a"], row[f"{k}_b"] = ra[k], rb[k]
        row.update(score=name, value_a=float(ra[name]), value_b=float(rb[name]),
                   difference=point, difference_lo=float(lo), difference_hi=float(hi),
                   p_value=_p_value(diff, point), unit=ia["unit"], resamples=ia["resamples"])
        rows.append(row)
    return pd.DataFrame(rows)
