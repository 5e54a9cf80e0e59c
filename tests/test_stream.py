"""s3viz.stream.stream_analysis: what is particular to streaming.

Its passes, its cache folder, per-target splits, shards that fail or overlap, bad
input. That its tables equal the stored-frame API's, in one process or on shards,
is ``test_equivalence.py``'s.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

import s3viz
from s3viz.measures import LayerCKA, RidgeProbe
from s3viz.stream import stream_analysis

from _contract_toys import ToyUpstream
from _sharding import ThreadSum, run_threads

N_UTT = 12


@pytest.fixture(scope="module")
def corpus(small_corpus):
    return small_corpus


@pytest.fixture(scope="module")
def tiny(tiny_upstream):
    return tiny_upstream


SPLITS = {"phone": "speaker", "speaker": "utterance"}


def test_toy_upstream_without_conv_layers(corpus):
    """No conv_layers: one counting pass, then the two passes; a split per target."""
    res = stream_analysis(ToyUpstream(mixed=True), corpus,
                          [RidgeProbe(["phone", "speaker"], folds=3, split_by=SPLITS),
                           LayerCKA("utterance")], batch_size=4, device="cpu")
    assert res.passes == 3 and res.store is None
    assert list(res["probe"]["split_by"]) == [SPLITS[t] for t in res["probe"]["target"]]
    assert res["probe"].attrs["split_by"] == SPLITS
    assert sorted(res["probe"]["layer"].unique()) == [0, 1, 2]
    assert res["cka"].attrs["level"] == "utterance"


def test_tiny_passes_and_cache_dir_reads_store(corpus, tiny, tmp_path):
    """conv_layers predict the frames: two upstream passes; with cache_dir none at all
    (the frames are extracted once, then read back; a second run reuses them)."""
    kw = dict(measures=[RidgeProbe(["phone", "speaker"], folds=3, split_by=SPLITS),
                        LayerCKA()], batch_size=4, device="cpu")
    assert stream_analysis(tiny, corpus, **kw).passes == 2
    disk = stream_analysis(tiny, corpus, cache_dir=tmp_path, **kw)
    assert disk.passes == 0 and disk.store.path is not None
    again = stream_analysis(tiny, corpus, cache_dir=tmp_path, **kw)  # reuses the store
    assert again.store.path == disk.store.path
    pd.testing.assert_frame_equal(again["probe"], disk["probe"])


def test_layers_and_single_target(corpus, tiny):
    store = s3viz.extract(tiny, corpus, upstream_layers=[1, -1], batch_size=4, device="cpu",
                          progress=False)
    want = s3viz.probe_layers(store, "phone", folds=2, split_by="speaker", device="cpu")
    res = stream_analysis(tiny, corpus, [RidgeProbe("phone", folds=2)],
                          upstream_layers=[1, -1], batch_size=4, device="cpu")
    assert list(res.tables) == ["probe"]
    assert list(res["probe"]["upstream_layer"]) == [1, 4]
    pd.testing.assert_frame_equal(res["probe"], want,
                                  check_exact=False, rtol=1e-9, atol=1e-12)


class _LyingConv(ToyUpstream):
    """Publishes conv_layers that do not give its ceil(L / 320) frame counts."""

    conv_layers = ((400, 320),)


def test_conv_layers_that_lie_are_caught(corpus):
    with pytest.raises(RuntimeError, match="conv_layers"):
        stream_analysis(_LyingConv(), corpus, [RidgeProbe("phone", folds=3)], batch_size=4,
                        device="cpu")


@pytest.mark.parametrize("measures, kw, err, match", [
    (lambda: [RidgeProbe("speaker", split_by="speaker", folds=3)], {}, ValueError,
     "split_by='utterance'"),
    (lambda: ["probe"], dict(shard=[0, 1]), ValueError, "reduce"),
    (lambda: ["probe"], dict(reduce=lambda t: t), ValueError, "shard"),
    (lambda: ["probe"], dict(shard=[0, 99], reduce=lambda t: t), IndexError, "shard"),
    (lambda: ["probe"], dict(shard=[], reduce=lambda t: t), ValueError, "shard"),
    (lambda: [], {}, ValueError, "nothing to compute"),
    (lambda: ["abx?"], {}, ValueError, "unknown measure"),
    (lambda: [RidgeProbe("phone"), LayerCKA("word")], {}, ValueError, "level"),
    (lambda: [RidgeProbe(["phone", "speaker"], split_by={"phone": "speaker"})], {},
     ValueError, "no entry for target"),
    (lambda: [RidgeProbe("phone", split_by="session")], {}, ValueError, "split_by"),
    (lambda: [RidgeProbe("nonexistent", folds=3)], {}, Exception, "nonexistent"),
    (lambda: [RidgeProbe(["phone", "phone"])], {}, ValueError, "distinct"),
    (lambda: [RidgeProbe("phone"), RidgeProbe("speaker")], {}, ValueError, "distinct names"),
])
def test_bad_arguments(corpus, measures, kw, err, match):
    with pytest.raises(err, match=match):
        stream_analysis(ToyUpstream(), corpus, measures(), device="cpu", **kw)


def test_frame_cka_needs_one_rate(corpus):
    with pytest.raises(ValueError, match="level='utterance'"):
        stream_analysis(ToyUpstream(mixed=True), corpus, [LayerCKA()], device="cpu")


@pytest.mark.gpu
def test_cuda_equals_cpu(corpus, tiny):
    def kw():
        return dict(measures=[RidgeProbe(["phone", "speaker"], folds=3, split_by=SPLITS),
                              LayerCKA()], batch_size=4)
    cpu = stream_analysis(tiny, corpus, device="cpu", **kw())
    gpu = stream_analysis(tiny, corpus, device="cuda", **kw())
    np.testing.assert_allclose(gpu["probe"]["accuracy"], cpu["probe"]["accuracy"], atol=0.02)
    np.testing.assert_allclose(gpu["cka"].to_numpy(), cpu["cka"].to_numpy(), atol=1e-4)


def test_shards_must_cover_the_corpus_once(corpus):
    summer = ThreadSum(2)
    shards = [list(range(0, 8)), list(range(4, 12))]  # 4..7 twice
    _, errors = run_threads(2, lambda r: stream_analysis(
        ToyUpstream(), corpus, [RidgeProbe("speaker", split_by="utterance", folds=3)],
        shard=shards[r], reduce=summer.reducer(r), device="cpu"))
    assert all(isinstance(e, ValueError) and "exactly once" in str(e) for e in errors), errors


def test_a_failing_shard_stops_every_shard(corpus, tiny):
    """An utterance too short for any frame raises on its shard only; the other shard
    must stop too instead of waiting in the next all_reduce."""
    from s3viz.data import Corpus, Utterance

    utts = list(corpus)
    u0 = utts[0]
    utts[0] = Utterance(id=u0.id, wav=u0.wav[:300], text=u0.text, speaker=u0.speaker,
                        phones=None, labels=u0.labels)
    short = Corpus(utts)
    summer = ThreadSum(2)
    shards = [list(range(0, 6)), list(range(6, 12))]
    _, errors = run_threads(2, lambda r: stream_analysis(
        tiny, short, [RidgeProbe("speaker", split_by="utterance", folds=3)],
        shard=shards[r], reduce=summer.reducer(r), batch_size=3, device="cpu"))
    assert isinstance(errors[0], ValueError) and "no frames" in str(errors[0])
    assert isinstance(errors[1], RuntimeError) and "another shard failed" in str(errors[1])


def test_degenerate_layers_get_nan_as_stored(corpus):
    """The spectral baseline normalises each utterance: its mean-pooled vectors are
    rounding noise. Streamed probes and CKA read them through the same guard as the
    stored functions: NaN, with a DegenerateLayerWarning, where stored gives NaN."""
    import warnings

    import torch

    from s3viz._numerics import DegenerateLayerWarning
    from s3viz.upstreams import get_upstream

    up = get_upstream("spectral")
    store = s3viz.extract(up, corpus, device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probes = s3viz.probe_layers(store, ["gender", "phone"], folds=3, split_by="utterance",
                                    device="cpu")
        cka = s3viz.layer_similarity(store, level="utterance", device="cpu",
                                     method=s3viz.CKAOptions(dtype=torch.float64))
    assert probes[probes["target"] == "gender"]["accuracy"].isna().all()
    assert probes[probes["target"] == "phone"]["accuracy"].notna().all()
    with pytest.warns(DegenerateLayerWarning):
        res = stream_analysis(up, corpus, [RidgeProbe(["gender", "phone"], folds=3,
                                                      split_by="utterance"),
                                           LayerCKA("utterance")], device="cpu")
    pd.testing.assert_frame_equal(res["probe"], probes, check_exact=False, rtol=1e-6,
                                  atol=1e-9)
    np.testing.assert_array_equal(np.isnan(res["cka"].to_numpy()), np.isnan(cka.to_numpy()))
