""":func:`train_featurizer`: learn layer weights with a linear head, SUPERB style.

The layer logits and a linear classifier of a target (frame or utterance level)
are trained together with Adam on minibatches read from a LayerStore; each layer
is standardised first, speakers (or utterances) are split into train and dev.
:class:`ProbeData` holds the prepared examples, shared with the weighted scorer.
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
from .align import expected_lengths
from .featurizers import WeightedSumFeaturizer, align_frames, consistent_lengths, rate_factor
from .probe import LEVELS
from .probe.targets import UNSEEN, ProbeTask, resolve_level
from .store import utterance_selection

__all__ = ["train_featurizer", "FeaturizerFit", "TrainOptions"]


@dataclass(frozen=True)
class TrainOptions:
    """How :func:`train_featurizer` trains (``train_featurizer(..., options=TrainOptions(...))``).

    Attributes:
        steps, lr, batch_frames: Adam steps, learning rate, frames (or
            utterances) per minibatch.
        eval_every: steps between dev evaluations (and history rows).
        dev_fraction: share of the groups held out as the dev part (the
            reported ``dev_accuracy``), in (0, 0.5]: fold 0 of
            ``max(3, round(1 / dev_fraction))`` folds.
        standardize: standardise each layer with the training statistics
            (False: raw hidden states, as s3prl).
        max_cache_bytes: training features up to this size are held in memory
            (random frame minibatches); larger stores are streamed in
            minibatches of whole utterances.
    """

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
                                               minimum=0))):
            object.__setattr__(self, field, value)
        dev = _v.number(self.dev_fraction, "dev_fraction", positive=True)
        if dev > 0.5:
            raise ValueError(f"dev_fraction must lie in (0, 0.5], got {dev!r}")
        object.__setattr__(self, "dev_fraction", dev)
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
    """The frames (or pooled utterances) of selected store layers, at one rate, with labels.

    ``features(j, utts)`` gives layer ``self.layers[j]`` of utterances ``utts``
    aligned to ``target_rate`` (frame level; see :func:`align_frames`) or
    mean-pooled (utterance level), standardised with the train statistics
    when ``standardize``; ``labels(utts)`` the matching class codes (-1 =
    unlabelled: no segment or a missing label; :data:`UNSEEN` = -2: a test
    example whose class the training part lacks, scored as wrong). Such test
    examples are refused when they are all the test part has and warned
    about otherwise (:func:`s3viz.probe.folds.check_heldout`, as for the
    probes); ``chance`` is the training majority class scored on the test
    examples and ``n_test_unseen`` counts the unseen ones.
    Labels follow the probes' rules (``s3viz.probe.targets``); ``utterances``
    selects the utterances split into test, dev and fit parts (the others are
    in none).
    """

    def __init__(self, store, target: str, *, level: str = "frame", layers=None,
                 target_rate: int | None = None, split_by: str = "auto",
                 test_fraction: float = 0.25, seed: int = 0, standardize: bool = True,
                 utterances=None):
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        for attr in ("layer", "lengths", "labels", "hidden_sizes", "downsample_rates"):
            if not hasattr(store, attr):
                raise TypeError(f"store must be an s3viz.LayerStore (s3viz.extract(...)), got "
                                f"{type(store).__name__}")
        if not isinstance(target, str):
            raise TypeError(f"target must be a label name (str), e.g. 'phone' or 'speaker', got "
                            f"{target!r}")
        if not 0 < test_fraction <= 0.5:
            raise ValueError(f"test_fraction must lie in (0, 0.5], got {test_fraction}")
        if level != "segment":  # the probes' target names: alignment or label columns, not "id"
            resolve_level(store, target, level)
        self.store, self.target, self.level = store, target, level
        self.sel = sel = utterance_selection(utterances, len(store))
        num_layer = store.num_layer
        if layers is None:
            layers = list(range(num_layer))
        layers = [int(l_) for l_ in layers]
        bad = [l_ for l_ in layers if not 0 <= l_ < num_layer]
        if bad or not layers or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct stored-layer indices in [0, {num_layer}), "
                             f"got {layers}")
        self.layers = layers
        sizes = {l_: store.hidden_sizes[l_] for l_ in layers}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"a weighted sum needs one hidden size; layers have {sizes}: pass "
                             "layers=... of one size")
        self.hidden_size = int(next(iter(sizes.values())))
        rates = {l_: int(store.downsample_rates[l_]) for l_ in layers}
        if target_rate is None:
            if level == "frame" and len(set(rates.values())) > 1:
                raise ValueError(f"layers have different downsample rates {rates}; pass "
                                 f"target_rate=... (e.g. {min(rates.values())})")
            target_rate = min(rates.values())
        self.target_rate = int(target_rate)
        self.rates = rates
        n = len(store)

        if level == "frame":
            conv, counts = [], []
            for l_ in layers:
                mode, f = rate_factor(rates[l_], self.target_rate, what=f"layer {l_}")
                lens = torch.as_tensor(store.lengths(l_))
                counts.append(lens)
                conv.append((lens * f if mode == "repeat" else
                             expected_lengths(lens, f, "ceil") if mode == "average" else lens
                             ).numpy())
            ok = consistent_lengths(torch.stack(counts), [rates[l_] for l_ in layers]).numpy()
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                detail = ", ".join(f"layer {l_}: {int(c[i])} at rate {rates[l_]}"
                                   for l_, c in zip(layers, counts))
                raise ValueError(f"utterance {store.ids[i]!r} has inconsistent frame counts across "
                                 f"layers ({detail}); check the store's lengths or choose "
                                 "layers=... of one rate")
            conv = np.stack(conv)
            self.lengths = conv.min(0).astype(np.int64)
        else:
            self.lengths = np.ones(n, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

        # the one task of probes and featurizers: label rules, split, folds, classes
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
        # fold 0 is held out (test); fold 1 is the dev part of the rest (train_utts);
        # unselected utterances have fold -1
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
        self._count_unseen()
        self.standardize = bool(standardize)
        self.read_dtype = read_dtype(store)
        self.mean: dict[int, torch.Tensor] = {}
        self.std: dict[int, torch.Tensor] = {}
        self.degenerate: dict[int, str | None] = {}
        if self.standardize:
            self._fit_standardization()

    def _count_unseen(self) -> None:
        """``n_test_unseen`` and ``chance``: the training part's majority class scored on
        the labelled test examples (those of unseen classes too, wrong in both)."""
        item_fold = np.repeat(self.fold, self.lengths)  # 0: test, >= 1: training, -1: neither
        self.n_test_unseen = int((self.y == UNSEEN).sum())
        y_test = self.y[(item_fold == 0) & (self.y != -1)]
        majority = int(np.argmax(np.bincount(self.y[(item_fold >= 1) & (self.y >= 0)],
                                             minlength=len(self.classes))))
        self.chance = float(np.mean(y_test == majority)) if len(y_test) else float("nan")

    def labels(self, utts) -> np.ndarray:
        """``(n,)`` int64 class codes of the frames (or utterances) of ``utts``."""
        return np.concatenate([self.y[self.offsets[i]:self.offsets[i + 1]] for i in utts]) \
            if len(utts) else np.zeros(0, dtype=np.int64)

    def num_items(self, utts) -> int:
        return int(self.lengths[np.asarray(utts, dtype=np.int64)].sum())

    # -- features -----------------------------------------------------------
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
        mode, _ = rate_factor(self.rates[l_], self.target_rate)
        if mode == "same" and np.array_equal(lens, want):
            return x
        out = []
        for part, n_want in zip(torch.split(x, lens.tolist()), want.tolist()):
            h, _ = align_frames(part[None], torch.tensor([part.shape[0]]), self.rates[l_],
                                self.target_rate)
            out.append(h[0, :n_want])
        return torch.cat(out) if out else x[:0]

    def features(self, j: int, utts) -> torch.Tensor:
        """Like :meth:`raw_features`, standardised per dimension with the train statistics
        (in the store's precision), as float32."""
        x = self.raw_features(j, utts)
        l_ = self.layers[j]
        if self.standardize:
            if self.degenerate.get(l_):
                return torch.zeros(x.shape, dtype=torch.float32)
            # in float64: (x - mean) / std of values of 1e300 or 1e-300 stays near 1
            x = (x.to(torch.float64) - self.mean[l_]) / self.std[l_]
        return x.float()

    def _fit_standardization(self, max_frames: int = 65536):
        """Per layer, the one guard of every measure (:class:`s3viz._numerics.Profile`) of
        the labelled training frames: their per-feature mean and spread (streamed in
        float64 scaled by a power of two, so 1e-300 and 1e300 lose nothing), and whether
        the layer is degenerate (constant, rounding-level, or a far frame float32 cannot
        resolve beside the others). A degenerate layer's features are zeros: it adds
        nothing to a weighted sum and its learned weight means nothing; one
        :class:`~s3viz._numerics.DegenerateLayerWarning` names it."""
        utts = self.train_utts
        self.degenerate = {}
        for j, l_ in enumerate(self.layers):
            prof = Profile()
            for a in range(0, len(utts), 64):
                chunk = utts[a:a + 64]
                x = self.raw_features(j, chunk)
                keep = torch.from_numpy(self.labels(chunk) >= 0)
                prof.update(x[keep])
            if prof.rows == 0:
                raise ValueError("no labelled training frames; check the target and the split")
            guard = prof.guard(self.store.store_dtype, centre=True,
                               span=float32_distances_span())
            self.degenerate[l_] = guard.reason
            mean = prof.mom.mean / prof.scale
            std = safe_scale(prof.mom.var.sqrt(), mean=prof.mom.mean) / prof.scale
            self.mean[l_] = mean.to(torch.float64)
            self.std[l_] = std.to(torch.float64)
        warn_degenerate("the weighted sum of layers (WeightedScorer, train_featurizer)",
                        self.degenerate, "scores (the layer reads as zeros)")


# ----------------------------------------------------------------------------
# train_featurizer: layer weights + linear head, SUPERB-style


# ----------------------------------------------------------------------------


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
    """Learn layer weights together with a linear head on a probing task.

    The SUPERB recipe in miniature: softmax weights over the layers (logits
    start at zero) and a linear classifier on the weighted sum, trained jointly
    with Adam on cross-entropy, on minibatches of frames (or utterances).
    Features are standardised per layer and dimension with training statistics
    (``TrainOptions(standardize=True)``), so the weights compare layers
    independently of their scale; ``standardize=False`` learns on the raw
    hidden states as s3prl does. Utterances are split into train / dev by
    ``split_by`` groups (``"auto"``: speakers when the labels allow it, as for
    :func:`s3viz.probe_layers`; ``history.attrs["split_by"]`` says which). The
    target, its classes, the split and the held-out check are those of the
    probes' :class:`s3viz.probe.targets.ProbeTask` (:meth:`~s3viz.probe.targets.ProbeTask.held_out`).

    Args:
        store: a :class:`s3viz.LayerStore`.
        target: frame level: a column of the alignment tables (``"phone"``,
            ``"word"``); utterance level: a column of ``store.labels``.
        level: ``"frame"`` or ``"utterance"`` (mean-pooled features).
        layers: stored layers to weigh (default all).
        options: a :class:`TrainOptions` (steps, learning rate, minibatch size,
            evaluation interval, dev share, standardisation, memory cap);
            ``None``: the defaults.
        device: ``None`` = cuda when available else cpu.
        seed: seed of the split, the initialisation and the minibatch order.
        split_by: ``"auto"``, ``"speaker"`` or ``"utterance"``: the groups kept
            apart between training and dev (see :func:`s3viz.probe.resolve_split`).
        target_rate: frame level: the rate layers of different rates are aligned
            to (:func:`s3viz.featurizers.align_frames`; default their common rate).
        utterances: the utterance positions to train and evaluate on (default
            all). The label rules are the probes' (``s3viz.probe.targets``):
            an utterance without its label (utterance level) or without an
            alignment (frame level) is refused, so leave such ones out here.

    Returns:
        A :class:`FeaturizerFit` ``(featurizer, history)``, a named tuple: a
        :class:`WeightedSumFeaturizer` over the
        store's layers holding the learned weights, and a DataFrame with one row
        per evaluation: ``step, loss, dev_accuracy`` and ``weight_<layer>`` for
        each layer (``history.attrs`` holds ``classes, n_train, n_dev,
        split_by``, ``dev_chance`` (the training majority class scored on
        the dev examples) and ``n_dev_unseen`` (dev examples whose class
        training lacks: they count as wrong in both; a dev part of only such
        examples is refused) ...). Its
        first row is step 0, the starting weights (the loss of the first batch
        before any update).
    """
    if options is None:
        options = TrainOptions()
    elif not isinstance(options, TrainOptions):
        raise TypeError(f"options must be an s3viz.TrainOptions, got {type(options).__name__}")
    seed = _v.integer(seed, "seed", minimum=0)
    steps, batch_frames, eval_every = options.steps, options.batch_frames, options.eval_every
    standardize, max_cache_bytes = options.standardize, options.max_cache_bytes
    data = ProbeData(store, target, level=level, layers=layers, target_rate=target_rate,
                      split_by=split_by, test_fraction=options.dev_fraction, seed=seed,
                      standardize=standardize, utterances=utterances)
    dev = _resolve_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    L, H, C = len(data.layers), data.hidden_size, len(data.classes)
    logits = nn.Parameter(torch.zeros(L, device=dev))
    head = nn.Linear(H, C).to(dev)
    torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam([logits, *head.parameters()], lr=options.lr)

    train_utts, dev_utts = data.train_utts, data.test_utts
    n_train_items = data.num_items(train_utts)
    cached = n_train_items * L * H * 4 <= max_cache_bytes
    if cached:
        y_train = torch.from_numpy(data.labels(train_utts))
        keep = y_train >= 0
        x_train = torch.stack([data.features(j, train_utts)[keep] for j in range(L)])
        y_train = y_train[keep]
        if y_train.numel() == 0:
            raise ValueError("no labelled training frames")
        x_train, y_train = x_train.to(dev), y_train.to(dev)

    def batches():
        if cached:
            n = y_train.shape[0]
            while n <= batch_frames:  # everything fits in one batch: no copies
                yield x_train, y_train
            while True:
                perm = torch.randperm(n, generator=gen)
                for a in range(0, n - min(batch_frames, n) + 1, min(batch_frames, n)):
                    idx = perm[a:a + batch_frames].to(dev)
                    yield x_train[:, idx], y_train[idx]
        else:
            while True:
                perm = train_utts[torch.randperm(len(train_utts), generator=gen).numpy()]
                group, count = [], 0
                for u in perm:
                    group.append(int(u))
                    count += int(data.lengths[u])
                    if count >= batch_frames:
                        yield _batch(group)
                        group, count = [], 0
                if group:
                    yield _batch(group)

    def _batch(group):
        y = torch.from_numpy(data.labels(group))
        keep = y >= 0
        x = torch.stack([data.features(j, group)[keep] for j in range(L)])
        return x.to(dev), y[keep].to(dev)

    def dev_groups():
        for a in range(0, len(dev_utts), 32):
            group = dev_utts[a:a + 32]
            y = torch.from_numpy(data.labels(group))
            keep = y != -1  # unseen classes (UNSEEN) stay: always wrong, as in the probes
            if bool(keep.any()):
                x = torch.stack([data.features(j, group)[keep] for j in range(L)])
                yield x.to(dev), y[keep].to(dev)

    n_dev_items = data.num_items(dev_utts)
    dev_cache = list(dev_groups()) if n_dev_items * L * H * 4 <= max_cache_bytes else None

    def dev_accuracy() -> float:
        correct = total = 0
        with torch.no_grad():
            p = torch.softmax(logits, 0)
            for x, y in (dev_cache if dev_cache is not None else dev_groups()):
                pred = head(torch.einsum("l,lnh->nh", p, x)).argmax(1)
                correct += int((pred == y).sum())
                total += int(y.numel())
        return correct / total if total else float("nan")

    rows = []
    layer_cols = [f"weight_{l_}" for l_ in data.layers]
    it = batches()
    first = next(it)
    it = itertools.chain([first], it)
    with torch.no_grad():  # step 0: the starting weights, before any update
        z0 = torch.einsum("l,lnh->nh", torch.softmax(logits, 0), first[0])
        loss0 = float(F.cross_entropy(head(z0), first[1])) if first[1].numel() else float("nan")
    rows.append({"step": 0, "loss": loss0, "dev_accuracy": dev_accuracy(),
                 **dict(zip(layer_cols, torch.softmax(logits.detach().double(), 0).cpu().numpy()))})
    running = []
    for step in range(1, int(steps) + 1):
        x, y = next(it)
        if y.numel() == 0:
            continue
        p = torch.softmax(logits, 0)
        z = torch.einsum("l,lnh->nh", p, x)
        loss = F.cross_entropy(head(z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            w = torch.softmax(logits.detach().double(), 0).cpu().numpy()
            rows.append({"step": step, "loss": float(np.mean(running)),
                         "dev_accuracy": dev_accuracy(), **dict(zip(layer_cols, w))})
            running = []
    history = pd.DataFrame(rows, columns=["step", "loss", "dev_accuracy", *layer_cols])
    history.attrs.update({"classes": list(data.classes), "n_train": n_train_items,
                          "n_dev": data.num_items(dev_utts), "target": target, "level": level,
                          "layers": list(data.layers), "standardize": standardize,
                          "split_by": data.split_by, "dev_chance": data.chance,
                          "n_dev_unseen": data.n_test_unseen})
    featurizer = WeightedSumFeaturizer(store, layer_selections=data.layers,
                                       target_rate=data.target_rate)
    featurizer.set_weights(logits=logits.detach().double().cpu())
    return FeaturizerFit(featurizer, history)
