"""The on-disk cache of a LayerStore: fingerprints, chunk records and their seals, locks
(the layout: ``docs/cache.md``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._fs import OwnedFolder, UnsafePathError

# older formats are never reused: 4 keeps tracks.json (sealed in the manifest); 3 keeps
# behaviour.pt (checked before reuse, see s3viz.extraction.behaviour_probe); 2 checks
# frames finite before storing them
FORMAT_VERSION = 4
STORE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
HASH_BLOCK = 1 << 22
HASH_PIECE = 1 << 24


class CacheCorruptionError(RuntimeError):
    """A file of an on-disk :class:`LayerStore` is missing, truncated or fails its sha256
    (chunk tensors, and the manifest, labels, alignments and chunk records it lists)."""


def tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def tensor_digest(t: torch.Tensor) -> bytes:  # sha256 of each HASH_PIECE bytes, concatenated
    data = tensor_bytes(t)
    return b"".join(hashlib.sha256(data[i: i + HASH_PIECE]).digest()
                    for i in range(0, max(len(data), 1), HASH_PIECE))


def code_bytes(code) -> bytes:
    """Bytecode, names and constants of a code object and the ones nested in it; no file
    names, line numbers or addresses (moving code keeps its caches)."""
    out = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            out.append(code_bytes(const))
        else:  # (docstrings too: editing one re-extracts, the safe direction)
            out.append(re.sub(r"0x[0-9a-fA-F]+", "0x", repr(const)).encode())
    return b"|".join(out)


def code_digest(cls: type) -> str:
    """sha256 of the bytecode of the methods of ``cls`` and its bases outside torch (a changed
    ``forward`` changes the fingerprint); not memoised, so a method patched later counts."""
    h = hashlib.sha256()
    for k in cls.__mro__:
        if k.__module__.split(".")[0] in ("torch", "builtins"):
            continue
        for name, member in sorted(vars(k).items()):
            func = getattr(member, "__func__", member)
            func = getattr(func, "fget", func)  # properties
            code = getattr(func, "__code__", None)
            if code is not None:
                h.update(name.encode() + b"=" + code_bytes(code))
    return h.hexdigest()[:16]


PLAIN = (bool, int, float, str, type(None))


def plain_attributes(module) -> str:
    """The module's own plain-valued attributes (numbers, strings, short tuples and lists of
    them), sorted; not torch's bookkeeping, nor the names in ``s3viz_fingerprint_ignore``."""
    out = []
    ignore = set(getattr(module, "s3viz_fingerprint_ignore", ()))
    for key, value in sorted(vars(module).items()):
        if key.startswith("_") or key == "training" or key in ignore:
            continue
        if isinstance(value, PLAIN) or (isinstance(value, (tuple, list)) and len(value) < 256
                                         and all(isinstance(v, PLAIN) for v in value)):
            out.append(f"{key}={value!r}")
    return ";".join(out)


