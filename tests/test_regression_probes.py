"""Regression probes (issue 29): continuous targets give R^2 and RMSE per layer, with
the folds, splits and control tasks of classification, checked against scikit-learn's
Ridge on the same folds; and the probes' bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

import _regression_case
import s3viz
from s3viz.probe import RidgeOptions
from s3viz.store import LayerStore


@pytest.fixture(scope="module")
def store():
    return _regression_case.store()


def _sklearn_r2(store, target, layer, lam, folds=5, split_by="speaker", seed=0):
    """Pooled held-out R^2 and RMSE of scikit-learn's Ridge on the probe's folds."""
    y, pred, _ = _regression_case.sklearn_predictions(store, target, layer, lam, folds,
                                                      split_by, seed)
    sse = ((y - pred) ** 2).sum()
    return 1 - sse / ((y - y.mean()) ** 2).sum(), np.sqrt(sse / len(y))


@pytest.mark.parametrize("lam", [1e-3, 1.0])
def test_utterance_regression_agrees_with_sklearn_ridge(store, lam):
    res = s3viz.probe_layers(store, "rate", method=RidgeOptions(lambdas=(lam,)),
                             split_by="speaker", device="cpu")
    assert list(res["layer"]) == [0, 1] and (res["level"] == "utterance").all()
    assert "accuracy" not in res.columns and {"r2", "rmse", "chance_r2", "unit"} <= set(res.columns)
    for layer in (0, 1):
        want_r2, want_rmse = _sklearn_r2(store, "rate", layer, lam)
        row = res[res["layer"] == layer].iloc[0]
        assert row["r2"] == pytest.approx(want_r2, abs=1e-6)
        assert row["rmse"] == pytest.approx(want_rmse, rel=1e-6)
    assert res.loc[0, "r2"] > 0.8 > 0.2 > res.loc[1, "r2"]
    # predicting each fold's training mean: about 0 (slightly below: the held-out mean differs)
    assert (res["chance_r2"].abs() < 0.2).all() and (res["chance_r2"] <= 1e-12).all()


def test_dual_path_agrees_with_sklearn_ridge():
    """Fewer utterances than dimensions: the n x n dual solve."""
    st = _regression_case.store(n_utt=20, hidden=32, n_speakers=5, seed=1)
    res = s3viz.probe_layers(st, "rate", method=RidgeOptions(lambdas=(0.1,)), device="cpu")
    for layer in (0, 1):
        want, _ = _sklearn_r2(st, "rate", layer, 0.1)
        assert res.loc[layer, "r2"] == pytest.approx(want, abs=1e-6)


def test_integer_column_is_regressed_and_string_codes_classified(store):
    res = s3viz.probe_layers(store, "age", device="cpu")
    assert "r2" in res.columns and res["r2"].notna().all()
    assert res["r2"].max() < 0.3  # unrelated to the frames
    codes = LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                    downsample_rates=store.downsample_rates,
                                    labels=store.labels.assign(
                                        band=[f"b{int(v) // 20}" for v in store.labels["age"]]))
    assert "accuracy" in s3viz.probe_layers(codes, "band", device="cpu").columns


def test_mixed_targets_share_one_table(store):
    res = s3viz.probe_layers(store, ["rate", "speaker"], split_by="utterance", device="cpu")
    rate, spk = res[res["target"] == "rate"], res[res["target"] == "speaker"]
    assert rate["accuracy"].isna().all() and rate["r2"].notna().all()
    assert spk["r2"].isna().all() and spk["accuracy"].notna().all()


def test_control_task_for_a_continuous_target(store):
    st = LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                 downsample_rates=store.downsample_rates,
                                 labels=store.labels.assign(text=[f"t{i % 12}" for i in
                                                                  range(len(store))]))
    res = s3viz.probe_layers(st, "rate", control=True, device="cpu")
    assert {"control_r2", "selectivity"} <= set(res.columns)
    assert np.allclose(res["selectivity"], res["r2"] - res["control_r2"])
    # the control values are one random target value per text type: layer 0 predicts the
    # rate, not the types' random values
    assert res.loc[0, "selectivity"] > 0.3


def test_refusals(store):
    with pytest.raises(ValueError, match="continuous.*ridge"):
        s3viz.probe_layers(store, "rate", method="logistic", device="cpu")
    nan = LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                  downsample_rates=store.downsample_rates,
                                  labels=store.labels.assign(
                                      rate=[np.nan] + list(store.labels["rate"][1:])))
    with pytest.raises(ValueError, match=r"'rate' is missing or not finite for 1 .*u0"):
        s3viz.probe_layers(nan, "rate", device="cpu")
    const = LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                    downsample_rates=store.downsample_rates,
                                    labels=store.labels.assign(rate=3.0))
    with pytest.raises(ValueError, match="does not vary"):
        s3viz.probe_layers(const, "rate", device="cpu")
    for bad, err in ((5, ValueError), (-1, ValueError), (2.5, TypeError)):
        with pytest.raises(err, match="bootstrap"):
            s3viz.probe_layers(store, "rate", bootstrap=bad, device="cpu")
    for bad in (0, 1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="confidence"):
            s3viz.probe_layers(store, "rate", bootstrap=200, confidence=bad, device="cpu")


def test_bootstrap_intervals_resample_speakers(store):
    res = s3viz.probe_layers(store, ["rate", "speaker"], split_by="utterance", bootstrap=300,
                             device="cpu")
    assert (res["resampled_by"] == "speaker").all()
    for col in ("r2", "rmse", "accuracy"):
        have = res[col].notna()
        assert (res.loc[have, f"{col}_lo"] <= res.loc[have, col] + 1e-12).all()
        assert (res.loc[have, col] <= res.loc[have, f"{col}_hi"] + 1e-12).all()
        assert (res.loc[have, f"{col}_hi"] > res.loc[have, f"{col}_lo"]).all()
    info = res.attrs["bootstrap"]
    assert info["unit"] == "speaker" and info["resamples"] == 300 and len(info["units"]) == 6
    assert ("rate", "ridge", "utterance", 0) in info["replicates"]
    # the point values do not depend on the bootstrap; its draws on the seed only
    plain = s3viz.probe_layers(store, ["rate", "speaker"], split_by="utterance", device="cpu")
    assert np.allclose(plain["r2"], res["r2"], equal_nan=True)
    again = s3viz.probe_layers(store, ["rate", "speaker"], split_by="utterance", bootstrap=300,
                               device="cpu")
    assert np.array_equal(again["r2_lo"], res["r2_lo"], equal_nan=True)
    wider = s3viz.probe_layers(store, "rate", bootstrap=300, confidence=0.99, device="cpu")
    assert (wider["r2_hi"] - wider["r2_lo"] >= res["r2_hi"][:2].to_numpy()
            - res["r2_lo"][:2].to_numpy() - 1e-12).all()


def test_bootstrap_falls_back_to_utterances_without_speakers(store):
    st = LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                 downsample_rates=store.downsample_rates,
                                 labels=store.labels.drop(columns=["speaker"]))
    res = s3viz.probe_layers(st, "rate", bootstrap=200, device="cpu")
    assert (res["resampled_by"] == "utterance").all()
    assert len(res.attrs["bootstrap"]["units"]) == len(st)


def test_logistic_probe_intervals_pair_with_the_ridge_probe(store):
    """Both methods resample the same speakers with the same draws: their replicates pair
    (one layer of two methods), and the logistic replicates equal a recomputation from
    the per-speaker sums."""
    from s3viz.probe import LogisticOptions

    res = s3viz.probe_layers(store, "speaker", split_by="utterance", folds=3, bootstrap=200,
                             method=["ridge", LogisticOptions(max_epochs=20)], device="cpu")
    assert set(res["method"]) == {"ridge", "logistic"}
    assert res["accuracy_lo"].notna().all() and (res["accuracy_lo"] <= res["accuracy"]).all()
    ridge, logi = res[res["method"] == "ridge"], res[res["method"] == "logistic"]
    c = s3viz.compare_scores(ridge, logi)
    assert len(c) == 2 and c["p_value"].between(0, 1).all()
    assert np.allclose(c["difference"], ridge["accuracy"].to_numpy() - logi["accuracy"].to_numpy())
    reps = res.attrs["bootstrap"]["replicates"][("speaker", "logistic", "utterance", 0)]
    assert np.isfinite(reps["accuracy"]).all()
    assert np.median(reps["accuracy"]) == pytest.approx(logi["accuracy"].iloc[0], abs=0.1)


def test_probe_curve_draws_regression_tables(store):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = s3viz.probe_layers(store, ["rate", "speaker"], split_by="utterance", bootstrap=200,
                             device="cpu")
    ax = s3viz.plot.probe_curve(res[res["target"] == "rate"])  # r2 by default without accuracy
    assert ax.get_ylabel() == "R\u00b2 (held out)"
    low = min(res["chance_r2"].min(), res["r2_lo"].min())
    assert ax.get_ylim()[0] <= low  # negative R2 and its chance are not cut off
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chance" in labels
    assert len(ax.containers) == 1  # the bootstrap error bars
    # a mixed table: each metric draws the targets it scores
    mixed = s3viz.plot.probe_curve(res, metric="r2")
    assert [t.get_text() for t in mixed.get_legend().get_texts()][0].startswith("rate")
    assert s3viz.plot.probe_curve(res).get_ylabel() == "accuracy (fraction)"
    assert s3viz.plot.probe_curve(res, metric="rmse").get_ylabel() == "RMSE"
    plt.close("all")


def test_regression_replicates_equal_the_resampled_examples_directly():
    """score_replicates' R2 and RMSE of each resample equal those of the drawn units'
    examples duplicated by hand (units far apart, so raw sums of squares would cancel)."""
    from s3viz._bootstrap import Bootstrap
    from s3viz.probe.tables import score_replicates

    rng = np.random.default_rng(5)
    units = 6
    unit = rng.integers(0, units, size=200)
    y = rng.normal(size=200) + np.where(unit < 3, 1e9, 0.0)
    resid = rng.normal(scale=0.5, size=200)
    boot = Bootstrap([f"s{u}" for u in range(units)], "speaker", 100, seed=2)
    per = np.zeros((units, 1, 5))
    for u in range(units):
        m = unit == u
        c = y[m].mean()
        per[u, 0] = [m.sum(), (y[m] - c).sum(), ((y[m] - c) ** 2).sum(), (resid[m] ** 2).sum(),
                     m.sum() * c]
    reps = score_replicates(boot, per, True, False, None)
    for r in range(10):
        idx = np.concatenate([np.repeat(np.flatnonzero(unit == u)[None], int(c), 0).ravel()
                              for u, c in enumerate(boot.counts[r]) if c])
        yy, rr = y[idx], resid[idx]
        want = 1 - (rr ** 2).sum() / ((yy - yy.mean()) ** 2).sum()
        assert reps["r2"][r] == pytest.approx(want, rel=1e-9)
        assert reps["rmse"][r] == pytest.approx(np.sqrt((rr ** 2).mean()), rel=1e-12)


def test_regression_intervals_do_not_depend_on_the_targets_offset(store):
    shifted = LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                      downsample_rates=store.downsample_rates,
                                      labels=store.labels.assign(rate=store.labels["rate"] + 1e9))
    a = s3viz.probe_layers(store, "rate", bootstrap=200, device="cpu")
    b = s3viz.probe_layers(shifted, "rate", bootstrap=200, device="cpu")
    for col in ("r2", "r2_lo", "r2_hi", "rmse", "rmse_lo", "rmse_hi", "r2_std"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-6, atol=1e-6, err_msg=col)
