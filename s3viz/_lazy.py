"""Lazy public names for s3viz's packages (PEP 562), so ``import s3viz`` stays cheap."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Callable, Dict, Iterable, Tuple

__all__ = ["lazy_exports", "moved_module"]


def lazy_exports(package: str, exports: Dict[str, str], submodules: Iterable[str] = ()
                 ) -> Tuple[Callable, Callable]:
    """Return ``(__getattr__, __dir__)`` for ``package``.

    ``exports`` maps a public name to the submodule (relative to ``package``)
    that defines it; ``submodules`` are importable by attribute access.
    """
    submodules = tuple(submodules)

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            setattr(sys.modules[package], name, value)
            return value
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports) | set(submodules))

    return __getattr__, __dir__


def moved_module(old: str, new: str) -> types.ModuleType:
    """Keep ``from <old> import name`` working, with a DeprecationWarning, after a rename.

    Registers a stand-in module under ``old`` in ``sys.modules``: reading a
    name from it warns (:func:`s3viz._compat.deprecated`) and returns
    ``<new>.<name>``, imported on first use. Setting a name on the stand-in is
    refused, since it would not reach ``new``.
    """
    from ._compat import deprecated

    if old in sys.modules:
        return sys.modules[old]

    class _Moved(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            deprecated(f"{old} was renamed {new}; import {name} from {new}")
            return getattr(importlib.import_module(new), name)

        def __setattr__(self, name, value):
            raise AttributeError(f"{old} is a deprecated alias of {new}: set {name} on {new}")

        def __dir__(self):
            return dir(importlib.import_module(new))

    stand_in = _Moved(old, f"Deprecated alias of :mod:`{new}`.")
    sys.modules[old] = stand_in
    return stand_in
