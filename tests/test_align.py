"""Length conventions, length sweeps, frame timelines, their plots and the alignment explorer."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import s3viz  # noqa: E402
from s3viz.align import (  # noqa: E402
    CONVENTIONS,
    WAV2VEC2_CONV_LAYERS,
    conv_lengths,
    expected_lengths,
    frame_labels,
    frame_timeline,
    length_report,
    receptive_field,
    summarize_lengths,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hubert():
    """torchaudio's HuBERT Base architecture (random weights) as an s3prl upstream."""
    from s3viz.upstreams import torchaudio_upstream

    return torchaudio_upstream("hubert_base", pretrained=False)


@pytest.fixture(scope="module")
def hubert_report(hubert):
    # edge lengths of the conv stack (400 + 320 k and one either side) and of ceil (320 k, +1)
    lengths = [400, 401, 479, 480, 481, 639, 640, 641, 719, 720, 1040, 1119, 1120, 1600, 1601]
    return length_report(hubert, lengths, batch_size=8)


@pytest.fixture(scope="module")
def spectral():
    from s3viz.upstreams import spectral_upstream

    return spectral_upstream()


class _Rule(torch.nn.Module):
    """A fake upstream whose frame counts follow a given rule per layer."""

    def __init__(self, rules, rates, conv_layers=None):
        super().__init__()
        self.rules, self._rates, self.conv_layers = rules, rates, conv_layers
        self.lin = torch.nn.Linear(1, 2)  # a parameter, so the device can be read
        self.calls = []

    num_layer = property(lambda self: len(self._rates))
    downsample_rates = property(lambda self: list(self._rates))

    def forward(self, wavs, wavs_len):
        self.calls.append((self.training, torch.is_inference_mode_enabled(), wavs.shape[0]))
        lens = [rule(wavs_len.cpu()).long() for rule in self.rules]
        hs = [torch.zeros(wavs.shape[0], int(n.max()), 2) for n in lens]
        return hs, lens


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize(
    "convention, rate, cases",
    [
        # (L - 1) // r + 1: one frame as soon as a sample starts it
        ("ceil", 320, {0: 0, 1: 1, 319: 1, 320: 1, 321: 2, 640: 2, 641: 3}),
        ("ceil", 160, {160: 1, 161: 2, 16000: 100, 16001: 101}),
        # Python round on the quotient: halves to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4)
        ("round", 320, {159: 0, 160: 0, 161: 1, 479: 1, 480: 2, 481: 2, 800: 2, 1120: 4,
                        16000: 50}),
        ("floor", 320, {0: 0, 319: 0, 320: 1, 639: 1, 640: 2}),
        # wav2vec2 CNN: (L - 400) // 320 + 1 frames, none below 400 samples
        ("conv", 320, {0: 0, 399: 0, 400: 1, 719: 1, 720: 2, 16000: 49, 16080: 50}),
    ],
)
def test_conventions_hand_computed(convention, rate, cases):
    got = expected_lengths(list(cases), rate, convention)
    assert got.dtype == torch.long
    assert got.tolist() == list(cases.values())


