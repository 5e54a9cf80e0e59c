"""Tiny correct objects for each seed interface, and one deliberately broken variant per check.

Used by tests/test_contract.py. Every broken class breaks exactly one contract
rule; ``BROKEN_*`` tables map it to the single check that must fail.
"""

# ruff: noqa: RUF012  - toy objects declare the interface lists as class attributes
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from s3viz.align import expected_lengths
from s3viz.interface import AbsFeaturizer, AbsFrameModel, AbsUpstream, AbsUtteranceModel

__all__ = [
    "BROKEN_FEATURIZERS",
    "BROKEN_FRAME_MODELS",
    "BROKEN_UPSTREAMS",
    "BROKEN_UTTERANCE_MODELS",
    "ConvLengthUpstream",
    "LinearFrameModel",
    "MeanPoolUtteranceModel",
    "S3prlSpellingUpstream",
    "ToyUpstream",
    "WeightedSumFeaturizer",
]

RATE = 320
HIDDEN = 8


@contextmanager
def _seeded(seed: int = 0):
    """Seeded weights without touching the global RNG stream of the test session."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(batch_size, seq_len) bool, True on valid frames."""
    return torch.arange(seq_len, device=lengths.device)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------
# upstreams
# ---------------------------------------------------------------------------


class ToyUpstream(AbsUpstream):
    """Frames of 320 samples -> linear -> tanh (layer 0) -> linear -> tanh (layer 1).

    Lengths follow ``ceil(L / 320)``; with ``mixed=True`` a third layer pools
    pairs of frames (rate 640, ``ceil`` again), masking padded frames.
    """

    def __init__(self, mixed: bool = False):
        super().__init__()
        with _seeded():
            self.proj = nn.Linear(RATE, HIDDEN)
            self.mix = nn.Linear(HIDDEN, HIDDEN)
        self.mixed = mixed
        self._count = 3 if mixed else 2

    @property
    def num_layer(self):
        return self._count

    @property
    def hidden_sizes(self):
        return [HIDDEN] * self._count

    @property
    def downsample_rates(self):
        return [RATE, RATE, 2 * RATE][: self._count]

    def frames(self, wavs, wavs_len):
        if wavs.dim() == 3:
            wavs = wavs.squeeze(-1)
        batch, seq_len = wavs.shape
        n_frames = math.ceil(seq_len / RATE)
        wavs = F.pad(wavs, (0, n_frames * RATE - seq_len))
        return wavs.reshape(batch, n_frames, RATE), expected_lengths(
            wavs_len.cpu(), RATE, "ceil"
        ).to(wavs.device)

    def layers(self, x, n):
        h0 = torch.tanh(self.proj(x))
        h1 = torch.tanh(self.mix(h0))
        return [h0, h1], [n, n]

    def forward(self, wavs, wavs_len):
        x, n = self.frames(wavs, wavs_len)
        all_hs, all_hs_len = self.layers(x, n)
        if self.mixed:
            h1 = all_hs[1]
            m = _mask(n, h1.shape[1]).unsqueeze(-1).to(h1.dtype)
            if h1.shape[1] % 2:
                h1, m = F.pad(h1, (0, 0, 0, 1)), F.pad(m, (0, 0, 0, 1))
            b, t, h = h1.shape
            pooled = (h1 * m).reshape(b, t // 2, 2, h).sum(2) / m.reshape(b, t // 2, 2, 1).sum(
                2
            ).clamp(min=1)
            all_hs.append(pooled)
            all_hs_len.append(torch.div(n + 1, 2, rounding_mode="floor"))
        return all_hs, all_hs_len


class S3prlSpellingUpstream(nn.Module):
    """Attribute-only (no AbsUpstream); spells the count ``num_layers`` like s3prl's upstream."""

    def __init__(self):
        super().__init__()
        self.inner = ToyUpstream()

    num_layers = 2
    hidden_sizes = [HIDDEN, HIDDEN]
    downsample_rates = [RATE, RATE]

    def forward(self, wavs, wavs_len):
        return self.inner(wavs, wavs_len)


class PlainObjectUpstream:
    """Not an nn.Module at all: a forward and the properties (checked by attributes)."""

    num_layer = 2
    hidden_sizes = [HIDDEN, HIDDEN]
    downsample_rates = [RATE, RATE]

    def __init__(self):
        self.inner = ToyUpstream().eval()

    def forward(self, wavs, wavs_len):
        return self.inner(wavs, wavs_len)


