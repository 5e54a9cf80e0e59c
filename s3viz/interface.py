"""The seed contracts of s3prl (``s3prl.nn.interface``), without depending on s3prl:
:class:`AbsUpstream`, :class:`AbsFeaturizer`, :class:`AbsFrameModel` and
:class:`AbsUtteranceModel`, with :func:`num_layer_of` and :func:`check_wavs`. s3viz never
requires subclassing them (:mod:`s3viz.contract` checks objects by their attributes);
the shapes every module uses: ``docs/upstreams.md``.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["AbsUpstream", "AbsFeaturizer", "AbsFrameModel", "AbsUtteranceModel", "num_layer_of",
           "SAMPLE_RATE"]

SAMPLE_RATE = 16000
"""The sample rate of every waveform inside s3viz (and of the s3prl interface)."""


class AbsUpstream(nn.Module):
    """An upstream (self-supervised speech model) following s3prl's interface: subclasses
    implement :attr:`num_layer`, :attr:`hidden_sizes`, :attr:`downsample_rates` and
    :meth:`forward`; :attr:`num_layers` (s3prl's spelling) lets s3prl's ``Featurizer``
    be built on it."""

    @property
    def num_layer(self) -> int:
        """Number of hidden states returned by :meth:`forward`."""
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        """Alias of :attr:`num_layer` (the spelling of s3prl's ``S3PRLUpstream``)."""
        return self.num_layer

    @property
    def hidden_sizes(self) -> List[int]:
        """Hidden size of each hidden state, ``len(hidden_sizes) == num_layer``."""
        raise NotImplementedError

    @property
    def downsample_rates(self) -> List[int]:
        """Downsample rate from 16 kHz waveforms of each hidden state (samples per frame)."""
        raise NotImplementedError

    def forward(self, wavs: torch.FloatTensor, wavs_len: torch.LongTensor
                ) -> Tuple[List[torch.FloatTensor], List[torch.LongTensor]]:
        """``(all_hs, all_hs_len)`` of zero-padded 16 kHz ``wavs`` ``(batch_size, seq_len, 1)``
        (or ``(batch_size, seq_len)``) with ``wavs_len`` valid samples: ``all_hs[i]`` is
        ``(batch_size, seq_len_i, hidden_sizes[i])``, ``all_hs_len[i]`` ``(batch_size,)``
        long with ``all_hs_len[i].max() == seq_len_i``."""
        raise NotImplementedError


class AbsFeaturizer(nn.Module):
    """Reduces (standardises) the hidden states of an upstream to one hidden state."""

    @property
    def output_size(self) -> int:
        """Hidden size of the reduced hidden state."""
        raise NotImplementedError

    @property
    def downsample_rate(self) -> int:
        """Downsample rate from 16 kHz waveforms of the reduced hidden state."""
        raise NotImplementedError

    def forward(self, all_hs: List[torch.FloatTensor], all_hs_len: List[torch.LongTensor]
                ) -> Tuple[torch.FloatTensor, torch.LongTensor]:
        """Reduce ``all_hs`` (``(batch_size, seq_len_i, hidden_size_i)`` each, with their
        ``(batch_size,)`` long lengths) to ``(hs, hs_len)``: ``(batch_size, seq_len,
        output_size)`` and ``(batch_size,)`` long."""
        raise NotImplementedError


class _AbsModel(nn.Module):
    """A downstream model of ``x`` ``(batch_size, seq_len, input_size)`` float and ``x_len``
    ``(batch_size,)`` long valid frames."""

    @property
    def input_size(self) -> int:
        """Feature size of ``x``."""
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        """Feature size of the output."""
        raise NotImplementedError


class AbsFrameModel(_AbsModel):
    """A frame-level model: keeps the time axis."""

    def forward(self, x: torch.FloatTensor, x_len: torch.LongTensor
                ) -> Tuple[torch.FloatTensor, torch.LongTensor]:
        """``(y, y_len)``: ``(batch_size, seq_len', output_size)`` and ``(batch_size,)``."""
        raise NotImplementedError


class AbsUtteranceModel(_AbsModel):
    """An utterance-level model: pools the time axis away."""

    def forward(self, x: torch.FloatTensor, x_len: torch.LongTensor) -> torch.FloatTensor:
        """``(batch_size, output_size)`` float."""
        raise NotImplementedError


def num_layer_of(upstream) -> int:
    """Number of hidden states of ``upstream``, read from ``num_layer`` or ``num_layers``
    (TypeError when neither is a positive int)."""
    for name in ("num_layer", "num_layers"):
        try:
            value = getattr(upstream, name)
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TypeError(
                f"upstream.{name} must be a positive int, got {value!r} "
                f"({type(value).__name__}); return the number of hidden states forward() gives")
        return value
    raise TypeError(
        f"upstream ({type(upstream).__name__}) has neither 'num_layer' nor 'num_layers'; "
        "add a 'num_layer' property giving the number of hidden states (s3prl interface)")


def check_wavs(wavs, wavs_len, *, who: str = "upstream") -> Tuple[torch.Tensor, torch.Tensor]:
    """The s3prl upstream inputs checked (messages name ``who``; ``wavs_len`` a tensor,
    array or list) as ``(batch_size, seq_len)`` float wavs and ``(batch_size,)`` long
    lengths on their device."""
    if not isinstance(wavs, torch.Tensor):
        raise TypeError(f"{who}: wavs must be a torch.Tensor of shape (batch_size, seq_len, 1), "
                        f"got {type(wavs).__name__}; batch waveforms with s3viz.audio.batch_wavs")
    if wavs.ndim == 3 and wavs.shape[-1] == 1:
        wavs = wavs.squeeze(-1)
    elif wavs.ndim != 2:
        raise ValueError(f"{who}: wavs must be (batch_size, seq_len, 1) or (batch_size, seq_len), "
                         f"got shape {tuple(wavs.shape)}; mono 16 kHz waveforms only (see "
                         "s3viz.audio.to_mono)")
    if not wavs.is_floating_point():
        raise TypeError(f"{who}: wavs must be a float tensor (waveform in [-1, 1]), got dtype "
                        f"{wavs.dtype}; convert int16 audio with s3viz.audio.prepare_wav")
    if wavs.shape[0] == 0:
        raise ValueError(f"{who}: wavs has an empty batch (batch_size == 0)")
    try:
        lens = (wavs_len if isinstance(wavs_len, torch.Tensor)
                else torch.as_tensor(np.asarray(wavs_len)))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{who}: wavs_len must be a (batch_size,) integer tensor") from e
    if lens.is_floating_point() or lens.is_complex() or lens.dtype == torch.bool:
        raise TypeError(f"{who}: wavs_len must hold integer sample counts (torch.long), got "
                        f"dtype {lens.dtype}")
    if lens.ndim != 1 or lens.shape[0] != wavs.shape[0]:
        raise ValueError(f"{who}: wavs_len must have shape (batch_size,) = ({wavs.shape[0]},), "
                         f"got {tuple(lens.shape)}")
    lens = lens.to(device=wavs.device, dtype=torch.long)
    if bool((lens < 0).any()) or bool((lens > wavs.shape[1]).any()):
        raise ValueError(f"{who}: wavs_len must lie in [0, seq_len={wavs.shape[1]}], got min "
                         f"{int(lens.min())} and max {int(lens.max())}")
    return wavs, lens
