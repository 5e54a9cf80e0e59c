"""Extraction: run an upstream over a corpus once and keep every hidden state.

:func:`extract` runs any s3prl-style upstream (``forward(wavs, wavs_len) ->
(all_hs, all_hs_len)``) over a :class:`~s3viz.data.Corpus` in length-bucketed
batches and returns a :class:`LayerStore`: the unpadded frames of every
utterance and every (selected) layer, either in memory or in a fingerprinted
cache on disk. Every analysis of s3viz reads a :class:`LayerStore`, so the
upstream runs once. A store never holds NaN or inf: a batch whose valid frames
have one raises :class:`NonFiniteError` naming the utterance and the layer.

On-disk layout (``cache_dir/<name>-<fingerprint[:16]>/``)::

    plan.json              settings, fingerprints, ids and the batch plan (written once)
    labels.json            corpus.labels (one row per utterance)
    phones.json            the phone alignment table of every utterance (or null)
    chunks/c00012.json     record of chunk 12: its utterances, frame counts and the
                           sha256 of each of its files (written after the files)
    chunks/c00012_l003.pt  stored layer 3 of chunk 12: (sum of frames, hidden_size),
                           the unpadded frames of the chunk's utterances, concatenated
    manifest.json          plan + every chunk record, written when all chunks exist

A chunk is one batch. Every file is written to a temporary name and then
``os.replace``'d, so a killed extraction (even ``SIGKILL``) leaves only whole
files; the batch plan is deterministic (and stored), so re-running
:func:`extract` with the same arguments verifies the chunks that exist
(sha256), re-extracts the missing or corrupt ones and ends with the same bytes
as an uninterrupted run. Reading verifies each chunk file's sha256 on its first
load and raises :class:`CacheCorruptionError` instead of returning bad data.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import sys
import types
import warnings
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .align import expected_lengths
from .audio import batch_wavs
from .align import frame_labels as _align_frame_labels
from .interface import SAMPLE_RATE, num_layer_of

try:  # POSIX advisory lock against two processes writing one cache folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["DEFAULT_MAX_BATCH_SECONDS", "CacheCorruptionError", "LayerStore", "NonFiniteError", "extract"]

DEFAULT_MAX_BATCH_SECONDS = 60.0
"""Default cap on the padded audio of one batch (``batch_size * longest`` seconds)."""

_FORMAT_VERSION = 2
# 2: frames are checked finite before they are stored (format 1 caches may hold NaN/inf,
#    so they are not reused: extract writes a new one)
_STORE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_HASH_BLOCK = 1 << 22
_HASH_PIECE = 1 << 24


class CacheCorruptionError(RuntimeError):
    """A file of an on-disk :class:`LayerStore` is missing, truncated or fails its sha256
    (chunk tensors, and the manifest, labels, alignments and chunk records it lists)."""


# --------------------------------------------------------------------------- validation


def _check_upstream(upstream):
    if not isinstance(upstream, nn.Module):
        raise TypeError(
            f"upstream must be a torch.nn.Module following s3viz.AbsUpstream "
            f"(num_layer, hidden_sizes, downsample_rates, forward(wavs, wavs_len)), got "
            f"{type(upstream).__name__}; wrap s3prl objects with s3viz.upstreams.from_s3prl"
        )
    try:
        num_layer = num_layer_of(upstream)
    except TypeError as e:
        raise TypeError(f"upstream: {e}") from e
    sizes = {}
    for attr in ("hidden_sizes", "downsample_rates"):
        try:
            value = list(getattr(upstream, attr))
        except (AttributeError, NotImplementedError, TypeError) as e:
            raise TypeError(
                f"upstream ({type(upstream).__name__}) needs '{attr}': a list of "
                f"{num_layer} positive ints, one per hidden state"
            ) from e
        if len(value) != num_layer or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise TypeError(
                f"upstream.{attr} must be {num_layer} positive ints (num_layer={num_layer}), "
                f"got {value!r}"
            )
        sizes[attr] = [int(v) for v in value]
    try:
        fields = getattr(upstream, "receptive_fields", None)
    except NotImplementedError:
        fields = None
    if fields is not None:
        fields = list(fields)
        if len(fields) != num_layer or not all(int(v) > 0 for v in fields):
            raise TypeError(
                f"upstream.receptive_fields must be {num_layer} positive ints or None, "
                f"got {fields!r}"
            )
        fields = [int(v) for v in fields]
    else:
        fields = list(sizes["downsample_rates"])
    name = getattr(upstream, "name", None)
    if not isinstance(name, str) or not name:
        name = type(upstream).__name__
    return num_layer, sizes["hidden_sizes"], sizes["downsample_rates"], fields, name


def _as_corpus(corpus):
    from .data._corpus import Corpus, Utterance

    if isinstance(corpus, Corpus):
        out = corpus
    elif isinstance(corpus, (str, bytes, os.PathLike)) or not hasattr(corpus, "__iter__"):
        raise TypeError(
            f"corpus must be an s3viz.data.Corpus (or a list of s3viz.data.Utterance), got "
            f"{type(corpus).__name__}; load audio files with s3viz.data.load_folder(path)"
        )
    else:
        items = list(corpus)
        bad = [type(u).__name__ for u in items if not isinstance(u, Utterance)]
        if bad:
            raise TypeError(
                f"corpus items must be s3viz.data.Utterance, got {bad[0]}; build them with "
                "s3viz.data.Utterance(id=..., wav=...)"
            )
        out = Corpus(items)
    if len(out) == 0:
        raise ValueError("corpus is empty: extract needs at least one utterance")
    empty = [u.id for u in out if u.num_samples == 0]
    if empty:
        raise ValueError(
            f"corpus has {len(empty)} utterance(s) without samples (first: {empty[0]!r}); "
            "remove them before extraction"
        )
    return out


def _check_layers(layers, num_layer: int) -> list[int]:
    if layers is None:
        return list(range(num_layer))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    try:
        items = list(layers)
    except TypeError as e:
        raise TypeError(
            f"layers must be None (all), an int or a sequence of ints, got {type(layers).__name__}"
        ) from e
    if not items:
        raise ValueError("layers is empty; pass None for all layers or at least one index")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"layers must hold ints, got {v!r} ({type(v).__name__})")
        if not -num_layer <= v < num_layer:
            raise IndexError(
                f"layers holds {int(v)} but the upstream has {num_layer} hidden states "
                f"(valid indices 0..{num_layer - 1}, or negative from the end)"
            )
        out.append(int(v) % num_layer)
    if len(set(out)) != len(out):
        raise ValueError(f"layers holds duplicates: {items!r}")
    return out


def _check_batching(batch_size, max_batch_seconds):
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
        or batch_size <= 0
    ):
        raise ValueError(
            f"batch_size must be a positive int (utterances per batch) or None, got {batch_size!r}"
        )
    if max_batch_seconds is not None:
        if isinstance(max_batch_seconds, bool) or not isinstance(
            max_batch_seconds, (int, float, np.integer, np.floating)
        ) or not np.isfinite(max_batch_seconds) or max_batch_seconds <= 0:
            raise ValueError(
                "max_batch_seconds must be a positive number of seconds of padded audio per "
                f"batch or None, got {max_batch_seconds!r}"
            )
    if batch_size is None and max_batch_seconds is None:
        raise ValueError(
            "batch_size and max_batch_seconds are both None; set at least one (e.g. "
            f"max_batch_seconds={DEFAULT_MAX_BATCH_SECONDS})"
        )


def _check_store_dtype(store_dtype) -> torch.dtype:
    dt = _DTYPE_NAMES.get(store_dtype, store_dtype) if isinstance(store_dtype, str) else store_dtype
    if dt not in _STORE_DTYPES:
        raise ValueError(
            f"store_dtype must be one of torch.float32, torch.float16, torch.bfloat16, "
            f"got {store_dtype!r}"
        )
    return dt


def _check_dtype(dtype) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if dtype is None:
        return None
    dt = _DTYPE_NAMES.get(dtype, None) if isinstance(dtype, str) else dtype
    if dt not in _STORE_DTYPES:
        raise ValueError(
            f"dtype must be None, torch.float32, torch.float16 or torch.bfloat16 (the compute "
            f"dtype; half precision runs under torch.autocast), got {dtype!r}"
        )
    return None if dt == torch.float32 else dt


def _upstream_device(upstream: nn.Module) -> torch.device:
    for p in upstream.parameters():
        return p.device
    for b in upstream.buffers():
        return b.device
    return torch.device("cpu")


def _module_devices(upstream: nn.Module) -> set:
    return {t.device for t in list(upstream.parameters()) + list(upstream.buffers())}


def _resolve_device(upstream, device) -> tuple[torch.device, bool]:
    """(device to run on, whether the upstream must be moved there)."""
    if device is None:
        return _upstream_device(upstream), False
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be None, 'cpu', 'cuda', 'cuda:N' ..., got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but CUDA is not available here; pass device=None (the "
            "upstream's own device) or device='cpu'"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    devices = _module_devices(upstream)
    return dev, bool(devices) and devices != {dev}


def _check_utterances(utterances, n: int) -> np.ndarray:
    if utterances is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(utterances, torch.Tensor):
        utterances = utterances.cpu().numpy()
    if isinstance(utterances, (int, np.integer)) and not isinstance(utterances, bool):
        raise TypeError(
            "utterances must be None or a sequence of utterance positions, got a single int; "
            "use store.utterance(i) for one utterance or utterances=[i]"
        )
    arr = np.asarray(utterances)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"a boolean utterances mask must have shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"utterances must be None or a 1-D sequence of int positions, got {utterances!r:.80}"
        )
    if arr.min() < 0 or arr.max() >= n:
        raise IndexError(f"utterances must be positions in [0, {n}), got min {arr.min()} max {arr.max()}")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- planning


def _selection(utterances, n: int) -> np.ndarray:
    """Sorted unique positions of a non-empty utterance selection (None: all ``n``)."""
    sel = _check_utterances(utterances, n)
    if sel.size == 0:
        raise ValueError("`utterances` selects no utterance")
    return np.unique(sel)


def _bucket_plan(num_samples, batch_size=None, max_batch_seconds=DEFAULT_MAX_BATCH_SECONDS,
                 sort: bool = True) -> list[list[int]]:
    """Deterministic batch plan: lists of utterance positions.

    With ``sort`` (the default), utterances are sorted by length, longest first
    (ties by position), and batches are filled in that order until the next
    utterance would exceed ``batch_size`` utterances or ``max_batch_seconds`` of
    padded audio (``batch_size * longest``). Without ``sort``, corpus order.
    An utterance longer than ``max_batch_seconds`` forms a batch of its own.
    """
    n = np.asarray(num_samples, dtype=np.int64)
    if sort:
        order = np.lexsort((np.arange(len(n)), -n))
    else:
        order = np.arange(len(n))
    max_samples = None if max_batch_seconds is None else float(max_batch_seconds) * SAMPLE_RATE
    plan: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        length = int(n[i])
        new_max = max(cur_max, length)
        full = (batch_size is not None and len(cur) + 1 > batch_size) or (
            max_samples is not None and (len(cur) + 1) * new_max > max_samples
        )
        if cur and full:
            plan.append(cur)
            cur, new_max = [], length
        cur.append(int(i))
        cur_max = new_max
    if cur:
        plan.append(cur)
    return plan


def _padding(plan: Sequence[Sequence[int]], num_samples) -> tuple[int, int]:
    """(samples of real audio, samples of padded audio) that a plan feeds to the upstream."""
    n = np.asarray(num_samples, dtype=np.int64)
    real = int(sum(int(n[b].sum()) for b in plan))
    padded = int(sum(len(b) * int(n[b].max()) for b in plan))
    return real, padded


def _estimate_bytes(num_samples, rates, hidden_sizes, store_dtype) -> int:
    itemsize = torch.tensor([], dtype=store_dtype).element_size()
    total = 0
    for rate, size in zip(rates, hidden_sizes, strict=True):
        total += int(expected_lengths(num_samples, rate, "ceil").sum()) * size * itemsize
    return total


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover


# --------------------------------------------------------------------------- fingerprints


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def _tensor_digest(t: torch.Tensor) -> bytes:
    """sha256 digests of a tensor's bytes in pieces of ``_HASH_PIECE`` bytes, concatenated."""
    data = _tensor_bytes(t)
    return b"".join(hashlib.sha256(data[i: i + _HASH_PIECE]).digest()
                    for i in range(0, max(len(data), 1), _HASH_PIECE))


