"""ABX and unit-quality figures (s3viz.plot.abx_curve, s3viz.plot.unit_quality)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import s3viz.plot


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _abx():
    rows = [{"layer": layer, "upstream_layer": layer, "on": "phone", "by": by, "across": across,
             "abx_error": err} for by, across, base in (("speaker", "", 0.1), ("", "speaker", 0.2))
            for layer, err in enumerate(base + np.array([0.1, 0.03, 0.05]))]
    return pd.DataFrame(rows)


def test_abx_curve_lines_in_percent_best_marked_chance():
    ax = s3viz.plot.abx_curve(_abx())
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    within, across = "phone by speaker", "phone across speaker"
    assert {within, across, "chance (50 %)"} <= set(lines), set(lines)
    np.testing.assert_allclose(lines[within].get_ydata(), [20, 13, 15])
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert sorted(float(s.get_ydata()[0]) for s in stars) == pytest.approx([13, 23])
    assert ax.get_xticklabels()[0].get_text().startswith("0")
    assert "lower is better" in ax.get_ylabel()


def test_abx_curve_by_model_and_bad_input():
    df = pd.concat([_abx().assign(model="a"), _abx().assign(model="b")])
    ax = s3viz.plot.abx_curve(df[df["by"] == "speaker"], label_by="model")
    assert {"a", "b"} <= {ln.get_label() for ln in ax.get_lines()}
    with pytest.raises(ValueError, match="lacks columns"):
        s3viz.plot.abx_curve(pd.DataFrame({"layer": [0]}))
    with pytest.raises(TypeError, match="abx_layers"):
        s3viz.plot.abx_curve([1, 2])


def test_unit_quality_plot_measures_and_ks():
    df = pd.DataFrame([{"layer": layer, "upstream_layer": layer, "k": k, "pnmi": 0.1 * layer,
                        "phone_purity": 0.2, "cluster_purity": 0.3}
                       for k in (50, 100) for layer in range(3)])
    _, ax = plt.subplots()
    assert s3viz.plot.unit_quality(df, ax=ax) is ax
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "PNMI (k=50)" in labels and "cluster purity (k=100)" in labels
    one = s3viz.plot.unit_quality(df[df["k"] == 50])
    assert one.get_title() == "k-means units, k=50"
    with pytest.raises(ValueError, match="empty"):
        s3viz.plot.unit_quality(df.iloc[:0])


def test_unit_quality_plot_by_model():
    df = pd.DataFrame([{"model": m, "layer": layer, "k": 50, "pnmi": 0.1 * layer + i,
                        "phone_purity": 0.2, "cluster_purity": 0.3}
                       for i, m in enumerate(("tiny", "random")) for layer in range(3)])
    ax = s3viz.plot.unit_quality(df, measures=("pnmi",), label_by="model")
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"tiny", "random"}
    np.testing.assert_allclose(lines["random"].get_ydata(), [1.0, 1.1, 1.2])


def test_utterance_figure():
    from s3viz.data import synthetic_corpus

    utt = synthetic_corpus(1, seed=0)[0]
    ax_w, ax_s = s3viz.plot.utterance(utt)
    assert ax_w.get_title() == utt.text
    assert ax_w.get_xlim() == pytest.approx((0, utt.num_samples / 16000))
    texts = [t.get_text() for t in ax_w.texts]
    assert texts == [p for p in utt.phones["phone"] if p]  # one label per segment
    assert len(ax_s.images) == 1 and ax_s.get_ylabel() == "Hz"
    with pytest.raises(ValueError, match="no samples"):
        s3viz.plot.utterance(type("U", (), {"wav": np.zeros(0), "phones": None})())


def test_weight_history_plot():
    df = pd.DataFrame({"step": [0, 20, 40], "loss": [3.0, 2.0, 1.5], "dev_accuracy": 0.5,
                       **{f"weight_{i}": [1 / 13, 1 / 13 + 0.01 * i, 1 / 13] for i in range(13)}})
    ax = s3viz.plot.weight_history(df)
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("layer")]
    assert len(lines) == 13 and lines[0].get_xdata()[0] == 0
    colours = {tuple(ln.get_color()) for ln in lines}
    assert len(colours) == 13  # no colour repeats
    assert "uniform 1/13" in [ln.get_label() for ln in ax.get_lines()]
    with pytest.raises(ValueError, match="no weight_"):
        s3viz.plot.weight_history(df[["step", "loss"]])
