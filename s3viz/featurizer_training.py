""":func:`train_featurizer`: learn layer weights with a linear head, SUPERB style.

:class:`ProbeData` holds the examples of a weighted sum of store layers, split by the
probes' held-out :class:`~s3viz.probe.targets.ProbeTask`; it is shared with the
weighted scorer. The recipe, the split and the history: ``docs/featurizers.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as _v
from ._device import resolve_device as _resolve_device
from ._numerics import (Profile, float32_distances_span, read_dtype, safe_scale,
                        warn_degenerate)
from .featurizers import (WeightedSumFeaturizer, align_frames, aligned_lengths, check_lengths,
                          sum_geometry)
from .probe.targets import UNSEEN, ProbeTask, resolve_level
from .store import utterance_selection

__all__ = ["train_featurizer", "FeaturizerFit", "TrainOptions"]


def _fraction(value, name: str) -> float:
    value = _v.number(value, name, positive=True)  # also refuses NaN
    if value > 0.5:
        raise ValueError(f"{name} must lie in (0, 0.5], got {value!r}")
    return value


@dataclass(frozen=True)
class TrainOptions:
    """How :func:`train_featurizer` trains (``train_featurizer(..., options=TrainOptions(...))``);
    each option is described in ``docs/featurizers.md``."""

    steps: int = 300
    lr: float = 0.01
    batch_frames: int = 2048
    eval_every: int = 25
    dev_fraction: float = 0.25
    standardize: bool = True
    max_cache_bytes: int = 256 * 2**20

    def __post_init__(self):
        for field, value in (
                ("steps", _v.integer(self.steps, "steps")),
                ("lr", _v.number(self.lr, "lr", positive=True)),  # also refuses NaN
                ("batch_frames", _v.integer(self.batch_frames, "batch_frames")),
                ("eval_every", _v.integer(self.eval_every, "eval_every")),
                ("max_cache_bytes", _v.integer(self.max_cache_bytes, "max_cache_bytes",
                                               minimum=0)),
                ("dev_fraction", _fraction(self.dev_fraction, "dev_fraction"))):
            object.__setattr__(self, field, value)
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise TypeError(f"standardize must be True or False, got {self.standardize!r}")
        object.__setattr__(self, "standardize", bool(self.standardize))


class FeaturizerFit(NamedTuple):
    """What :func:`train_featurizer` returns; unpacks as ``featurizer, history = ...``."""

    featurizer: WeightedSumFeaturizer
    """The learned weights, as a module over the store's layers."""
    history: pd.DataFrame
    """One row per evaluation (see :func:`train_featurizer`)."""


# how a featurizer's user leaves out unlabelled or unaligned utterances
_FIXES = {
    "labels": "fill store.labels[{target!r}] or leave them out with `utterances=`",
    "alignments": "leave them out with `utterances=[i for i, p in enumerate(store.phones) "
                  "if p is not None]`",
}


