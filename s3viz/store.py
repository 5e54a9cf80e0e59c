""":class:`LayerStore`, which every analysis reads: the unpadded frames of every utterance
and stored layer, in memory or read lazily from a cache folder (chunk files verified by
sha256 on first load), with the corpus's labels and phone alignments; never NaN or inf
(:class:`NonFiniteError`).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ._cache import (
    DTYPE_NAMES,
    FORMAT_VERSION,
    STORE_DTYPES,
    CacheCorruptionError,
    chunk_problem,
    df_from_json,
    json_digest,
    read_json,
    seal_ok,
    tensor_bytes,
)
from ._fs import OwnedFolder, UnsafePathError
from .align import frame_labels as _align_frame_labels
from .align import checked_frame_values as _align_frame_values
from .data._corpus import pack_table, unpack_table
from .data.tracks import check_track_table
from .upstreams._hub import AS_GIVEN, weights_of

__all__ = ["LayerStore", "NonFiniteError", "CacheCorruptionError"]


def tag_weights(table, store, key: str = "weights"):
    """``table.attrs[key]`` = ``store``'s :attr:`LayerStore.weights` (plot legends read it)."""
    table.attrs[key] = weights_of(store)
    return table


def check_utterances(utterances, n: int) -> np.ndarray:
    if utterances is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(utterances, torch.Tensor):
        utterances = utterances.cpu().numpy()
    if isinstance(utterances, (int, np.integer)) and not isinstance(utterances, bool):
        raise TypeError(
            "utterances must be None or a sequence of utterance positions, got a single int; "
            "use store.utterance(i) for one utterance or utterances=[i]")
    arr = np.asarray(utterances)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"a boolean utterances mask must have shape ({n},), got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"utterances must be None or a 1-D sequence of int positions, got {utterances!r:.80}")
    if arr.min() < 0 or arr.max() >= n:
        raise IndexError(f"utterances must be positions in [0, {n}), got min {arr.min()} max {arr.max()}")
    return arr.astype(np.int64)


NOT_RECORDED = "not recorded (a cache written before s3viz kept the weights' provenance)"


def _check_weights(weights_source) -> str:
    if not isinstance(weights_source, str) or not weights_source.strip():
        raise TypeError(f"weights_source must be a non-empty text saying where the weights "
                        f"came from (e.g. 'random weights (seed 0)'), got {weights_source!r}")
    return weights_source


def utterance_selection(utterances, n: int) -> np.ndarray:
    """Sorted unique positions of a non-empty utterance selection (None: all ``n``)."""
    sel = check_utterances(utterances, n)
    if sel.size == 0:
        raise ValueError("`utterances` selects no utterance")
    return np.unique(sel)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0


_MANIFEST_KEYS = ("format", "fingerprint", "name", "ids", "layer_ids", "chunks", "plan",
                  "hidden_sizes", "downsample_rates", "receptive_fields", "store_dtype",
                  "labels_sha256", "phones_sha256", "tracks_sha256", "manifest_sha256")


class NonFiniteError(ValueError):
    """Hidden states hold NaN or inf: refused, since one such value silently corrupts a
    probe, CKA or featurizer computed over the layer."""


NONFINITE_HINT = ("s3viz refuses non-finite hidden states (one NaN or inf would silently "
                  "change every probe and CKA value of the layer); check the model on that "
                  "utterance, e.g. float16 overflow (extract with dtype=None) or silent audio "
                  "through a normalisation")


# --------------------------------------------------------------------------- chunk backends


class MemoryChunks:
    """Chunk tensors held in memory: ``tensors[c][s]`` is ``(frames, hidden_size_s)``."""

    path = None

    def __init__(self, tensors):
        self.tensors = tensors

    def load(self, c: int, s: int) -> torch.Tensor:
        return self.tensors[c][s]


def chunk_lengths(records, n: int, num_layer: int) -> np.ndarray:
    """``(n, num_layer)`` frames of each utterance and stored layer, from chunk records."""
    lengths = np.zeros((n, num_layer), dtype=np.int64)
    for rec in records:
        lengths[rec["utterances"]] = np.asarray(rec["lengths"], dtype=np.int64)
    return lengths


