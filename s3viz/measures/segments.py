"""Segment probes: each phone (or word) of the alignments is one example, its frames' mean.

The segments come from the alignments and the frame counts alone
(:func:`s3viz.segments.segment_table`), so they are known before the first
pass; each batch pools the frames of its utterances' segments, and a ridge
probe (:class:`~s3viz.measures.probe.RidgeProbe`, utterance level over the
segments) takes them as its examples, an utterance's segments kept in one fold.
The tables are those of ``probe_layers(level="segment")`` without control tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..probe.ridge import LAMBDAS
from ..probe.tables import segment_result, segment_results
from ..segments import common_segments, segment_table
from ._engine import Batch, Context, CorpusLayers, Measure
from .probe import RidgeProbe

__all__ = ["SegmentProbe"]


class _Segments:
    """The segments of one target: their labels (as utterance metadata) and frames."""

    def __init__(self, labels: pd.DataFrame, group_ids: list):
        self.labels, self._group_ids = labels, group_ids
        self.ids = labels["id"].tolist()
        self.phones = [None] * len(labels)

    def __len__(self) -> int:
        return len(self.ids)


class SegmentProbe(Measure):
    """Cross-validated ridge probes of segments (phones, words) of every layer.

    Args:
        target: alignment column(s) whose segments are the examples (``"phone"``,
            ``"word"``; silence left out).
        folds, split_by, seed, lambdas: as for :class:`RidgeProbe`; an
            utterance's segments stay in one fold.

    ``compute()`` gives the table of ``probe_layers(level="segment")``
    (``attrs["n_dropped"]``: segments owning no frame, per target).
    """

    name = "segments"
    passes = 2

    def __init__(self, target: str | Sequence[str] = "phone", *, folds: int = 5,
                 split_by: str | dict = "auto", seed: int = 0,
                 lambdas: Sequence[float] = LAMBDAS):
        super().__init__()
        probe = RidgeProbe(target, folds=folds, split_by=split_by, seed=seed, lambdas=lambdas)
        self.probes = {t: RidgeProbe(t, folds=folds, split_by=probe.split_by[t], seed=seed,
                                     lambdas=lambdas) for t in probe.targets}

    def setup(self, ctx: Context) -> None:
        self.ctx, view = ctx, CorpusLayers(ctx)
        self.spans, self.dropped = {}, {}
        for t, probe in self.probes.items():
            tables = [segment_table(view, s, t) for s in range(ctx.num_layers)]
            kept, labels, self.dropped[t] = common_segments(tables, t)
            utt = kept[0]["utt"].to_numpy()
            # per utterance: its segments and, per layer, their frame spans
            self.spans[t] = {int(u): (np.flatnonzero(utt == u),
                                      [(k["frame_start"].to_numpy()[utt == u],
                                        k["frame_end"].to_numpy()[utt == u]) for k in kept])
                             for u in np.unique(utt)}
            seg = _Segments(labels, kept[0]["id"].tolist())
            mine = np.flatnonzero(np.isin(utt, ctx.positions))
            ones = np.ones((len(labels), ctx.num_layers), dtype=np.int64)
            probe.setup(Context(seg, mine, ctx.layer_ids, ctx.sizes, ctx.rates, ctx.fields,
                                ctx.device, ctx.reduce, ctx.weights, ctx.store_dtype,
                                lambda ones=ones: ones))

    def _segment_batch(self, t: str, batch: Batch) -> Batch | None:
        """The batch's segments of ``t`` as a batch of one-frame "utterances"."""
        rows, pooled = [], [[] for _ in range(self.ctx.num_layers)]
        offsets = np.vstack([np.zeros((1, batch.lens.shape[1]), dtype=np.int64),
                             np.cumsum(batch.lens, 0)])
        for b, u in enumerate(batch.positions):
            if int(u) not in self.spans[t]:
                continue
            seg, per_layer = self.spans[t][int(u)]
            rows.append(seg)
            for s, (f0, f1) in enumerate(per_layer):
                x = batch.frames[s][offsets[b, s]:offsets[b + 1, s]]
                pooled[s].extend(x[a:e].double().mean(0).to(x.dtype) for a, e in zip(f0, f1))
        if not rows:
            return None
        pos = np.concatenate(rows)
        frames = [torch.stack(p) for p in pooled]
        return Batch(self.probes[t].ctx, pos, frames,
                     np.ones((len(pos), self.ctx.num_layers), dtype=np.int64))

    def update(self, batch: Batch, pass_index: int) -> None:
        for t, probe in self.probes.items():
            seg = self._segment_batch(t, batch)
            if seg is not None:
                probe.update(seg, pass_index)

    def merge(self, pass_index: int, reduce) -> None:
        for probe in self.probes.values():
            probe.merge(pass_index, reduce)

    def end_pass(self, pass_index: int) -> None:
        for probe in self.probes.values():
            probe.end_pass(pass_index)

    def compute(self) -> pd.DataFrame:
        ctx = self.ctx
        layer_ids = dict(zip(ctx.layer_index, ctx.layer_ids))
        tables = [segment_result(probe.compute(), ctx.layer_index, layer_ids)
                  for probe in self.probes.values()]
        return segment_results(tables, dict(self.dropped))
