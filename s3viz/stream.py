"""Probes and CKA of a corpus in two streamed passes, without keeping its frames.

:func:`stream_analysis` computes the tables of ``probe_layers`` (ridge) and
``layer_similarity`` (feature CKA) holding one batch of frames at a time: a
statistics pass, then a scoring pass (or both read a disk store with
``cache_dir``), on one process or on shards. The passes, their memory and how
frame counts are known before the first pass: ``docs/streaming.md``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from . import _validate as _v
from .align import conv_lengths, layer_geometry
from .align import frame_labels as _align_frame_labels
from .extraction import (
    DEFAULT_MAX_BATCH_SECONDS,
    BatchRunner,
    as_corpus,
    bucket_plan,
    check_batching,
    check_upstream_arg,
    check_upstream_layers,
    extract,
    resolve_upstream_device,
)
from .probe import LAMBDAS, ProbeStats
from .probe.folds import (
    SPLIT_CHOICES,
    assign_folds,
    check_folds,
    check_heldout,
    check_split_by,
    resolve_split,
)
from .probe.layers import result_row, result_table
from .probe.ridge import (
    confusion_matrix,
    fold_train_counts,
    ridge_fit_folds,
    ridge_layer_utterance,
    sub_folds,
)
from ._labels import label_str, label_strings
from .probe.targets import ProbeTask, check_classes, resolve_level
from .similarity import CrossProducts, cka_table
from .store import LayerStore
from .upstreams._hub import weights_of

__all__ = ["stream_analysis", "StreamResult", "check_targets"]


class _Meta:
    """The corpus's frame-free metadata with the store interface :class:`ProbeTask` reads."""

    def __init__(self, corpus):
        self.ids = corpus.ids
        self.labels = corpus.labels
        self.phones = [u.phones for u in corpus]

    def __len__(self) -> int:
        return len(self.ids)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _check_shard(shard, n: int) -> np.ndarray:
    if shard is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(list(shard))
    if arr.size == 0:
        raise ValueError("shard selects no utterance: give this process at least one")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"shard must be utterance positions (ints), got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n:
        raise IndexError(f"shard positions must be in [0, {n}), got {arr.min()}..{arr.max()}")
    if len(np.unique(arr)) != len(arr):
        raise ValueError("shard positions must be unique")
    return np.sort(arr).astype(np.int64)


def _split_of(split_by, targets, labels, folds) -> dict:
    if isinstance(split_by, str):
        split_by = {t: split_by for t in targets}
    if not isinstance(split_by, dict):
        raise TypeError(f"split_by must be one of {SPLIT_CHOICES} or a dict target -> split, "
                        f"got {type(split_by).__name__}")
    missing = [t for t in targets if t not in split_by]
    if missing:
        raise ValueError(f"split_by has no entry for target(s) {missing}")
    for t in targets:
        check_split_by(split_by[t], f"split_by[{t!r}]")
    return {t: resolve_split(labels, split_by[t], t, folds) for t in targets}


def check_targets(corpus, target: str | Sequence[str], split_by="auto", folds: int = 5,
                  seed: int = 0) -> dict:
    """Refuse, before anything is extracted, the targets, splits and folds that
    :func:`stream_analysis` (or a probe of the extracted frames) would refuse: unknown
    targets, labels missing, fewer groups than folds, one class per example. Frame-level
    fold sizes are judged by audio length here (the frame counts come with extraction).

    Returns:
        ``{target: split}`` as resolved (``"auto"`` made concrete).
    """
    targets = [target] if isinstance(target, str) else list(target)
    splits = _split_of(split_by, targets, corpus.labels, folds)
    meta = _Meta(corpus)
    seconds = np.array([u.num_samples for u in corpus], dtype=np.float64)
    for t in targets:
        _Target(meta, t, splits[t], folds, seed, lambda: seconds, 1)
    return splits


_STREAM_FIXES = {
    "labels": "fill the corpus's {target!r} labels or stream a corpus of the labelled "
              "utterances only (corpus[positions])",
    "alignments": "stream a corpus of the aligned utterances only (corpus[positions])",
}