class DiskChunks:
    """Chunk files of a cache folder, sha256-verified on their first load."""

    def __init__(self, root: Path, records: Sequence[dict], store_dtype, max_open: int = 8):
        self.path, self.files = Path(root), [rec["files"] for rec in records]
        self.store_dtype, self.verified, self.max_open = store_dtype, set(), max_open
        self._open: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    def load(self, c: int, s: int) -> torch.Tensor:
        key = (c, s)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        info = self.files[c][s]
        name = str(info["name"])
        path = self.path / "chunks" / name.replace("/", "_")

        def corrupt(why: str) -> CacheCorruptionError:
            return CacheCorruptionError(
                f"cache chunk file {path} (chunk {c}, stored layer {s}) is corrupt: {why}. It "
                f"is not read as data. Re-run s3viz.extract(upstream, corpus, cache_dir="
                f"{str(self.path.parent)!r}, ...) with the same upstream, corpus and settings "
                "to re-extract the bad chunk.")

        if not re.fullmatch(r"c\d+_l\d+\.pt", name):
            # a manifest naming "/elsewhere/x.pt" or "../x.pt" would read outside the cache
            raise corrupt(f"the manifest names the chunk file {name!r}, not a file of this "
                          "cache's chunks/ folder")
        if key not in self.verified:  # a chunks/ folder or chunk file that is a link: refused
            why = chunk_problem(OwnedFolder(self.path, "the extraction folder", create=False),
                                f"chunks/{name}", info)
            if why:
                raise corrupt(why)
        try:
            t = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError, EOFError, ValueError) as e:  # changed after verification
            raise corrupt(f"torch.load failed ({e})") from e
        if (not isinstance(t, torch.Tensor) or list(t.shape) != list(info["shape"])
                or t.dtype != self.store_dtype):
            raise corrupt("unexpected tensor shape or dtype")
        self.verified.add(key)
        self._open[key] = t
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return t


# --------------------------------------------------------------------------- LayerStore


