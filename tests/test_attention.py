"""Attention maps and statistics (s3viz.attention): against transformers' eager
``output_attentions``, across adapters, analytically on uniform attention, batch invariant."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

import s3viz
from _hf_case import tiny_whisper
from s3viz.attention import STATISTICS, attention_maps, attention_stats
from s3viz.data import Corpus, Utterance
from s3viz.upstreams import TorchaudioUpstream, get_upstream
from s3viz.upstreams._attention import capture_attention
from s3viz.zoo import TinyConfig, TinyUpstream

T = pytest.importorskip("transformers")

LENGTHS = (6400, 9000, 4003)
_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
_WAVLM = dict(num_buckets=32, max_bucket_distance=100)
FAMILIES = {
    "wav2vec2-base": ("Wav2Vec2Config", "Wav2Vec2Model", dict(feat_extract_norm="group")),
    "hubert-large": ("HubertConfig", "HubertModel",
                     dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
    "wavlm-base": ("WavLMConfig", "WavLMModel", dict(feat_extract_norm="group", **_WAVLM)),
    "wavlm-large": ("WavLMConfig", "WavLMModel",
                    dict(feat_extract_norm="layer", do_stable_layer_norm=True, **_WAVLM)),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel",
                       dict(num_conv_pos_embeddings=5, conv_pos_kernel_size=5)),
    "conformer": ("Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel",
                  dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                       position_embeddings_type="relative", conv_depthwise_kernel_size=7)),
}


def _hf(family, seed=0):
    cfg_name, cls_name, extra = FAMILIES[family]
    torch.manual_seed(seed)
    return getattr(T, cls_name)(getattr(T, cfg_name)(**{**_COMMON, **extra})).eval()


def _eager(model):
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    return ref


def _corpus(lengths=LENGTHS, seed=0) -> Corpus:
    rng = np.random.default_rng(seed)
    return Corpus([Utterance(f"u{i}", (rng.standard_normal(n) * 0.1).astype(np.float32))
                   for i, n in enumerate(lengths)])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_maps_equal_transformers_eager_attentions(family):
    model = _hf(family)
    up, ref = get_upstream(model), _eager(model)
    for utt in _corpus():
        maps = attention_maps(up, utt)
        with torch.no_grad():
            want = ref(torch.as_tensor(utt.wav)[None], output_attentions=True).attentions
        assert maps.layers == [1, 2] and maps.heads == [0, 1, 2, 3]
        for i, att in enumerate(want):
            got = maps.maps[i]
            if family.startswith("wavlm"):
                # HF's WavLM returns the mean over heads, copied to every head (torch's
                # multi_head_attention_forward averages by default); s3viz keeps each head
                got = got.mean(0, keepdim=True).expand_as(got)
            torch.testing.assert_close(got, att[0].float(), atol=1e-5, rtol=1e-4)
        assert not maps.outside.any()
        torch.testing.assert_close(maps.maps.sum(-1), torch.ones(2, 4, maps.num_frames))


@pytest.mark.parametrize("family", ["wav2vec2-base", "hubert-large", "wavlm-base"])
def test_torchaudio_maps_equal_the_hf_model_they_were_converted_from(family):
    """The torchaudio adapter (its attention read through SDPA) against the same weights
    in transformers (eager, or for WavLM each head through multi_head_attention_forward)."""
    from torchaudio.models.wav2vec2.utils import import_huggingface_model

    model = _hf(family, seed=1)
    ta = TorchaudioUpstream(import_huggingface_model(model).eval())
    hf = get_upstream(model)
    for utt in _corpus((5200, 7000)):
        a, b = attention_maps(ta, utt), attention_maps(hf, utt)
        torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=1e-4)


def _padded_equals_alone(up, corpus):
    """Maps of each utterance in a padded batch equal its maps alone."""
    from s3viz.audio import batch_wavs

    got = {}
    wavs, lens = batch_wavs([u.wav for u in corpus])
    with torch.no_grad(), capture_attention(up, lambda layer, p: got.setdefault(layer, p)):
        up(wavs, lens)
    for b, utt in enumerate(corpus):
        alone = attention_maps(up, utt)
        n = alone.num_frames
        for i, layer in enumerate(alone.layers):
            torch.testing.assert_close(got[layer][b, :, :n, :n], alone.maps[i],
                                       atol=2e-5, rtol=1e-4)
            assert not got[layer][b, :, :n, n:].any(), "padding gets no attention"


def test_padded_batch_maps_and_statistics_equal_each_utterance_alone():
    corpus = _corpus()
    for up in (s3viz.upstreams.tiny(pretrained=False),
               TorchaudioUpstream(_torchaudio_model()),
               get_upstream(_hf("hubert-large"))):
        _padded_equals_alone(up, corpus)
        together = attention_stats(up, corpus, batch_size=3)
        alone = attention_stats(up, corpus, batch_size=1)
        pd.testing.assert_frame_equal(together, alone, rtol=1e-5, atol=1e-6)


def _torchaudio_model(seed=0):
    from torchaudio.models import wav2vec2_model

    torch.manual_seed(seed)
    return wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(16, 10, 5)] + [(16, 3, 2)] * 4
        + [(16, 2, 2)] * 2, extractor_conv_bias=False, encoder_embed_dim=32,
        encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4,
        encoder_num_layers=2, encoder_num_heads=4, encoder_attention_dropout=0.0,
        encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
        encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None).eval()


# --------------------------------------------------------------------------- uniform attention


def _tiny_uniform() -> TinyUpstream:
    up = TinyUpstream(TinyConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_size=64,
                                 conv_channels=16, pos_conv_groups=4)).eval()
    with torch.no_grad():
        for layer in up.layers:  # query and key rows of the fused projection
            layer.attn.qkv.weight[:64] = 0
            layer.attn.qkv.bias[:64] = 0
    return up


def _torchaudio_uniform() -> TorchaudioUpstream:
    model = _torchaudio_model()
    with torch.no_grad():
        for layer in model.encoder.transformer.layers:
            for proj in (layer.attention.q_proj, layer.attention.k_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    return TorchaudioUpstream(model)


def _planted(lengths=(9600, 5760)) -> Corpus:
    """Utterances with phones and words at frame boundaries (320 samples; centres at
    k * 320 + 200 fall inside segment of frame k)."""
    rng = np.random.default_rng(3)
    utts = []
    for i, n in enumerate(lengths):
        frames = (n - 400) // 320 + 1
        cuts = [0, 3, 7, 8, 13, frames]
        rows = []
        names = [("sil", ""), ("a", "wa"), ("b", "wa"), ("sil", ""), ("c", "wc")]
        for (p, w), a, b in zip(names, cuts[:-1], cuts[1:]):
            rows.append((p, w, a * 320, b * 320 if b < frames else n))
        utts.append(Utterance(f"p{i}", (rng.standard_normal(n) * 0.1).astype(np.float32),
                              phones=pd.DataFrame(rows, columns=["phone", "word", "start",
                                                                 "end"])))
    return Corpus(utts)


@pytest.mark.parametrize("make", [_tiny_uniform, _torchaudio_uniform])
def test_zero_queries_and_keys_attend_uniformly(make):
    up, corpus = make(), _planted()
    stats = attention_stats(up, corpus, batch_size=2)
    frames = [(u.num_samples - 400) // 320 + 1 for u in corpus]
    rows = sum(frames)
    # entropy of a uniform row over T keys is log T: normalised, exactly 1
    np.testing.assert_allclose(stats["entropy"], 1.0, atol=1e-6)
    # mean |i - j| over a T x T grid is (T^2 - 1) / (3 T) frames; 20 ms per frame
    dist = sum((t * t - 1) / 3.0 for t in frames) / rows * 20.0
    np.testing.assert_allclose(stats["distance_ms"], dist, rtol=1e-6)
    diag = sum((3 * t - 2) / t for t in frames) / rows  # per row: band (3 keys, 2 at ends) / T
    np.testing.assert_allclose(stats["diagonal"], diag, rtol=1e-6)
    # a query puts (frames of a segment) / T on it: silence is 3 + 5 frames of each utterance;
    # phones sil, a, b, sil, c; words "wa" (a and b: 5 frames) and "wc"
    sizes = [np.diff([0, 3, 7, 8, 13, t]) for t in frames]
    same_phone = sum((s * s).sum() / t for s, t in zip(sizes, frames)) / rows
    word_rows = sum(5 + t - 13 for t in frames)
    same_word = sum((25 + (t - 13) ** 2) / t for t in frames) / word_rows
    np.testing.assert_allclose(stats["silence"], 8 * len(frames) / rows, rtol=1e-6)
    np.testing.assert_allclose(stats["same_phone"], same_phone, rtol=1e-6)
    np.testing.assert_allclose(stats["same_word"], same_word, rtol=1e-6)
    assert (stats["n_frames"] == rows).all() and (stats["outside"] == 0).all()
    assert (stats["n_word_frames"] == word_rows).all() and (stats["n_phone_frames"] == rows).all()



# --------------------------------------------------------------------------- Whisper, refusals


@pytest.fixture(scope="module")
def whisper():
    return tiny_whisper()


def test_whisper_attends_past_the_audio_and_says_how_much(whisper):
    up, ref = get_upstream(whisper), _eager(whisper).encoder
    utt = _corpus((9000,))[0]
    maps = attention_maps(up, utt)
    feats = up.feature_extractor([utt.wav], sampling_rate=16000, return_tensors="pt",
                                 padding="max_length").input_features
    with torch.no_grad():
        want = ref(feats, output_attentions=True).attentions
    n = maps.num_frames
    assert n == -(-9000 // 320) and want[0].shape[-1] == 250  # the window: 250 frames
    for i, att in enumerate(want):
        torch.testing.assert_close(maps.maps[i], att[0, :, :n, :n], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(maps.outside[i], att[0, :, :n, n:].sum(-1), atol=1e-5,
                                   rtol=1e-4)
    torch.testing.assert_close(maps.maps.sum(-1) + maps.outside, torch.ones_like(maps.outside))
    stats = attention_stats(up, _corpus((9000, 16000)), batch_size=2)
    assert (stats["outside"] > 0.5).all()  # most of a 5 s window is past 0.6-1 s of audio
    assert stats["entropy"].between(0, 1).all()


def test_refusals_name_the_argument():
    up, corpus = _tiny_uniform(), _planted()
    with pytest.raises(TypeError, match="SpectralUpstream"):
        attention_stats(get_upstream("spectral"), corpus)
    for layers in ([0], [3], [1, 1], []):
        with pytest.raises(ValueError, match="layers"):
            attention_stats(up, corpus, layers=layers)
    for heads in ([4], [0, 0], [-1]):
        with pytest.raises(ValueError, match="heads"):
            attention_maps(up, corpus[0], heads=heads)
    with pytest.raises(TypeError, match="Utterance"):
        attention_maps(up, corpus[0].wav)
    short = Corpus([Utterance("short", np.full(300, 0.1, np.float32))])
    with pytest.raises(ValueError, match="too short"):
        attention_stats(up, short)
    with pytest.raises(ValueError, match="batch_size"):
        attention_stats(up, corpus, batch_size=0)


def test_layer_and_head_subsets_are_the_same_numbers():
    up, corpus = s3viz.upstreams.tiny(), _planted()
    full = attention_stats(up, corpus)
    part = attention_stats(up, corpus, layers=[3], utterances=[1])
    one = attention_stats(up, Corpus([corpus[1]]), layers=[3])
    pd.testing.assert_frame_equal(part, one)
    assert len(full) == 4 * 4 and set(full.columns) >= set(STATISTICS)
    maps = attention_maps(up, corpus[0], layers=[2, 4], heads=[1])
    full_maps = attention_maps(up, corpus[0])
    torch.testing.assert_close(maps.map(4, 1), full_maps.map(4, 1))
    assert full.attrs["weights"] and maps.model == "tiny"
    # the user's model comes back as it was: training flags kept, no hook left behind
    up.train()
    attention_maps(up, corpus[0])
    assert up.training and all(not m._forward_hooks for m in up.modules())
