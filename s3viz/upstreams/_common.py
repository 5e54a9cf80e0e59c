"""Input checks and masking helpers shared by the upstream adapters."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["check_wavs", "normalize_waveforms", "padding_mask"]


def check_wavs(wavs, wavs_len, *, who: str = "upstream") -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate the s3prl upstream inputs and bring them to one layout.

    Args:
        wavs: ``(batch_size, seq_len, 1)`` or ``(batch_size, seq_len)`` float waveforms.
        wavs_len: ``(batch_size,)`` integer valid samples per waveform (tensor, array or list).
        who: name used in error messages.

    Returns:
        ``(wavs, wavs_len)``: ``(batch_size, seq_len)`` float (same dtype and device)
        and ``(batch_size,)`` long on ``wavs.device``.
    """
    if not isinstance(wavs, torch.Tensor):
        raise TypeError(
            f"{who}: wavs must be a torch.Tensor of shape (batch_size, seq_len, 1), got "
            f"{type(wavs).__name__}; batch waveforms with s3viz.audio.batch_wavs"
        )
    if wavs.ndim == 3 and wavs.shape[-1] == 1:
        wavs = wavs.squeeze(-1)
    elif wavs.ndim != 2:
        raise ValueError(
            f"{who}: wavs must be (batch_size, seq_len, 1) or (batch_size, seq_len), got shape "
            f"{tuple(wavs.shape)}; mono 16 kHz waveforms only (see s3viz.audio.to_mono)"
        )
    if not wavs.is_floating_point():
        raise TypeError(
            f"{who}: wavs must be a float tensor (waveform in [-1, 1]), got dtype {wavs.dtype}; "
            "convert int16 audio with s3viz.audio.prepare_wav"
        )
    if wavs.shape[0] == 0:
        raise ValueError(f"{who}: wavs has an empty batch (batch_size == 0)")
    if isinstance(wavs_len, torch.Tensor):
        lens = wavs_len
    else:
        try:
            lens = torch.as_tensor(np.asarray(wavs_len))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{who}: wavs_len must be a (batch_size,) integer tensor") from e
    if lens.is_floating_point() or lens.is_complex() or lens.dtype == torch.bool:
        raise TypeError(
            f"{who}: wavs_len must hold integer sample counts (torch.long), got dtype {lens.dtype}"
        )
    if lens.ndim != 1 or lens.shape[0] != wavs.shape[0]:
        raise ValueError(
            f"{who}: wavs_len must have shape (batch_size,) = ({wavs.shape[0]},), got "
            f"{tuple(lens.shape)}"
        )
    lens = lens.to(device=wavs.device, dtype=torch.long)
    if bool((lens < 0).any()) or bool((lens > wavs.shape[1]).any()):
        raise ValueError(
            f"{who}: wavs_len must lie in [0, seq_len={wavs.shape[1]}], got min "
            f"{int(lens.min())} and max {int(lens.max())}"
        )
    return wavs, lens


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(batch_size, max_len)`` bool, True at padded positions (``t >= lengths[b]``)."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


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
