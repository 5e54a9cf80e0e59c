"""Held-out classes: a test example whose class its fold's training part never saw.

Every probe path (probe_layers ridge and logistic, stream_analysis, train_featurizer,
WeightedScorer) refuses a fold where every test example is such (nothing can be
right) and otherwise warns once and counts them, with a chance computed on the
same examples and the same "right" as the accuracy (docs/probes.md, "Held-out
classes and chance"). Before, 24 utterances of 21 speakers probed for speaker
gave accuracy 0 and chance 0 at every layer, silently.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3viz
from s3viz.data import Corpus
from s3viz.probe import LogisticOptions, UnseenClassWarning, probe_folds, probe_layers
from s3viz.store import LayerStore
from s3viz.measures import RidgeProbe
from s3viz.stream import stream_analysis

pytestmark = pytest.mark.usefixtures("one_thread")

REAL = Path(os.environ.get("S3VIZ_REALSPEECH",
                           Path(__file__).resolve().parents[2] / "shared" / "realspeech"))


def _random_store(labels: pd.DataFrame, frames: int = 6, dim: int = 5, phones=None,
                  seed: int = 0) -> LayerStore:
    g = torch.Generator().manual_seed(seed)
    hs = [[torch.randn(frames, dim, generator=g), torch.randn(frames, dim, generator=g)]
          for _ in range(len(labels))]
    return LayerStore.from_tensors(hs, downsample_rates=[320, 320], labels=labels, phones=phones)


def _relabel(store, **cols) -> LayerStore:
    return LayerStore.from_tensors(
        [store.utterance(i) for i in range(len(store))], downsample_rates=store.downsample_rates,
        receptive_fields=store.receptive_fields, ids=store.ids,
        labels=store.labels.assign(**cols), phones=store.phones)


def _speaker_fold_labels(store, folds: int, weights=None, partial: bool = False) -> list[str]:
    """A label that goes with groups of speakers: class ``p<fold>`` of the speaker split
    (folds 2.. share one class), so every test class of fold 0 is unseen; ``partial``:
    one speaker of fold 0 takes fold 1's class, so only some are."""
    table = probe_folds(store, folds=folds, split_by="speaker", utterance_weights=weights)
    lab = [f"p{min(f, 2)}" for f in table["fold"]]
    if partial:
        first = table.loc[table["fold"] == 0, "group"].iloc[0]
        lab = ["p1" if g == first else v for g, v in zip(table["group"], lab)]
    return lab


# ----------------------------------------------------------------------------- the issue


def test_speaker_21_of_24_is_refused_with_counts():
    """The issue's case: 24 utterances, 21 speakers; was accuracy 0 / chance 0, silently.
    Here one fold's test speakers are all unseen: refused."""
    spk = [f"s{i}" for i in range(21)] + ["s0", "s1", "s2"]
    store = _random_store(pd.DataFrame({"id": [f"u{i}" for i in range(24)], "speaker": spk}))
    with pytest.raises(ValueError) as e:
        probe_layers(store, "speaker", level="utterance", device="cpu")
    msg = str(e.value)
    assert "18 of 24 test utterances" in msg and "21 classes" in msg
    assert "none of the test utterances has a class seen in training" in msg
    assert "fold 0: 4 test utterances in 4 classes, training part 20 utterances" in msg
    assert "18 of 21 classes occur in a single utterance" in msg
    assert "each speaker has >= 2 utterances" in msg


def test_speaker_21_of_24_in_other_folds_warns_and_counts():
    """The same speakers named so that every fold keeps one seen speaker: a warning with the
    counts, and the table says 18 of 24 test utterances could not be right."""
    spk = [f"s{i:02d}" for i in range(21)] + ["s00", "s01", "s02"]
    store = _random_store(pd.DataFrame({"id": [f"u{i}" for i in range(24)], "speaker": spk}))
    with pytest.warns(UnseenClassWarning, match=r"18 of 24 test utterances \(75%\).*>= 2 utt"):
        df = probe_layers(store, "speaker", level="utterance", device="cpu")
    assert (df["n_unseen"] == 18).all() and (df["unseen_fraction"] == 0.75).all()
    assert (df["chance"] <= 0.25).all() and (df["accuracy"] <= 0.25).all()