class ConvLengthUpstream(AbsUpstream):
    """wav2vec2-like lengths: windows of 400 samples every 320, ``(L - 400) // 320 + 1`` frames."""

    def __init__(self):
        super().__init__()
        with _seeded():
            self.proj = nn.Linear(400, HIDDEN)

    num_layer = 1
    hidden_sizes = [HIDDEN]
    downsample_rates = [RATE]

    def forward(self, wavs, wavs_len):
        wavs = wavs.squeeze(-1) if wavs.dim() == 3 else wavs
        h = torch.tanh(self.proj(wavs.unfold(1, 400, RATE)))
        return [h], [torch.div(wavs_len - 400, RATE, rounding_mode="floor") + 1]


class CeilLengthsOverPadding(ConvLengthUpstream):
    """s3prl's ``S3PRLUpstream`` in miniature: windows of 400 every 320 samples, but it
    reports ``(L - 1) // 320 + 1`` frames. In a padded batch the extra frames of a shorter
    utterance are windows over the padding; alone they are copies of its last frame."""

    def forward(self, wavs, wavs_len):
        wavs = wavs.squeeze(-1) if wavs.dim() == 3 else wavs
        n = torch.div(wavs_len - 1, RATE, rounding_mode="floor") + 1
        h = torch.tanh(self.proj(wavs.unfold(1, 400, RATE)))
        t = int(n.max())
        if h.shape[1] < t:  # as s3prl's _match_length: repeat the last frame
            h = torch.cat([h, h[:, -1:].expand(-1, t - h.shape[1], -1)], dim=1)
        return [h[:, :t]], [n]


# --- broken upstreams: one class per check ------------------------------------


class BadNumLayerType(ToyUpstream):
    num_layer = "2"


class BadHiddenSizesType(ToyUpstream):
    hidden_sizes = [8.0, 8.0]


class BadRatesType(ToyUpstream):
    downsample_rates = [RATE, "320"]


class WrongNumLayer(ToyUpstream):
    num_layer = 3  # hidden_sizes / rates / outputs say 2


class WrongHiddenSize(ToyUpstream):
    hidden_sizes = [HIDDEN, 12]


class FloatLengths(ToyUpstream):
    def forward(self, wavs, wavs_len):
        all_hs, all_hs_len = super().forward(wavs, wavs_len)
        return all_hs, [n.float() for n in all_hs_len]


class LengthsLongerThanTime(ToyUpstream):
    """Crops the last frame of every hidden state but reports the uncropped lengths."""

    def forward(self, wavs, wavs_len):
        all_hs, all_hs_len = super().forward(wavs, wavs_len)
        return [h[:, :-1] for h in all_hs], all_hs_len


class WrongRate(ToyUpstream):
    downsample_rates = [160, 160]  # frames are really 320 samples


class PaddingDependent(ToyUpstream):
    """Normalises layer 0 over the whole padded batch (mean/std including padding)."""

    def layers(self, x, n):
        h0 = torch.tanh(self.proj(x))
        h0 = (h0 - h0.mean(dim=(0, 1), keepdim=True)) / h0.std(dim=(0, 1), keepdim=True)
        h1 = torch.tanh(self.mix(h0))
        return [h0, h1], [n, n]


class Nondeterministic(ToyUpstream):
    """Dropout stays on in eval mode (layer 1 only)."""

    def layers(self, x, n):
        (h0, h1), lens = super().layers(x, n)
        return [h0, F.dropout(h1, 0.5, training=True)], lens


class LayerDrop(ToyUpstream):
    """Every second call drops the last layer, even in eval mode."""

    calls = 0

    def forward(self, wavs, wavs_len):
        all_hs, all_hs_len = super().forward(wavs, wavs_len)
        self.calls += 1
        if self.calls % 2 == 0:
            return all_hs[:-1], all_hs_len[:-1]
        return all_hs, all_hs_len


class Only2D(ToyUpstream):
    def forward(self, wavs, wavs_len):
        if wavs.dim() != 2:
            raise ValueError(f"expected wavs (batch, time), got {wavs.dim()} dims")
        return super().forward(wavs, wavs_len)


class Only3D(ToyUpstream):
    """Correct (the interface only requires 3-D): wavs_2d is a warn, not a fail."""

    def forward(self, wavs, wavs_len):
        if wavs.dim() != 3:
            raise ValueError("expected wavs (batch, time, 1)")
        return super().forward(wavs, wavs_len)


