"""s3viz.stream.stream_analysis: the probe and CKA tables of the stored-frame API, in two passes."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

import s3viz
from s3viz.stream import stream_analysis

from _contract_toys import ToyUpstream
from _sharding import ThreadSum, run_threads

N_UTT = 12


@pytest.fixture(scope="module")
def corpus():
    from s3viz.data import synthetic_corpus

    return synthetic_corpus(n_utterances=N_UTT, seed=0)


@pytest.fixture(scope="module")
def tiny():
    from s3viz.upstreams import get_upstream

    return get_upstream("tiny_random")


def _api(store, level="frame"):
    probes = pd.concat([
        s3viz.probe_layers(store, "phone", folds=3, split_by="speaker", device="cpu"),
        s3viz.probe_layers(store, "speaker", folds=3, split_by="utterance", device="cpu"),
    ], ignore_index=True)
    cka = s3viz.layer_similarity(store, level=level, device="cpu", dtype=torch.float64)
    return probes, cka


SPLITS = {"phone": "speaker", "speaker": "utterance"}


def _assert_same(res, probes, cka, rtol=1e-9):
    pd.testing.assert_frame_equal(res["probes"].drop(columns="split_by"), probes,
                                  check_exact=False, rtol=rtol, atol=1e-12)
    assert list(res["probes"]["split_by"]) == [SPLITS[t] for t in res["probes"]["target"]]
    np.testing.assert_allclose(res["cka"].to_numpy(), cka.to_numpy(), rtol=rtol, atol=1e-12)
    assert res["cka"].attrs["num_frames"] == cka.attrs["num_frames"]
    assert res["cka"].attrs["level"] == cka.attrs["level"]


def test_toy_upstream_without_conv_layers(corpus):
    """No conv_layers: one counting pass, then the two passes; utterance level in the primal
    (more utterances than the 8 dimensions), a 640-sample layer, pooled CKA."""
    up = ToyUpstream(mixed=True)
    store = s3viz.extract(up, corpus, batch_size=4, device="cpu", progress=False)
    probes, cka = _api(store, level="utterance")
    res = stream_analysis(up, corpus, targets=["phone", "speaker"], folds=3, split_by=SPLITS,
                          cka=True, cka_level="utterance", batch_size=4, device="cpu")
    assert res["passes"] == 3 and res["store"] is None
    _assert_same(res, probes, cka)
    assert sorted(res["probes"]["layer"].unique()) == [0, 1, 2]


@pytest.mark.slow
def test_tiny_streams_equal_api_and_cache_dir_reads_store(corpus, tiny, tmp_path):
    """conv_layers predict the frames: two upstream passes; with cache_dir none at all
    (the frames are extracted once, then read back)."""
    store = s3viz.extract(tiny, corpus, batch_size=4, device="cpu", progress=False)
    probes, cka = _api(store)
    kw = dict(targets=["phone", "speaker"], folds=3, split_by=SPLITS, cka=True,
              batch_size=4, device="cpu")
    res = stream_analysis(tiny, corpus, **kw)
    assert res["passes"] == 2
    _assert_same(res, probes, cka)
    disk = stream_analysis(tiny, corpus, cache_dir=tmp_path, **kw)
    assert disk["passes"] == 0 and disk["store"].path is not None
    _assert_same(disk, probes, cka, rtol=1e-6)
    again = stream_analysis(tiny, corpus, cache_dir=tmp_path, **kw)  # reuses the store
    assert again["store"].path == disk["store"].path
    pd.testing.assert_frame_equal(again["probes"], disk["probes"])


def test_layers_and_single_target(corpus, tiny):
    store = s3viz.extract(tiny, corpus, layers=[1, -1], batch_size=4, device="cpu",
                          progress=False)
    want = s3viz.probe_layers(store, "phone", folds=2, split_by="speaker", device="cpu")
    res = stream_analysis(tiny, corpus, targets="phone", layers=[1, -1], folds=2,
                          batch_size=4, device="cpu")
    assert res["cka"] is None
    assert list(res["probes"]["upstream_layer"]) == [1, 4]
    pd.testing.assert_frame_equal(res["probes"].drop(columns="split_by"), want,
                                  check_exact=False, rtol=1e-9, atol=1e-12)


class _LyingConv(ToyUpstream):
    """Publishes conv_layers that do not give its ceil(L / 320) frame counts."""

    conv_layers = ((400, 320),)


def test_conv_layers_that_lie_are_caught(corpus):
    with pytest.raises(RuntimeError, match="conv_layers"):
        stream_analysis(_LyingConv(), corpus, targets="phone", folds=3, batch_size=4,
                        device="cpu")


@pytest.mark.parametrize("kw, err, match", [
    (dict(targets="speaker", split_by="speaker"), ValueError, "split_by='utterance'"),
    (dict(targets="phone", shard=[0, 1]), ValueError, "reduce"),
    (dict(targets="phone", reduce=lambda t: t), ValueError, "shard"),
    (dict(targets="phone", shard=[0, 99], reduce=lambda t: t), IndexError, "shard"),
    (dict(targets="phone", shard=[], reduce=lambda t: t), ValueError, "shard"),
    (dict(targets=[], cka=False), ValueError, "nothing to compute"),
    (dict(targets="phone", cka=True, cka_level="word"), ValueError, "cka_level"),
    (dict(targets=["phone", "speaker"], split_by={"phone": "speaker"}), ValueError,
     "no entry for target"),
    (dict(targets="phone", split_by="session"), ValueError, "split_by"),
    (dict(targets="nonexistent"), Exception, "nonexistent"),
    (dict(targets=["phone", "phone"]), ValueError, "distinct"),
])
def test_bad_arguments(corpus, kw, err, match):
    with pytest.raises(err, match=match):
        stream_analysis(ToyUpstream(), corpus, folds=3, device="cpu", **kw)


def test_frame_cka_needs_one_rate(corpus):
    with pytest.raises(ValueError, match="cka_level='utterance'"):
        stream_analysis(ToyUpstream(mixed=True), corpus, targets=[], cka=True, device="cpu")


def test_shards_summed_equal_whole(corpus):
    """Two shards whose statistics are summed (threads standing in for ranks) give the
    whole-corpus tables, including the frame-counting pass and the primal utterance probe."""
    from s3viz.distributed import shard_indices

    up = ToyUpstream(mixed=True)
    kw = dict(targets=["phone", "speaker"], folds=3, split_by=SPLITS, cka=True,
              cka_level="utterance", batch_size=3, device="cpu")
    whole = stream_analysis(up, corpus, **kw)
    weights = [u.num_samples for u in corpus]
    shards = [shard_indices(corpus.ids, r, 2, weights=weights) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(N_UTT))
    summer = ThreadSum(2)
    out, errors = run_threads(2, lambda r: stream_analysis(
        up, corpus, shard=shards[r], reduce=summer.reducer(r), **kw))
    assert errors == [None, None], errors
    for r in range(2):
        assert out[r] is not None and out[r]["shard"] == shards[r]
        pd.testing.assert_frame_equal(out[r]["probes"], whole["probes"], check_exact=False,
                                      rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out[r]["cka"].to_numpy(), whole["cka"].to_numpy(),
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
def test_cuda_equals_cpu(corpus, tiny):
    kw = dict(targets=["phone", "speaker"], folds=3, split_by=SPLITS, cka=True, batch_size=4)
    cpu = stream_analysis(tiny, corpus, device="cpu", **kw)
    gpu = stream_analysis(tiny, corpus, device="cuda", **kw)
    np.testing.assert_allclose(gpu["probes"]["accuracy"], cpu["probes"]["accuracy"], atol=0.02)
    np.testing.assert_allclose(gpu["cka"].to_numpy(), cpu["cka"].to_numpy(), atol=1e-4)


def test_shards_must_cover_the_corpus_once(corpus):
    summer = ThreadSum(2)
    shards = [list(range(0, 8)), list(range(4, 12))]  # 4..7 twice
    _, errors = run_threads(2, lambda r: stream_analysis(
        ToyUpstream(), corpus, targets="speaker", split_by="utterance", folds=3,
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
        tiny, short, targets="speaker", split_by="utterance", folds=3,
        shard=shards[r], reduce=summer.reducer(r), batch_size=3, device="cpu"))
    assert isinstance(errors[0], ValueError) and "no frames" in str(errors[0])
    assert isinstance(errors[1], RuntimeError) and "another shard failed" in str(errors[1])
