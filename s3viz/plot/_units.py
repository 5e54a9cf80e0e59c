"""Figures of ABX error and k-means unit quality per layer (drawn from s3viz DataFrames)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import (check_table, interval_bars, layer_axis, layer_ticks, legend_title,
                      line_groups, new_axes, with_weights)

__all__ = ["abx_curve", "unit_quality"]


def abx_curve(df: pd.DataFrame, ax=None, *, label_by: str | None = None,
              layer0: str = "CNN/proj", title: str | None = None):
    """ABX error per layer in percent (ZeroSpeech's unit), chance at 50, each line's best
    layer starred.

    ``df``: :func:`s3viz.abx_layers` tables, maybe concatenated; one line per ``label_by``
    value (e.g. a column naming models), else per task (``on``, ``by``, ``across``) where
    the table holds several.
    Labels say "(random weights)" when ``df.attrs["weights"]`` does. A table made with
    ``bootstrap=`` gets error bars of ``abx_error_lo``/``_hi`` (``docs/measures.md``).
    """
    check_table(df, ("layer", "abx_error"), "s3viz.abx_layers")
    ax = new_axes(ax)
    xcol = layer_axis(df)
    keys = [label_by] if label_by else [k for k in ("on", "by", "across") if k in df.columns
                                        and df[k].nunique() > 1]
    for gkey, part in line_groups(df, keys, xcol):
        x, y = part[xcol].to_numpy(), 100 * part["abx_error"].to_numpy(dtype=float)
        name = " / ".join(f"{v}" for v in gkey) if gkey else "ABX error"
        if not label_by and gkey:  # the task: "phone by speaker", "phone across speaker"
            task = dict(zip(keys, gkey))
            on = task.get("on", part["on"].iat[0] if "on" in part else "")
            name = " ".join([str(on)] + [f"{k} {task.get(k, part[k].iat[0])}"
                                         for k in ("by", "across") if k in part
                                         and str(task.get(k, part[k].iat[0])) != ""])
        (line,) = ax.plot(x, y, marker="o", ms=3, label=with_weights(name, df))
        interval_bars(ax, part, "abx_error", x, line.get_color(), scale=100)
        best = int(np.nanargmin(y))
        ax.plot([x[best]], [y[best]], marker="*", ms=10, color=line.get_color(), ls="none")
    ax.axhline(50.0, ls="--", color="0.5", lw=1, label="chance (50 %)")
    layer_ticks(ax, df, xcol, layer0)
    ax.set(ylim=(0, max(55.0, float(100 * df["abx_error"].max()) + 5)),
           ylabel="ABX error (%), lower is better")
    return legend_title(ax, title)


def unit_quality(df: pd.DataFrame, ax=None, *, measures=("pnmi", "phone_purity", "cluster_purity"),
                 label_by: str | None = None, layer0: str = "CNN/proj", title: str | None = None):
    """PNMI and purities of k-means units per layer (:func:`s3viz.unit_quality` tables):
    one line per measure, and one line style per ``k``.

    ``label_by``: a column naming groups of rows (e.g. the model): one colour per group,
    one line style per measure. Labels say "(random weights)" when the table's do. A
    table made with ``bootstrap=`` gets error bars of ``<measure>_lo``/``_hi``.
    """
    check_table(df, ("layer", "k", *measures, *([label_by] if label_by else [])),
                "s3viz.unit_quality")
    ax = new_axes(ax)
    xcol = layer_axis(df)
    ks = sorted(df["k"].unique())
    styles = ["-", "--", ":", "-."]
    names = {"pnmi": "PNMI", "phone_purity": "phone purity", "cluster_purity": "cluster purity"}
    colors = {}
    groups = list(df.groupby(label_by, sort=False)) if label_by else [(None, df)]
    for gname, gdf in groups:
        for ki, kk in enumerate(ks):
            part = gdf[gdf["k"] == kk].sort_values(xcol)
            for mi, m in enumerate(measures):
                key = gname if label_by else m
                kw = {"color": colors[key]} if key in colors else {}
                style = styles[(mi if label_by else ki) % len(styles)]
                label = ((f"{gname}" + (f" {names.get(m, m)}" if len(measures) > 1 else ""))
                         if label_by else names.get(m, m))
                label = with_weights(label + (f" (k={kk})" if len(ks) > 1 else ""), df)
                (line,) = ax.plot(part[xcol], part[m].astype(float), marker="o", ms=3,
                                  ls=style, label=label, **kw)
                colors.setdefault(key, line.get_color())
                interval_bars(ax, part, m, part[xcol].to_numpy(), line.get_color())
    layer_ticks(ax, df, xcol, layer0)
    ax.set(ylim=(0, 1), ylabel="fraction, higher is better")
    if title is None and len(ks) == 1:
        title = f"k-means units, k={ks[0]}"
    return legend_title(ax, title)
