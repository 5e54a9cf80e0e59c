"""Audio in: load, mono, 16 kHz, validate, and batch into the s3prl ``wavs, wavs_len`` pair.

Every waveform enters s3viz here, so conversions happen once. How sample formats, channels
and files are read: ``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import os
import unicodedata
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import soxr
import torch

from .interface import SAMPLE_RATE

__all__ = ["load_audio", "audio_file_length", "to_mono", "resample", "prepare_wav", "batch_wavs",
           "MAX_CHANNELS"]

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
        return (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()
    if isinstance(wav, (np.ndarray, np.generic)):
        return np.asarray(wav)
    if isinstance(wav, (list, tuple)):
        try:
            arr = np.asarray(wav)
        except ValueError as e:
            raise TypeError(f"{name} must be a rectangular array of numbers: {e}") from e
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise TypeError(f"{name} must hold numbers, got a list of {arr.dtype} values")
        return arr
    hint = ("; to read a file use s3viz.audio.load_audio(path)"
            if isinstance(wav, (str, bytes, os.PathLike)) else "")
    raise TypeError(f"{name} must be a numpy array or torch tensor of samples, got "
                    f"{type(wav).__name__}{hint}")


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
            "values, or wav / 32768 as float)")
    raise TypeError(
        f"{name} has dtype {dt}; audio samples must be float (in [-1, 1]) or int16/int32 PCM")


def _refuse_silence(name: str, n: int, *, mono: bool = False):
    if mono:  # channels that cancel out (anti-phase stereo) average to silence
        raise ValueError(
            f"{name} becomes all zeros when its channels are averaged to mono (the channels "
            "cancel out: anti-phase stereo); pick one channel (e.g. wav[:, 0]) or pass "
            "allow_silence=True if silence is intended")
    raise ValueError(f"{name} is all zeros ({n} samples of silence); check that the audio "
                     "decoded correctly, or pass allow_silence=True if silence is intended")


def _warn_peak(name: str, peak: float, stacklevel: int) -> None:
    if peak > 1.0 + 1e-6:
        warnings.warn(f"{name} peaks at {peak:.4g} > 1; float audio is expected in [-1, 1] "
                      "(if it holds int16 values, divide by 32768)", stacklevel=stacklevel + 1)


def _check_values(wav: np.ndarray, name: str, allow_silence: bool) -> None:
    """Refuse empty, non-finite and (unless allowed) all-zero float32 waveforms."""
    if wav.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(wav.shape)}, 0 samples); check the "
                         "file or the slice that produced it")
    finite = np.isfinite(wav)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1))
        nan, inf = np.isnan(wav).any(), np.isinf(wav).any()
        kinds = "NaN and Inf" if nan and inf else "NaN" if nan else "Inf"
        raise ValueError(
            f"{name} contains {bad.size} non-finite value(s) ({kinds}), first at flat index "
            f"{int(bad[0])}; clean it first, e.g. np.nan_to_num(wav)")
    if not allow_silence and not np.any(wav):
        _refuse_silence(name, wav.size)
    _warn_peak(name, float(np.abs(wav).max()), stacklevel=3)


def _shape_error(name: str, shape, fix: str):
    raise ValueError(f"{name} must be 1-D (num_samples,) or 2-D (num_samples, channels) / "
                     f"(channels, num_samples), got shape {tuple(shape)}; {fix}")


def to_mono(wav: ArrayLike, *, channels_first: Optional[bool] = None, name: str = "wav"):
    """Average the channels of a ``(num_samples, channels)`` or ``(channels, num_samples)``
    waveform (``channels_first=None``: the shorter axis); 1-D comes back unchanged.

    Returns:
        ``(num_samples,)``, of the same kind (numpy/torch) and device as ``wav``.
        Channels are averaged in float64; integer PCM comes back as float32 in [-1, 1].
    """
    is_tensor = isinstance(wav, torch.Tensor)
    arr = _as_numpy(wav, name)
    if arr.ndim == 1:
        return wav if is_tensor else arr
    if arr.ndim != 2:
        _shape_error(name, arr.shape, "for a batch of waveforms use "
                     "s3viz.audio.batch_wavs([wav, ...])")
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
            "channels_first=True for (channels, num_samples) or False for (num_samples, channels)")
    axis = 0 if rows < cols else 1
    if shape[axis] > MAX_CHANNELS:
        raise ValueError(
            f"{name} has shape {tuple(shape)}: {shape[axis]} channels is not plausible audio "
            f"(at most {MAX_CHANNELS}); if this is a batch of waveforms use "
            "s3viz.audio.batch_wavs(list_of_1d_waveforms)")
    return axis


def _check_rate(sample_rate, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a positive int in Hz, got {sample_rate!r}")
    if not np.isfinite(sample_rate) or sample_rate <= 0 or int(sample_rate) != sample_rate:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)


RESAMPLE_QUALITY = "HQ"
"""The libsoxr quality every resampling in s3viz uses (20-bit precision, linear phase)."""


class _Resampler:
    """s3viz's one resampler (libsoxr's stream): a mono signal fed in consecutive blocks
    gives the whole signal's output. It has :func:`resampled_length` samples, ``ceil(n * new
    / orig)`` (soxr alone rounds): the last block is followed by zeros and the output cut."""

    def __init__(self, orig: int, new: int):
        self.orig, self.new, self.n_in, self.n_out = orig, new, 0, 0
        self.stream = None if orig == new else soxr.ResampleStream(
            orig, new, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        self.n_in += block.shape[0]
        out = block if self.stream is None else self.stream.resample_chunk(block, last=False)
        if last and self.stream is not None:
            pad = np.zeros(-(-self.orig // self.new) + 1, dtype=np.float32)
            out = np.concatenate([out, self.stream.resample_chunk(pad, last=True)])
        want = resampled_length(self.n_in, self.orig, self.new) - self.n_out
        out = out[:want] if last else out[: max(0, want)]
        self.n_out += out.shape[0]
        return out


def resample(wav: ArrayLike, orig_sample_rate: int, new_sample_rate: int = SAMPLE_RATE):
    """Resample a mono ``(num_samples,)`` float waveform (numpy or torch) with libsoxr
    (quality ``"HQ"``), in time and memory linear in its length at any pair of rates.

    Returns:
        ``(ceil(num_samples * new / orig),)`` float32, of the same kind as ``wav``.
    """
    orig = _check_rate(orig_sample_rate, "orig_sample_rate")
    new = _check_rate(new_sample_rate, "new_sample_rate")
    arr = _as_numpy(wav, "wav")
    if arr.ndim != 1:
        raise ValueError(f"wav must be 1-D (num_samples,) to resample, got shape "
                         f"{tuple(arr.shape)}; call s3viz.audio.to_mono first")
    out = _Resampler(orig, new)(_to_float32(arr, "wav"), last=True)
    return (torch.from_numpy(np.ascontiguousarray(out)).to(wav.device)
            if isinstance(wav, torch.Tensor) else out)


def resampled_length(num_samples: int, orig: int, new: int = SAMPLE_RATE) -> int:
    """Samples after :func:`resample`: ``ceil(num_samples * new / orig)``."""
    return -(-int(num_samples) * int(new) // int(orig))


def resample_many(wavs: List[np.ndarray], orig: int, new: int = SAMPLE_RATE) -> List[np.ndarray]:
    """:func:`resample` of each 1-D float32 waveform of ``wavs``."""
    orig, new = _check_rate(orig, "orig"), _check_rate(new, "new")
    return [resample(w, orig, new) for w in wavs]


def prepare_wav(wav: ArrayLike, sample_rate: int, *, channels_first: Optional[bool] = None,
                allow_silence: bool = False, name: str = "wav") -> np.ndarray:
    """Any in-memory waveform (numpy, torch or a list; 1-D or 2-D as :func:`to_mono` takes;
    float in [-1, 1] or int16/int32/int8/uint8 PCM) -> 1-D float32 numpy at 16 kHz.
    TypeError for non-audio types and dtypes, ValueError for empty, NaN/Inf, all-zero
    (unless allowed) input or a wrong rank."""
    rate = _check_rate(sample_rate)
    arr = _as_numpy(wav, name)
    if arr.ndim not in (1, 2):
        _shape_error(name, arr.shape, "for a batch of waveforms call prepare_wav on each "
                     "and then batch_wavs")
    arr = _to_float32(arr, name)
    _check_values(arr, name, allow_silence)
    mono = to_mono(arr, channels_first=channels_first, name=name)
    if not allow_silence and mono is not arr and not np.any(mono):
        _refuse_silence(name, mono.size, mono=True)
    out = resample(mono, rate, SAMPLE_RATE)
    if out.size == 0:
        raise ValueError(f"{name} has no samples left after resampling {rate} Hz to 16 kHz")
    return np.ascontiguousarray(out, dtype=np.float32)


BLOCK_SECONDS = 30
""":func:`load_audio` decodes, averages to mono and resamples about this many seconds at a time."""

_MPEG_FRAME = 1152


def load_audio(path: Union[str, os.PathLike], *, allow_silence: bool = False) -> np.ndarray:
    """An audio file as 1-D float32 mono at 16 kHz, equal to :func:`prepare_wav` of the whole
    file (decoded in blocks; its refusals: ``docs/data.md``)."""
    import soundfile as sf

    path = _find_audio_file(path)
    with _soundfile_call(path, sf.SoundFile, path) as f:
        name = f"audio file {path!r}"
        rate = _check_rate(f.samplerate, f"the sample rate of {path!r}")
        n, ch = int(f.frames), int(f.channels)
        if n <= 0:
            raise ValueError(f"{name} holds no samples (its header says {n} frames); re-create or "
                             "re-download it, or remove it")
        resampler = _Resampler(rate, SAMPLE_RATE)
        out = np.empty(resampled_length(n, rate), dtype=np.float32)
        # whole MPEG frames (384, 576 and 1152 divide 1152): libsndfile 1.2.2 decodes MP3
        # wrongly after a read that ends inside a frame (mono MPEG-2: up to 0.27 off)
        block = -(-max(1, BLOCK_SECONDS * rate) // _MPEG_FRAME) * _MPEG_FRAME
        done, filled, peak, any_raw, any_mono = 0, 0, 0.0, False, False
        while done < n:
            seg = _soundfile_call(path, f.read, min(block, n - done), dtype="float32",
                                  always_2d=True)
            if seg.shape[0] == 0:
                raise ValueError(f"{name} ends at sample {done} although its header says {n}; the "
                                 "file is truncated: re-encode or re-download it")
            finite = np.isfinite(seg)
            if not finite.all():
                first = done + int(np.flatnonzero(~finite.all(axis=1))[0])
                raise ValueError(f"{name} contains non-finite values (NaN or Inf), the first at "
                                 f"sample {first}; clean it first, e.g. np.nan_to_num(wav)")
            peak = max(peak, float(np.abs(seg).max()))
            any_raw = any_raw or bool(np.any(seg))
            mono = seg[:, 0] if ch == 1 else seg.mean(axis=1, dtype=np.float64).astype(np.float32)
            any_mono = any_mono or bool(np.any(mono))
            done += seg.shape[0]
            res = resampler(mono, last=done >= n)
            out[filled: filled + res.shape[0]] = res
            filled += res.shape[0]
        if not allow_silence and not any_mono:
            _refuse_silence(name, n, mono=any_raw)
        _warn_peak(name, peak, stacklevel=2)
        return out


def audio_file_length(path: Union[str, os.PathLike]) -> int:
    """Samples at 16 kHz that :func:`load_audio` gives for ``path``, from the file's
    header (no audio is decoded); errors as :func:`load_audio`'s."""
    import soundfile as sf

    path = _find_audio_file(path)
    info = _soundfile_call(path, sf.info, path)
    return resampled_length(info.frames, _check_rate(info.samplerate, f"the sample rate of {path!r}"))


