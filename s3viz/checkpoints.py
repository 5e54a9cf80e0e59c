"""Read learned layer weights from s3prl downstream checkpoints, safely
(:func:`load_featurizer_weights`; the formats: ``docs/featurizers.md``).

Checkpoints load with ``torch.load(weights_only=True)``; one that needs anything but
tensors and ``argparse.Namespace`` to unpickle is refused (:class:`UnsafeCheckpointError`)
before any of it runs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

__all__ = ["SAFE_TYPES", "UnsafeCheckpointError", "load_featurizer_weights", "safe_load"]

SAFE_TYPES: tuple[type, ...] = (argparse.Namespace,)
"""Types allowed to be unpickled beyond PyTorch's weights-only set (s3prl's ``"Args"``)."""

_WEIGHT_KEY = re.compile(r"(^|\.)featurizer\.weights$", re.IGNORECASE)
_FALLBACK_KEY = re.compile(r"(^|\.)(layer_weights|weighted_sum\.weights|weights)$", re.IGNORECASE)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs more than plain data to load; nothing in it was run."""


_FEATURIZER_HINT = ("give the .ckpt/.pt file s3prl's run_downstream.py wrote (e.g. dev-best.ckpt), "
                    "or the weights tensor itself", "extract the 'Featurizer' weights where you "
                    "trust the file and pass the tensor itself")


def safe_load(path: Path, trusted_types: Sequence[type] = (), *,
              hint: tuple[str, str] = _FEATURIZER_HINT):
    """``torch.load`` with ``weights_only=True`` and only :data:`SAFE_TYPES` (and
    ``trusted_types``) allowed."""
    def not_a_checkpoint(why: str) -> ValueError:
        return ValueError(f"{str(path)!r} is not a PyTorch checkpoint that torch.load can read "
                          f"({why}); {hint[0]}")

    if path.stat().st_size == 0:
        raise not_a_checkpoint("the file is empty")
    try:
        with torch.serialization.safe_globals(list(SAFE_TYPES) + list(trusted_types)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e) and "global" not in str(e).lower().split("weights only")[-1]:
            # not a blocked type: bytes that are not a pickle at all
            m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
            raise not_a_checkpoint(
                m.group(1).strip() if m else f"{type(e).__name__}: {str(e)[:120]}") from None
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the global {m.group(1)!r}" if m else "a type or function outside the safe set"
        raise UnsafeCheckpointError(
            f"refused to load {str(path)!r}: it needs {what} to unpickle, which could run code. "
            "s3viz loads checkpoints with torch.load(weights_only=True) and allows only tensors, "
            "plain containers and argparse.Namespace; nothing in the file was executed. If the "
            "file is yours and the type is plain data (e.g. pathlib.PosixPath), pass "
            f"trusted_types=[that type]; otherwise {hint[1]}") from e
    except (EOFError, KeyError, IndexError, RuntimeError, ValueError, OSError) as e:
        # torch.load on a text file raises KeyError, on a truncated one EOFError or a
        # RuntimeError from the zip reader: say what the file is not
        raise not_a_checkpoint(f"{type(e).__name__}: {e}"[:200]) from None


def _flatten(obj, prefix: str = "", out=None, depth: int = 0) -> dict[str, object]:
    """Dotted-key view of nested mappings (state dicts inside checkpoint dicts)."""
    out = {} if out is None else out
    if isinstance(obj, Mapping) and depth < 6:
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                _flatten(v, key, out, depth + 1)
            else:
                out[key] = v
    return out


def _is_vector(v) -> bool:
    return isinstance(v, torch.Tensor) and v.ndim == 1 and v.is_floating_point() and v.numel() > 0


def _find_logits(obj, key: str | None, source: str) -> tuple[torch.Tensor, str]:
    """The ``(num_layers,)`` logits tensor in a loaded checkpoint and the key it sat under."""
    if isinstance(obj, torch.Tensor):
        if not _is_vector(obj):
            raise ValueError(f"{source}: a bare tensor must be 1-D float (one logit per layer), "
                             f"got shape {tuple(obj.shape)} and dtype {obj.dtype}")
        return obj, ""
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a checkpoint dict, state dict or 1-D tensor, got "
                        f"{type(obj).__name__}")
    flat = _flatten(obj)
    if key is not None:
        if key not in flat:
            near = [k for k in flat if k.lower().endswith(key.lower().split(".")[-1])][:10]
            raise KeyError(f"{source}: no key {key!r}; keys ending like it: "
                           f"{near or list(flat)[:10]}")
        if not _is_vector(flat[key]):
            raise ValueError(f"{source}: {key!r} is not a 1-D float tensor of layer logits")
        return flat[key], key
    found = [k for k, v in flat.items() if _WEIGHT_KEY.search(k) and _is_vector(v)]
    if not found:
        found = [k for k, v in flat.items() if _FALLBACK_KEY.search(k) and _is_vector(v)]
    if len(found) == 1:
        return flat[found[0]], found[0]
    if len(found) > 1:
        raise ValueError(f"{source}: several candidate layer-weight tensors {found}; choose one "
                         "with key=...")
    if "Featurizer" in obj and isinstance(obj["Featurizer"], Mapping):
        w = obj["Featurizer"].get("weights")
        if isinstance(w, torch.Tensor):
            raise ValueError(f"{source}: 'Featurizer' -> 'weights' has shape {tuple(w.shape)} and "
                             f"dtype {w.dtype}; layer weights are one float logit per layer "
                             "(a 1-D tensor)")
        sel = getattr(obj.get("Args"), "upstream_layer_selection", None)
        raise ValueError(
            f"{source}: the 'Featurizer' entry has no 'weights' (keys {list(obj['Featurizer'])}): "
            "the downstream used a single layer"
            + (f" (upstream_layer_selection={sel})" if sel is not None else "")
            + ", so there are no learned layer weights")
    tensors = [k for k, v in flat.items() if isinstance(v, torch.Tensor)][:10]
    raise ValueError(
        f"{source}: no featurizer weights found (looked for a 1-D tensor under a key ending in "
        f"'featurizer.weights', e.g. s3prl's 'Featurizer' -> 'weights'); some tensor keys: "
        f"{tensors}; pass key=... naming the dotted key")


