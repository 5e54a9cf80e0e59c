"""Hugging Face transformers models as upstreams: each family, Whisper's encoder, loading."""

from __future__ import annotations

import pytest
import torch

# offline: conftest.py sets S3VIZ_OFFLINE (nothing here may reach the hub)
T = pytest.importorskip("transformers")

import s3viz  # noqa: E402
from _hf_case import tiny_whisper  # noqa: E402
from s3viz.upstreams import (  # noqa: E402
    TransformersUpstream,
    WhisperEncoderUpstream,
    get_upstream,
    is_random_weights,
)

LENGTHS = (6400, 9000, 4003)
_COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
_WAVLM = dict(num_buckets=32, max_bucket_distance=100)
FAMILIES = {
    # name: (config, model class, config overrides, attention mask used?)
    "wav2vec2-base": ("Wav2Vec2Config", "Wav2Vec2Model", dict(feat_extract_norm="group"), False),
    "wav2vec2-large": ("Wav2Vec2Config", "Wav2Vec2Model",
                       dict(feat_extract_norm="layer", do_stable_layer_norm=True), True),
    "hubert-base": ("HubertConfig", "HubertModel", dict(feat_extract_norm="group"), False),
    "hubert-large": ("HubertConfig", "HubertModel",
                     dict(feat_extract_norm="layer", do_stable_layer_norm=True), True),
    "wavlm-base": ("WavLMConfig", "WavLMModel", dict(feat_extract_norm="group", **_WAVLM), False),
    "wavlm-large": ("WavLMConfig", "WavLMModel",
                    dict(feat_extract_norm="layer", do_stable_layer_norm=True, **_WAVLM), True),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel",
                       dict(num_conv_pos_embeddings=5, conv_pos_kernel_size=5), False),
    "conformer": ("Wav2Vec2ConformerConfig", "Wav2Vec2ConformerModel",
                  dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                       position_embeddings_type="relative", conv_depthwise_kernel_size=7), False),
}


def _model(family, seed=0):
    cfg_name, cls_name, extra, _ = FAMILIES[family]
    config = getattr(T, cfg_name)(**{**_COMMON, **extra})
    torch.manual_seed(seed)
    return getattr(T, cls_name)(config).eval()


