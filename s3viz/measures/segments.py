"""Segment probes: each phone (or word) of the alignments is one example, its frames' mean.

The segments come from the alignments and the frame counts alone
(:func:`s3viz.segments.segment_table`), so they are known before the first
pass; each batch pools the frames of its utterances' segments, and a ridge
probe (:class:`~s3viz.measures.probe.RidgeProbe`, utterance level over the
segments) takes them as its examples, an utterance's segments kept in one fold.
This is ``probe_layers(level="segment")`` (``docs/probes.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..probe.ridge import LAMBDAS
from ..probe.tables import concat_tables
from ..segments import common_segments, frames_precision, segment_table
from ._engine import Batch, Context, CorpusLayers, Measure
from .probe import RidgeProbe

__all__ = ["SegmentProbe"]

DURATION_TIER = "phone"
"""The tier whose segments the target ``"duration"`` measures."""

_NARROW = (torch.float16, torch.float32)  # the precisions frames may carry (Profile.exact)


class _Segments:
    """The segments of one target as utterances' metadata (``_precision``: after pass 1)."""

    def __init__(self, labels: pd.DataFrame):
        self.labels, self._group_ids = labels, labels["utterance"].tolist()
        self.ids = labels["id"].tolist()
        self.phones = [None] * len(labels)
        self._precision = None

    def __len__(self) -> int:
        return len(self.ids)


class SegmentProbe(Measure):
    """Cross-validated ridge probes of segments (phones, words) of every layer.

    Args:
        target: alignment column(s) whose segments are the examples (``"phone"``,
            ``"word"``; silence left out).
        folds, split_by, seed, lambdas, utterances: as for
            :class:`RidgeProbe`; an utterance's segments stay in one fold.
        control: as for :class:`RidgeProbe`; ``True`` types a segment by its label
            and its neighbours' (``"context"``).
        bootstrap, confidence: as for :class:`RidgeProbe` (a segment's unit is its
            speaker, or its utterance).

    The target ``"duration"`` regresses each phone segment's duration in seconds
    (the segments of the ``"phone"`` tier).

    ``compute()`` gives the table of ``probe_layers(level="segment")``
    (``attrs["n_dropped"]``: segments owning no frame, per target).
    """

    name = "segments"

    def __init__(self, target: str | Sequence[str] = "phone", *, folds: int = 5, split_by: str | dict = "auto", seed: int = 0,
                 lambdas: Sequence[float] = LAMBDAS, control: bool | str = False,
                 utterances=None, profile_pass: bool = False, bootstrap: int | None = None,
                 confidence: float = 0.95):
        super().__init__()
        kw = dict(level="utterance", folds=folds, seed=seed, lambdas=lambdas,
                  control="context" if control is True else control, profile_pass=profile_pass,
                  bootstrap=bootstrap, confidence=confidence)
        probe = RidgeProbe(target, split_by=split_by, **kw)
        self.probes = {t: RidgeProbe(t, split_by=probe.split_by[t], **kw) for t in probe.targets}
        self.utterances = utterances
        self.passes = probe.passes

    def setup(self, ctx: Context) -> None:
        self.ctx, view = ctx, CorpusLayers(ctx)
        self.spans, self.dropped, self.segments = {}, {}, {}
        for t, probe in self.probes.items():
            tier = DURATION_TIER if t == "duration" else t
            tables = [segment_table(view, s, tier, utterances=self.utterances)
                      for s in range(ctx.num_layers)]
            kept, labels, self.dropped[t] = common_segments(tables, tier)
            utt = kept[0]["utt"].to_numpy()
            # per utterance: its segments and, per layer, their frame spans
            self.spans[t] = {int(u): (np.flatnonzero(utt == u),
                                      [(k["frame_start"].to_numpy()[utt == u],
                                        k["frame_end"].to_numpy()[utt == u]) for k in kept])
                             for u in np.unique(utt)}
            seg = self.segments[t] = _Segments(labels)
            mine = np.flatnonzero(np.isin(utt, ctx.positions))
            ones = np.ones((len(labels), ctx.num_layers), dtype=np.int64)
            probe.setup(Context(seg, mine, ctx.layer_ids, ctx.sizes, ctx.rates, ctx.fields,
                                ctx.device, ctx.reduce, ctx.weights, ctx.store_dtype,
                                lambda ones=ones: ones, layer_index=ctx.layer_index))
        # per layer and narrow dtype: some frame it does not hold exactly (the frames' precision)
        self.add_state("inexact", torch.zeros(ctx.num_layers, len(_NARROW), dtype=torch.int64))

    def _pooled(self, t: str, batch: Batch):
        """``(segment positions, per layer their means)`` of the batch's segments of ``t``."""
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
        return (np.concatenate(rows), [torch.stack(p) for p in pooled]) if rows else (None, None)

    def update(self, batch: Batch, pass_index: int) -> None:
        if pass_index == 0:
            for s, x in enumerate(batch.frames):
                for i, d in enumerate(_NARROW):
                    if not self.inexact[s, i] and not bool((x.to(d).to(x.dtype) == x).all()):
                        self.inexact[s, i] = 1
        for t, probe in self.probes.items():
            pos, frames = self._pooled(t, batch)
            if pos is not None:  # a batch of one-frame "utterances"
                probe.update(Batch(probe.ctx, pos, frames, np.ones(
                    (len(pos), self.ctx.num_layers), dtype=np.int64)), pass_index)

    def merge(self, pass_index: int, reduce) -> None:
        super().merge(pass_index, reduce)
        for probe in self.probes.values():
            probe.merge(pass_index, reduce)

    def end_pass(self, pass_index: int) -> None:
        if pass_index == 0:  # the precision the segments' frames carry, before any guard
            precision = [frames_precision(self.ctx.store_dtype, [
                d for d, bad in zip(_NARROW, row) if not bad]) for row in self.inexact.tolist()]
            for seg in self.segments.values():  # keyed as the probes number layers
                seg._precision = dict(zip(self.ctx.layer_index, precision))
        for probe in self.probes.values():
            probe.end_pass(pass_index)

    def compute(self) -> pd.DataFrame:
        tables = [probe.compute().assign(level="segment") for probe in self.probes.values()]
        return concat_tables([(None, t) for t in tables], n_dropped=dict(self.dropped))
