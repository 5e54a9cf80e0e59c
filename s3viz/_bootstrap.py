"""Error bars: one bootstrap over speakers (or utterances) that every measure shares.

A measure keeps additive statistics per resampling unit (``(units, ...)`` arrays);
:class:`Bootstrap` draws seeded multinomial resample counts ``(resamples, units)``, so a
replicate's statistics are ``counts @ per_unit`` and the measure's value is recomputed
from them. Tables made with the same units, seed and resamples share the draws, so
:func:`s3viz.compare_scores` pairs their replicates. Why not scipy.stats.bootstrap (it
resamples rows, not a measure's units), the maths and the measured coverage:
``docs/measures.md``, "Error bars".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import _validate as _v
from ._labels import label_strings

__all__ = ["Bootstrap", "Replicates", "add_interval_columns", "bootstrap_options",
           "corpus_bootstrap", "items_digest", "MIN_UNITS", "percentile_interval",
           "resampling_units"]

UNITS = ("speaker", "utterance")


def bootstrap_options(bootstrap, confidence) -> tuple[int, float]:
    """``(resamples, confidence)`` checked: ``bootstrap`` None/0 (no intervals) or a
    whole number of resamples >= 100; ``confidence`` in (0, 1)."""
    n = _v.integer(0 if bootstrap is None else bootstrap, "bootstrap", minimum=0)
    if 0 < n < 100:
        raise ValueError(f"bootstrap must be 0/None (no intervals) or at least 100 resamples "
                         f"(percentile intervals from fewer are noise), got {n}; 1000 is usual")
    c = _v.number(confidence, "confidence", positive=True, below=1.0)
    return n, c


def resampling_units(labels: pd.DataFrame, sel=None) -> tuple[np.ndarray, list[str], str]:
    """``(unit of each selected utterance (codes 0..U-1), unit names, kind)``.

    The unit is the speaker when ``labels`` has a ``speaker`` for every selected
    utterance and at least two speakers (speech data are clustered by speaker: frames
    and utterances of one speaker are not independent), else the utterance.
    """
    rows = np.arange(len(labels)) if sel is None else np.asarray(sel, dtype=np.int64)
    if "speaker" in labels.columns:
        spk = label_strings(labels["speaker"].to_numpy()[rows])
        names, codes = np.unique(spk.astype(str), return_inverse=True)
        if len(rows) and (spk != "").all() and len(names) >= 2:
            return codes.astype(np.int64), [str(v) for v in names], "speaker"
    ids = [str(v) for v in labels["id"].to_numpy()[rows]] if "id" in labels.columns \
        else [str(i) for i in rows]
    return np.arange(len(rows), dtype=np.int64), ids, "utterance"


def percentile_interval(replicates, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval ``(lo, hi)`` over axis 0 of ``replicates`` ``(resamples, ...)``
    at ``confidence`` (resamples whose value is undefined, NaN, left out; all NaN: NaN)."""
    import warnings

    a = (1.0 - float(confidence)) / 2.0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN
        lo, hi = np.nanquantile(np.asarray(replicates, dtype=np.float64), [a, 1.0 - a], axis=0)
    return lo, hi


MIN_UNITS = 5
"""The fewest units a bootstrap resamples: 2 give 3 distinct resamples, so a
"95 % interval" or a p-value from them is an artefact of the draws."""


def items_digest(labels: pd.DataFrame, sel=None) -> str:
    """A digest of the measured items (ids, speakers, texts and lengths of the selected
    rows of ``labels``): two tables pair only when they measured the same items
    (:func:`s3viz.compare_scores`), not merely units of the same names."""
    import hashlib

    rows = np.arange(len(labels)) if sel is None else np.asarray(sel, dtype=np.int64)
    h = hashlib.sha256(rows.tobytes())
    for col in ("id", "speaker", "text", "num_samples"):
        if col in labels.columns:
            h.update(col.encode())
            h.update("\x1f".join(label_strings(labels[col].to_numpy()[rows])).encode())
    return h.hexdigest()


def corpus_bootstrap(meta, sel, resamples: int, confidence: float, seed: int):
    """``(Bootstrap, unit of each selected item)`` of a corpus or store's metadata (a
    store of segments, ``_group_ids``: a segment's unit is its speaker, or else its
    utterance), or ``(None, None)`` for ``resamples == 0``."""
    if not resamples:
        return None, None
    labels = meta.labels
    if getattr(meta, "_group_ids", None) is not None:
        labels = labels.assign(id=meta._group_ids)
    unit_of, names, kind = resampling_units(labels, sel)
    return Bootstrap(names, kind, resamples, confidence, seed,
                     items=items_digest(labels, sel)), unit_of


