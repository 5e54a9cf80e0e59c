"""Figures of length alignment: frame-count conventions and where frames sit in time."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .._validate import layer_range
from ..interface import SAMPLE_RATE
from ._common import new_axes

__all__ = ["length_alignment", "frame_grid"]

_CONV_COLORS = {"ceil": "tab:blue", "round": "tab:orange", "floor": "tab:green", "conv": "tab:red"}
_LANE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                "tab:olive", "tab:cyan")


def length_alignment(report: pd.DataFrame, ax=None, *, by: str = "rate",
                     conventions: Optional[Sequence[str]] = None):
    """Frames minus each convention's prediction against input length (0: predicted exactly).

    Args:
        report: the DataFrame of :func:`s3viz.length_report`.
        by: ``"rate"``: layers of one rate whose frame counts agree share one set of
            lines; ``"layer"``: one set of lines per layer.
        conventions: which ``diff_<c>`` columns to draw (default: all present).

    Lines are offset by a few hundredths of a frame so that equal ones stay visible.
    """
    if not isinstance(report, pd.DataFrame):
        raise TypeError(
            f"report must be the DataFrame of s3viz.length_report, got {type(report).__name__}")
    missing = {"layer", "wav_len", "rate", "frames"} - set(report.columns)
    if missing:
        raise ValueError(f"report lacks columns {sorted(missing)}; pass s3viz.length_report(...)")
    present = [c for c in ("ceil", "round", "floor", "conv") if f"diff_{c}" in report.columns]
    convs = present if conventions is None else list(conventions)
    unknown = [c for c in convs if c not in present]
    if unknown:
        raise ValueError(f"conventions {unknown} are not in the report; available: {present}")
    if by not in ("rate", "layer"):
        raise ValueError(f"by must be 'rate' or 'layer', got {by!r}")
    ax = new_axes(ax, figsize=(7.5, 3.8))

    groups = []  # (label, sub-frame)
    if by == "layer":
        groups = [(f"layer {layer} (rate {int(part['rate'].iloc[0])})", part)
                  for layer, part in report.groupby("layer", sort=True)]
    else:
        for rate, part in report.groupby("rate", sort=True):
            # layers of one rate with identical frame counts share lines
            sig: Dict[Tuple[int, ...], list] = {}
            for layer, lp in part.groupby("layer", sort=True):
                key = tuple(lp.sort_values("wav_len")["frames"].tolist())
                sig.setdefault(key, []).append(layer)
            for layers in sig.values():
                lp = part[part["layer"] == layers[0]]
                groups.append((f"{layer_range(layers)} (rate {rate})", lp))

    styles = ("-", "--", ":", "-.")
    offsets = {c: 0.04 * (i - (len(convs) - 1) / 2) for i, c in enumerate(convs)}
    for gi, (label, part) in enumerate(groups):
        part = part.sort_values("wav_len")
        x = part["wav_len"].to_numpy()
        for c in convs:
            y = pd.to_numeric(part[f"diff_{c}"], errors="coerce").astype(float).to_numpy()
            if np.all(np.isnan(y)):
                continue
            ax.plot(x, y + offsets[c], drawstyle="steps-post", color=_CONV_COLORS.get(c),
                    linestyle=styles[gi % len(styles)], linewidth=1.3,
                    label=f"{c}" + (f" - {label}" if len(groups) > 1 else ""))
    ax.axhline(0, color="0.3", linewidth=0.8, zorder=0)
    lo = np.nanmin([pd.to_numeric(report[f"diff_{c}"], errors="coerce").min() for c in convs] + [0])
    hi = np.nanmax([pd.to_numeric(report[f"diff_{c}"], errors="coerce").max() for c in convs] + [0])
    ax.set(yticks=np.arange(int(np.floor(lo)), int(np.ceil(hi)) + 1), ylim=(lo - 0.5, hi + 0.5),
           xlabel="input length (samples at 16 kHz)", ylabel="frames - expected",
           title="Frame counts vs length conventions"
           + (f": {groups[0][0]}" if len(groups) == 1 else ""))
    if len(groups) == 1:
        ax.legend(fontsize="small", loc="best")
    else:  # colour = convention, line style = layer group: two short keys, not one per line
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=_CONV_COLORS.get(c), lw=1.6, label=c) for c in convs]
        handles += [Line2D([], [], color="0.3", lw=1.3, ls=styles[gi % len(styles)],
                           label=label) for gi, (label, _) in enumerate(groups)]
        ax.legend(handles=handles, fontsize="small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    return ax


# --------------------------------------------------------------------------- frame grid


def _log_spectrogram(wav: np.ndarray, n_fft: int = 400, hop: int = 160) -> np.ndarray:
    """``(n_fft // 2 + 1, frames)`` log power of a Hann-windowed STFT (frame k at k * hop)."""
    wav = np.pad(wav, (0, max(0, n_fft - wav.size)))
    idx = np.arange(n_fft)[None, :] + hop * np.arange(1 + (wav.size - n_fft) // hop)[:, None]
    spec = np.abs(np.fft.rfft(wav[idx] * np.hanning(n_fft)[None, :], axis=1)) ** 2
    return np.log10(spec.T + 1e-10)


def _as_timelines(timelines) -> Dict[str, pd.DataFrame]:
    if isinstance(timelines, pd.DataFrame):
        timelines = [timelines]
    if isinstance(timelines, Mapping):
        items = list(timelines.items())
    elif isinstance(timelines, (list, tuple)):
        items = []
        for i, df in enumerate(timelines):
            layer = getattr(df, "attrs", {}).get("layer")
            items.append((f"layer {layer}" if layer is not None else f"#{i}", df))
    else:
        raise TypeError("timelines must be a dict name -> frame_timeline DataFrame, or a list "
                        f"of them; got {type(timelines).__name__}")
    out = {}
    for name, df in items:
        if not isinstance(df, pd.DataFrame) or not {"start", "end", "center"} <= set(df.columns):
            raise ValueError(f"timeline {name!r} must be a DataFrame from s3viz.frame_timeline "
                             "(columns start, center, end)")
        out[str(name)] = df
    return out


def frame_grid(wav, timelines, phones: Optional[pd.DataFrame] = None, ax=None, *,
               spectrogram: bool = False, window: Optional[Tuple[float, float]] = None,
               wav_len: Optional[int] = None, sample_rate: int = SAMPLE_RATE,
               receptive_field: bool = True):
    """The waveform (or spectrogram) with the frames of each layer and the phones underneath.

    One lane per timeline, each frame's cell shaded alternately with its boundaries
    drawn (the first lane's continued faintly over the waveform); with
    ``receptive_field`` a bracket above each lane marks the receptive field of the frame
    nearest the middle of the view. x is in seconds.

    Args:
        wav: ``(num_samples,)`` waveform (numpy or tensor), or None when only
            frames and phones are known (then give ``wav_len``).
        timelines: dict name -> :func:`s3viz.frame_timeline` DataFrame, or a list.
        spectrogram: draw a log spectrogram instead of the waveform.
        window: ``(start_s, end_s)`` zoom in seconds; default the whole utterance.
        receptive_field: draw the receptive-field bracket per lane.
    """
    lanes = _as_timelines(timelines)
    if wav is not None:
        w = np.asarray(wav.detach().cpu() if hasattr(wav, "detach") else wav, dtype=np.float64)
        if w.ndim == 2 and 1 in w.shape:
            w = w.reshape(-1)
        if w.ndim != 1:
            raise ValueError(f"wav must be 1-D (num_samples,), got shape {w.shape}")
        n_samples = w.size
    else:
        w = None
        if wav_len is None:
            wav_len = max((int(df.attrs.get("wav_len", 0)) for df in lanes.values()), default=0)
            wav_len = wav_len or max((int(df["end"].max()) for df in lanes.values() if len(df)),
                                     default=0)
        n_samples = int(wav_len)
    if phones is not None and not {"start", "end"} <= set(phones.columns):
        raise ValueError("phones must have columns start, end (samples) and phone")
    sr = float(sample_rate)
    lo, hi = (0.0, n_samples / sr) if window is None else (float(window[0]), float(window[1]))
    if not hi > lo:
        raise ValueError(f"window must be (start_s, end_s) with end_s > start_s, got {window!r}")
    p, n = int(phones is not None), len(lanes)
    ax = new_axes(ax, figsize=(9, 1.6 + 0.55 * (n + p) + 1.2))
    wave_lo, wave_hi = n + p + 0.1, n + p + 2.1
    yticks, ylabels = [], []

    # waveform / spectrogram band
    if w is not None:
        if spectrogram:
            spec = _log_spectrogram(w, n_fft=400, hop=160)
            # column k is the window [160 k, 160 k + 400): centred at 160 k + 200
            x0 = (200 - 80) / sr
            ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                      extent=(x0, x0 + 160 * spec.shape[1] / sr, wave_lo, wave_hi),
                      vmin=np.percentile(spec, 5), vmax=spec.max(), interpolation="nearest")
            ylabels.append("spectrogram")
        else:
            a = int(max(0, np.floor(lo * sr)))
            b = int(min(n_samples, np.ceil(hi * sr) + 1))
            peak = float(np.abs(w).max()) or 1.0
            ax.plot(np.arange(a, b) / sr, (wave_lo + wave_hi) / 2 + w[a:b] / peak * 0.95,
                    color="0.25", linewidth=0.6)
            ylabels.append("waveform")
    else:
        ax.text((lo + hi) / 2, (wave_lo + wave_hi) / 2, "waveform not stored",
                ha="center", va="center", color="0.5", fontsize="small")
        ylabels.append("")
    yticks.append((wave_lo + wave_hi) / 2)

    # frame lanes, top to bottom
    for i, (name, df) in enumerate(lanes.items()):
        y0 = n + p - 1 - i
        color = _LANE_COLORS[i % len(_LANE_COLORS)]
        starts = df["start"].to_numpy(dtype=np.float64) / sr
        ends = df["end"].to_numpy(dtype=np.float64) / sr
        idx = np.flatnonzero((ends >= lo) & (starts <= hi))
        rate = df.attrs.get("rate")
        yticks.append(y0 + 0.5)
        ylabels.append(name if rate is None else f"{name}\n{1000 * rate / sr:g} ms")
        # zoomed out, frames narrower than ~3 pixels would draw a barcode: a plain band
        # and the frame count instead (zoom in to see the frames)
        px = ax.get_window_extent().width if ax.figure is not None else 800.0
        if idx.size and px / idx.size < 3.0:
            a = max(lo, starts[idx[0]])
            ax.broken_barh([(a, min(hi, ends[idx[-1]]) - a)], (y0 + 0.1, 0.8), facecolors=color,
                           alpha=0.25, linewidth=0)
            ax.text((lo + hi) / 2, y0 + 0.5, f"{idx.size} frames: zoom in to see them",
                    ha="center", va="center", fontsize="x-small", color="0.2")
            continue
        for parity, alpha in ((0, 0.35), (1, 0.15)):
            sel = idx[idx % 2 == parity]
            if sel.size:
                ax.broken_barh(list(zip(starts[sel], ends[sel] - starts[sel])), (y0 + 0.1, 0.8),
                               facecolors=color, alpha=alpha, linewidth=0)
        if idx.size:
            edges = np.unique(np.concatenate([starts[idx], ends[idx]]))
            ax.vlines(edges, y0 + 0.1, y0 + 0.9, color=color, linewidth=0.7)
            centers = df["center"].to_numpy(dtype=np.float64)[idx] / sr
            ax.plot(centers, np.full(centers.size, y0 + 0.5), "|", color=color, markersize=4)
            if i == 0:
                ax.vlines(edges, wave_lo, wave_hi, color=color, linewidth=0.5, alpha=0.25)
            if receptive_field and {"rf_start", "rf_end"} <= set(df.columns):
                mid = idx[np.argmin(np.abs(centers - (lo + hi) / 2))]
                r0, r1 = df["rf_start"].iloc[mid] / sr, df["rf_end"].iloc[mid] / sr
                ax.plot([r0, r0, r1, r1], [y0 + 0.8, y0 + 0.95, y0 + 0.95, y0 + 0.8],
                        color="black", linewidth=0.9)

    # phones
    if phones is not None:
        ph = phones.sort_values("start")
        s0 = ph["start"].to_numpy(dtype=np.float64) / sr
        s1 = ph["end"].to_numpy(dtype=np.float64) / sr
        lab = ph["phone"].astype(str).to_numpy() if "phone" in ph.columns else [""] * len(ph)
        vis = np.flatnonzero((s1 >= lo) & (s0 <= hi))
        if vis.size:
            ax.broken_barh(list(zip(s0[vis], s1[vis] - s0[vis])), (0.1, 0.8),
                           facecolors=["0.85" if k % 2 else "0.7" for k in vis],
                           edgecolors="0.4", linewidth=0.5)
            min_w = (hi - lo) / 80
            for k in vis:
                if s1[k] - s0[k] >= min_w:
                    ax.text((max(s0[k], lo) + min(s1[k], hi)) / 2, 0.5, lab[k], ha="center",
                            va="center", fontsize="x-small", clip_on=True)
        yticks.append(0.5)
        ylabels.append("phones")

    ax.set(xlim=(lo, hi), ylim=(0, wave_hi + 0.1), xlabel="time (s)")
    ax.set_yticks(yticks, ylabels, fontsize="small")
    ax.tick_params(axis="y", length=0)
    return ax
