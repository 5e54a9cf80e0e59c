"""Audio in: load, mono, 16 kHz, validate, and batch into the s3prl ``wavs, wavs_len`` pair.

Every waveform enters s3viz here, so conversions happen once:
:func:`load_audio` (a file soundfile reads), :func:`prepare_wav` (an array or
tensor at any rate), :func:`to_mono`, :func:`resample` and :func:`batch_wavs`
(``wavs (batch_size, seq_len, 1)``, ``wavs_len (batch_size,)``). How sample
formats and channel layouts are read: ``docs/data.md``.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import _deps
from .interface import SAMPLE_RATE

__all__ = ["load_audio", "to_mono", "resample", "prepare_wav", "batch_wavs", "MAX_CHANNELS"]

MAX_CHANNELS = 16
"""A 2-D signal whose shorter axis is longer than this is refused as not multi-channel audio."""

ArrayLike = Union[np.ndarray, torch.Tensor]

_INT_SCALE = {
    np.dtype(np.int8): (0.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
    np.dtype(np.uint8): (128.0, 128.0),
}


def _as_numpy(wav, name: str) -> np.ndarray:
    """Any supported waveform container -> numpy array (no dtype change), or a clear TypeError."""
    if isinstance(wav, torch.Tensor):
        t = wav.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    if isinstance(wav, (np.ndarray, np.generic)):
        return np.asarray(wav)
    if isinstance(wav, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name} must be a numpy array or torch tensor of samples, got "
            f"{type(wav).__name__}; to read a file use s3viz.audio.load_audio(path)"
        )
    if isinstance(wav, (list, tuple)):
        try:
            arr = np.asarray(wav)
        except ValueError as e:
            raise TypeError(f"{name} must be a rectangular array of numbers: {e}") from e
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise TypeError(f"{name} must hold numbers, got a list of {arr.dtype} values")
        return arr
    raise TypeError(
        f"{name} must be a numpy array or torch tensor of samples, got {type(wav).__name__}"
    )


def _to_float32(arr: np.ndarray, name: str) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1); float -> float32; other dtypes -> TypeError."""
    dt = arr.dtype
    if dt in _INT_SCALE:
        offset, scale = _INT_SCALE[dt]
        return ((arr.astype(np.float64) - offset) / scale).astype(np.float32)
    if dt.kind == "f":
        return arr.astype(np.float32, copy=False)
    if dt.kind in "iu":
        raise TypeError(
            f"{name} has dtype {dt}, which is not a PCM sample format; give int16, int32, "
            "uint8 or float in [-1, 1] (e.g. wav.astype(np.int16) if it holds 16-bit "
            "values, or wav / 32768 as float)"
        )
    raise TypeError(
        f"{name} has dtype {dt}; audio samples must be float (in [-1, 1]) or int16/int32 PCM"
    )


def _check_values(wav: np.ndarray, name: str, allow_silence: bool) -> None:
    """Refuse empty, non-finite and (unless allowed) all-zero float32 waveforms."""
    if wav.size == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(wav.shape)}, 0 samples); check the file or "
            "the slice that produced it"
        )
    finite = np.isfinite(wav)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1))
        kinds = "NaN" if np.isnan(wav).any() else "Inf"
        if np.isnan(wav).any() and np.isinf(wav).any():
            kinds = "NaN and Inf"
        raise ValueError(
            f"{name} contains {bad.size} non-finite value(s) ({kinds}), first at flat index "
            f"{int(bad[0])}; clean it first, e.g. np.nan_to_num(wav)"
        )
    if not allow_silence and not np.any(wav):
        raise ValueError(
            f"{name} is all zeros ({wav.size} samples of silence); check that the audio "
            "decoded correctly, or pass allow_silence=True if silence is intended"
        )
    peak = float(np.abs(wav).max())
    if peak > 1.0 + 1e-6:
        warnings.warn(
            f"{name} peaks at {peak:.4g} > 1; float audio is expected in [-1, 1] "
            "(if it holds int16 values, divide by 32768)",
            stacklevel=3,
        )


