"""Frame-level regression probes of acoustic tracks (issue 29): ``probe_layers(store,
"f0")`` on the tiny model, checked against scikit-learn's Ridge on the same folds and
frames, streamed equal to stored, and a segment's duration at level="segment"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import _regression_case
import s3viz
from s3viz.data import add_acoustic_tracks, synthetic_corpus
from s3viz.measures import RidgeProbe
from s3viz.probe import RidgeOptions
from s3viz.probe.folds import probe_folds
from s3viz.stream import stream_analysis
from s3viz.upstreams import get_upstream


@pytest.fixture(scope="module")
def tiny():
    return get_upstream("tiny", pretrained=False)


@pytest.fixture(scope="module")
def corpus():
    return add_acoustic_tracks(synthetic_corpus(12, seed=3),
                               tracks=("f0", "f0_semitones", "intensity"))


@pytest.fixture(scope="module")
def store(tiny, corpus):
    return s3viz.extract(tiny, corpus, batch_size=4, device="cpu", progress=False)


def _sklearn_frame_r2(store, target, layer, lam, folds=5, seed=0):
    """Pooled held-out R^2 of scikit-learn's Ridge on the frames whose target is defined,
    with the probe's folds (whole speakers, balanced by the frames of stored layer 0)."""
    x = store.layer(layer, dtype=torch.float64)[0].numpy()
    y = store.frame_values(layer, target)
    utt_fold = probe_folds(store, folds=folds, split_by="speaker", seed=seed)["fold"].to_numpy()
    fold = np.repeat(utt_fold, np.asarray(store.lengths(layer)))
    keep = np.isfinite(y)
    x, y, fold = x[keep], y[keep], fold[keep]
    pred = _regression_case.ridge_folds(x, y, fold, folds, lam)
    sse = ((y - pred) ** 2).sum()
    return 1 - sse / ((y - y.mean()) ** 2).sum(), int((~keep).sum())


def test_f0_probe_agrees_with_sklearn_ridge_on_the_same_frames(store):
    lam = 1e-2
    res = s3viz.probe_layers(store, "f0", method=RidgeOptions(lambdas=(lam,)), device="cpu")
    assert (res["level"] == "frame").all() and (res["unit"] == "Hz").all()
    assert len(res) == store.num_layer and res["r2"].notna().all()
    for layer in (0, store.num_layer - 1):
        want, undefined = _sklearn_frame_r2(store, "f0", layer, lam)
        row = res[res["layer"] == layer].iloc[0]
        assert row["r2"] == pytest.approx(want, abs=1e-6)
        # unvoiced frames are left out of F0 targets, and counted
        assert row["n_undefined"] == undefined > 0


def test_tracks_stream_as_they_are_stored(tiny, corpus, store):
    want = s3viz.probe_layers(store, ["f0_semitones", "intensity"], folds=3, bootstrap=200,
                              device="cpu")
    assert (want["unit"] == np.where(want["target"] == "intensity", "dB", "st re 100 Hz")).all()
    res = stream_analysis(tiny, corpus, [RidgeProbe(["f0_semitones", "intensity"], folds=3,
                                                    bootstrap=200)],
                          batch_size=4, device="cpu")
    pd.testing.assert_frame_equal(res["probe"], want, check_exact=False, rtol=1e-9, atol=1e-12)


def test_f0_control_task_types_frames_by_phone_context(store):
    res = s3viz.probe_layers(store, "f0", control=True, layers=[0, 2], folds=3, device="cpu")
    assert {"control_r2", "selectivity"} <= set(res.columns)
    assert np.allclose(res["selectivity"], res["r2"] - res["control_r2"])


def test_segment_duration_is_regressed_in_seconds(store):
    res = s3viz.probe_layers(store, "duration", level="segment", layers=[0, 2], folds=3,
                             bootstrap=200, device="cpu")
    assert (res["level"] == "segment").all() and (res["unit"] == "s").all()
    assert res["r2"].notna().all() and (res["r2_lo"] <= res["r2_hi"]).all()
    assert (res["rmse"] > 0).all() and (res["rmse"] < 0.2).all()  # seconds, not samples
