"""One utterance as a student first sees it: waveform, spectrogram and its phones."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..interface import SAMPLE_RATE
from ._align import _log_spectrogram

__all__ = ["utterance", "phone_marks"]


def phone_marks(ax, phones: pd.DataFrame, *, color: str = "k", column: str = "phone",
                y: float = 1.0) -> None:
    """A boundary line at each segment start of ``phones`` (``start``, ``end`` in samples at
    16 kHz) on ``ax`` (x in seconds), and its ``column`` label at height ``y`` in Axes
    coordinates (1: just above the plot)."""
    if phones is None or len(phones) == 0:
        return
    for row in phones.itertuples():
        ax.axvline(row.start / SAMPLE_RATE, color=color, lw=0.6, alpha=0.5)
        label = getattr(row, column)
        if label not in ("", None):
            ax.text((row.start + row.end) / (2 * SAMPLE_RATE), y, str(label), ha="center",
                    va="bottom", fontsize=8, transform=ax.get_xaxis_transform())


def utterance(utt, axes=None, *, title: str | None = None):
    """The waveform (phone spans shaded) above the spectrogram (log power of a 25 ms Hann
    window every 10 ms), both marked with the phones; x in seconds. Returns the two Axes.

    Args:
        utt: an :class:`s3viz.data.Utterance` (``wav`` at 16 kHz, ``phones`` may be None).
        axes: two Axes (waveform, spectrogram) sharing x; ``None`` makes a figure.
        title: the waveform's title (default: the utterance's text, else its id).
    """
    import matplotlib.pyplot as plt

    wav = np.asarray(utt.wav, dtype=np.float32).reshape(-1)
    if wav.size == 0:
        raise ValueError("the utterance has no samples")
    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
    ax_w, ax_s = axes
    phones = getattr(utt, "phones", None)
    t = np.arange(wav.size) / SAMPLE_RATE
    ax_w.plot(t, wav, lw=0.4)
    if phones is not None:
        for k, row in enumerate(phones.itertuples()):
            ax_w.axvspan(row.start / SAMPLE_RATE, row.end / SAMPLE_RATE, color=f"C{k % 2}",
                         alpha=0.08, lw=0)
        phone_marks(ax_w, phones)
    ax_w.set_ylabel("amplitude")
    text = title if title is not None else (getattr(utt, "text", "") or getattr(utt, "id", ""))
    ax_w.set_title(text, pad=16)
    spec = _log_spectrogram(wav)
    ax_s.imshow(spec, aspect="auto", origin="lower", cmap="magma",
                extent=(0, spec.shape[1] * 160 / SAMPLE_RATE, 0, SAMPLE_RATE / 2),
                vmin=float(spec.max()) - 8, vmax=float(spec.max()))
    if phones is not None:
        phone_marks(ax_s, phones, color="w", y=1.0)
    ax_s.set(ylabel="Hz", xlabel="time (s)")
    ax_w.set_xlim(0, wav.size / SAMPLE_RATE)
    return ax_w, ax_s