def _wavs(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(len(lengths), max(lengths), generator=g) * 0.1
    lens = torch.tensor(lengths)
    return wavs * (torch.arange(wavs.shape[1])[None] < lens[:, None]), lens


@pytest.fixture(scope="module")
def models():
    return {f: _model(f) for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_passes_check_upstream(models, family):
    up = get_upstream(models[family])
    assert isinstance(up, TransformersUpstream)
    assert up.uses_attention_mask is FAMILIES[family][3]
    report = s3viz.check_upstream(up, wav_lengths=LENGTHS)
    assert report.ok, report
    rows = report[report["check"] == "batch_invariance"]
    assert len(rows) == up.num_layer and (rows["status"] == "ok").all(), rows


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hidden_states_equal_hf_alone_and_padded(models, family):
    model = models[family]
    up = get_upstream(model)
    wavs, lens = _wavs()
    with torch.no_grad():
        all_hs, all_len = up(wavs, lens)
        frames = model._get_feat_extract_output_lengths(lens)
        for b, n in enumerate(lens.tolist()):
            ref = model(wavs[b: b + 1, :n], output_hidden_states=True).hidden_states
            assert len(all_hs) == len(ref) == model.config.num_hidden_layers + 1
            for layer, h in enumerate(all_hs):
                k = int(frames[b])
                assert int(all_len[layer][b]) == k == ref[layer].shape[1]
                torch.testing.assert_close(h[b, :k], ref[layer][0], atol=5e-6, rtol=1e-5)
                assert not h[b, k:].any(), "padded frames are zero"


@pytest.mark.parametrize("family", ["wav2vec2-base", "data2vec-audio", "conformer"])
def test_why_these_families_run_unpadded(models, family):
    """HF's own padded batch (attention mask on) changes these models' valid frames, which is
    why the adapter runs them per length; the adapter does not."""
    model = models[family]
    wavs, lens = _wavs()
    mask = torch.arange(wavs.shape[1])[None] < lens[:, None]
    with torch.no_grad():
        padded = model(wavs, attention_mask=mask.long(), output_hidden_states=True)
        alone = model(wavs[2:3, : int(lens[2])], output_hidden_states=True)
    k = alone.hidden_states[-1].shape[1]
    assert (padded.hidden_states[-1][2, :k] - alone.hidden_states[-1][0]).abs().max() > 1e-3


def test_adapter_does_not_change_the_hidden_state_lengths():
    config = T.Wav2Vec2Config(**{**_COMMON, "add_adapter": True, "adapter_stride": 2,
                                 "num_adapter_layers": 1, "output_hidden_size": 32})
    torch.manual_seed(0)
    model = T.Wav2Vec2Model(config).eval()
    wavs, lens = _wavs((6400,))
    with torch.no_grad():
        hs, hl = get_upstream(model)(wavs, lens)
        ref = model(wavs, output_hidden_states=True)
    assert int(hl[0][0]) == ref.hidden_states[0].shape[1] == (6400 - 400) // 320 + 1
    assert ref.last_hidden_state.shape[1] < ref.hidden_states[0].shape[1]  # the adapter's


def test_stable_layer_norm_last_entry_is_before_the_final_norm(models):
    model = models["wav2vec2-large"]
    wavs, lens = _wavs((6400,))
    with torch.no_grad():
        out = model(wavs, output_hidden_states=True)
        hs, _ = get_upstream(model)(wavs, lens)
    torch.testing.assert_close(hs[-1][0], out.hidden_states[-1][0])
    torch.testing.assert_close(model.encoder.layer_norm(hs[-1][0]), out.last_hidden_state[0])
    assert (hs[-1][0] - out.last_hidden_state[0]).abs().max() > 1e-3


def test_heads_use_their_base_model_and_layers_select(models):
    config = models["hubert-base"].config
    torch.manual_seed(0)
    ctc = T.HubertForCTC(T.HubertConfig(**{**config.to_dict(), "vocab_size": 8})).eval()
    up = get_upstream(ctc)
    assert up.model is ctc.hubert
    cls = T.Wav2Vec2ForSequenceClassification(models["wav2vec2-base"].config).eval()
    assert get_upstream(cls).model is cls.wav2vec2
    sub = get_upstream(models["hubert-base"], upstream_layers=[0, -1])
    assert sub.num_layer == 2 and sub.layer_ids == [0, 2]
    with pytest.raises(ValueError, match="out of range"):
        get_upstream(models["hubert-base"], upstream_layers=[5])


def test_extract_and_probe_a_transformers_model(models):
    from s3viz.data import synthetic_corpus

    store = s3viz.extract(get_upstream(models["hubert-base"]), synthetic_corpus(8),
                          progress=False)
    assert store.num_layer == 3
    probes = s3viz.probe_layers(store, "phone", folds=2, split_by="utterance")
    assert len(probes) == 3 and probes["accuracy"].between(0, 1).all()


def test_normalize_matches_the_feature_extractor(models):
    model = models["wav2vec2-large"]
    fe = T.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    wavs, lens = _wavs((6400,))
    inputs = fe([wavs[0].numpy()], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ref = model(inputs.input_values, output_hidden_states=True).hidden_states
        hs, _ = TransformersUpstream(model, normalize_waveform=True)(wavs, lens)
    torch.testing.assert_close(hs[1][0], ref[1][0], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "hubert-small"
    models["hubert-base"].save_pretrained(folder)
    T.Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_saved_folder_round_trip(models, saved):
    """A folder loads its own weights (the default); pretrained=False gives seeded random
    weights of its architecture."""
    wavs, lens = _wavs()
    model = models["hubert-base"]
    with torch.no_grad():
        want, _ = get_upstream(model)(wavs, lens)
        for spec in (str(saved), saved, f"hf:{saved}"):
            up = get_upstream(spec)
            assert up.weights == f"pretrained: folder {saved}"
            state = up.model.state_dict()
            assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
            assert up.normalize, "do_normalize is read from the saved feature extractor"
            up.normalize = False
            got, _ = up(wavs, lens)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b)
        random_up = get_upstream(str(saved), pretrained=False)
        assert random_up.weights.startswith("random weights (seed 0")
        assert str(saved) in random_up.weights and is_random_weights(random_up.weights)
        random_a = random_up(wavs, lens)[0]
        random_b = get_upstream(str(saved), pretrained=False)(wavs, lens)[0]
        random_c = get_upstream(str(saved), pretrained=False, seed=1)(wavs, lens)[0]
    torch.testing.assert_close(random_a[-1], random_b[-1])  # seeded random weights
    assert (random_a[-1] - random_c[-1]).abs().max() > 1e-3, "another seed, other weights"
    assert (random_a[-1] - want[-1]).abs().max() > 1e-3, "pretrained=False is random weights"


def test_folder_without_feature_extractor_warns_that_it_does_not_normalise(models, tmp_path):
    models["hubert-base"].save_pretrained(tmp_path / "bare")
    with pytest.warns(UserWarning, match="NOT normalised. Pass normalize_waveform=True"):
        up = get_upstream(tmp_path / "bare")
    assert up.normalize is False
    assert get_upstream(tmp_path / "bare", normalize_waveform=True).normalize


def test_folder_names_and_home_paths(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a folder called "tiny" does not shadow the shipped model
    assert type(get_upstream("tiny")).__name__ == "TinyUpstream"
    monkeypatch.setenv("HOME", str(saved.parent))
    assert get_upstream(f"~/{saved.name}").num_layer == 3


def test_bfloat16_checkpoint_takes_float32_waveforms(models):
    model = _model("hubert-large").to(torch.bfloat16)
    wavs, lens = _wavs((6400,))
    with torch.no_grad():
        hs, _ = get_upstream(model)(wavs, lens)
    assert hs[0].dtype == torch.bfloat16 and torch.isfinite(hs[-1].float()).all()


@pytest.mark.parametrize("var", ["S3VIZ_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("pretrained", [True, False])
def test_offline_name_fails_fast_and_says_what_to_do(tmp_path, monkeypatch, var, pretrained):
    """Offline and not cached: refused before any connection, naming the cache, the
    variable and the command that fetches it (pretrained=False too: the architecture is
    the repository's config)."""
    import socket

    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for other in ("S3VIZ_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(other, raising=False)  # test_s3prl.py sets HF_HUB_OFFLINE
    monkeypatch.setenv(var, "1")
    cache = str(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache)
    with pytest.raises(FileNotFoundError) as info:
        get_upstream("hf:facebook/hubert-base-ls960", pretrained=pretrained, revision="v1")
    msg = str(info.value)
    assert "'facebook/hubert-base-ls960' (revision 'v1') is not in huggingface_hub's cache" in msg
    assert cache in msg and f"{var} is set, so nothing is downloaded" in msg
    assert "hf download facebook/hubert-base-ls960 --revision v1" in msg


def test_transformers_is_imported_only_when_needed():
    import subprocess
    import sys

    code = ("import sys, s3viz; s3viz.upstreams.get_upstream('tiny'); "
            "import s3viz.upstreams._transformers; assert 'transformers' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="'hf:' needs a repository id"):
        get_upstream("hf:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder without config.json"):
        get_upstream(str(tmp_path / "empty"))
    bert = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64))
    with pytest.raises(TypeError, match="not one of the supported families"):
        get_upstream(bert)


# --------------------------------------------------------------------------- Whisper


@pytest.fixture(scope="module")
def whisper():
    return tiny_whisper()


def test_whisper_encoder_upstream(whisper):
    up = get_upstream(whisper)
    assert isinstance(up, WhisperEncoderUpstream)
    assert up.window_samples == 5 * 16000 and up.num_layer == 3
    report = s3viz.check_upstream(up, wav_lengths=LENGTHS)
    assert report.ok, report
    wavs, lens = _wavs()
    with torch.no_grad():
        hs, hl = up(wavs, lens)
        fe = up.feature_extractor
        for b, n in enumerate(lens.tolist()):
            feats = fe([wavs[b, :n].numpy()], sampling_rate=16000, return_tensors="pt",
                       padding="max_length").input_features
            ref = whisper.encoder(feats, output_hidden_states=True)
            k = int(hl[0][b])
            assert k == -(-n // 320)  # ceil(L / 320): only frames of real audio
            for layer in range(3):
                torch.testing.assert_close(hs[layer][b, :k], ref.hidden_states[layer][0, :k],
                                           atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hs[-1][b, :k], ref.last_hidden_state[0, :k])


def test_whisper_refuses_audio_past_its_window(whisper):
    up = get_upstream(whisper)
    wavs, lens = _wavs((6 * 16000,))
    with pytest.raises(ValueError, match="longer than Whisper's 5 s window"):
        up(wavs, lens)
