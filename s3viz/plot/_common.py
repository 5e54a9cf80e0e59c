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
