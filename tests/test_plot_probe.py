"""Probe and similarity figures (s3viz.plot.probe_curve, s3viz.plot.similarity)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import s3viz.plot


@pytest.fixture(autouse=True)
def _no_show(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("plot functions must never call plt.show()")

    monkeypatch.setattr(plt, "show", boom)
    yield
    plt.close("all")


def _probe_df(control=False):
    rows = []
    for target, chance in (("phone", 0.1), ("speaker", 0.2)):
        for method in ("ridge", "logistic"):
            for layer in range(4):
                acc = 0.3 + 0.1 * layer + (0.02 if method == "logistic" else 0)
                row = {"target": target, "method": method, "layer": layer, "upstream_layer": layer,
                           "accuracy": acc, "accuracy_std": 0.02, "macro_f1": acc - 0.05, "chance": chance}
                if control:
                    row.update(control_accuracy=0.2, selectivity=acc - 0.2)
                rows.append(row)
    return pd.DataFrame(rows)


def test_probe_curve_lines_band_chance_labels():
    df = _probe_df()
    ax = s3viz.plot.probe_curve(df)
    assert isinstance(ax, matplotlib.axes.Axes)
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(solid) == 4  # target x method
    assert len(dashed) == 2  # one chance line per target
    np.testing.assert_allclose(dashed[0].get_ydata(), 0.1)
    np.testing.assert_allclose(solid[0].get_ydata(), df["accuracy"].iloc[:4])
    assert len(ax.collections) == 4  # +- std bands
    assert ax.get_ylim() == (0.0, 1.0)  # a fraction, not percent
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["0\nCNN/proj", "1", "2", "3"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "phone / ridge" in legend and "chance (speaker)" in legend


def test_probe_curve_single_line_control_and_given_axes():
    df = _probe_df(control=True)
    df = df[(df.target == "phone") & (df.method == "ridge")]
    _fig, (a, b) = plt.subplots(1, 2)
    ax = s3viz.plot.probe_curve(df, ax=b)
    assert ax is b and not a.get_lines()
    styles = sorted(ln.get_linestyle() for ln in ax.get_lines())
    assert styles == ["-", "--", ":"]  # score, chance, control task
    assert ax.get_xticklabels()[0].get_text() == "0\nCNN/proj"
    other = s3viz.plot.probe_curve(df, layer0="log-mel")
    assert other.get_xticklabels()[0].get_text() == "0\nlog-mel"
    sel = s3viz.plot.probe_curve(df, metric="selectivity")
    assert len(sel.get_lines()) == 1 and "selectivity" in sel.get_ylabel()


def test_probe_curve_bad_input():
    with pytest.raises(ValueError, match="lacks columns"):
        s3viz.plot.probe_curve(pd.DataFrame({"layer": [0]}))
    with pytest.raises(TypeError, match="probe_layers"):
        s3viz.plot.probe_curve([1, 2])


def test_similarity_heatmap():
    vals = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    df = pd.DataFrame(vals, index=pd.Index([0, 1, 2], name="layer"),
                      columns=pd.Index([0, 1, 2], name="layer"))
    ax = s3viz.plot.similarity(df)
    assert isinstance(ax, matplotlib.axes.Axes)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 9 and texts[1] == "0.50"
    assert next(t.get_text() for t in ax.get_yticklabels()) == "0 CNN/proj"  # one line
    assert len(ax.figure.axes) == 2  # the heatmap and its colorbar
    assert ax.figure.axes[1].get_ylabel() == "linear CKA"
    np.testing.assert_allclose(ax.images[0].get_array(), vals)
    df.attrs["method"] = "cca"  # an SVCCA table is labelled as such
    ax = s3viz.plot.similarity(df)
    assert ax.figure.axes[1].get_ylabel() == "SVCCA (mean canonical correlation)"


def test_similarity_uses_upstream_layer_ids_and_given_axes():
    df = pd.DataFrame(np.eye(2), index=pd.Index([0, 1], name="layer"),
                      columns=pd.Index([0, 1, ], name="other_layer"))
    df.attrs.update(upstream_layers=[6, 12], other_upstream_layers=[0, 3])
    fig, ax0 = plt.subplots()
    big = pd.DataFrame(np.eye(13), index=pd.Index(range(13), name="layer"),
                       columns=pd.Index(range(13), name="layer"))
    assert not s3viz.plot.similarity(big).texts  # 13 x 13: no unreadable numbers by default
    ax = s3viz.plot.similarity(df, ax=ax0, annotate=False, colorbar=False, layer0="mel")
    assert ax is ax0 and not ax.texts and len(fig.axes) == 1
    assert [t.get_text() for t in ax.get_yticklabels()] == ["6", "12"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0\nmel", "3"]
    assert ax.get_xlabel() == "other_layer"
    with pytest.raises(ValueError, match="empty"):
        s3viz.plot.similarity(pd.DataFrame())


def test_a_curve_refused_at_every_layer_says_so_in_the_legend():
    import matplotlib.pyplot as plt

    df = pd.DataFrame({"layer": [0, 1, 0, 1], "accuracy": [0.5, 0.6, np.nan, np.nan],
                       "chance": 0.1, "target": "speaker", "method": ["a", "a", "b", "b"]})
    ax = s3viz.plot.probe_curve(df)
    labels = ax.get_legend_handles_labels()[1]
    assert "speaker / b (refused: no number at any layer)" in labels
    assert "speaker / a" in labels
    plt.close(ax.figure)