class _Target:
    """One probe target: its labels, folds and per-layer statistics."""

    def __init__(self, meta, name, split_by, folds, seed, frame_weights_fn, num_layers):
        self.name, self.split_by = name, split_by
        self.level = resolve_level(meta, name, None)
        sel = np.arange(len(meta), dtype=np.int64)
        # utterance level: classes, stratified folds, checks; frame level: alignment checks
        self.task = ProbeTask(meta, name, self.level, sel, folds, split_by, seed, False, None,
                              fixes=_STREAM_FIXES)
        if self.level == "frame":
            self.task.utt_fold = assign_folds(self.task.groups, frame_weights_fn(), folds, seed,
                                               what=split_by)
            values = {v for ph in meta.phones for v in label_strings(ph[name].tolist())}
            self.classes = np.asarray(sorted(v for v in values if v != ""), dtype=object)
            check_classes(name, self.classes, None, where="in the corpus's alignments")
            self.index = {c: i for i, c in enumerate(self.classes)}
            self.seen = np.zeros(len(self.classes), dtype=np.int64)
        else:
            self.classes = np.asarray(self.task.classes, dtype=object)
        self.sub = 2 if folds == 2 else 1
        self.utt_sub = sub_folds(self.task, self.sub)
        self.stats: list[ProbeStats | None] = [None] * num_layers
        self.models: list = [None] * num_layers
        self.conf: list = [None] * num_layers
        self.result: list = [None] * num_layers
        self.counts: list = [None] * num_layers
        # utterance level with no more utterances than dimensions: keep the pooled rows
        # (at most hidden x hidden numbers) and solve in the dual, as probe_layers does
        self.rows: list = [None] * num_layers


