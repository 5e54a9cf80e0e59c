"""Real s3prl objects (the espnet-s3prl package, import name ``s3prl``) through s3viz, offline.

s3viz never imports s3prl; these tests build s3prl's own ``S3PRLUpstream`` over small
random Hugging Face models saved to a folder, and s3prl's ``Featurizer``, poolings and
linear models, and pass them through s3viz's checks and analyses.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
T = pytest.importorskip("transformers")
s3prl_nn = pytest.importorskip("s3prl.nn")

import s3viz  # noqa: E402
from s3viz.upstreams import get_upstream  # noqa: E402

LENGTHS = (6400, 9000, 4003)


def _save_hubert(folder, norm: str):
    config = T.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, feat_extract_norm=norm,
                            do_stable_layer_norm=norm == "layer")
    torch.manual_seed(0)
    T.HubertModel(config).save_pretrained(folder)
    T.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3prl-hf")
    return {norm: _save_hubert(root / norm, norm) for norm in ("layer", "group")}


@pytest.fixture(scope="module")
def s3prl_upstreams(folders):
    return {norm: s3prl_nn.S3PRLUpstream("hf_hubert_custom", path_or_url=str(folder)).eval()
            for norm, folder in folders.items()}


def test_s3prl_upstream_is_wrapped_and_checked(s3prl_upstreams):
    up = get_upstream(s3prl_upstreams["layer"])
    assert up.num_layer == 3 and up.hidden_sizes == [32] * 3
    report = s3viz.check_upstream(up, wav_lengths=LENGTHS)
    fails = report.failures
    # s3prl reports (L - 1) // 320 + 1 frames where the model makes (L - 400) // 320 + 1:
    # only the last frame of the shorter utterances differs, and the report says so
    assert set(fails["check"]) == {"batch_invariance"}, fails
    for detail in fails["detail"]:
        assert "only the last 1 frame(s) of shorter utterances differ" in detail
        assert "(L - 400) // 320 + 1" in detail


def test_group_norm_model_behind_s3prl_changes_every_frame(s3prl_upstreams):
    report = s3viz.check_upstream(get_upstream(s3prl_upstreams["group"]), wav_lengths=LENGTHS)
    rows = report[report["check"] == "batch_invariance"]
    assert (rows["status"] == "fail").all()
    for detail in rows["detail"]:
        assert "every frame of the padded utterances changes" in detail
        assert "group norm" in detail


def test_s3prl_hidden_states_equal_the_transformers_adapter(s3prl_upstreams, folders):
    """The same checkpoint through s3prl's hf_hubert_custom and through get_upstream(folder):
    equal on the frames the convolutions make (s3prl adds one repeated frame at the end)."""
    ours = get_upstream(str(folders["layer"]))  # a folder loads its own weights
    # the saved feature extractor has do_normalize=True (its default): s3prl's expert
    # normalises each waveform through it, and get_upstream read the same setting
    assert ours.normalize
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(1, 9000, generator=g) * 0.1
    lens = torch.tensor([9000])
    with torch.no_grad():
        theirs, theirs_len = s3prl_upstreams["layer"](wav, lens)
        mine, mine_len = ours(wav, lens)
    assert int(theirs_len[0][0]) == (9000 - 1) // 320 + 1
    assert int(mine_len[0][0]) == (9000 - 400) // 320 + 1
    k = int(mine_len[0][0])
    for a, b in zip(theirs, mine):
        torch.testing.assert_close(a[0, :k], b[0, :k], atol=1e-5, rtol=1e-5)


def test_extract_and_probe_an_s3prl_upstream(s3prl_upstreams):
    from s3viz.data import synthetic_corpus

    store = s3viz.extract(get_upstream(s3prl_upstreams["layer"]), synthetic_corpus(8),
                          batch_size=1, progress=False)
    probes = s3viz.probe_layers(store, "phone", folds=2, split_by="utterance")
    assert len(probes) == 3 and probes["accuracy"].between(0, 1).all()


def test_s3prl_featurizer_equals_weighted_sum_featurizer(s3prl_upstreams):
    s3prl_up = s3prl_upstreams["layer"]
    theirs = s3prl_nn.Featurizer(s3prl_up)
    ours = s3viz.WeightedSumFeaturizer(get_upstream(s3prl_up))
    with torch.no_grad():
        theirs.weights.copy_(torch.tensor([0.3, -1.2, 2.0]))
        ours.weights.copy_(theirs.weights)
        g = torch.Generator().manual_seed(2)
        wavs = torch.randn(3, max(LENGTHS), generator=g) * 0.1
        all_hs, all_len = s3prl_up(wavs, torch.tensor(LENGTHS))
        h1, l1 = theirs(all_hs, all_len)
        h2, l2 = ours(all_hs, all_len)
    assert torch.equal(l1, l2) and h1.shape == h2.shape
    for b, n in enumerate(l1.tolist()):  # equal on valid frames; s3viz zeroes the padding
        torch.testing.assert_close(h1[b, :n], h2[b, :n])
        assert not h2[b, n:].any()


@pytest.mark.parametrize("name", ["MeanPooling", "TemporalStatisticsPooling",
                                  "SelfAttentivePooling", "AttentiveStatisticsPooling"])
def test_s3prl_poolings_pass_check_utterance_model(name):
    torch.manual_seed(0)
    pooling = getattr(s3prl_nn.pooling, name)(16).eval()
    # s3prl's two attentive poolings build `attention` from torch.FloatTensor(n, 1), memory
    # that is never initialised (it held NaN/Inf on some runs, a flaky failure here); a
    # trained checkpoint fills it, so do what loading one would.
    if hasattr(pooling, "attention"):
        with torch.no_grad():
            pooling.attention.normal_(0.0, 0.1)
    report = s3viz.check_utterance_model(pooling)
    assert report.ok, report
    rows = report[report["check"] == "padding_invariance"]
    assert len(rows) and (rows["status"] == "ok").all(), rows


def test_check_utterance_model_refuses_an_uninitialised_s3prl_attention():
    """The same pooling with non-finite attention weights (what uninitialised memory can
    hold) fails the `finite` row rather than passing quietly."""
    pooling = s3prl_nn.pooling.SelfAttentivePooling(16).eval()
    with torch.no_grad():
        pooling.attention.fill_(float("nan"))
    report = s3viz.check_utterance_model(pooling)
    assert not report.ok
    finite = report[report["check"] == "finite"]
    assert len(finite) and (finite["status"] != "ok").all(), report


def test_s3prl_linear_models_pass_the_frame_and_utterance_checks():
    torch.manual_seed(0)
    frame = s3prl_nn.FrameLevelLinear(16, 5, hidden_size=8).eval()
    utt = s3prl_nn.MeanPoolingLinear(16, 5, hidden_size=8).eval()
    frame_report = s3viz.check_frame_model(frame)
    assert frame_report.ok, frame_report
    utt_report = s3viz.check_utterance_model(utt)
    assert utt_report.ok, utt_report
