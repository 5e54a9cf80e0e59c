"""Figures of per-layer probes and layer similarity (drawn from s3viz DataFrames)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import (check_table, interval_bars, layer_axis, layer_label, layer_ticks,
                      legend_title, line_groups, new_axes, similarity_note, titled,
                      with_weights)

__all__ = ["probe_curve", "similarity"]


def probe_curve(df: pd.DataFrame, ax=None, *, metric: str | None = None,
                show_control: bool = True, layer0: str = "CNN/proj", title: str | None = None):
    """Probe score per layer of a :func:`s3viz.probe_layers` table: one line per target and
    method (``metric``: ``"accuracy"``, ``"macro_f1"``, ``"selectivity"``, or for
    continuous targets ``"r2"`` or ``"rmse"``; None: ``"accuracy"``, or ``"r2"`` for rows
    of regressions only).

    Accuracy gets a band of +- ``accuracy_std`` over folds (R\u00b2 of ``r2_std``); a
    table made with ``bootstrap=`` error bars of ``<metric>_lo``/``<metric>_hi`` (over
    test speakers, ``docs/measures.md``, "Error bars"); accuracy and F1 a dashed chance
    line (majority class), R\u00b2 one at ``chance_r2`` (each fold's training mean) per
    target. The lines' labels say "(random weights)" when ``df.attrs["weights"]`` does.

    Args:
        show_control: draw ``control_accuracy`` (``control_r2``) as a dotted line when present.
    """
    check_table(df, ("layer",), "s3viz.probe_layers")
    if metric is None:
        scored = "accuracy" in df.columns and df["accuracy"].notna().any()
        metric = "r2" if not scored and "r2" in df.columns else "accuracy"
    check_table(df, ("layer", metric), "s3viz.probe_layers")
    regression = metric in ("r2", "rmse")
    ax = new_axes(ax)
    xcol = layer_axis(df)
    keys = [k for k in ("target", "method") if k in df.columns]
    rows = df[df[metric].notna()] if metric in _ONE_KIND and "target" in df.columns else df
    if len(rows) and len(rows) < len(df):  # a mixed table: the targets this metric scores
        df = df[df["target"].isin(set(rows["target"]))]
    groups = list(line_groups(df, keys, xcol))
    multi = len(groups) > 1
    drawn_chance = set()
    std, chance, ctrl = {"accuracy": ("accuracy_std", "chance", "control_accuracy"),
                         "r2": ("r2_std", "chance_r2", "control_r2"),
                         "macro_f1": (None, "chance", None)}.get(metric, (None, None, None))
    for gkey, part in groups:
        x = part[xcol].to_numpy()
        y = part[metric].to_numpy(dtype=float)
        label = with_weights(" / ".join(str(v) for v in gkey) if gkey else metric, df)
        if np.isnan(y).all():  # refused at every layer (a DegenerateLayerWarning said why)
            label += " (refused: no number at any layer)"
        (line,) = ax.plot(x, y, marker="o", ms=3, label=label)
        color = line.get_color()
        interval_bars(ax, part, metric, x, color)
        if std is not None and std in part.columns:
            s = part[std].to_numpy(dtype=float)
            ax.fill_between(x, y - s, y + s, color=color, alpha=0.2, linewidth=0)
        target = gkey[0] if "target" in keys else None
        if chance is not None and chance in part.columns and target not in drawn_chance:
            drawn_chance.add(target)
            ax.plot(x, part[chance].to_numpy(dtype=float), ls="--", color=color, lw=1,
                    label=f"chance ({target})" if target is not None and multi else "chance")
        if show_control and ctrl is not None and ctrl in part.columns:
            ax.plot(x, part[ctrl].to_numpy(dtype=float), ls=":", color=color,
                    lw=1.2, label=f"{label} control" if multi else "control task")
    layer_ticks(ax, df, xcol, layer0)
    units = sorted({str(u) for u in df.get("unit", pd.Series(dtype=object)).dropna() if u})
    if metric == "rmse":
        ax.set(ylabel="RMSE" + (f" ({', '.join(units)})" if units else ""))
    elif regression:  # R^2 may be negative (worse than the training mean): no floor at 0
        shown = df[[c for c in (metric, f"{metric}_lo", chance) if c and c in df.columns]]
        low = float(np.nanmin(shown.to_numpy(dtype=float))) if shown.size else 0.0
        ax.set(ylim=(min(0.0, low - 0.05), 1.0), ylabel="R\u00b2 (held out)")
    else:
        lo = 0.0 if metric != "selectivity" else min(0.0, float(df[metric].min()) - 0.05)
        ax.set(ylim=(lo, 1.0), ylabel={"accuracy": "accuracy (fraction)", "macro_f1": "macro F1",
                                       "selectivity": "selectivity (score - control)"
                                       }.get(metric, metric))
    return legend_title(ax, title)


_ONE_KIND = ("accuracy", "macro_f1", "r2", "rmse")  # scores of one kind of target only


def annotate_cells(ax, values: np.ndarray, dark, finite_only: bool = False,
                   fmt: str = "{:.2f}") -> None:
    """Each value written in its cell (``finite_only``: not NaN/inf), white where ``dark(v)``."""
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v) or not finite_only:
            ax.text(c, r, fmt.format(v), ha="center", va="center",
                    fontsize=7, color="white" if dark(v) else "black")


def similarity(df: pd.DataFrame, ax=None, *, vmin: float = 0.0, vmax: float = 1.0,
               cmap: str = "viridis", annotate: bool | None = None, colorbar: bool = True,
               label: str | None = None, layer0: str = "CNN/proj", title: str | None = None):
    """Heatmap of a :func:`s3viz.layer_similarity` table (layer 0 at the bottom-left).

    ``annotate``: write each value in its cell (default: at most 8 x 8); ``label``: the
    colour bar's (default from ``df.attrs["method"]``). The title says "random weights"
    when ``df.attrs["weights"]`` (or ``"other_weights"``) does.
    """
    check_table(df, (), "s3viz.layer_similarity")
    if label is None:
        label = ("SVCCA (mean canonical correlation)" if df.attrs.get("method") == "cca"
                 else "linear CKA")
    values = df.to_numpy(dtype=float)
    ax = new_axes(ax, figsize=(5.2, 4.4))
    im = ax.imshow(values, origin="lower", vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto",
                   interpolation="nearest")
    rows = df.attrs.get("upstream_layers", list(df.index))
    rows = rows if len(rows) == values.shape[0] else list(df.index)
    cols = df.attrs.get("other_upstream_layers", list(df.columns))
    cols = cols if len(cols) == values.shape[1] else list(df.columns)
    # one line on the y axis: a two-line label sits off its row
    ax.set_yticks(range(len(rows)), [layer_label(r, layer0).replace("\n", " ") for r in rows])
    ax.set_xticks(range(len(cols)), [layer_label(c, layer0) for c in cols])
    ax.set(ylabel=str(df.index.name or "layer"), xlabel=str(df.columns.name or "layer"))
    if annotate is None:  # 13 x 13 numbers in 7-point type cannot be read
        annotate = max(values.shape) <= 8
    if annotate:
        annotate_cells(ax, values, lambda v: not v > (vmin + vmax) / 2)
    if colorbar:
        ax.figure.colorbar(im, ax=ax).set_label(label)
    if (title := titled(title, similarity_note(df))) is not None:
        ax.set_title(title)
    return ax
