"""Ridge probes of every layer in two passes: statistics, then scoring.

The tables of ``probe_layers(method="ridge")`` from sufficient statistics summed
over batches and ranks (:class:`~s3viz.probe.ProbeStats`): pass 1 sums them per
fold, the end of pass 1 solves every fold's ridge regression (the penalty chosen
on inner folds), pass 2 counts each held-out fold's confusion matrix. Utterance
targets with no more utterances than dimensions keep the pooled rows instead
and solve in the dual after pass 1, as ``probe_layers`` does. The maths:
``docs/probes.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .. import _validate as _v
from .._labels import label_strings
from .._numerics import Profile, float64_sums_span, profile_guard, warn_degenerate
from ..probe import LAMBDAS, ProbeStats
from ..probe.folds import (SPLIT_CHOICES, assign_folds, check_folds, check_heldout,
                           check_split_by, resolve_split)
from ..probe.layers import result_row, result_table
from ..probe.ridge import (confusion_matrix, fold_train_counts, ridge_fit_folds,
                           ridge_layer_utterance, sub_folds)
from ..probe.targets import ProbeTask, check_classes, resolve_level
from ._engine import Batch, Context, Measure

__all__ = ["RidgeProbe"]

# what a streamed run can do about a target the corpus cannot support
_FIXES = {
    "labels": "fill the corpus's {target!r} labels or stream a corpus of the labelled "
              "utterances only (corpus[positions])",
    "alignments": "stream a corpus of the aligned utterances only (corpus[positions])",
}


def _reduce_list(values: list, reduce) -> list:
    return [None if v is None else (v.reduced(reduce) if isinstance(v, ProbeStats)
                                     else reduce(v)) for v in values]


def _reduce_profiles(profiles: list, reduce) -> list:
    return [p.reduced(reduce) for p in profiles]


class _Target:
    """One probe target: its labels, folds and per-layer state."""

    def __init__(self, ctx: Context, name: str, split_by: str, folds: int, seed: int):
        meta = ctx.meta
        self.name, self.split_by = name, split_by
        self.level = resolve_level(meta, name, None)
        sel = np.arange(len(meta), dtype=np.int64)
        # utterance level: classes, stratified folds, checks; frame level: alignment checks
        self.task = ProbeTask(meta, name, self.level, sel, folds, split_by, seed, False, None,
                              fixes=_FIXES)
        if self.level == "frame":
            self.task.utt_fold = assign_folds(self.task.groups, ctx.lengths()[:, 0], folds,
                                               seed, what=split_by)
            values = {v for ph in meta.phones for v in label_strings(ph[name].tolist())}
            self.classes = np.asarray(sorted(v for v in values if v != ""), dtype=object)
            check_classes(name, self.classes, None, where="in the corpus's alignments")
            self.index = {c: i for i, c in enumerate(self.classes)}
        else:
            self.classes = np.asarray(self.task.classes, dtype=object)
        self.sub = 2 if folds == 2 else 1
        self.utt_sub = sub_folds(self.task, self.sub)
        n_l = ctx.num_layers
        self.models: list = [None] * n_l
        self.result: list = [None] * n_l
        self.counts: list = [None] * n_l


class RidgeProbe(Measure):
    """Cross-validated ridge probes of every layer for one or more targets.

    Args:
        target: label name(s): alignment columns (``"phone"``) at frame level,
            ``corpus.labels`` columns (``"speaker"``) at utterance level.
        folds, seed, lambdas: as for :func:`s3viz.probe_layers`.
        split_by: ``"auto"``, ``"speaker"``, ``"utterance"`` or a dict target -> split.

    ``compute()`` gives the columns of :func:`s3viz.probe_layers`.
    """

    name = "probe"
    passes = 2

    def __init__(self, target: str | Sequence[str] = "phone", *, folds: int = 5,
                 split_by: str | dict = "auto", seed: int = 0,
                 lambdas: Sequence[float] = LAMBDAS):
        super().__init__()
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
        self.targets, self.split_by = targets, split_by
        self.folds = check_folds(folds)
        self.seed = _v.integer(seed, "seed", minimum=0)
        self.lambdas = tuple(float(v) for v in _v.numbers(lambdas, "lambdas"))

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        self.splits = {t: resolve_split(ctx.meta.labels, self.split_by[t], t, self.folds)
                       for t in self.targets}
        self.tasks = [_Target(ctx, t, self.splits[t], self.folds, self.seed)
                      for t in self.targets]
        n, dev = len(ctx.meta), ctx.device
        # per target and layer: pooled rows (dual solve) or fold statistics; frame classes seen
        stats, rows, seen, conf = [], [], [], []
        for t in self.tasks:
            for h in ctx.sizes:
                dual = t.level == "utterance" and n <= h
                rows.append(torch.zeros(n, h, dtype=ctx.read_dtype) if dual else None)
                stats.append(None if dual else ProbeStats.zeros(
                    self.folds * t.sub, h, len(t.classes), dtype=torch.float64, device=dev))
                conf.append(None)
            seen.append(torch.zeros(len(t.classes), dtype=torch.int64) if t.level == "frame"
                        else None)
        self.add_state("stats", stats, _reduce_list)
        self.add_state("rows", rows, _reduce_list)
        self.add_state("seen", seen, _reduce_list)
        self.add_state("conf", conf, _reduce_list, after_pass=1)
        # the one guard of every measure (s3viz._numerics), as probe_layers': a degenerate
        # layer (or pooled vectors of rounding noise) gets NaN scores
        utterance = any(t.level == "utterance" for t in self.tasks)
        self.add_state("frames", [Profile() for _ in ctx.sizes], _reduce_profiles)
        self.add_state("pooled", [Profile() for _ in ctx.sizes] if utterance else None,
                       _reduce_profiles)

    def _examples(self, t: _Target, batch: Batch, s: int):
        """(x, class, corpus position) of the batch's labelled examples of layer ``s``."""
        if t.level == "frame":
            lab = batch.frame_labels(s, t.name)
            y = np.fromiter((t.index.get(v, -1) for v in lab), dtype=np.int64, count=len(lab))
            utt = np.repeat(batch.positions, batch.lens[:, s])
            m = y >= 0
            return batch.frames[s][torch.from_numpy(m)], y[m], utt[m]
        return batch.pooled(s), t.task.y[batch.positions], batch.positions

    def update(self, batch: Batch, pass_index: int) -> None:
        n_l = self.ctx.num_layers
        if pass_index == 0:
            for s in range(n_l):
                self.frames[s].update(batch.frames[s])
                if self.pooled is not None:
                    self.pooled[s].update(batch.pooled(s))
        for i, t in enumerate(self.tasks):
            for s in range(n_l):
                k = i * n_l + s
                if pass_index == 1:
                    self._score(t, batch, s, k)
                    continue
                x, y, utt = self._examples(t, batch, s)
                if self.rows[k] is not None:
                    self.rows[k][torch.from_numpy(batch.positions)] = x
                    continue
                if t.level == "frame":
                    self.seen[i] += torch.from_numpy(np.bincount(y, minlength=len(t.classes)))
                if len(y):
                    self.stats[k].update(x, torch.from_numpy(y)[:, None],
                                         torch.from_numpy(t.utt_sub[utt]))

    def end_pass(self, pass_index: int) -> None:
        if pass_index == 0:
            self._solve()

    def _reason(self, t: _Target, s: int) -> str | None:
        """Why layer ``s``'s scores mean nothing for ``t`` (None: they do)."""
        if t.level == "frame":
            return profile_guard(self.frames[s], self.ctx.store_dtype, centre=False,
                                 span=float64_sums_span()).reason
        return profile_guard(self.frames[s], self.ctx.store_dtype, centre=False,
                             pooled=self.pooled[s]).reason

    def _solve(self) -> None:
        folds, n_l = self.folds, self.ctx.num_layers
        self.degenerate = {}
        for i, t in enumerate(self.tasks):
            keep, warned = None, False
            if t.level == "frame":
                keep = np.flatnonzero(self.seen[i].numpy() > 0)
                t.remap = np.full(len(t.classes), -1, dtype=np.int64)
                t.remap[keep] = np.arange(len(keep))
                t.classes = t.classes[keep]
                if len(t.classes) < 2:
                    raise ValueError(
                        f"target {t.name!r} has {len(t.classes)} class(es) among the labelled "
                        "frames: nothing to classify; choose another target or more utterances")
            for s in range(n_l):
                k = i * n_l + s
                if self.rows[k] is not None:
                    x = self.rows[k].to(self.ctx.device)
                    self.rows[k] = None
                    c = len(t.classes)
                    t.result[s] = ridge_layer_utterance(t.task, x, [slice(0, c)], c,
                                                         self.lambdas, torch.float64)
                    t.result[s] = t.result[s][:4] + (self._reason(t, s),)
                    continue
                st = self.stats[k]
                if keep is not None:
                    st = st.keep_targets(keep)
                    # frame labels are known only now: the probes' held-out class check
                    # (utterance level: ProbeTask did it before the first pass)
                    test = st.sum_y.reshape(folds, t.sub, -1).sum(1).cpu().numpy()
                    unseen = check_heldout(test, test.sum(0, keepdims=True) - test,
                                           target=t.name, level="frame", split_by=t.split_by,
                                           classes=t.classes, items="frame", warn=not warned)
                    warned = warned or bool(unseen.any())
                models = ridge_fit_folds(st, folds, t.sub, [slice(0, len(t.classes))],
                                          self.lambdas)
                t.models[s] = (torch.stack([m[0] for m in models]),
                               torch.stack([m[1] for m in models]),
                               np.mean([m[2] for m in models], axis=0))
                t.counts[s] = fold_train_counts(st, folds, t.sub)
                self.conf[k] = torch.zeros((1, folds, len(t.classes), len(t.classes)),
                                           dtype=torch.int64)
                self.stats[k] = None  # free the hidden x hidden matrices before pass 2

    def _score(self, t: _Target, batch: Batch, s: int, k: int) -> None:
        if t.result[s] is not None:  # solved in the dual after pass 1
            return
        x, y, utt = self._examples(t, batch, s)
        if not len(y):
            return
        if t.level == "frame":
            y = t.remap[y]
        w, b, _ = t.models[s]
        fold = t.task.utt_fold[utt]
        dev, c = self.ctx.device, len(t.classes)
        yt = torch.from_numpy(y).to(dev)
        for f in np.unique(fold).tolist():
            r = torch.from_numpy(fold == f)
            scores = x[r].to(device=dev, dtype=w.dtype) @ w[f] + b[f]
            self.conf[k][0, f] += torch.from_numpy(
                confusion_matrix(yt[r.to(dev)], scores.argmax(1), c))

    def compute(self) -> pd.DataFrame:
        n_l, ctx = self.ctx.num_layers, self.ctx
        rows, fold_accuracy = [], {}
        for i, t in enumerate(self.tasks):
            for s in range(n_l):
                if t.result[s] is None:
                    counts, n_train = t.counts[s]
                    t.result[s] = (self.conf[i * n_l + s].numpy(), counts, n_train,
                                   t.models[s][2], self._reason(t, s))
                if t.result[s][4]:
                    self.degenerate[ctx.layer_index[s]] = t.result[s][4]
                rows.append(result_row(t.name, "ridge", t.level, ctx.layer_index[s],
                                        int(ctx.layer_ids[s]),
                                        len(t.classes), self.folds, False, t.result[s],
                                        fold_accuracy))
        warn_degenerate("probe_layers", self.degenerate, "accuracy")
        return result_table(rows, fold_accuracy, False, self.splits, folds=self.folds,
                            seed=self.seed, weights=ctx.weights)
