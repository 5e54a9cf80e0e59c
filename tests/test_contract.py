"""Contract checks: correct toys pass, each broken toy fails exactly its check, bad calls raise."""

# ruff: noqa: RUF012  - toy objects declare the interface lists as class attributes
from __future__ import annotations

import copy
import importlib.util
import math
import pickle
import re

import _contract_toys as T
import pandas as pd
import pytest
import torch
import torchaudio
from torch import nn

import s3viz
from s3viz.contract import (
    ContractReport,
    ContractViolation,
    check_featurizer,
    check_frame_model,
    check_upstream,
    check_utterance_model,
)

UPSTREAM_CHECKS = {
    "setup",
    "eval_mode",
    "num_layer",
    "hidden_sizes",
    "downsample_rates",
    "forward",
    "wavs_2d",
    "layer_count",
    "stable_layers",
    "hidden_shape",
    "lengths_type",
    "lengths_bound",
    "lengths_rate",
    "finite",
    "determinism",
    "batch_invariance",
}
PER_LAYER = {
    "hidden_shape",
    "lengths_type",
    "lengths_bound",
    "lengths_rate",
    "finite",
    "determinism",
    "batch_invariance",
}


def failed(report) -> set:
    return set(report.failures["check"])


def statuses(report, check) -> list:
    return report[report["check"] == check]["status"].tolist()


@pytest.fixture(scope="module")
def toy_report():
    return check_upstream(T.ToyUpstream())


@pytest.fixture(scope="module")
def padding_report():
    return check_upstream(T.PaddingDependent())


# ---------------------------------------------------------------------------
# correct objects pass
# ---------------------------------------------------------------------------


def test_exported_from_package():
    assert s3viz.check_upstream is check_upstream
    assert s3viz.ContractReport is ContractReport
    assert s3viz.ContractViolation is ContractViolation


@pytest.mark.parametrize("mixed", [False, True], ids=["2-layer", "mixed-rate"])
def test_correct_upstream_all_ok(mixed):
    up = T.ToyUpstream(mixed=mixed)
    report = check_upstream(up)
    assert report.ok
    assert set(report["status"]) == {"ok"}, report
    assert set(report["check"]) == UPSTREAM_CHECKS
    for check in PER_LAYER:
        rows = report[report["check"] == check]
        assert rows["layer"].tolist() == list(range(up.num_layer)), check
    # every layer follows ceil(L/rate) exactly, the 640 one included
    rates = report[report["check"] == "lengths_rate"]
    assert rates["value"].tolist() == [0.0] * up.num_layer
    if mixed:
        assert "ceil(L/640)" in rates["detail"].iloc[2]


def test_upstream_rows_come_in_the_order_of_the_named_checks():
    from s3viz.contract.upstream import UPSTREAM_CHECKS as STEPS

    assert [f.__name__ for f in STEPS] == [
        "_setup", "_declared_sizes", "_forward", "_layer_count", "_stable_layers",
        "_hidden_shape", "_lengths_type", "_lengths_bound", "_lengths_rate", "_finite",
        "_determinism", "_wavs_2d", "_batch_invariance"]
    report = check_upstream(T.ToyUpstream())
    order = list(dict.fromkeys(report["check"]))
    # wavs_2d is measured after determinism but reported beside forward
    assert order == ["setup", "eval_mode", "num_layer", "hidden_sizes", "downsample_rates",
                     "forward", "wavs_2d", "layer_count", "stable_layers", "hidden_shape",
                     "lengths_type", "lengths_bound", "lengths_rate", "finite", "determinism",
                     "batch_invariance"]


def test_correct_downstream_objects_all_ok():
    for report in (
        check_featurizer(T.WeightedSumFeaturizer(), T.ToyUpstream()),
        check_frame_model(T.LinearFrameModel()),
        check_utterance_model(T.MeanPoolUtteranceModel()),
    ):
        assert report.ok
        assert set(report["status"]) == {"ok"}, report


