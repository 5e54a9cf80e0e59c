"""The layer projection explorer: frames of one layer in 2-D, coloured by phone or speaker.

A layer slider, a PNG scatter of a seeded frame sample projected by PCA (or UMAP) and
the layer's probe score; :func:`projection` is the computation alone (``docs/reports.md``).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
import torch

from .. import _validate as _v
from .._numerics import read_dtype
from ..plot._common import layer_label, png, with_png

__all__ = ["LayerProjectionExplorer", "layer_projection_explorer", "projection", "METHODS"]

METHODS = ("pca", "umap")
COLOR_BY = ("phone", "speaker", "word")
_WIDTH, _HEIGHT, _DPI = 640, 440, 100


def projection(store, layer: int, *, color_by: str = "phone", method: str = "pca",
               max_points: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A 2-D projection (``"pca"`` or ``"umap"``) of a seeded sample of ``max_points`` of one
    layer's frames labelled by ``color_by`` (``"phone"``, ``"word"`` or ``"speaker"``).

    One row per drawn frame: ``x``, ``y``, ``label``, ``row`` (its row in
    ``store.layer(layer)``); ``attrs["explained"]``: PCA's share of the variance in the
    two axes (NaN for UMAP).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {COLOR_BY}, got {color_by!r}")
    max_points = _v.integer(max_points, "max_points", minimum=3)
    s = store._layer_index(layer)
    if color_by == "speaker":
        if "speaker" not in store.labels.columns:
            raise ValueError("color_by='speaker' needs a 'speaker' column in store.labels")
        lab = np.repeat(store.labels["speaker"].astype(str).to_numpy(),
                        np.asarray(store.lengths(s)))
    elif all(p is None for p in store.phones):
        raise ValueError(f"color_by={color_by!r} needs phone alignments (store.phones); use "
                         "color_by='speaker'")
    else:
        lab = store.frame_labels(s, column=color_by)
    rows = np.flatnonzero(lab != "")  # a seeded draw among the labelled frames
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng([seed, 5]).choice(rows, max_points, replace=False))
    if len(rows) < 3:
        raise ValueError(f"stored layer {s} has {len(rows)} labelled frames; a projection "
                         "needs at least 3")
    x, _ = store.layer(s, dtype=read_dtype(store))
    x = x[torch.from_numpy(rows)].double()
    x = x - x.mean(0)
    explained = float("nan")
    if method == "pca":
        _, sv, vt = torch.linalg.svd(x, full_matrices=False)
        xy = (x @ vt[:2].T).numpy()
        if xy.shape[1] < 2:
            xy = np.concatenate([xy, np.zeros((len(xy), 1))], 1)
        total = float((sv ** 2).sum())
        explained = float((sv[:2] ** 2).sum()) / total if total > 0 else float("nan")
    else:
        xy = _umap().UMAP(n_components=2, random_state=int(seed)).fit_transform(x.numpy())
    out = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": lab[rows], "row": rows})
    out.attrs.update(explained=explained, layer=s, method=method, color_by=color_by)
    return out


def _umap():
    try:
        import umap  # umap-learn
    except ImportError as e:
        raise ImportError("method='umap' needs umap-learn: pip install umap-learn "
                          "(or use method='pca')") from e
    return umap


class LayerProjectionExplorer(W.VBox):
    """The widget of :func:`layer_projection_explorer`: ``slider`` (over the stored layers),
    ``image`` (the scatter, PNG), ``info`` (HTML: the probe score and the projection's
    details) and ``points`` (the current layer's :func:`projection`)."""

    def __init__(self, store, layers, *, color_by, method, max_points, seed, probe,
                 max_colours: int = 12, note: str | None = None):
        self.note = note
        self.store, self.layers = store, list(layers)
        self.color_by, self.method = color_by, method
        self.max_points, self.seed = max_points, seed
        self.probe = probe
        self._cache: dict[int, pd.DataFrame] = {}
        import matplotlib

        # the max_colours most frequent labels of the first layer, tab20's 10 strong colours
        # first; the rest share grey
        cmap, order = matplotlib.colormaps["tab20"], [*range(0, 20, 2), *range(1, 20, 2)]
        top = self._points(self.layers[0])["label"].value_counts().index[:max_colours]
        self.palette = {v: cmap(order[i % 20]) for i, v in enumerate(top)}
        self.slider = W.SelectionSlider(
            options=[(str(v), v) for v in self.layers], value=self.layers[0],
            description="layer", continuous_update=False,
            layout=W.Layout(width=f"{_WIDTH}px"))
        self.slider.add_class("s3viz-projection-slider")
        self.image = W.Image(format="png", width=_WIDTH, height=_HEIGHT)
        self.image.add_class("s3viz-projection-image")
        self.info = W.HTML(layout=W.Layout(width="280px"))
        self.info.add_class("s3viz-projection-info")
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        super().__init__([self.slider, W.HBox([self.image, self.info])])
        self.add_class("s3viz-layer-projection-explorer")
        self.show(self.layers[0])

    def _points(self, layer: int) -> pd.DataFrame:
        if layer not in self._cache:
            self._cache[layer] = projection(self.store, layer, color_by=self.color_by,
                                            method=self.method, max_points=self.max_points,
                                            seed=self.seed)
        return self._cache[layer]

    def score_text(self, layer: int) -> str:
        """The layer's probe score for ``color_by`` (from the probe table), as HTML."""
        if self.probe is None or self.probe.empty:
            return f"<i>{html.escape(self.note or 'no probe score')}</i>"
        row = self.probe[self.probe["layer"] == layer]
        if row.empty:
            return "<i>no probe score for this layer</i>"
        r = row.iloc[0]
        best = self.probe.loc[self.probe["accuracy"].idxmax(), "layer"]
        tail = " (the best layer)" if int(best) == int(layer) else f" (best: layer {int(best)})"
        return (f"<span class='s3viz-projection-score'>{r['method']} probe of "
                f"{self.color_by}: accuracy {r['accuracy']:.3f}</span><br>chance "
                f"{r['chance']:.3f}{tail}")

    def show(self, layer: int) -> None:
        from matplotlib.figure import Figure

        self.points = pts = self._points(layer)
        fig = Figure(figsize=(_WIDTH / _DPI, _HEIGHT / _DPI), dpi=_DPI)
        ax = fig.add_axes((0.02, 0.03, 0.74, 0.9))
        other = ~pts["label"].isin(list(self.palette))  # labels without a colour: grey
        if other.any():
            ax.scatter(pts.loc[other, "x"], pts.loc[other, "y"], s=6, color="0.75",
                       label=f"other ({int(other.sum())})", linewidths=0)
        for v, colour in self.palette.items():
            m = pts["label"] == v
            if m.any():
                ax.scatter(pts.loc[m, "x"], pts.loc[m, "y"], s=8, color=colour, label=str(v),
                           linewidths=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"layer {layer}: {self.method.upper()} of {len(pts)} frames", fontsize=10)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
                  markerscale=1.6, handletextpad=0.2)
        self.image.value = png(fig)
        extra = (f"PCA: the two axes hold {100 * pts.attrs['explained']:.1f} % of the variance"
                 if self.method == "pca" else "UMAP (distances are not to scale)")
        self.info.value = (f"<div style='font-size:13px;line-height:1.5;padding-left:8px'>"
                           f"<b>layer {layer_label(layer).replace(chr(10), ' ')}</b><br>"
                           f"{self.score_text(layer)}<br>{len(pts)} frames by "
                           f"{self.color_by}<br>{extra}</div>")

    def _repr_mimebundle_(self, **kwargs):
        return with_png(super()._repr_mimebundle_(**kwargs), self.image.value,
                        f"LayerProjectionExplorer(layer={self.slider.value}, "
                        f"color_by={self.color_by!r}, method={self.method!r})")


