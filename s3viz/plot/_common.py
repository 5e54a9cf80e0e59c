"""Helpers shared by the plot modules and the widgets that draw with them."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

RANDOM_NOTE = "random weights"  # what a label or title adds for a table of random weights


def new_axes(ax=None, figsize=(6.4, 3.6)):
    """Return ``ax`` or a fresh Axes on a new figure (never shown here)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def check_table(df, columns, producer: str) -> None:
    """Refuse anything but a non-empty DataFrame of ``producer`` with ``columns``."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be the DataFrame of {producer}, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; pass the DataFrame returned by {producer}")
    if df.empty:
        raise ValueError("df is empty: nothing to plot")


def layer_label(layer: int, first: str = "CNN/proj") -> str:
    """Layer 0 is the first hidden state (CNN / feature projection)."""
    return f"0\n{first}" if int(layer) == 0 else str(int(layer))


def layer_axis(df: pd.DataFrame) -> str:
    """The column of a measure table that numbers its layers on a figure's x axis."""
    return "upstream_layer" if "upstream_layer" in df.columns else "layer"


def line_groups(df: pd.DataFrame, keys, xcol: str):
    """``(key tuple, rows sorted by xcol)`` per group of ``keys`` (one group without keys)."""
    for key, part in (df.groupby(keys, sort=False) if keys else [((), df)]):
        yield (key if isinstance(key, tuple) else (key,)), part.sort_values(xcol)


def layer_ticks(ax, df, xcol, layer0) -> None:
    """The x axis of a per-layer figure: one tick per layer, layer 0 named ``layer0``."""
    ticks = np.unique(df[xcol].to_numpy())
    ax.set_xticks(ticks, [layer_label(t, layer0) for t in ticks])
    ax.set_xlabel("layer")
    ax.grid(True, alpha=0.3)


def legend_title(ax, title: str | None):
    """The small frameless legend and, when given, the title; returns ``ax``."""
    ax.legend(fontsize="small", frameon=False)
    if title is not None:
        ax.set_title(title)
    return ax


def png(fig) -> bytes:
    """``fig`` as PNG bytes at its own dpi."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def with_png(bundle, image: bytes, text: str | None = None) -> dict:
    """A widget's mime bundle with a static ``image/png`` (and ``text/plain``) added, shown
    by frontends without widgets (nbconvert, GitHub)."""
    data = dict((bundle[0] if isinstance(bundle, tuple) else bundle) or {})
    if image:
        data["image/png"] = base64.b64encode(bytes(image)).decode("ascii")
    if text is not None:
        data["text/plain"] = text
    return data


def is_random(table, key: str = "weights") -> bool:
    """True when ``table.attrs[key]`` (see ``LayerStore.weights``) says random weights."""
    from ..upstreams._hub import is_random_weights

    return is_random_weights(getattr(table, "attrs", {}).get(key))


def with_weights(label: str, table) -> str:
    """``label`` with ``" (random weights)"`` added when ``table`` has random weights."""
    if is_random(table) and RANDOM_NOTE not in str(label):
        return f"{label} ({RANDOM_NOTE})"
    return label


def similarity_note(df) -> str | None:
    """Which side of a layer-by-layer table has random weights: ``"random weights"`` (both,
    or a store against itself), ``"rows: random weights"``, ``"columns: ..."``, or None."""
    rows = is_random(df)
    cols = is_random(df, "other_weights") if "other_weights" in df.attrs else rows
    if rows or cols:
        return RANDOM_NOTE if rows and cols else f"{'rows' if rows else 'columns'}: {RANDOM_NOTE}"
    return None


def titled(title: str | None, note: str | None) -> str | None:
    """``title`` with ``note`` added in brackets (the note alone without a title)."""
    if not note or (title and RANDOM_NOTE in title):
        return title
    return f"{title} ({note})" if title else note


def random_title(title, table):
    """``title`` marked "random weights" when ``table`` has random weights."""
    return titled(title, RANDOM_NOTE if is_random(table) else None)


def interval_bars(ax, part, column: str, x, color, scale: float = 1.0) -> None:
    """Error bars of ``column``'s bootstrap interval (``<column>_lo``/``_hi``, drawn when
    the table has them: ``docs/measures.md``, "Error bars"), in ``color``, times ``scale``."""
    if f"{column}_lo" not in part.columns or f"{column}_hi" not in part.columns:
        return
    y = scale * part[column].to_numpy(dtype=float)
    lo = scale * part[f"{column}_lo"].to_numpy(dtype=float)
    hi = scale * part[f"{column}_hi"].to_numpy(dtype=float)
    ax.errorbar(x, y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], fmt="none",
                ecolor=color, elinewidth=1, capsize=2)