def to_mono(wav: ArrayLike, *, channels_first: Optional[bool] = None, name: str = "wav"):
    """Average the channels of a waveform.

    Args:
        wav: ``(num_samples,)`` (returned as is), ``(num_samples, channels)`` or
            ``(channels, num_samples)``; numpy array or torch tensor. 1-D input is
            returned unchanged.
        channels_first: ``True`` for ``(channels, num_samples)``, ``False`` for
            ``(num_samples, channels)``, ``None`` to take the shorter axis as channels.
        name: the argument name used in error messages.

    Returns:
        ``(num_samples,)``, of the same kind (numpy/torch) and device as ``wav``.
        Channels are averaged in float64; integer PCM comes back as float32 in [-1, 1].
    """
    is_tensor = isinstance(wav, torch.Tensor)
    arr = _as_numpy(wav, name)
    if arr.ndim == 1:
        return wav if is_tensor else arr
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 1-D (num_samples,) or 2-D (num_samples, channels) / "
            f"(channels, num_samples), got shape {tuple(arr.shape)}; for a batch of waveforms "
            "use s3viz.audio.batch_wavs([wav, ...])"
        )
    axis = _channel_axis(arr.shape, channels_first, name)
    if arr.dtype.kind != "f":
        arr = _to_float32(arr, name)
    mono = np.ascontiguousarray(arr.mean(axis=axis, dtype=np.float64).astype(arr.dtype))
    return torch.from_numpy(mono).to(wav.device) if is_tensor else mono


def _channel_axis(shape, channels_first: Optional[bool], name: str) -> int:
    if channels_first is not None:
        if not isinstance(channels_first, bool):
            raise TypeError(f"channels_first must be True, False or None, got {channels_first!r}")
        return 0 if channels_first else 1
    rows, cols = shape
    if rows == cols:
        raise ValueError(
            f"{name} has shape {tuple(shape)}: cannot tell channels from samples; pass "
            "channels_first=True for (channels, num_samples) or False for (num_samples, channels)"
        )
    axis = 0 if rows < cols else 1
    if shape[axis] > MAX_CHANNELS:
        raise ValueError(
            f"{name} has shape {tuple(shape)}: {shape[axis]} channels is not plausible audio "
            f"(at most {MAX_CHANNELS}); if this is a batch of waveforms use "
            "s3viz.audio.batch_wavs(list_of_1d_waveforms)"
        )
    return axis


def _check_rate(sample_rate, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a positive int in Hz, got {sample_rate!r}")
    if not np.isfinite(sample_rate) or sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)


@functools.lru_cache(maxsize=8)
def _resampler(orig: int, new: int):
    """A cached :class:`torchaudio.transforms.Resample` (its sinc kernel is built once)."""
    torchaudio = _deps.torchaudio()

    return torchaudio.transforms.Resample(orig, new)


def resample(wav: ArrayLike, orig_sample_rate: int, new_sample_rate: int = SAMPLE_RATE):
    """Resample a mono waveform with torchaudio (``torchaudio.transforms.Resample``,
    default windowed-sinc settings, kernel cached per rate pair).

    Args:
        wav: ``(num_samples,)`` float waveform, numpy array or torch tensor.
        orig_sample_rate: its sample rate in Hz.
        new_sample_rate: the target rate (16 kHz by default).

    Returns:
        ``(ceil(num_samples * new / orig),)`` float32, of the same kind as ``wav``.
    """
    orig = _check_rate(orig_sample_rate, "orig_sample_rate")
    new = _check_rate(new_sample_rate, "new_sample_rate")
    is_tensor = isinstance(wav, torch.Tensor)
    arr = _as_numpy(wav, "wav")
    if arr.ndim != 1:
        raise ValueError(
            f"wav must be 1-D (num_samples,) to resample, got shape {tuple(arr.shape)}; "
            "call s3viz.audio.to_mono first"
        )
    arr = _to_float32(arr, "wav")
    if orig == new:
        out = arr
    else:
        with torch.no_grad():
            out = _resampler(orig, new)(torch.from_numpy(np.ascontiguousarray(arr))).numpy()
    if is_tensor:
        return torch.from_numpy(np.ascontiguousarray(out)).to(wav.device)
    return out


