"""Frame arithmetic: how waveform lengths become frame counts, and where frames sit in time.

Every formula that predicts a frame count or a frame's position lives here; the upstream's
own ``all_hs_len`` is the truth :func:`length_report` measures them against. The
conventions and where s3prl uses each: ``docs/alignment.md``.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch

from ._device import eval_session
from ._device import resolve_device as _resolve_device
from .interface import SAMPLE_RATE, num_layer_of
from ._validate import layer_range

__all__ = ["CONVENTIONS", "WAV2VEC2_CONV_LAYERS", "expected_lengths", "conv_lengths",
           "receptive_field", "frame_timeline", "frame_labels", "frame_values", "length_report",
           "summarize_lengths"]

CONVENTIONS = ("ceil", "round", "floor", "conv")

WAV2VEC2_CONV_LAYERS: Tuple[Tuple[int, int], ...] = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
"""(kernel_size, stride) of the wav2vec2 / HuBERT / WavLM convolutional feature encoder."""

ConvLayers = Sequence[Tuple[int, int]]

DEFAULT_WAV_LENGTHS = range(400, 400 + 7 * 640 + 1, 7)
"""Default sweep of :func:`length_report`: 641 lengths, step 7 (coprime with every
power-of-two rate), so every remainder modulo 320 and 640 is visited once."""


def _as_long(wavs_len, name: str = "wavs_len", least: int = 0) -> torch.Tensor:
    """``wavs_len`` as a long tensor of sample counts ``>= least`` (whole floats accepted)."""
    t = wavs_len if isinstance(wavs_len, torch.Tensor) else torch.as_tensor(np.array(wavs_len))
    if t.dtype == torch.bool or t.is_complex() or (
            t.is_floating_point() and not torch.all(t == t.round())):
        raise TypeError(f"{name} must hold integer sample counts, got dtype {t.dtype}")
    t = t.long()
    if (t < least).any():
        raise ValueError(f"{name} must be {'non-negative' if least == 0 else 'positive'}, got "
                         f"min {int(t.min())}")
    return t


def _check_rate(rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"rate must be a positive int (samples per frame), got {rate!r}")
    return int(rate)


def _check_conv_layers(conv_layers) -> Tuple[Tuple[int, int], ...]:
    try:
        layers = tuple((int(k), int(s)) for k, s in conv_layers)
    except (TypeError, ValueError) as e:
        raise ValueError("conv_layers must be a sequence of (kernel_size, stride) pairs, "
                         f"e.g. s3viz.align.WAV2VEC2_CONV_LAYERS; got {conv_layers!r}") from e
    if not layers or any(k <= 0 or s <= 0 for k, s in layers):
        raise ValueError(f"conv_layers needs positive (kernel_size, stride) pairs, got {layers!r}")
    return layers


def conv_lengths(wavs_len, conv_layers: ConvLayers = WAV2VEC2_CONV_LAYERS) -> torch.Tensor:
    """Exact output lengths of an unpadded convolution stack: ``L -> (L - k) // s + 1``
    layer by layer, clamped at 0 (an input shorter than the receptive field gives no frame).
    """
    n = _as_long(wavs_len)
    for k, s in _check_conv_layers(conv_layers):
        n = torch.where(n >= k, torch.div(n - k, s, rounding_mode="floor") + 1, torch.zeros_like(n))
    return n


def receptive_field(conv_layers: ConvLayers = WAV2VEC2_CONV_LAYERS) -> Tuple[int, int]:
    """``(receptive_field, total_stride)`` in samples of a convolution stack (``(400, 320)``
    for :data:`WAV2VEC2_CONV_LAYERS`)."""
    rf, jump = 1, 1
    for k, s in _check_conv_layers(conv_layers):
        rf += (k - 1) * jump
        jump *= s
    return rf, jump


def expected_lengths(wavs_len, rate: int, convention: str = "ceil", *,
                     conv_layers: Optional[ConvLayers] = None) -> torch.Tensor:
    """``(batch_size,)`` long frame counts (on ``wavs_len``'s device) that a convention of
    :data:`CONVENTIONS` predicts; for ``conv`` (``conv_layers`` default
    :data:`WAV2VEC2_CONV_LAYERS`) ``rate`` must equal the stack's total stride.

    Example:
        >>> expected_lengths([400, 480, 640, 641], 320, "round").tolist()
        [1, 2, 2, 2]
    """
    n = _as_long(wavs_len)
    rate = _check_rate(rate)
    if convention == "ceil":
        return torch.where(n > 0, torch.div(n - 1, rate, rounding_mode="floor") + 1, n)
    if convention == "round":
        # Python's round() on the float quotient (half to even), as s3prl's legacy
        # featurizer does; float64 division of ints below 2**53 is exact to the ulp.
        return torch.round(n.double() / rate).long()
    if convention == "floor":
        return torch.div(n, rate, rounding_mode="floor")
    if convention == "conv":
        layers = WAV2VEC2_CONV_LAYERS if conv_layers is None else conv_layers
        _, stride = receptive_field(layers)
        if stride != rate:
            raise ValueError(f"conv_layers have a total stride of {stride} samples but "
                             f"rate={rate}; pass the conv_layers of this layer (or the "
                             "matching rate)")
        return conv_lengths(n, layers)
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def optional_attr(obj, name: str):
    """``getattr(obj, name, None)`` that also treats NotImplementedError as absent."""
    try:
        return getattr(obj, name)
    except (AttributeError, NotImplementedError):
        return None


def upstream_rates(upstream) -> List[int]:
    rates = optional_attr(upstream, "downsample_rates")
    if rates is None:
        raise TypeError(f"upstream ({type(upstream).__name__}) has no 'downsample_rates'; it "
                        "must give the samples per frame of each hidden state (s3prl interface)")
    return [_check_rate(int(r)) for r in rates]


def _upstream_conv_layers(upstream) -> Optional[Tuple[Tuple[int, int], ...]]:
    conv = optional_attr(upstream, "conv_layers")
    return None if conv is None else _check_conv_layers(conv)


def layer_geometry(upstream, layer: int) -> Tuple[int, int, Optional[Tuple[Tuple[int, int], ...]]]:
    """``(rate, receptive_field, conv_layers or None)`` of one layer of an upstream;
    ``conv_layers`` only when its total stride equals the layer's rate."""
    rates = upstream_rates(upstream)
    if not 0 <= layer < len(rates):
        raise IndexError(f"layer must be in [0, {len(rates)}), got {layer}")
    rate = rates[layer]
    conv = _upstream_conv_layers(upstream)
    if conv is not None and receptive_field(conv)[1] != rate:
        conv = None
    fields = optional_attr(upstream, "receptive_fields")
    rf = int(fields[layer]) if fields is not None else (
        receptive_field(conv)[0] if conv is not None else rate)
    return rate, rf, conv


def frame_timeline(rate_or_upstream: Union[int, object], wav_len: int, *,
                   layer: Optional[int] = None, num_frames: Optional[int] = None,
                   receptive_field_samples: Optional[int] = None,
                   conv_layers: Optional[ConvLayers] = None) -> pd.DataFrame:
    """Where each frame of a layer sits in the waveform.

    Frame ``k`` looks at the receptive field ``[k * rate, k * rate + rf)`` and
    is centred at ``k * rate + rf / 2``. Each frame also owns a *cell*: the
    samples nearer to its centre than to any other frame's centre, inside the
    span that some receptive field reaches. Cells tile ``[0, rf_end of the last
    frame)`` without gaps or overlaps; they are the frame boundaries to draw.

    Args:
        rate_or_upstream: a downsample rate in samples, or an upstream (its
            ``downsample_rates[layer]``, ``receptive_fields[layer]`` and
            ``conv_layers`` are used when it has them; ``layer`` default 0).
        num_frames: default: the ``conv`` arithmetic when a convolution stack is known,
            ``(L - rf) // rate + 1`` when the receptive field exceeds the rate, else
            ``ceil``. ``receptive_field_samples`` defaults to the upstream's, the conv
            stack's, or the rate; ``conv_layers`` overrides the upstream's.

    Returns:
        DataFrame with one row per frame: ``frame``; ``start, end`` (the cell,
        samples, ``end`` exclusive), ``center`` (float samples), ``rf_start,
        rf_end`` (receptive field clipped to the waveform) and the same in
        seconds (``start_s, center_s, end_s, rf_start_s, rf_end_s``).
        ``df.attrs`` holds ``rate``, ``receptive_field``, ``wav_len``, ``layer``.
    """
    rf, conv, given = receptive_field_samples, None, rate_or_upstream
    if isinstance(given, (int, np.integer)) and not isinstance(given, bool):
        rate = _check_rate(given)
    elif optional_attr(given, "downsample_rates") is None:
        plain = isinstance(given, (float, str, bool)) or given is None
        raise TypeError("rate_or_upstream must be a positive int rate or an upstream with "
                        f"'downsample_rates', got {repr(given) if plain else type(given).__name__}")
    else:
        layer = 0 if layer is None else int(layer)
        rate, up_rf, conv = layer_geometry(rate_or_upstream, layer)
        rf = up_rf if rf is None else rf
    if conv_layers is not None:
        conv = _check_conv_layers(conv_layers)
        if receptive_field(conv)[1] != rate:
            raise ValueError(f"conv_layers have a total stride of {receptive_field(conv)[1]} "
                             f"but the rate is {rate}; pass the convolution stack of this layer")
    if rf is None:
        rf = receptive_field(conv)[0] if conv is not None else rate
    rf = int(rf)
    if rf <= 0:
        raise ValueError(f"receptive_field_samples must be positive, got {rf}")
    wav_len = int(_as_long([wav_len], "wav_len")[0])
    if num_frames is None:
        if conv is not None:
            num_frames = int(conv_lengths([wav_len], conv)[0])
        elif rf > rate:
            num_frames = (wav_len - rf) // rate + 1 if wav_len >= rf else 0
        else:
            num_frames = int(expected_lengths([wav_len], rate, "ceil")[0])
    num_frames = int(num_frames)
    if num_frames < 0:
        raise ValueError(f"num_frames must be non-negative, got {num_frames}")
    idx = np.arange(num_frames, dtype=np.int64)
    rf_start = idx * rate
    rf_end = np.minimum(rf_start + rf, wav_len)
    rf_start_c = np.minimum(rf_start, wav_len)
    center = rf_start + rf / 2.0
    # cell boundaries: midpoints between neighbouring centres
    bounds = rf_start[:-1] + (rf + rate) // 2
    start = np.concatenate([[0], bounds]).astype(np.int64)[:num_frames]
    end = np.concatenate([bounds, [rf_end[-1] if num_frames else 0]]).astype(np.int64)[:num_frames]
    start = np.minimum(start, wav_len)
    end = np.maximum(np.minimum(end, wav_len), start)
    df = pd.DataFrame({"frame": idx, "start": start, "center": center, "end": end,
                       "rf_start": rf_start_c, "rf_end": rf_end})
    for col in ("start", "center", "end", "rf_start", "rf_end"):
        df[f"{col}_s"] = df[col] / float(SAMPLE_RATE)
    df.attrs.update({"rate": rate, "receptive_field": rf, "wav_len": wav_len, "layer": layer})
    return df


def _covering_rows(table: pd.DataFrame, num_frames: int, rate, receptive_field_samples,
                   what: str, column: str) -> tuple:
    """``(order, pos, ok)``: the table's rows sorted by ``start`` (``order``), and for each
    frame ``k`` the sorted row whose ``[start, end)`` covers its centre ``k * rate + rf / 2``
    (``pos[ok]``; ``ok`` False where none does). The one lookup of :func:`frame_labels` and
    :func:`frame_values`."""
    if column not in table.columns:
        raise KeyError(f"{what} table has no column {column!r}; available: "
                       f"{list(table.columns)}")
    rate = _check_rate(rate)
    rf = rate if receptive_field_samples is None else int(receptive_field_samples)
    centers = np.arange(int(num_frames), dtype=np.float64) * rate + rf / 2.0
    order = np.argsort(table["start"].to_numpy(), kind="stable")
    if len(table) == 0 or num_frames == 0:
        return order, np.zeros(int(num_frames), np.int64), np.zeros(int(num_frames), bool)
    starts = table["start"].to_numpy()[order].astype(np.float64)
    ends = table["end"].to_numpy()[order].astype(np.float64)
    pos = np.searchsorted(starts, centers, side="right") - 1
    ok = (pos >= 0) & (centers < ends[np.clip(pos, 0, None)])
    return order, pos, ok


def frame_labels(phones: pd.DataFrame, num_frames: int, rate: int, *, column: str = "phone",
                 receptive_field_samples: Optional[int] = None, fill: str = "") -> np.ndarray:
    """``(num_frames,)`` object array: each frame's label (``phones[column]``) of the segment
    covering its centre ``k * rate + rf / 2`` (as in :func:`frame_timeline`).

    Args:
        fill: label of frames whose centre no segment covers.
    """
    order, pos, ok = _covering_rows(phones, num_frames, rate, receptive_field_samples,
                                    "alignment", column)
    out = np.full(int(num_frames), fill, dtype=object)
    out[ok] = phones[column].to_numpy()[order][pos[ok]]
    return out


def frame_values(table: pd.DataFrame, num_frames: int, rate: int, *, column: str,
                 receptive_field_samples: Optional[int] = None) -> np.ndarray:
    """``(num_frames,)`` float64 array: each frame's value of ``table[column]`` (a track
    table, :func:`s3viz.data.add_acoustic_tracks`) in the row covering its centre
    ``k * rate + rf / 2``, the convention of :func:`frame_labels`; NaN where no row
    covers the centre or the value is undefined (NaN: an unvoiced frame's ``f0``).

    ``table`` is checked first as a corpus or store checks it
    (:func:`s3viz.data.tracks.check_track_table`): integer ``start, end``, rows sorted
    and not overlapping (a later row would shadow part of an earlier one), float value
    columns without inf; anything else is refused.

    Args:
        table: rows with ``start, end`` (16 kHz samples, ``end`` exclusive) and ``column``.
    """
    from .data.tracks import check_track_table

    if isinstance(table, pd.DataFrame) and column not in table.columns:
        raise KeyError(f"track table has no column {column!r}; available: "
                       f"{list(table.columns)}")
    table = check_track_table(table, None, "frame_values(table=...)")
    return checked_frame_values(table, num_frames, rate, column=column,
                                receptive_field_samples=receptive_field_samples)


def checked_frame_values(table: pd.DataFrame, num_frames: int, rate: int, *, column: str,
                         receptive_field_samples: Optional[int] = None) -> np.ndarray:
    """:func:`frame_values` of a table :func:`s3viz.data.tracks.check_track_table` has
    already accepted (a corpus's or a store's tables), without checking it again."""
    order, pos, ok = _covering_rows(table, num_frames, rate, receptive_field_samples,
                                    "track", column)
    values = table[column].to_numpy(dtype=np.float64)[order]
    out = np.full(int(num_frames), np.nan, dtype=np.float64)
    out[ok] = values[pos[ok]]
    return out


def length_report(upstream, wav_lengths: Iterable[int] = DEFAULT_WAV_LENGTHS, *, device=None,
                  batch_size: int = 32, seed: int = 0) -> pd.DataFrame:
    """Run an upstream over a sweep of input lengths; compare its frame counts with each convention.

    The upstream is run in ``eval`` mode under ``torch.inference_mode`` on
    batches of random waveforms (zero-padded, longest first); its own
    ``all_hs_len`` is the truth. Its training flag is restored afterwards.

    Args:
        wav_lengths: input lengths in samples (duplicates are dropped, sorted).
        device: ``None``: where the upstream's parameters are (or cuda when available for
            parameterless upstreams); another device moves it there and back.

    Returns:
        DataFrame, one row per layer and input length: ``layer, wav_len, rate,
        frames`` (the upstream's ``all_hs_len``), ``expected_<c>`` and ``diff_<c> = frames -
        expected_<c>`` for ``c`` in ``ceil, round, floor`` and, when the upstream has
        ``conv_layers``, ``conv`` (nullable ints: ``<NA>`` for layers whose rate is not the
        stack's stride). ``report.attrs["summary"]`` is a short text naming the convention each
        group of layers follows and the worst mismatch; :func:`summarize_lengths` gives the same
        as a table.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not callable(upstream):
        raise TypeError(f"upstream must be callable (an AbsUpstream), got "
                        f"{type(upstream).__name__}")
    try:
        lengths = np.asarray(list(wav_lengths))
    except TypeError as e:
        raise TypeError("wav_lengths must be an iterable of ints, e.g. range(400, 4000, 7); "
                        f"got {wav_lengths!r}") from e
    if lengths.size == 0:
        raise ValueError("wav_lengths is empty; pass e.g. range(400, 4000, 7)")
    if lengths.ndim != 1 or lengths.dtype.kind not in "iuf":
        raise TypeError(f"wav_lengths must be integer sample counts, got {lengths.dtype} "
                        f"{lengths.shape}")
    lengths = np.unique(_as_long(lengths, "wav_lengths", least=1).numpy())
    rates = upstream_rates(upstream)
    num_layer = num_layer_of(upstream)
    if len(rates) != num_layer:
        raise ValueError(f"upstream.downsample_rates has {len(rates)} entries but num_layer is "
                         f"{num_layer}")
    conv = _upstream_conv_layers(upstream)
    frames = np.zeros((num_layer, lengths.size), dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    gen = torch.Generator().manual_seed(int(seed))

    def batches():
        for b0 in range(0, lengths.size, batch_size):
            pos = order[b0 : b0 + batch_size]
            lens = torch.as_tensor(lengths[pos])
            wavs = torch.randn(len(pos), int(lens.max()), 1, generator=gen)
            wavs[torch.arange(wavs.shape[1])[None, :] >= lens[:, None]] = 0.0
            yield pos, wavs, lens

    for pos, counts in upstream_frame_counts(upstream, batches(), num_layer, device):
        frames[:, pos] = counts
    parts = []
    for layer in range(num_layer):
        rate = rates[layer]
        part = {"layer": np.full(lengths.size, layer, dtype=np.int64), "wav_len": lengths,
                "rate": np.full(lengths.size, rate, dtype=np.int64), "frames": frames[layer]}
        for c in ("ceil", "round", "floor"):
            part[f"expected_{c}"] = expected_lengths(lengths, rate, c).numpy()
        if conv is not None:
            part["expected_conv"] = pd.array(
                expected_lengths(lengths, rate, "conv", conv_layers=conv).numpy()
                if receptive_field(conv)[1] == rate else [pd.NA] * lengths.size, dtype="Int64")
        parts.append(pd.DataFrame(part))
    report = pd.concat(parts, ignore_index=True)
    for c in _report_conventions(report):
        report[f"diff_{c}"] = report["frames"] - report[f"expected_{c}"]
    report.attrs["upstream"] = str(optional_attr(upstream, "name") or type(upstream).__name__)
    report.attrs["summary"] = _summary_text(summarize_lengths(report), report)
    return report


def upstream_frame_counts(upstream, batches, num_layer: int, device=None):
    """Yield ``(key, (num_layer, batch_size) int64 counts)`` per ``(key, wavs, wavs_len)``
    batch, run as :func:`length_report` runs it."""
    dev = _resolve_device(device, upstream)
    with eval_session(upstream, dev, move=True), torch.inference_mode():
        for key, wavs, lens in batches:
            try:
                out = upstream(wavs.to(dev), lens.to(dev))
            except RuntimeError as e:
                raise RuntimeError(f"upstream failed on input lengths {lens.tolist()[:4]}: "
                                   f"{e}. Inputs shorter than its receptive field often fail: "
                                   "use longer inputs") from e
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError("upstream(wavs, wavs_len) must return (all_hs, all_hs_len) "
                                f"(s3prl interface), got {type(out).__name__}")
            all_hs_len = list(out[1])
            if len(all_hs_len) != num_layer:
                raise ValueError(f"upstream returned {len(all_hs_len)} lengths but num_layer is "
                                 f"{num_layer}")
            yield key, np.stack([hl.detach().to("cpu").long().numpy().reshape(-1)
                                 for hl in all_hs_len])


def _report_conventions(report: pd.DataFrame) -> List[str]:
    return [c for c in CONVENTIONS if f"expected_{c}" in report.columns]


def summarize_lengths(report: pd.DataFrame) -> pd.DataFrame:
    """Per layer: which convention the frame counts follow, and how far the others are off.

    Returns:
        One row per layer: ``layer, rate, n_lengths, min_wav_len, max_wav_len``;
        ``follows`` (the conventions that match every length, comma-separated, ``""`` if none);
        ``best`` (the exact one, else the one with the smallest worst-case mismatch);
        ``worst_diff`` and ``worst_wav_len`` (the largest signed ``frames - expected`` of
        ``best`` and where it happens); per convention ``match_<c>`` (fraction of lengths
        matched exactly) and ``max_abs_diff_<c>`` (``<NA>``-free floats; NaN where the
        convention does not apply to the layer).
    """
    missing = {"layer", "wav_len", "rate", "frames"} - set(report.columns)
    if missing:
        raise ValueError(f"report lacks columns {sorted(missing)}; pass the DataFrame of "
                         "s3viz.length_report")
    convs = _report_conventions(report)
    rows = []
    for layer, part in report.groupby("layer", sort=True):
        row = {"layer": int(layer), "rate": int(part["rate"].iloc[0]),
               "n_lengths": int(len(part)), "min_wav_len": int(part["wav_len"].min()),
               "max_wav_len": int(part["wav_len"].max())}
        scores = {}
        for c in convs:
            diff = (part["frames"] - part[f"expected_{c}"]).astype("Float64")
            if not diff.notna().all():
                row[f"match_{c}"] = row[f"max_abs_diff_{c}"] = np.nan
                continue
            d = diff.to_numpy(dtype=np.float64)
            row[f"match_{c}"] = float(np.mean(d == 0))
            row[f"max_abs_diff_{c}"] = float(np.abs(d).max())
            i = int(np.argmax(np.abs(d)))
            scores[c] = (row[f"max_abs_diff_{c}"], -row[f"match_{c}"], d[i],
                         int(part["wav_len"].iloc[i]))
        pref = ("conv", "ceil", "round", "floor")
        row["follows"] = ", ".join(c for c in pref if c in scores and scores[c][0] == 0)
        row["best"], row["worst_diff"], row["worst_wav_len"] = "", 0, -1
        if scores:
            best = min(scores, key=lambda c: (scores[c][0], scores[c][1], pref.index(c)))
            row["best"], row["worst_diff"] = best, int(scores[best][2])
            row["worst_wav_len"] = int(scores[best][3]) if scores[best][0] else -1
        rows.append(row)
    cols = ["layer", "rate", "n_lengths", "min_wav_len", "max_wav_len", "follows", "best",
            "worst_diff", "worst_wav_len"]
    cols += [f"match_{c}" for c in convs] + [f"max_abs_diff_{c}" for c in convs]
    return pd.DataFrame(rows, columns=cols)


def _summary_text(summary: pd.DataFrame, report: pd.DataFrame) -> str:
    if summary.empty:
        return "empty report"
    lines = [
        f"{report.attrs.get('upstream', 'upstream')}: {len(summary)} layers over "
        f"{int(summary['n_lengths'].iloc[0])} input lengths "
        f"({int(summary['min_wav_len'].min())}-{int(summary['max_wav_len'].max())} samples)."
    ]
    convs = _report_conventions(report)
    for (rate, follows, best), grp in summary.groupby(["rate", "follows", "best"], sort=False):
        who = f"{layer_range(grp['layer'].tolist())} (rate {rate})"
        if follows:
            first = follows.split(", ")[0]
            others = [c for c in convs if c not in follows.split(", ")
                      and not np.isnan(grp[f"max_abs_diff_{c}"].max())]
            worst = ""
            if others:
                c = max(others, key=lambda c: grp[f"max_abs_diff_{c}"].max())
                sub = report[report["layer"].isin(grp["layer"])]
                d = (sub["frames"] - sub[f"expected_{c}"]).astype(np.int64)
                i = int(np.argmax(np.abs(d.to_numpy())))
                worst = (f"; worst other convention: '{c}' off by {int(d.iloc[i]):+d} frames "
                         f"at wav_len={int(sub['wav_len'].iloc[i])}")
            lines.append(f"{who}: follow '{first}' exactly{worst}.")
        else:
            i = int(np.argmax(np.abs(grp["worst_diff"].to_numpy())))
            r = grp.iloc[i]
            lines.append(f"{who}: no convention matches exactly; closest is '{best}' "
                         f"(matches {grp[f'match_{best}'].min():.0%} of lengths), worst mismatch "
                         f"{int(r['worst_diff']):+d} frames at wav_len={int(r['worst_wav_len'])}.")
    return " ".join(lines)
