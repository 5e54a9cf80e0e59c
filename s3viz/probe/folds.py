"""Grouped folds and control labels.

No utterance (or no speaker, ``split_by="speaker"``) has examples on both sides of
a split: :func:`probe_folds` assigns groups to folds balancing their sizes,
:func:`check_heldout` refuses a fold whose test classes training never saw (and
warns about some), and :func:`control_labels` draws the seeded control classes of
Hewitt & Liang (2019).
"""

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

    ``"auto"`` (the default of every probe, featurizer and streamed run) is
    ``"speaker"`` -- scores of speakers never seen in training -- when the
    labels allow it: a ``speaker`` column filled for every selected utterance,
    at least ``folds`` speakers, and a target other than the speaker itself
    (or a label that names the speaker one-to-one). Otherwise it is
    ``"utterance"``, with a warning when a speaker column was there but
    could not be used. The speaker
    itself split by speaker is refused: no test speaker is seen in training.

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
    if target in labels.columns:
        pairs = pd.DataFrame({"s": spk, "t": [label_str(v) for v in labels[target].to_numpy()[sel]]})
        if pairs.groupby("t")["s"].nunique().max() == 1 and \
                pairs.groupby("s")["t"].nunique().max() == 1:
            return "utterance"  # the target names the speaker: a speaker split has no test class
    return "speaker"


# ---------------------------------------------------------------------------
# held-out classes: test examples whose class the training part never saw


class UnseenClassWarning(UserWarning):
    """Some test examples have a class absent from their fold's training part.

    They can never be predicted right (by the probe or by chance); the probe
    tables count them in ``n_unseen`` / ``unseen_fraction``.
    """


def fold_class_counts(y, fold, folds: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(test, train)`` class counts ``(folds, num_classes)`` of each fold's two parts.

    ``y``: class id of each example (``< 0``: unlabelled, not counted); ``fold``:
    its fold (the test fold it belongs to; every other fold is training).
    """
    y, fold = np.asarray(y, dtype=np.int64), np.asarray(fold, dtype=np.int64)
    m = (y >= 0) & (fold >= 0)
    test = np.bincount(fold[m] * num_classes + y[m],
                       minlength=folds * num_classes).reshape(folds, num_classes)
    return test, test.sum(0, keepdims=True) - test


def _confined(y, groups, classes) -> tuple[int, list]:
    """Classes all of whose examples lie in one split group (never on both sides)."""
    y = np.asarray(y)
    m = y >= 0
    per = pd.Series(np.asarray(groups, dtype=object)[m].astype(str)).groupby(y[m]).nunique()
    one = per.index[per.to_numpy() == 1]
    return len(one), [str(classes[i]) for i in one[:5]]


def check_heldout(test_counts, train_counts, *, target: str, level: str, split_by: str,
                  classes, items: str = "example", y=None, groups=None, warn: bool = True,
                  fewer: str | None = None) -> np.ndarray:
    """Refuse or warn about test examples whose class the fold's training part lacks.

    The one check of every probe path (``probe_layers`` ridge and logistic,
    segment probes, ``train_featurizer``/``WeightedScorer``, ``RidgeProbe``):
    an example whose class never occurs in training can never be predicted
    right. When every test example of some fold is such, the fold measures
    nothing and this raises a ValueError with the counts and the fix; when
    only some are, it warns once (:class:`UnseenClassWarning`, unless
    ``warn=False``) with the counts and the fraction.

    Args:
        test_counts, train_counts: ``(folds, C)`` class counts of each fold's test
            and training parts (:func:`fold_class_counts`).
        classes: the ``C`` class names (for the message).
        items: what an example is (``"utterance"``, ``"frame"``, ``"segment"``).
        y, groups: optional class and split group of each example, to name the
            classes confined to one group (which no split can put on both sides).
        fewer: how the caller's user makes training parts larger (default: fewer
            folds), for the message.

    Returns:
        ``(folds,)`` number of test examples with an unseen class per fold.
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
    if y is not None and groups is not None:
        k, ex = _confined(y, groups, classes)
        if k:
            group = "utterance" if split_by == "utterance" else split_by
            why = (f"; {k} of {n_cls} classes occur in a single {group} (e.g. {ex}), so no "
                   f"split puts them on both sides")
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


# ---------------------------------------------------------------------------
# folds, targets, controls


# ---------------------------------------------------------------------------


