""":func:`probe_layers`: the ridge (the ``RidgeProbe`` measure) or logistic probe of
every stored layer, sharded when asked, as one table (``docs/probes.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import _validate as _v
from .._bootstrap import bootstrap_options, corpus_bootstrap
from .._device import resolve_device as _resolve_device
from .._numerics import renamed_layers, warn_degenerate
from ..distributed import Sharding
from ..store import utterance_selection
from ..upstreams._hub import weights_of
from .folds import check_folds, check_split_by, resolve_split
from .logistic import LogisticOptions, _logistic_layers
from .ridge import LAMBDAS
from .tables import (concat_tables, interval_table, result_row, result_table, score_replicates,
                     segment_result)
from .targets import LEVELS, ProbeTask, check_control, is_continuous, resolve_level

__all__ = ["METHODS", "RidgeOptions", "probe_layers"]

METHODS = ("ridge", "logistic")

@dataclass(frozen=True)
class RidgeOptions:
    """The ridge probe's penalty grid (``probe_layers(method=RidgeOptions(...))``),
    relative to the standardised covariance; several: each fold picks one on a dev part."""

    lambdas: tuple[float, ...] = LAMBDAS

    name = "ridge"

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(_v.numbers(self.lambdas, "lambdas")))


_OPTIONS = (RidgeOptions, LogisticOptions)


def _methods(method) -> list:
    out = []
    for m in _as_list(method, "method", (str, *_OPTIONS)):
        if isinstance(m, str) and m in METHODS:
            m = dict(zip(METHODS, _OPTIONS))[m]()
        if not isinstance(m, _OPTIONS):
            raise ValueError(f"method must be one of {METHODS}, RidgeOptions(...) or "
                             f"LogisticOptions(...) (or a list of them), got {m!r}")
        out.append(m)
    return out


def probe_layers(
    store,
    target: str | Sequence[str] = "phone",
    *,
    level: str | None = None,
    method="ridge",
    layers: Sequence[int] | None = None,
    folds: int = 5,
    split_by: str = "auto",
    control: bool | str = False,
    utterances=None,
    device=None,
    seed: int = 0,
    sharding: Sharding | None = None,
    bootstrap: int | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Cross-validated linear probes of every stored layer (``docs/probes.md``).

    Args:
        target: label name(s): columns of the phone alignments (``"phone"``,
            ``"word"``: frame level, frames labelled ``""`` left out) or of
            ``store.labels`` (``"speaker"`` ...: utterance level, mean-pooled features).
        level: ``"frame"``, ``"utterance"``, ``"segment"`` (each segment of the target
            in the alignments is one example, the mean of its frames; ``docs/probes.md``,
            "Segments") or ``None`` (utterance level for a column of ``store.labels``,
            else frame level).
        method: ``"ridge"``, ``"logistic"``, their options (:class:`RidgeOptions`,
            :class:`LogisticOptions`) or a list of these.
        split_by: ``"speaker"``, ``"utterance"`` or ``"auto"``
            (:func:`s3viz.probe.resolve_split`); the column ``split_by`` says which.
        control: ``True`` or a column defining the control type: Hewitt & Liang
            control tasks, columns ``control_accuracy`` and ``selectivity``.
        seed: seed of folds, control labels, the logistic probe's shuffling and the
            bootstrap's resamples.
        sharding: a :class:`~s3viz.distributed.Sharding` (``Sharding.of(corpus, store,
            positions)``; ridge, or logistic with ``dev_fraction=0``): ``store`` holds
            one shard, folds, classes and controls come from ``sharding.reference``
            (``utterances`` are positions in it), and sums go through
            ``sharding.reduce``, so each shard returns the table of the union
            (logistic: up to the order of float sums).
        bootstrap: resamples (e.g. 1000; None: no intervals) of the held-out scores
            over speakers (utterances when the corpus has none; column
            ``resampled_by``): columns ``<score>_lo`` and ``<score>_hi`` at
            ``confidence``, and the draws in
            ``attrs["bootstrap"]`` for :func:`s3viz.compare_scores`
            (``docs/measures.md``, "Error bars").
        confidence: the intervals' coverage (0.95).

    A continuous target (an acoustic track such as ``"f0"``, a column of numbers in
    ``store.labels``, ``"duration"`` at ``level="segment"``) gives a ridge regression
    per layer: ``r2``, ``rmse`` (in ``unit``), ``chance_r2`` (``docs/probes.md``,
    "Continuous targets").

    Returns:
        DataFrame with one row per target, method and layer (``accuracy``, ``chance``,
        ...); its columns and attrs: ``docs/probes.md``, "The table".
    """
    weights = weights_of(store)  # the frames' store, also in a sharded run
    if target is None:
        raise TypeError("target must be a label name (str) or a list of them, e.g. 'phone' or "
                        "['phone', 'speaker'], got None")
    targets = _as_list(target, "target")
    methods = _methods(method)
    seed = _v.integer(seed, "seed", minimum=0)
    check_control(control)
    boot = bootstrap_options(bootstrap, confidence)
    meta, positions = _shard_setup(store, sharding, methods)
    reduce = None if sharding is None else sharding.reduce
    folds = check_folds(folds)
    check_split_by(split_by)
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None, got {level!r}")
    layer_list = _v.stored_layers(store, layers)
    device = _resolve_device(device)
    if level == "segment":
        return _probe_segments(store, targets, methods, meta, positions, reduce,
                               layers=layer_list, folds=folds, split_by=split_by,
                               control=control, utterances=utterances, device=device, seed=seed,
                               bootstrap=boot)
    corpus = store if meta is None else meta  # the whole corpus's metadata
    sel = utterance_selection(utterances, len(corpus))
    for tgt in targets:
        if not isinstance(tgt, str):
            raise TypeError(f"target must be a label name (str), got {tgt!r}")
    splits = {tgt: resolve_split(corpus.labels, split_by, tgt, folds, sel) for tgt in targets}
    # the probes run on the measure engine's view of the store (imported here:
    # s3viz.measures builds on this package): the ridge probe is its RidgeProbe
    from ..measures._engine import StoreSource, run_measures
    from ..measures.probe import RidgeProbe, TaskCorpus

    # the corpus's labels and frame counts of every stored layer (summed over shards)
    ctx = StoreSource(store, meta=meta, positions=positions).context(
        device, reduce or (lambda t: t))
    unique, tables = list(dict.fromkeys(targets)), {}
    for opts in dict.fromkeys(m for m in methods if m.name == "ridge"):
        source = StoreSource(store, meta=meta, positions=positions, layers=layer_list)
        probe = RidgeProbe(unique, level=level, folds=folds, split_by=splits, seed=seed,
                           lambdas=opts.lambdas, control=control, utterances=sel,
                           profile_pass=True, bootstrap=boot[0], confidence=boot[1])
        if layer_list[0] != 0:  # frame-level folds balanced as probe_folds balances them
            probe.fold_frames = ctx.lengths()[:, 0]
        tables[opts] = run_measures([probe], source, device=device, reduce=reduce)["probe"]
    layer_ids = list(getattr(store, "layer_ids", range(store.num_layer)))
    degenerate = {}
    tasks = {}  # one task per target, shared by every logistic option
    draws, unit_of = corpus_bootstrap(corpus, sel, boot[0], boot[1], seed)
    for opts in dict.fromkeys(m for m in methods if m.name == "logistic"):
        rows, fold_accuracy, replicates = [], {}, {}
        for tgt in unique:
            lev = resolve_level(corpus, tgt, level)
            if is_continuous(corpus, tgt, lev):
                raise ValueError(f"target {tgt!r} is continuous: it is regressed by the ridge "
                                 "probe (method='ridge'); the logistic probe classifies")
            if tgt not in tasks:
                tasks[tgt] = task = ProbeTask(
                    TaskCorpus(ctx), tgt, lev, sel, folds, splits[tgt], seed, bool(control),
                    control if isinstance(control, str) else None)
                if lev == "frame":
                    task.set_frame_classes(layer_list)
            task = tasks[tgt]
            c = len(task.classes)
            per_layer = _logistic_layers(task, store, ctx.positions, layer_list, c, device,
                                         opts, reduce=reduce, units=None if draws is None
                                         else (unit_of, len(draws.names)))
            for layer in layer_list:
                result = per_layer[layer]
                if result[4]:
                    degenerate[layer] = result[4]
                rows.append(result_row(tgt, opts.name, lev, layer, int(layer_ids[layer]), c,
                                       folds, bool(control), result[:5], fold_accuracy))
                if draws is not None:
                    replicates[(tgt, opts.name, lev, layer)] = score_replicates(
                        draws, result[5], False, bool(control), result[4])
        tables[opts] = result_table(rows, fold_accuracy, bool(control), splits)
        if draws is not None:
            tables[opts] = interval_table(tables[opts], draws, replicates)
    warn_degenerate("probe_layers", degenerate, "accuracy")
    return concat_tables([(t, tables[m]) for t in targets for m in methods], folds=folds,
                         seed=seed, weights=weights)