def resampled_length(num_samples: int, orig: int, new: int = SAMPLE_RATE) -> int:
    """Samples after :func:`resample`: ``ceil(num_samples * new / orig)``, as torchaudio."""
    return -(-int(num_samples) * int(new) // int(orig))


def resample_many(wavs: List[np.ndarray], orig: int, new: int = SAMPLE_RATE,
                   chunk: int = 32) -> List[np.ndarray]:
    """Resample many 1-D float32 waveforms in length-sorted, zero-padded batches.

    One convolution per batch instead of one per waveform (much faster on busy
    CPUs). Each output has the length :func:`resample` gives; values agree with
    it to float32 rounding (the padding zeros equal torchaudio's own padding).
    """
    orig, new = _check_rate(orig, "orig"), _check_rate(new, "new")
    out: List[Optional[np.ndarray]] = [None] * len(wavs)
    order = sorted(range(len(wavs)), key=lambda i: (wavs[i].shape[0], i))
    for k in range(0, len(order), chunk):
        idx = order[k: k + chunk]
        longest = max(wavs[i].shape[0] for i in idx)
        batch = np.zeros((len(idx), longest), dtype=np.float32)
        for row, i in enumerate(idx):
            batch[row, : wavs[i].shape[0]] = wavs[i]
        if orig == new:
            res = batch
        else:
            with torch.no_grad():
                res = _resampler(orig, new)(torch.from_numpy(batch)).numpy()
        for row, i in enumerate(idx):
            n = resampled_length(wavs[i].shape[0], orig, new)
            out[i] = np.ascontiguousarray(res[row, :n])
    return out  # type: ignore[return-value]


def prepare_wav(
    wav: ArrayLike,
    sample_rate: int,
    *,
    channels_first: Optional[bool] = None,
    allow_silence: bool = False,
    name: str = "wav",
) -> np.ndarray:
    """Any in-memory waveform -> the s3viz waveform: 1-D float32 numpy at 16 kHz.

    Args:
        wav: ``(num_samples,)``, ``(num_samples, channels)`` or ``(channels, num_samples)``
            numpy array, torch tensor or list of numbers; float in [-1, 1] or
            int16/int32/int8/uint8 PCM.
        sample_rate: sample rate of ``wav`` in Hz; resampled to 16 kHz when different.
        channels_first: see :func:`to_mono`.
        allow_silence: accept an all-zero waveform instead of raising.
        name: the argument name used in error messages.

    Returns:
        ``(num_samples_16k,)`` float32 numpy array.

    Raises:
        TypeError: for non-audio types and dtypes.
        ValueError: for empty, NaN/Inf, all-zero (unless allowed) input or a wrong rank.
    """
    rate = _check_rate(sample_rate)
    arr = _as_numpy(wav, name)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (num_samples,) or 2-D (num_samples, channels) / "
            f"(channels, num_samples), got shape {tuple(arr.shape)}; for a batch of "
            "waveforms call prepare_wav on each and then batch_wavs"
        )
    arr = _to_float32(arr, name)
    _check_values(arr, name, allow_silence)
    mono = to_mono(arr, channels_first=channels_first, name=name)
    if not allow_silence and mono is not arr and not np.any(mono):
        # channels that cancel out (anti-phase stereo) average to silence
        raise ValueError(
            f"{name} becomes all zeros when its channels are averaged to mono (the channels "
            "cancel out: anti-phase stereo); pick one channel (e.g. wav[:, 0]) or pass "
            "allow_silence=True if silence is intended")
    out = resample(mono, rate, SAMPLE_RATE)
    if out.size == 0:
        raise ValueError(f"{name} has no samples left after resampling {rate} Hz to 16 kHz")
    return np.ascontiguousarray(out, dtype=np.float32)


