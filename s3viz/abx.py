"""ABX phone discriminability of each stored layer, as in ZeroSpeech and Libri-light.

:func:`abx_layers` runs the engine's :class:`s3viz.measures.ABX` over a store (so a
stored, streamed or sharded ABX is one computation); the distances, DTW and cells
live there. Items, distances, cells and averaging: ``docs/measures.md``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import pandas as pd

from ._device import resolve_device as _resolve_device
from .measures import ABX, StoreSource, run_measures

__all__ = ["abx_layers", "ABXCells"]


class ABXCells(NamedTuple):
    """:func:`abx_layers` with ``return_cells=True``; unpacks as ``table, cells = ...``."""

    table: pd.DataFrame
    """One row per layer (the table ``abx_layers`` returns without cells)."""
    cells: pd.DataFrame
    """One row per scored cell and layer: the numbers the averages are taken from."""


def abx_layers(store, *, on: str = "phone", speaker: str = "within", context: str = "any",
               distance: str = "cosine", layers: Sequence[int] | None = None,
               max_items: int | None = None, device=None, seed: int = 0,
               max_block: int = 2 ** 20, return_cells: bool = False,
               bootstrap: int | None = None, confidence: float = 0.95):
    """ABX error of phone discrimination in every stored layer (``docs/measures.md``).

    Args:
        store: needs phone alignments and, for the speaker conditions, a ``speaker``
            column in ``store.labels``.
        on, speaker, context, distance, max_items, seed, max_block: as for
            :class:`s3viz.measures.ABX`.
        return_cells: also return the scored cells.
        bootstrap, confidence: error bars over resampled speakers (as for
            :class:`s3viz.measures.ABX`; ``docs/measures.md``, "Error bars").

    Returns:
        One row per layer: ``layer``, ``upstream_layer``, ``on``, ``speaker``,
        ``context``, ``distance``, ``abx_error`` (a fraction; 0.5 is chance; NaN with
        a :class:`~s3viz._numerics.DegenerateLayerWarning` for a degenerate layer),
        ``n_items``, ``n_cells``, ``n_triplets``, ``n_dropped`` (segments without a
        frame); with ``bootstrap``, ``abx_error_lo``, ``abx_error_hi``, ``resampled_by``
        (``"speaker"``) and ``attrs["bootstrap"]`` (for :func:`s3viz.compare_scores`).
        With ``return_cells=True``, :class:`ABXCells` ``(table, cells)``:
        one row per scored cell and layer (``layer``, ``upstream_layer``, ``speaker``,
        ``speaker_x``, ``phone``, ``other``, ``context``, ``error``, ``triplets``).
        Both carry ``attrs["weights"]``.
    """
    measure = ABX(on=on, speaker=speaker, context=context, distance=distance,
                  max_items=max_items, seed=seed, max_block=max_block, cells=return_cells,
                  bootstrap=bootstrap, confidence=confidence)
    out = run_measures([measure], StoreSource(store, layers=layers),
                       device=_resolve_device(device))
    return ABXCells(out["abx"], out["abx_cells"]) if return_cells else out["abx"]
