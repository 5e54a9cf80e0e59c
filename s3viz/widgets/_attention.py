"""The attention explorer: pick an utterance, a layer and a head; the head's map redraws
with the phone and word tiers (``docs/attention.md``, "Views")."""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as W
import numpy as np

from ..plot._common import png, with_png

__all__ = ["AttentionExplorer", "attention_explorer", "head_summary"]

_SIZE, _DPI = 560, 100


def head_summary(maps, layer: int, head: int) -> dict:
    """One head's map of one utterance in numbers: ``distance_ms``, ``diagonal``,
    ``silence``, ``same_phone``, ``same_word`` and ``outside``, averaged over its query
    frames as :func:`s3viz.attention_stats` averages them over a corpus (Whisper's
    ``distance_ms`` counts the attention within the audio only)."""
    m = maps.map(layer, head).double().numpy()
    t = m.shape[0]
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    sil, ph_seg, wd_seg = maps.frame_segments()

    def share(seg):
        rows = seg >= 0
        same = (seg[:, None] == seg[None, :]) & rows[:, None]
        return float((m * same)[rows].sum() / rows.sum()) if rows.any() else float("nan")

    return {"distance_ms": float((m * np.abs(i - j)).sum() / t * maps.rate / 16.0),
            "diagonal": float((m * (np.abs(i - j) <= 1)).sum() / t),
            "silence": float(m[:, sil].sum() / t),
            "same_phone": share(ph_seg), "same_word": share(wd_seg),
            "outside": float(maps.outside[maps.layers.index(layer),
                                          maps.heads.index(head)].mean())}


class AttentionExplorer(W.VBox):
    """The widget of :func:`attention_explorer`: ``utterance`` (a dropdown of ids),
    ``layer`` and ``head`` (sliders), ``image`` (the map, PNG) and ``info`` (HTML: the
    head's :func:`head_summary`); ``maps`` holds the current utterance's maps."""

    def __init__(self, upstream, corpus, maps_fn: Callable):
        self.upstream, self.corpus, self.maps_fn = upstream, corpus, maps_fn
        self._cache: dict = {}  # utterance id -> its maps (one forward each)
        ids = [u.id for u in corpus]
        first = self._maps(ids[0])
        self.utterance = W.Dropdown(options=ids, value=ids[0], description="utterance")
        self.layer = W.SelectionSlider(options=first.layers, value=first.layers[0],
                                       description="layer", continuous_update=False)
        self.head = W.SelectionSlider(options=first.heads, value=first.heads[0],
                                      description="head", continuous_update=False)
        self.image = W.Image(format="png", width=_SIZE, height=_SIZE)
        self.info = W.HTML(layout=W.Layout(width="300px"))
        for w, name in ((self.utterance, "utterance"), (self.layer, "layer"),
                        (self.head, "head"), (self.image, "image"), (self.info, "info")):
            w.add_class(f"s3viz-attention-{name}")
        for w in (self.utterance, self.layer, self.head):
            w.observe(lambda change: self.show(), names="value")
        super().__init__([W.HBox([self.utterance, self.layer, self.head]),
                          W.HBox([self.image, self.info])])
        self.add_class("s3viz-attention-explorer")
        self.show()

    def _maps(self, uid: str):
        if uid not in self._cache:
            utt = next(u for u in self.corpus if u.id == uid)
            self._cache = {uid: self.maps_fn(self.upstream, utt)}  # keep one utterance
        return self._cache[uid]

    def show(self) -> None:
        from matplotlib.figure import Figure

        from ..plot._attention import attention_map

        self.maps = maps = self._maps(self.utterance.value)
        layer, head = self.layer.value, self.head.value
        fig = Figure(figsize=(_SIZE / _DPI, _SIZE / _DPI), dpi=_DPI)
        ax = fig.add_axes((0.2, 0.1, 0.66, 0.74))
        attention_map(maps, layer=layer, head=head, ax=ax)
        self.image.value = png(fig)
        s = head_summary(maps, layer, head)
        rows = [("mean distance", f"{s['distance_ms']:.0f} ms"),
                ("within ±1 frame", f"{s['diagonal']:.2f}"),
                ("on silence", f"{s['silence']:.2f}"),
                ("on its own phone", f"{s['same_phone']:.2f}"),
                ("on its own word", f"{s['same_word']:.2f}")]
        if s["outside"] > 0:
            rows.append(("past the audio", f"{s['outside']:.2f}"))
        table = "".join(f"<tr><td>{k}</td><td class='s3viz-attention-{k.split()[-1]}'>{v}"
                        "</td></tr>" for k, v in rows)
        self.info.value = (f"<div style='font-size:13px;padding-left:8px'><b>"
                           f"{html.escape(maps.utterance_id)}</b>: layer {layer}, head {head}"
                           f"<br>{maps.num_frames} frames<table>{table}</table></div>")

    def _repr_mimebundle_(self, **kwargs):
        return with_png(super()._repr_mimebundle_(**kwargs), self.image.value,
                        f"AttentionExplorer(utterance={self.utterance.value!r}, "
                        f"layer={self.layer.value}, head={self.head.value})")


def attention_explorer(upstream, corpus, *, device=None) -> AttentionExplorer:
    """Pick an utterance, layer and head; the map redraws with the phone and word tiers
    (``docs/attention.md``). Each utterance runs once when picked (all its layers and heads).

    Args:
        upstream: as for :func:`s3viz.attention_maps`.
        corpus: the utterances to choose from (their alignments give the tiers).
        device: as for :func:`s3viz.attention_maps`.
    """
    from ..attention import attention_maps

    if len(corpus) == 0:
        raise ValueError("corpus is empty: nothing to explore")
    return AttentionExplorer(upstream, corpus,
                             lambda up, utt: attention_maps(up, utt, device=device))
