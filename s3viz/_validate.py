"""Checks of public numeric arguments: a ValueError (or TypeError) that names the argument.

Every public function checks its numbers with these before it starts (a NaN learning
rate or a batch size of 0 must not give a quietly wrong number).
"""

from __future__ import annotations

import math
import os
import sys
from numbers import Integral, Real
from typing import List, Optional, Sequence

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel() -> int:
    """``stacklevel`` that makes a warning point at the first frame outside s3viz."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def integer(value, name: str, *, minimum: Optional[int] = 1, none_ok: bool = False):
    """``value`` as an int ``>= minimum`` (a bool or a float such as 2.5 is refused)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not (
            isinstance(value, Integral) or float(value).is_integer()):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def number(value, name: str, *, positive: bool = False, nonnegative: bool = False,
           below: Optional[float] = None, none_ok: bool = False):
    """``value`` as a finite float (optionally > 0, >= 0, < ``below``)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    for broken, rule in ((positive and value <= 0, "> 0"), (nonnegative and value < 0, ">= 0"),
                         (below is not None and value >= below, f"< {below}")):
        if broken:
            raise ValueError(f"{name} must be {rule}, got {value!r}")
    return value


def numbers(values, name: str, *, positive: bool = True) -> List[float]:
    """A non-empty list of finite (positive) floats."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of numbers, got {values!r}")
    out = [number(v, f"{name}[{i}]", positive=positive) for i, v in enumerate(values)]
    if not out:
        raise ValueError(f"{name} must hold at least one value, got an empty list")
    return out


class LayerIndexError(IndexError, ValueError):
    """A layer index out of range: an IndexError, and a ValueError of the argument."""


def stored_layers(store, layers, name: str = "layers") -> List[int]:
    """``layers`` (the argument ``name``) as a list of stored layer indices of ``store``
    (or of ``store`` layers, an int; None: all of them)."""
    n = store if isinstance(store, Integral) else int(store.num_layer)
    if layers is None:
        return list(range(n))
    out = []
    for layer in ([layers] if isinstance(layers, Integral) else layers):
        if isinstance(layer, bool) or not isinstance(layer, Integral) or not 0 <= layer < n:
            raise LayerIndexError(f"{name} must hold stored layer indices in [0, {n}), got "
                                  f"{layer!r}: out of range or not an index")
        out.append(int(layer))
    if not out:
        raise ValueError(f"{name} selects no layer")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} names a stored layer twice: {out}; give each without repeats")
    return out


def layer_range(layers: Sequence[int], sep: str = ",") -> str:
    """``layer 3``, ``layers 0-4`` or ``layers 0-2,5`` (runs collapsed, joined by ``sep``)."""
    layers = sorted(int(x) for x in layers)
    runs = [[layers[0], layers[0]]]
    for x in layers[1:]:
        if x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return (("layer " if len(layers) == 1 else "layers ")
            + sep.join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs))
