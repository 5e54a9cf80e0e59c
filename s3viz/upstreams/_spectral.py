"""A non-learned baseline upstream: log-mel and MFCC features (``logmel@r``, ``mfcc@r``) at
several rates ``r``, each utterance's the same in any batch. Windows, frame positions and
normalisation: ``docs/upstreams.md``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import _deps
from ..align import expected_lengths
from ..featurizers import align_frames
from ..interface import SAMPLE_RATE, check_wavs
from ..models import length_mask
from ._common import FixedUpstream

__all__ = ["SpectralUpstream", "spectral_hidden_states", "spectral_upstream"]

HOP_LENGTH = 160
"""Samples between the base 10 ms analysis frames."""
WIN_LENGTH = 400
"""Samples of the 25 ms Hann analysis window (also the FFT size)."""
_LOG_FLOOR = 1e-6
_CMVN_EPS = 1e-5
_DELTA_N = 2  # delta window: 2 * N + 1 = 5 frames, as torchaudio.functional.compute_deltas


def _mel_filterbank(n_mels: int, device=None) -> torch.Tensor:
    _deps.torchaudio()
    from torchaudio.functional import melscale_fbanks

    return melscale_fbanks(WIN_LENGTH // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE,
                           norm=None, mel_scale="htk").to(device)


def _dct_matrix(n_mfcc: int, n_mels: int, device=None) -> torch.Tensor:
    _deps.torchaudio()
    from torchaudio.functional import create_dct

    return create_dct(n_mfcc, n_mels, norm="ortho").to(device)


def _log_mel_10ms(wavs: torch.Tensor, wavs_len: torch.Tensor, fbank: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log mel energies every 10 ms: ``(batch_size, num_frames, n_mels)`` and lengths."""
    frames_len = expected_lengths(wavs_len, HOP_LENGTH, "ceil")
    num_frames = int(frames_len.max())
    seq_len = wavs.shape[1]
    # zero everything past each utterance's end, then pad so that frame t's window
    # is [160 t - 120, 160 t + 280) of the original signal
    wavs = wavs.masked_fill(~length_mask(wavs_len, seq_len), 0.0)
    left = WIN_LENGTH // 2 - HOP_LENGTH // 2
    right = max(0, (num_frames - 1) * HOP_LENGTH + WIN_LENGTH - left - seq_len)
    padded = F.pad(wavs, (left, right))
    window = torch.hann_window(WIN_LENGTH, device=wavs.device, dtype=wavs.dtype)
    spec = torch.stft(padded, n_fft=WIN_LENGTH, hop_length=HOP_LENGTH, win_length=WIN_LENGTH,
                      window=window, center=False, return_complex=True)[..., :num_frames]
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(power.transpose(1, 2), fbank)  # (B, T, n_mels)
    return torch.log(mel + _LOG_FLOOR), frames_len


def _masked_deltas(x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    """Regression deltas over 5 frames, replicating each utterance's own first/last frame."""
    num_frames, dim = x.shape[1], x.shape[2]
    t = torch.arange(num_frames, device=x.device)
    last = (x_len - 1).clamp(min=0)[:, None]  # (B, 1)

    def take(idx):
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, dim))

    num = torch.zeros_like(x)
    for k in range(1, _DELTA_N + 1):
        fwd = torch.minimum((t + k)[None, :], last)
        bwd = torch.minimum((t - k).clamp(min=0)[None, :], last)
        num = num + k * (take(fwd) - take(bwd))
    return num / (2 * sum(k * k for k in range(1, _DELTA_N + 1)))