class RaisingUpstream(ToyUpstream):
    def forward(self, wavs, wavs_len):
        raise RuntimeError("boom inside forward")


class NaNUpstream(ToyUpstream):
    def layers(self, x, n):
        (h0, h1), lens = super().layers(x, n)
        return [h0, torch.log(h1 - 2.0)], lens  # tanh - 2 < 0: NaN everywhere


class NaNInPaddingUpstream(ToyUpstream):
    """NaN only in padded frames: a warn."""

    def layers(self, x, n):
        (h0, h1), lens = super().layers(x, n)
        h1 = h1.masked_fill(~_mask(n, h1.shape[1]).unsqueeze(-1), float("nan"))
        return [h0, h1], lens


BROKEN_UPSTREAMS = {
    "num_layer": BadNumLayerType,
    "hidden_sizes": BadHiddenSizesType,
    "downsample_rates": BadRatesType,
    "layer_count": WrongNumLayer,
    "hidden_shape": WrongHiddenSize,
    "lengths_type": FloatLengths,
    "lengths_bound": LengthsLongerThanTime,
    "lengths_rate": WrongRate,
    "batch_invariance": PaddingDependent,
    "determinism": Nondeterministic,
    "stable_layers": LayerDrop,
    "forward": RaisingUpstream,
    "finite": NaNUpstream,
}


# ---------------------------------------------------------------------------
# featurizers
# ---------------------------------------------------------------------------


class WeightedSumFeaturizer(AbsFeaturizer):
    """Softmax-weighted sum of all layers; raises on layers of different lengths."""

    def __init__(self, num_layer: int = 2):
        super().__init__()
        self.weights = nn.Parameter(torch.linspace(-1, 1, num_layer))

    output_size = HIDDEN
    downsample_rate = RATE

    def check(self, all_hs, all_hs_len):
        if len({h.shape[1] for h in all_hs}) > 1 or any(
            not torch.equal(n, all_hs_len[0]) for n in all_hs_len
        ):
            raise ValueError(
                f"all_hs must have equal lengths, got seq_len {[h.shape[1] for h in all_hs]}"
            )

    def forward(self, all_hs, all_hs_len):
        self.check(all_hs, all_hs_len)
        w = torch.softmax(self.weights, 0)
        return (torch.stack(all_hs, 0) * w[:, None, None, None]).sum(0), all_hs_len[0]


class FeatOutputSizeType(WeightedSumFeaturizer):
    output_size = "8"


class FeatRateZero(WeightedSumFeaturizer):
    downsample_rate = 0


class FeatRaising(WeightedSumFeaturizer):
    def forward(self, all_hs, all_hs_len):
        raise KeyError("no such layer")


