"""Held-out CCA against a reference (s3viz.cca_layers, s3viz.measures.CCA): the streamed
covariance-sum implementation against a direct NumPy/SciPy one on the frames themselves,
planted structure, stored = streamed = sharded, the speaker split, the bootstrap and the
refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

import s3viz
from s3viz.measures import CCA, StoreSource, run_measures
from s3viz.measures.cca import log_mel, mel_frames
from s3viz.store import LayerStore
from s3viz.stream import stream_analysis

from _sharding import ThreadSum, run_threads

REGS = (1e-6, 1e-3, 1e-1)

pytestmark = pytest.mark.usefixtures("one_thread", "one_blas_thread")


@pytest.fixture(scope="module")
def one_blas_thread():
    """numpy's BLAS on one thread too (2 shared cores: its eigh of 192 x 192 ran 60x
    slower on 2 threads under load); threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def _planted(n_utts=12, speakers=6, d=6, h=10, seed=0):
    """A store of 2 layers (a noisy linear map of the reference; unrelated noise) and the
    reference itself, one row per frame."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, h))
    hs, ref = [], []
    for _ in range(n_utts):
        t = int(rng.integers(40, 70))
        y = rng.normal(size=(t, d)) * np.linspace(1, 3, d) + 5.0
        planted = y @ mix + 0.05 * rng.normal(size=(t, h))
        noise = rng.normal(size=(t, h)) * 2.0 - 1.0
        hs.append([torch.from_numpy(planted), torch.from_numpy(noise)])
        ref.append(y)
    labels = pd.DataFrame({"id": [f"u{i:02d}" for i in range(n_utts)],
                           "speaker": [f"s{i % speakers}" for i in range(n_utts)]})
    store = LayerStore.from_tensors(hs, downsample_rates=[320, 320], labels=labels)
    return store, ref


def _direct(x_parts, y_parts, regs, tol=1e-10):
    """Regularised CCA fitted on train for every ridge pair, chosen by dev PWCCA, PWCCA on
    test: scipy.linalg on the frames (centred data, QR of the projected frames)."""
    def centred(a):
        return a - a.mean(0)

    def whitener(c, reg):
        w, v = scipy.linalg.eigh(c)
        keep = w > tol * w.max()
        return v[:, keep] / np.sqrt(w[keep] + reg * w.max())

    def pwcca(a, b, x, y, side):
        xc, yc = centred(x), centred(y)
        u, v = xc @ a, yc @ b
        rho = (u * v).sum(0) / np.linalg.norm(u, axis=0) / np.linalg.norm(v, axis=0)
        q, _ = np.linalg.qr(u if side == "layer" else v)
        alpha = np.abs(q.T @ (xc if side == "layer" else yc)).sum(1)
        w = alpha / alpha.sum()
        return float(w @ rho), rho, w

    xt, yt = centred(x_parts[0]), centred(y_parts[0])
    cxx, cyy, cxy = xt.T @ xt, yt.T @ yt, xt.T @ yt
    best = None
    for ex in regs:
        for ey in regs:
            hx, hy = whitener(cxx, ex), whitener(cyy, ey)
            side = "reference" if hy.shape[1] <= hx.shape[1] else "layer"
            uu, _, vt = scipy.linalg.svd(hx.T @ cxy @ hy, full_matrices=False)
            a, b = hx @ uu, hy @ vt.T
            dev = pwcca(a, b, x_parts[1], y_parts[1], side)[0]
            if best is None or dev > best[0]:
                best = (dev, ex, ey, a, b, side)
    dev, ex, ey, a, b, side = best
    score, rho, w = pwcca(a, b, x_parts[2], y_parts[2], side)
    return {"pwcca": score, "dev_pwcca": dev, "mean_cca": float(rho.mean()),
            "reg_layer": ex, "reg_reference": ey, "a": a, "b": b, "w": w, "side": side}


def _parts(store, ref, split, layer):
    """Frames and reference rows of each part, in store order."""
    part = dict(zip(split["id"], split["part"]))
    xs = {p: [] for p in ("train", "dev", "test")}
    ys = {p: [] for p in ("train", "dev", "test")}
    for i, uid in enumerate(store.ids):
        xs[part[uid]].append(store.utterance(i)[layer].double().numpy())
        ys[part[uid]].append(ref[i])
    return ([np.concatenate(xs[p]) for p in ("train", "dev", "test")],
            [np.concatenate(ys[p]) for p in ("train", "dev", "test")])


@pytest.fixture(scope="module")
def planted():
    store, ref = _planted(n_utts=40, speakers=20)  # parts (2, 1, 1): 5 test speakers
    out = run_measures([CCA(ref, parts=(2, 1, 1), regs=REGS, bootstrap=200)],
                       StoreSource(store))
    return store, ref, out["cca"], out["cca_split"]


def test_matches_a_direct_numpy_scipy_implementation(planted):
    store, ref, table, split = planted
    worst = 0.0
    for layer in range(2):
        want = _direct(*_parts(store, ref, split, layer), REGS)
        row = table.iloc[layer]
        assert row["reg_layer"] == want["reg_layer"]
        assert row["reg_reference"] == want["reg_reference"]
        assert row["weighted_by"] == want["side"] == "reference"
        for col in ("pwcca", "dev_pwcca", "mean_cca"):
            worst = max(worst, abs(row[col] - want[col]))
    assert worst < 1e-8, worst


def test_planted_layer_near_one_random_layer_near_zero(planted):
    _, _, table, _ = planted
    assert table["pwcca"].iloc[0] > 0.99
    assert abs(table["pwcca"].iloc[1]) < 0.2
    assert (table["directions"] == 6).all() and (table["dims_reference"] == 6).all()
    assert (table["split_by"] == "speaker").all()


def test_split_keeps_each_speaker_in_one_part(planted):
    store, _, _, split = planted
    assert split.groupby("group")["part"].nunique().max() == 1
    assert set(split["part"]) == {"train", "dev", "test"}
    per_part = split.groupby("part")["group"].nunique()
    assert (per_part >= 1).all() and per_part.sum() == 20  # 20 speakers, each in one part


def test_bootstrap_replicates_match_resampled_frames(planted):
    """Each replicate is the PWCCA (whole-test weights held fixed) of the test frames
    of the drawn speakers, each repeated as often as drawn."""
    store, ref, table, split = planted
    info = table.attrs["bootstrap"]
    assert info["unit"] == "speaker" and list(table["resampled_by"]) == ["speaker"] * 2
    assert (table["pwcca_lo"] <= table["pwcca_hi"]).all()
    units = list(info["units"])
    counts = np.random.default_rng([0, 2029]).multinomial(
        len(units), np.full(len(units), 1 / len(units)), size=200)
    want = _direct(*_parts(store, ref, split, 0), REGS)
    test = split[split["part"] == "test"]
    spk = dict(zip(split["id"], split["group"]))
    for r in range(3):
        xs, ys = [], []
        for i, uid in enumerate(store.ids):
            if uid in set(test["id"]):
                c = int(counts[r, units.index(spk[uid])])
                xs += [store.utterance(i)[0].double().numpy()] * c
                ys += [ref[i]] * c
        x, y = np.concatenate(xs), np.concatenate(ys)
        u, v = (x - x.mean(0)) @ want["a"], (y - y.mean(0)) @ want["b"]
        rho = (u * v).sum(0) / np.linalg.norm(u, axis=0) / np.linalg.norm(v, axis=0)
        assert info["replicates"][(0,)]["pwcca"][r] == pytest.approx(want["w"] @ rho, abs=1e-8)


def test_utterance_split_without_speakers():
    store, ref = _planted(n_utts=5)
    bare = LayerStore.from_tensors([[store.utterance(i)[0]] for i in range(5)],
                                   downsample_rates=[320])
    out = run_measures([CCA(ref, parts=(1, 1, 1))], StoreSource(bare))
    assert (out["cca"]["split_by"] == "utterance").all()
    assert out["cca_split"]["group"].tolist() == out["cca_split"]["id"].tolist()


def test_streamed_equals_stored_and_mel(tiny_upstream, small_corpus, tiny_store):
    kw = dict(parts=(1, 1, 1), regs=(1e-3, 1e-1))
    stored = s3viz.cca_layers(tiny_store, "phone", device="cpu", **kw)
    streamed = stream_analysis(tiny_upstream, small_corpus, [CCA("phone", **kw)],
                               batch_size=4, device="cpu")["cca"]
    cols = ["pwcca", "dev_pwcca", "mean_cca"]
    np.testing.assert_allclose(streamed[cols].to_numpy(), stored[cols].to_numpy(), rtol=1e-6)
    assert streamed["directions"].tolist() == stored["directions"].tolist()
    mel = s3viz.cca_layers(tiny_store, "mel", corpus=small_corpus, layers=[1], device="cpu",
                           **kw)
    assert mel["dims_reference"].iloc[0] == 80 and np.isfinite(mel["pwcca"].iloc[0])
    with pytest.raises(ValueError, match="the same ids in the same order"):
        s3viz.cca_layers(tiny_store, "mel", corpus=small_corpus[:5], device="cpu", **kw)


def test_sharded_equals_unsharded(small_corpus, tiny_store):
    from s3viz.distributed import shard_indices

    # each utterance its own speaker: 12 units, 6 in the test part (a bootstrap needs 5)
    labels = tiny_store.labels.assign(speaker=tiny_store.labels["id"])
    whole_store = LayerStore.from_tensors(
        [tiny_store.utterance(i) for i in range(len(tiny_store))],
        downsample_rates=tiny_store.downsample_rates, labels=labels,
        phones=tiny_store.phones, receptive_fields=tiny_store.receptive_fields)
    m = CCA("phone", parts=(1, 1, 2), regs=(1e-3, 1e-1), bootstrap=100)
    whole = run_measures([m], StoreSource(whole_store))["cca"]
    shards = [shard_indices(small_corpus.ids, r, 2) for r in range(2)]
    summer = ThreadSum(2)

    def work(r):  # each shard holds the stored frames of its utterances (the same numbers)
        st = LayerStore.from_tensors(
            [tiny_store.utterance(i) for i in shards[r]],
            downsample_rates=tiny_store.downsample_rates,
            labels=labels.iloc[shards[r]].reset_index(drop=True),
            phones=[tiny_store.phones[i] for i in shards[r]],
            receptive_fields=tiny_store.receptive_fields)
        return run_measures([m], StoreSource(st, whole_store, shards[r]),
                            reduce=summer.reducer(r))["cca"]

    out, errors = run_threads(2, work)
    assert errors == [None, None]
    cols = ["pwcca", "pwcca_lo", "pwcca_hi", "dev_pwcca", "mean_cca"]
    for t in out:
        np.testing.assert_allclose(t[cols].to_numpy(), whole[cols].to_numpy(), rtol=1e-9)


def test_mel_frame_of_each_layer_frame():
    wav = np.random.default_rng(0).normal(size=16000).astype(np.float32)
    mel = log_mel(wav)
    assert mel.shape == (1 + (16000 - 400) // 160, 80)
    # 20 ms frames with a 400-sample field: centres 200, 520, ... -> mel frames 0, 2, ...
    np.testing.assert_array_equal(mel_frames(4, 320, 400, len(mel)), [0, 2, 4, 6])
    assert mel_frames(60, 320, 400, len(mel))[-1] == len(mel) - 1  # clipped at the end


@pytest.mark.parametrize("make, err, match", [
    (lambda ref: CCA("pitch"), ValueError, "reference must be one of"),
    (lambda ref: CCA(3.0), TypeError, "reference must be one of"),
    (lambda ref: CCA("mel"), ValueError, "needs the audio: pass corpus="),
    (lambda ref: CCA(ref, parts=(0.6, 0.2, 0.2)), ValueError, "parts must be 3 whole"),
    (lambda ref: CCA(ref, regs=[-1.0]), ValueError, "regs must be"),
    (lambda ref: CCA(ref, bootstrap=10), ValueError, "at least 100 resamples"),
])
def test_settings_are_refused(make, err, match):
    _, ref = _planted(n_utts=3)
    with pytest.raises(err, match=match):
        make(ref)


def test_data_refusals():
    store, ref = _planted()
    run = (lambda reference, **kw: run_measures([CCA(reference, **kw)], StoreSource(store)))
    with pytest.raises(ValueError, match="at least 7 speakers for parts=\\(5, 1, 1\\)"):
        run(ref, parts=(5, 1, 1))
    short = list(ref)
    short[4] = short[4][:-1]
    with pytest.raises(ValueError, match=f"'u04' has {len(ref[4]) - 1} rows, but stored "
                                         f"layer 0 has {len(ref[4])} frames"):
        run(short)
    bad = list(ref)
    bad[2] = bad[2].copy()
    bad[2][0, 0] = np.nan
    with pytest.raises(ValueError, match="'u02' holds NaN or inf"):
        run(bad)
    with pytest.raises(ValueError, match="at least 2 dims"):
        run([r[:, :1] for r in ref])
    with pytest.raises(ValueError, match="lacks 1 of the utterances"):
        run({uid: r for uid, r in zip(store.ids[1:], ref[1:])})
    const = [np.concatenate([r[:, :1], np.ones((len(r), 2))], 1) for r in ref]
    with pytest.raises(ValueError, match="fewer than 2 varying dimensions"):
        run(const)
    wide = [np.random.default_rng(i).normal(size=(len(r), 1000)) for i, r in enumerate(ref)]
    with pytest.raises(ValueError, match="more frames than dimensions in the training part"):
        run(wide)


def test_phone_reference_needs_alignments():
    store, _ = _planted(n_utts=6)
    with pytest.raises(ValueError, match="at least 2 phone labels"):
        run_measures([CCA("phone")], StoreSource(store))