def test_round_and_ceil_match_s3prl_formulas_exactly():
    lengths = list(range(0, 20001))
    for rate in (160, 320, 640, 3):
        # s3prl legacy Featurizer.tolist: round(len(wav) / self.downsample_rate)
        rounded = expected_lengths(lengths, rate, "round").tolist()
        assert rounded == [round(n / rate) for n in lengths]
        # S3PRLUpstream: h_len = (wavs_len - 1) // stride + 1, padded to len(range(0, L, stride))
        ceil = expected_lengths(lengths, rate, "ceil").tolist()
        assert ceil == [len(range(0, n, rate)) for n in lengths]
        assert ceil[1:] == [(n - 1) // rate + 1 for n in lengths[1:]]
        assert expected_lengths(lengths, rate, "floor").tolist() == [n // rate for n in lengths]


def test_conv_stack_equals_single_equivalent_conv():
    lengths = torch.arange(0, 50000)
    assert receptive_field(WAV2VEC2_CONV_LAYERS) == (400, 320)
    single = torch.where(lengths >= 400, (lengths - 400) // 320 + 1, 0)
    assert torch.equal(conv_lengths(lengths), single)
    # a layer-by-layer loop written out by hand
    n = np.arange(0, 3000)
    for k, s in WAV2VEC2_CONV_LAYERS:
        n = np.where(n >= k, (n - k) // s + 1, 0)
    assert conv_lengths(np.arange(0, 3000)).tolist() == n.tolist()


def test_expected_lengths_inputs():
    as_list = expected_lengths([400, 800], 320, "round")
    assert torch.equal(as_list, expected_lengths(np.array([400, 800]), 320, "round"))
    assert torch.equal(as_list, expected_lengths(torch.tensor([400.0, 800.0]), 320, "round"))
    assert expected_lengths(7, 2, "ceil").item() == 4


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"wavs_len": [400], "rate": 320, "convention": "nearest"}, ValueError, "convention"),
        ({"wavs_len": [-1], "rate": 320}, ValueError, "non-negative"),
        ({"wavs_len": [1.5], "rate": 320}, TypeError, "integer"),
        ({"wavs_len": [400], "rate": 0}, ValueError, "rate"),
        ({"wavs_len": [400], "rate": 320.0}, ValueError, "rate"),
        ({"wavs_len": [400], "rate": 160, "convention": "conv"}, ValueError, "stride"),
        ({"wavs_len": [400], "rate": 320, "convention": "conv", "conv_layers": [(3,)]},
         ValueError, "kernel_size"),
    ],
)
def test_expected_lengths_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        expected_lengths(**kwargs)


# --------------------------------------------------------------------------- real models


def test_torchaudio_cnn_lengths_match_conv_over_a_sweep(hubert):
    """torchaudio's own feature-extractor lengths are the conv arithmetic, length by length."""
    import torchaudio

    model = hubert.model
    assert isinstance(model, torchaudio.models.Wav2Vec2Model)
    lengths = torch.arange(380, 1400, 23)
    wavs = torch.zeros(len(lengths), int(lengths.max()))
    with torch.inference_mode():
        _, got = model.feature_extractor(wavs, lengths)
    assert torch.equal(got, expected_lengths(lengths, 320, "conv"))
    assert torch.equal(got, conv_lengths(lengths, WAV2VEC2_CONV_LAYERS))


@pytest.mark.parametrize("wav_len", [400, 641, 720, 1601])
def test_unpadded_hubert_output_frames(hubert, wav_len):
    """The truth without any length bookkeeping: the frames an unpadded input gives."""
    wavs = torch.randn(1, wav_len, 1, generator=torch.Generator().manual_seed(wav_len))
    with torch.inference_mode():
        all_hs, all_hs_len = hubert(wavs, torch.tensor([wav_len]))
    expected = expected_lengths([wav_len], 320, "conv").item()
    assert {h.shape[1] for h in all_hs} == {expected}
    assert {int(n) for n in all_hs_len} == {expected}


def test_hubert_report_follows_conv(hubert, hubert_report):
    r = hubert_report
    assert set(r["layer"]) == set(range(hubert.num_layer))
    assert {"layer", "wav_len", "rate", "frames", "diff_ceil", "diff_round", "diff_floor",
            "diff_conv", "expected_conv"} <= set(r.columns)
    assert (r["diff_conv"] == 0).all()
    assert (r["frames"] == r["expected_conv"]).all()
    one = r[r["layer"] == 5].set_index("wav_len")
    # hand-computed: conv (L-400)//320+1 vs ceil (L-1)//320+1 vs round vs floor
    cols = ["frames", "diff_ceil", "diff_round", "diff_floor"]
    assert one.loc[400, cols].tolist() == [1, -1, 0, 0]
    assert one.loc[641, cols].tolist() == [1, -2, -1, -1]
    assert one.loc[720, cols].tolist() == [2, -1, 0, 0]
    assert set(r["diff_ceil"]) == {-1, -2}
    summary = summarize_lengths(r)
    assert (summary["follows"] == "conv").all() and (summary["best"] == "conv").all()
    assert (summary["max_abs_diff_ceil"] == 2).all()
    text = r.attrs["summary"]
    assert "follow 'conv' exactly" in text and "'ceil' off by -2" in text
    assert "hubert_base" in text


