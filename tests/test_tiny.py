"""The tiny upstream (s3viz.zoo): shipped weights, contract, determinism, batch invariance,
the training pieces, and (slow) a shortened training run whose loss goes down."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from s3viz.align import WAV2VEC2_CONV_LAYERS, conv_lengths
from s3viz.zoo import TinyConfig, TinyUpstream, tiny
from s3viz.zoo.tiny import WEIGHTS_PATH, file_sha256, load_tiny_weights, save_tiny_weights
from s3viz.zoo.train_tiny import (
    HELD_OUT_SPEAKERS,
    TRAIN_SPEAKERS,
    kmeans,
    mfcc_features,
    span_mask,
)

MODEL_CARD = WEIGHTS_PATH.with_name("MODEL_CARD.md")
SMALL = TinyConfig(conv_channels=16, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64,
                   pos_conv_kernel=5, pos_conv_groups=4)


@pytest.fixture(scope="module")
def pretrained():
    return tiny(pretrained=True)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([16000, 9000, 5000, 401])
    wavs = torch.zeros(len(lens), int(lens.max()), 1)
    for i, n in enumerate(lens.tolist()):
        t = torch.arange(n) / 16000
        wavs[i, :n, 0] = 0.3 * torch.sin(2 * torch.pi * (150 + 60 * i) * t) + 0.05 * torch.randn(
            n, generator=g)
    return wavs, lens


# ---- shipped weights -------------------------------------------------------------------

def test_shipped_file_small_and_weights_only():
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size <= 8 * 2 ** 20
    payload = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert payload["format"] == "s3viz.zoo.tiny/1"
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


def test_checksum_matches_model_card():
    card = MODEL_CARD.read_text()
    found = re.findall(r"sha256[^0-9a-f]*([0-9a-f]{64})", card)
    assert found, "MODEL_CARD.md must state the sha256 of tiny.pt"
    assert file_sha256(WEIGHTS_PATH) in found
    assert len(set(found)) == 1


def test_pretrained_loads_the_file(pretrained):
    config, state, meta = load_tiny_weights(WEIGHTS_PATH)
    assert not pretrained.training
    assert pretrained.name == "tiny"
    assert pretrained.config == config
    for k, v in pretrained.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert "HuBERT" in meta["objective"]


def test_properties(pretrained):
    n = pretrained.config.num_layers + 1
    assert pretrained.num_layer == pretrained.num_layers == n
    assert pretrained.hidden_sizes == [pretrained.config.hidden_size] * n
    assert pretrained.downsample_rates == [320] * n
    assert pretrained.receptive_fields == [400] * n
    assert pretrained.conv_layers == list(WAV2VEC2_CONV_LAYERS)
    assert pretrained.config.hidden_size <= 256 and 4 <= pretrained.config.num_layers <= 6


def test_contract(pretrained):
    from s3viz.contract import check_upstream

    report = check_upstream(pretrained)
    assert report.ok, str(report)
    random = check_upstream(tiny(pretrained=False))
    assert random.ok, str(random)


def test_lengths_and_shapes(pretrained, batch):
    wavs, lens = batch
    with torch.inference_mode():
        all_hs, all_len = pretrained(wavs, lens)
    assert len(all_hs) == len(all_len) == pretrained.num_layer
    expected = conv_lengths(lens)
    for hs, n in zip(all_hs, all_len):
        assert n.dtype == torch.long and torch.equal(n, expected)
        assert hs.shape == (len(lens), int(expected.max()), pretrained.config.hidden_size)
        assert torch.isfinite(hs).all()
        for b, k in enumerate(n.tolist()):  # padded frames are zero
            assert torch.count_nonzero(hs[b, k:]) == 0


# ---- determinism and batch invariance ----------------------------------------------------

def test_deterministic_forward(pretrained, batch):
    wavs, lens = batch
    with torch.inference_mode():
        a, _ = pretrained(wavs, lens)
        b, _ = pretrained(wavs, lens)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_random_weights_seeded_and_rng_untouched():
    state = torch.random.get_rng_state()
    a, b, c = tiny(pretrained=False), tiny(pretrained=False), tiny(pretrained=False, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    # one name for both; the weights say which is which
    assert a.name == "tiny" and a.config == tiny(pretrained=True).config
    assert a.weights == "random weights (seed 0)" and c.weights == "random weights (seed 1)"
    assert tiny(pretrained=True).weights == (
        "pretrained: the shipped tiny model (s3viz/zoo/tiny.pt)")
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    pre = tiny(pretrained=True).state_dict()
    assert any(not torch.equal(sa[k], pre[k]) for k in sa)


@pytest.mark.parametrize("which", ["pretrained", "random"])
def test_batch_invariance(pretrained, batch, which):
    model = pretrained if which == "pretrained" else tiny(pretrained=False)
    wavs, lens = batch
    with torch.inference_mode():
        together, t_len = model(wavs, lens)
        for b, n in enumerate(lens.tolist()):
            alone, a_len = model(wavs[b: b + 1, :n], lens[b: b + 1])
            for layer, (x, y) in enumerate(zip(together, alone)):
                k = int(a_len[layer][0])
                assert k == int(t_len[layer][b])
                torch.testing.assert_close(x[b, :k], y[0, :k], rtol=1e-4, atol=1e-4,
                                           msg=f"utterance {b} layer {layer}")


def test_padding_content_does_not_leak(pretrained, batch):
    wavs, lens = batch
    noisy = wavs.clone()
    for b, n in enumerate(lens.tolist()):
        noisy[b, n:] = 0.9
    with torch.inference_mode():
        a, _ = pretrained(wavs, lens)
        b_, _ = pretrained(noisy, lens)
    for x, y in zip(a, b_):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_two_dim_input_and_short_input(pretrained, batch):
    wavs, lens = batch
    with torch.inference_mode():
        a, _ = pretrained(wavs, lens)
        b, _ = pretrained(wavs[..., 0], lens)
        short, short_len = pretrained(torch.zeros(2, 399, 1), torch.tensor([399, 100]))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(int(n.max()) == 0 and h.shape[1] == 0 for h, n in zip(short, short_len))


def test_bad_inputs(pretrained):
    with pytest.raises(TypeError, match="float"):
        pretrained(torch.zeros(1, 800, 1, dtype=torch.int16), torch.tensor([800]))
    with pytest.raises(ValueError, match="seq_len"):
        pretrained(torch.zeros(1, 800, 2), torch.tensor([800]))
    with pytest.raises(ValueError, match="wavs_len"):
        pretrained(torch.zeros(1, 800, 1), torch.tensor([801]))
    with pytest.raises(TypeError, match="integer"):
        pretrained(torch.zeros(1, 800, 1), torch.tensor([800.5]))
    with pytest.raises(TypeError, match="pretrained"):
        tiny(pretrained="yes")
    with pytest.raises(FileNotFoundError, match="train_tiny"):
        tiny(checkpoint="/nonexistent/tiny.pt")
    with pytest.raises(ValueError, match="config"):
        tiny(pretrained=True, config=SMALL)
    with pytest.raises(ValueError, match="divisible"):
        TinyConfig(hidden_size=30, num_heads=4)


def test_save_load_round_trip(tmp_path):
    model = tiny(pretrained=False, config=SMALL)
    sha = save_tiny_weights(model, tmp_path / "m.pt", dtype=torch.float32, meta={"steps": 3})
    assert sha == file_sha256(tmp_path / "m.pt")
    again = tiny(checkpoint=tmp_path / "m.pt")
    assert again.config == SMALL
    assert again.weights == f"checkpoint {(tmp_path / 'm.pt').resolve()}"
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an s3viz tiny weights file"):
        tiny(checkpoint=bad)


@pytest.mark.parametrize("norm_first", [True, False])
def test_both_layer_norm_placements_keep_the_contract(norm_first, batch):
    from s3viz.contract import check_upstream

    config = TinyConfig(**{**SMALL.to_dict(), "conv_layers": SMALL.conv_layers,
                           "layer_norm_first": norm_first})
    model = tiny(pretrained=False, config=config)
    assert check_upstream(model).ok
    with torch.no_grad():
        hs, hs_len = model(*batch)
    n = int(hs_len[-1][0])
    for i, h in enumerate(hs[1:], 1):
        frames = h[0, :n]
        # post-LN: every hidden state leaves a layer norm (unit affine at init), so each
        # frame has mean 0 and variance 1; pre-LN: only the last one does.
        normed = (not norm_first) or i == len(hs) - 1
        is_normed = (frames.mean(-1).abs().max() < 1e-4
                     and (frames.var(-1, unbiased=False) - 1).abs().max() < 2e-2)
        assert bool(is_normed) == normed, (norm_first, i)


def test_weights_without_layer_norm_key_load_as_pre_ln(tmp_path):
    model = tiny(pretrained=False, config=SMALL)
    save_tiny_weights(model, tmp_path / "m.pt", dtype=torch.float32)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["config"]["layer_norm_first"]  # a file written before the option existed
    torch.save(payload, tmp_path / "old.pt")
    assert tiny(checkpoint=tmp_path / "old.pt").config.layer_norm_first is True


def test_speaker_conditioned_head_reads_the_speaker(batch):
    from s3viz.zoo.train_tiny import _HubertTask

    torch.manual_seed(0)
    wavs, lens = batch
    for num_speakers in (0, 3):
        task = _HubertTask(tiny(pretrained=False, config=SMALL), 5, num_speakers).eval()
        n = int(conv_lengths(lens).max())
        targets = torch.zeros(len(lens), n, dtype=torch.long)
        mask = torch.zeros(len(lens), n, dtype=torch.bool)
        mask[:, ::2] = True
        with torch.no_grad():
            a = task(wavs, lens, targets, mask, 0.0, torch.tensor([0, 1, 2, 0]))[0]
            b = task(wavs, lens, targets, mask, 0.0, torch.tensor([1, 2, 0, 1]))[0]
        # the loss changes with the speaker ids exactly when the head reads them
        assert bool(a != b) == bool(num_speakers), num_speakers


def _curves(phone, speaker):
    import pandas as pd

    rows = [dict(model="tiny", target=t, layer=i, accuracy=a / 100)
            for t, accs in (("phone", phone), ("speaker", speaker)) for i, a in enumerate(accs)]
    return pd.DataFrame(rows)


def test_curve_check_passes_a_peaked_curve_and_names_each_failure():
    from s3viz.zoo.train_tiny import curve_check

    good = curve_check(_curves([30, 40, 45, 50, 52, 51, 48], [90, 92, 88, 80, 75, 70, 71]))
    assert good["met"].all(), good
    assert good.attrs["best_phone_layer"] == 4
    assert good.set_index("criterion").loc["phone_unique_best", "value"] == pytest.approx(1.0)
    flat = curve_check(_curves([30, 50, 50.5, 50.2, 50.4, 50.1, 50], [90, 92, 88, 85, 84, 83, 82]))
    met = flat.set_index("criterion")["met"]
    assert not met["phone_unique_best"] and met["phone_over_layer0"]
    assert met["speaker_lower_half"] and not met["speaker_falls"]
    late = curve_check(_curves([52, 53, 54, 55, 56, 58, 60], [60, 65, 70, 75, 80, 85, 90]))
    met = late.set_index("criterion")["met"]
    assert met["phone_unique_best"] and not met["phone_over_layer0"]
    assert not met["speaker_lower_half"] and not met["speaker_falls"]
    with pytest.raises(ValueError, match="no phone and speaker rows"):
        curve_check(_curves([1, 2], [3, 4]), model="other")


# ---- the training pieces --------------------------------------------------------------

def test_mfcc_frames_match_conv_lengths():
    g = np.random.default_rng(0)
    lens = [400, 719, 720, 16000, 23457, 399]
    wavs = [g.standard_normal(n).astype(np.float32) * 0.1 for n in lens]
    feats = mfcc_features(wavs, batch_size=4)
    for f, n in zip(feats, lens):
        assert f.shape == (int(conv_lengths([n])[0]), 39)
    torch.testing.assert_close(feats[3].mean(0), torch.zeros(39), rtol=0, atol=1e-4)
    # batching (padding) does not change an utterance's features
    for w, f in zip(wavs, feats):
        torch.testing.assert_close(mfcc_features([w])[0], f, rtol=1e-4, atol=1e-4)


def test_kmeans_recovers_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(50)
    x = centers[truth] + 0.5 * torch.randn(150, 2, generator=g)
    c, assign = kmeans(x, 3, seed=0)
    # the same partition, up to relabelling
    for k in range(3):
        assert len(set(assign[truth == k].tolist())) == 1
    assert len(set(assign.tolist())) == 3
    for k in range(3):  # centroids are the means of their members
        torch.testing.assert_close(c[k], x[assign == k].mean(0), rtol=1e-5, atol=1e-5)


def test_span_mask():
    g = torch.Generator().manual_seed(0)
    x_len = torch.tensor([200, 50, 5, 0])
    m = span_mask(x_len, 0.08, 10, g)
    assert m.shape == (4, 200) and m.dtype == torch.bool
    for b, n in enumerate(x_len.tolist()):
        assert not m[b, n:].any()
        if n:
            assert m[b, :n].any()
    assert 0.3 < m[0].float().mean() < 0.8


def test_split_is_disjoint():
    from s3viz.data import SPEAKERS
    from s3viz.zoo.train_tiny import held_out_corpus, training_corpus

    train_variants = {v["voice"].split("+")[1] for v in TRAIN_SPEAKERS.values()}
    held_variants = {v["voice"].split("+")[1] for v in HELD_OUT_SPEAKERS.values()}
    assert not held_variants & train_variants
    for name, spec in {**TRAIN_SPEAKERS, **HELD_OUT_SPEAKERS}.items():
        if name in SPEAKERS:  # built-in speakers keep their built-in voices
            assert spec == SPEAKERS[name]
    assert not set(HELD_OUT_SPEAKERS) & set(TRAIN_SPEAKERS)
    train, test = training_corpus(18), held_out_corpus(12, train_utterances=18)
    assert not {u.speaker for u in train} & {u.speaker for u in test}
    assert not {u.text for u in train} & {u.text for u in test}
    assert {u.speaker for u in test} == set(HELD_OUT_SPEAKERS)


@pytest.mark.slow
def test_short_training_lowers_the_loss(tmp_path):
    from s3viz.zoo.train_tiny import TrainConfig, train, training_corpus

    config = TinyConfig(conv_channels=32, hidden_size=64, num_layers=2, num_heads=2,
                        ffn_size=128, pos_conv_kernel=5, pos_conv_groups=4, dropout=0.0)
    corpus = training_corpus(18)[:8]
    k = 8
    model, summary = train(corpus, TrainConfig(steps=60, seed=0, architecture=config,
                                               clusters=k, lr=3e-3, warmup=5, batch_seconds=8.0,
                                               unmasked_weight=1.0, speed=0.0),
                           device="cpu", log_every=1, log=lambda s: None)
    losses = [h["loss"] for h in summary["history"]]  # masked + unmasked cross-entropy
    assert summary["steps"] == 60 and len(losses) == 60 and not summary["stopped_early"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    # below what predicting uniformly (both terms) gives: it learned more than the prior
    assert np.mean(losses[-5:]) < 2 * np.log(k) - 0.4
    assert isinstance(model, TinyUpstream) and not model.training
    sha = save_tiny_weights(model, tmp_path / "t.pt")
    assert len(sha) == 64 and tiny(checkpoint=tmp_path / "t.pt").config == config


def test_a_model_refused_at_every_layer_is_refused_in_the_card_not_a_crash():
    """The spectral baseline's speaker probes are NaN at every layer (per-utterance CMVN
    zeroes every mean-pooled feature): best_layers skips it, bar_check and the card say so."""
    import math

    from s3viz.zoo.train_tiny import _layer_table, bar_check, best_layers

    res = _curves([30, 50, 52], [90, 80, 70])
    import pandas as pd

    spectral = pd.DataFrame([dict(model="spectral", target=t, layer=i, accuracy=a)
                             for t, accs in (("phone", [0.3, 0.4]),
                                             ("speaker", [float("nan")] * 2))
                             for i, a in enumerate(accs)])
    res = pd.concat([res, spectral], ignore_index=True).assign(chance=0.1)
    best = best_layers(res)
    assert not ((best["model"] == "spectral") & (best["target"] == "speaker")).any()
    bar = bar_check(res).set_index("target")
    assert math.isnan(bar.loc["speaker", "spectral"]) and bar.loc["speaker", "spectral_layer"] == -1
    assert bar.loc["phone", "spectral"] == 40.0
    assert "| spectral | refused | refused |  |" in _layer_table(res, "speaker")