def load_audio(path: Union[str, os.PathLike], *, allow_silence: bool = False) -> np.ndarray:
    """Read an audio file with soundfile and return it as 1-D float32 mono at 16 kHz.

    Args:
        path: a file soundfile can read (wav, flac, ogg, ...).
        allow_silence: accept an all-zero file instead of raising.

    Returns:
        ``(num_samples,)`` float32 numpy array at 16 kHz.
    """
    import soundfile as sf

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or Path), got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{path!r} is a folder; for a folder of audio files use s3viz.data.load_folder"
        )
    name = f"audio file {path!r}"
    try:
        with sf.SoundFile(path) as f:
            if f.frames > BLOCK_SECONDS * f.samplerate and f.seekable():
                return _load_in_blocks(f, name, allow_silence)
            data, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    except (RuntimeError, TypeError, ValueError) as e:  # sf.LibsndfileError is a RuntimeError
        if isinstance(e, ValueError) and str(e).startswith(name):
            raise  # our own check of the samples, from _load_in_blocks
        raise ValueError(
            f"soundfile cannot read {path!r} ({e}); convert it to wav or flac, e.g. "
            "with ffmpeg -i in.mp3 -ar 16000 -ac 1 out.wav"
        ) from e
    return prepare_wav(data, rate, channels_first=False, allow_silence=allow_silence, name=name)


BLOCK_SECONDS = 30
"""Files longer than this are read, averaged to mono and resampled block by block."""


