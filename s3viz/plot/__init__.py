"""Matplotlib figures drawn from s3viz DataFrames.

Every function takes ``ax=None`` (a new figure is made only when none is
given), returns the Axes, computes nothing heavy itself and never calls
``plt.show()``. The numbers behind every figure are the DataFrame you pass in.
"""

from __future__ import annotations

from .._lazy import lazy_exports

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
    "weight_history": "_weights",
    "abx_curve": "_units",
    "unit_quality": "_units",
    "utterance": "_utterance",
    "phone_marks": "_utterance",
    "attention_heads": "_attention",
    "attention_map": "_attention",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