def _as_list(v, name: str, single=str) -> list:
    vals = [v] if isinstance(v, single) else list(v)
    if not vals:
        raise ValueError(f"{name} must name at least one value")
    return vals


def _shard_setup(store, sharding, methods):
    """``(meta, positions)``: ``(None, None)``, or sharded the whole corpus's metadata
    and the corpus positions of the shard store's utterances."""
    if sharding is None:
        return None, None
    if not isinstance(sharding, Sharding):
        raise TypeError(f"sharding must be a s3viz.distributed.Sharding (e.g. "
                        f"Sharding.of(corpus, store, positions)), got {sharding!r}")
    reference = sharding.reference
    if reference is None:
        raise ValueError("sharded probes need sharding.reference (the whole corpus's "
                         "metadata): build it with Sharding.of(corpus, store, positions)")
    if any(m.name == "logistic" and m.dev_fraction != 0 for m in methods):
        raise ValueError(
            "sharded logistic probes need LogisticOptions(dev_fraction=0) (full-batch "
            "L-BFGS, whose gradients sum over shards); early stopping's minibatches cannot "
            "be split across shards")
    ref_index = {u: i for i, u in enumerate(reference.ids)}
    unknown = [u for u in store.ids if u not in ref_index]
    if unknown:
        raise ValueError(f"{len(unknown)} utterance(s) of the shard store are not in "
                         f"sharding.reference (e.g. {unknown[:5]}); pass the whole corpus's "
                         f"metadata")
    return reference, np.asarray([ref_index[u] for u in store.ids], dtype=np.int64)