def _load_in_blocks(f, name: str, allow_silence: bool) -> np.ndarray:
    """:func:`load_audio` of an open ``soundfile.SoundFile``, holding one block at a time.

    A 1-hour 48 kHz stereo file read whole takes about 7 GB at its peak (the
    float32 channels, their mean, torchaudio's padded copy and its output);
    block by block it takes the 16 kHz result and one block. The result equals
    :func:`prepare_wav` of the whole file: torchaudio's resampler is a strided
    convolution, so each block of output frames is computed from its input with
    enough context on each side (the kernel's ``width``) that no padding of the
    block reaches it, and at the file's ends the block's zero padding is the
    file's. torchaudio has no streaming resampler, hence this.
    """
    rate, n, ch = _check_rate(f.samplerate), int(f.frames), int(f.channels)
    if rate == SAMPLE_RATE:
        res, orig_r, new_r, width = None, 1, 1, 0
    else:
        res = _resampler(rate, SAMPLE_RATE)
        orig_r, new_r, width = rate // res.gcd, SAMPLE_RATE // res.gcd, int(res.width)
    target = resampled_length(n, rate)
    out = np.empty(target, dtype=np.float32)
    num_frames = -(-target // new_r)  # conv output frames of new_r samples each
    per_block = max(1, BLOCK_SECONDS * rate // orig_r)
    context = -(-width // orig_r) + 1  # frames of input context on each side
    peak, any_raw, any_mono = 0.0, False, False
    for k0 in range(0, num_frames, per_block):
        k1 = min(num_frames, k0 + per_block)
        start = max(0, (k0 - context) * orig_r)
        stop = min(n, (k1 + context) * orig_r + width)
        f.seek(start)
        seg = f.read(stop - start, dtype="float32", always_2d=True)
        if seg.shape[0] != stop - start:
            raise ValueError(f"{name} ends at sample {start + seg.shape[0]} although its header "
                             f"says {n}; the file is truncated: re-encode or re-download it")
        finite = np.isfinite(seg)
        if not finite.all():
            first = start + int(np.flatnonzero(~finite.all(axis=1))[0])
            raise ValueError(f"{name} contains non-finite values (NaN or Inf), the first at "
                             f"sample {first}; clean it first, e.g. np.nan_to_num(wav)")
        if seg.size:
            peak = max(peak, float(np.abs(seg).max()))
            any_raw = any_raw or bool(np.any(seg))
        mono = seg[:, 0] if ch == 1 else seg.mean(axis=1, dtype=np.float64).astype(np.float32)
        any_mono = any_mono or bool(np.any(mono))
        if res is not None:
            with torch.no_grad():
                mono = res(torch.from_numpy(np.ascontiguousarray(mono))).numpy()
        a = k0 * new_r
        b = min(k1 * new_r, target)
        off = a - start // orig_r * new_r
        out[a:b] = mono[off: off + (b - a)]
    if not allow_silence and not any_raw:
        raise ValueError(f"{name} is all zeros ({n} samples of silence); check that the audio "
                         "decoded correctly, or pass allow_silence=True if silence is intended")
    if not allow_silence and not any_mono:
        raise ValueError(
            f"{name} becomes all zeros when its channels are averaged to mono (the channels "
            "cancel out: anti-phase stereo); pick one channel or pass allow_silence=True if "
            "silence is intended")
    if peak > 1.0 + 1e-6:
        warnings.warn(f"{name} peaks at {peak:.4g} > 1; float audio is expected in [-1, 1] "
                      "(if it holds int16 values, divide by 32768)", stacklevel=3)
    return out


def batch_wavs(
    wavs: Sequence[ArrayLike], *, allow_silence: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D 16 kHz waveforms into the s3prl upstream input.

    Args:
        wavs: a list (or tuple) of ``(num_samples_i,)`` waveforms, numpy arrays or
            torch tensors, float in [-1, 1] or int16/int32 PCM, already at 16 kHz
            (use :func:`prepare_wav` or :func:`load_audio` first).
        allow_silence: accept all-zero waveforms instead of raising.

    Returns:
        ``(wavs, wavs_len)``: ``wavs`` ``(batch_size, max_num_samples, 1)`` float32
        zero-padded, ``wavs_len`` ``(batch_size,)`` long. The tensors are on the
        device of the inputs when all inputs are tensors on one device, else on CPU.
    """
    if isinstance(wavs, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"wavs must be a list of 1-D waveforms, got a single {type(wavs).__name__} of "
            f"shape {tuple(wavs.shape)}; for one waveform use batch_wavs([wav]), for the "
            "rows of a 2-D array batch_wavs(list(wavs))"
        )
    if isinstance(wavs, (str, bytes, dict)) or not isinstance(wavs, (list, tuple)):
        raise TypeError(
            f"wavs must be a list of 1-D waveforms (numpy arrays or torch tensors), "
            f"got {type(wavs).__name__}"
        )
    if len(wavs) == 0:
        raise ValueError("wavs is an empty list; give at least one waveform")
    devices = {w.device for w in wavs if isinstance(w, torch.Tensor)}
    all_tensors = all(isinstance(w, torch.Tensor) for w in wavs)
    device = devices.pop() if all_tensors and len(devices) == 1 else torch.device("cpu")
    arrays: List[np.ndarray] = []
    for i, w in enumerate(wavs):
        name = f"wavs[{i}]"
        arr = _as_numpy(w, name)
        if arr.ndim != 1:
            raise ValueError(
                f"{name} must be 1-D (num_samples,), got shape {tuple(arr.shape)}; convert "
                "with s3viz.audio.prepare_wav(wav, sample_rate) (mono, 16 kHz) first"
            )
        arr = _to_float32(arr, name)
        _check_values(arr, name, allow_silence)
        arrays.append(arr)
    lengths = [a.shape[0] for a in arrays]
    out = np.zeros((len(arrays), max(lengths), 1), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0], 0] = a
    wavs_t = torch.from_numpy(out)
    wavs_len = torch.tensor(lengths, dtype=torch.long)
    if device.type != "cpu":
        wavs_t, wavs_len = wavs_t.to(device), wavs_len.to(device)
    return wavs_t, wavs_len
