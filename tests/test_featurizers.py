"""WeightedSumFeaturizer, train_featurizer and WeightedScorer against hand-written references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from s3viz.align import expected_lengths
from s3viz.featurizer_training import TrainOptions, train_featurizer
from s3viz.featurizers import WeightedSumFeaturizer, align_frames, weighted_sum
from s3viz.probe.weighted import WeightedScorer

RTOL, ATOL = 1e-5, 1e-6


class _Sizes:
    """Anything with the sizes of an upstream (the featurizer reads nothing else)."""

    def __init__(self, hidden_sizes, downsample_rates):
        self.hidden_sizes = list(hidden_sizes)
        self.downsample_rates = list(downsample_rates)
        self.num_layer = len(hidden_sizes)


def _hidden(lengths_per_layer, hidden=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    all_hs = [torch.randn(len(lens), int(max(lens)), hidden, generator=g) for lens in lengths_per_layer]
    all_hs_len = [torch.tensor(lens, dtype=torch.long) for lens in lengths_per_layer]
    return all_hs, all_hs_len


def _reference(all_hs, all_hs_len, logits, selections, normalize=False):
    """s3prl's weighted sum, written out: softmax, optional layer norm, sum over layers."""
    p = torch.softmax(logits, 0)
    out = 0
    for w, i in zip(p, selections):
        h = all_hs[i]
        if normalize:
            h = F.layer_norm(h, (h.shape[-1],))
        out = out + w * h
    return out, all_hs_len[selections[0]]


