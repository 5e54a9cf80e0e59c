"""probe_layers(level="segment"): one example per phone or word segment, its frames' mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import s3viz
from s3viz._numerics import DegenerateLayerWarning
from s3viz.align import frame_labels
from s3viz.data import synthetic_corpus
from s3viz.store import LayerStore
from s3viz.probe.folds import split_groups
from s3viz.segments import segment_store
from s3viz.upstreams import get_upstream


@pytest.fixture(scope="module")
def store():
    return s3viz.extract(get_upstream("tiny", pretrained=False), synthetic_corpus(16, seed=3),
                         progress=False)


def _reference_store(store, layers):
    """Segments pooled by hand from frame_labels runs, one 'utterance' each."""
    hidden, labels = [], []
    spk = store.labels["speaker"].tolist()
    for i in range(len(store)):
        per_layer = []
        for layer in layers:
            x = store.utterance(i)[layer]
            # frame_labels of rows made unique, so that runs are the segments even where
            # two neighbouring phones are the same
            table = store.phones[i].sort_values("start").reset_index(drop=True)
            table["phone"] = [f"{v}#{k}" for k, v in enumerate(table["phone"])]
            lab = frame_labels(table, x.shape[0], store.downsample_rates[layer],
                               receptive_field_samples=store.receptive_fields[layer])
            runs, start = [], 0
            for k in range(1, len(lab) + 1):
                if k == len(lab) or lab[k] != lab[start]:
                    runs.append((lab[start], start, k))
                    start = k
            per_layer.append([(v.split("#")[0], x[a:b].double().mean(0)) for v, a, b in runs
                              if v.split("#")[0] not in ("sil", "")])
        for j in range(len(per_layer[0])):
            hidden.append([per_layer[m][j][1][None].float() for m in range(len(layers))])
            labels.append({"id": f"{i}:{j}", "speaker": spk[i], "phone": per_layer[0][j][0]})
    return LayerStore.from_tensors(hidden, downsample_rates=[320] * len(layers),
                                   labels=pd.DataFrame(labels))


@pytest.mark.slow
def test_segment_probe_equals_the_utterance_probe_of_pooled_segments(store):
    """With split_by='speaker' the folds of both are the speakers' folds, so the numbers
    must agree with an utterance-level probe of segments pooled independently."""
    layers = [0, 2]
    got = s3viz.probe_layers(store, "phone", level="segment", layers=layers, device="cpu",
                             folds=3)
    ref = s3viz.probe_layers(_reference_store(store, layers), "phone", level="utterance",
                             device="cpu", folds=3)
    assert list(got["level"]) == ["segment", "segment"] and list(got["layer"]) == layers
    cols = ["accuracy", "macro_f1", "chance", "n_classes", "n_train", "n_test"]
    np.testing.assert_allclose(got[cols].to_numpy(float), ref[cols].to_numpy(float), atol=1e-9)
    assert list(got.columns) == list(ref.columns)


def test_segment_folds_keep_an_utterance_together(store):
    seg = segment_store(store, "phone", [0])
    groups = split_groups(seg, np.arange(len(seg)), "utterance")
    assert list(groups) == seg.labels["utterance"].tolist()
    assert len(set(groups)) == len(store)  # one group per utterance, not per segment


@pytest.mark.slow
def test_word_segments_controls_and_logistic(store):
    res = s3viz.probe_layers(store, ["phone", "word"], level="segment", layers=[1],
                             method=["ridge", s3viz.LogisticOptions(max_epochs=3)], control=True,
                             split_by="utterance", device="cpu")
    assert set(res["target"]) == {"phone", "word"} and len(res) == 4
    assert res[["accuracy", "control_accuracy"]].notna().all().all()
    words = segment_store(store, "word", [1])
    assert (res.loc[res["target"] == "word", "n_train"] + res.loc[
        res["target"] == "word", "n_test"]).iat[0] == pytest.approx(len(words), rel=0.01)
    assert set(res.attrs["fold_accuracy"]) >= {("word", "ridge", 1), ("phone", "logistic", 1)}


def test_dropped_segments_are_counted_per_target(store):
    res = s3viz.probe_layers(store, ["phone", "word"], level="segment", layers=[1],
                             split_by="utterance", device="cpu")
    expected = {t: int(segment_store(store, t, [1])._dropped) for t in ("phone", "word")}
    assert res.attrs["n_dropped"] == expected


def test_segment_level_refusals(store):
    with pytest.raises(KeyError, match="no column 'speaker'"):
        s3viz.probe_layers(store, "speaker", level="segment", device="cpu")
    with pytest.raises(ValueError, match="level must be one of"):
        s3viz.probe_layers(store, "phone", level="segments", device="cpu")
    hh = [[torch.zeros(5, 3)] for _ in range(4)]
    plain = LayerStore.from_tensors(hh, downsample_rates=[320])
    with pytest.raises(ValueError, match="no phone alignments"):
        s3viz.probe_layers(plain, "phone", level="segment", device="cpu")


def test_segment_probes_stream_and_shard_on_the_engine(store):
    """SegmentProbe (s3viz.measures) gives probe_layers(level="segment")'s table from a
    store, from the upstream streamed, and from two shards whose state is summed."""
    from _sharding import ThreadSum, run_threads
    from s3viz.distributed import shard_indices
    from s3viz.measures import SegmentProbe, StoreSource, run_measures
    from s3viz.measures._engine import CorpusMeta

    up = get_upstream("tiny", pretrained=False)
    corpus = synthetic_corpus(16, seed=3)
    want = s3viz.probe_layers(store, ["phone", "word"], level="segment", layers=[1, 3],
                              folds=3, split_by="speaker", device="cpu")
    probe = SegmentProbe(["phone", "word"], folds=3, split_by="speaker")
    stored = run_measures([probe], StoreSource(store, layers=[1, 3]))["segments"]
    streamed = s3viz.stream_analysis(up, corpus, [probe], upstream_layers=[1, 3],
                                     batch_size=5, device="cpu")["segments"]
    shards, summer = [shard_indices(corpus.ids, r, 2) for r in range(2)], ThreadSum(2)
    got, errors = run_threads(2, lambda r: run_measures(
        [probe], StoreSource(s3viz.extract(up, corpus[shards[r]], upstream_layers=[1, 3],
                                           progress=False), CorpusMeta(corpus), shards[r]),
        reduce=summer.reducer(r))["segments"])
    assert errors == [None, None], errors
    # a stream, and stores of the chosen layers only, number them 0..
    renumbered = want.assign(layer=[0, 1, 0, 1])
    for table, ref in ((stored, want), (streamed, renumbered), (got[0], renumbered),
                       (got[1], renumbered)):
        pd.testing.assert_frame_equal(table, ref, check_exact=False, rtol=1e-6, atol=1e-9)
        assert table.attrs["n_dropped"] == want.attrs["n_dropped"]
        assert table.attrs["split_by"] == want.attrs["split_by"]
    assert list(streamed["upstream_layer"]) == [1, 3, 1, 3]



@pytest.mark.slow
def test_sharded_segment_probes_equal_the_whole_store(store):
    """probe_layers(level="segment", sharding=): each of two shards (threads standing in
    for ranks) gives the whole store's ridge table (statistics summed); utterances= are
    positions in the whole corpus. Logistic segment probes, which need every segment's
    mean at once, refuse sharding."""
    from _sharding import ThreadSum, run_threads
    from s3viz.distributed import Sharding, shard_indices

    up, corpus = get_upstream("tiny", pretrained=False), synthetic_corpus(16, seed=3)
    kw = dict(level="segment", folds=3, split_by="utterance", device="cpu", control=True,
              utterances=list(range(1, 16)))
    want = s3viz.probe_layers(store, ["phone", "word"], layers=[1, 3], **kw)
    shards, summer = [shard_indices(corpus.ids, r, 2) for r in range(2)], ThreadSum(2)
    stores = [s3viz.extract(up, corpus[s], upstream_layers=[1, 3], progress=False)
              for s in shards]

    def work(r):
        sharding = Sharding.of(corpus, stores[r], shards[r], reduce=summer.reducer(r))
        return s3viz.probe_layers(stores[r], ["phone", "word"], sharding=sharding, **kw)

    got, errors = run_threads(2, work)
    assert errors == [None, None], errors
    for table in got:  # the shards' stores number their layers 0, 1
        pd.testing.assert_frame_equal(table, want.assign(layer=[0, 1, 0, 1]),
                                      check_exact=False, rtol=1e-6, atol=1e-9)
        assert table.attrs["n_dropped"] == want.attrs["n_dropped"]
    sharding = Sharding.of(corpus, stores[0], shards[0])
    with pytest.raises(ValueError, match="takes the ridge method only"):
        s3viz.probe_layers(stores[0], "phone", sharding=sharding, method=s3viz.LogisticOptions(
            max_epochs=2, dev_fraction=0), **kw)

def test_segments_of_a_float16_store_are_guarded_at_float16():
    """A layer that varies only at float16 rounding level is refused at segment level too:
    its segments' means are float32, but their guard reads the frames' precision."""
    rng = np.random.default_rng(0)
    corpus = synthetic_corpus(8, seed=1)
    store = s3viz.extract(get_upstream("tiny", pretrained=False), corpus, progress=False)
    hidden = []
    for i in range(len(store)):
        x = [t.half() for t in store.utterance(i)[:2]]
        x[1] = torch.from_numpy(1000 + 0.3 * rng.standard_normal(x[1].shape)).half()
        hidden.append(x)
    s16 = LayerStore.from_tensors(hidden, downsample_rates=store.downsample_rates[:2],
                                  labels=store.labels, phones=store.phones,
                                  receptive_fields=store.receptive_fields[:2])
    with pytest.warns(DegenerateLayerWarning, match="float16 rounding"):
        df = s3viz.probe_layers(s16, "phone", level="segment", folds=3, device="cpu",
                                split_by="utterance")
    assert np.isnan(df["accuracy"].iloc[1]) and not np.isnan(df["accuracy"].iloc[0])
    # the warning names the stored layer, whatever order the layers are asked in
    for method in ("ridge", "logistic"):
        with pytest.warns(DegenerateLayerWarning, match=r"1 degenerate layer\(s\) \(stored "
                          r"layer 1: .*float16 rounding") as rec:
            out = s3viz.probe_layers(s16, "phone", level="segment", folds=3, device="cpu",
                                     split_by="utterance", layers=[1, 0], method=method)
        assert not any("stored layer 0" in str(w.message) for w in rec), method
        assert out["layer"].tolist() == [1, 0] and np.isnan(out["accuracy"].iloc[0])