def _one(obj, key, trusted_types, name) -> pd.Series:
    source = name
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir():
            raise IsADirectoryError(f"checkpoint {str(path)!r} is a folder; give the checkpoint "
                                    "file in it (e.g. dev-best.ckpt)")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        obj = safe_load(path, trusted_types)
        source = str(path)
    step = obj.get("Step") if isinstance(obj, Mapping) else None
    logits, found = _find_logits(obj, key, source)
    logits = logits.detach().to("cpu", torch.float64)
    probs = torch.softmax(logits, dim=0).numpy()
    if np.isnan(probs).any():
        raise ValueError(f"{source}: layer logits {logits.tolist()} give no valid softmax "
                         "(NaN, or every logit -inf / +inf)")
    s = pd.Series(probs, index=pd.Index(range(len(probs)), name="layer"), name=name)
    s.attrs.update({"source": source, "key": found,
                    "step": int(step) if isinstance(step, (int, np.integer)) else None})
    return s


def _names(paths: Sequence) -> list[str]:
    """Short unique names for several checkpoints (file stems, or longer when they collide)."""
    if not all(isinstance(p, (str, os.PathLike)) for p in paths):
        return [str(p) if isinstance(p, (str, os.PathLike)) else f"checkpoint_{i}"
                for i, p in enumerate(paths)]
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def load_featurizer_weights(path_or_paths, *, key: str | None = None,
                            trusted_types: Sequence[type] = ()) -> pd.Series | pd.DataFrame:
    """Learned layer weights (softmax) of s3prl checkpoints (``docs/featurizers.md``).

    Args:
        path_or_paths: one checkpoint (a path, a loaded dict or a ``(num_layers,)``
            logits tensor), or several as a list of those or a dict ``{name: path}``.
        key: the logits' dotted key, e.g. ``"Featurizer.weights"``; by default the one
            1-D tensor whose key ends in ``featurizer.weights``.

    Returns:
        For one checkpoint a Series indexed by ``layer`` (with s3prl's ``layer_selections``:
        positions among the selected layers), ``.attrs`` ``source``, ``key``, ``step``;
        for several, a DataFrame of checkpoint by layer (NaN past a checkpoint's layers).
        :class:`UnsafeCheckpointError` when a file needs more than plain data to unpickle.
    """
    if (isinstance(path_or_paths, Mapping) and key is None and len(path_or_paths) > 1
            and all(isinstance(v, torch.Tensor) and v.ndim == 1 for v in path_or_paths.values())
            and not any(str(k).lower().endswith("featurizer.weights") for k in path_or_paths)):
        raise ValueError(
            f"path_or_paths is a dict of {len(path_or_paths)} 1-D tensors "
            f"({list(path_or_paths)[:5]}) and none is under a key ending in "
            "'featurizer.weights': s3viz cannot tell one state dict from several checkpoints' "
            "weight logits. For several checkpoints pass {name: path} or a list of tensors; "
            "for one state dict pass key=... naming the weights")
    if isinstance(path_or_paths, Mapping) and not any(  # {name: path}, not a loaded checkpoint
            isinstance(v, (torch.Tensor, Mapping)) for v in path_or_paths.values()):
        names = [str(k) for k in path_or_paths]
        items = list(path_or_paths.values())
    elif isinstance(path_or_paths, (list, tuple)):
        items = list(path_or_paths)
        if not items:
            raise ValueError("path_or_paths is an empty list; give at least one checkpoint")
        names = _names(items)
    else:
        name = Path(path_or_paths).name if isinstance(path_or_paths, (str, os.PathLike)) \
            else "weights"
        return _one(path_or_paths, key, trusted_types, name)
    series = [_one(obj, key, trusted_types, nm) for obj, nm in zip(items, names)]
    df = pd.DataFrame({s.name: s for s in series}).T
    df.index.name = "checkpoint"
    df.columns = pd.Index([int(c) for c in df.columns], name="layer")
    df.attrs["step"] = {s.name: s.attrs.get("step") for s in series}
    df.attrs["source"] = {s.name: s.attrs.get("source") for s in series}
    return df

