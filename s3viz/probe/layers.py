""":func:`probe_layers`: which layer of an upstream linearly encodes which label.

Validates the call, builds one :class:`~.targets.ProbeTask` per target, runs the
ridge or logistic probe of every stored layer (sharded when asked) and returns one
DataFrame row per target, method, level and layer, with control-task selectivity
when ``control=True``. The maths and its tolerances: ``docs/probes.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import _validate as _v
from .._device import resolve_device as _resolve_device
from .._numerics import layer_guard, warn_degenerate
from ..distributed import Sharding
from ..upstreams._hub import weights_of
from .folds import _positions, check_folds, check_split_by, resolve_split
from .logistic import LogisticOptions, _logistic_layers
from .ridge import LAMBDAS, _scores, ridge_layer_frame, ridge_layer_utterance
from .targets import LEVELS, ProbeTask, _pooled, _pooled_sharded, resolve_level

__all__ = ["METHODS", "RidgeOptions", "probe_layers"]

METHODS = ("ridge", "logistic")

CHUNK_FRAMES = 16384
"""Frames per chunk the ridge probe streams from a store (memory only: the result does
not depend on it)."""


@dataclass(frozen=True)
class RidgeOptions:
    """The ridge probe's penalty grid (``probe_layers(method=RidgeOptions(...))``).

    ``lambdas`` are relative to the standardised covariance; with several, each fold
    picks one on a dev part of its training part, a single one needs no dev part.
    """

    lambdas: tuple[float, ...] = LAMBDAS

    name = "ridge"

    def __post_init__(self):
        object.__setattr__(self, "lambdas", tuple(_v.numbers(self.lambdas, "lambdas")))


_OPTIONS = (RidgeOptions, LogisticOptions)


def _methods(method) -> list:
    """``method`` as a list of options objects (a name stands for its default options)."""
    vals = [method] if isinstance(method, (str, *_OPTIONS)) else list(method)
    if not vals:
        raise ValueError("method must name at least one value")
    out = []
    for m in vals:
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
) -> pd.DataFrame:
    """Cross-validated linear probes of every stored layer.

    Args:
        store: a :class:`~s3viz.store.LayerStore`.
        target: label name(s). Frame-level targets are columns of the phone
            alignments (``"phone"``, ``"word"``), read per frame with
            ``store.frame_labels`` (frames labelled ``""`` are left out);
            utterance-level targets are columns of ``store.labels``
            (``"speaker"``, ``"sentence_id"`` ...), probed on mean-pooled features.
        level: ``"frame"``, ``"utterance"``, ``"segment"`` or ``None`` (utterance
            level when the target is a column of ``store.labels``, else frame
            level). ``"segment"``: each segment of the target in the alignments
            (a phone, or a run of one word's phones for ``"word"``; silence left
            out; :func:`s3viz.segments.segment_table`) is one example, the mean
            of its frames; folds keep each utterance (or speaker) on one side,
            and the control type defaults to the segment with its neighbours;
            ``attrs["n_dropped"]`` maps each target to its segments shorter than a
            frame (left out).
        method: ``"ridge"``, ``"logistic"``, their options
            (:class:`RidgeOptions`: the penalty grid; :class:`LogisticOptions`:
            the logistic probe's training and memory) or a list of these
            (``docs/probes.md``).
        layers: stored layer indices to probe (default all).
        folds: number of grouped cross-validation folds (>= 2).
        split_by: ``"speaker"`` (no speaker in two folds), ``"utterance"``, or
            ``"auto"``: speaker when the labels allow it, else utterance (with a
            warning when a speaker column could not be used); see
            :func:`s3viz.probe.resolve_split`. The table's ``split_by`` column
            says which split each row used.
        control: ``True`` also trains on Hewitt & Liang control labels and reports
            ``control_accuracy`` and ``selectivity``; a string does so with that
            column defining a type for the control task (``docs/probes.md``).
        utterances: utterance positions to use (default all).
        device: torch device; ``None`` is cuda when available, else cpu.
        seed: seed of folds, control labels and the logistic probe's shuffling.
        sharding: a sharded run (ridge, or logistic with ``dev_fraction=0``, whose
            full-batch gradients are summed over shards): a
            :class:`~s3viz.distributed.Sharding` (``Sharding.of(corpus, store,
            positions)``). ``store`` then holds one shard (a subset of
            ``sharding.reference.ids``, the whole corpus's frame-free metadata);
            folds, classes and control labels come from the reference so every shard
            agrees, and ``utterances`` are positions in it. The ridge statistics, the
            pooled vectors (utterance level), the logistic probe's scaling, losses and
            gradients and the confusion counts are summed with ``sharding.reduce``, so
            each shard returns the same table as :func:`probe_layers` on the union of
            the shards (logistic: up to the order of float sums).

    Returns:
        DataFrame with one row per target, method and layer: ``target, method,
        level, layer, upstream_layer, accuracy`` (pooled over the test folds,
        every example is tested once), ``accuracy_std`` (std over folds),
        ``macro_f1``, ``chance`` (each fold's test examples scored as if
        predicted the majority class of that fold's training part: the same
        examples and the same "right" as ``accuracy``), ``n_classes``,
        ``n_train``, ``n_test`` (mean examples per fold), ``lambda`` (ridge:
        mean chosen penalty), with ``control`` ``control_accuracy`` and
        ``selectivity``, and ``split_by`` (the split each target used; also
        ``df.attrs["split_by"]``). When some test example's class is absent
        from its fold's training part (a :class:`~s3viz.probe.UnseenClassWarning`
        says so; a fold with only such examples is refused), also ``n_unseen``
        (those examples, over all folds) and ``unseen_fraction`` (their share
        of the tested examples): they count as wrong in ``accuracy`` and in
        ``chance`` alike.
        ``df.attrs["fold_accuracy"]`` maps ``(target, method, layer)`` to the
        accuracy of each fold (folds as in :func:`probe_folds`);
        ``df.attrs["weights"]`` the store's :attr:`~s3viz.store.LayerStore.weights`.
    """
    weights = weights_of(store)  # the frames' store, also in a sharded run
    if target is None:
        raise TypeError("target must be a label name (str) or a list of them, e.g. 'phone' or "
                        "['phone', 'speaker'], got None")
    targets = _as_list(target, "target")
    methods = _methods(method)
    seed = _v.integer(seed, "seed", minimum=0)
    if not isinstance(control, (bool, str)):
        raise TypeError(f"control must be True, False or the name of the column that defines "
                        f"a control type (e.g. 'word'), got {control!r}")
    store, shard_store, shard_pos_all = _shard_setup(store, sharding, methods)
    reduce = None if sharding is None else sharding.reduce
    folds = check_folds(folds)
    check_split_by(split_by)
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None, got {level!r}")
    if level == "segment":
        if shard_store is not None:
            raise ValueError("probe_layers(level='segment') does not take sharding; a sharded "
                             "run of segment probes is s3viz.measures.SegmentProbe under "
                             "run_measures(..., reduce=) or stream_analysis(shard=, reduce=)")
        out = _probe_segments(
            store, targets, method=methods, layers=_v.stored_layers(store, layers), folds=folds,
            split_by=split_by, control=control, utterances=utterances, device=device,
            seed=seed)
        out.attrs["weights"] = weights
        return out
    layer_list = _v.stored_layers(store, layers)
    sel = _positions(store, utterances)
    device = _resolve_device(device)
    control_by = control if isinstance(control, str) else None
    control = bool(control)
    layer_ids = list(getattr(store, "layer_ids", range(store.num_layer)))
    rows, splits, degenerate = [], {}, {}
    fold_accuracy = {}
    for tgt in targets:
        if not isinstance(tgt, str):
            raise TypeError(f"target must be a label name (str), got {tgt!r}")
        lev = resolve_level(store, tgt, level)
        split = resolve_split(store.labels, split_by, tgt, folds, sel)
        splits[tgt] = split
        task = ProbeTask(store, tgt, lev, sel, folds, split, seed, control, control_by)
        if lev == "frame":
            task.set_frame_classes(layer_list)
        shard = _task_shard(sel, shard_pos_all)
        c = len(task.classes)
        blocks = [slice(0, c)] + ([slice(c, 2 * c)] if control else [])
        for opts in methods:
            if opts.name == "ridge":
                per_layer = {layer: _ridge_layer(task, store, shard_store, shard, layer, blocks,
                                                 c, opts.lambdas, device, reduce)
                             for layer in layer_list}
            else:
                per_layer = _logistic_layers(task, store, layer_list, c, device, opts,
                                             shard_store=shard_store, shard=shard,
                                             reduce=reduce)
            degenerate.update({layer: per_layer[layer][4] for layer in layer_list
                               if len(per_layer[layer]) > 4 and per_layer[layer][4]})
            for layer in layer_list:
                rows.append(result_row(tgt, opts.name, lev, layer, int(layer_ids[layer]), c,
                                       folds, control, per_layer[layer], fold_accuracy))
    warn_degenerate("probe_layers", degenerate, "accuracy")
    return result_table(rows, fold_accuracy, control, splits, folds=folds, seed=seed,
                        weights=weights)


def _as_list(v, name: str) -> list:
    vals = [v] if isinstance(v, str) else list(v)
    if not vals:
        raise ValueError(f"{name} must name at least one value")
    return vals


def _task_shard(sel: np.ndarray, shard_pos_all):
    """Sharded: ``(shard store positions, task positions)`` of the task's utterances on
    this shard, in shard order; unsharded: None."""
    if shard_pos_all is None:
        return None
    task_of = {int(u): k for k, u in enumerate(sel)}
    keep = [j for j, u in enumerate(shard_pos_all) if int(u) in task_of]
    return keep, [task_of[int(shard_pos_all[j])] for j in keep]


def _ridge_layer(task, store, shard_store, shard, layer, blocks, c, lambdas, device, reduce):
    """The ridge probe of one layer: frames streamed, or utterances pooled (sharded or not)."""
    if task.level == "frame":
        return ridge_layer_frame(task, store if shard is None else shard_store, layer, blocks, c,
                                 lambdas, device, CHUNK_FRAMES, torch.float64, shard=shard,
                                 reduce=reduce)
    if shard is not None:
        x = _pooled_sharded(shard_store, layer, task, shard, reduce).to(device)
        guard = layer_guard(shard_store, layer, list(shard[0]), centre=False, level="utterance",
                            pooled=x, reduce=reduce, per_feature=True)
    else:
        x = _pooled(store, layer, task).to(device)
        guard = layer_guard(store, layer, task.sel, centre=False, level="utterance", pooled=x,
                            per_feature=True)
    return ridge_layer_utterance(task, x, blocks, c, lambdas, torch.float64, guard)


def _shard_setup(store, sharding, methods):
    """``(store, shard_store, shard_pos_all)``: unsharded, ``(store, None, None)``.

    Sharded, the task is built on ``sharding.reference`` (the whole corpus's metadata)
    and the frames come from ``shard_store``, whose utterances sit at ``shard_pos_all``
    in the reference.
    """
    if sharding is None:
        return store, None, None
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
    pos = np.asarray([ref_index[u] for u in store.ids], dtype=np.int64)
    return reference, store, pos


def _probe_segments(store, targets, *, layers, utterances, control, **kw) -> pd.DataFrame:
    """probe_layers(level="segment"): the utterance-level probes of a store of segments."""
    from ..segments import segment_store

    tables, dropped = [], {}
    for tgt in targets:
        seg = segment_store(store, tgt, layers, utterances=utterances)
        res = probe_layers(seg, tgt, level="utterance", layers=None, control=(
            "context" if control is True else control), **kw)
        tables.append(segment_result(res, layers, store.layer_ids))
        dropped[tgt] = int(seg._dropped)
    return segment_results(tables, dropped)


def segment_result(res: pd.DataFrame, layers, layer_ids) -> pd.DataFrame:
    """An utterance-level probe table of a store of segments, as segment-level rows of
    the original layers (``layers[i]`` was layer ``i`` of the segments)."""
    res["level"] = "segment"
    res["layer"] = [layers[i] for i in res["layer"]]
    res["upstream_layer"] = [int(layer_ids[v]) for v in res["layer"]]
    res.attrs["fold_accuracy"] = {(t, m, layers[i]): v
                                  for (t, m, i), v in res.attrs["fold_accuracy"].items()}
    return res


def segment_results(tables: list, dropped: dict) -> pd.DataFrame:
    """One segment-level probe table from each target's (``attrs["n_dropped"]``: the
    segments of each target left out for owning no frame)."""
    out = pd.concat(tables, ignore_index=True)
    if "n_unseen" in out.columns:  # some target had unseen classes, the others none
        out = out.fillna({"n_unseen": 0, "unseen_fraction": 0.0}).astype({"n_unseen": int})
        out = out[[c for c in max((list(t.columns) for t in tables), key=len)]]
    out.attrs = {**tables[0].attrs, "fold_accuracy": {
        k: v for t in tables for k, v in t.attrs["fold_accuracy"].items()},
        "n_dropped": dropped,  # every target's count (it held the first target's only)
        "split_by": split_attr(dict(zip(out["target"], out["split_by"])))}
    return out


_RESULT_COLUMNS = ["target", "method", "level", "layer", "upstream_layer", "accuracy",
                   "accuracy_std", "macro_f1", "chance", "n_classes", "n_train", "n_test", "lambda"]
_UNSEEN_COLUMNS = ["n_unseen", "unseen_fraction"]


def result_row(tgt, meth, lev, layer: int, upstream_layer: int, c: int, folds: int,
                control: bool, result, fold_accuracy: dict) -> dict:
    """One row of :func:`probe_layers`'s table from ``(conf, counts, n_train, lambdas)``."""
    conf, counts, n_fold, lam = result[:4]
    main = _scores(conf[0], counts[:, :c] if counts.ndim == 2 else counts[0])
    if len(result) > 4 and result[4]:  # a degenerate layer (s3viz._numerics.layer_guard)
        main.update(accuracy=np.nan, accuracy_std=np.nan, macro_f1=np.nan,
                    fold_accuracy=[np.nan] * len(main["fold_accuracy"]))
    fold_accuracy[(tgt, meth, layer)] = main.pop("fold_accuracy")
    n_total = conf[0].sum()
    # test examples whose class the fold's training part lacks (check_heldout warned)
    train = counts[:, :c] if counts.ndim == 2 else counts[0]
    n_unseen = int((conf[0].sum(2) * (train == 0)).sum())
    row = dict(target=tgt, method=meth, level=lev, layer=layer, upstream_layer=upstream_layer,
               **main, n_classes=c, n_train=round(float(np.mean(n_fold))),
               n_test=round(n_total / folds),
               **{"lambda": float(lam[0]) if lam is not None else float("nan")},
               n_unseen=n_unseen, unseen_fraction=n_unseen / max(int(n_total), 1))
    if control:
        cc = counts[:, c:] if counts.ndim == 2 else counts[1]
        ctrl = _scores(conf[1], cc)
        ctrl.pop("fold_accuracy")
        row["control_accuracy"] = ctrl["accuracy"] if np.isfinite(row["accuracy"]) else np.nan
        row["selectivity"] = row["accuracy"] - ctrl["accuracy"]
    return row


def split_attr(splits: dict):
    """``attrs["split_by"]``: the one split of every target, or the dict target -> split."""
    if len(set(splits.values())) == 1:
        return next(iter(splits.values()))
    return dict(splits)


def result_table(rows: list[dict], fold_accuracy: dict, control: bool, splits: dict,
                 **attrs) -> pd.DataFrame:
    """The probe table; ``splits`` maps each target to the split it used (column ``split_by``)."""
    cols = _RESULT_COLUMNS + (["control_accuracy", "selectivity"] if control else [])
    if any(r["n_unseen"] for r in rows):  # only then: tables without unseen classes unchanged
        cols += _UNSEEN_COLUMNS
    df = pd.DataFrame(rows, columns=cols)
    df["split_by"] = [splits[t] for t in df["target"]]
    attrs["split_by"] = split_attr(splits)
    df.attrs["fold_accuracy"] = fold_accuracy
    df.attrs.update(attrs)
    return df