def _soundfile_call(path: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` of soundfile on ``path``, its errors naming the file and fix."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, TypeError, ValueError, OSError) as e:  # LibsndfileError: RuntimeError
        with contextlib.suppress(OSError):  # (a ValueError raised here passes)
            if os.path.getsize(path) == 0:
                raise ValueError(f"audio file {path!r} is empty (0 bytes); re-create or "
                                 "re-download it, or remove it") from e
        if not os.access(path, os.R_OK):
            raise PermissionError(f"audio file {path!r} cannot be read: permission denied; "
                                  f"give read permission (chmod a+r {path!r})") from e
        raise ValueError(
            f"soundfile cannot read audio file {path!r} ({e}): it is not in a format libsndfile "
            "decodes (wav, flac, ogg, mp3, ...) or it is damaged; convert it to wav or flac, e.g. "
            "with ffmpeg -i in.m4a -ar 16000 -ac 1 out.wav") from e


def _find_audio_file(path) -> str:
    """``path`` checked to name a file (a name differing from a file's only in Unicode
    normalisation, NFC vs NFD, is reported as exactly that)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or Path), got {type(path).__name__}")
    path = os.fsdecode(os.fspath(path))
    if not os.path.exists(path):
        twin = _normalisation_twin(path)
        raise FileNotFoundError("audio file not found: " + (
            repr(path) if twin is None else unicode_mismatch(path, twin)))
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{path!r} is a folder; for a folder of audio files use s3viz.data.load_folder")
    return path


def unicode_mismatch(given: str, found: str) -> str:
    """The message for ``given``, naming no file, where ``found`` differs only in normalisation."""
    def form(s: str) -> str:
        return "/".join(f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, s)) or "mixed"

    return (f"{given!r} names no file, but {found!r} exists and differs from it only in Unicode "
            f"normalisation ({form(given)} vs {form(found)}: the same letters, accents written "
            "as one code point or as a letter plus a combining mark); rename the file or fix the "
            "name where it is written, e.g. unicodedata.normalize('NFC', name)")


def _normalisation_twin(path: str) -> Optional[str]:
    """The existing path whose parts equal ``path``'s up to Unicode normalisation, if one."""
    head, parts = path, []
    while True:
        head, tail = os.path.split(head)
        if not tail:
            break
        parts.append(tail)
    cur, changed = head, False  # head: "" (relative) or the root
    for part in reversed(parts):
        if not os.path.lexists(os.path.join(cur, part)):
            key = unicodedata.normalize("NFC", part)
            try:
                names = [e for e in os.listdir(cur or ".") if unicodedata.normalize("NFC", e) == key]
            except OSError:
                return None
            if len(names) != 1:
                return None
            part, changed = names[0], True
        cur = os.path.join(cur, part)
    return cur if changed and os.path.exists(cur) else None


def batch_wavs(wavs: Sequence[ArrayLike], *, allow_silence: bool = False,
               ids: Optional[Sequence[str]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a list of 1-D 16 kHz waveforms (numpy or torch, float in [-1, 1] or int16/
    int32 PCM) into the s3prl upstream input; ``ids`` (one per waveform) name them in errors.

    Returns:
        ``(wavs, wavs_len)``: ``wavs`` ``(batch_size, max_num_samples, 1)`` float32
        zero-padded, ``wavs_len`` ``(batch_size,)`` long. The tensors are on the
        device of the inputs when all inputs are tensors on one device, else on CPU.
    """
    if isinstance(wavs, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"wavs must be a list of 1-D waveforms, got a single {type(wavs).__name__} of "
            f"shape {tuple(wavs.shape)}; for one waveform use batch_wavs([wav]), for the "
            "rows of a 2-D array batch_wavs(list(wavs))")
    if not isinstance(wavs, (list, tuple)):
        raise TypeError(f"wavs must be a list of 1-D waveforms (numpy arrays or torch "
                        f"tensors), got {type(wavs).__name__}")
    if len(wavs) == 0:
        raise ValueError("wavs is an empty list; give at least one waveform")
    if ids is not None and (isinstance(ids, str) or len(ids) != len(wavs)):
        raise ValueError(f"ids must be a list of one utterance id per waveform ({len(wavs)}), "
                         f"got {ids!r}")
    names = ([f"wavs[{i}]" for i in range(len(wavs))] if ids is None
             else [f"utterance {u!r}" for u in ids])
    devices = {w.device for w in wavs if isinstance(w, torch.Tensor)}
    all_tensors = all(isinstance(w, torch.Tensor) for w in wavs)
    device = devices.pop() if all_tensors and len(devices) == 1 else torch.device("cpu")
    arrays: List[np.ndarray] = []
    for w, name in zip(wavs, names):
        arr = _as_numpy(w, name)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D (num_samples,), got shape {tuple(arr.shape)}; "
                             "convert with s3viz.audio.prepare_wav(wav, sample_rate) (mono, "
                             "16 kHz) first")
        arr = _to_float32(arr, name)
        _check_values(arr, name, allow_silence)
        arrays.append(arr)
    lengths = [a.shape[0] for a in arrays]
    out = np.zeros((len(arrays), max(lengths), 1), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0], 0] = a
    return torch.from_numpy(out).to(device), torch.tensor(lengths, dtype=torch.long).to(device)