def _masked_cmvn(x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance and dimension over valid frames."""
    valid = length_mask(x_len, x.shape[1]).to(x.dtype)[..., None]
    count = valid.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * valid).sum(1, keepdim=True) / count
    var = ((x - mean).square() * valid).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + _CMVN_EPS)


def _check_rates(rates) -> Tuple[int, ...]:
    try:
        out = tuple(int(r) for r in rates)
    except (TypeError, ValueError) as e:
        raise TypeError(f"rates must be a sequence of ints (samples per frame), got {rates!r}"
                        ) from e
    if not out or any(r <= 0 or r % HOP_LENGTH for r in out) or len(set(out)) != len(out):
        raise ValueError(f"rates must be distinct positive multiples of {HOP_LENGTH} samples "
                         f"(10 ms), e.g. (160, 320, 640); got {rates!r}")
    return out


def spectral_hidden_states(wavs: torch.Tensor, wavs_len: torch.Tensor, *,
                           rates: Sequence[int] = (160, 320, 640), n_mels: int = 80,
                           n_mfcc: int = 13, deltas: bool = True, normalize: bool = True,
                           fbank: Optional[torch.Tensor] = None,
                           dct: Optional[torch.Tensor] = None
                           ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Log-mel and MFCC hidden states at several downsample ``rates`` (multiples of 160;
    ``docs/upstreams.md``): ``(all_hs, all_hs_len)``, per rate ``(batch_size, frames, n_mels)``
    then ``(batch_size, frames, n_mfcc * (3 if deltas else 1))``, float32, padded frames 0,
    lengths ``(wavs_len - 1) // r + 1``.

    Args:
        fbank, dct: the ``(201, n_mels)`` mel filterbank and ``(n_mels, n_mfcc)`` DCT
            matrix (computed when None).
    """
    rates = _check_rates(rates)
    wavs, wavs_len = check_wavs(wavs, wavs_len, who="spectral_hidden_states")
    device = wavs.device
    fbank = _mel_filterbank(n_mels, device) if fbank is None else fbank
    dct = _dct_matrix(n_mfcc, n_mels, device) if dct is None else dct
    batch_size = wavs.shape[0]
    mfcc_dim = n_mfcc * (3 if deltas else 1)
    all_hs: List[torch.Tensor] = []
    all_hs_len: List[torch.Tensor] = []
    if int(wavs_len.max()) == 0:
        for r in rates:
            lens = expected_lengths(wavs_len, r, "ceil")
            all_hs += [wavs.new_zeros(batch_size, 0, n_mels, dtype=torch.float32),
                       wavs.new_zeros(batch_size, 0, mfcc_dim, dtype=torch.float32)]
            all_hs_len += [lens, lens]
        return all_hs, all_hs_len

    with torch.autocast(device_type=device.type, enabled=False):
        logmel, mel_len = _log_mel_10ms(wavs.float(), wavs_len, fbank.float())
        for r in rates:
            # coarser rates average r / 160 frames of the utterance (s3viz.featurizers)
            x, x_len = align_frames(logmel, mel_len, HOP_LENGTH, r)
            cep = torch.matmul(x, dct.float())
            if deltas:
                d1 = _masked_deltas(cep, x_len)
                cep = torch.cat([cep, d1, _masked_deltas(d1, x_len)], dim=-1)
            pad = ~length_mask(x_len, x.shape[1])[..., None]
            for h in (x, cep):
                out = _masked_cmvn(h, x_len) if normalize else h
                all_hs.append(out.masked_fill(pad, 0.0))
                all_hs_len.append(x_len)
    return all_hs, all_hs_len


class SpectralUpstream(FixedUpstream):
    """Log-mel / MFCC baseline upstream (no learned weights): :func:`spectral_hidden_states`,
    two hidden states per rate (``layer_names`` ``["logmel@160", "mfcc@160", ...]``);
    ``receptive_fields`` equal the rates, ``window_sizes`` are the samples that shape each
    layer's frame, ``conv_layers`` is None (``docs/upstreams.md``)."""

    def __init__(self, rates: Sequence[int] = (160, 320, 640), *, n_mels: int = 80,
                 n_mfcc: int = 13, deltas: bool = True, normalize: bool = True):
        super().__init__()
        self.weights = "not learned (log-mel and MFCC features)"
        self.rates = _check_rates(rates)
        for arg, value in (("n_mels", n_mels), ("n_mfcc", n_mfcc)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if n_mfcc > n_mels:
            raise ValueError(f"n_mfcc ({n_mfcc}) cannot exceed n_mels ({n_mels})")
        self.n_mels, self.n_mfcc = n_mels, n_mfcc
        self.deltas, self.normalize = bool(deltas), bool(normalize)
        self.name = "spectral"
        self.conv_layers = None
        self.register_buffer("fbank", _mel_filterbank(n_mels))
        self.register_buffer("dct", _dct_matrix(n_mfcc, n_mels))
        mfcc_dim = n_mfcc * (3 if self.deltas else 1)
        self._sizes = [s for _ in self.rates for s in (n_mels, mfcc_dim)]
        self._rates = self._fields = [r for r in self.rates for _ in range(2)]
        self.layer_names = [f"{kind}@{r}" for r in self.rates for kind in ("logmel", "mfcc")]
        self.window_sizes = [WIN_LENGTH + r - HOP_LENGTH for r in self._rates]

    def extra_repr(self) -> str:
        return (f"rates={self.rates}, n_mels={self.n_mels}, n_mfcc={self.n_mfcc}, "
                f"deltas={self.deltas}, normalize={self.normalize}")

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        return spectral_hidden_states(wavs, wavs_len, rates=self.rates, n_mels=self.n_mels,
                                      n_mfcc=self.n_mfcc, deltas=self.deltas,
                                      normalize=self.normalize, fbank=self.fbank, dct=self.dct)


def spectral_upstream(rates: Sequence[int] = (160, 320, 640), *, n_mels: int = 80,
                      n_mfcc: int = 13, deltas: bool = True, normalize: bool = True
                      ) -> SpectralUpstream:
    """The log-mel / MFCC baseline upstream (defaults: 6 hidden states at 160, 320, 640), in
    eval mode like the other factories (it has no dropout: the mode changes nothing)."""
    return SpectralUpstream(rates, n_mels=n_mels, n_mfcc=n_mfcc, deltas=deltas,
                            normalize=normalize).eval()
