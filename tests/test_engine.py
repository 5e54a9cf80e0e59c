"""The measure engine's own guards (s3viz.measures): what a source, a shard or a measure's
settings can get wrong is refused by name, and a float64 store keeps its precision.

That every measure's table is the same stored, streamed and sharded is
``test_equivalence.py``'s; this file holds the refusals an attack round found.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import s3viz
from s3viz.data import synthetic_corpus
from s3viz.measures import LayerCKA, RidgeProbe, StoreSource, UnitQuality, run_measures
from s3viz.measures._engine import CorpusMeta
from s3viz.store import LayerStore

from _sharding import ThreadSum, run_threads


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(8, seed=2, speakers=2)


@pytest.fixture(scope="module")
def store(tiny_upstream, corpus):
    return s3viz.extract(tiny_upstream, corpus, upstream_layers=[1, 3], batch_size=4,
                         device="cpu", progress=False)


def test_a_float64_store_is_pooled_in_float64(store):
    """Pooled vectors of a float64 store with an offset of 1e3 (the spread 1e-3 of it):
    in float32 the means lose the spread; the engine keeps the store's precision, as
    layer_similarity and probe_layers do."""
    hs = [[store.utterance(i)[s].double() * 1e-3 + 1e3 for s in range(2)]
          for i in range(len(store))]
    s64 = LayerStore.from_tensors(hs, downsample_rates=store.downsample_rates,
                                  labels=store.labels, phones=store.phones,
                                  receptive_fields=store.receptive_fields)
    got = run_measures([LayerCKA("utterance"),
                        RidgeProbe("speaker", folds=2, split_by="utterance")], StoreSource(s64))
    cka = s3viz.layer_similarity(s64, level="utterance", device="cpu",
                                  method=s3viz.CKAOptions(dtype=torch.float64))
    np.testing.assert_allclose(got["cka"].to_numpy(), cka.to_numpy(), rtol=1e-6)
    probes = s3viz.probe_layers(s64, "speaker", folds=2, split_by="utterance", device="cpu")
    pd.testing.assert_frame_equal(got["probe"], probes, check_exact=False, rtol=1e-6,
                                  atol=1e-9)


def test_a_store_must_hold_the_corpus_utterances_at_its_positions(store, corpus):
    meta = CorpusMeta(corpus)
    with pytest.raises(ValueError, match="at `positions`, in that order"):
        StoreSource(store, meta, np.arange(len(corpus))[::-1])
    with pytest.raises(ValueError, match="positions must be the 8 corpus positions"):
        StoreSource(store, meta, [0, 1])
    StoreSource(store, meta, np.arange(len(corpus)))  # the right ones


@pytest.mark.parametrize("layers, err, match", [
    ([-1], IndexError, "stored layer indices"), ([7], IndexError, "stored layer indices"),
    ([1, 1], ValueError, "twice"), ([], ValueError, "selects no layer")])
def test_store_source_layers_are_checked(store, layers, err, match):
    with pytest.raises(err, match=match):
        StoreSource(store, layers=layers)


def test_shards_of_different_layers_are_refused_on_every_rank(tiny_upstream, corpus):
    from s3viz.distributed import shard_indices

    shards = [shard_indices(corpus.ids, r, 2) for r in range(2)]
    picks = ([0, 1], [3, 4])
    summer = ThreadSum(2)

    def work(r):
        st = s3viz.extract(tiny_upstream, corpus[shards[r]], upstream_layers=picks[r],
                           progress=False, device="cpu")
        return run_measures([LayerCKA()], StoreSource(st, CorpusMeta(corpus), shards[r]),
                            reduce=summer.reducer(r))

    _, errors = run_threads(2, work)
    assert all(isinstance(e, ValueError) and "different layers" in str(e) for e in errors), \
        errors


@pytest.mark.parametrize("make, err, match", [
    (lambda: UnitQuality(True), TypeError, "k must be a whole number"),
    (lambda: UnitQuality([]), ValueError, "k must be an int >= 2"),
    (lambda: s3viz.stream_analysis(None, None, None), TypeError, "upstream"),
])
def test_measure_settings_are_refused_by_name(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_measures_none_is_refused(tiny_upstream, corpus):
    with pytest.raises(TypeError, match="measures must be a list"):
        s3viz.stream_analysis(tiny_upstream, corpus, None)
