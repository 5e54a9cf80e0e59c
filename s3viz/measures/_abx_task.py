"""An ABX task on any label, as fastabx's ``Task`` defines it (``on``, ``by``, ``across``):
the items' labels, the seeded subsampling, the cells and how their errors are averaged
(``docs/measures.md``, "ABX on any label").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._labels import label_str
from ..probe.targets import check_spellings

__all__ = ["ABXTask", "TIERS", "codes_of", "collapse", "item_tier", "label_values", "resolve_conditions",
           "subsample"]

TIERS = ("phone", "word")
"""Alignment tiers whose segments can be the items."""

CONTEXT = "context"
"""The pseudo-label of a segment's neighbours: ``"<previous>|<next>"``."""


def _names(value, arg: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        out = list(value)
    except TypeError:
        raise TypeError(f"{arg} must be a label name or a list of them, got {value!r}") from None
    if not all(isinstance(v, str) for v in out):
        raise TypeError(f"{arg} must be a label name or a list of them, got {value!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{arg} names a label twice: {out}")
    return out


def resolve_conditions(on, by, across) -> tuple[str, list[str], list[str]]:
    """``(on, by, across)`` as names; ``by=None`` is ZeroSpeech's ``"speaker"`` unless the
    speaker is ``on`` or in ``across``. A label in two conditions is refused."""
    if not isinstance(on, str):
        raise TypeError(f"on must be a label name (str), got {on!r}")
    across_l = _names(across, "across")
    if by is None:
        by_l = [] if on == "speaker" or "speaker" in across_l else ["speaker"]
    else:
        by_l = _names(by, "by")
    seen = {on: "on"}
    for arg, names in (("by", by_l), ("across", across_l)):
        for n in names:
            if n in seen:
                raise ValueError(f"{n!r} is in both {seen[n]} and {arg}: a label is one "
                                 "condition (on: what differs between A and B; by: what A, "
                                 "B and X share; across: what X does not share with A and B)")
            seen[n] = arg
    return on, by_l, across_l


def item_tier(on: str, by: list[str], across: list[str]) -> str:
    """The tier whose segments are the items: the first tier among on, by, across
    (phones when none is one)."""
    return next((n for n in [on, *by, *across] if n in TIERS), "phone")


class ABXTask:
    """The items (one layer's segment table), their labels and the cells, from labels alone.

    ``keys``: one row per cell, columns ``on``, ``on + "_b"``, each ``by`` label, each
    ``across`` label (A's) and ``label + "_x"`` (X's), and ``triplets``. :meth:`walk`
    yields the cells by unit pair: a unit is the items sharing the by and across values
    (A and B come from one unit, X from the same unit or, with ``across``, another).
    """

    def __init__(self, table: pd.DataFrame, labels: pd.DataFrame, on: str, by: list[str],
                 across: list[str], max_x_across: int | None, seed: int):
        self.on, self.by, self.across = on, by, across
        self.tier = item_tier(on, by, across)
        self.values = {n: label_values(table, labels, n, self.tier)
                       for n in [on, *by, *across]}
        self.lab = self.values[on]
        cond = [*by, *across]
        codes, keys = codes_of([self.values[n] for n in cond], len(table))
        self.unit = np.empty(len(table), dtype=object)
        self.unit[:] = [keys[c] for c in codes]  # each item's unit: its tuple of values
        units = list(keys)  # sorted
        self.units = units
        self.unit_values = {u: dict(zip(cond, u)) for u in units}
        self.by_key = {u: tuple(v[n] for n in by) for u, v in self.unit_values.items()}
        self.groups: dict = {}  # by values -> its units (an across task's pairs are in one)
        for u in units:
            self.groups.setdefault(self.by_key[u], []).append(u)
        self.symmetric = not across
        self.items = {u: np.flatnonzero(codes == c) for c, u in enumerate(units)}
        self._partners = self._pair_units(max_x_across, seed)
        rows, trip, self._cells = [], [], []
        for s, sx, names, t in self._walk_counts():
            p, q = np.nonzero(t > 0)
            ua, ux = self.unit_values[s], self.unit_values[sx]
            for a, b in zip(p, q):
                rows.append((names[a], names[b], *(ua[n] for n in by),
                             *(ua[n] for n in across), *(ux[n] for n in across)))
            trip.append(t[p, q])
            self._cells.append((s, sx, names, t > 0))
        cols = [on, f"{on}_b", *by, *across, *(f"{n}_x" for n in across)]
        self.keys = pd.DataFrame(rows, columns=cols)
        self.keys["triplets"] = np.concatenate(trip) if trip else np.zeros(0, dtype=np.int64)

    def _pair_units(self, max_x_across: int | None, seed: int) -> dict:
        """Per unit ``s`` of A and B, per ``(a, b)`` label pair, the X units (fastabx's
        ``max_x_across``: at most that many, drawn with ``seed``); within: ``s`` itself."""
        if self.symmetric:
            return {}
        rng = np.random.default_rng([seed, 37])
        out = {}
        self._x_units = {s: set() for s in self.units}  # per A/B unit, its X units
        for s in self.units:
            ys = self.items[s]
            labs = np.unique(self.lab[ys])
            cand = [u for u in self.groups[self.by_key[s]] if all(
                self.unit_values[u][n] != self.unit_values[s][n] for n in self.across)]
            has = {u: set(self.lab[self.items[u]].tolist()) for u in cand}
            for a in labs:
                xs = [u for u in cand if a in has[u]]
                for b in labs:
                    if b == a:
                        continue
                    if max_x_across is not None and len(xs) > max_x_across:
                        pick = sorted(rng.choice(len(xs), max_x_across, replace=False))
                        out[(s, a, b)] = [xs[i] for i in pick]
                    else:
                        out[(s, a, b)] = xs
                    self._x_units[s].update(out[(s, a, b)])
        return out

    def _walk_counts(self):
        """Per unit pair (A/B unit, X unit), the label names and the ``(num, num)`` triplet
        counts of its cells (0: no cell)."""
        for s in self.units:
            ys = self.items[s]
            partners = [s] if self.symmetric else sorted(self._x_units[s])
            for sx in partners:
                xs = self.items[sx]
                names, codes = np.unique(np.concatenate([self.lab[ys], self.lab[xs]]),
                                         return_inverse=True)
                cy, cx = codes[:len(ys)], codes[len(ys):]
                n_y = np.bincount(cy, minlength=len(names)).astype(np.int64)
                n_x = np.bincount(cx, minlength=len(names)).astype(np.int64)
                pairs = n_x * n_y - (n_y if self.symmetric else 0)  # (x, a), a != x within
                t = pairs[:, None] * n_y[None, :]
                np.fill_diagonal(t, 0)
                if not self.symmetric:  # only the X units drawn for the cell
                    for i, a in enumerate(names):
                        for j, b in enumerate(names):
                            if t[i, j] and sx not in self._partners.get((s, a, b), ()):
                                t[i, j] = 0
                if t.any():
                    yield s, sx, names, t

    def walk(self):
        """Per unit pair in the order of :attr:`keys`: ``(s, sx, X codes, A/B codes, names,
        scored)``; ``scored (num, num)`` marks its cells."""
        for s, sx, names, scored in self._cells:
            ys, xs = self.items[s], self.items[sx]
            code = {v: i for i, v in enumerate(names)}
            yield (s, sx, np.array([code[v] for v in self.lab[xs]], dtype=np.int64),
                   np.array([code[v] for v in self.lab[ys]], dtype=np.int64), names, scored)

    def levels(self) -> list[list[str]]:
        """The averaging levels, innermost first: the by labels from the last, then the
        across labels (ZeroSpeech's: context, then speaker)."""
        return [[n] for n in reversed(self.by)] + ([list(self.across)] if self.across else [])


def codes_of(columns, n: int) -> tuple[np.ndarray, list]:
    """``(codes, keys)``: each row's code into ``keys``, the sorted distinct tuples of the
    columns' values (compared as tuples: no separator that a value could contain)."""
    if not columns:
        return np.zeros(n, dtype=np.int64), [()]
    codes, uniques = pd.MultiIndex.from_arrays([np.asarray(c, dtype=object)
                                                for c in columns]).factorize(sort=True)
    return np.asarray(codes, dtype=np.int64), [tuple(u) for u in uniques]


def label_values(table: pd.DataFrame, labels: pd.DataFrame, name: str, tier: str) -> np.ndarray:
    """Each item's value of label ``name`` as a string."""
    if name in (*TIERS, CONTEXT) and name in labels.columns:
        raise ValueError(f"{name!r} names both the labels' column {name!r} and s3viz's "
                         f"{'alignment tier' if name in TIERS else 'neighbouring segments'}; "
                         "rename the column (e.g. to 'utt_" + name + "') so that each label "
                         "means one thing")
    if name == tier:
        return table["label"].astype(str).to_numpy(dtype=object)
    if name == CONTEXT:
        return (table["prev"].astype(str) + "|" + table["next"].astype(str)).to_numpy(dtype=object)
    if name == "word" and tier == "phone":
        out = (table["word"] if "word" in table else pd.Series([""] * len(table))
               ).fillna("").astype(str).to_numpy(dtype=object)
        missing = table["id"].to_numpy()[out == ""]
        if len(missing):
            raise ValueError(f"{int((out == '').sum())} phone item(s) are in no word (e.g. in "
                             f"{sorted(set(missing))[:5]}; an alignment without words, or "
                             "phones outside them): the 'word' condition needs a word for "
                             "every item; align words, or leave 'word' out")
        return out
    if name in TIERS:
        raise ValueError(f"the items are {tier} segments, which have no single {name!r}: put "
                         f"{name!r} first among on, by and across to make {name}s the items")
    if name == "speaker" and name not in labels.columns:
        raise ValueError("ABX needs a 'speaker' column in the labels (store.labels, or the "
                         "corpus's) for a task that names 'speaker'; add one (e.g. one "
                         "speaker per utterance id)")
    if name not in labels.columns:
        raise ValueError(f"unknown label {name!r}: ABX labels are the tiers {TIERS}, "
                         f"{CONTEXT!r} (the neighbouring segments) and the labels' columns "
                         f"{list(labels.columns)}")
    col = labels[name].tolist()
    out = np.array([label_str(col[u]) for u in table["utt"].to_numpy()], dtype=object)
    check_spellings(f"label {name!r}", sorted(set(out.tolist()) - {""}), "among the items")
    missing = table["id"].to_numpy()[out == ""]
    if len(missing):
        raise ValueError(f"{len(set(missing))} utterance(s) have no {name} (e.g. "
                         f"{sorted(set(missing))[:5]}); the {name} condition needs one for "
                         "every item: fill it or leave those utterances out (utterances=)")
    return out


def subsample(table: pd.DataFrame, task_values: dict, max_items: int, seed: int) -> np.ndarray:
    """Sorted rows of ``table`` keeping at most ``max_items`` items of each group of items
    sharing every label of the task (fastabx's ``max_size_group``), drawn with ``seed``."""
    codes, _ = codes_of(list(task_values.values()), len(table))
    rng = np.random.default_rng([seed, 31])
    keep = []
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        keep.extend(idx if len(idx) <= max_items else rng.choice(idx, max_items, replace=False))
    return np.sort(np.asarray(keep, dtype=np.int64))


def collapse(cells: pd.DataFrame, levels: list[list[str]], x_cols: list[str],
             weights: dict | None = None, replicates: int = 1) -> np.ndarray:
    """``(replicates,)`` ABX errors from the cells' ``error``, averaged as fastabx's
    ``Score.collapse`` does: X's columns dropped, then for each level in turn the mean over
    the cells that differ only in it, then the mean over (``on``, ``on_b``) pairs.

    ``weights``: ``{column: (replicates, cells) draws}``: a cell weighs the product of the
    draws of the columns collapsed at a level (the bootstrap's resampled speakers; None:
    every cell weighs 1). A group no drawn cell reaches drops out of the next mean.
    """
    r = replicates
    if cells.empty:
        return np.full(r, np.nan)
    keys = cells.drop(columns=[c for c in x_cols] + ["error", "triplets"], errors="ignore")
    keys = keys.astype(str)
    vals = np.broadcast_to(cells["error"].to_numpy(np.float64), (r, len(cells))).copy()
    ok = np.ones((r, len(cells)), dtype=bool)
    weights = weights or {}
    per_row = {c: w for c, w in weights.items()}  # draws per current row
    for k, level in enumerate(levels):
        group_cols = [c for c in keys.columns if c not in level]
        gid, _ = codes_of([keys[c].to_numpy() for c in group_cols], len(keys))
        n = int(gid.max()) + 1
        w = np.ones((r, len(keys)))
        for c in level + (x_cols if k == 0 else []):
            if c in per_row:
                w = w * per_row[c]
        w = np.where(ok, w, 0.0)
        off = (np.arange(r) * n)[:, None]
        num = np.bincount((off + gid).ravel(), (w * np.where(ok, vals, 0.0)).ravel(), r * n)
        den = np.bincount((off + gid).ravel(), w.ravel(), r * n)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = (num / den).reshape(r, n)
        ok = den.reshape(r, n) > 0
        first = np.unique(gid, return_index=True)[1]
        per_row = {c: w_[:, first] for c, w_ in per_row.items() if c in group_cols}
        keys = keys.iloc[first][group_cols].reset_index(drop=True)
    count = ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, vals, 0.0).sum(1) / count, np.nan)