def layer_projection_explorer(store, color_by: str = "phone", *, method: str = "pca",
                              layers: Sequence[int] | None = None, max_points: int = 2000,
                              probe: pd.DataFrame | bool | None = True, seed: int = 0,
                              device=None) -> LayerProjectionExplorer:
    """A slider over layers and a 2-D picture of each layer's frames (``docs/reports.md``).

    Args:
        color_by: ``"phone"`` or ``"word"`` (needs alignments) or ``"speaker"``.
        method: ``"pca"`` or ``"umap"`` (``umap-learn``).
        max_points: frames drawn per layer.
        probe: the score shown beside the picture: ``True`` runs
            ``probe_layers(store, color_by)`` (ridge; speaker split by
            utterance; at most 5 folds; when it cannot run, the reason is shown
            in place of the score), a DataFrame of :func:`s3viz.probe_layers` is used as
            given, ``None``/``False`` shows none.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "umap":
        _umap()
    layer_list = _v.stored_layers(store, layers)
    note = None
    if probe is True:
        from ..probe import probe_layers

        split = "utterance" if color_by == "speaker" else "speaker"
        groups = (len(store) if split == "utterance" or "speaker" not in store.labels.columns
                  else store.labels["speaker"].nunique())
        try:  # at most 5 folds, fewer when there are fewer speakers
            probe = probe_layers(store, color_by, layers=layer_list, split_by=split,
                                 folds=max(2, min(5, groups)), device=device)
        except ValueError as e:  # the picture stands without the score: say why there is none
            probe, note = None, f"no probe score: {e}"
    elif probe is False:
        probe = None
    elif probe is not None and not isinstance(probe, pd.DataFrame):
        raise TypeError(f"probe must be True, False, None or the DataFrame of "
                        f"s3viz.probe_layers, got {type(probe).__name__}")
    if probe is not None and "target" in probe.columns:
        probe = probe[probe["target"] == color_by]
    return LayerProjectionExplorer(store, layer_list, color_by=color_by, method=method,
                                   max_points=max_points, seed=seed, probe=probe, note=note)
