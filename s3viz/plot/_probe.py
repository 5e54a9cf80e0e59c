"""Figures of per-layer probes and layer similarity (drawn from s3viz DataFrames)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import layer_label, new_axes, similarity_note, titled, with_weights

__all__ = ["probe_curve", "similarity"]

_PROBE_COLUMNS = ("layer", "accuracy")


def _layer_axis(df: pd.DataFrame) -> str:
    return "upstream_layer" if "upstream_layer" in df.columns else "layer"


def probe_curve(df: pd.DataFrame, ax=None, *, metric: str = "accuracy",
                show_control: bool = True, layer0: str = "CNN/proj", title: str | None = None):
    """Probe score per layer: one line per target and method, with the chance level.

    Args:
        df: the DataFrame of :func:`s3viz.probe_layers` (columns ``layer``,
            ``accuracy`` and, when present, ``accuracy_std``, ``chance``,
            ``target``, ``method``, ``control_accuracy``, ``upstream_layer``).
        ax: a matplotlib Axes; ``None`` makes a new figure.
        metric: column to plot (``"accuracy"``, ``"macro_f1"``, ``"selectivity"``).
        show_control: draw ``control_accuracy`` as a dotted line when present.
        layer0: what layer 0 is called on the axis (the CNN/projection output of
            wav2vec2-style models).
        title: Axes title.

    Returns:
        The Axes: a solid line (with a band of +- ``accuracy_std`` over folds
        when ``metric="accuracy"``) per target and method, a dashed chance line
        (majority class) per target, dotted control-task lines; the y axis is the
        fraction in [0, 1]; layer 0 is labelled as the CNN/projection output. The
        lines' labels say "(random weights)" when ``df.attrs["weights"]`` does.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be the DataFrame of s3viz.probe_layers, got {type(df).__name__}")
    missing = [c for c in _PROBE_COLUMNS if c not in df.columns]
    if metric not in df.columns:
        missing.append(metric)
    if missing:
        raise ValueError(
            f"df lacks columns {missing}; pass the DataFrame returned by s3viz.probe_layers"
        )
    if df.empty:
        raise ValueError("df is empty: nothing to plot")
    ax = new_axes(ax)
    xcol = _layer_axis(df)
    keys = [k for k in ("target", "method") if k in df.columns]
    groups = list(df.groupby(keys, sort=False)) if keys else [((), df)]
    multi = len(groups) > 1
    drawn_chance = set()
    for gkey, part in groups:
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        part = part.sort_values(xcol)
        x = part[xcol].to_numpy()
        y = part[metric].to_numpy(dtype=float)
        label = with_weights(" / ".join(str(v) for v in gkey) if gkey else metric, df)
        if np.isnan(y).all():  # refused at every layer (a DegenerateLayerWarning said why)
            label += " (refused: no number at any layer)"
        (line,) = ax.plot(x, y, marker="o", ms=3, label=label)
        color = line.get_color()
        if metric == "accuracy" and "accuracy_std" in part.columns:
            s = part["accuracy_std"].to_numpy(dtype=float)
            ax.fill_between(x, y - s, y + s, color=color, alpha=0.2, linewidth=0)
        target = gkey[0] if "target" in keys else None
        if metric in ("accuracy", "macro_f1") and "chance" in part.columns \
                and target not in drawn_chance:
            drawn_chance.add(target)
            ax.plot(x, part["chance"].to_numpy(dtype=float), ls="--", color=color, lw=1,
                    label=f"chance ({target})" if target is not None and multi else "chance")
        if show_control and metric == "accuracy" and "control_accuracy" in part.columns:
            ax.plot(x, part["control_accuracy"].to_numpy(dtype=float), ls=":", color=color,
                    lw=1.2, label=f"{label} control" if multi else "control task")
    ticks = np.unique(df[xcol].to_numpy())
    ax.set_xticks(ticks)
    ax.set_xticklabels([layer_label(t, layer0) for t in ticks])
    ax.set_xlabel("layer")
    lo = 0.0 if metric != "selectivity" else min(0.0, float(df[metric].min()) - 0.05)
    ax.set_ylim(lo, 1.0)
    ax.set_ylabel({"accuracy": "accuracy (fraction)", "macro_f1": "macro F1",
                   "selectivity": "selectivity (acc. - control)"}.get(metric, metric))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    if title is not None:
        ax.set_title(title)
    return ax


def similarity(df: pd.DataFrame, ax=None, *, vmin: float = 0.0, vmax: float = 1.0,
               cmap: str = "viridis", annotate: bool | None = None, colorbar: bool = True,
               label: str | None = None, layer0: str = "CNN/proj", title: str | None = None):
    """Heatmap of a layer-by-layer similarity matrix (e.g. linear CKA).

    Args:
        df: the DataFrame of :func:`s3viz.layer_similarity` (rows and columns
            are layers).
        ax: a matplotlib Axes; ``None`` makes a new figure.
        vmin, vmax: colour range (CKA lies in [0, 1]).
        cmap: matplotlib colormap.
        annotate: write each value in its cell (default: when at most 8 x 8).
        colorbar: add a colorbar.
        label: colorbar label (default from ``df.attrs["method"]``: "linear CKA" or
            "SVCCA (mean canonical correlation)").
        layer0: what layer 0 is called on the axes.
        title: Axes title.

    Returns:
        The Axes (layer 0 at the bottom-left, labelled as the CNN/projection output);
        the title says "random weights" when ``df.attrs["weights"]`` (or
        ``"other_weights"``) does.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"df must be the DataFrame of s3viz.layer_similarity, got {type(df).__name__}"
        )
    if df.empty:
        raise ValueError("df is empty: nothing to plot")
    if label is None:
        label = ("SVCCA (mean canonical correlation)" if df.attrs.get("method") == "cca"
                 else "linear CKA")
    values = df.to_numpy(dtype=float)
    ax = new_axes(ax, figsize=(5.2, 4.4))
    im = ax.imshow(values, origin="lower", vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto",
                   interpolation="nearest")
    rows = df.attrs.get("upstream_layers", list(df.index))
    cols = df.attrs.get("other_upstream_layers", list(df.columns))
    if len(rows) != values.shape[0]:
        rows = list(df.index)
    if len(cols) != values.shape[1]:
        cols = list(df.columns)
    ax.set_yticks(range(len(rows)))
    # one line on the y axis: a two-line label sits off its row
    ax.set_yticklabels([layer_label(r, layer0).replace("\n", " ") for r in rows])
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([layer_label(c, layer0) for c in cols])
    ax.set_ylabel(str(df.index.name or "layer"))
    ax.set_xlabel(str(df.columns.name or "layer"))
    if annotate is None:  # 13 x 13 numbers in 7-point type cannot be read
        annotate = max(values.shape) <= 8
    if annotate:
        mid = (vmin + vmax) / 2
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                ax.text(j, i, "nan" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                        fontsize=7, color="black" if v > mid else "white")
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax)
        cb.set_label(label)
    title = titled(title, similarity_note(df))
    if title is not None:
        ax.set_title(title)
    return ax