class FeatWrongShape(WeightedSumFeaturizer):
    def forward(self, all_hs, all_hs_len):
        hs, hs_len = super().forward(all_hs, all_hs_len)
        return hs[..., : HIDDEN // 2], hs_len


class FeatFloatLengths(WeightedSumFeaturizer):
    def forward(self, all_hs, all_hs_len):
        hs, hs_len = super().forward(all_hs, all_hs_len)
        return hs, hs_len.float()


class FeatCropped(WeightedSumFeaturizer):
    def forward(self, all_hs, all_hs_len):
        hs, hs_len = super().forward(all_hs, all_hs_len)
        return hs[:, :-1], hs_len


class FeatWrongRate(WeightedSumFeaturizer):
    downsample_rate = 160


class FeatNaN(WeightedSumFeaturizer):
    def forward(self, all_hs, all_hs_len):
        hs, hs_len = super().forward(all_hs, all_hs_len)
        return hs / 0.0 * 0.0, hs_len


class SilentSumFeaturizer(WeightedSumFeaturizer):
    """Truncates every layer to the shortest and sums: the s3prl bug (no assert)."""

    def forward(self, all_hs, all_hs_len):
        t = min(h.shape[1] for h in all_hs)
        w = torch.softmax(self.weights, 0)
        hs = sum(wi * h[:, :t] for wi, h in zip(w, all_hs, strict=True))
        return hs, torch.stack(all_hs_len).min(0).values.clamp(max=t)


BROKEN_FEATURIZERS = {
    "output_size": FeatOutputSizeType,
    "downsample_rate": FeatRateZero,
    "forward": FeatRaising,
    "output_shape": FeatWrongShape,
    "lengths_type": FeatFloatLengths,
    "lengths_bound": FeatCropped,
    "lengths_rate": FeatWrongRate,
    "finite": FeatNaN,
    "different_lengths": SilentSumFeaturizer,
}


# ---------------------------------------------------------------------------
# frame models
# ---------------------------------------------------------------------------

IN, OUT = 4, 3


class LinearFrameModel(AbsFrameModel):
    def __init__(self):
        super().__init__()
        with _seeded():
            self.linear = nn.Linear(IN, OUT)

    input_size = IN
    output_size = OUT

    def forward(self, x, x_len):
        return self.linear(x), x_len


class FrameInputSizeType(LinearFrameModel):
    input_size = "4"


class FrameOutputSizeZero(LinearFrameModel):
    output_size = 0


class FrameRaising(LinearFrameModel):
    def forward(self, x, x_len):
        raise IndexError("out of range")


class FrameWrongShape(LinearFrameModel):
    def forward(self, x, x_len):
        y, y_len = super().forward(x, x_len)
        return torch.cat([y, y[..., :1]], -1), y_len


class FrameFloatLengths(LinearFrameModel):
    def forward(self, x, x_len):
        return self.linear(x), x_len.float()


class FrameCropped(LinearFrameModel):
    """Drops the last output frame but returns the input lengths."""

    def forward(self, x, x_len):
        return self.linear(x)[:, :-1], x_len


class FrameOffByOne(LinearFrameModel):
    """y_len one short for every sequence except the longest."""

    def forward(self, x, x_len):
        return self.linear(x), torch.where(x_len == x_len.max(), x_len, x_len - 1)


class FrameInf(LinearFrameModel):
    def forward(self, x, x_len):
        return self.linear(x) / 0.0, x_len


class FrameDropout(LinearFrameModel):
    def forward(self, x, x_len):
        return F.dropout(self.linear(x), 0.5, training=True), x_len


class FrameLeaksPadding(LinearFrameModel):
    """Subtracts the mean over the whole padded time axis (ignores x_len)."""

    def forward(self, x, x_len):
        return self.linear(x - x.mean(dim=1, keepdim=True)), x_len


BROKEN_FRAME_MODELS = {
    "input_size": FrameInputSizeType,
    "output_size": FrameOutputSizeZero,
    "forward": FrameRaising,
    "output_shape": FrameWrongShape,
    "lengths_type": FrameFloatLengths,
    "lengths_bound": FrameCropped,
    "output_lengths": FrameOffByOne,
    "finite": FrameInf,
    "determinism": FrameDropout,
    "padding_invariance": FrameLeaksPadding,
}


# ---------------------------------------------------------------------------
# utterance models
# ---------------------------------------------------------------------------


class MeanPoolUtteranceModel(AbsUtteranceModel):
    """Mean over the valid frames (uses x_len), then a linear layer."""

    def __init__(self):
        super().__init__()
        with _seeded():
            self.linear = nn.Linear(IN, OUT)

    input_size = IN
    output_size = OUT

    def pool(self, x, x_len):
        m = _mask(x_len, x.shape[1]).unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / x_len[:, None].to(x.dtype)

    def forward(self, x, x_len):
        return self.linear(self.pool(x, x_len))


class UttInputSizeType(MeanPoolUtteranceModel):
    input_size = 4.0


class UttOutputSizeNegative(MeanPoolUtteranceModel):
    output_size = -3


class UttRaising(MeanPoolUtteranceModel):
    def forward(self, x, x_len):
        raise RuntimeError("shape mismatch somewhere")


class UttWrongShape(MeanPoolUtteranceModel):
    def forward(self, x, x_len):
        return super().forward(x, x_len).unsqueeze(1)  # (batch_size, 1, output_size)


class UttNaN(MeanPoolUtteranceModel):
    def forward(self, x, x_len):
        return super().forward(x, x_len) * float("nan")


class UttDropout(MeanPoolUtteranceModel):
    def forward(self, x, x_len):
        return F.dropout(super().forward(x, x_len), 0.5, training=True)


class UttIgnoresLengths(MeanPoolUtteranceModel):
    """Mean over the whole padded time axis."""

    def pool(self, x, x_len):
        return x.mean(1)


BROKEN_UTTERANCE_MODELS = {
    "input_size": UttInputSizeType,
    "output_size": UttOutputSizeNegative,
    "forward": UttRaising,
    "output_shape": UttWrongShape,
    "finite": UttNaN,
    "determinism": UttDropout,
    "padding_invariance": UttIgnoresLengths,
}
