"""Any list of measures over an upstream run on a corpus, without keeping its frames.

:func:`stream_analysis` runs :mod:`s3viz.measures` in as many streamed passes as they
need, a batch of frames at a time, on one process or on shards (``docs/streaming.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .extraction import (DEFAULT_MAX_BATCH_SECONDS, as_corpus, check_batching,
                         check_upstream_arg, check_upstream_layers, extract,
                         resolve_upstream_device)
from .measures import build_measures
from .measures._engine import (Context, StoreSource, StreamSource, agree, CorpusMeta,
                               run_measures)
from .measures.probe import RidgeProbe
from .store import LayerStore

__all__ = ["stream_analysis", "StreamResult", "check_targets"]


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


def check_targets(corpus, target: str | Sequence[str], split_by="auto", folds: int = 5,
                  seed: int = 0) -> dict:
    """Refuse, before anything is extracted, the targets, splits and folds that a
    :class:`s3viz.measures.RidgeProbe` would refuse (frame-level folds judged by audio length).

    Returns:
        ``{target: level}``: ``"frame"`` for a column of the alignments, ``"utterance"``
        for a label of the corpus.
    """
    corpus = as_corpus(corpus)
    probe = RidgeProbe(target, folds=folds, split_by=split_by, seed=seed)
    seconds = np.array([[u.num_samples] for u in corpus], dtype=np.int64)
    ctx = Context(CorpusMeta(corpus), np.arange(len(corpus)), [0], [1], [1], [1],
                  torch.device("cpu"), lambda t: t, "", torch.float32, lambda: seconds)
    probe.setup(ctx)
    return {t.target: t.level for t in probe.tasks}


@dataclass(frozen=True)
class StreamResult:
    """What :func:`stream_analysis` computed.

    Attributes:
        tables: ``{measure name: DataFrame}`` (``result["probe"]`` reads it).
        store: the disk LayerStore with ``cache_dir``, else None.
        passes: upstream passes of the streaming itself (0 with ``cache_dir``).
        shard: the utterance positions this process read.
    """

    tables: dict
    store: LayerStore | None
    passes: int
    shard: list

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def stream_analysis(
    upstream,
    corpus,
    measures: Sequence = ("probe",),
    *,
    upstream_layers: Sequence[int] | None = None,
    shard=None,
    reduce=None,
    batch_size: int | None = None,
    max_batch_seconds: float | None = DEFAULT_MAX_BATCH_SECONDS,
    device=None,
    cache_dir=None,
    progress: bool = False,
) -> StreamResult:
    """Run ``measures`` over every layer of ``upstream`` on ``corpus``, streamed.

    Args:
        upstream: an s3prl-style upstream (as for :func:`s3viz.extract`).
        corpus: the *whole* :class:`s3viz.data.Corpus` (the same on every shard).
        measures: :mod:`s3viz.measures` objects (``RidgeProbe("phone", folds=5)`` ...)
            or their names (default settings).
        upstream_layers: the hidden states to analyse, as for :func:`s3viz.extract`.
        shard: positions of the utterances this process extracts (default all).
        reduce: sums a tensor over all shards (needed with ``shard``).
        batch_size, max_batch_seconds, device: as for :func:`s3viz.extract`.
        cache_dir: a folder where the shard's frames are extracted once (or reused) into a
            disk :class:`~s3viz.store.LayerStore` every pass reads; None: the upstream
            runs in every pass.
        progress: print each pass's time to stderr.

    Returns:
        A :class:`StreamResult`.
    """
    num_layer, all_sizes, all_rates, all_fields, _ = check_upstream_arg(upstream)
    corpus = as_corpus(corpus)
    layer_ids = check_upstream_layers(upstream_layers, num_layer)
    check_batching(batch_size, max_batch_seconds)
    measures = build_measures(measures)
    if (shard is not None) != (reduce is not None):
        raise ValueError("a sharded run needs both `shard` (this process's utterances) and "
                         "`reduce` (a sum over shards); pass both or neither")
    positions = _check_shard(shard, len(corpus))
    dev, move = resolve_upstream_device(upstream, device)
    sizes, rates, fields = ([a[i] for i in layer_ids] for a in (all_sizes, all_rates, all_fields))
    store = None
    if cache_dir is not None:
        def _store():
            nonlocal store
            store = extract(upstream, corpus[positions.tolist()], upstream_layers=layer_ids,
                            batch_size=batch_size, max_batch_seconds=max_batch_seconds,
                            device=device, cache_dir=cache_dir, progress=progress)

        agree(_store, reduce or (lambda t: t))
        source = StoreSource(store, CorpusMeta(corpus), positions)
    else:
        source = StreamSource(upstream, corpus, layer_ids, sizes, rates, fields, dev, move,
                              positions, batch_size, max_batch_seconds)
    tables = run_measures(measures, source, device=dev, reduce=reduce, progress=progress)
    return StreamResult(tables, store, source.passes, positions.tolist())