class _Streamer:
    def __init__(self, corpus, shard, targets, rates, fields, sizes, folds, device, reduce,
                 cka_pairs, cka_level, lambdas):
        self.corpus, self.shard, self.targets = corpus, shard, targets
        self.rates, self.fields, self.sizes = rates, fields, sizes
        self.folds, self.device, self.reduce, self.lambdas = folds, device, reduce, lambdas
        self.cka = None if cka_pairs is None else CrossProducts(cka_pairs, device, torch.float64)
        self.cka_level = cka_level
        self.expected_len0 = None  # frames of layer 0 per corpus position, checked in pass 1
        n = len(corpus)
        for t in targets:
            for s, h in enumerate(sizes):
                if t.level == "utterance" and n <= h:
                    t.rows[s] = torch.zeros(n, h, dtype=torch.float32)
                else:
                    t.stats[s] = ProbeStats.zeros(folds * t.sub, h, len(t.classes),
                                                  dtype=torch.float64, device=device)

    # -- per batch ------------------------------------------------------------
    def _frame_classes(self, t: _Target, pos: np.ndarray, lens: np.ndarray, s: int,
                       cache: dict) -> np.ndarray:
        key = (t.name, self.rates[s], self.fields[s], lens[:, s].tobytes())
        if key not in cache:
            parts = []
            for b, u in enumerate(pos):
                lab = _align_frame_labels(self.corpus[int(u)].phones, int(lens[b, s]),
                                          self.rates[s], column=t.name,
                                          receptive_field_samples=self.fields[s])
                parts.append(np.fromiter((t.index.get(label_str(v), -1) for v in lab),
                                         dtype=np.int64, count=len(lab)))
            cache[key] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return cache[key]

    def _examples(self, t: _Target, pos, frames, lens, s, cache):
        """(x, class, corpus position) of the batch's labelled examples of layer ``s``."""
        if t.level == "frame":
            y = self._frame_classes(t, pos, lens, s, cache)
            utt = np.repeat(pos, lens[:, s])
            m = y >= 0
            return frames[s][torch.from_numpy(m)], y[m], utt[m]
        return self._pooled(pos, frames, lens, s, cache), t.task.y[pos], pos

    def _pooled(self, pos, frames, lens, s, cache) -> torch.Tensor:
        key = ("pooled", s)
        if key not in cache:
            if (lens[:, s] == 0).any():
                bad = [self.corpus[int(u)].id for u in pos[lens[:, s] == 0]]
                raise ValueError(f"{len(bad)} utterance(s) have no frames in stored layer {s} "
                                 f"(e.g. {bad[:5]}), so no pooled vector; leave them out")
            # averaged in float64 as LayerStore.pooled does (so streamed = stored)
            cache[key] = torch.stack([p.mean(0) for p in torch.split(
                frames[s].double(), lens[:, s].tolist())]).float()
        return cache[key]

    def statistics(self, pos: np.ndarray, frames, lens: np.ndarray) -> None:
        if self.expected_len0 is not None:
            want = self.expected_len0[pos]
            if not np.array_equal(want, lens[:, 0]):
                j = int(np.flatnonzero(want != lens[:, 0])[0])
                raise RuntimeError(
                    f"the upstream gave {int(lens[j, 0])} frames in stored layer 0 for "
                    f"utterance {self.corpus[int(pos[j])].id!r}, but its conv_layers predict "
                    f"{int(want[j])}: its conv_layers do not describe its output lengths"
                )
        cache: dict = {}
        for t in self.targets:
            for s in range(len(self.sizes)):
                x, y, utt = self._examples(t, pos, frames, lens, s, cache)
                if t.rows[s] is not None:
                    t.rows[s][torch.from_numpy(pos)] = x
                    continue
                if t.level == "frame":
                    t.seen += np.bincount(y, minlength=len(t.classes))
                if len(y):
                    t.stats[s].update(x, torch.from_numpy(y)[:, None],
                                      torch.from_numpy(t.utt_sub[utt]))
        if self.cka is not None:
            if self.cka_level == "frame":
                if not all(np.array_equal(lens[:, 0], lens[:, s]) for s in range(lens.shape[1])):
                    raise ValueError("frame-level CKA needs the same frames in every layer; "
                                     "use cka_level='utterance'")
                self.cka.add(frames)
            else:
                self.cka.add([self._pooled(pos, frames, lens, s, cache)
                              for s in range(len(self.sizes))])

    def solve(self) -> None:
        red = self.reduce
        for t in self.targets:
            keep, warned = None, False
            if t.level == "frame":
                seen = red(torch.from_numpy(t.seen)).numpy()
                keep = np.flatnonzero(seen > 0)
                t.remap = np.full(len(t.classes), -1, dtype=np.int64)
                t.remap[keep] = np.arange(len(keep))
                t.classes = t.classes[keep]
                if len(t.classes) < 2:
                    raise ValueError(
                        f"target {t.name!r} has {len(t.classes)} class(es) among the labelled "
                        "frames: nothing to classify; choose another target or more utterances")
            for s in range(len(self.sizes)):
                if t.rows[s] is not None:
                    x = red(t.rows[s]).to(self.device)
                    t.rows[s] = None
                    c = len(t.classes)
                    t.result[s] = ridge_layer_utterance(t.task, x, [slice(0, c)], c,
                                                         self.lambdas, torch.float64)
                    continue
                st = t.stats[s].reduced(red)
                if keep is not None:
                    st = st.keep_targets(keep)
                    # frame labels are known only now: the probes' held-out class check
                    # (utterance level: ProbeTask did it before the first pass)
                    test = st.sum_y.reshape(self.folds, t.sub, -1).sum(1).cpu().numpy()
                    unseen = check_heldout(test, test.sum(0, keepdims=True) - test,
                                           target=t.name, level="frame", split_by=t.split_by,
                                           classes=t.classes, items="frame", warn=not warned)
                    warned = warned or bool(unseen.any())
                models = ridge_fit_folds(st, self.folds, t.sub, [slice(0, len(t.classes))],
                                          self.lambdas)
                t.models[s] = (torch.stack([m[0] for m in models]),
                               torch.stack([m[1] for m in models]),
                               np.mean([m[2] for m in models], axis=0))
                t.counts[s] = fold_train_counts(st, self.folds, t.sub)
                t.conf[s] = np.zeros((1, self.folds, len(t.classes), len(t.classes)),
                                     dtype=np.int64)
                t.stats[s] = None  # free the hidden x hidden matrices before the second pass

    def score(self, pos: np.ndarray, frames, lens: np.ndarray) -> None:
        cache: dict = {}
        for t in self.targets:
            c = len(t.classes)
            for s in range(len(self.sizes)):
                if t.result[s] is not None:  # solved in the dual after pass 1
                    continue
                x, y, utt = self._examples(t, pos, frames, lens, s, cache)
                if not len(y):
                    continue
                if t.level == "frame":
                    y = t.remap[y]
                w, b, _ = t.models[s]
                fold = t.task.utt_fold[utt]
                yt = torch.from_numpy(y).to(self.device)
                for k in np.unique(fold).tolist():
                    r = torch.from_numpy(fold == k)
                    scores = x[r].to(device=self.device, dtype=w.dtype) @ w[k] + b[k]
                    t.conf[s][0, k] += confusion_matrix(yt[r.to(self.device)], scores.argmax(1), c)

    def finish(self) -> None:
        for t in self.targets:
            for s in range(len(self.sizes)):
                if t.result[s] is not None:
                    continue
                conf = self.reduce(torch.from_numpy(t.conf[s])).cpu().numpy()
                counts, n_train = t.counts[s]
                t.result[s] = (conf, counts, n_train, t.models[s][2])