def check_index(value, n: int, type_error: str, range_error: str) -> int:
    """``value`` as a position in ``[0, n)``, negative counting from the end; the errors'
    texts are formatted with the value (``{0}``; ``type_error`` also its type, ``{1}``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(type_error.format(value, type(value).__name__))
    if not -n <= value < n:
        raise IndexError(range_error.format(int(value)))
    return int(value) % n


def _field(attr: str, doc: str | None = None, copy: bool = False) -> property:
    """A read-only property giving ``self.<attr>`` (a copy of it with ``copy``)."""
    return property((lambda self: getattr(self, attr).copy()) if copy else attrgetter(attr),
                    doc=doc)


class LayerGeometry(NamedTuple):
    """What a store records of each stored layer (one entry per layer)."""

    hidden_sizes: Sequence[int]
    downsample_rates: Sequence[int]
    receptive_fields: Sequence[int]
    layer_ids: Sequence[int]


class LayerStore:
    """Every hidden state of every utterance of a corpus, unpadded, per stored layer
    (build one with :func:`extract`, :meth:`from_tensors` or :meth:`open`).

    ``layer`` arguments index the stored layers ``0..num_layer-1`` (negative from the
    end; :attr:`layer_ids`: which upstream hidden state each is); ``utterances`` is
    None (all) or positions ``0..len(store)-1`` (or a boolean mask), frames in that
    order. Frames come as new tensors (float32 unless asked otherwise).
    """

    def __init__(self, *, backend, plan, lengths, geometry: LayerGeometry, ids, labels, phones,
                 fingerprint, name, store_dtype, corpus_fingerprint=None,
                 weights_source=AS_GIVEN, tracks=None):
        """A store over chunks already written.

        Args:
            backend: ``load(chunk, layer)`` gives a chunk's frames of a stored layer.
            plan, lengths: each chunk's utterance positions; ``(num_utterances, num_layer)``
                frames of each utterance and layer.
            geometry, fingerprint: the :class:`LayerGeometry`; the store's digest.
        """
        self._backend, self._plan = backend, [list(map(int, b)) for b in plan]
        for field, values in zip(LayerGeometry._fields, geometry):  # self._hidden_sizes, ...
            setattr(self, f"_{field}", [int(v) for v in values])
        n, num_layer = len(ids), len(self._hidden_sizes)
        self._lengths = np.asarray(lengths, dtype=np.int64).reshape(n, num_layer)
        self._utt_chunk = np.zeros(n, dtype=np.int64)
        self._utt_offset = np.zeros((n, num_layer), dtype=np.int64)
        for c, utts in enumerate(self._plan):
            self._utt_chunk[utts] = c
            lens = self._lengths[utts]
            self._utt_offset[utts] = np.cumsum(lens, axis=0) - lens
        self._ids, self._labels = [str(i) for i in ids], labels.reset_index(drop=True)
        self._phones, self._fingerprint, self._name = list(phones), fingerprint, name
        # held packed (one array per column): a DataFrame per utterance would cost a large
        # corpus ~15 KiB each; read back by unpack_table
        self._tracks = [None] * n if tracks is None else [pack_table(t) for t in tracks]
        self._store_dtype, self._weights = store_dtype, _check_weights(weights_source)
        # the corpus's (audio, labels, alignments) when extracted from one, else None
        self.corpus_fingerprint = corpus_fingerprint

    # ---- construction

    @classmethod
    def from_tensors(cls, hidden_states, *, downsample_rates, ids=None, labels=None,
                     phones=None, receptive_fields=None,
                     weights_source: str = AS_GIVEN, tracks=None) -> LayerStore:
        """An in-memory store from per-utterance tensors, without any upstream.

        Args:
            hidden_states: ``hidden_states[i][l]``, the unpadded ``(num_frames,
                hidden_size_l)`` tensor of utterance ``i`` and layer ``l`` (kept, not copied).
            ids: utterance ids (default: ``labels['id']`` or ``"0", "1", ...``).
            labels: DataFrame with one row per utterance and an ``id`` column.
            phones: per utterance an alignment table (``phone, word, start, end`` in
                samples) or None; None for none at all.
            receptive_fields: per layer (default: the downsample rates).
            weights_source: the store's :attr:`weights`; start it with ``"random
                weights"`` for a random control, so tables and plots say so.
            tracks: per utterance a track table (``start, end`` in samples and float
                columns; checked by :func:`s3viz.data.tracks.check_track_table`, against
                ``labels['num_samples']`` when given) or None; None for none at all.
        """
        weights_source = _check_weights(weights_source)
        try:
            hs = [list(u) for u in hidden_states]
        except TypeError as e:
            raise TypeError(
                "hidden_states must be a list (utterances) of lists (layers) of "
                "(num_frames, hidden_size) tensors") from e
        if not hs:
            raise ValueError("hidden_states is empty: a store needs at least one utterance")
        rates = [int(r) for r in downsample_rates]
        num_layer = len(rates)
        if num_layer == 0 or any(r <= 0 for r in rates):
            raise ValueError(f"downsample_rates must be positive ints, one per layer, got {rates}")
        sizes, h, store_dtype = None, hashlib.sha256(b"from_tensors"), None
        tensors, lengths = [], np.zeros((len(hs), num_layer), dtype=np.int64)
        for i, layers in enumerate(hs):
            if len(layers) != num_layer:
                raise ValueError(
                    f"hidden_states[{i}] has {len(layers)} layers but downsample_rates has "
                    f"{num_layer}; give one rate per layer")
            row = []
            for l, t in enumerate(layers):
                t = torch.as_tensor(t)
                if t.dim() != 2 or not t.is_floating_point():
                    raise ValueError(
                        f"hidden_states[{i}][{l}] must be a float (num_frames, hidden_size) "
                        f"tensor, got {t.dtype} shape {tuple(t.shape)}")
                if t.numel() and not bool(torch.isfinite(t).all()):
                    frame = int(torch.nonzero(~torch.isfinite(t).all(dim=1))[0])
                    who = f"utterance {i}" + (f" ({ids[i]!r})" if ids is not None
                                              and i < len(ids) else "")
                    raise NonFiniteError(
                        f"hidden_states[{i}][{l}] ({who}, layer {l}) has NaN/inf (the first "
                        f"at frame {frame}); {NONFINITE_HINT}")
                t = t.detach().cpu()
                row.append(t)
                lengths[i, l] = t.shape[0]
                # float64 frames hashed as they are: two stores that differ below float32's
                # precision are two stores
                h.update(tensor_bytes(t if t.dtype == torch.float64 else t.float()))
                store_dtype = torch.promote_types(store_dtype or t.dtype, t.dtype)
            hsz = [t.shape[1] for t in row]
            sizes = sizes or hsz
            if hsz != sizes:
                raise ValueError(
                    f"hidden_states[{i}] has hidden sizes {hsz}, utterance 0 has {sizes}; "
                    "each layer needs one hidden size across utterances")
            tensors.append(row)
        n = len(hs)
        if labels is not None:
            if not isinstance(labels, pd.DataFrame) or "id" not in labels.columns or len(labels) != n:
                raise ValueError(
                    f"labels must be a DataFrame with an 'id' column and {n} rows (one per "
                    "utterance)")
            if ids is not None and [str(v) for v in ids] != [str(v) for v in labels["id"]]:
                raise ValueError("ids and labels['id'] differ; give one of them or make them agree")
            ids = labels["id"]
        ids = [str(v) for v in (range(n) if ids is None else ids)]
        if len(ids) != n or len(set(ids)) != n:
            raise ValueError(f"ids must be {n} unique strings, got {len(ids)} ({len(set(ids))} unique)")
        if labels is None:
            labels = pd.DataFrame({"id": ids})
        phones = [None] * n if phones is None else list(phones)
        if len(phones) != n:
            raise ValueError(f"phones must hold {n} tables (or None), got {len(phones)}")
        tracks = [None] * n if tracks is None else list(tracks)
        if len(tracks) != n:
            raise ValueError(f"tracks must hold {n} tables (or None), got {len(tracks)}")
        lengths_known = (labels["num_samples"].tolist() if "num_samples" in labels
                         and labels["num_samples"].dtype.kind in "iu" else [None] * n)
        tracks = [None if t is None else check_track_table(t, lengths_known[i],
                                                           f"tracks[{i}] ({ids[i]!r})")
                  for i, t in enumerate(tracks)]
        fields = rates if receptive_fields is None else [int(r) for r in receptive_fields]
        if len(fields) != num_layer:
            raise ValueError(f"receptive_fields must have {num_layer} entries, got {len(fields)}")
        return cls(
            backend=MemoryChunks(tensors), plan=[[i] for i in range(n)], lengths=lengths,
            geometry=LayerGeometry(sizes, rates, fields, list(range(num_layer))), ids=ids, labels=labels, phones=phones,
            fingerprint=h.hexdigest(), name="from_tensors", store_dtype=store_dtype,
            weights_source=weights_source, tracks=tracks,
        )

    @classmethod
    def open(cls, path: str | os.PathLike) -> LayerStore:
        """Reopen a finished on-disk extraction, without the upstream or the corpus, from its
        folder (``cache_dir/<name>-<fingerprint>``) or a ``cache_dir`` holding exactly one."""
        root = Path(path)
        if not (root / "manifest.json").exists() and not (root / "plan.json").exists():
            root = cls._find_extraction(root)
        folder = OwnedFolder(root, "the extraction folder", create=False)
        manifest = read_json(folder, "manifest.json")
        if manifest is None:
            raise ValueError(
                f"the extraction in {root} is not finished (no readable manifest.json); re-run "
                "s3viz.extract with the same upstream, corpus and cache_dir to finish it")
        missing = ([] if isinstance(manifest, dict) else ["(it is not a JSON object)"]) or [
            k for k in _MANIFEST_KEYS if k not in manifest]
        if missing:
            raise ValueError(f"{root / 'manifest.json'} is not an s3viz extraction manifest "
                             f"(missing {missing}); open the folder s3viz.extract wrote")
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{root} has cache format {manifest.get('format')}, this s3viz reads "
                             f"{FORMAT_VERSION}; re-run s3viz.extract with the same upstream and "
                             "corpus to write a cache of this format")
        repair = (f"re-run s3viz.extract(upstream, corpus, cache_dir={str(root.parent)!r}) "
                  "with the same upstream and corpus to repair it")
        if not seal_ok(manifest, "manifest_sha256"):
            raise CacheCorruptionError(f"{root / 'manifest.json'} was changed after extract wrote "
                                       f"it (its sha256 does not match); {repair}")
        raw_labels, phones_json = read_json(folder, "labels.json"), read_json(folder, "phones.json")
        tracks_json = read_json(folder, "tracks.json")
        for fname, content, key in (("labels.json", raw_labels, "labels_sha256"),
                                    ("phones.json", phones_json, "phones_sha256"),
                                    ("tracks.json", tracks_json, "tracks_sha256")):
            if content is None:
                raise CacheCorruptionError(f"{root / fname} is missing or unreadable; {repair}")
            if json_digest(content) != manifest[key]:
                raise CacheCorruptionError(f"{root / fname} was changed after extract wrote it "
                                           f"(its sha256 does not match the manifest's); {repair}")
        labels = df_from_json(raw_labels)
        n = len(manifest["ids"])
        if len(phones_json) != n or len(labels) != n or len(tracks_json) != n:
            raise ValueError(f"labels.json, phones.json or tracks.json of {root} do not match "
                             f"its {n} utterances")
        # chunk files are checked (size, sha256) on their first load, one layer at a time
        store_dtype, weights = DTYPE_NAMES[manifest["store_dtype"]], manifest.get("weights")
        return cls(
            backend=DiskChunks(root, manifest["chunks"], store_dtype),
            plan=manifest["plan"], lengths=chunk_lengths(manifest["chunks"], n,
                                                         len(manifest["layer_ids"])),
            geometry=LayerGeometry(*(manifest[k] for k in LayerGeometry._fields)),
            ids=manifest["ids"], labels=labels, phones=[df_from_json(p) for p in phones_json],
            fingerprint=manifest["fingerprint"], name=manifest["name"], store_dtype=store_dtype,
            corpus_fingerprint=manifest.get("corpus_fingerprint"),
            weights_source=weights if isinstance(weights, str) and weights.strip()
            else NOT_RECORDED, tracks=[tracks_from_json(t) for t in tracks_json])

    @staticmethod
    def _find_extraction(cache_dir: Path) -> Path:
        """The one extraction folder in ``cache_dir``; links (to a folder or a manifest) are
        not followed, left out, and named when nothing else is found (``docs/cache.md``)."""
        cache = OwnedFolder(cache_dir, "cache_dir", create=False)
        try:
            names = cache.listdir()
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"no s3viz extraction (manifest.json) under {cache_dir}: "
                                    "the folder does not exist") from None
        found, links = [], []
        for name in names:
            kind = cache.kind(name)
            if kind == "link":
                links.append(name)
            elif kind == "folder":
                try:
                    if cache.regular_file(f"{name}/manifest.json") is not None:
                        found.append(name)
                except UnsafePathError:
                    links.append(f"{name}/manifest.json")
        if len(found) == 1:
            return cache.folder / found[0]
        if found:
            raise ValueError(f"{cache_dir} holds {len(found)} extractions; open one of them: "
                             + ", ".join(found))
        skipped = (f" (left out, being symbolic links: {', '.join(links)}; s3viz follows no "
                   "link inside cache_dir: open the folder a link points to by its own path "
                   "if you trust it)") if links else ""
        raise FileNotFoundError(f"no s3viz extraction (manifest.json) under {cache_dir}{skipped}")

    # ---- sizes and provenance (copies: a caller cannot change the store)

    @property
    def num_layer(self) -> int:
        """Number of stored layers (:attr:`num_layers` is an alias)."""
        return len(self._hidden_sizes)

    num_layers = num_layer
    hidden_sizes = _field("_hidden_sizes", copy=True)
    downsample_rates = _field("_downsample_rates", copy=True)
    receptive_fields = _field("_receptive_fields", "Samples of input window per frame of each "
                              "stored layer (the rate when unknown).", copy=True)
    layer_ids = _field("_layer_ids", "The upstream hidden-state index of each stored layer.",
                       copy=True)
    ids = _field("_ids", copy=True)
    labels = _field("_labels", "One row per utterance (0..N-1): ``id, speaker, text, "
                    "num_samples`` + extra labels.", copy=True)
    phones = _field("_phones", copy=True)
    @property
    def tracks(self) -> list:
        """Per utterance its track table (``start, end`` in samples, one float64 column per
        track; :func:`s3viz.data.add_acoustic_tracks`) or None; new DataFrames on every
        read (the store keeps them packed)."""
        return [unpack_table(t) for t in self._tracks]
    fingerprint = _field("_fingerprint", "sha256 of the upstream's weights, the corpus and the "
                         "content-changing settings.")
    name = _field("_name", "Name of the upstream the frames came from.")
    weights = _field("_weights", "Where the upstream's weights came from "
                     "(:func:`s3viz.upstreams.weights_of`; the random control's starts with "
                     '``"random weights"``); measure tables carry it as ``df.attrs["weights"]``.')
    store_dtype = _field("_store_dtype")

    @property
    def path(self) -> Path | None:
        """The cache folder of an on-disk store, None in memory."""
        return self._backend.path

    @property
    def nbytes(self) -> int:
        """Bytes of frame data held (in memory or on disk)."""
        values = (self._lengths.sum(0) * np.asarray(self._hidden_sizes)).sum()
        return int(values * self._store_dtype.itemsize)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        def compact(v):
            return str(v[0]) if len(set(v)) == 1 else str(v)

        ids = self._layer_ids
        runs = len(ids) > 1 and ids == list(range(ids[0], ids[0] + len(ids)))
        where = "in memory" if self.path is None else f"on disk at {self.path}"
        return (
            f"LayerStore({self._name}: {len(self)} utterances, {self.num_layer} layers (upstream "
            f"layers {f'{ids[0]}-{ids[-1]}' if runs else ids}), hidden {compact(self._hidden_sizes)}, rate "
            f"{compact(self._downsample_rates)}, {STORE_DTYPES.get(self._store_dtype, self._store_dtype)}, "
            f"{fmt_bytes(self.nbytes)} {where}; weights: {self._weights})"
        )

    # ---- access

    def _layer_index(self, layer) -> int:
        n = self.num_layer
        return check_index(layer, n, "layer must be an int index of a stored layer, got {0!r}",
                           f"layer {{0}} out of range: this store has {n} layers (0..{n - 1}; "
                           f"upstream layers {self._layer_ids})")

    def lengths(self, layer) -> np.ndarray:
        """``(N,)`` int64 frames per utterance of stored layer ``layer``."""
        return self._lengths[:, self._layer_index(layer)].copy()

    def utterance(self, i) -> list[torch.Tensor]:
        """The hidden states of utterance ``i``: per stored layer a ``(T_l, H_l)`` float32 tensor.

        Args:
            i: the utterance's position ``0..len(store)-1`` (negative counts from the end).
        """
        i = check_index(i, len(self), "i must be an int utterance position, got {0!r}",
                        f"utterance {{0}} out of range for a store of {len(self)} utterances")
        return [self._gather(s, np.array([i]), torch.float32)[0] for s in range(self.num_layer)]

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
        return self._gather(s, check_utterances(utterances, len(self)), dtype)

    def iter_layer(self, layer, utterances=None, chunk_frames: int = 65536,
                   dtype=torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`layer` in pieces ``(frames, utt_index)`` of whole utterances of at most
        ``chunk_frames`` frames (a longer utterance comes alone); together :meth:`layer`."""
        s = self._layer_index(layer)
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer)) \
                or chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
        pos = check_utterances(utterances, len(self))
        for a, b in frame_groups(self._lengths[pos, s], int(chunk_frames)):
            yield self._gather(s, pos[a:b], dtype)

    def iter_chunks(self, dtype=torch.float32) -> Iterator[tuple[np.ndarray, list, np.ndarray]]:
        """Every stored chunk (one extraction batch) once, in storage order: the cheapest
        full pass. Yields ``(positions, frames, lengths)``: the chunk's ``(B,)`` utterance
        positions, per stored layer its concatenated ``(sum of frames, hidden_size)``
        frames, and ``(B, num_layer)`` frames per utterance and layer."""
        for c, utts in enumerate(self._plan):
            pos = np.asarray(utts, dtype=np.int64)
            yield pos, [self._backend.load(c, s).to(dtype) for s in range(self.num_layer)], \
                self._lengths[pos]

    def frame_labels(self, layer, column: str = "phone", utterances=None) -> np.ndarray:
        """``(sum_T,)`` object array of per-frame labels aligned with :meth:`layer`: the
        ``column`` value of the segment covering each frame's centre
        (:func:`s3viz.align.frame_labels`), ``""`` where none does or the utterance has no
        alignment; a missing value (None, NaN, pd.NA) comes through as it is."""
        return self._per_frame(layer, utterances, self._phones, _align_frame_labels, column, "",
                               "no alignment tables (phones) for these utterances; frame labels "
                               "need a corpus with phone alignments (e.g. "
                               "s3viz.data.synthetic_corpus)")

    def frame_values(self, layer, column: str, utterances=None) -> np.ndarray:
        """``(sum_T,)`` float64 per-frame values aligned with :meth:`layer`: the ``column``
        value of the track row covering each frame's centre (:func:`s3viz.align.frame_values`,
        the convention of :meth:`frame_labels`), NaN where none does, the value is
        undefined (an unvoiced frame's ``f0``) or the utterance has no tracks."""
        return self._per_frame(layer, utterances, self._tracks, _align_frame_values, column,
                               np.nan, "no track tables for these utterances; frame values need "
                               "a corpus with tracks (s3viz.data.add_acoustic_tracks(corpus)) "
                               "before extraction")

    def _per_frame(self, layer, utterances, tables, read, column, fill, none_message):
        """``read(table, n, rate, ...)`` of each selected utterance's table, concatenated
        (``fill`` for the frames of an utterance without one)."""
        s = self._layer_index(layer)
        pos = check_utterances(utterances, len(self))
        if len(pos) and all(tables[i] is None for i in pos):
            raise ValueError(none_message)
        rate, rf = self._downsample_rates[s], self._receptive_fields[s]
        dtype = object if isinstance(fill, str) else np.float64
        parts = []
        for i in pos:
            n, table = int(self._lengths[i, s]), unpack_table(tables[i])
            parts.append(np.full(n, fill, dtype=dtype) if table is None else read(
                table, n, rate, column=column, receptive_field_samples=rf))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def pooled(self, layer, utterances=None, dtype=torch.float32) -> torch.Tensor:
        """Mean over frames per utterance: ``(N', hidden_size)`` in ``dtype`` (NaN for 0 frames)."""
        s = self._layer_index(layer)
        pos = check_utterances(utterances, len(self))
        lens = self._lengths[pos, s]
        out = torch.full((len(pos), self._hidden_sizes[s]), float("nan"), dtype=dtype)
        for a, b in frame_groups(lens, 65536):
            frames, _ = self._gather(s, pos[a:b], dtype)
            for j, part in zip(range(a, b), torch.split(frames, lens[a:b].tolist()), strict=True):
                if part.shape[0]:  # in float64: a constant feature's mean is then exact
                    out[j] = part.double().mean(0).to(dtype)
        if (lens == 0).any():
            warnings.warn(f"{int((lens == 0).sum())} utterance(s) have no frames in layer {s}; "
                          "their pooled rows are NaN", stacklevel=2)
        return out


def tracks_from_json(obj) -> pd.DataFrame | None:
    """A track table as ``tracks.json`` holds it (NaN written as null): ``start, end``
    int64, every other column float64."""
    table = df_from_json(obj)
    if table is None:
        return None
    return table.astype({c: np.int64 if c in ("start", "end") else np.float64
                         for c in table.columns})


def frame_groups(lens: np.ndarray, max_frames: int) -> Iterator[tuple[int, int]]:
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