def _probe_segments(store, targets, methods, meta, positions, reduce, *, layers, device,
                    utterances, control, bootstrap, **kw) -> pd.DataFrame:
    """probe_layers(level="segment") (``bootstrap``: resamples and confidence): ridge probes run :class:`~s3viz.measures.SegmentProbe`
    (streamable, shardable); other methods need every segment's mean at once, so they probe
    the stored segment means (:func:`s3viz.segments.segment_store`), unsharded."""
    from ..measures import SegmentProbe, StoreSource, run_measures
    from ..segments import segment_store

    control = "context" if control is True else control
    if len(methods) == 1 and methods[0].name == "ridge":
        probe = SegmentProbe(list(dict.fromkeys(targets)), lambdas=methods[0].lambdas,
                             profile_pass=True, utterances=utterances, control=control,
                             bootstrap=bootstrap[0], confidence=bootstrap[1], **kw)
        source = StoreSource(store, meta=meta, positions=positions, layers=layers)
        table = run_measures([probe], source, device=device, reduce=reduce)["segments"]
        return concat_tables([(t, table) for t in targets])
    if meta is not None:
        raise ValueError("probe_layers(level='segment', sharding=...) takes the ridge method "
                         "only: logistic segment probes need every segment's mean at once")
    tables, dropped = {}, {}
    for tgt in dict.fromkeys(targets):
        seg = segment_store(store, tgt, layers, utterances=utterances)
        with renamed_layers(layers):  # the means store's layer i is stored layer layers[i]
            res = probe_layers(seg, tgt, level="utterance", method=methods, control=control,
                               device=device, bootstrap=bootstrap[0],
                               confidence=bootstrap[1], **kw)
        tables[tgt] = segment_result(res, layers, store.layer_ids)
        dropped[tgt] = int(seg._dropped)
    return concat_tables([(t, tables[t]) for t in targets], n_dropped=dropped,
                         weights=weights_of(store))
