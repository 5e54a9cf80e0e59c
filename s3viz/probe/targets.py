"""Probe targets: the one set of label rules (``docs/probes.md``, "Labels") and
:class:`ProbeTask`, the one place that reads a target with them and derives its
classes, split groups, folds, sub-folds, held-out checks and control classes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._labels import label_str, label_strings
from ..align import frame_labels as _align_frame_labels
from .folds import (_store_arg, assign_folds, check_dev_parts, check_heldout, control_labels,
                    fold_class_counts, one_to_one, resolve_split, split_groups)

LEVELS = ("frame", "utterance", "segment")

UNSEEN = -2
"""Class id of a held-out example whose class the training part lacks (always wrong;
:meth:`ProbeTask.held_out_classes`); -1 is an unlabelled example."""


def _columns(tables) -> list[str]:
    cols: list[str] = []
    for t in tables or []:
        if t is not None:
            cols += [c for c in t.columns if c not in cols and c not in ("start", "end")]
    return cols


def _phone_columns(store) -> list[str]:
    return _columns(getattr(store, "phones", None))


def track_columns(store) -> list[str]:
    """The acoustic tracks the store's utterances carry (``store.tracks``,
    :func:`s3viz.data.add_acoustic_tracks`): continuous frame-level targets."""
    return _columns(getattr(store, "tracks", None))


UNITS = {"f0": "Hz", "f0_semitones": "st re 100 Hz", "intensity": "dB", "f1": "Hz",
         "f2": "Hz", "f3": "Hz", "voicing": "", "duration": "s"}
"""The unit of each known continuous target (R\u00b2 has none; RMSE is in this unit)."""


def resolve_level(store, target: str, level: str | None) -> str:
    label_cols = [c for c in store.labels.columns if c != "id"]
    frame_cols = _phone_columns(store) + [c for c in track_columns(store)
                                          if c not in _phone_columns(store)]
    if level is None:
        if target in label_cols:
            return "utterance"
        if target in frame_cols:
            return "frame"
    elif level == "utterance" and target in label_cols or level == "frame" and target in frame_cols:
        return level
    elif level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None (guess), got {level!r}")
    raise KeyError(f"unknown target {target!r} for level={level!r}: utterance-level targets "
                   f"(columns of store.labels) are {label_cols}; frame-level targets (columns "
                   f"of the phone alignments, acoustic tracks) are "
                   f"{frame_cols or 'none (the store has no alignments or tracks)'}")


def is_continuous(store, target: str, level: str) -> bool:
    """A regression target: an acoustic track at frame level, or a column of numbers
    (int or float dtype; not bool, not a column of objects) at utterance level
    (``docs/probes.md``, "Continuous targets"). Numbers meant as class codes are
    classified when written as strings."""
    if level == "frame":
        return target in track_columns(store) and target not in _phone_columns(store)
    col = store.labels[target] if target in store.labels.columns else None
    return col is not None and pd.api.types.is_numeric_dtype(col.dtype) \
        and not pd.api.types.is_bool_dtype(col.dtype)


@dataclass
class FrameTargets:
    """The frame labels of one layer geometry; rows are the selected utterances' frames
    in selection order. ``y`` (-1: unlabelled), ``fold`` and ``y_ctrl`` are set by
    :meth:`ProbeTask.set_frame_classes`."""

    raw: np.ndarray  # label strings, "" unlabelled
    labelled: np.ndarray
    utt: np.ndarray  # position in the task's selection
    lengths: np.ndarray  # frames per selected utterance
    y: np.ndarray | None = None
    fold: np.ndarray | None = None
    y_ctrl: np.ndarray | None = None


class ProbeTask:
    """Everything about one target that does not depend on the layer.

    Utterance level: ``classes``, ``y``, ``utt_fold`` and ``y_ctrl`` at construction.
    Frame level: with :meth:`set_frame_classes` (every frame label read first), or
    :meth:`set_frame_folds`, :meth:`alignment_classes` then :meth:`keep_seen` (a
    stream's per-fold class counts). ``fixes``: how the user leaves out unlabelled or
    unaligned utterances (``{"labels": ..., "alignments": ...}``), for the messages.
    """

    def __init__(self, store, target, level, sel, folds, split_by, seed, control=False,
                 control_by=None, fixes: dict | None = None):
        self._base(store, target, level, sel, seed, fixes, control, control_by)
        self.folds, self.split_by = folds, split_by
        self.groups = split_groups(store, sel, split_by)
        if level == "utterance":
            self._init_utterance(store)
        elif self.continuous:
            self._read_tracks()
        else:
            self._read_labels()

    def _base(self, store, target, level, sel, seed, fixes, control=False, control_by=None):
        self.store, self.fixes = store, fixes or {}
        self.target, self.level, self.sel, self.seed = target, level, sel, seed
        self.continuous = is_continuous(store, target, level)
        self.unit = UNITS.get(target, "") if self.continuous else ""
        self.control, self.control_by = control, control_by
        self.n_utt = len(store)
        self.ids = np.asarray(store.ids, dtype=object)[sel]
        self.where = np.full(self.n_utt, -1, dtype=np.int64)  # position -> selection index
        self.where[sel] = np.arange(len(sel))
        self._labels: dict[tuple, FrameTargets] = {}  # frame level: per layer geometry
        self._keys: dict[int, tuple] = {}

    def _read_tracks(self) -> None:
        """Refuse utterances without the track (frame-level regression)."""
        tracks = self.store.tracks
        missing = [self.ids[i] for i, u in enumerate(self.sel)
                   if tracks[u] is None or self.target not in tracks[u].columns]
        if missing:
            raise ValueError(f"frame-level target {self.target!r} is an acoustic track, but "
                             f"{len(missing)} utterance(s) do not carry it (e.g. {missing[:5]}); "
                             "add it with s3viz.data.add_acoustic_tracks, or probe the "
                             "utterances that carry it (`utterances=`)")

    def _read_values(self) -> np.ndarray:
        """The numbers of an utterance-level regression target, missing ones refused."""
        col = self.store.labels[self.target].iloc[np.asarray(self.sel)]
        if pd.api.types.is_integer_dtype(col.dtype):
            # centred in whole numbers first: 2**60 + age stays exact in float64
            vals = col.to_numpy(dtype=object, na_value=None)
            ints = sorted(int(v) for v in vals if v is not None)
            centre = ints[len(ints) // 2] if ints else 0
            y = np.array([np.nan if v is None else float(int(v) - centre) for v in vals])
        else:
            y = col.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = [self.ids[i] for i in np.flatnonzero(~np.isfinite(y))]
        if bad:
            fix = self.fixes.get("labels", "fill store.labels[{target!r}] or probe only the "
                                 "labelled ones with `utterances=`")
            raise ValueError(f"target {self.target!r} is missing or not finite for {len(bad)} "
                             f"utterance(s), e.g. {bad[:5]}; " + fix.format(target=self.target))
        check_values(self.target, y)
        return y

    def set_scale(self, values: np.ndarray) -> None:
        """The regression target's reference point (median) and power-of-two scale (at
        least the largest deviation), fixed from all its values: the probe fits
        ``(y - shift) / scale`` so that R\u00b2 does not depend on the target's offset
        or magnitude (1e8 + y, 1e300 * y); RMSE is reported in the target's unit."""
        v = values[np.isfinite(values)]
        self.y_shift = float(np.median(v))
        dev = float(np.max(np.abs(v - self.y_shift)))
        self.y_scale = float(2.0 ** np.ceil(np.log2(dev))) if dev > 0 else 1.0

    def normalize(self, y: np.ndarray) -> np.ndarray:
        """Target values as the probe fits them (:meth:`set_scale`; exact: a power of two)."""
        return (np.asarray(y, dtype=np.float64) - self.y_shift) / self.y_scale

    def _read_labels(self) -> np.ndarray | None:
        """Refuse unaligned (frame level) or unlabelled utterances, naming them and the fix
        (leaving them out silently would change what is measured); the label strings of
        utterance level."""
        target, ids = self.target, self.ids
        if self.level == "frame":
            phones = self.store.phones
            missing = [ids[i] for i, u in enumerate(self.sel) if phones[u] is None]
            if missing:
                fix = self.fixes.get("alignments", "probe the aligned ones with `utterances=[i "
                                     "for i, p in enumerate(store.phones) if p is not None]`")
                raise ValueError(f"frame-level target {target!r} needs phone alignments, but "
                                 f"{len(missing)} utterance(s) have none (e.g. {missing[:5]}); "
                                 f"{fix}")
            lacking = [ids[i] for i, u in enumerate(self.sel) if target not in phones[u].columns]
            if lacking:
                raise ValueError(f"the alignments of {len(lacking)} utterance(s) (e.g. "
                                 f"{lacking[:5]}) have no column {target!r}")
            return None
        labels = self.store.labels
        if target not in labels.columns:
            raise KeyError(f"target {target!r} is not a column of the labels; columns: "
                           f"{list(labels.columns)}")
        keys = label_strings(labels[target].to_numpy()[np.asarray(self.sel)])
        bad = [ids[i] for i, v in enumerate(keys) if v == ""]
        if bad:
            fix = self.fixes.get("labels", "fill store.labels[{target!r}] or probe only the "
                                 "labelled ones with `utterances=`")
            raise ValueError(f"target {target!r} is missing (None/NaN/'') for {len(bad)} "
                             f"utterance(s), e.g. {bad[:5]}; " + fix.format(target=target))
        return keys

    @classmethod
    def held_out(cls, store, target: str, level: str, sel: np.ndarray, *,
                 test_fraction: float, split_by: str, seed: int,
                 fixes: dict | None = None) -> ProbeTask:
        """The task of one held-out part (``train_featurizer``, ``WeightedScorer``): the
        selected utterances dealt into ``max(3, round(1 / test_fraction))`` folds of
        whole groups balanced by frames (as :func:`~.folds.probe_folds`); fold 0 is held
        out, :meth:`held_out_classes` then fixes the classes from the rest."""
        task = cls.__new__(cls)
        task._base(store, target, level, sel, seed, fixes)
        task.keys = task._read_labels()
        task.folds = folds = max(3, round(1.0 / test_fraction))
        task.split_by = resolve_split(store.labels, split_by, target, folds, sel)
        task.groups = split_groups(store, sel, task.split_by)
        task.set_frame_folds()
        return task

    def held_out_classes(self, raw: np.ndarray, utt: np.ndarray) -> np.ndarray:
        """Class ids (-1 unlabelled, :data:`UNSEEN`) of a :meth:`held_out` task's examples
        ``raw`` (label strings, ``""`` unlabelled) of selected utterances ``utt``. The
        classes (set here) are the training part's; fold 0 is checked as the probes'."""
        fold = self.utt_fold[utt]
        train = raw[fold >= 1]
        classes = sorted({v for v in train if v != ""})
        check_classes(self.target, classes, int((train != "").sum())
                      if self.level == "utterance" else None, where="in the training split")
        self.classes = classes
        code = {c: k for k, c in enumerate(classes)}
        y = np.array([code.get(v, -1) for v in raw], dtype=np.int64)
        labelled = raw != ""
        all_classes, y_all = np.unique(raw[labelled].astype(str), return_inverse=True)
        part = np.minimum(fold[labelled], 1)  # fold 0 is the held-out part, the rest trains
        test, train_counts = fold_class_counts(y_all, part, 2, len(all_classes))
        self.check_heldout(test[:1], train_counts[:1],
                           "frame" if self.level == "frame" else "utterance", y=y_all,
                           groups=self.groups[utt][labelled], classes=all_classes,
                           fewer=f"hold out fewer groups (now {1 / self.folds:.0%} of them)")
        y[(fold == 0) & labelled & (y < 0)] = UNSEEN
        return y

    def label_strings_at(self, rate: int, lengths: np.ndarray,
                         layer: int | None = None) -> np.ndarray:
        """The label strings (``""``: unlabelled) of the first ``lengths[i]`` frames of each
        selected utterance, concatenated: those of stored ``layer`` when given, else
        aligned at ``rate`` samples per frame (:func:`s3viz.align.frame_labels`)."""
        if layer is not None:
            d = self.frame_targets(layer)
            offs = np.concatenate([[0], np.cumsum(d.lengths)])
            parts = [d.raw[offs[i]:offs[i] + int(n)] for i, n in enumerate(lengths)]
        else:
            parts = [label_strings(_align_frame_labels(self.store.phones[u], int(n), rate,
                                                       column=self.target))
                     for u, n in zip(self.sel, lengths)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

    # -- what the probes read -------------------------------------------------
    @property
    def index(self) -> dict:
        """Class name -> id."""
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def width(self) -> int:
        """Columns of one head: the classes (one-hot), or 1 for a regression target."""
        return 1 if self.continuous else len(self.classes)

    @property
    def blocks(self) -> list[slice]:
        """The target's columns of a one-hot of all heads (target, control) and the control's."""
        c = self.width
        return [slice(0, c)] + ([slice(c, 2 * c)] if self.control else [])

    def heads(self, rows: np.ndarray, d: FrameTargets | None = None) -> np.ndarray:
        """``(len(rows), heads)`` class ids of the target and (``control``) the control
        task of utterance-level examples ``rows`` (or the rows of frames ``d``)."""
        src = self if d is None else d
        return np.stack([src.y[rows]] + ([src.y_ctrl[rows]] if self.control else []), 1)

    def sub_folds(self, lambdas: Sequence[float] | None = None) -> np.ndarray:
        """The ridge probe's sub-fold of each utterance: its fold, or with 2 folds
        ``2 * fold + part``, each fold cut in two parts of whole groups for a dev part
        (:func:`~.folds.check_dev_parts` unless ``lambdas`` is one penalty)."""
        if self.folds != 2:
            return self.utt_fold.copy()
        if lambdas is None or len(lambdas) > 1:
            check_dev_parts(self.utt_fold, self.groups, self.folds, self.split_by, self.target)
        rng = np.random.default_rng([self.seed, 77])
        g_uniq, g_inv = np.unique(self.groups.astype(str), return_inverse=True)
        g_sub = np.zeros(len(g_uniq), dtype=np.int64)
        for f in range(self.folds):  # alternate parts within each fold so both are non-empty
            members = np.unique(g_inv[self.utt_fold == f])
            g_sub[rng.permutation(members)] = np.arange(len(members)) % 2
        return self.utt_fold * 2 + g_sub[g_inv]

    def check_heldout(self, test, train, items: str, **kw) -> np.ndarray:
        """:func:`~.folds.check_heldout` of this task's ``(folds, C)`` class counts."""
        return check_heldout(test, train, target=self.target, split_by=self.split_by,
                             level="segment" if items == "segment" else self.level,
                             items=items, **{"classes": self.classes, **kw})

    # -- utterance level ------------------------------------------------------
    def _init_utterance(self, store):
        if self.continuous:
            return self._init_values(store)
        keys = self._read_labels()
        self.classes, y = np.unique(keys.astype(str), return_inverse=True)
        check_classes(self.target, self.classes, len(keys))
        self.y = y.astype(np.int64)
        if self.split_by == "speaker" and one_to_one(self.groups, self.y):
            raise ValueError(f"target {self.target!r} identifies the speaker one-to-one, so "
                             "with split_by='speaker' no test class is ever seen in "
                             "training; use split_by='utterance' to probe speaker identity")
        # utterances are stratified by class; segments share their utterance's fold
        segments = getattr(store, "_group_ids", None) is not None
        strata = self.y if self.split_by == "utterance" and not segments else None
        self.utt_fold = assign_folds(self.groups, np.ones(len(self.sel)), self.folds, self.seed,
                                     strata=strata, what=self.split_by)
        self.check_heldout(*fold_class_counts(self.y, self.utt_fold, self.folds,
                                              len(self.classes)),
                           "segment" if segments else "utterance", y=self.y, groups=self.groups)
        if self.control:
            self.y_ctrl = control_labels(self._control_types(store), self.y,
                                         len(self.classes), self.seed)

    def _control_types(self, store) -> np.ndarray:
        """The type of each selected utterance for its control task (``control_by`` or
        ``text``)."""
        by = self.control_by
        if by is None:
            if self.target == "text" or "text" not in store.labels.columns:
                raise ValueError("control=True at utterance level needs control=<column of "
                                 "store.labels> giving the type of each utterance (default "
                                 f"'text', not usable for target {self.target!r})")
            by = "text"
        if by not in store.labels.columns:
            raise KeyError(f"control={by!r} is not a column of store.labels: "
                           f"{list(store.labels.columns)}")
        return store.labels[by].to_numpy()[self.sel]

    def _init_values(self, store):
        """An utterance-level regression target: its values, folds of whole groups
        balanced by count, and (``control``) each type's random value."""
        self.classes = None
        raw = self._read_values()
        self.set_scale(raw)
        self.y = self.normalize(raw)
        self.utt_fold = assign_folds(self.groups, np.ones(len(self.sel)), self.folds, self.seed,
                                     what=self.split_by)
        if self.control:
            self.y_ctrl = control_values(self._control_types(store), self.y, self.seed)

    # -- frame level ----------------------------------------------------------
    def frame_key(self, layer: int) -> tuple:
        """Layers with equal key have identical frame labels."""
        if layer not in self._keys:
            lengths = np.asarray(self.store.lengths(layer))[self.sel]
            rf = self.store.receptive_fields[layer]
            self._keys[layer] = (int(self.store.downsample_rates[layer]), int(rf),
                                 hash(lengths.tobytes()))
        return self._keys[layer]

    def frame_targets(self, layer: int) -> FrameTargets:
        """The :class:`FrameTargets` of ``layer`` (shared by layers of one geometry)."""
        key = self.frame_key(layer)
        if key not in self._labels:
            lab = np.asarray(self.store.frame_labels(
                layer, column=self.target, utterances=_store_arg(self.sel, self.n_utt)),
                dtype=object)
            lengths = np.asarray(self.store.lengths(layer))[self.sel].astype(np.int64)
            if lab.shape[0] != lengths.sum():
                raise RuntimeError(f"store.frame_labels({layer}) gave {lab.shape[0]} labels "
                                   f"for {lengths.sum()} frames")
            raw = label_strings(lab)
            self._labels[key] = FrameTargets(raw=raw, labelled=raw != "", lengths=lengths,
                                             utt=np.repeat(np.arange(len(self.sel)), lengths))
        return self._labels[key]

    def set_frame_folds(self, weights: np.ndarray | None = None) -> None:
        """The folds: groups balanced by ``weights`` per selected utterance (default its
        frames in layer 0, as :func:`~.folds.probe_folds`; :meth:`held_out` at any level)."""
        if weights is None:
            weights = np.asarray(self.store.lengths(0))[self.sel]
        self.utt_fold = assign_folds(self.groups, weights, self.folds, self.seed,
                                     what=self.split_by)

    def set_frame_classes(self, layers: Sequence[int], weights: np.ndarray | None = None):
        """Fix the class list from the labels of all probed layers, the folds
        (:meth:`set_frame_folds`), each frame's class, fold and control class, and
        check the held-out classes."""
        for layer in layers:
            self.frame_targets(layer)
        all_labels = np.concatenate([d.raw[d.labelled] for d in self._labels.values()])
        self.classes = np.unique(all_labels.astype(str))
        check_classes(self.target, self.classes, len(all_labels))
        self.set_frame_folds(weights)
        index = self.index
        for (rate, rf, _), d in self._labels.items():
            d.y = np.full(d.raw.shape[0], -1, dtype=np.int64)
            d.y[d.labelled] = [index[v] for v in d.raw[d.labelled]]
            d.fold = self.utt_fold[d.utt]
            if self.control:
                d.y_ctrl = self._frame_control(d, rate, rf)
        self._check_layers([(*fold_class_counts(d.y, d.fold, self.folds, len(self.classes)),
                             d.y, self.groups[d.utt]) for d in self._labels.values()])

    def set_frame_values(self, layers: Sequence[int], weights: np.ndarray | None = None):
        """A frame-level regression target: each probed layer's frame values (NaN:
        undefined, e.g. F0 of an unvoiced frame: left out and counted), the folds
        (:meth:`set_frame_folds`) and (``control``) each frame's control value."""
        self.classes = None
        for layer in layers:
            key = self.frame_key(layer)
            if key in self._labels:
                continue
            v = np.asarray(self.store.frame_values(
                layer, self.target, utterances=_store_arg(self.sel, self.n_utt)),
                dtype=np.float64)
            lengths = np.asarray(self.store.lengths(layer))[self.sel].astype(np.int64)
            if v.shape[0] != lengths.sum():
                raise RuntimeError(f"store.frame_values({layer}) gave {v.shape[0]} values "
                                   f"for {lengths.sum()} frames")
            self._labels[key] = FrameTargets(raw=v, labelled=np.isfinite(v), lengths=lengths,
                                             utt=np.repeat(np.arange(len(self.sel)), lengths))
        every = np.concatenate([d.raw for d in self._labels.values()])
        check_values(self.target, every)
        self.set_scale(every)
        self.set_frame_folds(weights)
        for (rate, rf, _), d in self._labels.items():
            d.y, d.fold = self.normalize(d.raw), self.utt_fold[d.utt]
            if self.control:
                d.y_ctrl = self._frame_control(d, rate, rf)

    def _check_layers(self, parts: list) -> None:
        """The held-out check of each layer's ``(test, train, y, groups)`` frame counts, one
        warning (layers of other geometries label frames alike)."""
        warned = False
        for test, train, y, groups in parts:
            warned = bool(self.check_heldout(test, train, "frame", warn=not warned, y=y,
                                             groups=groups).any()) or warned

    def alignment_classes(self) -> None:
        """The classes of the selected utterances' alignments, before any frame is read
        (a stream: :meth:`keep_seen` keeps those its frames carry)."""
        values = {v for u in self.sel
                  for v in label_strings(self.store.phones[u][self.target].tolist())}
        self.classes = np.asarray(sorted(v for v in values if v != ""), dtype=object)
        check_classes(self.target, self.classes, None, where="in the corpus's alignments")

    def keep_seen(self, counts: list[np.ndarray]) -> np.ndarray:
        """Keep the classes that label a frame, given each layer's ``(folds, C)`` frames
        per fold and class, and check the held-out classes; returns the kept columns."""
        keep = np.flatnonzero(sum(c.sum(0) for c in counts) > 0)
        self.classes = self.classes[keep]
        check_classes(self.target, self.classes, None, where="among the labelled frames")
        self._check_layers([(c[:, keep], c[:, keep].sum(0, keepdims=True) - c[:, keep], None,
                             None) for c in counts])
        return keep

    def _frame_control(self, d: FrameTargets, rate, rf) -> np.ndarray:
        """Each frame's control class (or value, for a regression target: the types are
        then those of the phone tier)."""
        by = "context" if self.control_by is None else self.control_by
        tier = "phone" if self.continuous else self.target
        types = np.empty(d.raw.shape[0], dtype=object)
        offs = np.concatenate([[0], np.cumsum(d.lengths)])
        for i, u in enumerate(self.sel):
            ph = self.store.phones[u]
            if ph is None:
                raise ValueError(f"control={self.control_by or True!r}: control tasks type "
                                 f"frames by the alignment, and utterance {self.ids[i]!r} has "
                                 "none; probe the aligned utterances (`utterances=`) or pass "
                                 "control=False")
            if by == "context":
                ph = ph.sort_values("start", kind="stable")
                if tier not in ph.columns:
                    raise KeyError(f"control={by!r} for target {self.target!r} types frames by "
                                   f"the {tier!r} tier, which the alignment of utterance "
                                   f"{self.ids[i]!r} lacks; pass control=<an alignment column>")
                lab = [label_str(v) for v in ph[tier].tolist()]
                ctx = [f"{a}|{b}|{c}" for a, b, c in zip(["<s>"] + lab[:-1], lab, lab[1:] + ["</s>"])]
                ph = pd.DataFrame({"start": ph["start"].to_numpy(), "end": ph["end"].to_numpy(),
                                   "_type": ctx})
                col = "_type"
            else:
                if by not in ph.columns:
                    raise KeyError(f"control={by!r} is not a column of the alignment of "
                                   f"utterance {self.ids[i]!r}: {list(ph.columns)}")
                col = by
            types[offs[i]:offs[i + 1]] = _align_frame_labels(
                ph, int(d.lengths[i]), rate, column=col, receptive_field_samples=rf)
        if self.continuous:
            out = np.full(d.raw.shape[0], np.nan)
            out[d.labelled] = control_values(types[d.labelled], d.y[d.labelled], self.seed)
            return out
        if by == "context":  # the middle of the context must be the frame's own label
            mid = np.asarray([t.split("|")[1] if t else "" for t in types], dtype=object)
            if not np.array_equal(mid[d.labelled], d.raw[d.labelled]):
                raise RuntimeError("control types disagree with store.frame_labels "
                                   "(alignment convention mismatch)")
        y_ctrl = np.full(d.raw.shape[0], -1, dtype=np.int64)
        m = d.labelled
        y_ctrl[m] = control_labels(types[m], d.y[m], len(self.classes), self.seed)
        return y_ctrl


def control_values(types: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """The control task of a regression target, as Hewitt & Liang's for classes: each
    type gets one value drawn from the targets ``y`` (their empirical distribution);
    returns the float64 control target of each example."""
    y = np.asarray(y, dtype=np.float64)
    types = np.asarray([label_str(v) for v in types], dtype=object).astype(str)
    uniq, inv = np.unique(types, return_inverse=True)
    rng = np.random.default_rng([int(seed), 4612])
    return y[rng.integers(0, len(y), size=len(uniq))][inv] if len(y) else y.copy()


def check_values(target: str, y: np.ndarray) -> None:
    """Refuse a regression target that does not vary (nothing to predict)."""
    finite = y[np.isfinite(y)]
    if not len(finite):
        raise ValueError(f"target {target!r} has no defined value among the probed examples "
                         f"(all {len(y)} are NaN: e.g. F0 of unvoiced frames only, or empty "
                         "tracks): nothing to regress; choose another target or utterances")
    if len(finite) < 2 or float(finite.max()) == float(finite.min()):
        which = f" (every value is {float(finite[0])!r})" if len(finite) else ""
        raise ValueError(f"target {target!r} does not vary among the probed examples{which}: "
                         "nothing to regress; choose another target or more utterances")


def check_control(control) -> None:
    if not isinstance(control, (bool, str)):
        raise TypeError(f"control must be True, False or the name of the column that defines "
                        f"a control type (e.g. 'word'), got {control!r}")


def _number(s: str):
    try:
        f = float(s)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def check_spellings(what: str, classes, where: str = "") -> None:
    """Refuse two classes that are strings spelling one number differently (``"1"`` and
    ``"1.0"``, ``"True"`` and ``"1"``): only the user can say if they are one class. Every
    categorical label (a probe's target, an ABX condition) is read through this check."""
    by_value: dict[float, list[str]] = {}
    for c in classes:
        # True == 1 and False == 0: a column mixing booleans with 0/1 spells one value twice
        f = {"True": 1.0, "False": 0.0}.get(str(c), _number(str(c)))
        if f is not None:
            by_value.setdefault(f, []).append(str(c))
    clash = [v for v in by_value.values() if len(v) > 1]
    if clash:
        raise ValueError(
            f"{what} has classes that spell one number differently{' ' + where if where else ''}: "
            + "; ".join(" and ".join(repr(c) for c in v) for v in clash[:5])
            + f" ({len(clash)} such number(s)). They would be different classes; write each "
            "value one way (e.g. numbers as numbers, or strings all spelled alike), or give "
            "distinct codes distinct names (e.g. 'c01' and 'c1')")


def check_classes(target: str, classes, n_examples: int | None,
                  where: str = "among the probed examples") -> None:
    """Refuse a target with one class, or (given ``n_examples``) one class per example,
    or two classes that are strings spelling one number differently (``"1"`` and
    ``"1.0"``, ``"True"`` and ``"1"``): only the user can say if they are one class."""
    check_spellings(f"target {target!r}", classes, where)
    if len(classes) < 2:
        which = f" ({classes[0]!r})" if len(classes) else ""
        raise ValueError(f"target {target!r} has {'a single class' if len(classes) else 'no class'}"
                         f"{which} {where}: nothing to classify; choose another target or more "
                         "utterances")
    if n_examples is not None and len(classes) == n_examples:
        if target == "speaker":
            raise ValueError(
                f"every speaker has a single example {where} ({n_examples} speakers, "
                f"{n_examples} examples), so a test speaker never occurs in training and "
                "nothing can be right, whatever the split: speaker identity needs >= 2 "
                "utterances per speaker (split by utterance); add utterances of these "
                "speakers, or probe another target")
        raise ValueError(f"every example of target {target!r} has its own class ({n_examples} "
                         "classes), so a test class never occurs in training: a classification "
                         "probe cannot generalise (is it an id or a continuous value?)")