def _agree(work: Callable[[], None], reduce) -> None:
    """Run ``work`` (no collective calls inside), then stop every shard if any failed.

    A shard raising alone would leave the others waiting in the next ``reduce``;
    here each shard adds a failure flag first, so all raise together (the failing
    one its own error, the others a RuntimeError saying so).
    """
    err = None
    try:
        work()
    except Exception as e:  # noqa: BLE001 - re-raised below, after the agreement
        err = e
    failed = reduce(torch.tensor([0.0 if err is None else 1.0], dtype=torch.float64))
    if err is not None:
        raise err
    if float(failed[0]) > 0:
        raise RuntimeError("another shard failed in stream_analysis (its own error says "
                           "why); this shard stops too")


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Batches of different shapes leave the C heap fragmented, and without this
    the resident memory creeps up over a long stream although nothing is kept.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # musl or another libc
        return None


_LIBC = _load_libc()


def _predicted_len0(upstream, layer_id: int, num_samples: np.ndarray) -> np.ndarray | None:
    """Frames of upstream layer ``layer_id`` per utterance from its ``conv_layers``, or None."""
    try:
        _, _, conv = layer_geometry(upstream, layer_id)
    except (TypeError, IndexError, ValueError):
        return None
    if conv is None:
        return None
    return conv_lengths(torch.as_tensor(num_samples), conv).numpy().astype(np.int64)


class StreamResult(NamedTuple):
    """What :func:`stream_analysis` computed (a named tuple).

    Fields: ``probes`` (the columns of :func:`s3viz.probe_layers`, or None),
    ``cka`` (the columns of :func:`s3viz.layer_similarity`, or None; both with
    ``attrs["weights"]``, the upstream's :func:`~s3viz.upstreams.weights_of`),
    ``store`` (the disk LayerStore with ``cache_dir``, else None), ``passes``
    (upstream passes of the streaming itself: 0 with ``cache_dir``, whose
    frames ``s3viz.extract`` wrote once or found there) and ``shard`` (the
    utterance positions this process read).
    """

    probes: pd.DataFrame | None
    cka: pd.DataFrame | None
    store: LayerStore | None
    passes: int
    shard: list


