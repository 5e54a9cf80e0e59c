"""Attention heads: the layer x head heatmap of one statistic, and one head's map with the
phone and word tiers along both axes (``docs/attention.md``, "Views")."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import check_table, new_axes, random_title
from ._probe import annotate_cells

__all__ = ["attention_heads", "attention_map"]

UNITS = {"entropy": "entropy / log(keys)", "distance_ms": "mean distance (ms)",
         "diagonal": "attention within ±1 frame", "silence": "attention on silence",
         "same_phone": "attention on its own phone", "same_word": "attention on its own word",
         "outside": "attention past the audio"}


def attention_heads(stats: pd.DataFrame, column: str = "entropy", ax=None, *,
                    annotate: bool | None = None, cmap: str = "viridis",
                    vmax: float | None = None, title: str | None = None):
    """Heatmap of one statistic of :func:`s3viz.attention_stats`: a row per layer (first
    layer on top), a column per head.

    Args:
        stats: the table of :func:`s3viz.attention_stats` (one model).
        column: the statistic, one of ``s3viz.attention.STATISTICS``.
        annotate: write each value in its cell (default: at most 24 x 24 heads).
        vmax: the top of the colour scale (default: 1 for entropy, else the largest
            value); give two models one ``vmax`` to compare their heatmaps.
    """
    from ..attention import STATISTICS

    check_table(stats, ("layer", "head"), "s3viz.attention_stats")
    if column not in STATISTICS:
        raise ValueError(f"column must be one of {STATISTICS}, got {column!r}")
    if column not in stats.columns:
        raise ValueError(f"stats lacks the column {column!r}; pass the table of "
                         "s3viz.attention_stats")
    if "model" in stats.columns and stats["model"].nunique() > 1:
        raise ValueError(f"stats holds several models {sorted(stats['model'].unique())}; "
                         "draw one at a time: stats[stats.model == name]")
    if stats.duplicated(["layer", "head"]).any():
        raise ValueError("stats has several rows for one layer and head; pass one "
                         "attention_stats table")
    grid = stats.pivot(index="layer", columns="head", values=column).sort_index()
    values = grid.to_numpy(dtype=float)
    ax = new_axes(ax, figsize=(max(4.0, 0.55 * values.shape[1] + 2.2),
                               max(2.6, 0.45 * values.shape[0] + 1.4)))
    # entropy on its whole scale; the others from 0 to their largest value (a fraction of
    # a few percent on a 0-1 scale would show no contrast)
    if vmax is None:
        vmax = 1.0 if column == "entropy" else max(float(np.nanmax(values)), 1e-12)
    im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax)
    ax.figure.colorbar(im, ax=ax, label=UNITS[column])
    ax.set_xticks(np.arange(values.shape[1]), [str(h) for h in grid.columns])
    ax.set_yticks(np.arange(values.shape[0]), [str(k) for k in grid.index])
    ax.set(xlabel="head", ylabel="layer")
    if annotate is None:
        annotate = values.shape[0] <= 24 and values.shape[1] <= 24
    if annotate:
        annotate_cells(ax, values, lambda v: v < 0.6 * vmax, finite_only=True,
                       fmt="{:.0f}" if column == "distance_ms" else "{:.2f}")
    name = stats["model"].iat[0] if "model" in stats.columns else ""
    ax.set_title(random_title(title or f"{name} heads: {column}".strip(), stats))
    return ax


def _segments(labels: np.ndarray, seg: np.ndarray):
    """Each segment's frames ``(start, end, label)``: runs of one segment index (two
    neighbouring segments of one label stay two), and the frames of no segment."""
    edges = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1], True])
    return [(int(a), int(b), labels[a] if seg[a] >= 0 else "")
            for a, b in zip(edges[:-1], edges[1:])]


def _tier(ax, labels: np.ndarray, seg: np.ndarray, axis: str, offset: float) -> None:
    """A tier's segments as lines at their boundaries (in the map) and labels outside it."""
    for a, b, lab in _segments(labels, seg):
        if a > 0:
            line = ax.axvline if axis == "x" else ax.axhline
            line(a - 0.5, color="w", lw=0.5, alpha=0.6)
        if lab in ("", None):
            continue
        mid = (a + b - 1) / 2
        if axis == "x":
            ax.text(mid, 1 + offset, str(lab), ha="center", va="bottom", fontsize=7,
                    transform=ax.get_xaxis_transform(), clip_on=False)
        else:
            ax.text(-offset, mid, str(lab), ha="right", va="center", fontsize=7,
                    transform=ax.get_yaxis_transform(), clip_on=False)


def attention_map(maps, layer: int | None = None, head: int | None = None, ax=None, *,
                  cmap: str = "magma", title: str | None = None):
    """One head's ``(T, T)`` map of :class:`s3viz.attention.AttentionMaps`: queries down,
    keys across, phones above and left of the map and words beyond them, a line at each
    segment boundary; silence frames shaded on both axes.

    Args:
        maps: from :func:`s3viz.attention_maps`.
        layer, head: which map (default: the first in ``maps``).
    """
    from ..attention import AttentionMaps

    if not isinstance(maps, AttentionMaps):
        raise TypeError(f"maps must be the AttentionMaps of s3viz.attention_maps, got "
                        f"{type(maps).__name__}")
    layer = maps.layers[0] if layer is None else layer
    head = maps.heads[0] if head is None else head
    m = maps.map(layer, head).numpy()
    t = m.shape[0]
    ax = new_axes(ax, figsize=(6.4, 6.0))
    im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=max(float(m.max()), 1e-12),
                   interpolation="nearest", origin="upper")
    ax.figure.colorbar(im, ax=ax, label="attention", fraction=0.046, pad=0.04)
    phones, words = maps.frame_labels("phone"), maps.frame_labels("word")
    silent, ph_seg, wd_seg = maps.frame_segments()
    ax.tick_params(labelsize=7)
    for axis, near, far in (("x", 0.01, 0.055), ("y", 0.07, 0.15)):  # y: beyond the ticks
        _tier(ax, phones, ph_seg, axis, near)
        _tier(ax, words, wd_seg, axis, far)
    sil = np.flatnonzero(silent)
    for k in sil:  # silence: a grey tick on both axes
        ax.axvspan(k - 0.5, k + 0.5, ymin=0, ymax=0.012, color="0.6")
        ax.axhspan(k - 0.5, k + 0.5, xmin=0, xmax=0.012, color="0.6")
    secs = maps.rate / 16000.0
    ax.set(xlim=(-0.5, t - 0.5), ylim=(t - 0.5, -0.5),
           xlabel=f"key frame ({secs * 1000:g} ms each)")
    ax.set_ylabel("query frame", labelpad=52)
    out = float(maps.outside[maps.layers.index(layer), maps.heads.index(head)].mean())
    note = f"; {out:.0%} of it past the audio" if out > 0.005 else ""
    ax.set_title(title or f"{maps.utterance_id}: layer {layer}, head {head}{note}", pad=34)
    return ax