def test_custom_conv_stack_follows_its_own_arithmetic():
    """A torchaudio wav2vec2 with another CNN: conv_layers read from the model decide the frames."""
    from torchaudio.models import wav2vec2_model

    from s3viz.upstreams import TorchaudioUpstream

    model = wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(8, 16, 8), (8, 5, 2)],
        extractor_conv_bias=False, encoder_embed_dim=16, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=3, encoder_pos_conv_groups=1, encoder_num_layers=1,
        encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=32,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
        encoder_layer_drop=0.0, aux_num_out=None)
    up = TorchaudioUpstream(model)
    assert receptive_field(up.conv_layers) == (16 + 4 * 8, 16)
    r = length_report(up, range(48, 400, 5))
    assert (r["diff_conv"] == 0).all()
    assert r["expected_conv"].tolist() == [((n - 16) // 8 + 1 - 5) // 2 + 1 for n in r["wav_len"]]
    assert "follow 'conv' exactly" in r.attrs["summary"]


def test_spectral_upstream_follows_ceil_at_mixed_rates(spectral):
    r = length_report(spectral, range(1, 1500, 7))
    assert "diff_conv" not in r.columns
    assert (r["diff_ceil"] == 0).all()
    s = summarize_lengths(r)
    assert sorted(set(s["rate"])) == [160, 320, 640]
    assert (s["follows"] == "ceil").all()
    assert "(rate 640): follow 'ceil' exactly" in r.attrs["summary"]


# --------------------------------------------------------------------------- length_report


def test_report_on_rounding_and_mismatching_upstreams():
    up = _Rule([lambda n: torch.round(n.double() / 320), lambda n: n // 320 + 2], [320, 320])
    r = length_report(up, range(100, 2000, 9))
    s = summarize_lengths(r).set_index("layer")
    assert s.loc[0, "follows"] == "round" and s.loc[0, "worst_diff"] == 0
    # layer 1 is n // 320 + 2: floor is always 2 frames short, ceil 1 or 2
    assert s.loc[1, "follows"] == "" and s.loc[1, "best"] == "ceil"
    assert s.loc[1, "worst_diff"] == 2 and s.loc[1, "match_floor"] == 0.0
    part = r[r["layer"] == 1]
    worst_len = s.loc[1, "worst_wav_len"]
    assert part.set_index("wav_len").loc[worst_len, "diff_ceil"] == 2
    assert "no convention matches exactly; closest is 'ceil'" in r.attrs["summary"]
    assert "+2 frames" in r.attrs["summary"]


def test_report_runs_batched_in_eval_inference_mode_and_restores():
    up = _Rule([lambda n: (n - 1) // 160 + 1], [160])
    up.train()
    r1 = length_report(up, [5, 1000, 17, 333, 17], batch_size=2)
    assert up.training, "training flag restored"
    assert all(not training and inference for training, inference, _ in up.calls)
    assert max(b for _, _, b in up.calls) == 2
    assert r1["wav_len"].tolist() == [5, 17, 333, 1000], "sorted, duplicates dropped"
    r2 = length_report(up, [5, 1000, 17, 333], batch_size=1)
    pd.testing.assert_frame_equal(r1, r2)
    assert next(up.parameters()).device.type == "cpu"


def test_conv_columns_are_na_for_layers_of_another_rate():
    up = _Rule([lambda n: conv_lengths(n), lambda n: (n - 1) // 640 + 1], [320, 640],
               conv_layers=WAV2VEC2_CONV_LAYERS)
    r = length_report(up, range(400, 1400, 50))
    assert r.loc[r["layer"] == 0, "diff_conv"].eq(0).all()
    assert r.loc[r["layer"] == 1, "diff_conv"].isna().all()
    s = summarize_lengths(r).set_index("layer")
    assert s.loc[0, "follows"] == "conv" and s.loc[1, "follows"] == "ceil"
    assert np.isnan(s.loc[1, "max_abs_diff_conv"])


class _NoRates(torch.nn.Module):
    num_layer = 1

    def forward(self, wavs, wavs_len):
        return [wavs], [wavs_len]


class _WrongCount(_Rule):
    def forward(self, wavs, wavs_len):
        hs, lens = super().forward(wavs, wavs_len)
        return hs, lens[:1]


@pytest.mark.parametrize(
    "make, kwargs, exc, match",
    [
        (lambda: _Rule([lambda n: n], [1]), {"wav_lengths": []}, ValueError, "empty"),
        (lambda: _Rule([lambda n: n], [1]), {"wav_lengths": [0, 5]}, ValueError, "positive"),
        (lambda: _Rule([lambda n: n], [1]), {"wav_lengths": [1.5]}, TypeError, "integer"),
        (lambda: _Rule([lambda n: n], [1]), {"wav_lengths": 5}, TypeError, "iterable"),
        (lambda: _Rule([lambda n: n], [1]), {"batch_size": 0}, ValueError, "batch_size"),
        (lambda: _NoRates(), {}, TypeError, "downsample_rates"),
        (lambda: _WrongCount([lambda n: n, lambda n: n], [1, 1]), {}, ValueError, "num_layer"),
        (lambda: object(), {}, TypeError, "callable"),
    ],
)
def test_length_report_bad_input(make, kwargs, exc, match):
    kwargs = {"wav_lengths": [10, 20], **kwargs}
    with pytest.raises(exc, match=match):
        length_report(make(), **kwargs)


def test_summarize_lengths_needs_a_report():
    with pytest.raises(ValueError, match="length_report"):
        summarize_lengths(pd.DataFrame({"layer": [0]}))


def test_public_exports():
    assert s3viz.length_report is length_report
    assert s3viz.expected_lengths is expected_lengths
    assert s3viz.frame_timeline is frame_timeline
    assert set(CONVENTIONS) == {"ceil", "round", "floor", "conv"}


# --------------------------------------------------------------------------- timelines


def _assert_tiles(df, wav_len):
    """Cells are contiguous from 0, inside the waveform; receptive fields contain their cells."""
    if len(df) == 0:
        return
    assert df["start"].iloc[0] == 0
    assert (df["start"].to_numpy()[1:] == df["end"].to_numpy()[:-1]).all(), "no gaps, no overlaps"
    assert (df["end"] > df["start"]).all() and df["end"].iloc[-1] <= wav_len
    assert (df["rf_start"] <= df["start"]).all() and (df["end"] <= df["rf_end"]).all()
    full = df.iloc[:-1]  # the last frame's window may stick out of the waveform
    assert ((full["start"] <= full["center"]) & (full["center"] <= full["end"])).all()


@pytest.mark.parametrize("wav_len", [1, 319, 320, 321, 16000, 16001])
def test_timeline_rate_only_covers_the_whole_waveform(wav_len):
    df = frame_timeline(320, wav_len)
    assert len(df) == expected_lengths([wav_len], 320, "ceil").item()
    _assert_tiles(df, wav_len)
    assert df["end"].iloc[-1] == wav_len, "every sample belongs to a frame"
    assert df["start"].tolist() == [320 * k for k in range(len(df))]
    assert df["center"].tolist() == [320 * k + 160 for k in range(len(df))]
    assert np.allclose(df["center_s"], df["center"] / 16000)


@pytest.mark.parametrize("wav_len", [400, 719, 720, 1000, 16000])
def test_timeline_of_a_conv_stack(wav_len, hubert):
    df = frame_timeline(hubert, wav_len, layer=3)
    assert len(df) == conv_lengths([wav_len]).item()
    assert df.attrs["rate"] == 320 and df.attrs["receptive_field"] == 400
    _assert_tiles(df, wav_len)
    k = np.arange(len(df))
    assert (df["rf_start"] == 320 * k).all() and (df["rf_end"] == 320 * k + 400).all()
    assert (df["center"] == 320 * k + 200).all()
    # cells: nearest centre; the boundary between frames k and k+1 is at 320 k + 360
    assert (df["end"].to_numpy()[:-1] == 320 * k[:-1] + 360).all()
    # only the tail that no receptive field reaches is left, and it is shorter than a hop
    assert 0 <= wav_len - df["rf_end"].iloc[-1] < 320
    # same from explicit arguments
    same = frame_timeline(320, wav_len, conv_layers=WAV2VEC2_CONV_LAYERS)
    pd.testing.assert_frame_equal(df, same)


def test_timeline_of_spectral_layers(spectral):
    for layer, rate in enumerate(spectral.downsample_rates):
        df = frame_timeline(spectral, 5000, layer=layer)
        assert len(df) == expected_lengths([5000], rate, "ceil").item()
        assert (df["center"] == np.arange(len(df)) * rate + rate / 2).all()
        _assert_tiles(df, 5000)


def test_timeline_num_frames_and_labels_agree():
    phones = pd.DataFrame({"phone": ["a", "b", "c"], "word": "", "start": [0, 500, 1200],
                           "end": [500, 1200, 2000]})
    df = frame_timeline(320, 2000, num_frames=6, receptive_field_samples=400)
    labels = frame_labels(phones, 6, 320, receptive_field_samples=400)
    for c, lab in zip(df["center"], labels):
        hit = phones[(phones["start"] <= c) & (c < phones["end"])]
        assert lab == (hit["phone"].iloc[0] if len(hit) else "")
    assert len(frame_timeline(320, 100, num_frames=0)) == 0


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((0, 100), {}, ValueError, "rate"),
        ((320.0, 100), {}, TypeError, "rate_or_upstream"),
        ((object(), 100), {}, TypeError, "downsample_rates"),
        ((320, 100), {"conv_layers": [(10, 5)]}, ValueError, "stride"),
        ((320, -5), {}, ValueError, "non-negative"),
        ((320, 100), {"num_frames": -1}, ValueError, "num_frames"),
        ((320, 100), {"receptive_field_samples": 0}, ValueError, "positive"),
    ],
)
def test_timeline_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        frame_timeline(*args, **kwargs)


def test_timeline_layer_out_of_range(hubert):
    with pytest.raises(IndexError, match="layer"):
        frame_timeline(hubert, 1000, layer=13)


# --------------------------------------------------------------------------- plots


def test_length_alignment_plot(hubert_report, spectral):
    from s3viz import plot

    ax = plot.length_alignment(hubert_report)
    # layers 0-12 share frames: one line per convention
    assert len(ax.get_lines()) == 4 + 1  # + the zero line
    ydata = {ln.get_label(): ln.get_ydata() for ln in ax.get_lines()}
    assert np.allclose(np.round(ydata["conv"]), 0) and np.round(ydata["ceil"]).min() == -2
    ax2 = plot.length_alignment(hubert_report, by="layer", conventions=["ceil"])
    assert len(ax2.get_lines()) == 13 + 1
    r = length_report(spectral, range(1, 700, 11))
    ax3 = plot.length_alignment(r)
    labels = [ln.get_label() for ln in ax3.get_lines()]
    assert any("(rate 640)" in lab for lab in labels) and any("(rate 160)" in lab for lab in labels)
    # the legend keys colour (convention) and line style (rate) apart: 3 + 3 entries, not 9
    keys = [t.get_text() for t in ax3.get_legend().get_texts()]
    assert keys[:3] == ["ceil", "round", "floor"] and len(keys) == 3 + 3, keys
    with pytest.raises(ValueError, match="not in the report"):
        plot.length_alignment(r, conventions=["conv"])
    with pytest.raises(ValueError, match="length_report"):
        plot.length_alignment(pd.DataFrame({"x": [1]}))
    import matplotlib.pyplot as plt

    plt.close("all")


def test_frame_grid(spectral):
    import matplotlib.pyplot as plt

    from s3viz import plot

    wav = np.sin(np.arange(8000) / 20.0).astype(np.float32)
    timelines = {name: frame_timeline(spectral, 8000, layer=i)
                 for i, name in [(0, "10 ms"), (2, "20 ms"), (4, "40 ms")]}
    phones = pd.DataFrame({"phone": ["s", "a"], "word": "", "start": [0, 4000],
                           "end": [4000, 8000]})
    ax = plot.frame_grid(wav, timelines, phones, window=(0.1, 0.3))
    assert ax.get_xlim() == (0.1, 0.3)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "waveform" and labels[-1] == "phones"
    assert [lab.split("\n")[0] for lab in labels[1:4]] == ["10 ms", "20 ms", "40 ms"]
    assert any(t.get_text() == "a" for t in ax.texts)
    # zoomed out over 60 s, the 10 ms lane would be a barcode: a band and a count instead
    long = {"10 ms": frame_timeline(spectral, 16000 * 60, layer=0)}
    _, small = plt.subplots(figsize=(6, 3))
    ax_long = plot.frame_grid(None, long, ax=small)
    assert any("frames: zoom in" in t.get_text() for t in ax_long.texts)
    assert not ax_long.collections or all(len(c.get_paths()) <= 2 for c in ax_long.collections)
    # a list of timelines, a spectrogram, no phones
    ax = plot.frame_grid(torch.from_numpy(wav), list(timelines.values()), spectrogram=True)
    assert len(ax.images) == 1 and ax.get_xlim() == (0.0, 0.5)
    # no waveform (a store): wav_len from the timelines
    ax = plot.frame_grid(None, timelines)
    assert ax.get_xlim()[1] == pytest.approx(0.5)
    with pytest.raises(TypeError, match="timelines"):
        plot.frame_grid(wav, 5)
    with pytest.raises(ValueError, match="frame_timeline"):
        plot.frame_grid(wav, {"x": pd.DataFrame({"a": [1]})})
    with pytest.raises(ValueError, match="window"):
        plot.frame_grid(wav, timelines, window=(0.3, 0.1))
    plt.close("all")


# --------------------------------------------------------------------------- widget


def _toy_corpus():
    from s3viz.data import Corpus, Utterance

    utts = []
    for i, n in enumerate([4000, 6400, 2500]):
        wav = (0.3 * np.sin(np.arange(n) * (0.02 + 0.01 * i))).astype(np.float32)
        phones = pd.DataFrame({"phone": ["h", "i"], "word": ["hi", "hi"], "start": [0, n // 2],
                               "end": [n // 2, n]})
        utts.append(Utterance(id=f"u{i}", wav=wav, phones=phones))
    return Corpus(utts, name="toy")


def test_utterance_alignment_from_corpus_uses_upstream_lengths(spectral):
    from s3viz.widgets._align import utterance_alignment

    corpus = _toy_corpus()
    view = utterance_alignment(corpus, 1, upstream=spectral, layers=[0, 4])
    assert view["id"] == "u1" and view["wav_len"] == 6400 and view["wav"] is not None
    with torch.inference_mode():
        _, lens = spectral(torch.from_numpy(corpus[1].wav).view(1, -1, 1), torch.tensor([6400]))
    assert view["num_frames"] == {0: int(lens[0]), 4: int(lens[4])}
    assert list(view["timelines"]) == ["layer 0", "layer 4"]
    assert len(view["timelines"]["layer 4"]) == int(lens[4])
    with pytest.raises(ValueError, match="upstream"):
        utterance_alignment(corpus, 0)
    with pytest.raises(IndexError, match="index"):
        utterance_alignment(corpus, 3, upstream=spectral)
    with pytest.raises(IndexError, match="layers"):
        utterance_alignment(corpus, 0, upstream=spectral, layers=[6])


def _toy_store():
    from s3viz.store import LayerStore

    lengths = [(12, 6), (30, 15)]
    hs = [[torch.randn(a, 3), torch.randn(b, 2)] for a, b in lengths]
    phones = [pd.DataFrame({"phone": ["x"], "word": [""], "start": [0], "end": [3000]}), None]
    labels = pd.DataFrame({"id": ["a", "b"], "num_samples": [3840, 9600]})
    return LayerStore.from_tensors(hs, downsample_rates=[320, 640], labels=labels, phones=phones,
                                   receptive_fields=[400, 640])


def test_explorer_on_a_store_follows_its_controls():
    from s3viz.widgets import alignment_explorer

    ex = alignment_explorer(_toy_store())
    assert ex.state["renders"] == 1 and ex.state["id"] == "a"
    assert ex.state["layers"] == [0, 1]
    first = bytes(ex.image.value)
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert ex.window.max == pytest.approx(3840 / 16000)
    ex.utterance.value = 1
    assert ex.state["id"] == "b" and ex.window.max == pytest.approx(0.6)
    assert bytes(ex.image.value) != first
    assert len(ex.view["timelines"]["layer 0"]) == 30
    assert ex.view["timelines"]["layer 0"].attrs["receptive_field"] == 400
    ex.layers.value = (1,)
    assert ex.state["layers"] == [1] and list(ex.view["timelines"]) == ["layer 1"]
    ex.window.value = (0.1, 0.2)
    ax = ex.figure.axes[0]
    assert ax.get_xlim() == pytest.approx((0.1, 0.2))
    assert ex.state["window"] == pytest.approx((0.1, 0.2))
    ex.layers.value = ()
    assert "select at least one layer" in [t.get_text() for t in ex.figure.axes[0].texts]
    assert "image/png" in ex._repr_mimebundle_()


def test_explorer_on_a_corpus(spectral):
    from s3viz.widgets import alignment_explorer

    ex = alignment_explorer(_toy_corpus(), spectral, layers=[0, 2, 4], window_s=0.2)
    assert ex.state["window"] == pytest.approx((0.0, 0.2))
    labels = [t.get_text() for t in ex.figure.axes[0].get_yticklabels()]
    assert labels[0] == "waveform" and labels[-1] == "phones"
    renders = ex.state["renders"]
    ex.spectrogram.value = True
    assert ex.state["spectrogram"] and len(ex.figure.axes[0].images) == 1
    ex.utterance.value = 2
    assert ex.state["id"] == "u2" and ex.state["renders"] > renders
    assert ex.window.max == pytest.approx(2500 / 16000)
    # the window is written out whole beside the slider, and the PNG is shown at its own size
    lo, hi = ex.window.value
    assert ex.window_label.value == f"{lo:.3f} – {hi:.3f} s"
    from PIL import Image as PILImage
    import io

    png = PILImage.open(io.BytesIO(ex.image.value))
    assert (int(ex.image.width), int(ex.image.height)) == png.size
    with pytest.raises(ValueError, match="upstream"):
        alignment_explorer(_toy_corpus())
    with pytest.raises(TypeError, match="Corpus or a LayerStore"):
        alignment_explorer([1, 2, 3], spectral)