def stream_analysis(
    upstream,
    corpus,
    *,
    target: str | Sequence[str] = "phone",
    upstream_layers: Sequence[int] | None = None,
    folds: int = 5,
    split_by: str | dict = "auto",
    seed: int = 0,
    lambdas: Sequence[float] = LAMBDAS,
    cka: bool = False,
    cka_level: str = "frame",
    shard=None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    max_batch_seconds: float | None = DEFAULT_MAX_BATCH_SECONDS,
    device=None,
    cache_dir=None,
    progress: bool = False,
) -> StreamResult:
    """Ridge probes and CKA of every layer in two streamed passes (``docs/streaming.md``).

    Args:
        upstream: an s3prl-style upstream (as for :func:`s3viz.extract`).
        corpus: the *whole* :class:`s3viz.data.Corpus` (the same on every shard).
        target: probe target(s), one name or a sequence (frame-level:
            alignment columns such as ``"phone"``; utterance-level: label
            columns such as ``"speaker"``). Empty: no probe.
        upstream_layers: the upstream's hidden states to analyse, by index
            (default all), as for :func:`s3viz.extract`; results number them
            ``layer`` 0.. with ``upstream_layer`` the index.
        folds, seed, lambdas: as for :func:`s3viz.probe_layers`.
        split_by: ``"auto"`` (as for :func:`s3viz.probe_layers`), ``"speaker"``,
            ``"utterance"``, or a dict target -> split (e.g. ``{"phone":
            "speaker", "speaker": "utterance"}``).
        cka: also compute the layer-by-layer linear CKA (the
            :func:`s3viz.layer_similarity` ``estimator="feature"`` values).
        cka_level: ``"frame"`` (all layers must have the same frames) or
            ``"utterance"`` (mean-pooled).
        shard: positions of the utterances this process extracts (default all),
            e.g. :func:`s3viz.distributed.shard_indices`.
        reduce: ``reduce(tensor) -> tensor`` summing a tensor over all shards
            (e.g. :func:`s3viz.distributed.all_reduce_sum`); needed with ``shard``.
        batch_size, max_batch_seconds, device: as for :func:`s3viz.extract`.
        cache_dir: None runs the upstream in both passes. A folder: the shard's
            frames are extracted once into a disk :class:`~s3viz.store.LayerStore`
            there (reused when already complete) and both passes read it.
        progress: print each pass's time to stderr.

    Returns:
        A :class:`StreamResult`: ``probes``, ``cka``, ``store``, ``passes``,
        ``shard``.
    """
    num_layer, all_sizes, all_rates, all_fields, _ = check_upstream_arg(upstream)
    corpus = as_corpus(corpus)
    layer_ids = check_upstream_layers(upstream_layers, num_layer)
    check_batching(batch_size, max_batch_seconds)
    folds = check_folds(folds)
    lambdas = _v.numbers(lambdas, "lambdas")
    seed = _v.integer(seed, "seed", minimum=0)
    targets = [target] if isinstance(target, str) else list(target)
    if len(set(targets)) != len(targets) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"target must be a label name or distinct label names (str), got "
                         f"{target!r}")
    splits = _split_of(split_by, targets, corpus.labels, folds)
    if cka_level not in ("frame", "utterance"):
        raise ValueError(f"cka_level must be 'frame' or 'utterance', got {cka_level!r}")
    if (shard is not None) != (reduce is not None):
        raise ValueError("a sharded run needs both `shard` (this process's utterances) and "
                         "`reduce` (a sum over shards); pass both or neither")
    reduce = reduce or _identity
    pos_all = _check_shard(shard, len(corpus))
    if not targets and not cka:
        raise ValueError("nothing to compute: give a target and/or cka=True")
    dev, move = resolve_upstream_device(upstream, device)
    sizes = [all_sizes[i] for i in layer_ids]
    rates = [all_rates[i] for i in layer_ids]
    fields = [all_fields[i] for i in layer_ids]
    if cka and cka_level == "frame" and len(set(rates)) > 1:
        raise ValueError(f"frame-level CKA needs one downsample rate, got {sorted(set(rates))}; "
                         "use cka_level='utterance'")
    num_samples = np.array([u.num_samples for u in corpus], dtype=np.int64)
    sub = corpus[pos_all.tolist()]
    plan = [list(map(int, b)) for b in bucket_plan(num_samples[pos_all], batch_size,
                                                     max_batch_seconds)]
    runner = BatchRunner(upstream, sub, layer_ids, sizes, dev, move, None,
                     torch.float32, False, "stream")
    store = None
    if cache_dir is not None:
        def _store():
            nonlocal store
            store = extract(upstream, sub, upstream_layers=layer_ids, batch_size=batch_size,
                            max_batch_seconds=max_batch_seconds, device=device,
                            cache_dir=cache_dir, progress=progress)

        _agree(_store, reduce)
    passes = 0

    def each_batch(fn):
        """Call ``fn(corpus positions, frames, lens)`` for every batch of the shard."""
        nonlocal passes
        t0 = time.perf_counter()
        if store is not None:
            for utts, frames, lens in store.iter_chunks():
                fn(pos_all[utts], frames, lens)
                _trim_heap()
        else:
            passes += 1

            def sink(c, utts, frames, lens):
                fn(pos_all[utts], frames, lens)
                _trim_heap()

            runner.run(list(enumerate(plan)), sink, done=0)
        if progress:
            print(f"s3viz.stream_analysis: pass over {len(pos_all)} utterances in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

    if shard is not None:  # every utterance in exactly one shard (the same check on every rank)
        cover = torch.zeros(len(corpus), dtype=torch.float64)
        cover[torch.from_numpy(pos_all)] = 1.0
        cover = reduce(cover)
        if not bool((cover == 1).all()):
            bad = [corpus.ids[i] for i in torch.nonzero(cover != 1).squeeze(1).tolist()[:5]]
            raise ValueError(f"the shards must hold every utterance of the corpus exactly once; "
                             f"e.g. {bad} are missing or in several shards")

    def agreed(fn):
        """Run a pass of ``fn`` over this shard; every shard stops if any failed."""
        _agree(lambda: each_batch(fn), reduce)

    meta = _Meta(corpus)
    len0 = {}

    def frame_weights():
        if "w" not in len0:
            pred = _predicted_len0(upstream, layer_ids[0], num_samples)
            if pred is None:  # count the frames with one more pass
                mine = torch.zeros(len(corpus), dtype=torch.int64)

                def count(p, frames, lens):
                    mine[torch.from_numpy(p)] = torch.from_numpy(lens[:, 0])

                agreed(count)
                pred = reduce(mine).numpy()
            else:
                len0["check"] = True
            len0["w"] = pred
        return len0["w"]

    tasks = [_Target(meta, t, splits[t], folds, seed, frame_weights, len(sizes))
             for t in targets]
    pairs = None
    if cka:
        n_l = len(sizes)
        pairs = [(i, j) for i in range(n_l) for j in range(i, n_l)]
    st = _Streamer(corpus, pos_all, tasks, rates, fields, sizes, folds, dev, reduce, pairs,
                   cka_level, tuple(float(v) for v in lambdas))
    if len0.get("check"):
        st.expected_len0 = len0["w"]
    agreed(st.statistics)
    cka_df = None
    if cka:
        hsic, n = st.cka.hsic(reduce=None if reduce is _identity else reduce, sizes=sizes)
        if n < 4:
            raise ValueError(f"only {n} frames to compare; CKA needs at least 4")
        idx = list(range(len(sizes)))
        cka_df = cka_table(hsic, idx, idx, idx, idx, upstream_layers=list(layer_ids),
                            other_upstream_layers=list(layer_ids), num_frames=int(n),
                            estimator="feature", level=cka_level, method="cka",
                            weights=weights_of(upstream))
    probes = None
    if tasks:
        st.solve()
        agreed(st.score)
        st.finish()
        rows, fold_accuracy = [], {}
        for t in tasks:
            for s in range(len(sizes)):
                rows.append(result_row(t.name, "ridge", t.level, s, int(layer_ids[s]),
                                        len(t.classes), folds, False, t.result[s],
                                        fold_accuracy))
        probes = result_table(rows, fold_accuracy, False, splits, folds=folds, seed=seed,
                              weights=weights_of(upstream))
    return StreamResult(probes, cka_df, store, passes, pos_all.tolist())
