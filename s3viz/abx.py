"""ABX discriminability of any label in each stored layer (ZeroSpeech's phone ABX, speaker
ABX, word ABX ...), with fastabx's ``on``/``by``/``across`` conditions.

:func:`abx_layers` runs the engine's :class:`s3viz.measures.ABX` over a store (so a
stored, streamed or sharded ABX is one computation); the distances, DTW and cells
live there. Items, conditions, cells and averaging: ``docs/measures.md``.
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


def abx_layers(store, *, on: str = "phone", by=None, across=None, distance: str = "cosine",
               layers: Sequence[int] | None = None, utterances=None, max_items=10,
               device=None, seed: int = 0, return_cells: bool = False,
               bootstrap: int | None = None, confidence: float = 0.95,
               progress: bool = True):
    """ABX error of ``on`` in every stored layer, under the ``by`` and ``across`` conditions
    of fastabx's ``Task`` (``docs/measures.md``, "ABX on any label").

    ``abx_layers(store)`` is ZeroSpeech's phone ABX within speaker;
    ``on="speaker", by="phone"`` asks which speaker (within phone); ``on="word"`` word ABX;
    ``across="speaker"`` phone ABX with X from another speaker than A and B.

    Args:
        store: needs alignments, and for a speaker condition a ``speaker`` column in
            ``store.labels``.
        on, by, across, distance, max_items, seed, utterances: as for
            :class:`s3viz.measures.ABX` (``max_items``: at most this many items per group
            sharing every label of the task, default 10 as ZeroSpeech; None: all).
        progress: a progress bar over the scored cells (tqdm; on by default, as
            ``extract``'s: a large task runs minutes).
        return_cells: also return the scored cells.
        bootstrap, confidence: error bars over resampled speakers (as for
            :class:`s3viz.measures.ABX`; ``docs/measures.md``, "Error bars").

    Returns:
        One row per layer: ``layer``, ``upstream_layer``, ``on``, ``by``, ``across``
        (labels joined by ``+``), ``distance``, ``abx_error`` (a fraction; 0.5 is chance;
        NaN with a :class:`~s3viz._numerics.DegenerateLayerWarning` for a degenerate
        layer), ``n_items``, ``n_cells``, ``n_triplets``, ``n_dropped`` (segments without
        a frame); with ``bootstrap``, ``abx_error_lo``, ``abx_error_hi``,
        ``resampled_by`` (``"speaker"``) and ``attrs["bootstrap"]`` (for
        :func:`s3viz.compare_scores`). With ``return_cells=True``, :class:`ABXCells`
        ``(table, cells)``: one row per scored cell and layer (``on`` and ``on + "_b"``:
        the labels of A and X, and of B; each by and across label, across ones also as
        ``label + "_x"`` for X; ``triplets``, ``error``, ``layer``, ``upstream_layer``).
        Both carry ``attrs["weights"]``.
    """
    measure = ABX(on=on, by=by, across=across, distance=distance, max_items=max_items,
                  seed=seed, cells=return_cells, bootstrap=bootstrap, confidence=confidence,
                  utterances=utterances, progress=progress)
    out = run_measures([measure], StoreSource(store, layers=layers),
                       device=_resolve_device(device))
    return ABXCells(out["abx"], out["abx_cells"]) if return_cells else out["abx"]
