"""What the upstream adapters share: fixed layer geometry and waveform normalisation
(their input check, ``check_wavs``, is in :mod:`s3viz.interface`, beside the interface;
their length masks are :func:`s3viz.models.length_mask`)."""

from __future__ import annotations

import zlib
from typing import List

import torch
import torch.nn.functional as F

from ..align import receptive_field
from ..interface import AbsUpstream

__all__ = ["FixedUpstream", "normalize_waveforms", "seeded"]


class FixedUpstream(AbsUpstream):
    """An upstream whose ``hidden_sizes``, ``downsample_rates`` and ``receptive_fields``
    are fixed when it is built: the lists ``_sizes``, ``_rates`` and ``_fields`` (one
    entry per hidden state; ``_fields`` None: it reports no receptive fields)."""

    _fields = None
    num_layer = property(lambda self: len(self._sizes))
    hidden_sizes = property(lambda self: list(self._sizes))
    downsample_rates = property(lambda self: list(self._rates))

    @property
    def receptive_fields(self) -> List[int]:
        """Samples of audio behind one frame, per hidden state."""
        if self._fields is None:
            raise AttributeError(f"{type(self).__name__} reports no receptive_fields")
        return list(self._fields)

    def _behind_convolutions(self, conv_layers, num_layer: int, hidden: int) -> None:
        """``num_layer`` hidden states of size ``hidden`` behind the convolutional front end
        ``conv_layers`` (``(kernel_size, stride)`` pairs, kept as ``conv_layers``)."""
        self.conv_layers = tuple((int(k), int(s)) for k, s in conv_layers)
        field, rate = receptive_field(self.conv_layers)
        self._sizes = [int(hidden)] * num_layer
        self._rates, self._fields = [rate] * num_layer, [field] * num_layer


def normalize_waveforms(wavs: torch.Tensor, wavs_len: torch.Tensor, *, eps: float = 1e-5
                        ) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples; padding becomes 0.

    ``eps`` is added to the variance: 1e-5 is s3prl's ``F.layer_norm(wav, wav.shape)``,
    1e-7 Hugging Face's ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``.
    """
    out = torch.zeros_like(wavs)
    for b in range(wavs.shape[0]):
        n = int(wavs_len[b])
        if n > 0:
            out[b, :n] = F.layer_norm(wavs[b, :n], (n,), eps=eps)
    return out


def seeded(build, seed: int, salt: str = ""):
    """``build()`` with torch's global RNG seeded from ``seed`` (plus the crc32 of ``salt``
    when given), then restored."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((zlib.crc32(salt.encode()) + seed) % (2**63) if salt else seed)
        return build()
