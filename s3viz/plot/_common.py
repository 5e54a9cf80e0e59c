"""Helpers shared by the plot modules."""

from __future__ import annotations


def new_axes(ax=None, figsize=(6.4, 3.6)):
    """Return ``ax`` or a fresh Axes on a new figure (never shown here)."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def layer_label(layer: int, first: str = "CNN/proj") -> str:
    """Label for a layer index: layer 0 is the first hidden state (CNN / feature projection)."""
    return f"0\n{first}" if int(layer) == 0 else str(int(layer))


RANDOM_NOTE = "random weights"
"""What a legend label or title adds for a table of random weights (``df.attrs["weights"]``
starting with ``"random weights"``: the random control)."""


def is_random(table, key: str = "weights") -> bool:
    """True when ``table.attrs[key]`` (a measure table's, see ``LayerStore.weights``) says
    random weights."""
    from ..upstreams._hub import is_random_weights

    return is_random_weights(getattr(table, "attrs", {}).get(key))


def with_weights(label: str, table) -> str:
    """``label`` with ``" (random weights)"`` added when ``table`` has random weights and
    the label does not say so already."""
    if is_random(table) and RANDOM_NOTE not in str(label):
        return f"{label} ({RANDOM_NOTE})"
    return label


def similarity_note(df) -> str | None:
    """Which side of a layer-by-layer table has random weights: ``"random weights"`` (both,
    or a store against itself), ``"rows: random weights"``, ``"columns: ..."``, or None."""
    rows = is_random(df)
    cols = is_random(df, "other_weights") if "other_weights" in df.attrs else rows
    if rows and cols:
        return RANDOM_NOTE
    if rows or cols:
        return f"{'rows' if rows else 'columns'}: {RANDOM_NOTE}"
    return None


def titled(title: str | None, note: str | None) -> str | None:
    """``title`` with ``note`` added in brackets (the note alone without a title)."""
    if not note or (title and RANDOM_NOTE in title):
        return title
    return f"{title} ({note})" if title else note
