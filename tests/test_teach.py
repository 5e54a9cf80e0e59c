"""Classroom checkers: right answers pass, wrong answers get a hint that never gives the answer."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from s3viz import teach
from s3viz.align import conv_lengths
from s3viz.interface import AbsUpstream


class ConvUpstream(AbsUpstream):
    """Three hidden states at 320 samples per frame with a 400-sample window (like HuBERT)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 4, kernel_size=400, stride=320)

    num_layer = property(lambda self: 3)
    hidden_sizes = property(lambda self: [4, 4, 4])
    downsample_rates = property(lambda self: [320, 320, 320])
    receptive_fields = property(lambda self: [400, 400, 400])

    def forward(self, wavs, wavs_len):
        h = self.conv(wavs.transpose(1, 2)).transpose(1, 2)
        n = conv_lengths(wavs_len, [(400, 320)])
        return [h, h * 2, h * 3], [n, n, n]


@pytest.fixture(scope="module")
def upstream():
    return ConvUpstream()


def _no_answer_in(fb, answer):
    assert str(answer) not in fb.message, f"hint gives the answer away: {fb.message}"


def test_num_layer(upstream):
    assert teach.check_num_layer(3, upstream)
    fb = teach.check_num_layer(2, upstream)
    assert not fb and "Layer 0" in fb.message
    _no_answer_in(fb, 3)
    assert not teach.check_num_layer(7, upstream)
    assert not teach.check_num_layer("three", upstream)
    assert "number" in teach.check_num_layer("three", upstream).message


def test_num_frames(upstream):
    # (32000 - 400) // 320 + 1 = 99 frames; ceil would say 100
    assert teach.check_num_frames(99, upstream, wav_len=32000)
    assert teach.check_num_frames(torch.tensor(99), upstream, wav_len=32000)
    fb = teach.check_num_frames(100, upstream, wav_len=32000)
    assert not fb and "ceil" in fb.message and "receptive" in fb.message
    _no_answer_in(fb, 99)
    fb = teach.check_num_frames(2000, upstream, wav_len=32000)
    assert not fb and "milliseconds" in fb.message
    with pytest.raises(ValueError, match="wav_len"):
        teach.check_num_frames(1, upstream, wav_len=0)


def test_frame_rate(upstream):
    assert teach.check_frame_rate_ms(20, upstream)
    assert "samples" in teach.check_frame_rate_ms(320, upstream).message
    assert "seconds" in teach.check_frame_rate_ms(0.02, upstream).message


def test_best_layer():
    df = pd.DataFrame({"layer": [0, 1, 2, 3], "accuracy": [0.3, 0.6, 0.8, 0.5],
                       "target": "phone"})
    assert teach.check_best_layer(2, df)
    fb = teach.check_best_layer(3, df)
    assert not fb and "earlier" in fb.message
    _no_answer_in(fb, "layer 2")
    assert "later" in teach.check_best_layer(0, df).message
    tie = teach.check_best_layer(1, df, tolerance=0.25)
    assert tie and "tie" in tie.message, tie.message
    assert "tie" not in teach.check_best_layer(2, df).message  # a unique best is no tie
    assert not teach.check_best_layer(9, df)
    with pytest.raises(ValueError, match="columns"):
        teach.check_best_layer(1, df.drop(columns="accuracy"))


class _Store:
    def __init__(self, frames):
        self.frames = frames

    def utterance(self, i):
        return [self.frames]


def test_pooled():
    frames = torch.arange(12.0).reshape(4, 3)
    store = _Store(frames)
    assert teach.check_pooled(frames.mean(0), store, 0, 0)
    assert "time axis" in teach.check_pooled(frames, store, 0, 0).message
    padded = torch.cat([frames, torch.zeros(2, 3)]).mean(0)
    fb = teach.check_pooled(padded, store, 0, 0)
    assert not fb and "padding" in fb.message
    # each hint names the mistake made: .sum() is not a padding problem
    fb = teach.check_pooled(frames.sum(0), store, 0, 0)
    assert not fb and "sum over the 4 frames" in fb.message and "padding" not in fb.message
    fb = teach.check_pooled(frames.mean() * torch.ones(3), store, 0, 0)
    assert not fb and "hidden dimensions too" in fb.message


def test_unanswered_exercises_say_so(upstream):
    frames = torch.arange(12.0).reshape(4, 3)
    probe = pd.DataFrame({"layer": [0, 1], "accuracy": [0.2, 0.4]})
    for fb in (teach.check_weights(None, 5), teach.check_pooled(None, _Store(frames), 0, 0),
               teach.check_best_layer(None, probe), teach.check_num_layer(None, upstream)):
        assert not fb and "not answered yet" in fb.message, fb.message
        assert "weights for" not in fb.message


def test_weights():
    assert teach.check_weights(torch.softmax(torch.zeros(3), 0), 3)
    assert "softmax" in teach.check_weights([1.0, -1.0, 1.0], 3).message
    assert "sum" in teach.check_weights([0.5, 0.5, 0.5], 3).message
    assert "one per layer" in teach.check_weights([1.0], 3).message


def test_feedback_display():
    fb = teach.check_weights([1.0], 3)
    assert "not yet" in str(fb) and "not yet" in fb._repr_html_()