def _code_bytes(code) -> bytes:
    """Bytecode, names and constants of a code object and the ones nested in it; no file
    names, line numbers or addresses (moving code keeps its caches)."""
    out = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            out.append(_code_bytes(const))
        else:  # (docstrings too: editing one re-extracts, the safe direction)
            out.append(re.sub(r"0x[0-9a-fA-F]+", "0x", repr(const)).encode())
    return b"|".join(out)


@functools.lru_cache(maxsize=256)
def _code_digest(cls: type) -> str:
    """sha256 of what the methods of ``cls`` and of the classes it inherits from (outside
    torch) compute: their bytecode, so that a changed ``forward`` changes the fingerprint."""
    h = hashlib.sha256()
    for k in cls.__mro__:
        if k.__module__.split(".")[0] in ("torch", "builtins"):
            continue
        for name, member in sorted(vars(k).items()):
            func = getattr(member, "__func__", member)
            func = getattr(func, "fget", func)  # properties
            code = getattr(func, "__code__", None)
            if code is not None:
                h.update(name.encode() + b"=" + _code_bytes(code))
    return h.hexdigest()[:16]


_PLAIN = (bool, int, float, str, type(None))


def _plain_attributes(module) -> str:
    """The module's own attributes that are plain values (numbers, strings, tuples and
    lists of them), sorted; torch's bookkeeping and hooks are left out, and so are the
    names a module lists in ``s3viz_fingerprint_ignore`` (counters and other attributes
    that do not change its output)."""
    out = []
    ignore = set(getattr(module, "s3viz_fingerprint_ignore", ()))
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key == "training" or key in ignore:
            continue
        if isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and len(value) < 256
                                         and all(isinstance(v, _PLAIN) for v in value)):
            out.append(f"{key}={value!r}")
    return ";".join(out)


