"""One set of label rules (s3viz.probe.targets) for probes, featurizers and streaming.

- an utterance-level target missing for an utterance (None, NaN, pd.NA, "") is
  refused, naming the utterance and how to leave it out;
- a frame-level target on an utterance without alignments is refused;
- a missing label inside an alignment (None, NaN, pd.NA) is an unlabelled frame,
  never a class of its own;
- leaving the refused utterances out (``utterances=``, or a sub-corpus when
  streaming) gives the same result as a store without them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import s3viz
from s3viz.measures import RidgeProbe
from s3viz.store import LayerStore


def _copy(store, labels=None, phones=None) -> LayerStore:
    return LayerStore.from_tensors(
        [store.utterance(i) for i in range(len(store))],
        downsample_rates=store.downsample_rates, receptive_fields=store.receptive_fields,
        ids=store.ids, labels=store.labels if labels is None else labels,
        phones=store.phones if phones is None else phones)


def _probe(store, target, **kw):
    return s3viz.probe_layers(store, target, layers=[1], folds=2, split_by="utterance",
                              device="cpu", **kw)


def _train(store, target, **kw):
    return s3viz.train_featurizer(store, target, layers=[1, 2],
                                  options=s3viz.TrainOptions(steps=2, eval_every=1),
                                  split_by="utterance", device="cpu", **kw)


def _score(store, target, **kw):
    return s3viz.WeightedScorer(store, target, layers=[1, 2], dims=None, split_by="utterance",
                                device="cpu", **kw)


ENTRY_POINTS = {"probe_layers": _probe, "train_featurizer": _train, "WeightedScorer": _score}


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA, ""])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_missing_utterance_label_is_refused_everywhere(tiny_store, entry, missing):
    labels = tiny_store.labels.copy()
    labels["sentence_type"] = labels["sentence_type"].astype(object)
    labels.loc[3, "sentence_type"] = missing
    store = _copy(tiny_store, labels=labels)
    kw = {} if entry == "probe_layers" else {"level": "utterance"}
    with pytest.raises(ValueError, match=r"target 'sentence_type' is missing .* for 1 "
                                         r"utterance\(s\), e\.g\. \['utt0003'\].*`utterances=`"):
        ENTRY_POINTS[entry](store, "sentence_type", **kw)
    # leaving it out works, and equals a store without it
    keep = [i for i in range(len(store)) if i != 3]
    ENTRY_POINTS[entry](store, "sentence_type", utterances=keep, **kw)


def test_stream_refuses_a_missing_label_and_names_the_corpus_fix(tiny_upstream, small_corpus):
    from s3viz.data import Corpus, Utterance

    utts = list(small_corpus)
    u = utts[2]
    utts[2] = Utterance(id=u.id, wav=u.wav, text=u.text, speaker=u.speaker, phones=u.phones,
                        labels={**u.labels, "sentence_type": None})
    with pytest.raises(ValueError, match=r"'sentence_type' is missing .*\['utt0002'\].*"
                                         r"corpus\[positions\]"):
        s3viz.stream_analysis(tiny_upstream, Corpus(utts),
                              [RidgeProbe("sentence_type", folds=2, split_by="utterance")],
                              upstream_layers=[0], device="cpu")


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_an_unaligned_utterance_is_refused_for_frame_targets(tiny_store, entry):
    phones = list(tiny_store.phones)
    phones[5] = None
    store = _copy(tiny_store, phones=phones)
    with pytest.raises(ValueError, match=r"frame-level target 'phone' needs phone alignments, "
                                         r"but 1 utterance\(s\) have none \(e\.g\. "
                                         r"\['utt0005'\]\).*utterances="):
        ENTRY_POINTS[entry](store, "phone")
    ENTRY_POINTS[entry](store, "phone", utterances=[i for i in range(len(store)) if i != 5])


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_missing_label_in_an_alignment_is_an_unlabelled_frame(tiny_store, entry):
    """None, NaN and pd.NA in the phone column are unlabelled frames (as ""), not classes."""
    phones = []
    for i, ph in enumerate(tiny_store.phones):
        ph = ph.copy()
        ph["phone"] = ph["phone"].astype(object)
        if i % 3 == 0:
            ph.loc[ph.index[1], "phone"] = [None, np.nan, pd.NA][(i // 3) % 3]
        phones.append(ph)
    holes = _copy(tiny_store, phones=phones)
    blanks = _copy(tiny_store, phones=[p.assign(phone=p["phone"].map(
        lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
        else v)) for p in phones])
    got, want = ENTRY_POINTS[entry](holes, "phone"), ENTRY_POINTS[entry](blanks, "phone")
    if entry == "probe_layers":
        pd.testing.assert_frame_equal(got, want)
        assert int(got["n_classes"].iloc[0]) == int(want["n_classes"].iloc[0])
    elif entry == "train_featurizer":
        assert got.history.attrs["classes"] == want.history.attrs["classes"]
        assert "" not in got.history.attrs["classes"]
        assert not any(c in ("None", "nan", "<NA>") for c in got.history.attrs["classes"])
        pd.testing.assert_frame_equal(got.history, want.history)
    else:
        assert got.classes == want.classes
        assert not any(c in ("None", "nan", "<NA>") for c in got.classes)
        w = np.full(2, 0.5)
        assert got.score(w) == want.score(w)


def test_measures_read_missing_alignment_labels_as_unlabelled(tiny_store):
    """Segments (segment tables, segment probes, ABX items) and unit purity follow the
    same rule: None/NaN/pd.NA in an alignment are as "" (no segment, no labelled frame)."""
    phones, blanks = [], []
    for i, ph in enumerate(tiny_store.phones):
        ph = ph.copy()
        ph["phone"] = ph["phone"].astype(object)
        b = ph.copy()
        if i % 3 == 0:
            ph.loc[ph.index[1], "phone"] = [None, np.nan, pd.NA][(i // 3) % 3]
            b.loc[b.index[1], "phone"] = ""
        phones.append(ph)
        blanks.append(b)
    holes, blank = _copy(tiny_store, phones=phones), _copy(tiny_store, phones=blanks)
    got, want = s3viz.segment_table(holes, 1), s3viz.segment_table(blank, 1)
    assert "<NA>" not in set(got["label"]) and "nan" not in set(got["label"])
    pd.testing.assert_frame_equal(got, want)
    seg = dict(level="segment", layers=[1], folds=2, split_by="utterance", device="cpu")
    pd.testing.assert_frame_equal(s3viz.probe_layers(holes, "phone", **seg),
                                  s3viz.probe_layers(blank, "phone", **seg))
    abx = dict(layers=[1], max_items=200, device="cpu")
    pd.testing.assert_frame_equal(s3viz.abx_layers(holes, **abx), s3viz.abx_layers(blank, **abx))
    units = dict(k=4, layers=[1], max_frames=None, device="cpu")
    pd.testing.assert_frame_equal(s3viz.unit_quality(holes, **units),
                                  s3viz.unit_quality(blank, **units))


def test_segment_table_takes_a_boolean_mask(tiny_store):
    mask = np.zeros(len(tiny_store), dtype=bool)
    mask[[1, 4, 7]] = True
    pd.testing.assert_frame_equal(s3viz.segment_table(tiny_store, 1, utterances=mask),
                                  s3viz.segment_table(tiny_store, 1, utterances=[1, 4, 7]))


@pytest.mark.parametrize("entry", ["train_featurizer", "WeightedScorer"])
def test_featurizers_refuse_what_the_probes_refuse(tiny_store, entry):
    with pytest.raises(KeyError, match="unknown target 'id'"):
        ENTRY_POINTS[entry](tiny_store, "id", level="utterance")
    with pytest.raises(ValueError, match="every example of target 'serial' has its own class"):
        ENTRY_POINTS[entry](_copy(tiny_store, labels=tiny_store.labels.assign(
            serial=[f"s{i}" for i in range(len(tiny_store))])), "serial", level="utterance")


def test_weighted_scorer_says_which_split_ran(tiny_store):
    scorer = s3viz.WeightedScorer(tiny_store, "phone", layers=[1, 2], dims=None, device="cpu")
    assert scorer.split_by == "speaker" and "split_by='speaker'" in repr(scorer)
    assert scorer.layer_scores().attrs["split_by"] == "speaker"