class Bootstrap:
    """Seeded resamples of ``len(names)`` units and the intervals they give.

    Args:
        names: the units (speakers or utterance ids), in the order of the per-unit
            statistics a measure passes in.
        kind: ``"speaker"`` or ``"utterance"`` (the table's ``attrs["bootstrap"]``).
        resamples, confidence, seed: as :func:`bootstrap_options` checks them.
        items: :func:`items_digest` of what was measured (recorded for the pairing).
    """

    def __init__(self, names, kind: str, resamples: int, confidence: float = 0.95,
                 seed: int = 0, items: str | None = None):
        if kind not in UNITS:
            raise ValueError(f"kind must be one of {UNITS}, got {kind!r}")
        self.names, self.kind = [str(v) for v in names], kind
        self.resamples, self.confidence, self.seed = int(resamples), float(confidence), int(seed)
        self.items = items
        if len(self.names) < MIN_UNITS:
            raise ValueError(f"a bootstrap needs at least {MIN_UNITS} {kind}s to resample "
                             f"(from {len(self.names)}, its intervals and p-values would be "
                             f"artefacts of the few distinct resamples); use more {kind}s "
                             "or pass bootstrap=None")
        rng = np.random.default_rng([self.seed, 2029])
        u = len(self.names)
        # multinomial counts: how often each unit is drawn in each resample
        self.counts = rng.multinomial(u, np.full(u, 1.0 / u), size=self.resamples).astype(
            np.float64)

    def replicate_sums(self, per_unit: np.ndarray) -> np.ndarray:
        """``(resamples, ...)`` sums of ``per_unit`` ``(units, ...)`` statistics in each
        resample."""
        per_unit = np.asarray(per_unit, dtype=np.float64)
        if per_unit.shape[0] != len(self.names):
            raise ValueError(f"per-unit statistics have {per_unit.shape[0]} rows for "
                             f"{len(self.names)} units")
        return np.tensordot(self.counts, per_unit, axes=(1, 0))

    def interval(self, replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval ``(lo, hi)`` of ``replicates`` ``(resamples, ...)`` at
        :attr:`confidence` (resamples whose value is undefined, NaN, left out)."""
        return percentile_interval(replicates, self.confidence)

    def attrs(self) -> dict:
        """What a table records in ``attrs["bootstrap"]`` (its ``replicates`` are added by
        the measure: ``{row key: {column: (resamples,) array}}``)."""
        return {"unit": self.kind, "units": tuple(self.names), "resamples": self.resamples,
                "confidence": self.confidence, "seed": self.seed, "items": self.items,
                "key": (), "replicates": {}}

    def per_unit(self, unit_of: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Sum rows ``values`` ``(n, ...)`` of items whose unit is ``unit_of`` ``(n,)``
        into ``(units, ...)``."""
        values = np.asarray(values, dtype=np.float64)
        out = np.zeros((len(self.names),) + values.shape[1:], dtype=np.float64)
        np.add.at(out, np.asarray(unit_of, dtype=np.int64), values)
        return out


class Replicates(dict):
    """``{row key: {column: (resamples,) array}}`` that compares by value (arrays
    included), so ``pd.concat`` can compare two tables' ``attrs`` (it keeps them when
    equal and drops them otherwise; a plain dict of arrays makes it raise)."""

    __hash__ = None

    def __eq__(self, other) -> bool:
        if not isinstance(other, dict) or self.keys() != other.keys():
            return False
        for k, cols in self.items():
            theirs = other[k]
            if cols.keys() != theirs.keys() or not all(
                    np.array_equal(v, theirs[c], equal_nan=True) for c, v in cols.items()):
                return False
        return True

    def __ne__(self, other) -> bool:
        return not self == other


def add_interval_columns(table: pd.DataFrame, boot: Bootstrap, key: list[str],
                         replicates: dict, columns: list[str]) -> pd.DataFrame:
    """Add ``<column>_lo`` / ``<column>_hi`` after each of ``columns`` from
    ``replicates`` ``{row key tuple: {column: (resamples,) array}}``, a column
    ``resampled_by`` (``"speaker"`` or ``"utterance"``), and record the
    draws in ``table.attrs["bootstrap"]`` (rows keyed by the ``key`` columns), so
    :func:`s3viz.compare_scores` can pair two tables."""
    for col in columns:
        lo, hi = [], []
        for _, row in table.iterrows():
            reps = replicates.get(tuple(row[k] for k in key), {}).get(col)
            if reps is None:
                lo.append(np.nan), hi.append(np.nan)
                continue
            a, b = boot.interval(reps)
            lo.append(float(a)), hi.append(float(b))
        at = table.columns.get_loc(col) + 1
        table.insert(at, f"{col}_lo", lo)
        table.insert(at + 1, f"{col}_hi", hi)
    table["resampled_by"] = boot.kind  # the unit each interval resampled
    info = boot.attrs()
    info["key"] = tuple(key)
    info["replicates"] = Replicates(replicates)
    table.attrs["bootstrap"] = info
    return table
