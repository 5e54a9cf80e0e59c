"""Grouped folds (no utterance, or speaker, on both sides of a split), the held-out
class check (:func:`check_heldout`) and Hewitt & Liang's control labels."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .._labels import label_str
from .._validate import caller_stacklevel
from ..store import utterance_selection

__all__ = ["SPLITS", "SPLIT_CHOICES", "UnseenClassWarning", "check_split_by", "control_labels",
           "probe_folds", "resolve_split"]

SPLITS = ("speaker", "utterance")
"""The groups a split keeps apart; ``split_by="auto"`` picks one of them per target."""

SPLIT_CHOICES = SPLITS + ("auto",)


def check_split_by(split_by, name: str = "split_by"):
    """Refuse a ``split_by`` that is none of :data:`SPLIT_CHOICES`."""
    if not isinstance(split_by, str) or split_by not in SPLIT_CHOICES:
        raise ValueError(f"{name} must be one of {SPLIT_CHOICES}, got {split_by!r}")
    return split_by


def resolve_split(labels: pd.DataFrame, split_by, target: str, folds: int, sel=None) -> str:
    """The split of ``target``: ``split_by`` itself, or what ``"auto"`` picks.

    ``"auto"`` is ``"speaker"`` when the labels allow it: a ``speaker`` for every
    selected utterance, at least ``folds`` speakers, and a target other than the
    speaker (or a label naming the speakers one-to-one); otherwise ``"utterance"``,
    with a warning when a speaker column was there but could not be used. The speaker
    split by speaker is refused.

    Args:
        sel: the positions (rows of ``labels``) of the utterances probed; None: all.
    """
    check_split_by(split_by)
    if split_by == "speaker" and target == "speaker":
        raise ValueError(
            "target='speaker' with split_by='speaker' is impossible: test speakers are never "
            "seen in training. Use split_by='utterance' to probe speaker identity")
    if split_by != "auto":
        return split_by
    if target == "speaker" or "speaker" not in labels.columns:
        return "utterance"
    sel = np.arange(len(labels)) if sel is None else np.asarray(sel)
    spk = [label_str(v) for v in labels["speaker"].to_numpy()[sel]]
    missing, n_spk = spk.count(""), len(set(spk) - {""})
    if missing or n_spk < folds:
        why = (f"{missing} utterance(s) have no speaker" if missing
               else f"{n_spk} speaker(s) for folds={folds}")
        warnings.warn(f"split_by='auto' split {target!r} by utterance, not speaker: {why}, so "
                      f"test speakers are also seen in training. Fill the speakers or lower "
                      f"folds for speaker-independent scores, or pass split_by='utterance' to "
                      f"silence this", UserWarning, stacklevel=caller_stacklevel())
        return "utterance"
    if target in labels.columns and one_to_one(
            spk, [label_str(v) for v in labels[target].to_numpy()[sel]]):
        return "utterance"  # the target names the speaker: a speaker split has no test class
    return "speaker"


def one_to_one(a, b) -> bool:
    """Whether each value of ``a`` goes with a single value of ``b`` and back."""
    pairs = pd.DataFrame({"a": a, "b": b})
    return bool(pairs.groupby("a")["b"].nunique().max() == 1
                and pairs.groupby("b")["a"].nunique().max() == 1)


class UnseenClassWarning(UserWarning):
    """Some test examples have a class absent from their fold's training part: they
    can never be right; the probe tables count them in ``n_unseen`` / ``unseen_fraction``."""


def fold_class_counts(y, fold, folds: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(test, train)`` class counts ``(folds, num_classes)`` of each fold's two parts
    (``y < 0``: unlabelled, not counted)."""
    y, fold = np.asarray(y, dtype=np.int64), np.asarray(fold, dtype=np.int64)
    m = (y >= 0) & (fold >= 0)
    test = np.bincount(fold[m] * num_classes + y[m],
                       minlength=folds * num_classes).reshape(folds, num_classes)
    return test, test.sum(0, keepdims=True) - test


