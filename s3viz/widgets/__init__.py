"""ipywidgets front ends. Factories return the widget (they never display it).

Widgets use only ipywidgets and matplotlib (no CDN, no custom frontend
extension), and callbacks call plain functions that are tested on their own.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "alignment_explorer": "_align",
    "layer_weight_explorer": "_weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's3viz.widgets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
