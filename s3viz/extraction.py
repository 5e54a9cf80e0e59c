""":func:`extract`: run an upstream over a corpus once, in length-bucketed batches, and
keep every hidden state in a :class:`~s3viz.store.LayerStore`, in memory or in a
fingerprinted, resumable cache on disk (``docs/cache.md``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._cache import (
    DTYPE_NAMES,
    FORMAT_VERSION,
    STORE_DTYPES,
    check_record,
    df_to_json,
    folder_lock,
    json_digest,
    read_json,
    sealed,
    slug,
    upstream_fingerprint,
    write_chunk,
    write_json,
)
from ._device import eval_session, resolve_device
from ._fs import OwnedFolder, UnsafePathError
from .align import expected_lengths
from .audio import batch_wavs
from .data._corpus import Corpus, Utterance, pack_table, unpack_table
from .interface import SAMPLE_RATE, num_layer_of
from .store import (
    NONFINITE_HINT,
    CacheCorruptionError,  # noqa: F401  (re-exported: s3viz.extraction.CacheCorruptionError)
    DiskChunks,
    LayerStore,
    MemoryChunks,
    NonFiniteError,
    LayerGeometry,
    check_index,
    chunk_lengths,
    fmt_bytes,
)
from .upstreams._hub import weights_of

__all__ = ["DEFAULT_MAX_BATCH_SECONDS", "CacheCorruptionError", "LayerStore", "NonFiniteError", "extract"]

DEFAULT_MAX_BATCH_SECONDS = 60.0
"""Default cap on the padded audio of one batch (``batch_size * longest`` seconds)."""


# --------------------------------------------------------------------------- validation


def check_upstream_arg(upstream):
    if not isinstance(upstream, nn.Module):
        raise TypeError(
            f"upstream must be a torch.nn.Module following s3viz.AbsUpstream "
            f"(num_layer, hidden_sizes, downsample_rates, forward(wavs, wavs_len)), got "
            f"{type(upstream).__name__}; wrap s3prl objects with s3viz.upstreams.from_s3prl")
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
                f"{num_layer} positive ints, one per hidden state") from e
        if len(value) != num_layer or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise TypeError(
                f"upstream.{attr} must be {num_layer} positive ints (num_layer={num_layer}), "
                f"got {value!r}")
        sizes[attr] = [int(v) for v in value]
    try:
        fields = getattr(upstream, "receptive_fields", None)
    except NotImplementedError:
        fields = None
    fields = list(sizes["downsample_rates"] if fields is None else fields)
    if len(fields) != num_layer or not all(int(v) > 0 for v in fields):
        raise TypeError(f"upstream.receptive_fields must be {num_layer} positive ints or None, "
                        f"got {fields!r}")
    fields = [int(v) for v in fields]
    name = getattr(upstream, "name", None)
    if not isinstance(name, str) or not name:
        name = type(upstream).__name__
    return num_layer, sizes["hidden_sizes"], sizes["downsample_rates"], fields, name


def as_corpus(corpus):
    if isinstance(corpus, Corpus):
        out = corpus
    elif isinstance(corpus, (str, bytes, os.PathLike)) or not hasattr(corpus, "__iter__"):
        raise TypeError(
            f"corpus must be an s3viz.data.Corpus (or a list of s3viz.data.Utterance), got "
            f"{type(corpus).__name__}; load audio files with s3viz.data.load_folder(path)")
    else:
        items = list(corpus)
        bad = [type(u).__name__ for u in items if not isinstance(u, Utterance)]
        if bad:
            raise TypeError(
                f"corpus items must be s3viz.data.Utterance, got {bad[0]}; build them with "
                "s3viz.data.Utterance(id=..., wav=...)")
        out = Corpus(items)
    if len(out) == 0:
        raise ValueError("corpus is empty: extract needs at least one utterance")
    empty = [u.id for u in out if u.num_samples == 0]
    if empty:
        raise ValueError(
            f"corpus has {len(empty)} utterance(s) without samples (first: {empty[0]!r}); "
            "remove them before extraction")
    return out


def check_upstream_layers(layers, num_layer: int, arg: str = "upstream_layers") -> list[int]:
    if layers is None:
        return list(range(num_layer))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    try:
        items = list(layers)
    except TypeError as e:
        raise TypeError(
            f"{arg} must be None (all), an int or a sequence of ints, got {type(layers).__name__}"
        ) from e
    if not items:
        raise ValueError(f"{arg} is empty; pass None for all layers or at least one index")
    out = [check_index(v, num_layer, f"{arg} must hold ints, got {{0!r}} ({{1}})",
                       f"{arg} holds {{0}} but the upstream has {num_layer} hidden states "
                       f"(valid indices 0..{num_layer - 1}, or negative from the end)")
           for v in items]
    if len(set(out)) != len(out):
        raise ValueError(f"{arg} holds duplicates: {items!r}")
    return out


def check_batching(batch_size, max_batch_seconds):
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, (int, np.integer)) or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive int (utterances per batch) or None, "
                         f"got {batch_size!r}")
    if max_batch_seconds is not None and (isinstance(max_batch_seconds, bool) or not isinstance(
            max_batch_seconds, (int, float, np.integer, np.floating))
            or not np.isfinite(max_batch_seconds) or max_batch_seconds <= 0):
        raise ValueError("max_batch_seconds must be a positive number of seconds of padded audio "
                         f"per batch or None, got {max_batch_seconds!r}")
    if batch_size is None and max_batch_seconds is None:
        raise ValueError("batch_size and max_batch_seconds are both None; set at least one "
                         f"(e.g. max_batch_seconds={DEFAULT_MAX_BATCH_SECONDS})")


def _check_dtype(value, arg: str, choices: str) -> torch.dtype:
    dt = DTYPE_NAMES.get(value, value) if isinstance(value, str) else value
    if dt not in STORE_DTYPES:
        raise ValueError(f"{arg} must be {choices}, got {value!r}")
    return dt


def resolve_upstream_device(upstream, device) -> tuple[torch.device, bool]:
    """(device to run on, whether the upstream must be moved there)."""
    dev = resolve_device(device, upstream)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if device is None:
        return dev, False
    devices = {t.device for t in list(upstream.parameters()) + list(upstream.buffers())}
    return dev, bool(devices) and devices != {dev}


def bucket_plan(num_samples, batch_size=None, max_batch_seconds=DEFAULT_MAX_BATCH_SECONDS,
                 sort: bool = True) -> list[list[int]]:
    """Deterministic batch plan, lists of utterance positions: longest first (ties by
    position; ``sort=False``: corpus order), each batch filled until the next utterance
    would exceed ``batch_size`` utterances or ``max_batch_seconds`` of padded audio."""
    n = np.asarray(num_samples, dtype=np.int64)
    order = np.lexsort((np.arange(len(n)), -n)) if sort else np.arange(len(n))
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


# --------------------------------------------------------------------------- batching


def _require_finite(frames: torch.Tensor, lens, ids, layer, who: str) -> None:
    """Raise :class:`NonFiniteError` naming the first utterance (and frame) of ``frames``
    (utterances concatenated, ``lens`` frames each) that holds NaN/inf in ``layer``."""
    if frames.numel() == 0 or bool(torch.isfinite(frames).all()):
        return
    bad = ~torch.isfinite(frames).reshape(frames.shape[0], -1).all(dim=1)
    first, ends = int(torch.nonzero(bad)[0]), np.cumsum(lens)
    b = int(np.searchsorted(ends, first, side="right"))  # the utterance holding frame `first`
    start, n = int(ends[b] - lens[b]), int(lens[b])
    raise NonFiniteError(
        f"{who}: hidden state {layer} of utterance {ids[b]!r} has NaN/inf in "
        f"{int(bad[start: start + n].sum())} of its {n} frames (the first at frame "
        f"{first - start}); {NONFINITE_HINT}")


def _forward_batch(runner: "BatchRunner", wavs, wavs_len, store_dtype, ids):
    """Run one batch: ``(frames, lens)``, ``frames[s]`` the CPU ``(sum of frames,
    hidden_size_s)`` ``store_dtype`` tensor of layer ``layer_ids[s]`` (utterances in batch
    order, concatenated) and ``lens`` ``(batch_size, len(layer_ids))`` int64."""
    upstream, layer_ids, hidden_sizes = runner.upstream, runner.layer_ids, runner.sizes
    wavs, wavs_len = wavs.to(runner.dev, non_blocking=True), wavs_len.to(runner.dev)
    with torch.inference_mode(), runner.amp():
        out = upstream(wavs, wavs_len)
    name = type(upstream).__name__
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"upstream ({name}).forward must return (all_hs, all_hs_len), got {type(out).__name__}")
    all_hs, all_hs_len = out
    batch = wavs.shape[0]
    if len(all_hs) != len(all_hs_len) or max(layer_ids) >= len(all_hs):
        raise ValueError(
            f"upstream ({name}) returned {len(all_hs)} hidden states and {len(all_hs_len)} "
            f"lengths, but layers {layer_ids} were asked; num_layer must match forward()")
    frames, lens = [], np.zeros((batch, len(layer_ids)), dtype=np.int64)
    # outside inference mode: the stored frames are ordinary tensors, usable with autograd later
    for s, layer in enumerate(layer_ids):
        hs, hs_len = all_hs[layer], torch.as_tensor(all_hs_len[layer]).to("cpu").long()
        if hs.dim() != 3 or hs.shape[0] != batch or hs.shape[2] != hidden_sizes[s]:
            raise ValueError(
                f"upstream ({name}) hidden state {layer} has shape {tuple(hs.shape)}, expected "
                f"(batch_size={batch}, seq_len, hidden_size={hidden_sizes[s]}); check "
                "hidden_sizes (s3viz.check_upstream reports every violation)")
        if hs_len.shape != (batch,) or (hs_len < 0).any() or (hs_len > hs.shape[1]).any():
            raise ValueError(
                f"upstream ({name}) lengths of hidden state {layer} are {hs_len.tolist()}, "
                f"expected ({batch},) ints in [0, {hs.shape[1]}]")
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
        _require_finite(out, lens[:, s], ids, layer, f"upstream ({name})")
        frames.append(out.to("cpu"))
    return frames, lens


# --------------------------------------------------------------------------- extract


def extract(upstream, corpus, *, upstream_layers=None, batch_size: int | None = None,
            max_batch_seconds: float | None = DEFAULT_MAX_BATCH_SECONDS, device=None,
            amp_dtype=None, store_dtype: torch.dtype = torch.float32, cache_dir=None,
            progress: bool = True) -> LayerStore:
    """Run ``upstream`` over ``corpus`` and keep every hidden state, unpadded (the other
    arguments: ``docs/api.md``).

    Args:
        max_batch_seconds: at most this much padded audio per batch (``utterances *
            longest``; with ``batch_size=None`` no count limit); batches are length-sorted.
        device: None: the upstream's own device (not moved), else cuda when available,
            else the CPU; given: the upstream is moved there and back afterwards.
        cache_dir: None keeps frames in memory; a folder keeps them on disk under
            ``cache_dir/<name>-<fingerprint>``, reused when finished, resumed when
            interrupted, corrupt chunks re-extracted (``docs/cache.md``).

    Returns:
        A :class:`LayerStore` whose ``weights`` says where the upstream's weights came
        from (:func:`s3viz.upstreams.weights_of`). The upstream's train/eval flags are
        restored.
    """
    num_layer, all_sizes, all_rates, all_fields, name = check_upstream_arg(upstream)
    corpus = as_corpus(corpus)
    layer_ids = check_upstream_layers(upstream_layers, num_layer)
    check_batching(batch_size, max_batch_seconds)
    store_dtype = _check_dtype(store_dtype, "store_dtype",
                               "one of torch.float32, torch.float16, torch.bfloat16")
    if amp_dtype is not None:  # float32: full precision, as None
        amp_dtype = _check_dtype(amp_dtype, "amp_dtype", "None, torch.float32, torch.float16 or "
                                 "torch.bfloat16 (half precision runs the upstream under "
                                 "torch.autocast)")
        amp_dtype = None if amp_dtype == torch.float32 else amp_dtype
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be None or a folder path, got {type(cache_dir).__name__}")
    if cache_dir is not None and not str(os.fspath(cache_dir)).strip():
        raise ValueError("cache_dir is an empty path (it would write into the current folder); "
                         "pass None to keep the frames in memory, or a folder")
    dev, move = resolve_upstream_device(upstream, device)

    sizes, rates, fields = ([v[l] for l in layer_ids] for v in (all_sizes, all_rates, all_fields))
    num_samples = np.array([u.num_samples for u in corpus], dtype=np.int64)
    plan = bucket_plan(num_samples, batch_size, max_batch_seconds)
    corpus_fp, run_dtype = corpus.fingerprint(), STORE_DTYPES.get(amp_dtype, "float32")
    fp = json_digest({"format": FORMAT_VERSION, "upstream": upstream_fingerprint(upstream),
                      "corpus": corpus_fp, "layers": layer_ids, "hidden_sizes": sizes,
                      "downsample_rates": rates, "store_dtype": STORE_DTYPES[store_dtype],
                      "dtype": run_dtype})
    # where the weights came from: kept in the cache's manifest, not in its fingerprint (the
    # weights themselves are); a reused cache takes this upstream's text
    weights = weights_of(upstream)
    meta = {
        "format": FORMAT_VERSION, "fingerprint": fp, "name": name, "weights": weights,
        "upstream_class": f"{type(upstream).__module__}.{type(upstream).__qualname__}",
        "corpus_fingerprint": corpus_fp, "layer_ids": layer_ids,
        "hidden_sizes": sizes, "downsample_rates": rates, "receptive_fields": fields,
        "store_dtype": STORE_DTYPES[store_dtype],
        "dtype": run_dtype, "ids": corpus.ids, "num_samples": num_samples.tolist(), "plan": plan,
    }
    common = dict(geometry=LayerGeometry(sizes, rates, fields, layer_ids), ids=corpus.ids,
                  labels=corpus.labels, phones=[u.phones for u in corpus], fingerprint=fp, name=name,
                  store_dtype=store_dtype, corpus_fingerprint=corpus_fp, weights_source=weights,
                  tracks=[pack_table(u._tracks_view()) for u in corpus])
    estimate = store_dtype.itemsize * sum(int(expected_lengths(num_samples, rate, "ceil").sum()) * size
                              for rate, size in zip(rates, sizes))
    audio_bytes = int(num_samples.sum()) * 2
    head = (
        f"s3viz.extract: {name}, {len(corpus)} utterances ({num_samples.sum() / SAMPLE_RATE / 60:.1f} "
        f"min, {fmt_bytes(audio_bytes)} as 16-bit audio), {len(layer_ids)} layers -> about "
        f"{fmt_bytes(estimate)} of {STORE_DTYPES[store_dtype]} frames "
        f"({estimate / audio_bytes:.0f}x the audio)"
    )
    runner = BatchRunner(upstream, corpus, layer_ids, sizes, dev, move, amp_dtype, store_dtype,
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
        return LayerStore(backend=MemoryChunks(tensors), plan=plan, lengths=lengths, **common)

    folder_name = f"{slug(name)}-{fp[:16]}"
    lock = contextlib.ExitStack()
    try:
        owned = OwnedFolder(cache_dir, "cache_dir")
        root_dir = owned.sub(folder_name)
        chunk_dir = root_dir.sub("chunks")
        lock.enter_context(folder_lock(root_dir))
    except UnsafePathError:
        raise
    except OSError as err:  # read-only storage: fine when there is nothing to write
        root = Path(cache_dir).expanduser() / folder_name
        with contextlib.suppress(OSError):
            done = read_json(OwnedFolder(root, "the extraction folder", create=False),
                             "manifest.json")
            if (isinstance(done, dict) and done.get("format") == FORMAT_VERSION
                    and done.get("fingerprint") == fp and done.get("ids") == list(corpus.ids)):
                store = LayerStore.open(root)
                store._weights = weights  # this upstream's text, as a writable cache's
                return store
        raise OSError(f"cannot write the cache folder {root} ({err}), and it holds no finished "
                      "extraction of this upstream and corpus; give a writable cache_dir") from err
    root = root_dir.folder
    with lock:
        for where in (root_dir, chunk_dir):  # temporary files of an interrupted write
            for stale in where.listdir():
                if ".tmp-" in stale:
                    where.unlink(stale)
        stored = read_json(root_dir, "plan.json")
        stored_plan = stored.get("plan") if isinstance(stored, dict) else None
        probe = behaviour_probe(runner)
        kept = _read_probe(root_dir) if stored_plan is not None else None
        if stored_plan is not None:
            diff, tol = probe_difference(kept, probe) if kept else (math.inf, 0.0)
            if not diff <= tol:
                warnings.warn(
                    f"the cache {root} was written by an upstream that behaves differently "
                    f"from {name} now (" + (f"outputs on s3viz's probe input differ by "
                                            f"{diff:.2g} relative, tolerance {tol:g}" if kept
                                            else "it keeps no probe outputs to compare")
                    + ") although weights and code fingerprint alike (a patched forward, a "
                    "hook, a global?); its frames are not reused: extracting again",
                    stacklevel=2)
                stored = stored_plan = None
        labels_json = df_to_json(corpus.labels)
        phones_json = [df_to_json(u.phones) for u in corpus]
        tracks_json = [df_to_json(unpack_table(t)) for t in common["tracks"]]
        if (isinstance(stored, dict) and stored.get("fingerprint") == fp
                and stored.get("ids") == corpus.ids and stored_plan is not None
                and sorted(u for b in stored_plan for u in b) == list(range(len(corpus)))):
            plan = meta["plan"] = [list(b) for b in stored_plan]  # resume with the first plan
        else:
            for old in chunk_dir.listdir():  # orphans of an unreadable plan (files only)
                chunk_dir.unlink(old)
            root_dir.unlink("manifest.json")
            root_dir.write_with("behaviour.pt", lambda f: torch.save(probe, f))
            write_json(root_dir, "plan.json", meta)
        # the corpus's own labels and alignments: rewritten when missing or edited (repair)
        for fname, content in (("labels.json", labels_json), ("phones.json", phones_json),
                               ("tracks.json", tracks_json)):
            on_disk = read_json(root_dir, fname)
            if on_disk is None or json_digest(on_disk) != json_digest(content):
                write_json(root_dir, fname, content)
        checked = [check_record(chunk_dir, c, utts, len(layer_ids)) for c, utts in enumerate(plan)]
        records = [rec for rec, _ in checked]
        problems = [f"chunk {c}: {why}" for c, (_, why) in enumerate(checked) if why]
        if problems:
            warnings.warn(
                f"{len(problems)} corrupt chunk(s) in {root} will be re-extracted: "
                + "; ".join(problems[:5]), stacklevel=2,
            )
        todo = [(c, utts) for c, utts in enumerate(plan) if records[c] is None]
        done_utts = len(corpus) - sum(len(utts) for _, utts in todo)
        if progress:
            state = (f"{len(plan) - len(todo)}/{len(plan)} chunks already there"
                     if len(todo) < len(plan)
                     else f"{len(plan)} chunk{'s' if len(plan) > 1 else ''} to write")
            print(f"{head} on disk at {root} ({state})")

        def store_chunk(c, utts, frames, lens):
            records[c] = write_chunk(chunk_dir, c, utts, frames, lens)

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
        manifest = sealed(dict(meta, chunks=records, complete=True,
                                labels_sha256=json_digest(labels_json),
                                phones_sha256=json_digest(phones_json),
                                tracks_sha256=json_digest(tracks_json)), "manifest_sha256")
        if todo or read_json(root_dir, "manifest.json") != manifest:
            write_json(root_dir, "manifest.json", manifest)
    return LayerStore(backend=DiskChunks(root, records, store_dtype), plan=plan,
                      lengths=chunk_lengths(records, len(corpus), len(layer_ids)), **common)


PROBE_SAMPLES = (16000, 8807)
"""Lengths of the fixed probe input whose outputs a cache keeps (see ``behaviour_probe``)."""
PROBE_TOLERANCE = {"same": 1e-4, "device": 5e-3, "amp": 5e-2}
"""Largest relative difference (per layer, ``|a - b|_max / |a|_max``) between the probe
outputs kept in a cache and those of the upstream now: on the same device in float32,
on another device (TF32, other kernels), and under ``amp_dtype``."""


def behaviour_probe(runner: "BatchRunner") -> dict:
    """The upstream's float32 CPU outputs on a small fixed input (a sine in noise, two
    lengths), with the device and precision they were computed with: a cache keeps them
    and is reused only while they agree (``PROBE_TOLERANCE``; ``docs/refusals.md``)."""
    g = torch.Generator().manual_seed(0)
    n = max(PROBE_SAMPLES)
    t = torch.arange(n, dtype=torch.float32) / SAMPLE_RATE
    wavs = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(
        len(PROBE_SAMPLES), n, generator=g)
    lens = torch.tensor(PROBE_SAMPLES)
    wavs = (wavs * (torch.arange(n)[None] < lens[:, None])).unsqueeze(-1)
    with eval_session(runner.upstream, runner.dev, move=runner.move):
        frames, out_lens = _forward_batch(runner, wavs, lens, torch.float32, ["<probe>"] * 2)
    return {"frames": [f.float() for f in frames], "lengths": out_lens.tolist(),
            "device": runner.dev.type, "amp": runner.amp_dtype is not None}


def probe_difference(kept: dict, now: dict) -> tuple[float, float]:
    """(largest relative difference over layers, the tolerance that applies)."""
    tol = PROBE_TOLERANCE["amp" if kept.get("amp") or now["amp"] else
                          "same" if kept.get("device") == now["device"] else "device"]
    if kept.get("lengths") != now["lengths"] or len(kept["frames"]) != len(now["frames"]):
        return math.inf, tol
    worst = 0.0
    for a, b in zip(kept["frames"], now["frames"]):
        if a.shape != b.shape:
            return math.inf, tol
        scale = float(a.abs().max()) if a.numel() else 0.0
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else (math.inf if diff > 0 else 0.0))
    return worst, tol


def _read_probe(folder) -> dict | None:
    try:
        return torch.load(io.BytesIO(folder.read_bytes("behaviour.pt")), weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None


class BatchRunner:
    """Runs batches of a plan through the upstream (eval mode, inference mode, autocast)."""

    def __init__(self, upstream, corpus, layer_ids, sizes, dev, move, amp_dtype, store_dtype,
                 progress, name):
        self.upstream, self.corpus, self.layer_ids, self.sizes = upstream, corpus, layer_ids, sizes
        self.dev, self.move, self.amp_dtype, self.store_dtype = dev, move, amp_dtype, store_dtype
        self.progress, self.name = progress, name

    def amp(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dev.type, dtype=self.amp_dtype)

    def run(self, todo, sink, done: int) -> None:
        from tqdm.auto import tqdm

        with eval_session(self.upstream, self.dev, move=self.move), \
                tqdm(total=len(self.corpus), initial=done, unit="utt", disable=not self.progress,
                     desc=f"extract {self.name}", dynamic_ncols=True) as bar:
            for c, utts in todo:
                # errors and warnings (a peak > 1 after resampling) name the utterance
                ids = [self.corpus[i].id for i in utts]
                wavs, wavs_len = batch_wavs([self.corpus[i].wav for i in utts],
                                            allow_silence=True, ids=ids)
                frames, lens = _forward_batch(self, wavs, wavs_len, self.store_dtype, ids)
                sink(c, utts, frames, lens)
                bar.update(len(utts))
