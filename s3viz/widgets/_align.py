"""Alignment explorer: one utterance's waveform, the frames of chosen layers, and its phones.

The widget wires controls to two plain functions: :func:`utterance_alignment` (what to
draw, with the upstream's actual frame counts) and :func:`draw_alignment` (draw it with
:func:`s3viz.plot.frame_grid`), rendered to a PNG ``ipywidgets.Image`` (offline, and the
same picture as the ``image/png`` fallback without a widget frontend).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd

from ..align import (frame_timeline, optional_attr, receptive_field, upstream_frame_counts,
                     upstream_rates)
from ..interface import SAMPLE_RATE, num_layer_of
from ..plot._align import frame_grid
from ..plot._common import png, with_png

__all__ = ["alignment_explorer", "AlignmentExplorer", "utterance_alignment", "draw_alignment",
           "default_layers"]


def _is_store(source) -> bool:
    return all(hasattr(source, a) for a in ("lengths", "downsample_rates", "utterance"))


def _check_source(source, upstream, arg: str = "source") -> bool:
    """True for a store; refuses anything but a store or a Corpus with its upstream."""
    if _is_store(source):
        return True
    if not (hasattr(source, "ids") and len(source) > 0 and hasattr(source[0], "wav")):
        raise TypeError(f"{arg} must be an s3viz.data.Corpus or a LayerStore, got "
                        f"{type(source).__name__}")
    if upstream is None:
        raise ValueError("a Corpus needs upstream=... to know each layer's frames")
    return False


def default_layers(rates: Sequence[int], max_layers: int = 4) -> List[int]:
    """First layer of each distinct rate, plus the last layer; at most ``max_layers``."""
    out = {list(rates).index(r) for r in rates} | {len(rates) - 1}
    return sorted(out)[:max_layers]


def _source_layers(source, upstream):
    """``(rates, names)`` of the selectable layers."""
    store = _is_store(source)
    rates = [int(r) for r in source.downsample_rates] if store else upstream_rates(upstream)
    ids = getattr(source, "layer_ids", range(len(rates))) if store else range(len(rates))
    return rates, [f"layer {i}" for i in ids]


def utterance_alignment(source, index: int, *, upstream=None,
                        layers: Optional[Sequence[int]] = None, device=None) -> Dict[str, object]:
    """Everything needed to draw one utterance's frames: plain data, no drawing.

    Args:
        source: a ``Corpus`` (then ``upstream`` is run on the utterance and its
            ``all_hs_len`` gives the frame counts) or a ``LayerStore`` (frame
            counts, rates and receptive fields come from the store; it holds no
            waveform).
        upstream: needed with a Corpus; with a store only its ``conv_layers`` are used.
        layers: layer indices (of the upstream, or of the store's stored
            layers); default :func:`default_layers`.
        device: where a Corpus's upstream runs (default: where it lives).

    Returns a dict: ``id``, ``wav`` (``(num_samples,)`` float32 or None), ``wav_len``,
    ``phones`` (or None), ``num_frames`` (layer -> frames) and ``timelines`` (``"layer
    i"`` -> :func:`s3viz.frame_timeline` DataFrame).
    """
    store = _check_source(source, upstream)
    n = len(source)
    index = int(index)
    if not 0 <= index < n:
        raise IndexError(f"index must be in [0, {n}), got {index}")
    rates, names = _source_layers(source, upstream)
    layers = default_layers(rates) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < len(rates)]
    if bad:
        raise IndexError(f"layers {bad} out of range [0, {len(rates)})")

    if store:
        labels = source.labels
        if "num_samples" in labels.columns and pd.notna(labels["num_samples"].iloc[index]):
            wav_len = int(labels["num_samples"].iloc[index])
        else:  # no audio length stored: the span the frames cover
            wav_len = max(int(source.lengths(x)[index]) * rates[x] for x in range(len(rates)))
        wav = None
        ident = str(source.ids[index])
        phones = source.phones[index] if getattr(source, "phones", None) is not None else None
        fields = optional_attr(source, "receptive_fields") or rates
        conv = optional_attr(upstream, "conv_layers") if upstream is not None else None
        num_frames = {x: int(source.lengths(x)[index]) for x in layers}
        timelines = {}
        for x in layers:
            use_conv = conv if conv is not None and receptive_field(conv)[1] == rates[x] else None
            timelines[names[x]] = frame_timeline(
                rates[x], wav_len, num_frames=num_frames[x],
                receptive_field_samples=int(fields[x]), conv_layers=use_conv)
            timelines[names[x]].attrs["layer"] = x
    else:
        utt = source[index]
        wav, wav_len, ident, phones = utt.wav, utt.num_samples, utt.id, utt.phones
        import torch

        wavs = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).view(1, -1, 1)
        counts = next(iter(upstream_frame_counts(
            upstream, [(0, wavs, torch.tensor([wav_len]))], num_layer_of(upstream), device)))[1]
        num_frames = {x: int(counts[x, 0]) for x in layers}
        timelines = {names[x]: frame_timeline(upstream, wav_len, layer=x, num_frames=num_frames[x])
                     for x in layers}
    return {"id": ident, "wav": wav, "wav_len": wav_len, "phones": phones,
            "num_frames": num_frames, "timelines": timelines}


def draw_alignment(view: Dict[str, object], ax=None, *, window=None, spectrogram: bool = False):
    """Draw a :func:`utterance_alignment` view with :func:`s3viz.plot.frame_grid`; the Axes."""
    ax = frame_grid(view["wav"], view["timelines"], view["phones"], ax=ax, window=window,
                    wav_len=view["wav_len"], spectrogram=spectrogram and view["wav"] is not None)
    ax.set_title(f"{view['id']}: " + ", ".join(
        f"{name} {len(df)} frames" for name, df in view["timelines"].items()), fontsize="small")
    return ax


class AlignmentExplorer(W.VBox):
    """The widget of :func:`alignment_explorer`: the controls ``utterance``, ``layers``,
    ``window``, ``spectrogram`` (set their ``.value`` to drive the picture), the ``image``
    (PNG) of the matplotlib ``figure`` last drawn, its ``view``
    (:func:`utterance_alignment`) and ``state`` (``index, id, layers, window, spectrogram,
    renders``)."""

    def __init__(self, source, upstream=None, *, layers=None, window_s: float = 1.0,
                 figsize=(9.0, 4.5), device=None):
        from matplotlib.figure import Figure

        self._source, self._upstream, self._device = source, upstream, device
        self._cache: Dict[int, Dict[str, object]] = {}
        rates, names = _source_layers(source, upstream)
        chosen = default_layers(rates) if layers is None else [int(x) for x in layers]
        ids = list(source.ids)
        self.utterance = W.Dropdown(options=[(str(u), i) for i, u in enumerate(ids)], value=0,
                                    description="utterance")
        self.layers = W.SelectMultiple(
            options=[(f"{names[i]} ({1000 * r / SAMPLE_RATE:g} ms)", i)
                     for i, r in enumerate(rates)],
            value=tuple(chosen), description="layers", rows=min(6, len(rates)))
        self._window_s = float(window_s)
        # the slider's own readout box cuts "0.000 - 2.200": the window is written beside it
        self.window = W.FloatRangeSlider(min=0.0, max=1.0, step=0.005, value=(0.0, 1.0),
                                         description="window (s)", continuous_update=False,
                                         readout=False, layout=W.Layout(width="420px"))
        self.window.add_class("s3viz-window-slider")
        self.window_label = W.HTML(layout=W.Layout(width="150px"))
        self.window_label.add_class("s3viz-window-readout")
        self.spectrogram = W.Checkbox(value=False, description="spectrogram")
        self.figure = Figure(figsize=figsize, dpi=100)
        # shown at the PNG's own size: a browser never rescales (and blurs) it
        self.image = W.Image(format="png", width=int(figsize[0] * 100),
                             height=int(figsize[1] * 100))
        self.view: Dict[str, object] = {}
        self.state: Dict[str, object] = {"renders": 0}
        self._busy = False
        super().__init__([W.HBox([self.utterance, self.spectrogram]),
                          W.HBox([self.layers, self.window, self.window_label]), self.image])
        self._reset_window()
        self.refresh()
        self.utterance.observe(self._on_utterance, names="value")
        for c in (self.layers, self.window, self.spectrogram):
            c.observe(lambda _change: self.refresh(), names="value")

    def _view_for(self, index: int):
        if index not in self._cache:
            rates, _ = _source_layers(self._source, self._upstream)
            self._cache[index] = utterance_alignment(
                self._source, index, upstream=self._upstream, layers=range(len(rates)),
                device=self._device)
        full = self._cache[index]
        names = list(full["timelines"])
        chosen = list(self.layers.value)
        return dict(full, timelines={names[i]: full["timelines"][names[i]] for i in chosen},
                    num_frames={i: full["num_frames"][i] for i in chosen})

    def _reset_window(self):
        view = self._view_for(self.utterance.value)
        dur = max(view["wav_len"] / SAMPLE_RATE, 0.01)
        self._busy = True
        try:  # the value is set while max holds both the old and the new window
            self.window.min = 0.0
            self.window.max = max(self.window.max, dur)
            self.window.value = (0.0, min(dur, self._window_s))
            self.window.max = dur
        finally:
            self._busy = False

    def _on_utterance(self, _change):
        self._reset_window()
        self.refresh()

    def refresh(self):
        """Redraw the picture from the controls' current values."""
        if self._busy:
            return
        view = self._view_for(self.utterance.value)
        self.figure.clear()
        ax = self.figure.add_subplot()
        window = tuple(float(v) for v in self.window.value)
        self.window_label.value = f"{window[0]:.3f} – {window[1]:.3f} s"
        if view["timelines"]:
            draw_alignment(view, ax, window=window, spectrogram=bool(self.spectrogram.value))
        else:
            ax.text(0.5, 0.5, "select at least one layer", ha="center", va="center")
            ax.set_axis_off()
        self.figure.tight_layout()
        self.image.value = png(self.figure)
        self.view = view
        self.state = {"index": self.utterance.value, "id": view["id"],
                      "layers": list(self.layers.value), "window": window,
                      "spectrogram": bool(self.spectrogram.value),
                      "renders": self.state.get("renders", 0) + 1}

    def _repr_mimebundle_(self, **kwargs):
        return with_png(super()._repr_mimebundle_(**kwargs), self.image.value)


def alignment_explorer(corpus_or_store, upstream=None, *, layers=None, window_s: float = 1.0,
                       device=None) -> AlignmentExplorer:
    """An explorer of frame alignment: pick an utterance, layers and a zoom window.

    Args:
        corpus_or_store: an ``s3viz.data.Corpus`` (waveforms shown; ``upstream``, required,
            runs once per viewed utterance for its frame counts) or a ``LayerStore``
            (frame counts from the store; no waveform).
        layers: layers selected at first (default: one per distinct rate and the last).
        window_s: initial zoom width in seconds.
        device: where a Corpus's upstream runs (default: where it lives).

    Returns an :class:`AlignmentExplorer`, not displayed.
    """
    _check_source(corpus_or_store, upstream, "corpus_or_store")
    return AlignmentExplorer(corpus_or_store, upstream, layers=layers, window_s=window_s,
                             device=device)
