"""ipywidgets front ends. Factories return the widget (they never display it).

Widgets use only ipywidgets and matplotlib (no CDN, no custom frontend
extension), and callbacks call plain functions that are tested on their own.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "alignment_explorer": "_align",
    "layer_weight_explorer": "_weights",
    "layer_projection_explorer": "_projection",
    "attention_explorer": "_attention",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
