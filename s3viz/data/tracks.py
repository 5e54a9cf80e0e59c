"""Per-utterance tables of continuous values over time (acoustic tracks): the table's
schema and its check. :func:`~s3viz.data.add_acoustic_tracks` fills them with Praat's
analyses; ``docs/data.md`` says what each track means."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_TRACKS", "TRACK_NAMES", "check_track_table"]

TRACK_NAMES = ("f0", "f0_semitones", "voicing", "intensity", "f1", "f2")
"""The tracks :func:`~s3viz.data.add_acoustic_tracks` computes: ``f0`` (Hz, NaN where
unvoiced), ``f0_semitones`` (the same in semitones re 100 Hz, Praat's log-F0 unit),
``voicing`` (1.0 voiced, 0.0 unvoiced), ``intensity`` (dB, NaN where the audio is
digitally silent), ``f1``, ``f2`` (Hz, NaN where Praat finds none)."""

DEFAULT_TRACKS = ("f0", "voicing", "intensity", "f1", "f2")
"""What :func:`~s3viz.data.add_acoustic_tracks` computes unless asked otherwise."""


def check_track_table(table, num_samples: Optional[int], who: str) -> pd.DataFrame:
    """A track table checked: integer ``start, end`` (16 kHz samples, ``end`` exclusive,
    ``0 <= start < end <= num_samples``, rows sorted by ``start`` and not overlapping) and
    at least one float column (NaN allowed, inf not). Returns a copy with a 0.. index and
    every value column as float64; refuses anything else, naming ``who`` and the fix.

    Args:
        table: the DataFrame to check.
        num_samples: the audio's length in samples (None: the end is not checked).
        who: who holds the table, for the errors (``"Utterance 'utt0001'"``).
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{who}: tracks must be a pandas DataFrame or None, got "
                        f"{type(table).__name__}")
    cols = list(table.columns)
    if not all(isinstance(c, str) and c for c in cols) or len(set(cols)) != len(cols):
        raise ValueError(f"{who}: tracks columns must be unique non-empty strings, got {cols}")
    missing = [c for c in ("start", "end") if c not in cols]
    values = [c for c in cols if c not in ("start", "end")]
    if missing or not values:
        raise ValueError(f"{who}: tracks table needs integer 'start', 'end' columns (16 kHz "
                         f"samples) and at least one float track column, got {cols}")
    for c in ("start", "end"):
        if table[c].dtype.kind not in "iu":
            raise TypeError(f"{who}: tracks column {c!r} must hold integer samples, got "
                            f"dtype {table[c].dtype}; convert with .astype('int64')")
    for c in values:
        if table[c].dtype.kind != "f":
            raise TypeError(f"{who}: tracks column {c!r} must be float (NaN where the value "
                            f"is undefined), got dtype {table[c].dtype}; convert with "
                            ".astype('float64')")
    start = table["start"].to_numpy(np.int64)
    end = table["end"].to_numpy(np.int64)
    bad = np.flatnonzero((start < 0) | (end <= start)
                         | ((end > num_samples) if num_samples is not None else False))
    if bad.size:
        i = int(bad[0])
        where = f"[0, {num_samples}]" if num_samples is not None else "[0, ...)"
        raise ValueError(f"{who}: tracks row {i} spans samples [{start[i]}, {end[i]}), not a "
                         f"non-empty span inside the audio {where}; clip rows to the audio")
    clash = np.flatnonzero((np.diff(start) <= 0) | (start[1:] < end[:-1]))
    if clash.size:
        i = int(clash[0])
        raise ValueError(f"{who}: tracks rows {i} [{start[i]}, {end[i]}) and {i + 1} "
                         f"[{start[i + 1]}, {end[i + 1]}) are out of order or overlap; each "
                         "sample may belong to one row at most (sort by start)")
    out = {"start": start.copy(), "end": end.copy()}
    for c in values:
        v = table[c].to_numpy(np.float64, copy=True)
        if np.isinf(v).any():
            raise ValueError(f"{who}: tracks column {c!r} holds inf (row "
                             f"{int(np.flatnonzero(np.isinf(v))[0])}); use NaN for an "
                             "undefined value")
        out[c] = v
    return pd.DataFrame({c: out[c] for c in cols})