def check_heldout(test_counts, train_counts, *, target: str, level: str, split_by: str,
                  classes, items: str = "example", y=None, groups=None, warn: bool = True,
                  fewer: str | None = None) -> np.ndarray:
    """Refuse or warn about test examples whose class the fold's training part lacks.

    The one check of every probe path (``docs/probes.md``, "Held-out classes"): a
    fold whose every test example is such is refused (ValueError); some such
    examples give one :class:`UnseenClassWarning` (unless ``warn=False``).

    Args:
        test_counts, train_counts: ``(folds, C)`` class counts (:func:`fold_class_counts`).
        items: what an example is (``"utterance"``, ``"frame"``, ``"segment"``).
        y, groups: optional class and split group of each example, to name the
            classes confined to one group (which no split can put on both sides).
        fewer: how the user makes training parts larger (default: fewer folds).

    Returns:
        ``(folds,)`` test examples with an unseen class per fold.
    """
    test, train = np.asarray(test_counts), np.asarray(train_counts)
    unseen_c = test * (train == 0)
    unseen = unseen_c.sum(1)
    n_test = test.sum(1)
    if not unseen.any():
        return unseen
    n_cls = len(classes)
    total, n_unseen = int(n_test.sum()), int(unseen.sum())
    names = [str(classes[i]) for i in np.flatnonzero(unseen_c.sum(0))[:5]]
    head = (f"target {target!r} ({level} level, split_by={split_by!r}, {len(test)} folds, "
            f"{n_cls} classes): {n_unseen} of {total} test {items}s "
            f"({n_unseen / max(total, 1):.0%}) have a class absent from their fold's training "
            f"part (e.g. {names}), so they can never be predicted right")
    why = ""
    if y is not None and groups is not None:  # classes all of whose examples share a group
        m = np.asarray(y) >= 0
        per = pd.Series(np.asarray(groups, dtype=object)[m].astype(str)).groupby(
            np.asarray(y)[m]).nunique()
        one = per.index[per.to_numpy() == 1]
        if len(one):
            why = (f"; {len(one)} of {n_cls} classes occur in a single {split_by} (e.g. "
                   f"{[str(classes[i]) for i in one[:5]]}), so no split puts them on both sides")
    bad = np.flatnonzero((n_test > 0) & (unseen == n_test))
    if target == "speaker" and split_by == "utterance":
        fix = ("speaker identity needs an utterance split where each speaker has >= 2 "
               "utterances: leave the speakers with one utterance out with `utterances=`, "
               "or record more")
    elif split_by == "speaker":
        fix = ("the classes go with the speakers: use split_by='utterance' to keep each "
               "class on both sides, or more speakers per class")
    else:
        fix = (f"give each class at least 2 {items}s in different {split_by}s, leave the "
               f"rare classes out, or {fewer or f'use fewer folds (now {len(test)})'}")
    if len(bad):
        per = "; ".join(f"fold {f}: {int(n_test[f])} test {items}s in "
                        f"{int((test[f] > 0).sum())} classes, training part "
                        f"{int(train[f].sum())} {items}s in {int((train[f] > 0).sum())} classes"
                        for f in bad[:5])
        raise ValueError(f"{head}; in {len(bad)} fold(s) none of the test {items}s has a class "
                         f"seen in training, so nothing can be right ({per}){why}. Fix: {fix}")
    if warn:
        warnings.warn(f"{head}{why}. They count as wrong in both the accuracy and its chance "
                      f"(probe tables: columns n_unseen, unseen_fraction). To avoid them: {fix}",
                      UnseenClassWarning, stacklevel=caller_stacklevel())
    return unseen


def assign_folds(groups: np.ndarray, weights: np.ndarray, folds: int, seed: int,
                  strata: np.ndarray | None = None, what: str = "group") -> np.ndarray:
    """Fold of each item, the items of one group in one fold: groups in decreasing weight
    (ties random) go to the lightest fold, or sorted by ``strata`` (one value per item,
    constant within a group; random within) are dealt round-robin."""
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if len(uniq) < folds:
        # advice that can help: a finer split only when the groups are coarser than items
        finer = "" if what == "utterance" else " or use split_by='utterance'"
        raise ValueError(
            f"only {len(uniq)} distinct {what}s to split into folds={folds}: lower `folds` "
            f"to at most {len(uniq)} (and at least 2){finer}")
    rng = np.random.default_rng(seed)
    gw = np.bincount(inv, weights=np.asarray(weights, dtype=np.float64), minlength=len(uniq))
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    if strata is not None:
        gs = np.empty(len(uniq), dtype=object)
        gs[inv] = np.asarray(strata).astype(str)
        order = np.lexsort((rng.random(len(uniq)), gs.astype(str)))
        fold_of_group[order] = (np.arange(len(uniq)) + rng.integers(folds)) % folds
    else:
        order = np.lexsort((rng.random(len(uniq)), -gw))
        load = np.zeros(folds)
        perm = rng.permutation(folds)
        for g in order:
            k = perm[np.argmin(load[perm])]
            fold_of_group[g] = k
            load[k] += gw[g]
    return fold_of_group[inv]