def _upstream_fingerprint(upstream: nn.Module) -> str:
    """sha256 over the class name, name, architecture (repr), the code and plain attributes
    of every module in the tree, and every state_dict tensor.

    Tensors are hashed in pieces by a few threads (hashlib releases the GIL), then
    the piece digests, names, dtypes and shapes are hashed in order.
    """
    h = hashlib.sha256()
    cls = type(upstream)
    # the class name, not its module: moving a class between modules keeps its caches
    h.update(f"{cls.__qualname__}|{getattr(upstream, 'name', '')}".encode())
    # the module tree with its hyper-parameters; memory addresses are not content
    h.update(re.sub(r"0x[0-9a-fA-F]+", "0x", repr(upstream)).encode())
    # the code of every module class in the tree and each module's plain attributes
    # (a changed forward or `self.scale = 5` changes the frames but not the state dict)
    for path, module in upstream.named_modules() if isinstance(upstream, nn.Module) else [
            ("", upstream)]:
        h.update(f"{path}|{_code_digest(type(module))}|{_plain_attributes(module)}".encode())
    items = list(upstream.state_dict().items())
    tensors = [v for _, v in items if isinstance(v, torch.Tensor)]
    workers = max(1, min(8, os.cpu_count() or 1, len(tensors)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3viz-hash") as pool:
        digests = iter(list(pool.map(_tensor_digest, tensors)))
    for key, value in items:
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode())
            h.update(next(digests))
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def _extraction_fingerprint(upstream_fp, corpus_fp, layer_ids, sizes, rates, store_dtype,
                            amp_dtype) -> str:
    settings = {
        "format": _FORMAT_VERSION,
        "upstream": upstream_fp,
        "corpus": corpus_fp,
        "layers": list(layer_ids),
        "hidden_sizes": list(sizes),
        "downsample_rates": list(rates),
        "store_dtype": _STORE_DTYPES[store_dtype],
        "dtype": "float32" if amp_dtype is None else _STORE_DTYPES[amp_dtype],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(_HASH_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- batching


def _batch_wavs(corpus, utts) -> tuple[torch.Tensor, torch.Tensor]:
    """``wavs (batch_size, seq_len, 1)``, ``wavs_len (batch_size,)`` of utterances ``utts``."""
    try:
        return batch_wavs([corpus[i].wav for i in utts], allow_silence=True)
    except ValueError as e:
        ids = [corpus[i].id for i in utts]
        raise ValueError(f"bad audio in the batch of utterances {ids} (wavs[i] is ids[i]): {e}") from e


_MANIFEST_KEYS = ("format", "fingerprint", "name", "ids", "layer_ids", "chunks", "plan",
                  "hidden_sizes", "downsample_rates", "receptive_fields", "store_dtype",
                  "labels_sha256", "phones_sha256", "manifest_sha256")


class NonFiniteError(ValueError):
    """Hidden states hold NaN or inf: refused, since one such value silently corrupts a
    probe, CKA or featurizer computed over the layer."""


NONFINITE_HINT = ("s3viz refuses non-finite hidden states (one NaN or inf would silently "
                  "change every probe and CKA value of the layer); check the model on that "
                  "utterance, e.g. float16 overflow (extract with dtype=None) or silent audio "
                  "through a normalisation")


def _require_finite(frames: torch.Tensor, lens, ids, layer, who: str) -> None:
    """Raise :class:`NonFiniteError` naming the first utterance (and frame) of ``frames``
    (utterances concatenated, ``lens`` frames each) that holds NaN/inf in ``layer``."""
    if frames.numel() == 0 or bool(torch.isfinite(frames).all()):
        return
    bad = ~torch.isfinite(frames).reshape(frames.shape[0], -1).all(dim=1)
    first = int(torch.nonzero(bad)[0])
    start = 0
    for b, n in enumerate(lens):
        if first < start + int(n):
            count = int(bad[start: start + int(n)].sum())
            raise NonFiniteError(
                f"{who}: hidden state {layer} of utterance {ids[b]!r} has NaN/inf in {count} "
                f"of its {int(n)} frames (the first at frame {first - start}); {NONFINITE_HINT}")
        start += int(n)


def _forward_batch(upstream, wavs, wavs_len, layer_ids, hidden_sizes, amp_ctx, store_dtype,
                   ids=None):
    """Run one batch and return the unpadded frames of the selected layers.

    Args:
        wavs: ``(batch_size, seq_len, 1)`` float on the upstream's device.
        wavs_len: ``(batch_size,)`` long on the same device.
        ids: the utterances' ids, named when a frame is NaN/inf (:class:`NonFiniteError`).

    Returns:
        ``(frames, lens)``: ``frames[s]`` is a CPU ``(sum of frames, hidden_size_s)``
        tensor in ``store_dtype`` (utterances in batch order, concatenated);
        ``lens`` is ``(batch_size, len(layer_ids))`` int64 numpy.
    """
    with torch.inference_mode(), amp_ctx():
        out = upstream(wavs, wavs_len)
    name = type(upstream).__name__
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"upstream ({name}).forward must return (all_hs, all_hs_len), got {type(out).__name__}")
    all_hs, all_hs_len = out
    batch = wavs.shape[0]
    if len(all_hs) != len(all_hs_len) or max(layer_ids) >= len(all_hs):
        raise ValueError(
            f"upstream ({name}) returned {len(all_hs)} hidden states and {len(all_hs_len)} "
            f"lengths, but layers {layer_ids} were asked; num_layer must match forward()"
        )
    frames, lens = [], np.zeros((batch, len(layer_ids)), dtype=np.int64)
    # outside inference mode: the stored frames are ordinary tensors, usable with autograd later
    for s, layer in enumerate(layer_ids):
        hs, hs_len = all_hs[layer], torch.as_tensor(all_hs_len[layer]).to("cpu").long()
        if hs.dim() != 3 or hs.shape[0] != batch or hs.shape[2] != hidden_sizes[s]:
            raise ValueError(
                f"upstream ({name}) hidden state {layer} has shape {tuple(hs.shape)}, expected "
                f"(batch_size={batch}, seq_len, hidden_size={hidden_sizes[s]}); check "
                "hidden_sizes (s3viz.check_upstream reports every violation)"
            )
        if hs_len.shape != (batch,) or (hs_len < 0).any() or (hs_len > hs.shape[1]).any():
            raise ValueError(
                f"upstream ({name}) lengths of hidden state {layer} are {hs_len.tolist()}, "
                f"expected ({batch},) ints in [0, {hs.shape[1]}]"
            )
        lens[:, s] = hs_len.numpy()
        # one buffer filled by copy_ (converting to store_dtype on the way): cheaper than
        # torch.cat, whose parallel path stalls on busy CPUs, and an ordinary tensor
        out = torch.empty(int(lens[:, s].sum()), hidden_sizes[s], dtype=store_dtype,
                          device=hs.device)
        start = 0
        for b in range(batch):
            n = int(lens[b, s])
            out[start: start + n].copy_(hs[b, :n])
            start += n
        # checked after the conversion: a float16 store can overflow to inf on the way
        _require_finite(out, lens[:, s], ids if ids is not None else list(range(batch)), layer,
                        f"upstream ({name})")
        frames.append(out.to("cpu"))
    return frames, lens


# --------------------------------------------------------------------------- disk helpers


def _atomic_write(path: Path, data) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, json.dumps(obj).encode())


def _read_json(path: Path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError):
        return None


def _df_to_json(df: pd.DataFrame | None):
    if df is None:
        return None
    return json.loads(df.to_json(orient="split", index=False, default_handler=str))


def _df_from_json(obj) -> pd.DataFrame | None:
    if obj is None:
        return None
    return pd.DataFrame(obj["data"], columns=obj["columns"])


def _chunk_file(c: int, s: int) -> str:
    return f"c{c:05d}_l{s:03d}.pt"


def _chunk_record_file(c: int) -> str:
    return f"c{c:05d}.json"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-")[:40] or "upstream"


@contextlib.contextmanager
def _folder_lock(root: Path):
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RuntimeError(
                f"another process is extracting into {root}; wait for it to finish or use "
                "another cache_dir"
            ) from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _json_digest(obj) -> str:
    """sha256 of a JSON value in canonical form (sorted keys), as it reads back."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _sealed(record: dict, key: str) -> dict:
    """``record`` with ``record[key]`` = the digest of everything else in it."""
    body = {k: v for k, v in record.items() if k != key}
    return dict(body, **{key: _json_digest(body)})


def _seal_ok(record, key: str) -> bool:
    return (isinstance(record, dict) and key in record
            and record[key] == _json_digest({k: v for k, v in record.items() if k != key}))


def _write_chunk(chunk_dir: Path, c: int, utts, frames, lens) -> dict:
    files = []
    for s, t in enumerate(frames):
        buf = io.BytesIO()
        torch.save(t.contiguous(), buf)
        data = buf.getbuffer()
        name = _chunk_file(c, s)
        _atomic_write(chunk_dir / name, data)
        files.append({"name": name, "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data), "shape": list(t.shape)})
    record = _sealed({"chunk": c, "utterances": [int(u) for u in utts],
                      "lengths": lens.tolist(), "files": files}, "record_sha256")
    _write_json(chunk_dir / _chunk_record_file(c), record)
    return record


def _check_record(chunk_dir: Path, c: int, utts, num_layer: int) -> tuple[dict | None, str]:
    """A chunk's record if it and all its files are intact, else (None, why)."""
    path = chunk_dir / _chunk_record_file(c)
    if not path.exists():
        return None, ""
    rec = _read_json(path)
    if (not isinstance(rec, dict) or rec.get("utterances") != list(utts)
            or len(rec.get("files", [])) != num_layer
            or np.shape(rec.get("lengths")) != (len(utts), num_layer)):
        return None, f"record {path.name} is unreadable"
    if not _seal_ok(rec, "record_sha256"):
        # lowering one utterance's length would shift every later utterance of the chunk
        return None, f"record {path.name} was changed after it was written (sha256 mismatch)"
    lens = np.asarray(rec["lengths"], dtype=np.int64)
    for s, f in enumerate(rec["files"]):
        if list(f.get("shape", []))[:1] != [int(lens[:, s].sum())]:
            return None, f"record {path.name}: the lengths do not add up to {f['name']}'s frames"
    for f in rec["files"]:
        fp = chunk_dir / f["name"]
        if not fp.exists():
            return None, f"{f['name']} is missing"
        if fp.stat().st_size != f["bytes"]:
            return None, f"{f['name']} has {fp.stat().st_size} bytes, expected {f['bytes']}"
        if _file_sha256(fp) != f["sha256"]:
            return None, f"{f['name']} fails its sha256"
    return rec, ""


# --------------------------------------------------------------------------- chunk backends


class _MemoryChunks:
    """Chunk tensors held in memory: ``tensors[c][s]`` is ``(frames, hidden_size_s)``."""

    path = None

    def __init__(self, tensors):
        self.tensors = tensors

    def load(self, c: int, s: int) -> torch.Tensor:
        return self.tensors[c][s]


class _DiskChunks:
    """Chunk files of a cache folder, sha256-verified on their first load."""

    def __init__(self, root: Path, records: Sequence[dict], hidden_sizes, store_dtype,
                 max_open: int = 8):
        self.path = Path(root)
        self.files = [rec["files"] for rec in records]
        self.hidden_sizes = list(hidden_sizes)
        self.store_dtype = store_dtype
        self.verified = set()
        self.max_open = max_open
        self._open: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    def _corrupt(self, path: Path, c: int, s: int, why: str) -> CacheCorruptionError:
        return CacheCorruptionError(
            f"cache chunk file {path} (chunk {c}, stored layer {s}) is corrupt: {why}. It is "
            f"not read as data. Re-run s3viz.extract(upstream, corpus, cache_dir="
            f"{str(self.path.parent)!r}, ...) with the same upstream, corpus and settings "
            "to re-extract the bad chunk."
        )

    def load(self, c: int, s: int) -> torch.Tensor:
        key = (c, s)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        info = self.files[c][s]
        name = str(info["name"])
        if not re.fullmatch(r"c\d+_l\d+\.pt", name):
            # a manifest naming "/elsewhere/x.pt" or "../x.pt" would read outside the cache
            raise self._corrupt(self.path / "chunks" / name.replace("/", "_"), c, s,
                                f"the manifest names the chunk file {name!r}, not a file of "
                                "this cache's chunks/ folder")
        path = self.path / "chunks" / name
        if key not in self.verified:
            if not path.exists():
                raise self._corrupt(path, c, s, "the file is missing")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise self._corrupt(path, c, s, f"{size} bytes, expected {info['bytes']} (truncated?)")
            digest = _file_sha256(path)
            if digest != info["sha256"]:
                raise self._corrupt(
                    path, c, s, f"sha256 mismatch (file {digest[:16]}, recorded {info['sha256'][:16]})"
                )
        try:
            t = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, EOFError, ValueError) as e:  # changed after verification
            raise self._corrupt(path, c, s, f"torch.load failed ({e})") from e
        if not isinstance(t, torch.Tensor) or list(t.shape) != list(info["shape"]) or t.dtype != self.store_dtype:
            raise self._corrupt(path, c, s, "unexpected tensor shape or dtype")
        self.verified.add(key)
        self._open[key] = t
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return t


