"""The layer-weight explorer: one slider per layer of a weighted sum, its live probe score.

Re-scored in milliseconds from :class:`s3viz.WeightedScorer`'s cached statistics;
buttons set uniform, best-layer or learned weights. More: ``docs/featurizers.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import ipywidgets as W
import numpy as np
import pandas as pd

from ..featurizer_training import train_featurizer
from ..featurizers import WeightedSumFeaturizer
from ..probe.weighted import WeightedScorer
from ..plot._common import layer_label, png, with_png
from ..plot._weights import layer_weights

__all__ = ["LayerWeightExplorer", "layer_weight_explorer"]

_BAR_HEIGHT = "140px"


def _as_series(weights, layers: Sequence[int], name: str) -> pd.Series:
    if isinstance(weights, WeightedSumFeaturizer) or hasattr(weights, "layer_weights"):
        weights = weights.layer_weights
    if isinstance(weights, pd.DataFrame):
        if len(weights) != 1:
            raise ValueError(f"{name}: give one row (df.loc[name]), got {len(weights)}")
        weights = weights.iloc[0]
    if isinstance(weights, pd.Series):
        missing = [l_ for l_ in layers if l_ not in weights.index]
        extra = [l_ for l_ in weights.index if l_ not in list(layers)]
        if missing or extra:  # weights of another model (13 layers on a 5-layer store)
            raise ValueError(f"{name} is indexed by layers {list(weights.index)}, but the store "
                             f"has layers {list(layers)} (missing {missing}, not in the store "
                             f"{extra}): these weights were learned on another model or layer "
                             "selection; load the weights of this store's model")
        weights = weights.reindex(layers)
    arr = np.asarray(weights, dtype=float).reshape(-1)
    if arr.shape != (len(layers),):
        raise ValueError(f"{name} must have {len(layers)} weights (layers {list(layers)}), got "
                         f"{arr.shape[0]}")
    if np.isnan(arr).any() or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"{name} must be non-negative, not all zero and without NaN: {arr}")
    return pd.Series(arr / arr.sum(), index=pd.Index(list(layers), name="layer"), name=name)


class LayerWeightExplorer(W.VBox):
    """The widget of :func:`layer_weight_explorer`.

    Per layer a ``FloatSlider`` in ``sliders`` (relative weight in [0, 1]), a vertical
    ``FloatProgress`` in ``bars`` (normalised weight; the bars' top is the largest
    weight, at least twice the uniform one) and an ``HTML`` in ``weight_labels``;
    ``score_label``, the presets ``uniform_button``, ``best_button``, ``learned_button``
    and the ``scorer`` (:class:`~s3viz.probe.weighted.WeightedScorer`).
    """

    def __init__(self, scorer: WeightedScorer, *, learned=None, train=None, title=None):
        self.scorer = scorer
        self.layers = list(scorer.layers)
        self._train = train
        self._learned = None if learned is None else _as_series(learned, self.layers, "learned")
        self._suspend = False
        self.last_update_ms = float("nan")
        self.layer_scores = scorer.layer_scores()
        self.best_layer = int(self.layer_scores.idxmax())
        L = len(self.layers)
        self.uniform_score = scorer.score(np.ones(L))
        self.chance = scorer.chance  # training majority on the test frames, as the probes

        self.sliders, self.bars, self.weight_labels, columns = [], [], [], []
        for l_ in self.layers:
            slider = W.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.01, orientation="vertical",
                                   readout=True, readout_format=".2f", continuous_update=True,
                                   layout=W.Layout(height=_BAR_HEIGHT, width="52px"))
            slider.add_class("s3viz-layer-slider")
            bar = W.FloatProgress(value=1.0 / L, min=0.0, max=1.0, orientation="vertical",
                                  layout=W.Layout(height=_BAR_HEIGHT, width="22px"))
            label = W.HTML(layout=W.Layout(width="52px"))
            label.add_class("s3viz-layer-weight")
            name = W.HTML(f"<div style='text-align:center;font-size:11px;line-height:1.1'>"
                          f"{layer_label(l_).replace(chr(10), '<br>')}</div>",
                          layout=W.Layout(width="52px"))
            slider.observe(self._on_slider, names="value")
            self.sliders.append(slider)
            self.bars.append(bar)
            self.weight_labels.append(label)
            columns.append(W.VBox([bar, label, slider, name],
                                  layout=W.Layout(align_items="center", width="56px")))
        self.score_label = W.HTML()
        self.score_label.add_class("s3viz-score")
        self.status = W.HTML()
        auto = W.Layout(width="auto")
        self.uniform_button, self.best_button, self.learned_button = (
            W.Button(description=d, tooltip=t, layout=auto) for d, t in (
                ("uniform", "all layers equal (1/L)"),
                (f"best single layer ({self.best_layer})",
                 "only the layer that scores best on its own"),
                ("learned weights",
                 "weights learned jointly with a linear head (train_featurizer)")))
        self.uniform_button.on_click(lambda _: self.set_weights(np.ones(L)))
        self.best_button.on_click(lambda _: self.show_best_layer())
        self.learned_button.on_click(lambda _: self.show_learned())
        self.learned_button.disabled = self._learned is None and self._train is None
        head = W.HTML(f"<b>{title or 'Layer weights'}</b> &nbsp; target <code>{scorer.target}</code>"
                      f" ({scorer.level} level, {len(scorer.classes)} classes, "
                      f"{scorer.n_train} train / {scorer.n_test} test)")
        super().__init__([head, W.HBox(columns, layout=W.Layout(overflow="auto")),
                          self.score_label,
                          W.HBox([self.uniform_button, self.best_button, self.learned_button]),
                          self.status])
        self.add_class("s3viz-layer-weight-explorer")
        self._update()

    @property
    def weights(self) -> pd.Series:
        """Current normalised weights (probabilities), indexed by layer."""
        raw = np.array([s.value for s in self.sliders], dtype=float)
        total = raw.sum()
        probs = raw / total if total > 0 else np.full(len(raw), np.nan)
        return pd.Series(probs, index=pd.Index(self.layers, name="layer"), name="weight")

    @property
    def score(self) -> float:
        """Current score (test accuracy of the ridge probe on the weighted sum)."""
        return self._score

    def set_weights(self, weights) -> LayerWeightExplorer:
        """Move the sliders to ``weights`` (any non-negative scale) and update once."""
        w = _as_series(weights, self.layers, "weights").to_numpy()
        rel = w / w.max()
        self._suspend = True
        try:
            for slider, v in zip(self.sliders, rel):
                slider.value = float(np.round(v, 4))
        finally:
            self._suspend = False
        self._update()
        return self

    def show_best_layer(self) -> LayerWeightExplorer:
        """Select only the best single layer."""
        w = np.zeros(len(self.layers))
        w[self.layers.index(self.best_layer)] = 1.0
        return self.set_weights(w)

    def show_learned(self) -> LayerWeightExplorer:
        """Show the learned weights (training them first when none were given)."""
        if self._learned is None:
            if self._train is None:
                raise ValueError("no learned weights: pass learned=... to layer_weight_explorer")
            self.status.value = "training the weighted-sum featurizer …"
            featurizer, _ = self._train()
            self._learned = _as_series(featurizer, self.layers, "learned")
            self.status.value = ""
        return self.set_weights(self._learned)

    def _on_slider(self, change):
        if not self._suspend:
            self._update()

    def _update(self):
        t0 = time.perf_counter()
        w = self.weights
        if not np.isfinite(w.to_numpy()).all():
            self._score = float("nan")
            for bar, label in zip(self.bars, self.weight_labels):
                bar.value = 0.0
                label.value = _weight_html(float("nan"))
            self.score_label.value = ("<span style='color:#a00'>all weights are zero: raise at "
                                      "least one slider</span>")
            return
        # bars scaled to the largest weight (at least twice uniform), not to 1: with 13
        # layers 0.05 and 0.11 must not look alike
        top = max(float(w.max()), 2.0 / len(w))
        for bar, label, p in zip(self.bars, self.weight_labels, w.to_numpy()):
            bar.max = top
            bar.value = float(p)
            label.value = _weight_html(float(p))
        result = self.scorer.evaluate(w.to_numpy())
        self._score = result["accuracy"]
        self.last_update_ms = (time.perf_counter() - t0) * 1000.0
        self.score_label.value = (
            f"<span class='s3viz-score-value' style='font-size:15px'><b>accuracy "
            f"{self._score:.3f}</b></span> &nbsp; ridge probe on the weighted sum "
            f"({self.scorer.dims} dims) &nbsp;|&nbsp; uniform {self.uniform_score:.3f}, best layer "
            f"{self.best_layer}: {self.layer_scores.max():.3f}, chance {self.chance:.3f} "
            f"<span style='color:#888'>({self.last_update_ms:.0f} ms)</span>")

    def figure(self, ax=None):
        """Matplotlib bar chart of the current weights, the score in the title; returns the Axes."""
        return layer_weights(self.weights.fillna(0.0), ax=ax,
                             title=f"{self.scorer.target}: accuracy {self._score:.3f} "
                                   f"(uniform {self.uniform_score:.3f})")

    def _repr_mimebundle_(self, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 3.2), dpi=90)
        self.figure(ax=fig.add_subplot(111))
        fig.tight_layout()
        return with_png(super()._repr_mimebundle_(**kwargs), png(fig), (
            f"LayerWeightExplorer(target={self.scorer.target!r}, accuracy={self._score:.3f}, "
            "weights=" + ", ".join(f"{l_}:{p:.2f}" for l_, p in self.weights.items()) + ")"))


def _weight_html(p: float) -> str:
    text = "–" if not np.isfinite(p) else f"{p:.2f}"
    return f"<div style='text-align:center;font-size:11px'>{text}</div>"


def layer_weight_explorer(store, target: str, *, level: str = "frame",
                          layers: Sequence[int] | None = None, learned=None, dims: int | None = 128,
                          scorer: WeightedScorer | None = None, train_kwargs: dict | None = None,
                          title: str | None = None, **scorer_kwargs) -> LayerWeightExplorer:
    """An interactive widget to move layer weights and watch the probe score.

    Args:
        learned: learned weights for the "learned weights" button (a Series
            indexed by layer, a featurizer, or a checkpoint's
            :func:`s3viz.load_featurizer_weights`); when None the button runs
            :func:`s3viz.train_featurizer` on first click.
        scorer: reuse an existing :class:`WeightedScorer` (then ``store``,
            ``target``, ``level``, ``layers``, ``dims`` only feed training).
        train_kwargs: extra arguments of :func:`train_featurizer` for the
            "learned weights" button, e.g. ``{"options": s3viz.TrainOptions(steps=100),
            "device": "cpu"}``.
        **scorer_kwargs: passed to :class:`WeightedScorer` (``split_by``,
            ``test_fraction``, ``lambdas``, ``seed``, ``device`` ...).

    Returns a :class:`LayerWeightExplorer` (an ``ipywidgets.VBox``), not displayed.
    """
    if scorer is None:
        scorer = WeightedScorer(store, target, level=level, layers=layers, dims=dims,
                                **scorer_kwargs)
    elif not isinstance(scorer, WeightedScorer):
        raise TypeError(f"scorer must be a WeightedScorer, got {type(scorer).__name__}")
    kwargs = dict(train_kwargs or {})

    def train():
        return train_featurizer(store, scorer.target, level=scorer.level, layers=scorer.layers,
                                **kwargs)

    return LayerWeightExplorer(scorer, learned=learned, train=train, title=title)