def test_speaker_with_one_utterance_each_says_why():
    store = _random_store(pd.DataFrame({"id": [f"u{i}" for i in range(8)],
                                        "speaker": [f"s{i}" for i in range(8)]}))
    with pytest.raises(ValueError, match=r"every speaker has a single example.*8 speakers.*"
                                         r"test speaker never occurs in training.*>= 2 utt"):
        probe_layers(store, "speaker", level="utterance", device="cpu")


# ----------------------------------------------------------------------------- probe_layers


def _full(method):
    """The method's options; logistic without early stopping (``dev_fraction=0``)."""
    return LogisticOptions(dev_fraction=0) if method == "logistic" else method


@pytest.mark.parametrize("method", ["ridge", "logistic"])
def test_probe_layers_refuses_classes_that_go_with_speakers(tiny_store, method):
    """A label shared by groups of speakers (a region, say) under a speaker split: the
    one-to-one speaker check let it by; no test class of any fold is in training."""
    st_ = _relabel(tiny_store, region=_speaker_fold_labels(tiny_store, 2, np.ones(12)))
    with pytest.raises(ValueError, match=r"12 of 12 test utterances \(100%\).*in 2 fold\(s\) "
                                         r"none.*Fix: .*split_by='utterance'"):
        probe_layers(st_, "region", method=_full(method), folds=2, split_by="speaker",
                     layers=[1], device="cpu")


@pytest.mark.parametrize("method", ["ridge", "logistic"])
def test_probe_layers_warns_counts_and_scores_chance_on_the_same_items(tiny_store, method):
    lab = _speaker_fold_labels(tiny_store, 2, np.ones(12), partial=True)
    st_ = _relabel(tiny_store, region=lab)
    table = probe_folds(st_, folds=2, split_by="speaker", utterance_weights=np.ones(12))
    fold = table["fold"].to_numpy()
    lab = np.asarray(lab)
    unseen = sum(int(np.sum((fold == f) & ~np.isin(lab, lab[fold != f]))) for f in range(2))
    assert 0 < unseen < 12
    with pytest.warns(UnseenClassWarning, match=f"{unseen} of 12 test utterances "
                                                f"\\({unseen / 12:.0%}\\)") as rec:
        df = probe_layers(st_, "region", method=_full(method), folds=2, split_by="speaker",
                          layers=[0, 1], device="cpu")
    assert sum(issubclass(w.category, UnseenClassWarning) for w in rec) == 1  # once
    assert (df["n_unseen"] == unseen).all()
    np.testing.assert_allclose(df["unseen_fraction"], unseen / 12)
    # chance: each fold's training majority scored on its test utterances (ties: first class)
    hits = 0
    for f in range(2):
        classes, counts = np.unique(lab[fold != f], return_counts=True)
        hits += int(np.sum(lab[fold == f] == classes[np.argmax(counts)]))
    np.testing.assert_allclose(df["chance"], hits / 12)
    assert (df["accuracy"] <= 1 - df["unseen_fraction"] + 1e-12).all()


def test_frame_level_counts_match_an_independent_count(tiny_store):
    """Phones under a 2-fold speaker split: some are spoken by one fold's speakers only."""
    with pytest.warns(UnseenClassWarning, match="test frames"):
        df = probe_layers(tiny_store, "phone", folds=2, split_by="speaker", layers=[1],
                          device="cpu")
    fold_u = probe_folds(tiny_store, folds=2, split_by="speaker")["fold"].to_numpy()
    lab = np.asarray(tiny_store.frame_labels(1, column="phone"), dtype=object).astype(str)
    fold = np.repeat(fold_u, tiny_store.lengths(1))[lab != ""]
    lab = lab[lab != ""]
    unseen = sum(int(np.sum((fold == f) & ~np.isin(lab, lab[fold != f]))) for f in range(2))
    hits = 0
    for f in range(2):
        classes, counts = np.unique(lab[fold != f], return_counts=True)
        hits += int(np.sum(lab[fold == f] == classes[np.argmax(counts)]))
    assert int(df["n_unseen"].iat[0]) == unseen > 0
    assert df["chance"].iat[0] == pytest.approx(hits / len(lab))


