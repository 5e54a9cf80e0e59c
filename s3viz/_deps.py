"""Importing torchaudio with one clear error when its compiled library cannot load.

pip installs broken torch/torchaudio pairs silently; every s3viz path that needs
torchaudio goes through :func:`torchaudio`, which turns that failure into one
:class:`TorchaudioImportError` naming the versions, the pairs known to work and the
fix. Why: ``docs/install.md``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Optional, Tuple

# (torch, torchaudio) pairs measured to load together (README, "Installing"); the first is
# the pair the lock file (requirements/lock.txt) installs and `make test` runs.
KNOWN_GOOD_PAIRS: Tuple[Tuple[str, str], ...] = (
    ("2.11.0", "2.11.0"), ("2.13.0", "2.11.1"), ("2.14.1", "2.11.1"), ("2.15.0", "2.11.1"))

FIX_COMMAND = "pip install 'torch==2.11.0' 'torchaudio==2.11.0'"
FIX_IN_CHECKOUT = "make setup  (installs the tested set from requirements/lock.txt)"


class TorchaudioImportError(ImportError):
    """torchaudio is missing or its compiled library does not load with the installed torch."""


def installed_version(dist: str) -> Optional[str]:
    """The installed version of distribution ``dist``, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _public(version: Optional[str]) -> Optional[str]:
    """``2.11.0+cpu`` -> ``2.11.0`` (the local build tag does not change the ABI pairing)."""
    return None if version is None else version.split("+", 1)[0]


def _message(cause: BaseException) -> str:
    torch_v, audio_v = installed_version("torch"), installed_version("torchaudio")
    pairs = ", ".join(f"torch {t} + torchaudio {a}" for t, a in KNOWN_GOOD_PAIRS)
    if audio_v is None:
        head = "torchaudio is not installed"
    else:
        head = (f"torchaudio {audio_v} does not load with torch {torch_v or '(not installed)'}")
        if torch_v is not None and "+cpu" in torch_v:
            head += (" (torchaudio's wheels link torch's CUDA libraries, which a +cpu build "
                     "of torch does not have)")
        elif (_public(torch_v), _public(audio_v)) in KNOWN_GOOD_PAIRS:
            head += (" although that pair is known to work; the installation itself is "
                     "damaged (reinstall both)")
    # torch's loader re-raises the dynamic linker's error as "Could not load this
    # library: PATH"; the root of the chain says why (undefined symbol, missing .so).
    root = cause
    while root.__cause__ is not None:
        root = root.__cause__
    reason = (str(root).strip().splitlines() or [""])[-1]
    return (f"{head}: {type(root).__name__}: {reason}\n"
            f"Pairs known to work: {pairs}.\n"
            f"Fix: {FIX_COMMAND}\n"
            f"  or, in an s3viz checkout: {FIX_IN_CHECKOUT}")


def torchaudio():
    """Import and return the ``torchaudio`` module, or raise :class:`TorchaudioImportError`.

    A torchaudio built for another torch fails with an ``OSError`` (undefined symbol,
    missing shared object) or a ``RuntimeError`` from torch's op registry; both become
    one ImportError with the fix, the loader's traceback not chained (it stays available
    as ``err.__context__``).
    """
    try:
        return importlib.import_module("torchaudio")
    except (ImportError, OSError, RuntimeError) as err:
        if isinstance(err, TorchaudioImportError):
            raise
        raise TorchaudioImportError(_message(err)) from None
