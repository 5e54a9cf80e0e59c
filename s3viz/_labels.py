"""One spelling of a label: what every measure groups, counts and compares classes by.

Below the probes, ABX, units, segments and similarity, which all read labels
through it (``docs/probes.md``: numbers spelled by value, missing as ``""``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

__all__ = ["is_missing", "label_str", "label_strings"]


def is_missing(v) -> bool:
    if v is None or isinstance(v, float) and math.isnan(v):
        return True
    try:
        return bool(pd.isna(v)) if np.ndim(v) == 0 else False
    except (TypeError, ValueError):
        return False


def label_str(v) -> str:
    """A label as a string, the one spelling of a class; missing (None, NaN, pd.NA, NaT) is ``""``.

    Numbers are spelled by their value, not their type: an integral float is
    written as the int (``1``, ``1.0``, ``np.float32(1)`` and ``np.int64(1)``
    are all ``"1"``), so a column whose ints became floats where a table had a
    NaN keeps one class per value. Other floats keep Python's shortest
    round-trip spelling (``0.1``), booleans stay ``"True"``/``"False"``, and
    strings are taken as written (codes such as ``"01"`` are not numbers; two
    strings that spell one number differently are refused by
    :func:`s3viz.probe.targets.check_classes`).
    """
    if is_missing(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return str(int(f)) if f.is_integer() else str(f)
    return str(v)


def label_strings(values) -> np.ndarray:
    """:func:`label_str` of every value, as an object array (``""``: unlabelled).

    A ``str`` (the type itself, the usual per-frame label) is its own spelling and is
    taken as it is; per-frame labels repeat a few strings thousands of times."""
    return np.asarray([v if type(v) is str else label_str(v) for v in values], dtype=object)