def test_frame_level_refusal_with_disjoint_phones():
    """Each speaker says phones the other never does: a frame split by speaker has nothing
    right to find."""
    rows, phones = [], []
    for i in range(4):
        spk = i % 2
        a, b = ("a", "b") if spk == 0 else ("c", "d")
        rows.append({"id": f"u{i}", "speaker": f"s{spk}"})
        phones.append(pd.DataFrame({"phone": [a, b], "word": ["w", "w"],
                                    "start": [0, 960], "end": [960, 1920]}))
    store = _random_store(pd.DataFrame(rows), phones=phones)
    for method in ("ridge", "logistic"):
        with pytest.raises(ValueError, match=r"frame level.*24 of 24 test frames.*fold 0: 12 "
                                             r"test frames in 2 classes, training part 12 "
                                             r"frames in 2 classes"):
            probe_layers(store, "phone", method=method, folds=2, split_by="speaker",
                         device="cpu")


def test_no_unseen_class_leaves_the_table_as_it_was(tiny_store):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenClassWarning)
        df = probe_layers(tiny_store, "sentence_type", folds=2, split_by="utterance",
                          layers=[1], device="cpu")
    assert "n_unseen" not in df.columns and "unseen_fraction" not in df.columns


# ----------------------------------------------------------------------------- streaming


def _corpus_with(corpus, **cols) -> Corpus:
    return Corpus([dataclasses.replace(u, labels={**u.labels, **{k: v[i] for k, v in
                                                                 cols.items()}})
                   for i, u in enumerate(corpus)])


def test_stream_refuses_and_warns_like_probe_layers(tiny_upstream, small_corpus, tiny_store):
    bad = _corpus_with(small_corpus, region=_speaker_fold_labels(tiny_store, 2, np.ones(12)))
    with pytest.raises(ValueError, match="12 of 12 test utterances"):
        stream_analysis(tiny_upstream, bad, [RidgeProbe("region", folds=2, split_by="speaker")],
                        upstream_layers=[1], batch_size=4, device="cpu")
    lab = _speaker_fold_labels(tiny_store, 2, np.ones(12), partial=True)
    some = _corpus_with(small_corpus, region=lab)
    with pytest.warns(UnseenClassWarning) as rec:
        res = stream_analysis(tiny_upstream, some,
                              [RidgeProbe(["region", "phone"], folds=2, split_by="speaker")],
                              upstream_layers=[1, 2], batch_size=4, device="cpu")
    # one warning per target, the frame-level one after the first pass
    assert sorted(str(w.message).split("'")[1] for w in rec
                  if issubclass(w.category, UnseenClassWarning)) == ["phone", "region"]
    with pytest.warns(UnseenClassWarning):
        want = probe_layers(_relabel(tiny_store, region=lab), ["region", "phone"], folds=2,
                            split_by="speaker", layers=[1, 2], device="cpu")
    cols = ["target", "upstream_layer", "n_unseen", "unseen_fraction", "chance", "n_test"]
    pd.testing.assert_frame_equal(res["probe"][cols], want[cols])
    assert (res["probe"]["n_unseen"] > 0).all()


# ----------------------------------------------------------------------------- featurizers


def _featurizer_labels(store, partial: bool) -> list[str]:
    """Utterance split, 4 folds (test_fraction 0.25): fold 0 utterances get classes of their
    own (``partial``: all but one), the rest alternate a / b."""
    fold = probe_folds(store, folds=4, split_by="utterance")["fold"].to_numpy()
    lab = ["a" if i % 2 else "b" for i in range(len(fold))]
    test = np.flatnonzero(fold == 0)
    for k, i in enumerate(test[1:] if partial else test):
        lab[i] = f"x{k}"
    return lab


@pytest.mark.parametrize("entry", ["train_featurizer", "WeightedScorer"])
def test_featurizers_refuse_and_count(tiny_store, entry):
    run = {"train_featurizer": lambda s: s3viz.train_featurizer(
               s, "tag", level="utterance", options=s3viz.TrainOptions(steps=2),
               split_by="utterance", device="cpu"),
           "WeightedScorer": lambda s: s3viz.WeightedScorer(
               s, "tag", level="utterance", split_by="utterance", dims=4, device="cpu")}[entry]
    with pytest.raises(ValueError, match=r"utterance level, split_by='utterance'.*3 of 3 test "
                                         r"utterances.*hold out fewer groups"):
        run(_relabel(tiny_store, tag=_featurizer_labels(tiny_store, partial=False)))
    lab = _featurizer_labels(tiny_store, partial=True)
    with pytest.warns(UnseenClassWarning, match=r"2 of 3 test utterances \(67%\)"):
        out = run(_relabel(tiny_store, tag=lab))
    fold = probe_folds(tiny_store, folds=4, split_by="utterance")["fold"].to_numpy()
    lab = np.asarray(lab)
    classes, counts = np.unique(lab[fold != 0], return_counts=True)
    chance = float(np.mean(lab[fold == 0] == classes[np.argmax(counts)]))
    if entry == "WeightedScorer":
        got = out.evaluate(np.ones(len(out.layers)))
        assert got["n_test"] == 3 and got["n_test_unseen"] == 2  # were left out: n_test 1
        assert got["chance"] == pytest.approx(chance) and got["accuracy"] <= 1 / 3
    else:
        attrs = out.history.attrs
        assert attrs["n_dev_unseen"] == 2 and attrs["dev_chance"] == pytest.approx(chance)
        assert (out.history["dev_accuracy"] <= 1 / 3 + 1e-12).all()