def assign_folds(groups: np.ndarray, weights: np.ndarray, folds: int, seed: int,
                  strata: np.ndarray | None = None, what: str = "group") -> np.ndarray:
    """Fold of each item so that items of one group share a fold.

    Without ``strata``: groups in decreasing weight (ties random) go to the
    lightest fold. With ``strata`` (one value per item, constant within a
    group): groups sorted by stratum (random within) are dealt round-robin.
    """
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if len(uniq) < folds:
        # advice that can help: a finer split only when the groups are coarser than items
        finer = "" if what == "utterance" else " or use split_by='utterance'"
        raise ValueError(
            f"only {len(uniq)} distinct {what}s to split into folds={folds}: lower `folds` "
            f"to at most {len(uniq)} (and at least 2){finer}"
        )
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
    """Refuse a 2-fold split that leaves the ridge penalty's dev fit without training data.

    With ``folds=2`` the ridge probe cuts each fold into two parts of whole groups
    (speakers or utterances) and picks its penalty on one part of the other fold,
    fitting on the rest of that fold: a fold of a single group has no rest, and
    the fit had no examples ("ProbeStats hold no examples"). Raised before any
    frame is read, with the cause and the fixes.
    """
    groups = np.asarray(groups).astype(str)
    fold = np.asarray(fold)
    per = [np.unique(groups[fold == f]) for f in range(folds)]
    lone = [(f, g) for f, g in enumerate(per) if len(g) < 2]
    if not lone:
        return
    n = len(np.unique(groups))
    what = "utterance" if split_by == "utterance" else split_by
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


def _positions(store, utterances) -> np.ndarray:
    return utterance_selection(utterances, len(store))


def _store_arg(sel: np.ndarray, n: int):
    return None if len(sel) == n else sel.tolist()


def split_groups(store, sel: np.ndarray, split_by: str) -> np.ndarray:
    if split_by == "utterance":  # a store of segments groups them by their utterance
        return np.asarray(getattr(store, "_group_ids", store.ids), dtype=object)[sel].astype(str)
    ids = np.asarray(store.ids, dtype=object)[sel]
    labels = store.labels
    if "speaker" not in labels.columns:
        raise ValueError(
            "split_by='speaker' needs a 'speaker' column in store.labels; there is none. "
            "Use split_by='utterance'"
        )
    spk = labels["speaker"].to_numpy()[sel]
    spk = [label_str(v) for v in spk]  # speaker 7 and 7.0 are one group
    bad = [ids[i] for i, v in enumerate(spk) if v == ""]
    if bad:
        raise ValueError(
            f"split_by='speaker' but {len(bad)} utterance(s) have no speaker (e.g. {bad[:5]}); "
            "fill store.labels['speaker'], select the others with `utterances=`, "
            "or use split_by='utterance'"
        )
    return np.asarray(spk, dtype=object)


def probe_folds(store, *, folds: int = 5, split_by: str = "speaker", seed: int = 0,
                utterances=None, utterance_weights: np.ndarray | None = None,
                strata: np.ndarray | None = None) -> pd.DataFrame:
    """The grouped K-fold split that :func:`probe_layers` uses.

    With the defaults this is exactly the split of frame-level probes. For
    utterance-level targets with ``split_by="utterance"``, :func:`probe_layers`
    stratifies by the target class and weighs utterances equally: pass
    ``utterance_weights=np.ones(n)`` and ``strata=<class of each utterance>`` to get it.

    Args:
        store: a :class:`~s3viz.store.LayerStore`.
        folds: number of folds (>= 2).
        split_by: ``"speaker"`` (no speaker in two folds) or ``"utterance"``.
            (No ``"auto"`` here: it depends on the target; see
            :func:`resolve_split`.)
        seed: seed of the assignment.
        utterances: utterance positions to split (default all).
        utterance_weights: ``(len(utterances),)`` weight of each utterance to balance the
            folds by (default: frames of stored layer 0).
        strata: ``(len(utterances),)`` class of each utterance: groups are then
            dealt round-robin by class instead of balanced by weight.

    Returns:
        DataFrame with one row per selected utterance: ``utterance`` (position),
        ``id``, ``group`` (speaker or id) and ``fold``.
    """
    folds = check_folds(folds)
    if split_by not in SPLITS:
        raise ValueError(f"split_by must be one of {SPLITS}, got {split_by!r}")
    sel = _positions(store, utterances)
    groups = split_groups(store, sel, split_by)
    if utterance_weights is None:
        utterance_weights = np.asarray(store.lengths(0))[sel]
    fold = assign_folds(groups, utterance_weights, folds, seed, strata=strata, what=split_by)
    return pd.DataFrame({
        "utterance": sel, "id": np.asarray(store.ids, dtype=object)[sel],
        "group": groups, "fold": fold,
    })


def control_labels(types: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control labels: each type gets a class drawn from ``y``'s distribution.

    Args:
        types: ``(num_examples,)`` type of each example (any hashable values).
        y: ``(num_examples,)`` int class of each example in ``[0, num_classes)``.
        num_classes: number of classes.
        seed: seed of the draw.

    Returns:
        ``(num_examples,)`` int64 control class; equal types get equal classes.
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