# --------------------------------------------------------------------------- LayerStore


class LayerStore:
    """Every hidden state of every utterance of a corpus, unpadded, per stored layer.

    Build one with :func:`extract`, :meth:`from_tensors` or :meth:`open`.
    Layer arguments (``layer``) index the *stored* layers ``0..num_layer-1``
    (negative counts from the end); :attr:`layer_ids` says which upstream
    hidden state each one is. ``utterances`` arguments are ``None`` (all, in
    corpus order) or a sequence of utterance positions ``0..len(store)-1``
    (or a boolean mask); frames come in that order.

    Frames are returned as new tensors (float32 unless asked otherwise); the
    store itself is never modified through them.
    """

    def __init__(self, *, backend, plan, lengths, hidden_sizes, downsample_rates,
                 receptive_fields, layer_ids, ids, labels, phones, fingerprint, name,
                 store_dtype):
        self._backend = backend
        self._plan = [list(map(int, b)) for b in plan]
        self._lengths = np.asarray(lengths, dtype=np.int64).reshape(len(ids), len(hidden_sizes))
        n = len(ids)
        self._utt_chunk = np.zeros(n, dtype=np.int64)
        self._utt_offset = np.zeros((n, len(hidden_sizes)), dtype=np.int64)
        for c, utts in enumerate(self._plan):
            self._utt_chunk[utts] = c
            lens = self._lengths[utts]
            self._utt_offset[utts] = np.cumsum(lens, axis=0) - lens
        self._hidden_sizes = [int(h) for h in hidden_sizes]
        self._downsample_rates = [int(r) for r in downsample_rates]
        self._receptive_fields = [int(r) for r in receptive_fields]
        self._layer_ids = [int(v) for v in layer_ids]
        self._ids = [str(i) for i in ids]
        self._labels = labels.reset_index(drop=True)
        self._phones = list(phones)
        self._fingerprint = fingerprint
        self._name = name
        self._store_dtype = store_dtype

    # ---- construction

    @classmethod
    def from_tensors(cls, hidden_states, *, downsample_rates, ids=None, labels=None,
                     phones=None, receptive_fields=None) -> LayerStore:
        """An in-memory store from per-utterance tensors, without any upstream.

        Args:
            hidden_states: ``hidden_states[i][l]`` is a ``(num_frames_il, hidden_size_l)``
                tensor (unpadded) for utterance ``i`` and layer ``l``. The store keeps
                references to these tensors (no copy).
            downsample_rates: samples per frame of each layer (``len == num_layer``).
            ids: utterance ids (default: ``labels['id']`` or ``"0", "1", ...``).
            labels: DataFrame with one row per utterance and an ``id`` column.
            phones: list of alignment tables (``phone, word, start, end`` in samples)
                or None per utterance; None for none at all.
            receptive_fields: samples of input window per frame of each layer
                (default: the downsample rates).
        """
        try:
            hs = [list(u) for u in hidden_states]
        except TypeError as e:
            raise TypeError(
                "hidden_states must be a list (utterances) of lists (layers) of "
                "(num_frames, hidden_size) tensors"
            ) from e
        if not hs:
            raise ValueError("hidden_states is empty: a store needs at least one utterance")
        rates = [int(r) for r in downsample_rates]
        num_layer = len(rates)
        if num_layer == 0 or any(r <= 0 for r in rates):
            raise ValueError(f"downsample_rates must be positive ints, one per layer, got {rates}")
        sizes = None
        tensors, lengths = [], np.zeros((len(hs), num_layer), dtype=np.int64)
        for i, layers in enumerate(hs):
            if len(layers) != num_layer:
                raise ValueError(
                    f"hidden_states[{i}] has {len(layers)} layers but downsample_rates has "
                    f"{num_layer}; give one rate per layer"
                )
            row = []
            for l, t in enumerate(layers):
                t = torch.as_tensor(t)
                if t.dim() != 2 or not t.is_floating_point():
                    raise ValueError(
                        f"hidden_states[{i}][{l}] must be a float (num_frames, hidden_size) "
                        f"tensor, got {t.dtype} shape {tuple(t.shape)}"
                    )
                if t.numel() and not bool(torch.isfinite(t).all()):
                    frame = int(torch.nonzero(~torch.isfinite(t).all(dim=1))[0])
                    who = f"utterance {i}" + (f" ({ids[i]!r})" if ids is not None
                                              and i < len(ids) else "")
                    raise NonFiniteError(
                        f"hidden_states[{i}][{l}] ({who}, layer {l}) has NaN/inf (the first "
                        f"at frame {frame}); {NONFINITE_HINT}")
                row.append(t.detach().cpu())
                lengths[i, l] = t.shape[0]
            hsz = [t.shape[1] for t in row]
            if sizes is None:
                sizes = hsz
            elif hsz != sizes:
                raise ValueError(
                    f"hidden_states[{i}] has hidden sizes {hsz}, utterance 0 has {sizes}; "
                    "each layer needs one hidden size across utterances"
                )
            tensors.append(row)
        n = len(hs)
        if labels is not None:
            if not isinstance(labels, pd.DataFrame) or "id" not in labels.columns or len(labels) != n:
                raise ValueError(
                    f"labels must be a DataFrame with an 'id' column and {n} rows (one per "
                    "utterance)"
                )
            labels = labels.reset_index(drop=True)
            if ids is None:
                ids = [str(v) for v in labels["id"]]
            elif [str(v) for v in ids] != [str(v) for v in labels["id"]]:
                raise ValueError("ids and labels['id'] differ; give one of them or make them agree")
        if ids is None:
            ids = [str(i) for i in range(n)]
        ids = [str(v) for v in ids]
        if len(ids) != n or len(set(ids)) != n:
            raise ValueError(f"ids must be {n} unique strings, got {len(ids)} ({len(set(ids))} unique)")
        if labels is None:
            labels = pd.DataFrame({"id": ids})
        if phones is None:
            phones = [None] * n
        phones = list(phones)
        if len(phones) != n:
            raise ValueError(f"phones must hold {n} tables (or None), got {len(phones)}")
        fields = rates if receptive_fields is None else [int(r) for r in receptive_fields]
        if len(fields) != num_layer:
            raise ValueError(f"receptive_fields must have {num_layer} entries, got {len(fields)}")
        h = hashlib.sha256(b"from_tensors")
        store_dtype = tensors[0][0].dtype
        for row in tensors:
            for t in row:
                # float64 frames hashed as they are: two stores that differ below float32's
                # precision are two stores
                h.update(_tensor_bytes(t if t.dtype == torch.float64 else t.float()))
                store_dtype = torch.promote_types(store_dtype, t.dtype)
        return cls(
            backend=_MemoryChunks(tensors), plan=[[i] for i in range(n)], lengths=lengths,
            hidden_sizes=sizes, downsample_rates=rates, receptive_fields=fields,
            layer_ids=list(range(num_layer)), ids=ids, labels=labels, phones=phones,
            fingerprint=h.hexdigest(), name="from_tensors", store_dtype=store_dtype,
        )

    @classmethod
    def open(cls, path: str | os.PathLike) -> LayerStore:
        """Reopen a finished on-disk extraction without the upstream or the corpus.

        Args:
            path: a cache folder (``cache_dir/<name>-<fingerprint>``) or a
                ``cache_dir`` holding exactly one finished extraction.
        """
        root = Path(path)
        if not (root / "manifest.json").exists() and not (root / "plan.json").exists():
            found = sorted(p.parent for p in root.glob("*/manifest.json"))
            if len(found) == 1:
                root = found[0]
            elif found:
                raise ValueError(
                    f"{root} holds {len(found)} extractions; open one of them: "
                    + ", ".join(p.name for p in found)
                )
            else:
                raise FileNotFoundError(f"no s3viz extraction (manifest.json) under {root}")
        manifest = _read_json(root / "manifest.json")
        if manifest is None:
            raise ValueError(
                f"the extraction in {root} is not finished (no readable manifest.json); re-run "
                "s3viz.extract with the same upstream, corpus and cache_dir to finish it"
            )
        missing = ([] if isinstance(manifest, dict) else ["(it is not a JSON object)"]) or [
            k for k in _MANIFEST_KEYS if k not in manifest]
        if missing:
            raise ValueError(f"{root / 'manifest.json'} is not an s3viz extraction manifest "
                             f"(missing {missing}); open the folder s3viz.extract wrote")
        if manifest.get("format") != _FORMAT_VERSION:
            raise ValueError(f"{root} has cache format {manifest.get('format')}, this s3viz reads "
                             f"{_FORMAT_VERSION}; re-run s3viz.extract with the same upstream and "
                             "corpus to write a cache of this format")
        repair = (f"re-run s3viz.extract(upstream, corpus, cache_dir={str(root.parent)!r}) "
                  "with the same upstream and corpus to repair it")
        if not _seal_ok(manifest, "manifest_sha256"):
            raise CacheCorruptionError(f"{root / 'manifest.json'} was changed after extract wrote "
                                       f"it (its sha256 does not match); {repair}")
        raw_labels, phones_json = _read_json(root / "labels.json"), _read_json(root / "phones.json")
        for fname, content, key in (("labels.json", raw_labels, "labels_sha256"),
                                    ("phones.json", phones_json, "phones_sha256")):
            if content is None:
                raise CacheCorruptionError(f"{root / fname} is missing or unreadable; {repair}")
            if _json_digest(content) != manifest[key]:
                raise CacheCorruptionError(f"{root / fname} was changed after extract wrote it "
                                           f"(its sha256 does not match the manifest's); {repair}")
        labels = _df_from_json(raw_labels)
        n = len(manifest["ids"])
        if labels is None or phones_json is None:
            raise ValueError(f"labels.json or phones.json of {root} is missing or unreadable; re-run extract")
        if len(phones_json) != n or len(labels) != n:
            raise ValueError(f"labels.json or phones.json of {root} do not match its {n} utterances")
        # chunk files are checked (size, sha256) on their first load, one layer at a time
        return cls._from_manifest(root, manifest, labels, [_df_from_json(p) for p in phones_json])

    @classmethod
    def _from_manifest(cls, root, manifest, labels, phones) -> LayerStore:
        n, num_layer = len(manifest["ids"]), len(manifest["layer_ids"])
        lengths = np.zeros((n, num_layer), dtype=np.int64)
        for rec in manifest["chunks"]:
            lengths[rec["utterances"]] = np.asarray(rec["lengths"], dtype=np.int64)
        store_dtype = _DTYPE_NAMES[manifest["store_dtype"]]
        return cls(
            backend=_DiskChunks(root, manifest["chunks"], manifest["hidden_sizes"], store_dtype),
            plan=manifest["plan"], lengths=lengths, hidden_sizes=manifest["hidden_sizes"],
            downsample_rates=manifest["downsample_rates"],
            receptive_fields=manifest["receptive_fields"], layer_ids=manifest["layer_ids"],
            ids=manifest["ids"], labels=labels, phones=phones,
            fingerprint=manifest["fingerprint"], name=manifest["name"], store_dtype=store_dtype,
        )

    # ---- sizes

    @property
    def num_layer(self) -> int:
        """Number of stored layers."""
        return len(self._hidden_sizes)

    @property
    def num_layers(self) -> int:
        """Alias of :attr:`num_layer`."""
        return self.num_layer

    @property
    def hidden_sizes(self) -> list[int]:
        return list(self._hidden_sizes)

    @property
    def downsample_rates(self) -> list[int]:
        return list(self._downsample_rates)

    @property
    def receptive_fields(self) -> list[int]:
        """Samples of input window per frame of each stored layer (the rate when unknown)."""
        return list(self._receptive_fields)

    @property
    def layer_ids(self) -> list[int]:
        """The upstream hidden-state index of each stored layer."""
        return list(self._layer_ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def labels(self) -> pd.DataFrame:
        """One row per utterance (0..N-1): ``id, speaker, text, num_samples`` + extra labels."""
        return self._labels.copy()

    @property
    def phones(self) -> list[pd.DataFrame | None]:
        return list(self._phones)

    @property
    def fingerprint(self) -> str:
        """sha256 of the upstream's weights, the corpus and the content-changing settings."""
        return self._fingerprint

    @property
    def name(self) -> str:
        """Name of the upstream the frames came from."""
        return self._name

    @property
    def store_dtype(self) -> torch.dtype:
        return self._store_dtype

    @property
    def path(self) -> Path | None:
        """The cache folder of an on-disk store, None in memory."""
        return self._backend.path

    @property
    def nbytes(self) -> int:
        """Bytes of frame data held (in memory or on disk)."""
        itemsize = torch.tensor([], dtype=self._store_dtype).element_size()
        return int((self._lengths.sum(0) * np.asarray(self._hidden_sizes)).sum() * itemsize)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        def compact(v):
            return str(v[0]) if len(set(v)) == 1 else str(v)

        ids = self._layer_ids
        if ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 1:
            which = f"upstream layers {ids[0]}-{ids[-1]}"
        else:
            which = f"upstream layers {ids}"
        where = "in memory" if self.path is None else f"on disk at {self.path}"
        return (
            f"LayerStore({self._name}: {len(self)} utterances, {self.num_layer} layers "
            f"({which}), hidden {compact(self._hidden_sizes)}, rate "
            f"{compact(self._downsample_rates)}, {_STORE_DTYPES.get(self._store_dtype, self._store_dtype)}, "
            f"{_fmt_bytes(self.nbytes)} {where})"
        )

    # ---- access

    def _layer_index(self, layer) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an int index of a stored layer, got {layer!r}")
        n = self.num_layer
        if not -n <= layer < n:
            raise IndexError(
                f"layer {int(layer)} out of range: this store has {n} layers (0..{n - 1}; "
                f"upstream layers {self._layer_ids})"
            )
        return int(layer) % n

    def lengths(self, layer) -> np.ndarray:
        """``(N,)`` int64 frames per utterance of stored layer ``layer``."""
        return self._lengths[:, self._layer_index(layer)].copy()

    def utterance(self, i) -> list[torch.Tensor]:
        """The hidden states of utterance ``i``: per stored layer a ``(T_l, H_l)`` float32 tensor."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"i must be an int utterance position, got {i!r}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"utterance {int(i)} out of range for a store of {n} utterances")
        i = int(i) % n
        c = int(self._utt_chunk[i])
        out = []
        for s in range(self.num_layer):
            off, length = self._utt_offset[i, s], self._lengths[i, s]
            out.append(self._backend.load(c, s)[off: off + length].to(torch.float32, copy=True))
        return out

    def _gather(self, s: int, pos: np.ndarray, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        lens = self._lengths[pos, s]
        starts = np.cumsum(lens) - lens
        out = torch.empty(int(lens.sum()), self._hidden_sizes[s], dtype=dtype)
        chunks = self._utt_chunk[pos]
        for j in np.argsort(chunks, kind="stable"):  # each chunk loaded once, in order
            length = int(lens[j])
            if length:
                off = int(self._utt_offset[pos[j], s])
                src = self._backend.load(int(chunks[j]), s)
                out[starts[j]: starts[j] + length] = src[off: off + length]
        utt_index = torch.repeat_interleave(torch.from_numpy(pos), torch.from_numpy(lens))
        return out, utt_index

    def layer(self, layer, utterances=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """All frames of one stored layer.

        Returns:
            ``(frames, utt_index)``: ``frames`` is ``(sum_T, hidden_size)`` in ``dtype``;
            ``utt_index`` is ``(sum_T,)`` long, the utterance position of each frame
            (so ``store.labels.iloc[utt_index]`` labels frames).
        """
        s = self._layer_index(layer)
        return self._gather(s, _check_utterances(utterances, len(self)), dtype)

    def iter_layer(self, layer, utterances=None, max_frames: int = 65536,
                   dtype=torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`layer` in pieces of whole utterances of at most ``max_frames`` frames each.

        An utterance longer than ``max_frames`` comes alone. Concatenating the
        pieces gives exactly :meth:`layer`'s result.

        Yields:
            ``(frames, utt_index)``: ``(T, hidden_size)`` and ``(T,)`` long.
        """
        s = self._layer_index(layer)
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames <= 0:
            raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
        pos = _check_utterances(utterances, len(self))
        for a, b in _groups(self._lengths[pos, s], int(max_frames)):
            yield self._gather(s, pos[a:b], dtype)

    def iter_chunks(self, dtype=torch.float32) -> Iterator[tuple[np.ndarray, list, np.ndarray]]:
        """Every stored chunk (one extraction batch) once, in storage order.

        The cheapest full pass over a store: each chunk file is read once for all
        layers, nothing is gathered or copied beyond the ``dtype`` conversion.

        Yields:
            ``(positions, frames, lengths)``: the chunk's utterance positions
            ``(B,)``; per stored layer a ``(sum of frames, hidden_size)`` tensor
            (utterances in ``positions`` order, concatenated); ``(B, num_layer)``
            frames per utterance and layer.
        """
        for c, utts in enumerate(self._plan):
            pos = np.asarray(utts, dtype=np.int64)
            yield pos, [self._backend.load(c, s).to(dtype) for s in range(self.num_layer)], \
                self._lengths[pos]

    def frame_labels(self, layer, column: str = "phone", utterances=None) -> np.ndarray:
        """Per-frame labels from the alignment tables, aligned with :meth:`layer`.

        Each frame gets the ``column`` value of the segment covering its centre
        (:func:`s3viz.align.frame_labels` with the layer's downsample rate and
        receptive field); ``""`` where no segment covers it or the utterance
        has no alignment.

        Returns:
            ``(sum_T,)`` object array.
        """
        s = self._layer_index(layer)
        pos = _check_utterances(utterances, len(self))
        if len(pos) and all(self._phones[i] is None for i in pos):
            raise ValueError(
                "no alignment tables (phones) for these utterances; frame labels need a corpus "
                "with phone alignments (e.g. s3viz.data.synthetic_corpus)"
            )
        rate, rf = self._downsample_rates[s], self._receptive_fields[s]
        parts = []
        for i in pos:
            n = int(self._lengths[i, s])
            table = self._phones[i]
            if table is None:
                parts.append(np.full(n, "", dtype=object))
            else:
                parts.append(_align_frame_labels(table, n, rate, column=column,
                                                 receptive_field_samples=rf))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

    def pooled(self, layer, utterances=None, dtype=torch.float32) -> torch.Tensor:
        """Mean over frames per utterance: ``(N', hidden_size)`` in ``dtype`` (NaN for 0 frames)."""
        s = self._layer_index(layer)
        pos = _check_utterances(utterances, len(self))
        lens = self._lengths[pos, s]
        out = torch.full((len(pos), self._hidden_sizes[s]), float("nan"), dtype=dtype)
        for a, b in _groups(lens, 65536):
            frames, _ = self._gather(s, pos[a:b], dtype)
            for j, part in zip(range(a, b), torch.split(frames, lens[a:b].tolist()), strict=True):
                if part.shape[0]:  # in float64: a constant feature's mean is then exact
                    out[j] = part.double().mean(0).to(dtype)
        if (lens == 0).any():
            warnings.warn(f"{int((lens == 0).sum())} utterance(s) have no frames in layer {s}; "
                          "their pooled rows are NaN", stacklevel=2)
        return out


def _groups(lens: np.ndarray, max_frames: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[a, b)`` ranges of whole utterances with at most ``max_frames`` frames
    (an utterance longer than that forms its own range)."""
    start, total = 0, 0
    for j in range(len(lens)):
        if j > start and total + int(lens[j]) > max_frames:
            yield start, j
            start, total = j, 0
        total += int(lens[j])
    if start < len(lens):
        yield start, len(lens)


# --------------------------------------------------------------------------- extract


def extract(upstream, corpus, *, layers=None, batch_size: int | None = None,
            max_batch_seconds: float | None = DEFAULT_MAX_BATCH_SECONDS, device=None,
            dtype=None, store_dtype: torch.dtype = torch.float32, cache_dir=None,
            progress: bool = True) -> LayerStore:
    """Run ``upstream`` over ``corpus`` and keep every hidden state, unpadded.

    Args:
        upstream: an s3prl-style upstream module (:class:`s3viz.AbsUpstream`):
            ``forward(wavs (batch_size, seq_len, 1), wavs_len (batch_size,))``
            returns ``(all_hs, all_hs_len)``.
        corpus: an :class:`s3viz.data.Corpus` (or list of ``Utterance``).
        layers: upstream hidden-state indices to keep (None: all; negative from the end).
        batch_size: at most this many utterances per batch (None: no count limit).
        max_batch_seconds: at most this much padded audio per batch
            (``utterances * longest``); utterances are sorted by length so
            batches hold similar lengths (little padding).
        device: where to run. None: the device of the upstream's parameters
            (the model is not moved). Given: the upstream is moved there for the
            extraction and moved back afterwards.
        dtype: compute dtype; ``torch.float16``/``torch.bfloat16`` run under
            ``torch.autocast`` on the device. None or float32: full precision.
        store_dtype: dtype of the stored frames (float32, float16 or bfloat16).
        cache_dir: None keeps frames in memory. A folder keeps them on disk under
            ``cache_dir/<name>-<fingerprint>``; a finished extraction is reused, an
            interrupted one resumed, corrupt chunks re-extracted. The folder name
            changes whenever the weights, the code or plain attributes of the
            upstream's modules (a module may list attributes that do not change
            its output, such as call counters, in ``s3viz_fingerprint_ignore``),
            the corpus (an in-memory utterance's audio, a lazy file's size and
            modification time, texts, labels, alignments), ``layers``, ``dtype`` or
            ``store_dtype`` change. Memory stays nearly constant in corpus size.
        progress: show a tqdm bar (utterances/s) and print the expected size
            (to stdout, not shown as a warning in a notebook) before work starts.

    Returns:
        A :class:`LayerStore`. The upstream's train/eval flags are restored.
    """
    num_layer, all_sizes, all_rates, all_fields, name = _check_upstream(upstream)
    corpus = _as_corpus(corpus)
    layer_ids = _check_layers(layers, num_layer)
    _check_batching(batch_size, max_batch_seconds)
    store_dtype = _check_store_dtype(store_dtype)
    amp_dtype = _check_dtype(dtype)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be None or a folder path, got {type(cache_dir).__name__}")
    if cache_dir is not None and not str(os.fspath(cache_dir)).strip():
        raise ValueError("cache_dir is an empty path (it would write into the current folder); "
                         "pass None to keep the frames in memory, or a folder")
    dev, move = _resolve_device(upstream, device)

    sizes = [all_sizes[l] for l in layer_ids]
    rates = [all_rates[l] for l in layer_ids]
    fields = [all_fields[l] for l in layer_ids]
    num_samples = np.array([u.num_samples for u in corpus], dtype=np.int64)
    plan = _bucket_plan(num_samples, batch_size, max_batch_seconds)
    fp = _extraction_fingerprint(_upstream_fingerprint(upstream), corpus.fingerprint(),
                                 layer_ids, sizes, rates, store_dtype, amp_dtype)
    meta = {
        "format": _FORMAT_VERSION, "fingerprint": fp, "name": name,
        "upstream_class": f"{type(upstream).__module__}.{type(upstream).__qualname__}",
        "corpus_fingerprint": corpus.fingerprint(), "layer_ids": layer_ids,
        "hidden_sizes": sizes, "downsample_rates": rates, "receptive_fields": fields,
        "store_dtype": _STORE_DTYPES[store_dtype],
        "dtype": "float32" if amp_dtype is None else _STORE_DTYPES[amp_dtype],
        "ids": corpus.ids, "num_samples": num_samples.tolist(), "plan": plan,
    }
    common = dict(hidden_sizes=sizes, downsample_rates=rates, receptive_fields=fields,
                  layer_ids=layer_ids, ids=corpus.ids, labels=corpus.labels,
                  phones=[u.phones for u in corpus], fingerprint=fp, name=name,
                  store_dtype=store_dtype)
    estimate = _estimate_bytes(num_samples, rates, sizes, store_dtype)
    audio_bytes = int(num_samples.sum()) * 2
    head = (
        f"s3viz.extract: {name}, {len(corpus)} utterances ({num_samples.sum() / SAMPLE_RATE / 60:.1f} "
        f"min, {_fmt_bytes(audio_bytes)} as 16-bit audio), {len(layer_ids)} layers -> about "
        f"{_fmt_bytes(estimate)} of {_STORE_DTYPES[store_dtype]} frames "
        f"({estimate / audio_bytes:.0f}x the audio)"
    )
    runner = _Runner(upstream, corpus, layer_ids, sizes, dev, move, amp_dtype, store_dtype,
                     progress, name)

    if cache_dir is None:
        if progress:
            print(f"{head} in memory")  # stdout: a notebook shows stderr as a warning box
        tensors: list[list[torch.Tensor] | None] = [None] * len(plan)
        lengths = np.zeros((len(corpus), len(layer_ids)), dtype=np.int64)

        def keep(c, utts, frames, lens):
            tensors[c] = frames
            lengths[utts] = lens

        runner.run(list(enumerate(plan)), keep, done=0)
        return LayerStore(backend=_MemoryChunks(tensors), plan=plan, lengths=lengths, **common)

    root = Path(cache_dir) / f"{_slug(name)}-{fp[:16]}"
    chunk_dir = root / "chunks"
    lock = contextlib.ExitStack()
    try:
        chunk_dir.mkdir(parents=True, exist_ok=True)
        lock.enter_context(_folder_lock(root))
    except OSError as err:  # read-only storage: fine when there is nothing to write
        done = _read_json(root / "manifest.json")
        if (isinstance(done, dict) and done.get("format") == _FORMAT_VERSION
                and done.get("fingerprint") == fp and done.get("ids") == list(corpus.ids)):
            return LayerStore.open(root)
        raise OSError(f"cannot write the cache folder {root} ({err}), and it holds no finished "
                      "extraction of this upstream and corpus; give a writable cache_dir") from err
    with lock:
        for stale in list(root.glob("*.tmp-*")) + list(chunk_dir.glob("*.tmp-*")):
            stale.unlink()
        stored = _read_json(root / "plan.json")
        stored_plan = stored.get("plan") if isinstance(stored, dict) else None
        labels_json = _df_to_json(corpus.labels)
        phones_json = [_df_to_json(u.phones) for u in corpus]
        if (isinstance(stored, dict) and stored.get("fingerprint") == fp
                and stored.get("ids") == corpus.ids and stored_plan is not None
                and sorted(u for b in stored_plan for u in b) == list(range(len(corpus)))):
            plan = meta["plan"] = [list(b) for b in stored_plan]  # resume with the first plan
        else:
            for old in chunk_dir.iterdir():  # orphans of an unreadable plan
                old.unlink()
            (root / "manifest.json").unlink(missing_ok=True)
            _write_json(root / "plan.json", meta)
        # the corpus's own labels and alignments: rewritten when missing or edited (repair)
        for fname, content in (("labels.json", labels_json), ("phones.json", phones_json)):
            on_disk = _read_json(root / fname)
            if on_disk is None or _json_digest(on_disk) != _json_digest(content):
                _write_json(root / fname, content)
        records: list[dict | None] = [None] * len(plan)
        problems = []
        for c, utts in enumerate(plan):
            records[c], why = _check_record(chunk_dir, c, utts, len(layer_ids))
            if why:
                problems.append(f"chunk {c}: {why}")
        if problems:
            warnings.warn(
                f"{len(problems)} corrupt chunk(s) in {root} will be re-extracted: "
                + "; ".join(problems[:5]), stacklevel=2,
            )
        todo = [(c, utts) for c, utts in enumerate(plan) if records[c] is None]
        done_utts = sum(len(utts) for c, utts in enumerate(plan) if records[c] is not None)
        if progress:
            state = (f"{len(plan) - len(todo)}/{len(plan)} chunks already there"
                     if len(todo) < len(plan)
                     else f"{len(plan)} chunk{'s' if len(plan) > 1 else ''} to write")
            print(f"{head} on disk at {root} ({state})")

        def store_chunk(c, utts, frames, lens):
            records[c] = _write_chunk(chunk_dir, c, utts, frames, lens)

        # one writer thread overlaps saving, hashing and writing chunk c with computing
        # chunk c + 1; at most two chunks wait, so memory stays bounded
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3viz-write") as writer:
            pending = deque()

            def write(c, utts, frames, lens):
                pending.append(writer.submit(store_chunk, c, utts, frames, lens))
                while len(pending) > 2:
                    pending.popleft().result()  # re-raises a failed write here

            if todo:
                runner.run(todo, write, done=done_utts)
            while pending:
                pending.popleft().result()
        manifest = _sealed(dict(meta, chunks=records, complete=True,
                                labels_sha256=_json_digest(labels_json),
                                phones_sha256=_json_digest(phones_json)), "manifest_sha256")
        if todo or _read_json(root / "manifest.json") != manifest:
            _write_json(root / "manifest.json", manifest)
    lengths = np.zeros((len(corpus), len(layer_ids)), dtype=np.int64)
    for rec in records:
        lengths[rec["utterances"]] = np.asarray(rec["lengths"], dtype=np.int64)
    return LayerStore(backend=_DiskChunks(root, records, sizes, store_dtype), plan=plan,
                      lengths=lengths, **common)


class _Runner:
    """Runs batches of a plan through the upstream (eval mode, inference mode, autocast)."""

    def __init__(self, upstream, corpus, layer_ids, sizes, dev, move, amp_dtype, store_dtype,
                 progress, name):
        self.upstream, self.corpus, self.layer_ids, self.sizes = upstream, corpus, layer_ids, sizes
        self.dev, self.move, self.amp_dtype, self.store_dtype = dev, move, amp_dtype, store_dtype
        self.progress, self.name = progress, name

    def _amp(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dev.type, dtype=self.amp_dtype)

    def run(self, todo, sink, done: int) -> None:
        from tqdm.auto import tqdm

        up = self.upstream
        modes = [(m, m.training) for m in up.modules()]
        original = _upstream_device(up) if self.move else None
        try:
            if self.move:
                up.to(self.dev)
            up.eval()
            with tqdm(total=len(self.corpus), initial=done, unit="utt", disable=not self.progress,
                      desc=f"extract {self.name}", dynamic_ncols=True) as bar:
                for c, utts in todo:
                    wavs, wavs_len = _batch_wavs(self.corpus, utts)
                    wavs = wavs.to(self.dev, non_blocking=True)
                    wavs_len = wavs_len.to(self.dev)
                    frames, lens = _forward_batch(up, wavs, wavs_len, self.layer_ids, self.sizes,
                                                  self._amp, self.store_dtype,
                                                  ids=[self.corpus[i].id for i in utts])
                    sink(c, utts, frames, lens)
                    bar.update(len(utts))
        finally:
            if self.move:
                up.to(original)
            for m, flag in modes:
                m.training = flag


class _CallableModule(types.ModuleType):
    """Keeps ``s3viz.extract(...)`` callable after ``import s3viz.extract`` rebinds it to this module."""

    def __call__(self, *args, **kwargs):
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
