"""Measures of every layer, each one small object run by one driver (``docs/streaming.md``).

A measure declares its state and how it merges over ranks, takes batches of
frames and returns a tidy table (:class:`Measure`); :func:`run_measures` runs any
list of them over a :class:`StoreSource` (a :class:`~s3viz.store.LayerStore`) or
a :class:`StreamSource` (an upstream over a corpus, no frame kept), whole or one
shard, so every measure is stored, streamed and sharded by construction.
Adding a measure is one file here, an entry in :data:`MEASURES`, one test and a
paragraph in ``docs/measures.md`` ("Adding a measure").
"""

from __future__ import annotations

from collections.abc import Sequence

from ._engine import Batch, Context, Measure, StoreSource, StreamSource, run_measures
from .abx import ABX
from .cca import CCA
from .cka import LayerCKA
from .probe import RidgeProbe
from .segments import SegmentProbe
from .units import UnitQuality

__all__ = ["ABX", "CCA", "MEASURES", "Batch", "Context", "LayerCKA", "Measure", "RidgeProbe",
           "SegmentProbe", "StoreSource", "StreamSource", "UnitQuality", "build_measures",
           "run_measures"]

MEASURES = {"probe": RidgeProbe, "segments": SegmentProbe, "cka": LayerCKA,
            "units": UnitQuality, "abx": ABX, "cca": CCA}
"""Each measure by the name the CLI's ``--measures`` and :func:`build_measures` take."""


def build_measures(measures: Sequence) -> list[Measure]:
    """Measure objects from objects or names (a name gives the measure's defaults)."""
    if isinstance(measures, (str, Measure)):
        measures = [measures]
    if measures is None or not hasattr(measures, "__iter__"):
        raise TypeError(f"measures must be a list of s3viz.measures objects or their names "
                        f"{sorted(MEASURES)}, got {measures!r}")
    out = []
    for m in measures:
        if isinstance(m, str):
            if m not in MEASURES:
                raise ValueError(f"unknown measure {m!r}; choose from {sorted(MEASURES)}")
            m = MEASURES[m]()
        if not isinstance(m, Measure):
            raise TypeError(f"measures must be s3viz.measures objects or their names "
                            f"{sorted(MEASURES)}, got {type(m).__name__}")
        out.append(m)
    if not out:
        raise ValueError("nothing to compute: give at least one measure")
    return out
