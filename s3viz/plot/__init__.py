"""Matplotlib figures drawn from s3viz DataFrames.

Every function takes ``ax=None`` (a new figure is made only when none is
given), returns the Axes, computes nothing heavy itself and never calls
``plt.show()``. The numbers behind every figure are the DataFrame you pass in.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "probe_curve": "_probe",
    "similarity": "_probe",
    "length_alignment": "_align",
    "frame_grid": "_align",
    "frame_vs_utterance": "_compare",
    "utterance_outputs": "_compare",
    "layer_weights": "_weights",
    "layer_weights_heatmap": "_weights",
    "weights_and_probe": "_weights",
    "weights_table": "_weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's3viz.plot' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