# ----------------------------------------------------------------------------- property


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 4), min_size=8, max_size=8), st.integers(2, 3))
def test_refused_or_counted_on_the_same_items(codes, folds):
    """Random labels: either refused, or n_unseen and chance are those of the same test
    utterances the accuracy is scored on (training majority, unseen classes wrong)."""
    lab = np.asarray([f"c{v}" for v in codes])
    store = _random_store(pd.DataFrame({"id": [f"u{i}" for i in range(8)], "tag": lab}),
                          frames=2, dim=3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnseenClassWarning)
            df = probe_layers(store, "tag", level="utterance", folds=folds,
                              split_by="utterance", layers=[0], device="cpu")
    except ValueError as e:
        assert ("nothing can be right" in str(e) or "single class" in str(e)
                or "its own class" in str(e) or "distinct utterances" in str(e)), str(e)
        return
    _, y = np.unique(lab, return_inverse=True)
    fold = probe_folds(store, folds=folds, split_by="utterance", utterance_weights=np.ones(8),
                       strata=y)["fold"].to_numpy()
    unseen = hits = 0
    for f in range(folds):
        test, train = lab[fold == f], lab[fold != f]
        assert np.isin(test, train).any() or len(test) == 0  # else it was refused
        unseen += int(np.sum(~np.isin(test, train)))
        classes, counts = np.unique(train, return_counts=True)
        hits += int(np.sum(test == classes[np.argmax(counts)]))
    got = int(df["n_unseen"].iat[0]) if "n_unseen" in df.columns else 0
    assert got == unseen
    assert df["chance"].iat[0] == pytest.approx(hits / 8)
    assert 0 <= df["accuracy"].iat[0] <= 1 - unseen / 8 + 1e-12


# ----------------------------------------------------------------------------- real speech


def test_real_speakers_of_mfa_and_sppas_are_counted():
    """The issue's corpus: MFA + SPPAS, 24 utterances of 19 speakers (14 with a single
    utterance), speakers from their speakers.csv. Was accuracy 0 / chance 0, silently.
    Only the labels matter for the check, so the features are random (no upstream run)."""
    if not (REAL / "mfa" / "speakers.csv").exists() or not (REAL / "sppas").exists():
        pytest.skip(f"real-speech corpus not at {REAL} (set S3VIZ_REALSPEECH)")
    from s3viz.data import load_folder

    parts = [load_folder(REAL / "mfa" / "tests" / "data" / "wav", REAL / "mfa" / "speakers.csv",
                         lazy=True, strict=False),
             load_folder(REAL / "sppas" / "samples", REAL / "sppas" / "speakers.csv",
                         lazy=True, strict=False)]
    labels = pd.concat([p.labels[["id", "speaker"]] for p in parts], ignore_index=True)
    assert len(labels) == 24 and labels["speaker"].nunique() == 19
    store = _random_store(labels)
    with pytest.warns(UnseenClassWarning, match=r"14 of 24 test utterances \(58%\).*14 of 19 "
                                                r"classes occur in a single utterance.*each "
                                                r"speaker has >= 2 utterances"):
        df = probe_layers(store, "speaker", level="utterance", device="cpu")
    assert (df["n_unseen"] == 14).all()
    assert (df["chance"] <= 10 / 24).all() and (df["accuracy"] <= 10 / 24).all()
    # the fix the message names: the speakers with >= 2 utterances only
    two = np.flatnonzero(labels.groupby("speaker")["id"].transform("size").to_numpy() >= 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenClassWarning)
        ok = probe_layers(store, "speaker", level="utterance", utterances=two.tolist(),
                          folds=2, device="cpu")
    assert "n_unseen" not in ok.columns