def make_store(n_utt=16, num_layers=4, hidden=12, rate=320, informative=(2,), n_phones=5,
               n_speakers=4, seed=0, rates=None, frames=(20, 40)):
    """A LayerStore whose ``informative`` layers encode the phone of each frame; others are noise."""
    from s3viz.store import LayerStore

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_phones, hidden)) * 2.0
    rates = [rate] * num_layers if rates is None else list(rates)
    base = min(rates)
    hs, phones, rows = [], [], []
    for i in range(n_utt):
        n_base = int(rng.integers(*frames)) * (max(rates) // base)
        segs, labs, t = [], [], 0
        while t < n_base:
            d = int(rng.integers(2, 6)) * (max(rates) // base)
            e = min(n_base, t + d)
            p = int(rng.integers(n_phones))
            segs.append({"phone": f"p{p}", "word": "w", "start": t * base, "end": e * base})
            labs += [p] * (e - t)
            t = e
        labs = np.asarray(labs)
        layers = []
        for l_, r in enumerate(rates):
            f = r // base
            n = -(-n_base // f)
            lab = labs[::f][:n]
            x = rng.normal(size=(n, hidden))
            if l_ in informative:
                x = 0.3 * x + emb[lab]
            layers.append(torch.tensor(x, dtype=torch.float32))
        hs.append(layers)
        phones.append(pd.DataFrame(segs))
        rows.append({"id": f"u{i:03d}", "speaker": f"s{i % n_speakers}", "text": "",
                     "group": "a" if i % 2 else "b"})
    return LayerStore.from_tensors(hs, downsample_rates=rates, labels=pd.DataFrame(rows),
                                   phones=phones)


@pytest.fixture(scope="module")
def store():
    return make_store()


# ---------------------------------------------------------------------------
# the featurizer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("selections", [None, [3, 1]])
def test_forward_matches_handwritten_softmax_sum(normalize, selections):
    lens = [5, 3, 4]
    all_hs, all_hs_len = _hidden([lens] * 4)
    feat = WeightedSumFeaturizer(_Sizes([8] * 4, [320] * 4), layer_selections=selections,
                                 normalize=normalize)
    sel = sorted(selections) if selections else [0, 1, 2, 3]
    assert feat.layer_selections == sel
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1])[: len(sel)]
    feat.set_weights(logits=logits)
    hs, hs_len = feat(all_hs, all_hs_len)
    ref, ref_len = _reference(all_hs, all_hs_len, logits, sel, normalize)
    assert hs.shape == (3, 5, 8)
    assert torch.equal(hs_len, ref_len)
    for b, n in enumerate(lens):  # valid frames match; padding is zeroed
        torch.testing.assert_close(hs[b, :n], ref[b, :n], rtol=RTOL, atol=ATOL)
        assert torch.all(hs[b, n:] == 0)


def test_s3prl_semantics_init_state_dict_and_properties():
    feat = WeightedSumFeaturizer(_Sizes([768] * 13, [320] * 13))
    assert list(feat.state_dict()) == ["weights"]  # loads s3prl's Featurizer state dicts
    assert torch.equal(feat.weights.detach(), torch.zeros(13))
    assert feat.output_size == 768 and feat.downsample_rate == 320
    w = feat.layer_weights
    assert isinstance(w, pd.Series) and list(w.index) == list(range(13)) and w.index.name == "layer"
    np.testing.assert_allclose(w.to_numpy(), np.full(13, 1 / 13), rtol=1e-12)
    # a LayerStore has the same attributes, so it can stand in for the upstream
    feat2 = WeightedSumFeaturizer(make_store(n_utt=4, num_layers=3), layer_selections=[0, 2])
    assert feat2.layer_selections == [0, 2] and feat2.output_size == 12


def test_unequal_lengths_raise_naming_layers_and_lengths():
    all_hs, all_hs_len = _hidden([[5, 4], [5, 3], [5, 4]])
    feat = WeightedSumFeaturizer(_Sizes([8] * 3, [320] * 3))
    with pytest.raises(ValueError, match=r"layer 0: 4, layer 1: 3, layer 2: 4"):
        feat(all_hs, all_hs_len)
    # a layer with fewer frames (as s3prl's Featurizer would sum silently) also raises
    all_hs[1] = all_hs[1][:, :4]
    all_hs_len[1] = torch.tensor([4, 4])
    with pytest.raises(ValueError, match="different lengths"):
        feat(all_hs, all_hs_len)


def test_bad_construction_and_inputs():
    with pytest.raises(ValueError, match="different hidden sizes"):
        WeightedSumFeaturizer(_Sizes([8, 16], [320, 320]))
    with pytest.raises(ValueError, match=r"different downsample rates.*target_rate"):
        WeightedSumFeaturizer(_Sizes([8, 8], [160, 320]))
    with pytest.raises(ValueError, match="not an integer multiple"):
        WeightedSumFeaturizer(_Sizes([8, 8], [160, 320]), target_rate=480)
    with pytest.raises(ValueError, match="out of range"):
        WeightedSumFeaturizer(_Sizes([8, 8], [320, 320]), layer_selections=[0, 2])
    with pytest.raises(ValueError, match="without repeats"):
        WeightedSumFeaturizer(_Sizes([8, 8], [320, 320]), layer_selections=[1, 1])
    with pytest.raises(TypeError, match="num_layer"):
        WeightedSumFeaturizer(object())
    feat = WeightedSumFeaturizer(_Sizes([8] * 3, [320] * 3), layer_selections=[0, 2])
    all_hs, all_hs_len = _hidden([[4, 4]] * 3)
    with pytest.raises(ValueError, match="expected 3 hidden states"):
        feat(all_hs[:2], all_hs_len[:2])  # s3prl passes all hidden states, not the selected


def test_mixed_rates_repeat_and_average_to_target_rate():
    wav_len = torch.tensor([16000, 9000])
    rates = [160, 320, 640]
    lens = [expected_lengths(wav_len, r) for r in rates]  # ceil convention
    all_hs, all_hs_len = _hidden([n.tolist() for n in lens], hidden=6, seed=3)
    feat = WeightedSumFeaturizer(_Sizes([6] * 3, rates), target_rate=320)
    assert feat.downsample_rate == 320
    logits = torch.tensor([0.5, -0.5, 1.0])
    feat.set_weights(logits=logits)
    hs, hs_len = feat(all_hs, all_hs_len)
    p = torch.softmax(logits, 0)
    want_len = torch.minimum(lens[1], torch.minimum(-(-lens[0] // 2), lens[2] * 2))
    assert torch.equal(hs_len, want_len)
    for b in range(2):
        n = int(hs_len[b])
        n0 = int(lens[0][b])
        fine = all_hs[0][b, :n0]
        avg = torch.stack([fine[2 * t: 2 * t + 2].mean(0) for t in range(n)])  # partial last pair
        rep = all_hs[2][b].repeat_interleave(2, dim=0)[:n]
        ref = p[0] * avg + p[1] * all_hs[1][b, :n] + p[2] * rep
        torch.testing.assert_close(hs[b, :n], ref, rtol=RTOL, atol=ATOL)
    # 9000 samples: 57 frames at 160 -> 29 at 320; 15 at 640 -> 30; 29 at 320: the rounding
    # of the 640 layer (one frame) is tolerated and trimmed
    assert int(hs_len[1]) == 29


def test_align_frames_lengths_follow_expected_lengths():
    x = torch.arange(2 * 7 * 1, dtype=torch.float32).view(2, 7, 1)
    x_len = torch.tensor([7, 5])
    y, y_len = align_frames(x, x_len, 160, 480)
    assert torch.equal(y_len, expected_lengths(x_len, 3, "ceil"))
    torch.testing.assert_close(y[1, :2, 0], torch.tensor([8.0, 10.5]))  # [7,8,9], [10,11]
    z, z_len = align_frames(x, x_len, 640, 320)
    assert torch.equal(z_len, x_len * 2) and torch.equal(z[0, :4, 0], torch.tensor([0.0, 0, 1, 1]))


def test_weighted_sum_function_checks():
    all_hs, all_hs_len = _hidden([[3]] * 2)
    with pytest.raises(ValueError, match="weights must have shape"):
        weighted_sum(all_hs, all_hs_len, torch.ones(3) / 3)
    with pytest.raises(ValueError, match="equal hidden sizes"):
        weighted_sum([all_hs[0], torch.zeros(1, 3, 4)], all_hs_len, torch.ones(2) / 2)


def test_set_weights_probs_logits_and_validation():
    feat = WeightedSumFeaturizer(_Sizes([8] * 4, [320] * 4))
    feat.set_weights(probs=[0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(feat.layer_weights.to_numpy(), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    feat.set_weights(probs=[0, 1, 0, 0])  # exact one-hot: other layers get exactly 0
    assert feat.layer_weights.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert torch.isfinite(feat.weights).all()
    all_hs, all_hs_len = _hidden([[4]] * 4)
    hs, _ = feat(all_hs, all_hs_len)
    torch.testing.assert_close(hs, all_hs[1], rtol=0, atol=0)
    s = pd.Series([0.4, 0.3, 0.2, 0.1], index=[3, 2, 1, 0])  # reordered by layer
    feat.set_weights(probs=s)
    np.testing.assert_allclose(feat.layer_weights.to_numpy(), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    feat.set_weights(logits=logits)
    torch.testing.assert_close(feat.weights.detach(), logits)
    for bad, match in [([0.5, 0.5, 0.5], "4 entries"), ([0.5, 0.6, -0.1, 0.0], "non-negative"),
                       ([0.3, 0.3, 0.3, 0.3], "sum to 1"), ([np.nan, 0.5, 0.5, 0], "NaN")]:
        with pytest.raises(ValueError, match=match):
            feat.set_weights(probs=bad)
    with pytest.raises(ValueError, match="exactly one"):
        feat.set_weights()
    with pytest.raises(ValueError, match="exactly one"):
        feat.set_weights(probs=[0.25] * 4, logits=[0.0] * 4)
    with pytest.raises(ValueError, match="finite"):
        feat.set_weights(logits=[0, 0, float("inf"), 0])
    with pytest.raises(ValueError, match="expected the layers"):
        feat.set_weights(probs=pd.Series([0.5, 0.5], index=[0, 1]))


def test_set_weights_refusals_name_the_layers_and_values():
    """A Series or dict keyed by the wrong layers says which are missing and which are not
    selected; a dict with a non-number shows its values as a list."""
    feat = WeightedSumFeaturizer(_Sizes([8] * 3, [320] * 3), layer_selections=[0, 2])
    with pytest.raises(ValueError, match=r"missing \[2\], unexpected \[1\]"):
        feat.set_weights(probs=pd.Series([0.5, 0.5], index=[0, 1]))
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \[1\]"):
        feat.set_weights(probs={0: 0.5, 2: 0.5, 1: 0.0})
    with pytest.raises(TypeError, match=r"got \['a', 0.5\]$"):
        feat.set_weights(probs={0: "a", 2: 0.5})
    feat.set_weights(probs={2: 0.75, 0: 0.25})
    np.testing.assert_allclose(feat.layer_weights.to_numpy(), [0.25, 0.75], rtol=1e-6)


def test_gradients_reach_the_logits():
    feat = WeightedSumFeaturizer(_Sizes([8] * 3, [320] * 3))
    all_hs, all_hs_len = _hidden([[4, 2]] * 3)
    hs, _ = feat(all_hs, all_hs_len)
    hs.sum().backward()
    assert feat.weights.grad is not None and torch.isfinite(feat.weights.grad).all()


def test_passes_check_featurizer_on_real_upstreams():
    from s3viz import contract, upstreams

    spectral = upstreams.spectral_upstream()  # rates 160/160/320/320/640/640; logmel 0, 2, 4
    for selections, rate in [([0, 2, 4], 160), ([0, 2, 4], 320), ([0, 2, 4], 640),
                             ([1, 3], 320), ([0], None)]:
        feat = WeightedSumFeaturizer(spectral, layer_selections=selections, target_rate=rate)
        report = contract.check_featurizer(feat, spectral)
        assert report.ok and len(report.warnings) == 0, repr(report)


def test_lengths_checked_across_all_layers_and_rates():
    wav_len = torch.tensor([16000])
    rates = [160, 160, 320, 640]
    lens = [expected_lengths(wav_len, r) for r in rates]  # 100, 100, 50, 25
    all_hs, all_hs_len = _hidden([n.tolist() for n in lens], hidden=4)
    feat = WeightedSumFeaturizer(_Sizes([4] * 4, rates), layer_selections=[0, 2, 3],
                                 target_rate=320)
    _, hs_len = feat(all_hs, all_hs_len)
    assert hs_len.tolist() == [50]
    # 99 frames at 160 would be consistent with 15800 samples, but layer 1 (not selected,
    # same waveform, same rate) still has 100: the batch cannot come from one waveform
    short = list(all_hs_len)
    short[0] = torch.tensor([99])
    with pytest.raises(ValueError, match=r"layer 0: 99 at rate 160, layer 1: 100 at rate 160"):
        feat(all_hs, short)
    short = list(all_hs_len)
    short[3] = torch.tensor([24])  # 24 frames at 640 < 15361 samples: inconsistent with 50 at 320
    with pytest.raises(ValueError, match="no waveform length"):
        feat(all_hs, short)


# ---------------------------------------------------------------------------
# train_featurizer
# ---------------------------------------------------------------------------


def test_train_featurizer_finds_the_informative_layer(store):
    feat, hist = train_featurizer(store, "phone", options=TrainOptions(steps=60, eval_every=20,
                                                                       lr=0.05),
                                  device="cpu", seed=0)
    assert isinstance(feat, WeightedSumFeaturizer)
    w = feat.layer_weights
    assert int(w.idxmax()) == 2 and w[2] > 0.4
    assert list(hist.columns) == ["step", "loss", "dev_accuracy"] + [f"weight_{i}" for i in range(4)]
    assert hist["step"].tolist() == [0, 20, 40, 60]  # step 0: the starting weights
    np.testing.assert_allclose(hist.iloc[0].filter(like="weight_").to_numpy(float), 0.25)
    np.testing.assert_allclose(hist.filter(like="weight_").sum(axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(hist.iloc[-1][[f"weight_{i}" for i in range(4)]].to_numpy(float),
                               w.to_numpy(), rtol=1e-6)
    assert hist["dev_accuracy"].iloc[-1] > 0.9
    assert hist["loss"].iloc[-1] < hist["loss"].iloc[0]
    assert hist.attrs["classes"] == [f"p{i}" for i in range(5)]


def test_train_featurizer_streamed_equals_cached_path(store):
    opts = TrainOptions(steps=30, eval_every=30, lr=0.05, batch_frames=64, max_cache_bytes=0)
    f_stream, h_stream = train_featurizer(store, "phone", options=opts, device="cpu", seed=1)
    assert int(f_stream.layer_weights.idxmax()) == 2
    assert h_stream["dev_accuracy"].iloc[-1] > 0.8


def test_train_featurizer_utterance_level_and_layers():
    st = make_store(n_utt=24, num_layers=3)
    feat, hist = train_featurizer(st, "group", level="utterance", layers=[0, 1],
                                  options=TrainOptions(steps=10, eval_every=5), device="cpu")
    assert feat.layer_selections == [0, 1]
    assert list(hist.filter(like="weight_").columns) == ["weight_0", "weight_1"]


def test_train_featurizer_bad_arguments(store):
    one = TrainOptions(steps=1)
    with pytest.raises(KeyError, match="columns"):
        train_featurizer(store, "no_such_label", level="utterance", options=one, device="cpu")
    with pytest.raises(ValueError, match="level"):
        train_featurizer(store, "phone", level="word", options=one, device="cpu")
    with pytest.raises(ValueError, match="steps"):
        train_featurizer(store, "phone", options=TrainOptions(steps=0), device="cpu")
    with pytest.raises(ValueError, match="layers"):
        train_featurizer(store, "phone", layers=[0, 9], options=one, device="cpu")
    with pytest.raises(ValueError, match="split_by"):
        train_featurizer(store, "phone", split_by="nonsense", options=one, device="cpu")
    with pytest.raises(ValueError, match="level"):  # no segments: it is not a pooled level
        WeightedScorer(store, "speaker", level="segment", device="cpu")


def test_train_featurizer_keeps_each_weight_on_its_layer(store):
    """``layers`` in any order: the featurizer (whose layers are sorted) gets each learned
    weight on the layer the history names."""
    feat, hist = train_featurizer(store, "phone", layers=[2, 0], device="cpu",
                                  options=TrainOptions(steps=5, eval_every=5))
    assert feat.layer_selections == [0, 2]
    for layer in (0, 2):
        assert feat.layer_weights[layer] == pytest.approx(hist[f"weight_{layer}"].iloc[-1])


# ---------------------------------------------------------------------------
# WeightedScorer: cached statistics against a direct computation
# ---------------------------------------------------------------------------


def _direct_score(scorer, weights):
    """The same probe computed from the frames: weighted sum, projection, s3viz.probe's ridge."""
    from s3viz.probe import LAMBDAS, ProbeStats

    data = scorer.data
    w = np.asarray(weights, dtype=float) / np.sum(weights)

    def rep(utts):
        x = sum(float(w[j]) * data.features(j, utts).double() for j in range(len(data.layers)))
        if scorer.basis is not None:
            x = x @ scorer.basis.double()
        y = torch.from_numpy(data.labels(utts))
        return x[y >= 0], y[y >= 0]

    c = len(data.classes)
    fit = ProbeStats.from_data(*rep(data.fit_utts), num_targets=c)
    dev = ProbeStats.from_data(*rep(data.dev_utts), num_targets=c)
    mse = fit.dev_mse(dev, LAMBDAS)
    lam = LAMBDAS[int(torch.argmin(mse.sum(1)))]
    weight, bias = (fit + dev).solve(lam)
    x, y = rep(data.test_utts)
    return float(((x @ weight + bias).argmax(1) == y).double().mean()), lam, weight


@pytest.mark.parametrize("dims,basis", [(None, "mixed"), (5, "mixed"), (5, "pca"),
                                        (4, "supervised")])
def test_scorer_matches_direct_computation(store, dims, basis):
    sc = WeightedScorer(store, "phone", dims=dims, basis=basis, device="cpu")
    assert sc.dims == (12 if dims is None else dims)
    if sc.basis is not None:  # orthonormal columns
        torch.testing.assert_close(sc.basis.T @ sc.basis, torch.eye(dims), atol=1e-5, rtol=0)
    rng = np.random.default_rng(0)
    for weights in [np.ones(4), np.eye(4)[2], rng.random(4), rng.random(4) ** 4]:
        got = sc.evaluate(weights)
        acc, lam, weight = _direct_score(sc, weights)
        assert got["lam"] == lam
        assert got["accuracy"] == pytest.approx(acc, abs=1e-12)
        w_cached, _, _ = sc.probe(weights)
        # the cached blocks are float32 products summed in float64; the direct fit is float64
        scale = float(weight.abs().max())
        torch.testing.assert_close(w_cached, weight, rtol=1e-4, atol=1e-5 * scale)


def test_scorer_basis_choices(store):
    own = torch.randn(12, 6, generator=torch.Generator().manual_seed(0))
    sc = WeightedScorer(store, "phone", basis=own, device="cpu")
    q = torch.linalg.qr(own.double())[0].float()
    torch.testing.assert_close(sc.basis, q, rtol=1e-5, atol=1e-6)
    assert sc.dims == 6
    # the supervised basis lies in the span of the class means: with 5 classes and 4
    # layers it has at most 4 * 4 directions, and it finds the informative layer at dims=4
    sup = WeightedScorer(store, "phone", basis="supervised", dims=4, device="cpu")
    assert sup.layer_scores()[2] > 0.9
    with pytest.raises(ValueError, match="basis must be"):
        WeightedScorer(store, "phone", basis="lda", dims=4, device="cpu")
    with pytest.raises(ValueError, match="basis must be a"):
        WeightedScorer(store, "phone", basis=torch.zeros(5, 2), device="cpu")


def test_scorer_layer_scores_and_split(store):
    sc = WeightedScorer(store, "phone", device="cpu")
    scores = sc.layer_scores()
    assert scores[2] > 0.95
    assert scores.drop(2).max() < 0.5  # noise layers: near chance (5 classes)
    speakers = store.labels["speaker"].to_numpy()
    assert not set(speakers[sc.data.test_utts]) & set(speakers[sc.data.train_utts])
    assert sc.n_test == int((sc.data.labels(sc.data.test_utts) >= 0).sum())
    with pytest.raises(ValueError, match="all zero"):
        sc.score(np.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        sc.score([1, -1, 0, 0])
    with pytest.raises(ValueError, match="4 entries"):
        sc.score([1, 1])


def test_scorer_mixed_rates_matches_featurizer_alignment():
    st = make_store(n_utt=12, num_layers=3, rates=[160, 320, 640], informative=(1,))
    sc = WeightedScorer(st, "phone", target_rate=320, dims=None, device="cpu",
                        split_by="utterance")
    feat = WeightedSumFeaturizer(st, target_rate=320)
    feat.set_weights(probs=[0.2, 0.5, 0.3])
    for i in sc.data.test_utts[:3]:
        hs = [h[None] for h in st.utterance(int(i))]
        lens = [torch.tensor([h.shape[1]]) for h in hs]
        out, out_len = feat(hs, lens)
        direct = sum(p * sc.data.raw_features(j, [i]) for j, p in enumerate([0.2, 0.5, 0.3]))
        assert int(out_len) == direct.shape[0]
        torch.testing.assert_close(out[0, : int(out_len)], direct, rtol=RTOL, atol=ATOL)
    assert sc.layer_scores()[1] > 0.9
