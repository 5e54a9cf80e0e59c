"""CKA's bootstrap intervals (issue 29): replicates by hand, coverage of the point,
narrowing with speakers, seeds, streamed and sharded runs, compare_scores, refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import s3viz
from s3viz._bootstrap import Bootstrap
from s3viz.distributed import Sharding
from s3viz.measures import LayerCKA, StoreSource, run_measures
from s3viz.similarity import CCAOptions, CKAOptions, hsic_unbiased, layer_similarity
from s3viz.store import LayerStore

R = 200


def _store(speakers=6, per=3, frames=9, seed=0, short=0):
    """Speakers whose base layer differs in how much a second layer follows it."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(5, 6, generator=g, dtype=torch.float64)
    hs, ids, spk = [], [], []
    for s in range(speakers):
        noise = 0.5 + 2.0 * float(torch.rand(1, generator=g))
        for k in range(per):
            n = 3 if k < short else frames
            a = torch.randn(n, 5, generator=g, dtype=torch.float64) + 10.0
            b = a @ mix + noise * torch.randn(n, 6, generator=g, dtype=torch.float64)
            c = torch.randn(n, 4, generator=g, dtype=torch.float64)
            hs.append([a.float(), b.float(), c.float()])
            ids.append(f"s{s}u{k}"), spk.append(f"spk{s}")
    labels = pd.DataFrame({"id": ids, "speaker": spk})
    return LayerStore.from_tensors(hs, downsample_rates=[320] * 3, labels=labels)


@pytest.fixture(scope="module")
def store():
    return _store()


@pytest.fixture(scope="module")
def table(store):
    return layer_similarity(store, device="cpu", bootstrap=R)


def test_long_table_with_the_exact_cka(store, table):
    square = layer_similarity(store, device="cpu")
    assert list(table.columns) == ["layer", "other_layer", "cka", "cka_lo", "cka_hi",
                                   "resampled_by"]
    assert len(table) == 9 and set(table["resampled_by"]) == {"speaker"}
    for _, r in table.iterrows():
        assert r["cka"] == square.loc[r["layer"], r["other_layer"]]
    info = table.attrs["bootstrap"]
    assert info["key"] == ("layer", "other_layer") and info["resamples"] == R
    assert table.attrs["estimator"] == "feature" and table.attrs["short_utterances"] == 0


def test_replicates_equal_a_recomputation_by_hand(store, table):
    """Per utterance the unbiased HSIC of the Grams, summed per speaker, resampled with
    the Bootstrap's draws, shifted by cka minus the estimator on all the data."""
    names = sorted(set(store.labels["speaker"]))
    boot = Bootstrap(names, "speaker", R, 0.95, 0)
    per = np.zeros((len(names), 3, 3))
    for u in range(len(store)):
        xs = [store.layer(layer, utterances=[u], dtype=torch.float64)[0] for layer in range(3)]
        grams = [x @ x.T for x in xs]
        who = names.index(store.labels["speaker"][u])
        for i in range(3):
            for j in range(3):
                per[who, i, j] += hsic_unbiased(grams[i], grams[j])
    reps = boot.counts @ per.reshape(len(names), -1)
    reps = reps.reshape(R, 3, 3)
    whole = per.sum(0)
    for i, j in [(0, 1), (0, 2), (1, 2), (1, 1)]:
        cka = table[(table.layer == i) & (table.other_layer == j)]["cka"].item()
        m = whole[i, j] / np.sqrt(whole[i, i] * whole[j, j])
        want = reps[:, i, j] / np.sqrt(reps[:, i, i] * reps[:, j, j]) + cka - m
        got = table.attrs["bootstrap"]["replicates"][(i, j)]["cka"]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        lo, hi = np.quantile(want, [0.025, 0.975])
        row = table[(table.layer == i) & (table.other_layer == j)]
        np.testing.assert_allclose([row["cka_lo"].item(), row["cka_hi"].item()], [lo, hi],
                                   rtol=1e-6, atol=1e-7)


def test_interval_holds_the_point_and_narrows_with_speakers():
    def width(speakers):
        t = layer_similarity(_store(speakers=speakers, seed=3), device="cpu", bootstrap=R)
        r = t[(t.layer == 0) & (t.other_layer == 1)].iloc[0]
        assert r["cka_lo"] <= r["cka"] <= r["cka_hi"]
        return r["cka_hi"] - r["cka_lo"]

    assert width(40) < 0.7 * width(5)