def upstream_fingerprint(upstream: nn.Module) -> str:
    """sha256 over the class name, name, architecture (repr), the code and plain attributes
    of every module in the tree, and every state_dict tensor (hashed in pieces by a few
    threads, hashlib releasing the GIL; then digests, names, dtypes and shapes in order)."""
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
        h.update(f"{path}|{code_digest(type(module))}|{plain_attributes(module)}".encode())
    state = upstream.state_dict()
    items = list(state.items())
    if isinstance(upstream, nn.Module):
        # buffers kept out of the state dict (persistent=False: position tables, rotary
        # frequencies) change the frames as much as weights do
        items += [(f"{k} (buffer)", b) for k, b in upstream.named_buffers() if k not in state]
    tensors = [v for _, v in items if isinstance(v, torch.Tensor)]
    workers = max(1, min(8, os.cpu_count() or 1, len(tensors)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3viz-hash") as pool:
        digests = iter(list(pool.map(tensor_digest, tensors)))
    for key, value in items:
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}{tuple(value.shape)}".encode())
            h.update(next(digests))
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


# Every read, write and delete below goes through an OwnedFolder (s3viz._fs): nothing in
# a cache folder is followed through a symbolic link.
def write_json(folder: OwnedFolder, rel: str, obj) -> None:
    folder.write_bytes(rel, json.dumps(obj).encode())


def read_json(folder: OwnedFolder, rel: str):
    """The JSON value of ``rel``, or None when it is missing or unreadable (a link there
    raises :class:`~s3viz._fs.UnsafePathError`)."""
    try:
        return json.loads(folder.read_bytes(rel).decode())
    except UnsafePathError:
        raise
    except (OSError, ValueError):
        return None


def _plain(v):
    """A table cell as a JSON value that reads back equal (floats keep all digits, where
    pandas' ``to_json`` rounds to 10); missing -> null."""
    if isinstance(v, (np.datetime64, np.timedelta64)):
        return str(v)  # .item() would give integer nanoseconds: a date read back as a number
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def df_to_json(df: pd.DataFrame | None):
    return None if df is None else {
        "columns": [c if isinstance(c, str) else str(c) for c in df.columns],
        "data": [[_plain(v) for v in row] for row in df.itertuples(index=False, name=None)]}


def df_from_json(obj) -> pd.DataFrame | None:
    return None if obj is None else pd.DataFrame(obj["data"], columns=obj["columns"])


def chunk_file(c: int, s: int) -> str:
    return f"c{c:05d}_l{s:03d}.pt"


def chunk_record_file(c: int) -> str:
    return f"c{c:05d}.json"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-")[:40] or "upstream"


def folder_lock(folder: OwnedFolder):
    return folder.lock(".lock", busy=f"another process is extracting into {folder.folder}; "
                                     "wait for it to finish or use another cache_dir")


def json_digest(obj) -> str:
    """sha256 of a JSON value in canonical form (sorted keys), as it reads back."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def sealed(record: dict, key: str) -> dict:
    """``record`` with ``record[key]`` = the digest of everything else in it."""
    body = {k: v for k, v in record.items() if k != key}
    return dict(body, **{key: json_digest(body)})


def seal_ok(record, key: str) -> bool:
    return isinstance(record, dict) and key in record and sealed(record, key) == record


def write_chunk(chunk_dir: OwnedFolder, c: int, utts, frames, lens) -> dict:
    files = []
    for s, t in enumerate(frames):
        buf = io.BytesIO()
        torch.save(t.contiguous(), buf)
        data = buf.getbuffer()
        name = chunk_file(c, s)
        chunk_dir.write_bytes(name, data)
        files.append({"name": name, "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data), "shape": list(t.shape)})
    record = sealed({"chunk": c, "utterances": [int(u) for u in utts],
                      "lengths": lens.tolist(), "files": files}, "record_sha256")
    write_json(chunk_dir, chunk_record_file(c), record)
    return record


def chunk_problem(folder: OwnedFolder, rel: str, info: dict) -> str:
    """Why chunk file ``rel`` does not match its record ``info`` ("" when it does); a link
    there is refused, never read through."""
    path = folder.regular_file(rel)
    if path is None:
        return "the file is missing"
    if path.stat().st_size != info["bytes"]:
        return f"{path.stat().st_size} bytes, expected {info['bytes']} (truncated?)"
    digest = file_sha256(path)  # streamed: a chunk file is never read whole
    if digest != info["sha256"]:
        return f"sha256 mismatch (file {digest[:16]}, recorded {info['sha256'][:16]})"
    return ""


def check_record(chunk_dir: OwnedFolder, c: int, utts, num_layer: int) -> tuple[dict | None, str]:
    """A chunk's record if it and all its files are intact, else (None, why)."""
    record = chunk_record_file(c)
    if not chunk_dir.exists(record):
        return None, ""
    rec = read_json(chunk_dir, record)
    if (not isinstance(rec, dict) or rec.get("utterances") != list(utts)
            or len(rec.get("files", [])) != num_layer
            or np.shape(rec.get("lengths")) != (len(utts), num_layer)):
        return None, f"record {record} is unreadable"
    if not seal_ok(rec, "record_sha256"):
        # lowering one utterance's length would shift every later utterance of the chunk
        return None, f"record {record} was changed after it was written (sha256 mismatch)"
    lens = np.asarray(rec["lengths"], dtype=np.int64)
    for s, f in enumerate(rec["files"]):
        if list(f.get("shape", []))[:1] != [int(lens[:, s].sum())]:
            return None, f"record {record}: the lengths do not add up to {f['name']}'s frames"
    for s, f in enumerate(rec["files"]):
        name = str(f.get("name", ""))
        if name != chunk_file(c, s):
            return None, f"record {record} names a file {name!r} that is not its own"
        why = chunk_problem(chunk_dir, name, f)
        if why:
            return None, f"{name}: {why}"
    return rec, ""