def check_dev_parts(fold: np.ndarray, groups: np.ndarray, folds: int, split_by: str,
                    target: str) -> None:
    """Refuse a 2-fold split with a fold of one group (speaker or utterance): the ridge
    probe's dev part is cut from the other fold's groups, and its dev fit would have no
    training examples ("ProbeStats hold no examples")."""
    groups = np.asarray(groups).astype(str)
    fold = np.asarray(fold)
    per = [np.unique(groups[fold == f]) for f in range(folds)]
    lone = [(f, g) for f, g in enumerate(per) if len(g) < 2]
    if not lone:
        return
    n, what = len(np.unique(groups)), split_by
    where = "; ".join(f"fold {f} holds {len(g)} {what}(s){f' ({str(g[0])!r})' if len(g) else ''}"
                      for f, g in lone)
    fixes = [] if split_by == "utterance" else ["split_by='utterance'"]
    fixes += [f"at least 2 {what}s in each fold (4 in all; there are {n})",
              "a single penalty, e.g. lambdas=[1e-3] (no dev part needed)"]
    if n >= 3:
        fixes.insert(0, f"folds={min(n, 5)} (with 3 or more folds the dev part is a whole fold)")
    raise ValueError(
        f"target {target!r}: the ridge probe with folds=2 picks its penalty on a dev part cut "
        f"from the other fold's training {what}s, so each fold needs at least 2 {what}s; "
        f"{where}, so a dev fit would have no training examples. Fix: " + ", or ".join(fixes))


def _store_arg(sel: np.ndarray, n: int):
    return None if len(sel) == n else sel.tolist()


def split_groups(store, sel: np.ndarray, split_by: str) -> np.ndarray:
    if split_by == "utterance":  # a store of segments groups them by their utterance
        return np.asarray(getattr(store, "_group_ids", store.ids), dtype=object)[sel].astype(str)
    if "speaker" not in store.labels.columns:
        raise ValueError("split_by='speaker' needs a 'speaker' column in store.labels; there is "
                         "none. Use split_by='utterance'")
    # speaker 7 and 7.0 are one group
    spk = [label_str(v) for v in store.labels["speaker"].to_numpy()[sel]]
    ids = np.asarray(store.ids, dtype=object)
    bad = [ids[u] for u, v in zip(sel, spk) if v == ""]
    if bad:
        raise ValueError(
            f"split_by='speaker' but {len(bad)} utterance(s) have no speaker (e.g. {bad[:5]}); "
            "fill store.labels['speaker'], select the others with `utterances=`, "
            "or use split_by='utterance'")
    return np.asarray(spk, dtype=object)


def probe_folds(store, *, folds: int = 5, split_by: str = "speaker", seed: int = 0,
                utterances=None, utterance_weights: np.ndarray | None = None,
                strata: np.ndarray | None = None) -> pd.DataFrame:
    """The grouped K-fold split that :func:`probe_layers` uses.

    With the defaults this is the split of frame-level probes; utterance-level
    targets with ``split_by="utterance"`` are split with ``utterance_weights=np.ones(n)``
    and ``strata=<class of each utterance>`` (groups then dealt round-robin by class).

    Args:
        split_by: ``"speaker"`` or ``"utterance"`` (no ``"auto"``: it depends on the
            target, :func:`resolve_split`).
        utterance_weights: weight of each selected utterance to balance the folds by
            (default: frames of stored layer 0).
        strata: class of each selected utterance: groups are then dealt round-robin
            by class instead of balanced by weight.

    Returns:
        DataFrame with one row per selected utterance: ``utterance`` (position),
        ``id``, ``group`` (speaker or id) and ``fold``.
    """
    folds = check_folds(folds)
    if split_by not in SPLITS:
        raise ValueError(f"split_by must be one of {SPLITS}, got {split_by!r}")
    sel = utterance_selection(utterances, len(store))
    groups = split_groups(store, sel, split_by)
    if utterance_weights is None:
        utterance_weights = np.asarray(store.lengths(0))[sel]
    fold = assign_folds(groups, utterance_weights, folds, seed, strata=strata, what=split_by)
    return pd.DataFrame({
        "utterance": sel, "id": np.asarray(store.ids, dtype=object)[sel],
        "group": groups, "fold": fold,
    })


def control_labels(types: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control labels: each type gets a class drawn from the distribution
    of the classes ``y``; returns the int64 class of each example.

    Args:
        types: ``(num_examples,)`` type of each example (any hashable values).
        num_classes: number of classes (``y`` in ``[0, num_classes)``).
    """
    y = np.asarray(y, dtype=np.int64)
    types = np.asarray([label_str(v) for v in types], dtype=object).astype(str)
    uniq, inv = np.unique(types, return_inverse=True)
    p = np.bincount(y, minlength=num_classes).astype(np.float64)
    p /= p.sum()
    rng = np.random.default_rng([int(seed), 4611])
    return rng.choice(num_classes, size=len(uniq), p=p)[inv].astype(np.int64)


def check_folds(folds) -> int:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    return int(folds)