class ProbeData:
    """The frames (or mean-pooled utterances) of selected store layers at one rate, with
    the classes and split of a held-out :class:`~s3viz.probe.targets.ProbeTask`.

    Fold 0 (``test_utts``) is held out; the rest (``train_utts``) is the dev part
    (fold 1, ``dev_utts``) and the fit part (``fit_utts``); unselected utterances are in
    none. ``labels(utts)`` gives class codes (-1: unlabelled; :data:`UNSEEN`: a test
    example whose class training lacks), ``chance`` the training majority class scored
    on the labelled test examples, ``n_test_unseen`` the unseen ones
    (``docs/featurizers.md``).
    """

    def __init__(self, store, target: str, *, level: str = "frame", layers=None,
                 target_rate: int | None = None, split_by: str = "auto",
                 test_fraction: float = 0.25, seed: int = 0, standardize: bool = True,
                 utterances=None):
        if level not in ("frame", "utterance"):
            raise ValueError(f"level must be 'frame' or 'utterance', got {level!r}")
        if not all(hasattr(store, a) for a in ("layer", "lengths", "labels", "hidden_sizes",
                                               "downsample_rates")):
            raise TypeError(f"store must be an s3viz.LayerStore (s3viz.extract(...)), got "
                            f"{type(store).__name__}")
        if not isinstance(target, str):
            raise TypeError(f"target must be a label name (str), e.g. 'phone' or 'speaker', got "
                            f"{target!r}")
        test_fraction = _fraction(test_fraction, "test_fraction")
        resolve_level(store, target, level)  # the probes' target names
        self.store, self.target, self.level = store, target, level
        self.sel = sel = utterance_selection(utterances, len(store))
        self.layers = layers = _v.stored_layers(store, layers)
        self.rates = rates = {l_: int(store.downsample_rates[l_]) for l_ in layers}
        if target_rate is None and level == "utterance":  # the featurizer's rate
            target_rate = min(rates.values())
        self.target_rate = sum_geometry({l_: store.hidden_sizes[l_] for l_ in layers}, rates,
                                        target_rate)
        self.hidden_size = int(store.hidden_sizes[layers[0]])
        n = len(store)
        if level == "frame":  # frames at target_rate: the shortest aligned layer's
            counts = torch.stack([torch.as_tensor(store.lengths(l_)) for l_ in layers])
            aligned = [aligned_lengths(c, rates[l_], self.target_rate, what=f"layer {l_}")
                       for l_, c in zip(layers, counts)]
            check_lengths(counts, list(rates.values()), layers, ids=store.ids)
            self.lengths = torch.stack(aligned).min(0).values.numpy().astype(np.int64)
        else:
            self.lengths = np.ones(n, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

        self.task = task = ProbeTask.held_out(store, target, level, sel,
                                              test_fraction=test_fraction, split_by=split_by,
                                              seed=seed, fixes=_FIXES)
        self.split_by = task.split_by
        if level == "frame":
            same = [l_ for l_ in layers if rates[l_] == self.target_rate]
            raw = task.label_strings_at(self.target_rate, self.lengths[sel],
                                        layer=same[0] if same else None)
        else:
            raw = task.keys
        self.fold = np.full(n, -1, dtype=np.int64)
        self.fold[sel] = task.utt_fold
        self.test_utts = np.flatnonzero(self.fold == 0)
        self.train_utts = np.flatnonzero(self.fold >= 1)
        self.dev_utts = np.flatnonzero(self.fold == 1)
        self.fit_utts = np.flatnonzero(self.fold >= 2)
        y = task.held_out_classes(raw, np.repeat(np.arange(len(sel)), self.lengths[sel]))
        self.classes = task.classes
        self.y = np.full(int(self.offsets[-1]), -1, dtype=np.int64)
        self.y[np.repeat(self.fold >= 0, self.lengths)] = y  # sel is sorted: items in order
        item_fold = np.repeat(self.fold, self.lengths)
        y_test = self.y[(item_fold == 0) & (self.y != -1)]  # unseen ones too: wrong in both
        majority = int(np.argmax(np.bincount(self.y[(item_fold >= 1) & (self.y >= 0)],
                                             minlength=len(self.classes))))
        self.chance = float(np.mean(y_test == majority)) if len(y_test) else float("nan")
        self.n_test_unseen = int((self.y == UNSEEN).sum())
        self.standardize = bool(standardize)
        self.read_dtype = read_dtype(store)
        self.mean, self.std, self.degenerate = {}, {}, {}  # per layer (standardize)
        if self.standardize:
            self._fit_standardization()

    def labels(self, utts) -> np.ndarray:
        """``(n,)`` int64 class codes of the frames (or utterances) of ``utts``."""
        return np.concatenate([self.y[self.offsets[i]:self.offsets[i + 1]] for i in utts]) \
            if len(utts) else np.zeros(0, dtype=np.int64)

    def runs(self, utts, items: int):
        """``utts`` cut, in order, into runs of just ``items`` frames (or utterances) or
        more; the last run may have fewer."""
        run, count = [], 0
        for u in utts:
            run.append(int(u))
            count += int(self.lengths[u])
            if count >= items:
                yield run
                run, count = [], 0
        if run:
            yield run

    def raw_features(self, j: int, utts) -> torch.Tensor:
        """``(n, hidden_size)`` of layer ``self.layers[j]`` (aligned, not standardised), in
        the store's precision (:func:`s3viz._numerics.read_dtype`)."""
        l_ = self.layers[j]
        utts = np.asarray(utts, dtype=np.int64)
        if self.level == "utterance":
            return self.store.pooled(l_, utterances=utts, dtype=self.read_dtype)
        x, _ = self.store.layer(l_, utterances=utts, dtype=self.read_dtype)
        lens = self.store.lengths(l_)[utts]
        want = self.lengths[utts]
        if self.rates[l_] == self.target_rate and np.array_equal(lens, want):
            return x
        out = []
        for part, n_want in zip(torch.split(x, lens.tolist()), want.tolist()):
            h, _ = align_frames(part[None], torch.tensor([part.shape[0]]), self.rates[l_],
                                self.target_rate)
            out.append(h[0, :n_want])
        return torch.cat(out) if out else x[:0]

    def features(self, j: int, utts) -> torch.Tensor:
        """:meth:`raw_features` standardised per dimension with the train statistics
        (zeros for a degenerate layer), as float32."""
        x = self.raw_features(j, utts)
        l_ = self.layers[j]
        if self.standardize:
            if self.degenerate.get(l_):
                return torch.zeros(x.shape, dtype=torch.float32)
            # in float64: (x - mean) / std of values of 1e300 or 1e-300 stays near 1
            x = (x.to(torch.float64) - self.mean[l_]) / self.std[l_]
        return x.float()

    def examples(self, utts, unseen: bool = False, raw: bool = False):
        """``(xs, y)``: per layer (lazily) the features of the labelled examples of
        ``utts`` (:meth:`raw_features` when ``raw``), and their classes; ``unseen``: with
        the test examples of :data:`UNSEEN` classes."""
        y = torch.from_numpy(self.labels(utts))
        keep = y != -1 if unseen else y >= 0
        read = self.raw_features if raw else self.features
        return (read(j, utts)[keep] for j in range(len(self.layers))), y[keep]

    def _fit_standardization(self):
        """Per layer the mean and spread of the labelled training frames, and the one
        guard of every measure (:class:`s3viz._numerics.Profile`): a degenerate layer
        reads as zeros, with one :class:`~s3viz._numerics.DegenerateLayerWarning`."""
        profiles = [Profile() for _ in self.layers]
        for a in range(0, len(self.train_utts), 64):
            xs, _ = self.examples(self.train_utts[a:a + 64], raw=True)
            for prof, x in zip(profiles, xs):
                prof.update(x)
        if profiles[0].rows == 0:
            raise ValueError("no labelled training frames; check the target and the split")
        for l_, prof in zip(self.layers, profiles):
            guard = prof.guard(self.store.store_dtype, centre=True,
                               span=float32_distances_span())
            self.degenerate[l_] = guard.reason
            # streamed in float64 scaled by a power of two: 1e-300 and 1e300 lose nothing
            mean = prof.mom.mean / prof.scale
            std = safe_scale(prof.mom.var.sqrt(), mean=prof.mom.mean) / prof.scale
            self.mean[l_] = mean.to(torch.float64)
            self.std[l_] = std.to(torch.float64)
        warn_degenerate("the weighted sum of layers (WeightedScorer, train_featurizer)",
                        self.degenerate, "scores (the layer reads as zeros)")


def train_featurizer(
    store,
    target: str,
    *,
    level: str = "frame",
    layers: Sequence[int] | None = None,
    options: TrainOptions | None = None,
    device=None,
    seed: int = 0,
    split_by: str = "auto",
    target_rate: int | None = None,
    utterances=None,
) -> FeaturizerFit:
    """Learn layer weights together with a linear head on a probing task (the SUPERB
    recipe in miniature, ``docs/featurizers.md``): softmax weights over the layers and a
    linear classifier of their weighted sum, trained jointly with Adam.

    Args:
        options: a :class:`TrainOptions` (``None``: the defaults).
        target_rate: frame level; default the layers' common rate.
        utterances: to train and evaluate on; an unlabelled (or, at frame level,
            unaligned) one is refused, as by the probes.

    Returns:
        A :class:`FeaturizerFit` ``(featurizer, history)``: a
        :class:`WeightedSumFeaturizer` holding the learned weights, and one row per
        evaluation from step 0 (its columns and attrs: ``docs/featurizers.md``).
    """
    if options is None:
        options = TrainOptions()
    elif not isinstance(options, TrainOptions):
        raise TypeError(f"options must be an s3viz.TrainOptions, got {type(options).__name__}")
    seed = _v.integer(seed, "seed", minimum=0)
    data = ProbeData(store, target, level=level, layers=layers, target_rate=target_rate,
                     split_by=split_by, test_fraction=options.dev_fraction, seed=seed,
                     standardize=options.standardize, utterances=utterances)
    dev = _resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    L, H, C = len(data.layers), data.hidden_size, len(data.classes)
    with torch.random.fork_rng(devices=[]):  # the head's start, not the caller's stream
        torch.manual_seed(seed)
        logits = nn.Parameter(torch.zeros(L, device=dev))
        head = nn.Linear(H, C).to(dev)
    opt = torch.optim.Adam([logits, *head.parameters()], lr=options.lr)
    size, train_utts, dev_utts = options.batch_frames, data.train_utts, data.test_utts

    def batch(utts, unseen=False):  # unseen test classes stay: always wrong, as in the probes
        xs, y = data.examples(utts, unseen)
        return torch.stack([*xs]).to(dev), y.to(dev)

    n_train, n_dev = (int(data.lengths[u].sum()) for u in (train_utts, dev_utts))
    cached = n_train * L * H * 4 <= options.max_cache_bytes
    if cached:
        x_train, y_train = batch(train_utts)
        if y_train.numel() == 0:
            raise ValueError("no labelled training frames")

    def batches():
        if cached:  # random frames
            n = y_train.shape[0]
            while n <= size:  # everything fits in one batch: no copies
                yield x_train, y_train
            while True:
                perm = torch.randperm(n, generator=gen)
                for a in range(0, n - size + 1, size):
                    idx = perm[a:a + size].to(dev)
                    yield x_train[:, idx], y_train[idx]
        while True:  # whole utterances
            perm = train_utts[torch.randperm(len(train_utts), generator=gen).numpy()]
            yield from map(batch, data.runs(perm, size))

    def dev_groups():
        return (batch(dev_utts[a:a + 32], unseen=True) for a in range(0, len(dev_utts), 32))

    dev_cache = list(dev_groups()) if n_dev * L * H * 4 <= options.max_cache_bytes else None
    layer_cols = [f"weight_{l_}" for l_ in data.layers]
    rows = []

    def predict(x):  # class scores of the weighted sum of x (layers, n, hidden)
        return head(torch.einsum("l,lnh->nh", torch.softmax(logits, 0), x))

    def record(step: int, loss: float):
        correct = total = 0
        with torch.no_grad():
            for x, y in (dev_cache if dev_cache is not None else dev_groups()):
                pred = predict(x).argmax(1)
                correct += int((pred == y).sum())
                total += int(y.numel())
        w = torch.softmax(logits.detach().double(), 0).cpu().numpy()
        rows.append({"step": step, "loss": loss,
                     "dev_accuracy": correct / total if total else float("nan"),
                     **dict(zip(layer_cols, w))})

    it = batches()
    first = next(it)
    it = itertools.chain([first], it)
    with torch.no_grad():  # step 0: the starting weights, before any update
        record(0, float(F.cross_entropy(predict(first[0]), first[1])) if first[1].numel()
               else float("nan"))
    running = []
    for step in range(1, options.steps + 1):
        x, y = next(it)
        if y.numel() == 0:
            continue
        loss = F.cross_entropy(predict(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if step % options.eval_every == 0 or step == options.steps:
            record(step, float(np.mean(running)))
            running = []
    history = pd.DataFrame(rows, columns=["step", "loss", "dev_accuracy", *layer_cols])
    history.attrs.update({"classes": list(data.classes), "n_train": n_train, "n_dev": n_dev,
                          "target": target, "level": level, "layers": list(data.layers),
                          "standardize": options.standardize, "split_by": data.split_by,
                          "dev_chance": data.chance, "n_dev_unseen": data.n_test_unseen})
    featurizer = WeightedSumFeaturizer(store, layer_selections=data.layers,
                                       target_rate=data.target_rate)
    # by layer: the featurizer sorts its layers, `layers=` may not be sorted
    featurizer.set_weights(logits=pd.Series(logits.detach().double().cpu().numpy(),
                                          index=data.layers))
    return FeaturizerFit(featurizer, history)
