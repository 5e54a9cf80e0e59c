"""The layer projection explorer and its computation (the browser test is in test_browser)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _abx_case
import s3viz
from s3viz.widgets import layer_projection_explorer
from s3viz.widgets._projection import projection


@pytest.fixture(scope="module")
def store():
    return _abx_case.store()


def test_pca_projection_of_a_sample(store):
    pts = projection(store, 0, max_points=60, seed=1)
    assert len(pts) == 60 and set(pts.columns) == {"x", "y", "label", "row"}
    lab = store.frame_labels(0)
    np.testing.assert_array_equal(pts["label"], lab[pts["row"]])
    assert "" not in set(pts["label"])
    # PCA: the axes are uncorrelated and ordered by variance, and hold the stated share
    x, _ = store.layer(0)
    sample = x[torch.from_numpy(pts["row"].to_numpy().copy())].double()
    sample = sample - sample.mean(0)
    sv = torch.linalg.svdvals(sample)
    assert pts.attrs["explained"] == pytest.approx(float((sv[:2] ** 2).sum() / (sv ** 2).sum()))
    assert abs(np.corrcoef(pts["x"], pts["y"])[0, 1]) < 1e-6
    assert pts["x"].var() >= pts["y"].var()
    pd_again = projection(store, 0, max_points=60, seed=1)
    np.testing.assert_allclose(pd_again[["x", "y"]], pts[["x", "y"]])


def test_explorer_moves_between_layers(store):
    probe = s3viz.probe_layers(store, "phone", device="cpu", folds=3)
    w = layer_projection_explorer(store, probe=probe, max_points=80)
    assert w.slider.value == 0
    png0, info0 = w.image.value, w.info.value
    assert png0[:8] == b"\x89PNG\r\n\x1a\n" and "accuracy" in info0
    w.slider.value = 1
    assert w.image.value != png0 and w.info.value != info0
    acc1 = probe.loc[probe["layer"] == 1, "accuracy"].iat[0]
    assert f"accuracy {acc1:.3f}" in w.info.value
    bundle = w._repr_mimebundle_()
    assert "image/png" in bundle and "layer=1" in bundle["text/plain"]


def test_explorer_by_speaker_runs_its_probe(store):
    w = layer_projection_explorer(store, "speaker", max_points=50, device="cpu")
    assert set(w.points["label"]) <= {"spkA", "spkB", "spkC"}
    assert "probe of speaker" in w.info.value


@pytest.mark.parametrize("kw, exc, match", [
    ({"method": "tsne"}, ValueError, "method must be one of"),
    ({"color_by": "stress"}, ValueError, "color_by must be one of"),
    ({"layers": []}, ValueError, "selects no layer"),
    ({"probe": "yes"}, TypeError, "probe must be"),
    ({"max_points": 2}, ValueError, "max_points must be >= 3"),
])
def test_explorer_bad_arguments(store, kw, exc, match):
    kw = {"probe": None, **kw}
    with pytest.raises(exc, match=match):
        layer_projection_explorer(store, **kw)


def test_umap_is_optional(store, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_umap(name, *a, **k):
        if name == "umap":
            raise ImportError("no umap")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_umap)
    with pytest.raises(ImportError, match="pip install umap-learn"):
        layer_projection_explorer(store, method="umap", probe=None)


def test_explorer_says_why_there_is_no_score():
    from s3viz.store import LayerStore

    hidden, tables, labels = _abx_case.case()
    labels["speaker"] = "one"  # a single speaker: no speaker-split probe is possible
    st = LayerStore.from_tensors(hidden, downsample_rates=[320, 320], labels=labels,
                                 phones=tables)
    w = layer_projection_explorer(st, max_points=40, device="cpu")
    assert "no probe score: only 1 distinct speaker" in w.info.value
