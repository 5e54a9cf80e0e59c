"""Upstream adapters: torchaudio wav2vec2/HuBERT/WavLM, the spectral baseline, from_s3prl,
and what ``get_upstream``'s names and ``pretrained=`` mean.

Everything runs offline (``S3VIZ_OFFLINE=1``, set by conftest.py): names mean
pretrained weights, so the models here are built with ``pretrained=False`` (random
weights), from weight files the tests write, or on the meta device (large ones).
Base-size models are built once per module; architecture branches (group/layer norm
extractor, post/pre-LN transformer, WavLM, waveform normalisation) are also covered
by tiny models built from the same torchaudio factories.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchaudio
from torchaudio.models import Wav2Vec2Model, wav2vec2_model, wavlm_model

from s3viz.align import WAV2VEC2_CONV_LAYERS, conv_lengths, expected_lengths
from s3viz.interface import AbsUpstream
from s3viz.upstreams import (
    ALIASES,
    PRETRAINED_MODELS,
    RANDOM_WEIGHTS,
    TORCHAUDIO_MODELS,
    S3PRLUpstreamAdapter,
    SpectralUpstream,
    TorchaudioUpstream,
    bundle_checkpoint,
    from_s3prl,
    get_upstream,
    is_random_weights,
    spectral_upstream,
    torchaudio_upstream,
    wav2vec2_hidden_states,
    weights_of,
)

BASE_MODELS = ("hubert_base", "wav2vec2_base", "wavlm_base")
LENS = (12000, 6400, 9333)  # 0.75 s, 0.4 s, 0.58 s


def _wavs(lens, seed=0, garbage=0.0):
    """Speech-like test signals (harmonics + noise) and a padded batch.

    Returns the list of 1-D waveforms and ``(batch (B, T, 1), wavs_len (B,))``; the
    padding holds ``garbage`` (a correct adapter never looks at it).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lens):
        t = torch.arange(n) / 16000
        f0 = 110 + 40 * i
        w = sum(torch.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        w = 0.1 * w + 0.02 * torch.randn(n, generator=g)
        out.append(w.float())
    batch = torch.full((len(lens), max(lens), 1), float(garbage))
    for i, w in enumerate(out):
        batch[i, : len(w), 0] = w
    return out, batch, torch.tensor(lens)


def _scale(t):
    return max(1.0, float(t.abs().max())) if t.numel() else 1.0


def _check_batch_invariance(up, wavs, batch, wavs_len, rtol):
    """Every utterance alone vs in the padded batch; returns the largest scaled difference."""
    with torch.inference_mode():
        all_hs, all_hs_len = up(batch, wavs_len)
        assert len(all_hs) == len(all_hs_len) == up.num_layer
        worst = 0.0
        for i, w in enumerate(wavs):
            hs1, len1 = up(w[None, :], torch.tensor([len(w)]))  # (1, T) input spelling
            for layer in range(up.num_layer):
                n = int(len1[layer][0])
                assert int(all_hs_len[layer][i]) == n
                assert hs1[layer].shape == (1, n, up.hidden_sizes[layer])
                assert all_hs[layer].shape[1] == int(all_hs_len[layer].max())
                assert torch.isfinite(all_hs[layer]).all()
                assert (all_hs[layer][i, n:] == 0).all(), "padded frames are zero"
                if n:
                    ref = hs1[layer][0]
                    diff = float((all_hs[layer][i, :n] - ref).abs().max()) / _scale(ref)
                    worst = max(worst, diff)
    assert worst < rtol, worst
    return worst


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_upstreams():
    return {name: torchaudio_upstream(name, pretrained=False) for name in BASE_MODELS}


@pytest.fixture(scope="module")
def utterances():
    return _wavs(LENS, garbage=0.5)


_TINY_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2


def _tiny_model(kind: str, extractor_mode: str, layer_norm_first: bool) -> Wav2Vec2Model:
    """A small model from torchaudio's own factories (same module classes as the bundles)."""
    kwargs = dict(
        extractor_mode=extractor_mode,
        extractor_conv_layer_config=_TINY_CONV,
        extractor_conv_bias=extractor_mode == "layer_norm",
        encoder_embed_dim=48,
        encoder_projection_dropout=0.1,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=3,
        encoder_num_heads=4,
        encoder_attention_dropout=0.1,
        encoder_ff_interm_features=64,
        encoder_ff_interm_dropout=0.1,
        encoder_dropout=0.1,
        encoder_layer_norm_first=layer_norm_first,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "wavlm":
            return wavlm_model(encoder_num_buckets=32, encoder_max_distance=64, **kwargs).eval()
        return wav2vec2_model(**kwargs).eval()


TINY_CONFIGS = [
    # (kind, extractor_mode, encoder_layer_norm_first, normalize_waveform)
    ("wav2vec2", "group_norm", False, False),  # base-like
    ("wav2vec2", "layer_norm", True, True),  # large LV-60k-like
    ("wav2vec2", "group_norm", True, False),
    ("wavlm", "group_norm", False, False),  # wavlm base
    ("wavlm", "layer_norm", True, True),  # wavlm large
]


# --------------------------------------------------------------------------- torchaudio


@pytest.mark.parametrize("name", BASE_MODELS)
def test_torchaudio_base_properties(base_upstreams, name):
    up = base_upstreams[name]
    assert isinstance(up, AbsUpstream) and isinstance(up, torch.nn.Module)
    assert isinstance(up.model, Wav2Vec2Model)
    assert not up.training and not up.model.training, "built in eval mode"
    assert up.name == name and up.weights == "random weights (seed 0)"
    assert up.num_layer == up.num_layers == 13
    assert up.hidden_sizes == [768] * 13
    assert up.downsample_rates == [320] * 13
    assert up.receptive_fields == [400] * 13
    assert tuple(up.conv_layers) == tuple(WAV2VEC2_CONV_LAYERS)
    assert up.normalize_waveform is False
    assert next(up.parameters()).device.type == "cpu"


def test_wavlm_base_plus_properties():
    up = torchaudio_upstream("wavlm_base_plus", pretrained=False)
    assert up.num_layer == 13 and up.hidden_sizes == [768] * 13
    assert up.model.encoder.transformer.layers[0].attention.num_buckets == 320


@pytest.mark.slow
@pytest.mark.parametrize("name", BASE_MODELS)
def test_torchaudio_base_batch_invariance(base_upstreams, utterances, name):
    """Padded batch of 3 lengths (padding filled with 0.5) == each utterance alone."""
    up = base_upstreams[name]
    wavs, batch, wavs_len = utterances
    worst = _check_batch_invariance(up, wavs, batch, wavs_len, rtol=1e-4)
    with torch.inference_mode():
        _, all_hs_len = up(batch, wavs_len)
    expected = conv_lengths(wavs_len, WAV2VEC2_CONV_LAYERS)
    assert torch.equal(expected, (wavs_len - 400) // 320 + 1)
    for h_len in all_hs_len:
        assert h_len.dtype == torch.long and torch.equal(h_len, expected)
    print(f"{name}: max |batch - single| / scale = {worst:.2e}")


def test_hubert_base_faithful_to_torchaudio(base_upstreams, utterances):
    """Unpadded single utterance: layers 1..12 are torchaudio's extract_features outputs."""
    up = base_upstreams["hubert_base"]
    wav = utterances[0][1][None, :]
    with torch.inference_mode():
        all_hs, _ = up(wav[..., None], torch.tensor([wav.shape[1]]))
        ref, _ = up.model.extract_features(wav)
        out, _ = up.model(wav)
        # layer 0: the input of the first transformer layer (feature projection +
        # positional convolution + layer norm for this post-LN model)
        x = up.model.encoder.feature_projection(up.model.feature_extractor(wav, None)[0])
        layer0 = up.model.encoder.transformer._preprocess(x)
    assert len(ref) == 12
    for mine, theirs in zip(all_hs[1:], ref, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(all_hs[-1], out, rtol=0, atol=1e-6)
    torch.testing.assert_close(all_hs[0], layer0, rtol=0, atol=1e-6)


def test_torchaudio_own_batching_is_not_invariant():
    """Documents trap (a): torchaudio's batched group norm sees the (zero) padding."""
    model = _tiny_model("wav2vec2", "group_norm", False)
    wavs, _, wavs_len = _wavs(LENS)
    with torch.inference_mode():
        zero_padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        theirs, _ = model.extract_features(zero_padded, wavs_len)
        single, _ = model.extract_features(wavs[1][None])
    n = single[0].shape[1]
    assert float((theirs[0][1, :n] - single[0][0]).abs().max()) > 1e-2


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_tiny_architectures(config):
    """All architecture branches: batch invariance (with utterances shorter than one
    frame and garbage padding), faithfulness, final layer norm of pre-LN models."""
    kind, mode, layer_norm_first, normalize = config
    model = _tiny_model(kind, mode, layer_norm_first)
    up = TorchaudioUpstream(model, normalize_waveform=normalize)
    assert up.num_layer == 4 and up.hidden_sizes == [48] * 4
    lens = (8000, 300, 4321, 399, 400, 401, 720)
    wavs, batch, wavs_len = _wavs(lens, seed=1, garbage=3.0)
    _check_batch_invariance(up, wavs, batch, wavs_len, rtol=1e-5)
    with torch.inference_mode():
        _, all_hs_len = up(batch, wavs_len)
        assert all_hs_len[0].tolist() == [24, 0, 13, 0, 1, 1, 2]
        wav = wavs[0][None]
        x = torch.nn.functional.layer_norm(wav, wav.shape) if normalize else wav
        ref, _ = model.extract_features(x)
        out, _ = model(x)
        all_hs, _ = up(wav, torch.tensor([wav.shape[1]]))
    for mine, theirs in zip(all_hs[1:-1], ref[:-1], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    # last hidden state = encoder output (final layer norm for pre-LN models)
    torch.testing.assert_close(all_hs[-1], out, rtol=0, atol=1e-6)
    if layer_norm_first:
        assert float((all_hs[-1] - ref[-1]).abs().max()) > 1e-2


def test_all_utterances_shorter_than_one_frame():
    up = TorchaudioUpstream(_tiny_model("wavlm", "group_norm", False))
    all_hs, all_hs_len = up(torch.zeros(2, 350, 1), torch.tensor([350, 10]))
    assert len(all_hs) == 4
    assert all(h.shape == (2, 0, 48) for h in all_hs)
    assert all(h_len.tolist() == [0, 0] for h_len in all_hs_len)


def test_bundle_wrapper_is_unwrapped():
    from torchaudio.pipelines._wav2vec2.utils import _extend_model

    model = _tiny_model("wav2vec2", "layer_norm", True)
    up = TorchaudioUpstream(_extend_model(model, normalize_waveform=True), name="tiny")
    assert up.model is model and up.normalize_waveform is True and up.name == "tiny"
    assert "tiny" in repr(up)
    # a user's model keeps its mode
    model.train()
    assert TorchaudioUpstream(model).model.training


def test_hidden_states_function_matches_module():
    model = _tiny_model("wav2vec2", "group_norm", False)
    wavs, batch, wavs_len = _wavs((3000, 2000))
    with torch.inference_mode():
        a, a_len = wav2vec2_hidden_states(model, batch, wavs_len)
        b, b_len = TorchaudioUpstream(model)(batch, wavs_len)
    for x, y in zip(a + a_len, b + b_len, strict=True):
        assert torch.equal(x, y)


def test_random_init_reproducible_and_global_rng_untouched(base_upstreams):
    state = torch.get_rng_state()
    again = torchaudio_upstream("hubert_base", pretrained=False)
    assert torch.equal(torch.get_rng_state(), state), "building must not consume the global RNG"
    other_seed = torchaudio_upstream("hubert_base", pretrained=False, seed=1)
    assert other_seed.weights == "random weights (seed 1)"
    key = "encoder.transformer.layers.0.attention.q_proj.weight"
    ref = base_upstreams["hubert_base"].model.state_dict()[key]
    assert torch.equal(again.model.state_dict()[key], ref)
    assert not torch.equal(other_seed.model.state_dict()[key], ref)
    # same architecture, different model names: different random weights
    w2v = base_upstreams["wav2vec2_base"].model.state_dict()[key]
    assert not torch.equal(w2v, ref)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="hubert_base"):
        torchaudio_upstream("hubert_tiny")
    with pytest.raises(TypeError, match="pretrained"):
        torchaudio_upstream("hubert_base", pretrained="yes")
    url, _ = bundle_checkpoint("HuBERT-Base")  # case and dash are forgiven
    assert url.endswith("/hubert_fairseq_base_ls960.pth")
    assert set(TORCHAUDIO_MODELS) >= {
        "wav2vec2_base", "wav2vec2_large", "hubert_base", "hubert_large",
        "wavlm_base", "wavlm_base_plus", "wavlm_large",
    }


def test_pretrained_missing_offline_says_what_to_download(tmp_path, monkeypatch):
    """Offline (S3VIZ_OFFLINE, set by conftest.py) and not cached: refused at once with
    the URL, where to put the file and the variable; nothing is written."""
    assert os.environ.get("S3VIZ_OFFLINE") == "1"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url, path = bundle_checkpoint("wavlm_base")
    assert url == "https://download.pytorch.org/torchaudio/models/wavlm_base.pth"
    assert path == os.path.join(str(tmp_path), "hub", "checkpoints", "wavlm_base.pth")
    with pytest.raises(FileNotFoundError) as info:
        torchaudio_upstream("wavlm_base")  # pretrained is the default
    message = str(info.value)
    assert url in message and path in message and "WAVLM_BASE" in message
    assert "S3VIZ_OFFLINE" in message and "pretrained=False" in message
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path)), (
        "nothing is downloaded")


def _legacy_layout(state):
    """torchaudio's released .pth files store the positional conv's weight norm as
    weight_g / weight_v (pre-parametrization layout)."""
    out = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        out[key] = value
    return out


@pytest.fixture(scope="module")
def local_hubert_weights(base_upstreams, tmp_path_factory):
    """A HUBERT_BASE-layout weight file in a private TORCH_HOME (perturbed random weights)."""
    home = tmp_path_factory.mktemp("torch_home")
    state = {k: v.clone() for k, v in base_upstreams["hubert_base"].model.state_dict().items()}
    state["encoder.transformer.layer_norm.bias"] += 0.25
    state = _legacy_layout(state)
    assert "encoder.transformer.pos_conv_embed.conv.weight_g" in state
    path = home / "hub" / "checkpoints" / "hubert_fairseq_base_ls960.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return home, path, state


def test_pretrained_loads_local_file(local_hubert_weights, monkeypatch):
    home, path, state = local_hubert_weights
    monkeypatch.setenv("TORCH_HOME", str(home))
    up = torchaudio_upstream("hubert_base")  # pretrained: the cached file, even offline
    assert up.weights == ("pretrained: torchaudio.pipelines.HUBERT_BASE "
                          "(hubert_fairseq_base_ls960.pth)") and not up.training
    assert not is_random_weights(up.weights) and weights_of(up) == up.weights
    loaded = up.model.state_dict()
    key = "encoder.transformer.layer_norm.bias"
    assert torch.equal(loaded[key], state[key])
    v = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"
    assert torch.equal(loaded[v], state["encoder.transformer.pos_conv_embed.conv.weight_v"])


def test_checkpoint_path(local_hubert_weights, tmp_path):
    _, path, state = local_hubert_weights
    up = torchaudio_upstream("hubert_base", checkpoint=str(path))
    assert up.weights == f"checkpoint {path}"
    key = "encoder.transformer.layer_norm.bias"
    assert torch.equal(up.model.state_dict()[key], state[key])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        torchaudio_upstream("hubert_base", checkpoint=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"w2v_encoder.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="import_fairseq_model"):
        torchaudio_upstream("hubert_base", checkpoint=str(bad))
    torch.save([torch.zeros(3)], bad)
    with pytest.raises(ValueError, match="not a state dict"):
        torchaudio_upstream("hubert_base", checkpoint=str(bad))
    assert bad.exists(), "a file s3viz did not download is never deleted"


@pytest.mark.parametrize(
    "wavs, wavs_len, error, match",
    [
        (torch.zeros(2, 800, 2), [800, 800], ValueError, "batch_size, seq_len, 1"),
        (torch.zeros(800), [800], ValueError, "batch_size, seq_len, 1"),
        (torch.zeros(2, 800, dtype=torch.int16), [800, 800], TypeError, "float"),
        (torch.zeros(2, 800), [800, 900], ValueError, "wavs_len must lie"),
        (torch.zeros(2, 800), [800], ValueError, "shape"),
        (torch.zeros(2, 800), torch.tensor([800.0, 800.0]), TypeError, "integer"),
        (torch.zeros(2, 800), [-1, 800], ValueError, "wavs_len must lie"),
        ([[0.0] * 800], [800], TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(wavs, wavs_len, error, match):
    ups = [TorchaudioUpstream(_tiny_model("wav2vec2", "group_norm", False)), spectral_upstream()]
    for up in ups:
        with pytest.raises(error, match=match):
            up(wavs, wavs_len)


@pytest.mark.slow
def test_hubert_large():
    """Built once: 25 hidden states of 1024; pre-LN: the last one is layer-normed; the
    waveform is normalised per utterance (as the HUBERT_LARGE bundle does)."""
    up = torchaudio_upstream("hubert_large", pretrained=False)
    assert up.num_layer == 25 and up.hidden_sizes == [1024] * 25
    assert up.downsample_rates == [320] * 25 and up.normalize_waveform
    wavs, batch, wavs_len = _wavs((8000, 5000))
    _check_batch_invariance(up, wavs, batch, wavs_len, rtol=1e-4)
    with torch.inference_mode():
        wav = wavs[0][None]
        x = torch.nn.functional.layer_norm(wav, wav.shape)
        ref, _ = up.model.extract_features(x)
        out, _ = up.model(x)
        all_hs, _ = up(wav, torch.tensor([wav.shape[1]]))
    for mine, theirs in zip(all_hs[1:-1], ref[:-1], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(all_hs[-1], out, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = _tiny_model("wavlm", "group_norm", False)
    wavs, batch, wavs_len = _wavs((6000, 3000))
    up = TorchaudioUpstream(model)
    with torch.inference_mode():
        cpu_hs, cpu_len = up(batch, wavs_len)
        with pytest.raises(ValueError, match="same device"):
            up(batch.cuda(), wavs_len)
        up.cuda()
        prev = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            gpu_hs, gpu_len = up(batch.cuda(), wavs_len.cuda())
        finally:
            torch.backends.cudnn.allow_tf32 = prev
        spec = spectral_upstream()
        spec_cpu, _ = spec(batch, wavs_len)
        spec_gpu, _ = spec.cuda()(batch.cuda(), wavs_len.cuda())
    for a, b in zip(cpu_hs, gpu_hs, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu_len, gpu_len, strict=True))
    for a, b in zip(spec_cpu, spec_gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- spectral


def test_spectral_properties():
    up = spectral_upstream()
    assert isinstance(up, SpectralUpstream) and isinstance(up, AbsUpstream)
    assert up.num_layer == up.num_layers == 6
    assert up.hidden_sizes == [80, 39, 80, 39, 80, 39]
    assert up.downsample_rates == [160, 160, 320, 320, 640, 640]
    assert up.receptive_fields == up.downsample_rates
    assert up.layer_names == ["logmel@160", "mfcc@160", "logmel@320", "mfcc@320",
                              "logmel@640", "mfcc@640"]
    assert up.window_sizes == [400, 400, 560, 560, 880, 880]
    assert up.conv_layers is None and up.name == "spectral" and not up.training
    small = SpectralUpstream((320,), n_mels=40, n_mfcc=20, deltas=False)
    assert small.hidden_sizes == [40, 20] and small.downsample_rates == [320, 320]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"rates": (100,)}, ValueError),
        ({"rates": (160, 160)}, ValueError),
        ({"rates": ()}, ValueError),
        ({"rates": "fast"}, TypeError),
        ({"n_mfcc": 90}, ValueError),
        ({"n_mels": 0}, ValueError),
    ],
)
def test_spectral_bad_arguments(kwargs, error):
    with pytest.raises(error):
        spectral_upstream(**kwargs)


def test_spectral_lengths_and_batch_invariance():
    lens = (16000, 1, 159, 160, 161, 320, 641, 0, 12345)
    wavs, batch, wavs_len = _wavs(lens, seed=2, garbage=5.0)
    up = spectral_upstream()
    # CMVN over 2-3 frames amplifies float rounding by up to 1 / sqrt(1e-5)
    _check_batch_invariance(up, wavs, batch, wavs_len, rtol=1e-4)
    with torch.inference_mode():
        all_hs, all_hs_len = up(batch[..., 0], wavs_len)
    for layer, rate in enumerate(up.downsample_rates):
        expected = expected_lengths(wavs_len, rate, "ceil")
        assert torch.equal(all_hs_len[layer], expected)
        assert torch.equal(expected, torch.tensor([(n - 1) // rate + 1 if n else 0 for n in lens]))
        assert all_hs[layer].dtype == torch.float32


def test_spectral_empty_batch_of_zero_lengths():
    all_hs, all_hs_len = spectral_upstream()(torch.zeros(2, 100), torch.tensor([0, 0]))
    assert [h.shape[1] for h in all_hs] == [0] * 6
    assert [h.shape[2] for h in all_hs] == [80, 39] * 3


def _naive_spectral(wav: torch.Tensor, normalize: bool):
    """Reference from torchaudio.transforms on one unpadded utterance + numpy pooling/CMVN."""
    n = len(wav)
    n160 = (n - 1) // 160 + 1
    padded = torch.nn.functional.pad(wav, (120, (n160 - 1) * 160 + 400 - 120 - n))
    melkwargs = dict(n_fft=400, hop_length=160, n_mels=80, center=False, mel_scale="htk")
    mel = torchaudio.transforms.MelSpectrogram(16000, **melkwargs)(padded)
    logmel = torch.log(mel + 1e-6).T.double().numpy()  # (T, 80)
    mfcc = torchaudio.transforms.MFCC(16000, n_mfcc=13, log_mels=True, melkwargs=melkwargs)
    cep = mfcc(padded).T.double().numpy()  # (T, 13)
    assert logmel.shape[0] == cep.shape[0] == n160
    out = []
    for rate in (160, 320, 640):
        k = rate // 160
        m = (n - 1) // rate + 1

        def pool(x, k=k, m=m):
            return np.stack([x[j * k : (j + 1) * k].mean(0) for j in range(m)])

        lm, c = pool(logmel), torch.from_numpy(pool(cep)).T  # c: (13, m)
        d1 = torchaudio.functional.compute_deltas(c, win_length=5)
        d2 = torchaudio.functional.compute_deltas(d1, win_length=5)
        c = torch.cat([c, d1, d2]).T.numpy()
        for x in (lm, c):
            if normalize:
                x = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
            out.append(x)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_spectral_matches_naive_reference(normalize):
    wavs, batch, wavs_len = _wavs((12345, 7000), seed=3)
    up = spectral_upstream(normalize=normalize)
    with torch.inference_mode():
        all_hs, all_hs_len = up(batch, wavs_len)
    for i, w in enumerate(wavs):
        ref = _naive_spectral(w, normalize)
        for layer, expected in enumerate(ref):
            n = int(all_hs_len[layer][i])
            got = all_hs[layer][i, :n].double().numpy()
            assert got.shape == expected.shape
            atol = 2e-4 * _scale(torch.tensor(expected))
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol)
    if normalize:
        h = all_hs[0][0, : int(all_hs_len[0][0])]
        np.testing.assert_allclose(h.mean(0).numpy(), 0, atol=1e-4)
        np.testing.assert_allclose(h.std(0, unbiased=False).numpy(), 1, atol=1e-3)


# --------------------------------------------------------------------------- from_s3prl


class FakeS3PRLUpstream(torch.nn.Module):
    """Shaped like s3prl.nn.S3PRLUpstream: num_layers, (batch, seq_len) waveforms,
    ceil-convention lengths; two layers at rates 160 and 320."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(160, 8)
        self.name = "fake_s3prl"

    @property
    def num_layers(self):
        return 2

    @property
    def hidden_sizes(self):
        return [8, 8]

    @property
    def downsample_rates(self):
        return [160, 320]

    def forward(self, wavs, wavs_len):
        assert wavs.dim() == 2, "s3prl upstream called with (batch_size, seq_len)"
        num = (wavs.shape[1] - 1) // 160 + 1
        frames = torch.nn.functional.pad(wavs, (0, num * 160 - wavs.shape[1]))
        h1 = self.proj(frames.view(wavs.shape[0], num, 160))
        h2 = h1[:, ::2]
        len1 = (wavs_len - 1) // 160 + 1
        len2 = (wavs_len - 1) // 320 + 1
        return [h1, h2], [len1, len2]


def test_from_s3prl_wraps_without_s3prl():
    fake = FakeS3PRLUpstream()
    up = from_s3prl(fake)
    assert isinstance(up, S3PRLUpstreamAdapter) and isinstance(up, AbsUpstream)
    assert up.num_layer == up.num_layers == 2
    assert up.hidden_sizes == [8, 8] and up.downsample_rates == [160, 320]
    assert up.name == "fake_s3prl" and up.conv_layers is None
    assert getattr(up, "receptive_fields", None) is None
    assert any(m is fake for m in up.modules()), "the wrapped module is a submodule"
    wavs, batch, wavs_len = _wavs((3200, 1000))
    with torch.inference_mode():
        all_hs, all_hs_len = up(batch, wavs_len)  # (B, T, 1) in, squeezed for s3prl
        ref_hs, ref_len = fake(batch[..., 0], wavs_len)
    for a, b in zip(all_hs + all_hs_len, ref_hs + ref_len, strict=True):
        assert torch.equal(a, b)
    assert [h.tolist() for h in all_hs_len] == [[20, 7], [10, 4]]


def test_from_s3prl_accepts_num_layer_and_reports_errors():
    class NumLayer:
        num_layer = 1
        hidden_sizes = [4]
        downsample_rates = [320]
        receptive_fields = [400]

        def __call__(self, wavs, wavs_len):
            return [torch.zeros(wavs.shape[0], 1, 4)], [torch.ones(wavs.shape[0])]

    up = from_s3prl(NumLayer(), name="plain")
    assert up.num_layer == 1 and up.receptive_fields == [400] and up.name == "plain"
    _, all_hs_len = up(torch.zeros(1, 400, 1), torch.tensor([400]))
    assert all_hs_len[0].dtype == torch.long

    class NoLayers:
        hidden_sizes = [4]
        downsample_rates = [320]

        def __call__(self, wavs, wavs_len):
            return None

    with pytest.raises(TypeError, match="num_layer"):
        from_s3prl(NoLayers())

    class Mismatch(NumLayer):
        hidden_sizes = [4, 4]

    with pytest.raises(ValueError, match="hidden_sizes"):
        from_s3prl(Mismatch())

    class BadOutput(NumLayer):
        def __call__(self, wavs, wavs_len):
            return [torch.zeros(1, 1, 4)]

    with pytest.raises(TypeError, match="all_hs, all_hs_len"):
        from_s3prl(BadOutput())(torch.zeros(1, 400), torch.tensor([400]))

    class TooFew(NumLayer):
        def __call__(self, wavs, wavs_len):
            return [], []

    with pytest.raises(ValueError, match="num_layers=1"):
        from_s3prl(TooFew())(torch.zeros(1, 400), torch.tensor([400]))
    with pytest.raises(TypeError, match="callable"):
        from_s3prl(object())


def test_from_s3prl_names_sizes_that_stop_being_lists():
    """A wrapped object whose hidden_sizes or downsample_rates read None after wrapping is
    named (TypeError), not taken for an upstream without them (AttributeError)."""
    class Plain:
        num_layer = 1

        def __init__(self):
            self.hidden_sizes, self.downsample_rates = [4], [320]

        def __call__(self, wavs, wavs_len):
            return [torch.zeros(wavs.shape[0], 1, 4)], [torch.ones(wavs.shape[0])]

    inner = Plain()
    up = from_s3prl(inner)
    for attr in ("hidden_sizes", "downsample_rates"):
        setattr(inner, attr, None)
        with pytest.raises(TypeError, match=f"Plain.{attr} must be a list of ints"):
            getattr(up, attr)
    assert getattr(up, "receptive_fields", None) is None


# --------------------------------------------------------------------------- contract


def _contract_upstreams(base_upstreams):
    ups = dict(base_upstreams)
    ups["spectral"] = spectral_upstream()
    ups["from_s3prl"] = from_s3prl(FakeS3PRLUpstream())
    return ups


@pytest.mark.parametrize("name", BASE_MODELS + ("spectral", "from_s3prl"))
def test_check_upstream(base_upstreams, name):
    from s3viz import contract

    up = _contract_upstreams(base_upstreams)[name]
    # short probe waveforms (default is up to 1.5 s): different lengths, so padded
    # batches (WavLM included)
    report = contract.check_upstream(up, wav_lengths=(6400, 9000, 4003))
    assert report.ok, report
    for check in ("batch_invariance", "determinism", "finite", "hidden_shape", "layer_count"):
        rows = report[report["check"] == check]
        assert len(rows) and (rows["status"] == "ok").all(), (check, report)
    if name in BASE_MODELS:  # floor((L - 400) / 320) + 1: 1 or 2 frames under ceil(L / 320)
        lengths = report[report["check"] == "lengths_rate"]
        assert lengths["value"].between(-2, 0).all(), report
    else:
        assert report.failures.empty and report.warnings.empty, report


# --------------------------------------------------------------------------- get_upstream


def _n_params(up) -> int:
    return sum(p.numel() for p in up.parameters())


def _same_architecture(a, b):
    assert type(a) is type(b)
    assert a.num_layer == b.num_layer and a.hidden_sizes == b.hidden_sizes
    assert a.downsample_rates == b.downsample_rates
    assert _n_params(a) == _n_params(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def test_random_tiny_is_the_control_of_the_shipped_model():
    pre = get_upstream("tiny")
    a = get_upstream("tiny", pretrained=False)
    b = get_upstream("tiny", pretrained=False)
    other = get_upstream("tiny", pretrained=False, seed=1)
    _same_architecture(a, pre)
    assert a.name == pre.name == "tiny"
    assert a.weights == "random weights (seed 0)" and a.weights.startswith(RANDOM_WEIGHTS)
    assert is_random_weights(a.weights) and not is_random_weights(pre.weights)
    assert pre.weights.startswith("pretrained: ") and weights_of(pre) == pre.weights
    sa, sb, so, sp = (m.state_dict() for m in (a, b, other, pre))
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "same seed, same weights"
    assert any(not torch.equal(sa[k], so[k]) for k in sa), "another seed, other weights"
    assert any(not torch.equal(sa[k], sp[k]) for k in sa), "random is not the trained model"
    wavs, batch, wavs_len = _wavs((6400, 4000))
    with torch.inference_mode():
        ha, _ = a(batch, wavs_len)
        hb, _ = b(batch, wavs_len)
        hp, _ = pre(batch, wavs_len)
    assert all(torch.equal(x, y) for x, y in zip(ha, hb, strict=True))
    assert float((ha[-1] - hp[-1]).abs().max()) > 1e-2


def test_every_alias_names_a_pretrained_model():
    assert set(ALIASES.values()) <= set(PRETRAINED_MODELS)
    assert not set(ALIASES) & set(PRETRAINED_MODELS), "an alias never shadows a name"
    assert set(TORCHAUDIO_MODELS) == {k for k, v in PRETRAINED_MODELS.items()
                                      if v.source == "torchaudio"}


_TORCHAUDIO_ALIASES = sorted(a for a, k in ALIASES.items() if k in TORCHAUDIO_MODELS)
_HF_ALIASES = sorted(a for a, k in ALIASES.items() if PRETRAINED_MODELS[k].source == "hf")


@pytest.mark.parametrize("alias", _TORCHAUDIO_ALIASES)
def test_torchaudio_alias_is_its_target(alias):
    """Built on the meta device (no memory, no time: hubert_xlarge has 1B parameters)."""
    target = ALIASES[alias]
    with torch.device("meta"):
        a = get_upstream(alias, pretrained=False)
        b = get_upstream(target, pretrained=False)
    assert next(a.parameters()).is_meta
    _same_architecture(a, b)
    assert a.name == b.name == target and a.normalize_waveform == b.normalize_waveform
    assert is_random_weights(a.weights)
    assert bundle_checkpoint(alias) == bundle_checkpoint(target)


@pytest.mark.parametrize("alias", ["hubert", "wavlm"])
def test_alias_random_weights_equal_the_targets(alias):
    """Built for real: the random weights are those of the target name and seed."""
    a = get_upstream(alias, pretrained=False)
    b = torchaudio_upstream(ALIASES[alias], pretrained=False)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("alias", _HF_ALIASES)
def test_hugging_face_alias_is_its_targets_repository(alias, tmp_path, monkeypatch):
    """The architecture of a Hugging Face name is its repository's config, which is not
    here offline: the refusal names the target's repository."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = PRETRAINED_MODELS[ALIASES[alias]].ref
    for name in (alias, ALIASES[alias]):
        with pytest.raises(FileNotFoundError, match=f"'{repo}'"):
            get_upstream(name, pretrained=False)


def _no_network(monkeypatch):
    """Any connection attempt fails the test (s3viz must not even try, offline)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_torchaudio_name_fails_at_once(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = os.path.join(str(tmp_path), "hub", "checkpoints")
    for name in ("hubert_base", "hubert"):
        with pytest.raises(FileNotFoundError) as info:
            get_upstream(name)
        message = str(info.value)
        assert "hubert_base" in message and "HUBERT_BASE" in message
        assert "S3VIZ_OFFLINE" in message and folder in message
    assert not os.listdir(tmp_path), "nothing is written"


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_the_hugging_face_offline_variables_also_stop_downloads(var, tmp_path, monkeypatch):
    _no_network(monkeypatch)
    for other in ("S3VIZ_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(other, raising=False)  # test_s3prl.py sets HF_HUB_OFFLINE
    monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=var):
        get_upstream("wavlm_base_plus")


def test_offline_hugging_face_name_fails_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants

    _no_network(monkeypatch)
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for name in ("distilhubert", "distilhubert_base"):
        with pytest.raises(FileNotFoundError) as info:
            get_upstream(name)
        message = str(info.value)
        assert "'ntu-spml/distilhubert'" in message and str(cache) in message
        assert "S3VIZ_OFFLINE" in message and "hf download ntu-spml/distilhubert" in message
    assert not cache.exists() or not any(cache.rglob("*")), "nothing is written"


def test_refusals_of_get_upstream(tmp_path):
    with pytest.raises(ValueError, match="'spectral' has no learned weights"):
        get_upstream("spectral", pretrained=False)
    assert get_upstream("spectral").weights.startswith("not learned")
    with pytest.raises(ValueError, match="carries its own weights"):
        get_upstream(TorchaudioUpstream(_tiny_model("wav2vec2", "group_norm", False)),
                     pretrained=False)
    weights = tmp_path / "model.pth"  # a state dict: nothing in it says its architecture
    torch.save({"encoder.weight": torch.zeros(2)}, weights)
    with pytest.raises(ValueError, match=r"get_upstream\('hubert_base', checkpoint=PATH\)"):
        get_upstream(str(weights))
    with pytest.raises(TypeError, match="revision= applies to 'hf:"):
        get_upstream("hubert_base", revision="main")
    with pytest.raises(TypeError, match="revision= applies to 'hf:"):
        get_upstream("tiny", revision="main")
    with pytest.raises(TypeError, match="pretrained must be True or False"):
        get_upstream("tiny", pretrained="no")
    with pytest.raises(TypeError, match="checkpoint= applies to torchaudio models"):
        get_upstream("distilhubert", checkpoint=str(weights))
    with pytest.raises(ValueError, match="unknown upstream 'hubert_tiny'"):
        get_upstream("hubert_tiny")


@pytest.mark.parametrize("name", ["hubert_base", "tiny"])
def test_checkpoint_with_random_weights_is_refused(name, tmp_path):
    from s3viz.zoo import tiny
    from s3viz.zoo.tiny import save_tiny_weights

    path = tmp_path / "w.pt"  # a file that loads, for tiny (hubert_base refuses unread)
    save_tiny_weights(tiny(pretrained=False), path)
    with pytest.raises(ValueError, match="pretrained=False"):
        get_upstream(name, pretrained=False, checkpoint=str(path))
