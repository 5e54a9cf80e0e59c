"""Ridge probes of every layer: statistics, then scoring (after a profile, for a store).

One pass sums :class:`~s3viz.probe.ProbeStats` per fold (or keeps the pooled rows of
utterance targets with no more utterances than dimensions, solved in the dual), its
end solves every fold, the next counts each held-out fold's confusion matrix; with
``profile_pass=True`` a first pass profiles each layer for its numerics guard. The
maths: ``docs/probes.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .. import _validate as _v
from .._numerics import Guard, Profile, float64_sums_span, profile_guard, warn_degenerate
from ..probe.folds import (SPLIT_CHOICES, check_folds, check_split_by, fold_class_counts,
                           resolve_split)
from .._bootstrap import bootstrap_options, corpus_bootstrap
from ..probe.ridge import (LAMBDAS, add_confusions, add_residuals, fold_train_counts,
                           ridge_fit_folds, ridge_layer_utterance, stacked)
from ..probe.stats import ProbeStats
from ..probe.tables import (interval_table, regression_row, result_row, result_table,
                            score_replicates)
from ..probe.targets import ProbeTask, check_control, resolve_level
from ..store import utterance_selection
from ._engine import Batch, Context, Measure, _identity

__all__ = ["RidgeProbe"]

# what a streamed run can do about a target the corpus cannot support
_FIXES = {
    "labels": "fill the corpus's {target!r} labels or probe the labelled utterances only "
              "(`utterances=`, or stream corpus[positions])",
    "alignments": "probe the aligned utterances only (`utterances=`, or stream "
                  "corpus[positions])",
}


def _reduce_list(values: list, reduce) -> list:
    if reduce is _identity:  # one process: re-basing every layer's sums would only copy them
        return values
    return [None if v is None else (v.reduced(reduce) if isinstance(v, ProbeStats)
                                     else reduce(v)) for v in values]


class TaskCorpus:
    """The corpus's metadata and frame counts as :class:`ProbeTask` reads a store (frame
    labels from the alignments, as :meth:`LayerStore.frame_labels` reads them)."""

    def __init__(self, ctx: Context):
        meta, self.ctx = ctx.meta, ctx
        self.ids, self.labels, self.phones = meta.ids, meta.labels, meta.phones
        self.tracks = getattr(meta, "tracks", None)
        if getattr(meta, "_group_ids", None) is not None:  # a store of segments
            self._group_ids = meta._group_ids
        self.downsample_rates, self.receptive_fields = ctx.rates, ctx.fields

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self, layer: int) -> np.ndarray:
        return self.ctx.lengths()[:, layer]

    def frame_labels(self, layer: int, column: str, utterances=None) -> np.ndarray:
        n = self.lengths(layer)
        pos = range(len(self)) if utterances is None else utterances
        parts = [self.ctx.frame_labels(int(u), layer, column, int(n[u])) for u in pos]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

    def frame_values(self, layer: int, column: str, utterances=None) -> np.ndarray:
        n = self.lengths(layer)
        pos = range(len(self)) if utterances is None else utterances
        parts = [self.ctx.frame_values(int(u), layer, column, int(n[u])) for u in pos]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


class RidgeProbe(Measure):
    """Cross-validated ridge probes of every layer for one or more targets.

    Args:
        target: label name(s): alignment columns (``"phone"``) at frame level,
            ``corpus.labels`` columns (``"speaker"``) at utterance level.
        level: ``"frame"``, ``"utterance"`` or None (as :func:`s3viz.probe_layers`).
        folds, seed, lambdas: as for :func:`s3viz.probe_layers`.
        split_by: ``"auto"``, ``"speaker"``, ``"utterance"`` or a dict target -> split.
        control: ``True`` or a column defining the control type, as for
            :func:`s3viz.probe_layers`.
        bootstrap, confidence: resamples of speakers (or utterances) for intervals on
            the held-out scores (:mod:`s3viz._bootstrap`; None: none).

    A continuous target (an acoustic track, a column of numbers, a segment's
    ``duration``) is regressed: R\u00b2 and RMSE instead of accuracy
    (``docs/probes.md``, "Continuous targets").

    ``compute()`` gives the columns of :func:`s3viz.probe_layers`.
    """

    name = "probe"
    passes = 2

    def __init__(self, target: str | Sequence[str] = "phone", *, level: str | None = None,
                 folds: int = 5, split_by: str | dict = "auto", seed: int = 0,
                 lambdas: Sequence[float] = LAMBDAS, control: bool | str = False,
                 utterances=None, profile_pass: bool = False, bootstrap: int | None = None,
                 confidence: float = 0.95):
        super().__init__()
        self.resamples, self.confidence = bootstrap_options(bootstrap, confidence)
        targets = [target] if isinstance(target, str) else list(target)
        if not targets or len(set(targets)) != len(targets) \
                or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"target must be a label name or distinct label names (str), "
                             f"got {target!r}")
        if isinstance(split_by, str):
            split_by = {t: split_by for t in targets}
        if not isinstance(split_by, dict):
            raise TypeError(f"split_by must be one of {SPLIT_CHOICES} or a dict target -> "
                            f"split, got {type(split_by).__name__}")
        missing = [t for t in targets if t not in split_by]
        if missing:
            raise ValueError(f"split_by has no entry for target(s) {missing}")
        for t in targets:
            check_split_by(split_by[t], f"split_by[{t!r}]")
        if level not in (None, "frame", "utterance"):
            raise ValueError(f"level must be 'frame', 'utterance' or None, got {level!r}")
        check_control(control)
        self.targets, self.split_by, self.level = targets, split_by, level
        self.folds = check_folds(folds)
        self.seed = _v.integer(seed, "seed", minimum=0)
        self.lambdas = tuple(float(v) for v in _v.numbers(lambdas, "lambdas"))
        self.control, self.utterances = control, utterances
        self.first = 1 if profile_pass else 0  # the statistics pass
        self.passes = self.first + 2
        # the frames per corpus utterance that frame-level folds balance: those of the first
        # analysed layer; probe_layers sets those of stored layer 0 (as probe_folds)
        self.fold_frames: np.ndarray | None = None

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        corpus = TaskCorpus(ctx)
        self.sel = utterance_selection(self.utterances, len(corpus))
        self.splits = {t: resolve_split(corpus.labels, self.split_by[t], t, self.folds,
                                        self.sel) for t in self.targets}
        self.sub = 2 if self.folds == 2 else 1  # parts per fold (a dev part for 2 folds)
        self.tasks = [self._task(ctx, corpus, t) for t in self.targets]
        self.where = self.tasks[0].where
        n, dev = len(self.sel), ctx.device
        # per target and layer: pooled rows (dual solve) or fold statistics (allocated after
        # the first pass for frame classes still to be checked); frame classes per fold
        stats, rows, seen, conf = [], [], [], []
        for t in self.tasks:
            for h in ctx.sizes:
                dual = t.level == "utterance" and n <= h
                rows.append(torch.zeros(n, h, dtype=ctx.read_dtype) if dual else None)
                stats.append(None if dual or t.utt_sub is None else ProbeStats.zeros(
                    self.folds * self.sub, h, len(t.blocks) * t.width,
                    dtype=torch.float64, device=dev))
                conf.append(None)
                seen.append(None if t.checked else
                            torch.zeros(self.folds, len(t.classes), dtype=torch.int64))
        self.add_state("stats", stats, _reduce_list, after_pass=self.first)
        self.add_state("rows", rows, _reduce_list, after_pass=self.first)
        self.add_state("seen", seen, _reduce_list)
        self.add_state("conf", conf, _reduce_list, after_pass=self.first + 1)
        # per resampling unit and head: (right, examples), or for a regression target
        # (examples, sum (y - c), sum (y - c)^2, squared residuals, sum c), c the unit's
        # mean (_centres), for the intervals
        self.boot, self.unit_of = corpus_bootstrap(ctx.meta, self.sel, self.resamples,
                                                   self.confidence, self.seed)
        self.add_state("unit", [None if self.boot is None else torch.zeros(
            len(self.boot.names), len(t.blocks), 5 if t.continuous else 2, dtype=torch.float64)
            for t in self.tasks for _ in ctx.sizes], _reduce_list, after_pass=self.first + 1)
        # each layer's profile for its guard (s3viz._numerics): the selected frames, and
        # pooled vectors at utterance level (one process: kept as they are, to name rows)
        utterance = any(t.level == "utterance" for t in self.tasks)
        self.one = len(ctx.positions) == len(ctx.meta)
        merge = (lambda v, reduce: v) if self.one else (
            lambda v, reduce: [p.reduced(reduce) for p in v])
        self.add_state("frames", [Profile() for _ in ctx.sizes], merge)
        self.add_state("pooled", [Profile() for _ in ctx.sizes] if utterance else None, merge)
        self.order: list = []  # the profiled utterances in order, to name a far row
        self.guards: dict = {}
        self._classes: tuple = (None, None, None)  # (labels, class names, class ids) last read
        self.models, self.counts = [None] * len(stats), [None] * len(stats)
        self.centres = [None] * len(stats)  # a regression target's fold and unit means
        self.dual = [r is not None for r in rows]  # solved in the dual after the first pass

    def _task(self, ctx: Context, corpus: TaskCorpus, name: str) -> ProbeTask:
        """The task of target ``name``. Frame level with control tasks reads every frame
        label first (the control types need them); without, the classes are the
        alignments' until the first pass counts those of the frames (``checked``)."""
        t = ProbeTask(corpus, name, resolve_level(corpus, name, self.level), self.sel,
                      self.folds, self.splits[name], self.seed, bool(self.control),
                      self.control if isinstance(self.control, str) else None, fixes=_FIXES)
        t.checked = t.level == "utterance" or t.control or t.continuous
        if t.level == "frame":  # folds balanced by frames
            weights = (ctx.lengths()[:, 0] if self.fold_frames is None
                       else self.fold_frames)[self.sel]
            if t.continuous:  # the tracks are metadata: every frame's value is known now
                t.set_frame_values(range(ctx.num_layers), weights)
            elif t.control:
                t.set_frame_classes(range(ctx.num_layers), weights)
            else:
                t.set_frame_folds(weights)
                t.alignment_classes()
        # the dev-part check comes after the held-out class check, as probe_layers' order
        # (a stream checks it before its passes)
        t.utt_sub = None if self.first and not t.checked else t.sub_folds(self.lambdas)
        return t

    def _profile(self, batch: Batch) -> None:
        keep = self.where[batch.positions] >= 0
        if not keep.any():
            return
        self.order.append(batch.positions[keep])
        for s in range(self.ctx.num_layers):
            x = batch.frames[s]
            if not keep.all():
                x = x[torch.from_numpy(np.repeat(keep, batch.lens[:, s]))]
            self.frames[s].update(x)
            if self.pooled is not None:
                self.pooled[s].update(batch.pooled(s)[torch.from_numpy(keep)])

    def _guard(self, t: ProbeTask, s: int) -> Guard:
        """The guard of layer ``s`` at ``t``'s level (after the profile is complete)."""
        key = (t.level, s)
        if key not in self.guards:
            ctx, names = self.ctx, None
            order = np.concatenate(self.order) if self.order else np.zeros(0, dtype=np.int64)
            if self.one:  # one process: rows have names
                frame = t.level == "frame"
                offs = np.concatenate([[0], np.cumsum(ctx.lengths()[order, s] if frame
                                                      else np.ones(len(order), dtype=np.int64))])

                def names(i):
                    u = int(np.searchsorted(offs, i, side="right") - 1)
                    at = f", frame {int(i - offs[u])}" if frame else ""
                    return f"utterance {ctx.meta.ids[int(order[u])]!r}{at}"
            # a store of segments: the precision of the frames they are means of
            prec = getattr(ctx.meta, "_precision", None)
            dtype = ctx.store_dtype if prec is None else prec[ctx.layer_index[s]]
            kw = ({"span": float64_sums_span()} if t.level == "frame"
                  else {"pooled": self.pooled[s]})
            self.guards[key] = profile_guard(self.frames[s], dtype, centre=False,
                                             per_feature=True, names=names, **kw)
        return self.guards[key]

    def _examples(self, t: ProbeTask, batch: Batch, s: int, guarded: bool = False):
        """(x, classes ``(n, blocks)``, selection index) of the batch's labelled examples
        of layer ``s``; ``guarded``: ``x`` read through the layer's guard after a profile
        pass (else the frames as they come)."""
        where = self.where[batch.positions]
        if t.level == "frame" and t.continuous:
            v = t.normalize(batch.frame_values(s, t.target))
            utt = np.repeat(where, batch.lens[:, s])
            m = np.isfinite(v) & (utt >= 0)  # undefined values (unvoiced F0) left out
            ys = [v]
            if t.control:
                d = t.frame_targets(s)
                offs = np.concatenate([[0], np.cumsum(d.lengths)])
                ys.append(np.concatenate([d.y_ctrl[offs[i]:offs[i + 1]] if i >= 0
                                          else np.full(n, np.nan)
                                          for i, n in zip(where, batch.lens[:, s])]))
            x, y, utt = batch.frames[s][torch.from_numpy(m)], np.stack(ys, 1)[m], utt[m]
        elif t.level == "frame":
            lab = batch.frame_labels(s, t.target)
            last_lab, last_classes, y = self._classes  # layers of one frame rate share labels
            if last_lab is not lab or last_classes is not t.classes:
                index = t.index
                y = np.fromiter((index.get(v, -1) for v in lab), dtype=np.int64, count=len(lab))
                self._classes = (lab, t.classes, y)
            utt = np.repeat(where, batch.lens[:, s])
            m = (y >= 0) & (utt >= 0)
            ys = [y]
            if t.control:  # the control class of each selected frame
                d = t.frame_targets(s)
                offs = np.concatenate([[0], np.cumsum(d.lengths)])
                ys.append(np.concatenate([d.y_ctrl[offs[i]:offs[i + 1]] if i >= 0
                                          else np.full(n, -1, dtype=np.int64)
                                          for i, n in zip(where, batch.lens[:, s])]))
            x, y, utt = batch.frames[s][torch.from_numpy(m)], np.stack(ys, 1)[m], utt[m]
        else:
            m = where >= 0
            utt = where[m]
            x, y = batch.pooled(s)[torch.from_numpy(m)], t.heads(utt)
        if not t.continuous:
            y[:, 1:] += len(t.classes)  # the control block's columns
        if guarded and self.first:
            guard = self._guard(t, s)
            x = guard(x, torch.float64, self.ctx.device)
            if guard.reason and t.level == "frame":  # refused (NaN scores): fit zeros, not
                x.zero_()                              # frames that break eigh
        return x, y, utt

    def update(self, batch: Batch, pass_index: int) -> None:
        n_l, p = self.ctx.num_layers, pass_index - self.first
        if pass_index == 0:
            self._profile(batch)
        for i, t in enumerate(self.tasks):
            for s in range(n_l):
                k = i * n_l + s
                if pass_index == 0 and self.seen[k] is not None:  # frame classes per fold
                    _, y, utt = self._examples(t, batch, s)
                    self.seen[k] += torch.from_numpy(fold_class_counts(
                        y[:, 0], t.utt_fold[utt], self.folds, len(t.classes))[0])
                if p == 0 and self.rows[k] is not None:  # kept: the dual reads them guarded
                    x, y, utt = self._examples(t, batch, s)
                    self.rows[k][torch.from_numpy(utt)] = x
                elif p in (0, 1) and not self.dual[k]:  # else solved in the dual
                    x, y, utt = self._examples(t, batch, s, guarded=True)
                    if len(y) and p == 0:
                        self.stats[k].update(x, torch.from_numpy(y),
                                             torch.from_numpy(t.utt_sub[utt]))
                    elif len(y):
                        self._score(k, t, x, y, utt)

    def end_pass(self, pass_index: int) -> None:
        if pass_index == 0:
            self._frame_classes()
        if pass_index == self.first:
            self._solve()

    def _frame_classes(self) -> None:
        """Frame labels are known after the first pass: the classes seen and the probes'
        held-out class check (utterance level and control tasks: ProbeTask did it before
        the passes), then the statistics sized for them."""
        n_l, folds, dev = self.ctx.num_layers, self.folds, self.ctx.device
        for i, t in enumerate(self.tasks):
            if t.checked:
                continue
            keep = t.keep_seen([self.seen[i * n_l + s].numpy() for s in range(n_l)])
            if t.utt_sub is None:  # after a profile pass: the statistics are still to come
                t.utt_sub = t.sub_folds(self.lambdas)
            for s, h in enumerate(self.ctx.sizes):
                k = i * n_l + s
                self.stats[k] = (ProbeStats.zeros(folds * self.sub, h, len(keep), device=dev,
                                                  dtype=torch.float64)
                                 if self.stats[k] is None else self.stats[k].keep_targets(keep))

    def _score(self, k: int, t: ProbeTask, x: torch.Tensor, y: np.ndarray,
               utt: np.ndarray) -> None:
        """Add held-out examples ``x`` (targets ``y``, selected utterances ``utt``) to the
        counts of probe ``k`` and, with a bootstrap, to their units' sums."""
        dev = self.ctx.device
        yt = torch.from_numpy(y).to(dev)
        fold = torch.from_numpy(t.utt_fold[utt]).to(dev)
        if t.continuous:
            train_sum, n_train = self.counts[k]
            mean = torch.from_numpy(train_sum / np.maximum(n_train, 1)[:, None])
            fold_c, unit_c = self.centres[k]
            resid = add_residuals(self.conf[k], x.to(dev), yt, fold, self.models[k], mean.to(dev),
                                  torch.from_numpy(fold_c[:, t.utt_fold[utt]].T).to(dev))
            if self.boot is not None:  # deviations from each unit's own mean (as the folds')
                cu = torch.from_numpy(unit_c[:, self.unit_of[utt]].T).to(dev)
                per = torch.stack([torch.ones_like(resid), yt.double() - cu,
                                   (yt.double() - cu) ** 2, resid ** 2, cu], 2)  # (n, heads, 5)
        else:
            right = add_confusions(self.conf[k], x.to(dev), yt, fold, self.models[k], t.blocks,
                                   len(t.classes)).double()
            per = torch.stack([right, torch.ones_like(right)], 2)
        if self.boot is not None:
            self.unit[k].index_add_(0, torch.from_numpy(self.unit_of[utt]), per.cpu())

    def _centres(self, t: ProbeTask, s: int):
        """A regression target's mean per (head, fold) and per (head, resampling unit),
        from its values (known before the passes): the points its held-out sums are
        taken from, so that a fold or a speaker far from the target's median keeps its
        spread (``(y - c)`` sums, not raw ones)."""
        if t.level == "frame":
            d = t.frame_targets(s)
            heads, fold, item = [d.y] + ([d.y_ctrl] if t.control else []), d.fold, d.utt
        else:
            heads = [t.y] + ([t.y_ctrl] if t.control else [])
            fold, item = t.utt_fold, np.arange(len(t.sel))

        def means(group, n):
            out = np.zeros((len(heads), n))
            for b, v in enumerate(heads):
                ok = np.isfinite(v)
                cnt = np.bincount(group[ok], minlength=n)
                out[b] = np.bincount(group[ok], weights=v[ok], minlength=n) / np.maximum(cnt, 1)
            return out

        return (means(fold, self.folds),
                None if self.boot is None else means(self.unit_of[item], len(self.boot.names)))

    def _solve(self) -> None:
        folds, n_l = self.folds, self.ctx.num_layers
        self.degenerate = {}
        for i, t in enumerate(self.tasks):
            for s in range(n_l):
                k = i * n_l + s
                if t.continuous:
                    self.centres[k] = self._centres(t, s)
                shape = ((len(t.blocks), folds, 6) if t.continuous
                         else (len(t.blocks), folds, len(t.classes), len(t.classes)))
                if self.rows[k] is not None:
                    x, self.rows[k] = self.rows[k].to(self.ctx.device), None
                    x, self.models[k], self.counts[k] = ridge_layer_utterance(
                        t, x, self.lambdas, self._guard(t, s))
                    self.conf[k] = torch.zeros(shape, dtype=torch.float64 if t.continuous
                                               else torch.int64)
                    # every rank holds every row: each scores its own (summed after the pass)
                    mine = self.where[self.ctx.positions]
                    mine = np.sort(mine[mine >= 0])
                    y = t.heads(mine)
                    if not t.continuous:
                        y[:, 1:] += len(t.classes)
                    self._score(k, t, x[torch.from_numpy(mine)], y, mine)
                    continue
                self.models[k] = stacked(ridge_fit_folds(self.stats[k], folds, self.sub, t.blocks,
                                                         self.lambdas))
                self.counts[k] = fold_train_counts(self.stats[k], folds, self.sub)
                self.conf[k] = torch.zeros(shape, dtype=torch.float64 if t.continuous
                                           else torch.int64)
                self.stats[k] = None  # free the hidden x hidden matrices before scoring

    def compute(self) -> pd.DataFrame:
        n_l, ctx = self.ctx.num_layers, self.ctx
        rows, fold_accuracy, replicates = [], {}, {}
        control = any(t.control for t in self.tasks)
        for i, t in enumerate(self.tasks):
            for s in range(n_l):
                k = i * n_l + s
                reason = self._guard(t, s).reason
                if reason:
                    self.degenerate[ctx.layer_index[s]] = reason
                result = (self.conf[k].numpy(), *self.counts[k], self.models[k][2], reason)
                args = (t.target, "ridge", t.level, ctx.layer_index[s], int(ctx.layer_ids[s]))
                if t.continuous:  # fitted on (y - shift) / scale: RMSE back in the unit
                    row = regression_row(*args, self.folds, t.control, result, fold_accuracy)
                    row.update(rmse=row["rmse"] * t.y_scale, unit=t.unit,
                               n_undefined=self._undefined(t, s))
                else:
                    row = result_row(*args, len(t.classes), self.folds, control, result,
                                     fold_accuracy)
                rows.append(row)
                if self.boot is not None:
                    replicates[args[:4]] = reps = score_replicates(
                        self.boot, self.unit[k].numpy(), t.continuous, t.control, reason)
                    if t.continuous:
                        reps["rmse"] = reps["rmse"] * t.y_scale
        warn_degenerate("probe_layers", self.degenerate, "accuracy")
        table = result_table(rows, fold_accuracy, control, self.splits, folds=self.folds,
                             seed=self.seed, weights=ctx.weights)
        if self.boot is not None:
            table = interval_table(table, self.boot, replicates)
        return table

    def _undefined(self, t: ProbeTask, s: int) -> int:
        """Frames of the selected utterances whose target is undefined (left out)."""
        if t.level != "frame":
            return 0
        d = t.frame_targets(s)
        return int((~d.labelled).sum())
