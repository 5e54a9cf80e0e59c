"""The layer-weight widget driven by setting ``.value`` / clicking, and the weight plots."""

from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from s3viz.featurizer_training import TrainOptions
from s3viz.probe.weighted import WeightedScorer
from s3viz.plot._weights import (
    layer_weights,
    layer_weights_heatmap,
    weights_and_probe,
    weights_table,
)
from s3viz.widgets._weights import LayerWeightExplorer, layer_weight_explorer

INFORMATIVE = 2


def _store(n_utt=16, num_layers=4, hidden=12, n_phones=5, seed=0):
    """Layer 2 encodes the phone of each frame; the other layers are noise."""
    from s3viz.store import LayerStore

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_phones, hidden)) * 2.0
    hs, phones, rows = [], [], []
    for i in range(n_utt):
        n = int(rng.integers(20, 40))
        cuts = np.sort(rng.choice(np.arange(1, n), size=n // 4, replace=False))
        starts, ends = np.r_[0, cuts], np.r_[cuts, n]
        lab = rng.integers(n_phones, size=len(starts))
        per_frame = np.repeat(lab, ends - starts)
        layers = []
        for l_ in range(num_layers):
            x = rng.normal(size=(n, hidden))
            if l_ == INFORMATIVE:
                x = 0.3 * x + emb[per_frame]
            layers.append(torch.tensor(x, dtype=torch.float32))
        hs.append(layers)
        phones.append(pd.DataFrame({"phone": [f"p{v}" for v in lab], "word": "w",
                                    "start": starts * 320, "end": ends * 320}))
        rows.append({"id": f"u{i:02d}", "speaker": f"s{i % 4}"})
    return LayerStore.from_tensors(hs, downsample_rates=[320] * num_layers,
                                   labels=pd.DataFrame(rows), phones=phones)


@pytest.fixture(scope="module")
def store():
    return _store()


@pytest.fixture(scope="module")
def scorer(store):
    return WeightedScorer(store, "phone", device="cpu")


@pytest.fixture()
def widget(store, scorer):
    learned = pd.Series([0.1, 0.1, 0.7, 0.1], index=pd.Index(range(4), name="layer"))
    return layer_weight_explorer(store, "phone", scorer=scorer, learned=learned)


def _shown_weights(widget):
    """The weights as the widget displays them (bars and their text labels)."""
    bars = np.array([b.value for b in widget.bars])
    texts = [float(lbl.value.split(">")[1].split("<")[0]) for lbl in widget.weight_labels]
    return bars, np.array(texts)


def test_factory_returns_widget_with_one_control_per_layer(widget, scorer):
    assert isinstance(widget, LayerWeightExplorer) and isinstance(widget, W.VBox)
    assert len(widget.sliders) == len(widget.bars) == len(widget.weight_labels) == 4
    assert all(isinstance(s, W.FloatSlider) for s in widget.sliders)
    np.testing.assert_allclose(widget.weights.to_numpy(), 0.25)
    bars, texts = _shown_weights(widget)
    np.testing.assert_allclose(bars, 0.25)
    np.testing.assert_allclose(texts, 0.25)
    assert widget.score == pytest.approx(scorer.score(np.ones(4)), abs=1e-12)
    assert f"{widget.score:.3f}" in widget.score_label.value
    assert widget.best_layer == INFORMATIVE


def test_moving_a_slider_updates_weights_bars_and_score(widget, scorer):
    before = widget.score
    widget.sliders[INFORMATIVE].value = 0.0  # drop the informative layer
    expected = np.array([1, 1, 0, 1]) / 3
    np.testing.assert_allclose(widget.weights.to_numpy(), expected, rtol=1e-12)
    bars, texts = _shown_weights(widget)
    np.testing.assert_allclose(bars, expected, rtol=1e-12)
    np.testing.assert_allclose(texts, np.round(expected, 2))
    assert widget.score == pytest.approx(scorer.score(expected), abs=1e-12)
    assert widget.score < before - 0.3  # without layer 2 only noise is left
    assert f"accuracy {widget.score:.3f}" in widget.score_label.value
    widget.sliders[0].value = 0.5
    expected = np.array([0.5, 1, 0, 1]) / 2.5
    np.testing.assert_allclose(widget.weights.to_numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(_shown_weights(widget)[0], expected, rtol=1e-12)


def test_buttons_uniform_best_and_learned(widget, scorer):
    widget.best_button.click()
    assert [s.value for s in widget.sliders] == [0.0, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(widget.weights.to_numpy(), np.eye(4)[INFORMATIVE])
    assert widget.score == pytest.approx(scorer.layer_scores()[INFORMATIVE], abs=1e-12)
    assert widget.score > 0.95
    widget.learned_button.click()
    np.testing.assert_allclose(widget.weights.to_numpy(), [0.1, 0.1, 0.7, 0.1], atol=1e-4)
    assert widget.score == pytest.approx(scorer.score(widget.weights.to_numpy()), abs=1e-12)
    widget.uniform_button.click()
    np.testing.assert_allclose(widget.weights.to_numpy(), 0.25)
    np.testing.assert_allclose(_shown_weights(widget)[0], 0.25)


def test_learned_button_trains_when_no_weights_are_given(store, scorer):
    w = layer_weight_explorer(store, "phone", scorer=scorer,
                              train_kwargs={"options": TrainOptions(steps=40, lr=0.05),
                                            "device": "cpu"})
    assert not w.learned_button.disabled
    w.learned_button.click()
    assert int(w.weights.idxmax()) == INFORMATIVE
    assert w.weights[INFORMATIVE] > 0.4
    assert w.status.value == ""


def test_all_zero_weights_show_a_message(widget):
    for s in widget.sliders:
        s.value = 0.0
    assert np.isnan(widget.score)
    assert "all weights are zero" in widget.score_label.value
    assert all(b.value == 0 for b in widget.bars)
    assert all("–" in lbl.value for lbl in widget.weight_labels)
    widget.sliders[1].value = 1.0
    np.testing.assert_allclose(widget.weights.to_numpy(), np.eye(4)[1])
    assert np.isfinite(widget.score)


def test_set_weights_validates(widget):
    widget.set_weights(pd.Series([1.0, 3.0], index=[2, 3]).reindex(range(4), fill_value=0.0))
    np.testing.assert_allclose(widget.weights.to_numpy(), [0, 0, 0.25, 0.75], atol=1e-4)
    with pytest.raises(ValueError, match="4 weights"):
        widget.set_weights([1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        widget.set_weights([1, -1, 0, 0])
    with pytest.raises(ValueError, match=r"missing \[0, 1, 2, 3\], not in the store \[7\]"):
        widget.set_weights(pd.Series([1.0], index=[7]))


def test_static_fallback_mimebundle_has_png_and_text(widget):
    widget.best_button.click()
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # live widget where possible
    png = base64.b64decode(bundle["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert "accuracy=" in bundle["text/plain"] and "2:1.00" in bundle["text/plain"]
    ax = widget.figure()
    assert [p.get_height() for p in ax.patches] == pytest.approx([0, 0, 1, 0])
    plt.close(ax.figure)


def test_bad_arguments(store):
    with pytest.raises(TypeError, match="WeightedScorer"):
        layer_weight_explorer(store, "phone", scorer="nope")
    with pytest.raises(ValueError, match="learned"):
        layer_weight_explorer(store, "phone", learned=[1, 2], device="cpu")


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


@pytest.fixture()
def weights():
    return pd.Series([0.05, 0.1, 0.5, 0.35], index=pd.Index(range(4), name="layer"),
                     name="weight")


def test_layer_weights_plot(weights):
    ax = layer_weights(weights)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(weights.tolist())
    baseline = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(baseline) == 1 and baseline[0].get_ydata()[0] == pytest.approx(0.25)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "CNN" in labels[0] and labels[1:] == ["1", "2", "3"]
    assert ax.get_ylim()[1] < 1.0  # probabilities, not percent
    assert "probability" in ax.get_ylabel()
    _, ax2 = plt.subplots()
    assert layer_weights(weights, ax=ax2) is ax2
    with pytest.raises(ValueError, match="heatmap"):
        layer_weights(pd.DataFrame([weights, weights]))
    plt.close("all")


def test_layer_weights_heatmap(weights):
    df = pd.DataFrame([weights, weights[::-1].to_numpy()], index=["asr", "sid"])
    ax = layer_weights_heatmap(df)
    img = ax.get_images()[0]
    np.testing.assert_allclose(np.asarray(img.get_array()), df.to_numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["asr", "sid"]
    assert "CNN" in ax.get_xticklabels()[0].get_text()
    assert len(ax.texts) == 8  # annotated cells
    with pytest.raises(ValueError, match="non-empty"):
        layer_weights_heatmap(pd.DataFrame())
    plt.close("all")


def test_weights_and_probe_overlay_and_table(weights, tmp_path):
    probe = pd.DataFrame({"layer": range(4), "accuracy": [0.2, 0.4, 0.9, 0.7],
                          "method": "ridge", "target": "phone"})
    ax = weights_and_probe(weights, probe)
    assert [p.get_height() for p in ax.patches] == pytest.approx(weights.tolist())
    (line,) = ax.probe_ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), probe["accuracy"])
    table = weights_table(weights, probe)
    assert list(table.columns) == ["layer", "weight", "uniform", "accuracy"]
    np.testing.assert_allclose(table["accuracy"], probe["accuracy"])
    table.to_csv(tmp_path / "w.csv", index=False)
    back = pd.read_csv(tmp_path / "w.csv")
    np.testing.assert_allclose(back["weight"], weights.to_numpy())
    two = pd.concat([probe, probe.assign(method="logistic", accuracy=0.5)])
    ax = weights_and_probe(weights, two)
    assert len(ax.probe_ax.get_lines()) == 2
    assert "accuracy[logistic]" in weights_table(weights, two).columns
    with pytest.raises(KeyError, match="macro"):
        weights_and_probe(weights, probe, metric="macro")
    plt.close("all")


def test_bars_share_a_scale_topped_by_the_largest_weight(store):
    from s3viz.widgets import layer_weight_explorer

    w = layer_weight_explorer(store, "phone", device="cpu")
    n = len(w.bars)
    assert all(b.max == pytest.approx(2.0 / n) for b in w.bars)  # uniform: twice uniform on top
    w.sliders[0].value = 1.0
    for s in w.sliders[1:]:
        s.value = 0.05
    top = max(b.value for b in w.bars)
    assert all(b.max == pytest.approx(top) for b in w.bars) and w.bars[0].value == top