def test_featurizer_rate_compared_with_upstream_lengths():
    report = check_featurizer(T.WeightedSumFeaturizer(), T.ToyUpstream())
    row = report[report["check"] == "lengths_rate"].iloc[0]
    assert row["status"] == "ok" and row["value"] == 0
    assert "upstream all_hs_len" in row["detail"] and "layers [0, 1]" in row["detail"]


# ---------------------------------------------------------------------------
# every check fails on its broken object, and only that check
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("check", sorted(T.BROKEN_UPSTREAMS))
def test_broken_upstream_fails_exactly_its_check(check):
    report = check_upstream(T.BROKEN_UPSTREAMS[check]())
    assert failed(report) == {check}, report
    assert not report.ok
    with pytest.raises(ContractViolation, match=check) as info:
        report.raise_for_violations()
    assert set(info.value.report["check"]) == {check}


@pytest.mark.parametrize("check", sorted(T.BROKEN_FEATURIZERS))
def test_broken_featurizer_fails_exactly_its_check(check):
    report = check_featurizer(T.BROKEN_FEATURIZERS[check](), T.ToyUpstream())
    assert failed(report) == {check}, report


@pytest.mark.parametrize("check", sorted(T.BROKEN_FRAME_MODELS))
def test_broken_frame_model_fails_exactly_its_check(check):
    report = check_frame_model(T.BROKEN_FRAME_MODELS[check]())
    assert failed(report) == {check}, report


@pytest.mark.parametrize("check", sorted(T.BROKEN_UTTERANCE_MODELS))
def test_broken_utterance_model_fails_exactly_its_check(check):
    report = check_utterance_model(T.BROKEN_UTTERANCE_MODELS[check]())
    assert failed(report) == {check}, report


def test_featurizer_with_broken_upstream_reports_upstream():
    report = check_featurizer(T.WeightedSumFeaturizer(), T.RaisingUpstream())
    assert failed(report) == {"upstream"}
    assert "boom inside forward" in report.failures["detail"].iloc[0]
    assert "check_upstream" in report.failures["detail"].iloc[0]


def test_silent_sum_names_the_layers():
    report = check_featurizer(T.SilentSumFeaturizer(), T.ToyUpstream())
    detail = report.failures["detail"].iloc[0]
    assert "[0, 1]" in detail and "silently" in detail


# ---------------------------------------------------------------------------
# details of individual checks
# ---------------------------------------------------------------------------