def test_seeded(store, table):
    again = layer_similarity(store, device="cpu", bootstrap=R)
    other = layer_similarity(store, device="cpu", bootstrap=R, seed=1)
    pd.testing.assert_frame_equal(again, table)
    assert not np.allclose(other["cka_lo"], table["cka_lo"])


def test_short_utterances_are_counted():
    t = layer_similarity(_store(short=1), device="cpu", bootstrap=R)
    assert t.attrs["short_utterances"] == 6 and np.isfinite(t["cka_lo"]).all()


def test_streamed_and_sharded_equal_stored(store, table):
    got = run_measures([LayerCKA(bootstrap=R)], StoreSource(store))["cka"]
    np.testing.assert_allclose(got["cka"], table["cka"], rtol=1e-6)  # float64 products
    np.testing.assert_allclose(got[["cka_lo", "cka_hi"]], table[["cka_lo", "cka_hi"]],
                               rtol=1e-6, atol=1e-7)
    assert got.attrs["bootstrap"]["units"] == table.attrs["bootstrap"]["units"]
    from _sharding import ThreadSum, run_threads

    shards = [np.arange(0, len(store), 2), np.arange(1, len(store), 2)]
    parts = [LayerStore.from_tensors(
        [[store.layer(layer, utterances=[int(u)])[0] for layer in range(3)] for u in s],
        downsample_rates=[320] * 3, labels=store.labels.iloc[s].reset_index(drop=True))
        for s in shards]
    summer = ThreadSum(2)

    def work(r):
        red = summer.reducer(r)
        return (layer_similarity(parts[r], device="cpu", bootstrap=R,
                                 sharding=Sharding(store, red)),
                run_measures([LayerCKA(bootstrap=R)],
                             StoreSource(parts[r], store, shards[r]), reduce=red)["cka"])

    out, errors = run_threads(2, work)
    assert errors == [None, None], errors
    for stored, streamed in out:
        for t in (stored, streamed):
            np.testing.assert_allclose(t[["cka", "cka_lo", "cka_hi"]],
                                       table[["cka", "cka_lo", "cka_hi"]], rtol=1e-6, atol=1e-7)


def test_compare_scores_pairs_two_cka_tables(store, table):
    other = layer_similarity(store, device="cpu", bootstrap=R,
                             method=CKAOptions(dtype=torch.float64))
    cmp = s3viz.compare_scores(table, other)
    assert len(cmp) == 9 and set(cmp["score"]) == {"cka"}
    np.testing.assert_allclose(cmp["difference"], 0, atol=1e-6)
    two = s3viz.compare_scores(table[(table.layer == 0) & (table.other_layer == 1)],
                               table[(table.layer == 0) & (table.other_layer == 2)])
    assert two["difference"].item() > 0 and two["difference_lo"].item() > 0
    assert two["p_value"].item() < 0.05


@pytest.mark.parametrize("kw, err, match", [
    (dict(method="cca", bootstrap=R), ValueError, "bootstrap= is for CKA only"),
    (dict(method=CCAOptions(0.9), bootstrap=R), ValueError, "bootstrap= is for CKA only"),
    (dict(level="utterance", bootstrap=R), ValueError, "bootstrap= needs level='frame'"),
    (dict(max_frames=20, bootstrap=R), ValueError, "max_frames=None"),
    (dict(bootstrap=10), ValueError, "at least 100 resamples"),
    (dict(bootstrap=R, confidence=1.5), ValueError, "confidence"),
    (dict(sharding=Sharding(reduce=lambda t: t), bootstrap=R), ValueError, "Sharding.of"),
    (dict(estimator="minibatch"), TypeError, "estimator"),
    (dict(batch_frames=64), TypeError, "batch_frames"),
    (dict(dtype=torch.float64), TypeError, "dtype"),
])
def test_refusals(store, kw, err, match):
    with pytest.raises(err, match=match):
        layer_similarity(store, device="cpu", **kw)


def test_one_utterance_is_refused():
    one = _store(speakers=1, per=1)
    with pytest.raises(ValueError, match="at least 5 utterances to resample \\(from 1"):
        layer_similarity(one, device="cpu", bootstrap=R)
    with pytest.raises(ValueError, match="bootstrap= needs level='frame'"):
        LayerCKA("utterance", bootstrap=R)
