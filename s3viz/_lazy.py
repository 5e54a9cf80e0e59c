"""Lazy public names for s3viz's packages (PEP 562), so ``import s3viz`` stays cheap."""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, Iterable, Tuple

__all__ = ["lazy_exports"]


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
