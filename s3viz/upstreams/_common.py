"""Masking and normalisation helpers shared by the upstream adapters (their input check,
``check_wavs``, is in :mod:`s3viz.interface`, beside the interface it checks)."""

from __future__ import annotations


import torch
import torch.nn.functional as F

__all__ = ["normalize_waveforms", "padding_mask"]


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
