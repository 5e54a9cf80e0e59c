"""Frame arithmetic: how waveform lengths become frame counts, and where frames sit in time.

Every formula in s3viz that predicts a frame count or a frame's position lives
here; other modules call these functions instead of re-deriving lengths. The
upstream's own ``all_hs_len`` is the truth that these formulas try to predict.

Conventions for a waveform of ``L`` samples and a downsample rate ``r``:

========  ===========================  =====================================
name      frames                       used by
========  ===========================  =====================================
``ceil``  ``(L - 1) // r + 1``         s3prl's ``S3PRLUpstream`` (padding)
``round`` ``round(L / r)``             s3prl's legacy featurizer
``floor`` ``L // r``                   most label-rate arithmetic
``conv``  per layer ``(L - k) // s + 1``  exact convolution stacks (wav2vec2:
                                       ``(L - 400) // 320 + 1``)
========  ===========================  =====================================
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch

__all__ = [
    "CONVENTIONS",
    "WAV2VEC2_CONV_LAYERS",
    "expected_lengths",
    "conv_lengths",
    "receptive_field",
    "frame_timeline",
    "frame_labels",
]

CONVENTIONS = ("ceil", "round", "floor", "conv")

WAV2VEC2_CONV_LAYERS: Tuple[Tuple[int, int], ...] = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
"""(kernel_size, stride) of the wav2vec2 / HuBERT / WavLM convolutional feature encoder."""

ConvLayers = Sequence[Tuple[int, int]]


def _as_long(wavs_len, name: str = "wavs_len") -> torch.Tensor:
    if isinstance(wavs_len, torch.Tensor):
        t = wavs_len
    else:
        t = torch.as_tensor(np.asarray(wavs_len))
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        if t.is_floating_point() and torch.all(t == t.round()):
            t = t.long()
        else:
            raise TypeError(f"{name} must hold integer sample counts, got dtype {t.dtype}")
    t = t.long()
    if (t < 0).any():
        raise ValueError(f"{name} must be non-negative, got min {int(t.min())}")
    return t


def _check_rate(rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"rate must be a positive int (samples per frame), got {rate!r}")
    return int(rate)


def _check_conv_layers(conv_layers) -> Tuple[Tuple[int, int], ...]:
    try:
        layers = tuple((int(k), int(s)) for k, s in conv_layers)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "conv_layers must be a sequence of (kernel_size, stride) pairs, "
            f"e.g. s3viz.align.WAV2VEC2_CONV_LAYERS; got {conv_layers!r}"
        ) from e
    if not layers or any(k <= 0 or s <= 0 for k, s in layers):
        raise ValueError(f"conv_layers needs positive (kernel_size, stride) pairs, got {layers!r}")
    return layers


def conv_lengths(wavs_len, conv_layers: ConvLayers = WAV2VEC2_CONV_LAYERS) -> torch.Tensor:
    """Exact output lengths of an unpadded convolution stack.

    Args:
        wavs_len: ``(batch_size,)`` input lengths in samples (tensor, array or list).
        conv_layers: ``(kernel_size, stride)`` per convolution, in order.

    Returns:
        ``(batch_size,)`` long: ``L -> (L - k) // s + 1`` applied layer by layer,
        clamped at 0 (an input shorter than the receptive field gives no frame).
    """
    n = _as_long(wavs_len)
    for k, s in _check_conv_layers(conv_layers):
        n = torch.where(n >= k, torch.div(n - k, s, rounding_mode="floor") + 1, torch.zeros_like(n))
    return n


def receptive_field(conv_layers: ConvLayers = WAV2VEC2_CONV_LAYERS) -> Tuple[int, int]:
    """``(receptive_field, total_stride)`` in samples of a convolution stack (400, 320 for wav2vec2)."""
    rf, jump = 1, 1
    for k, s in _check_conv_layers(conv_layers):
        rf += (k - 1) * jump
        jump *= s
    return rf, jump


def expected_lengths(
    wavs_len,
    rate: int,
    convention: str = "ceil",
    *,
    conv_layers: Optional[ConvLayers] = None,
) -> torch.Tensor:
    """Frame counts predicted by a length convention.

    Args:
        wavs_len: ``(batch_size,)`` waveform lengths in samples.
        rate: downsample rate in samples per frame (ignored by ``conv`` except as a check).
        convention: one of :data:`CONVENTIONS`.
        conv_layers: ``(kernel_size, stride)`` pairs for ``conv``; defaults to
            :data:`WAV2VEC2_CONV_LAYERS`.

    Returns:
        ``(batch_size,)`` long frame counts.
    """
    n = _as_long(wavs_len)
    rate = _check_rate(rate)
    if convention == "ceil":
        return torch.where(n > 0, torch.div(n - 1, rate, rounding_mode="floor") + 1, n)
    if convention == "round":
        # Python's round() (half to even), as s3prl's legacy featurizer used it.
        return torch.round(n.double() / rate).long()
    if convention == "floor":
        return torch.div(n, rate, rounding_mode="floor")
    if convention == "conv":
        layers = WAV2VEC2_CONV_LAYERS if conv_layers is None else conv_layers
        return conv_lengths(n, layers)
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def frame_timeline(
    rate_or_upstream: Union[int, object],
    wav_len: int,
    *,
    layer: Optional[int] = None,
    num_frames: Optional[int] = None,
    receptive_field_samples: Optional[int] = None,
) -> pd.DataFrame:
    """Where each frame of a layer sits in the waveform.

    Args:
        rate_or_upstream: a downsample rate in samples, or an upstream (its
            ``downsample_rates[layer]`` and, when it has them,
            ``receptive_fields[layer]`` are used).
        wav_len: waveform length in samples.
        layer: layer index when an upstream is given (default 0).
        num_frames: the actual number of frames (e.g. from ``all_hs_len``); by
            default the ``ceil`` convention, or ``conv`` arithmetic when a
            receptive field larger than the rate is known.
        receptive_field_samples: the input window of one frame; defaults to the
            rate (non-overlapping frames).

    Returns:
        DataFrame with one row per frame: ``frame, start, center, end`` in samples
        (``end`` exclusive; the receptive field ``[start, end)`` clipped to the
        waveform) and ``start_s, center_s, end_s`` in seconds.
    """
    rf = receptive_field_samples
    if isinstance(rate_or_upstream, (int, np.integer)) and not isinstance(rate_or_upstream, bool):
        rate = _check_rate(rate_or_upstream)
    else:
        up = rate_or_upstream
        rates = getattr(up, "downsample_rates", None)
        if rates is None:
            raise TypeError(
                "rate_or_upstream must be a positive int rate or an upstream with "
                f"'downsample_rates', got {type(up).__name__}"
            )
        layer = 0 if layer is None else int(layer)
        if not 0 <= layer < len(rates):
            raise IndexError(f"layer must be in [0, {len(rates)}), got {layer}")
        rate = _check_rate(rates[layer])
        if rf is None:
            fields = getattr(up, "receptive_fields", None)
            if fields is not None:
                rf = int(fields[layer])
    rf = rate if rf is None else int(rf)
    if rf <= 0:
        raise ValueError(f"receptive_field_samples must be positive, got {rf}")
    wav_len = int(_as_long([wav_len], "wav_len")[0])
    if num_frames is None:
        if rf > rate:
            num_frames = max(0, (wav_len - rf) // rate + 1) if wav_len >= rf else 0
        else:
            num_frames = int(expected_lengths([wav_len], rate, "ceil")[0])
    idx = np.arange(int(num_frames), dtype=np.int64)
    start = idx * rate
    end = np.minimum(start + rf, wav_len)
    center = start + rf / 2.0
    df = pd.DataFrame({"frame": idx, "start": start, "center": center, "end": end})
    for col in ("start", "center", "end"):
        df[f"{col}_s"] = df[col] / 16000.0
    return df


def frame_labels(
    phones: pd.DataFrame,
    num_frames: int,
    rate: int,
    *,
    column: str = "phone",
    receptive_field_samples: Optional[int] = None,
    fill: str = "",
) -> np.ndarray:
    """Label each frame with the segment that covers the frame's centre sample.

    Args:
        phones: alignment table with ``start``, ``end`` (samples) and ``column``.
        num_frames: frames of the layer (the upstream's own length).
        rate: the layer's downsample rate in samples.
        column: which column of ``phones`` gives the label.
        receptive_field_samples: as in :func:`frame_timeline`.
        fill: label of frames whose centre no segment covers.

    Returns:
        ``(num_frames,)`` object array of labels.
    """
    if column not in phones.columns:
        raise KeyError(
            f"alignment table has no column {column!r}; available: {list(phones.columns)}"
        )
    rate = _check_rate(rate)
    rf = rate if receptive_field_samples is None else int(receptive_field_samples)
    centers = np.arange(int(num_frames), dtype=np.float64) * rate + rf / 2.0
    out = np.full(int(num_frames), fill, dtype=object)
    if len(phones) == 0 or num_frames == 0:
        return out
    order = np.argsort(phones["start"].to_numpy(), kind="stable")
    starts = phones["start"].to_numpy()[order].astype(np.float64)
    ends = phones["end"].to_numpy()[order].astype(np.float64)
    labels = phones[column].to_numpy()[order]
    pos = np.searchsorted(starts, centers, side="right") - 1
    ok = (pos >= 0) & (centers < ends[np.clip(pos, 0, None)])
    out[ok] = labels[pos[ok]]
    return out