def test_conv_convention_lengths_are_a_warn_with_the_deviation():
    lengths = (11850, 16000, 4003)
    naive = [((n - 400) // 320 + 1) - math.ceil(n / 320) for n in lengths]
    assert naive == [-2, -1, -1]  # 2 frames fewer when L % 320 < 80
    report = check_upstream(T.ConvLengthUpstream(), wav_lengths=lengths)
    assert report.ok
    row = report[report["check"] == "lengths_rate"].iloc[0]
    assert row["status"] == "warn"
    assert row["value"] == min(naive, key=abs) or row["value"] == -2
    assert f"deviation {naive}" in row["detail"]
    assert "'conv'" in row["detail"]
    # the same object fails past a tighter tolerance
    strict = check_upstream(T.ConvLengthUpstream(), wav_lengths=lengths, tolerance=1)
    assert failed(strict) == {"lengths_rate"}
    assert statuses(
        check_upstream(T.ConvLengthUpstream(), wav_lengths=(16400,), tolerance=1), "lengths_rate"
    ) == ["warn"]


def test_s3prl_spelling_is_accepted_with_a_warning():
    report = check_upstream(T.S3prlSpellingUpstream())
    assert report.ok
    row = report[report["check"] == "num_layer"].iloc[0]
    assert row["status"] == "warn" and "num_layers" in row["detail"] and "s3prl" in row["detail"]
    assert statuses(report, "layer_count") == ["ok"]


def test_attribute_only_object_is_checked():
    report = check_upstream(T.PlainObjectUpstream())
    assert report.ok
    assert statuses(report, "eval_mode") == ["warn"]


def test_only_2d_wavs_fails_forward_but_checks_the_rest():
    report = check_upstream(T.Only2D())
    assert failed(report) == {"forward"}
    assert "squeeze" in report.failures["detail"].iloc[0]
    assert statuses(report, "wavs_2d") == ["ok"]
    assert statuses(report, "batch_invariance") == ["ok", "ok"]


def test_only_3d_wavs_is_a_warning():
    report = check_upstream(T.Only3D())
    assert report.ok
    assert statuses(report, "wavs_2d") == ["warn"]


def test_nan_only_in_padding_is_a_warning():
    report = check_upstream(T.NaNInPaddingUpstream())
    assert report.ok
    assert statuses(report, "finite") == ["ok", "warn"]


def test_raising_forward_gives_the_exception_and_skips_the_rest():
    report = check_upstream(T.RaisingUpstream())
    assert "RuntimeError: boom inside forward" in report.failures["detail"].iloc[0]
    skipped = report[report["detail"].str.startswith("not assessed")]
    assert set(skipped["check"]) >= PER_LAYER
    assert set(skipped["status"]) == {"warn"}


def test_batch_invariance_values(toy_report, padding_report):
    toy = toy_report[toy_report["check"] == "batch_invariance"]["value"]
    assert (toy <= 1e-6).all()
    bad = padding_report[padding_report["check"] == "batch_invariance"]
    assert (bad["value"] > 0.1).all()
    assert bad["detail"].str.contains("padding changes the valid frames").all()
    # a normalisation over the padded batch changes every frame, and the report says so
    assert bad["detail"].str.contains("every frame of the padded utterances changes").all()


def test_batch_invariance_names_the_last_frames_when_lengths_overcount():
    report = check_upstream(T.CeilLengthsOverPadding(), wav_lengths=(6400, 9000, 4003))
    row = report[report["check"] == "batch_invariance"]
    assert (row["status"] == "fail").all()
    detail = row["detail"].iloc[0]
    assert "only the last 1 frame(s) of shorter utterances differ" in detail
    assert "utterance 0: 1 of 20" in detail and "utterance 2: 1 of 13" in detail


def test_batch_invariance_tolerance_is_configurable():
    # a generous tolerance turns the padding-dependent object into a pass
    report = check_upstream(T.PaddingDependent(), atol=10.0)
    assert report.ok


def test_nondeterministic_layer_is_not_judged_for_batch_invariance():
    report = check_upstream(T.Nondeterministic())
    rows = report[report["check"] == "batch_invariance"]
    assert rows["status"].tolist() == ["ok", "warn"]
    assert "determinism" in rows["detail"].iloc[1]


def test_layerdrop_lists_the_counts():
    report = check_upstream(T.LayerDrop())
    detail = report.failures["detail"].iloc[0]
    assert re.search(r"batch: 2.*alone: 1", detail)


def test_frame_model_that_changes_resolution_is_a_warning():
    class Pool2(T.LinearFrameModel):
        def forward(self, x, x_len):
            y = self.linear(x)
            if y.shape[1] % 2:
                y = torch.nn.functional.pad(y, (0, 0, 0, 1))
            b, t, h = y.shape
            return y.reshape(b, t // 2, 2, h)[:, :, 0], torch.div(
                x_len + 1, 2, rounding_mode="floor"
            )

    report = check_frame_model(Pool2())
    assert report.ok
    assert statuses(report, "output_lengths") == ["warn"]


class _Weird(T.ToyUpstream):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def forward(self, wavs, wavs_len):
        all_hs, all_hs_len = super().forward(wavs, wavs_len)
        h, n = all_hs[0], all_hs_len[0]
        return {
            "none": None,
            "tensor": h,
            "2d_hidden": ([h[..., 0], h], [n, n]),
            "string_lengths": (all_hs, [["a", "b", "c"], n]),
            "lengths_2d": (all_hs, [n[:, None], n]),
            "short_lengths_list": (all_hs, [n]),
            "scalar_lengths": (all_hs, [n[0], n]),
            "not_tensors": ([1.0, 2.0], [n, n]),
        }[self.how]


@pytest.mark.parametrize(
    "how,check",
    [
        ("none", "forward"),
        ("tensor", "forward"),
        ("not_tensors", "forward"),
        ("2d_hidden", "hidden_shape"),
        ("string_lengths", "lengths_type"),
        ("lengths_2d", "lengths_type"),
        ("short_lengths_list", "layer_count"),
        ("scalar_lengths", "lengths_type"),
    ],
)
def test_weird_outputs_never_crash(how, check):
    report = check_upstream(_Weird(how))
    assert isinstance(report, ContractReport)
    assert check in failed(report), report


def test_property_that_raises_is_a_fail_row():
    class Raises(T.ToyUpstream):
        @property
        def hidden_sizes(self):
            raise RuntimeError("not loaded yet")

    report = check_upstream(Raises())
    assert failed(report) == {"hidden_sizes"}
    assert "not loaded yet" in report.failures["detail"].iloc[0]


# ---------------------------------------------------------------------------
# the check leaves the object as it was
# ---------------------------------------------------------------------------


def test_training_flags_parameters_and_rng_are_restored():
    up = T.ToyUpstream()
    up.train()
    up.mix.eval()  # a mixed state must come back exactly
    flags = [m.training for m in up.modules()]
    params = copy.deepcopy(up.state_dict())
    noisy = T.Nondeterministic()
    rng = torch.get_rng_state()
    check_upstream(noisy)  # its dropout consumes randomness inside the check
    check_upstream(up)
    assert [m.training for m in up.modules()] == flags
    assert all(torch.equal(params[k], v) for k, v in up.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_model_elsewhere_is_not_moved_without_move():
    up = T.ToyUpstream().to("meta")
    with pytest.raises(ValueError, match="move=True"):
        check_upstream(up, device="cpu")
    assert next(up.parameters()).device.type == "meta"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_move_and_back():
    up = T.ToyUpstream()
    report = check_upstream(up, device="cuda", move=True)
    assert report.ok, report
    assert "cuda" in report[report["check"] == "setup"]["detail"].iloc[0]
    assert next(up.parameters()).device.type == "cpu"
    on_gpu = check_upstream(T.ToyUpstream().cuda())  # device=None: where the parameters are
    assert on_gpu.ok, on_gpu


# ---------------------------------------------------------------------------
# bad calls raise errors naming the argument
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: check_upstream("hubert"), TypeError, "upstream must be a torch.nn.Module"),
        (lambda: check_upstream(lambda w, n: w), TypeError, "upstream"),
        (lambda: check_upstream(torch.zeros(3)), TypeError, "upstream"),
        (
            lambda: check_upstream(T.ToyUpstream(), wav_lengths=[16000, -5]),
            ValueError,
            r"wav_lengths\[1\]",
        ),
        (
            lambda: check_upstream(T.ToyUpstream(), wav_lengths=[1.5]),
            TypeError,
            r"wav_lengths\[0\] must be an int",
        ),
        (
            lambda: check_upstream(T.ToyUpstream(), wav_lengths=16000),
            TypeError,
            "wav_lengths must be a sequence",
        ),
        (lambda: check_upstream(T.ToyUpstream(), wav_lengths=[]), ValueError, "wav_lengths"),
        (
            lambda: check_upstream(T.ToyUpstream(), wav_lengths=torch.tensor([1.0])),
            TypeError,
            "wav_lengths",
        ),
        (lambda: check_upstream(T.ToyUpstream(), tolerance=-1), ValueError, "tolerance"),
        (lambda: check_upstream(T.ToyUpstream(), tolerance=1.5), ValueError, "tolerance"),
        (lambda: check_upstream(T.ToyUpstream(), atol=-1e-3), ValueError, "atol"),
        (lambda: check_upstream(T.ToyUpstream(), device="gpu0"), ValueError, "device"),
        (
            lambda: check_featurizer(T.WeightedSumFeaturizer(), "upstream"),
            TypeError,
            "upstream must be",
        ),
        (lambda: check_featurizer(None, T.ToyUpstream()), TypeError, "featurizer must be"),
        (lambda: check_frame_model(nn.Linear(2, 2).weight), TypeError, "model must be"),
        (
            lambda: check_frame_model(T.LinearFrameModel(), x_lengths=[0, 3]),
            ValueError,
            r"x_lengths\[0\]",
        ),
        (lambda: check_utterance_model(T.MeanPoolUtteranceModel(), rtol=-1), ValueError, "rtol"),
    ],
)
def test_bad_calls(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        check_upstream(T.ToyUpstream(), device="cuda")


def test_equal_lengths_warn_that_padding_is_not_exercised():
    report = check_upstream(T.ToyUpstream(), wav_lengths=[4000, 4000])
    assert statuses(report, "setup") == ["warn"]
    assert report.ok


# ---------------------------------------------------------------------------
# the report object
# ---------------------------------------------------------------------------


def test_report_is_a_dataframe_that_keeps_its_type(padding_report):
    r = padding_report
    assert isinstance(r, pd.DataFrame) and isinstance(r, ContractReport)
    assert list(r.columns) == ["check", "layer", "status", "value", "detail"]
    assert str(r["layer"].dtype) == "Int64"
    sub = r[r["check"] == "batch_invariance"]
    assert (
        isinstance(sub, ContractReport)
        and sub.title == r.title == "check_upstream(PaddingDependent)"
    )
    assert isinstance(r.head(3), ContractReport) and r.head(3).title == r.title
    assert isinstance(r.failures, ContractReport)
    assert r.failures["layer"].tolist() == [0, 1]
    assert r.counts() == {"ok": len(r) - 2, "warn": 0, "fail": 2}
    again = pickle.loads(pickle.dumps(r))
    assert again.title == r.title and again.equals(r)


def test_report_text(padding_report, toy_report):
    text = str(padding_report)
    first = text.splitlines()[0]
    assert re.fullmatch(r"check_upstream\(PaddingDependent\): \d+ ok, 0 warn, 2 fail", first)
    assert repr(padding_report) == text
    # rows of one check in consecutive layers are one line: a newcomer reads 2 lines, not 40
    assert "FAIL  batch_invariance [layers 0-1]: " in text and "(the first of 2 rows)" in text
    assert str(toy_report).splitlines()[1].startswith("  ok: setup")
    # a column subset still prints (as a plain table)
    assert "detail" in repr(padding_report[["check", "detail"]])
    with pytest.raises(AttributeError, match="status"):
        _ = padding_report[["check", "detail"]].ok


def test_report_html(padding_report):
    html = padding_report._repr_html_()
    assert html.count("<tr>") == len(padding_report) + 1
    # the compact summary first, every row folded away below it
    assert html.index("<b>batch_invariance</b> [layers 0-1]") < html.index("<details>")
    assert f"<summary>all {len(padding_report)} rows</summary>" in html
    assert "#f8d7da" in html  # fail colour
    assert "check_upstream(PaddingDependent)" in html and "2 fail" in html
    odd = ContractReport._from_rows(
        [{"check": "x", "layer": None, "status": "warn", "value": None, "detail": "<script>&"}],
        title="t",
    )
    assert "&lt;script&gt;&amp;" in odd._repr_html_() and "<script>" not in odd._repr_html_()


def test_raise_for_violations(toy_report):
    assert toy_report.raise_for_violations() is toy_report
    warn = check_upstream(T.Only3D())
    warn.raise_for_violations()
    with pytest.raises(ContractViolation, match="wavs_2d"):
        warn.raise_for_violations(warnings=True)
    both = check_upstream(T.WrongRate())
    with pytest.raises(AssertionError) as info:  # ContractViolation is an AssertionError
        both.raise_for_violations()
    message = str(info.value)
    assert "lengths_rate [layer 0]" in message and "lengths_rate [layer 1]" in message


def test_empty_report():
    empty = ContractReport()
    assert list(empty.columns) == ["check", "layer", "status", "value", "detail"]
    assert empty.ok and empty.counts() == {"ok": 0, "warn": 0, "fail": 0}


# ---------------------------------------------------------------------------
# real architectures (random weights, tiny configurations)
# ---------------------------------------------------------------------------


class _TinyWav2Vec2(nn.Module):
    """A small torchaudio wav2vec2 behind a minimal s3prl-style forward (two transformer layers)."""

    def __init__(self, extractor_mode):
        super().__init__()
        conv = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = torchaudio.models.wav2vec2_model(
                extractor_mode=extractor_mode,
                extractor_conv_layer_config=conv,
                extractor_conv_bias=False,
                encoder_embed_dim=32,
                encoder_projection_dropout=0.1,
                encoder_pos_conv_kernel=16,
                encoder_pos_conv_groups=4,
                encoder_num_layers=2,
                encoder_num_heads=4,
                encoder_attention_dropout=0.1,
                encoder_ff_interm_features=64,
                encoder_ff_interm_dropout=0.1,
                encoder_dropout=0.1,
                encoder_layer_norm_first=False,
                encoder_layer_drop=0.1,
                aux_num_out=None,
            )

    num_layer = 2
    hidden_sizes = [32, 32]
    downsample_rates = [320, 320]

    def forward(self, wavs, wavs_len):
        wavs = wavs.squeeze(-1) if wavs.dim() == 3 else wavs
        all_hs, lengths = self.model.extract_features(wavs, wavs_len)
        return all_hs, [lengths] * len(all_hs)


@pytest.fixture(scope="module")
def tiny_wav2vec2_reports():
    return {mode: check_upstream(_TinyWav2Vec2(mode)) for mode in ("layer_norm", "group_norm")}


def test_real_masked_transformer_passes_with_default_tolerance(tiny_wav2vec2_reports):
    report = tiny_wav2vec2_reports["layer_norm"]
    assert report.ok, report
    assert set(report.warnings["check"]) == {"lengths_rate"}  # conv lengths: 1-2 frames short
    inv = report[report["check"] == "batch_invariance"]
    # float32 noise of masked attention is ~1e-6; the default tolerance is 1e-4 + 1e-4 x scale
    assert (inv["value"] < 1e-4).all() and (inv["status"] == "ok").all()


def test_group_norm_feature_encoder_is_not_batch_invariant(tiny_wav2vec2_reports):
    # wav2vec2/HuBERT *base* normalise the first conv over the whole padded waveform:
    # padding changes the valid frames (what s3prl users reported). The check must say so.
    report = tiny_wav2vec2_reports["group_norm"]
    assert failed(report) == {"batch_invariance"}


@pytest.mark.slow
def test_hubert_base_adapter_passes():
    if importlib.util.find_spec("s3viz.upstreams") is None:
        pytest.skip("s3viz.upstreams (the torchaudio adapter) does not exist yet")
    from s3viz.upstreams import torchaudio_upstream

    upstream = torchaudio_upstream("hubert_base", pretrained=False)  # random weights, offline
    report = check_upstream(upstream)
    assert report.ok, report
    rates = report[report["check"] == "lengths_rate"]
    # torchaudio gives (L - 400) // 320 + 1 frames: 1-2 fewer than ceil(L/320), a warning
    assert set(rates["status"]) <= {"ok", "warn"}
    assert rates["value"].abs().max() <= 2


def test_featurizer_on_a_layer_alone_at_its_rate_is_not_failed():
    """Cutting a frame of the only 640-rate layer gives a consistent input, not a violation."""
    from s3viz.featurizers import WeightedSumFeaturizer

    up = T.ToyUpstream(mixed=True)
    report = check_featurizer(WeightedSumFeaturizer(up, target_rate=640), up)
    assert report.ok, str(report)
    row = report[report.check == "different_lengths"].iloc[0]
    assert row.status == "ok" and "2" not in row.detail.split("raised when layer(s)")[1].split("]")[0]
