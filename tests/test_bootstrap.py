"""Error bars (issue 29): the shared bootstrap (s3viz._bootstrap) and compare_scores.

The coverage simulation plants a true value (a population accuracy: speakers with
their own rates around a known mean) and counts how often the 95 % speaker-bootstrap
percentile interval covers it: measured 0.91 over 200 datasets of 30 speakers (seed
fixed below; accepted 0.88-0.99). Resampling utterances instead covers it in 0.675 of
them: utterances of one speaker are not independent, so the speaker is the unit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import s3viz
from s3viz._bootstrap import (Bootstrap, add_interval_columns, bootstrap_options,
                              percentile_interval, resampling_units)

MEAN, SPEAKERS, UTTS, FRAMES, SIMS = 0.7, 30, 8, 5, 200


def _dataset(rng):
    """Correct frames per (speaker, utterance): each speaker with its own rate drawn
    around ``MEAN`` (sd 0.15), every utterance ``FRAMES`` frames."""
    kappa = MEAN * (1 - MEAN) / 0.15 ** 2 - 1
    rate = rng.beta(MEAN * kappa, (1 - MEAN) * kappa, size=SPEAKERS)
    return rng.binomial(FRAMES, np.repeat(rate, UTTS)[:, None], size=(SPEAKERS * UTTS, 1))[:, 0]


def _coverage(unit: str) -> float:
    rng, hits = np.random.default_rng(2029), 0
    for sim in range(SIMS):
        correct = _dataset(rng)
        spk = np.repeat(np.arange(SPEAKERS), UTTS)
        codes = spk if unit == "speaker" else np.arange(len(spk))
        boot = Bootstrap([str(v) for v in range(codes.max() + 1)], unit, 1000, 0.95, seed=sim)
        c = boot.replicate_sums(boot.per_unit(codes, correct))
        n = boot.replicate_sums(boot.per_unit(codes, np.full(len(codes), FRAMES)))
        lo, hi = boot.interval(c / n)
        hits += bool(lo <= MEAN <= hi)
    return hits / SIMS


def test_speaker_bootstrap_covers_a_planted_value_at_its_nominal_rate():
    rate = _coverage("speaker")
    assert 0.88 <= rate <= 0.99, rate  # measured 0.91


def test_utterance_resampling_under_covers_clustered_data():
    rate = _coverage("utterance")
    assert rate < 0.85, rate  # measured 0.675: why the speaker is the unit


# -- the core -----------------------------------------------------------------


@pytest.mark.parametrize("bootstrap, confidence, match", [
    (50, 0.95, "at least 100"), (-1, 0.95, "bootstrap"), (1.5, 0.95, "bootstrap"),
    (True, 0.95, "bootstrap"), (1000, 1.0, "confidence"), (1000, 0, "confidence"),
    (1000, "0.9", "confidence")])
def test_bootstrap_options_refuse(bootstrap, confidence, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bootstrap_options(bootstrap, confidence)


def test_bootstrap_options_accept():
    assert bootstrap_options(None, 0.95) == (0, 0.95)
    assert bootstrap_options(0, 0.9) == (0, 0.9)
    assert bootstrap_options(200, 0.9) == (200, 0.9)


def test_resampling_units_speaker_or_utterance():
    labels = pd.DataFrame({"id": ["a", "b", "c", "d"], "speaker": ["s2", "s1", "s2", "s1"]})
    codes, names, kind = resampling_units(labels)
    assert kind == "speaker" and names == ["s1", "s2"] and codes.tolist() == [1, 0, 1, 0]
    codes, names, kind = resampling_units(labels, [0, 2])  # one speaker: utterances
    assert kind == "utterance" and names == ["a", "c"] and codes.tolist() == [0, 1]
    codes, names, kind = resampling_units(labels.assign(speaker=["s1", "", "s2", "s2"]))
    assert kind == "utterance" and names == ["a", "b", "c", "d"]
    assert resampling_units(labels.drop(columns="speaker"))[2] == "utterance"


def test_draws_depend_on_units_resamples_and_seed_only():
    units = ["v", "w", "x", "y", "z"]
    a = Bootstrap(units, "speaker", 200, 0.95, seed=3)
    b = Bootstrap(units, "speaker", 200, 0.9, seed=3)
    c = Bootstrap(units, "speaker", 200, 0.95, seed=4)
    assert np.array_equal(a.counts, b.counts) and not np.array_equal(a.counts, c.counts)
    assert (a.counts.sum(1) == 5).all()
    for few in (["x"], ["x", "y"], ["w", "x", "y", "z"]):  # 2 units: 3 distinct resamples
        with pytest.raises(ValueError, match=f"at least 5 speakers to resample \\(from {len(few)}"):
            Bootstrap(few, "speaker", 200)


def test_percentile_interval_leaves_out_undefined_replicates():
    reps = np.concatenate([np.linspace(0, 1, 101), [np.nan] * 20])
    lo, hi = percentile_interval(reps, 0.9)
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.95)
    assert np.isnan(percentile_interval(np.full(5, np.nan), 0.9)[0])


# -- compare_scores -------------------------------------------------------------


def _table(correct: dict, total: np.ndarray, *, seed: int = 0, names=None, resamples=500):
    """A probe-like table (layer, accuracy) with speaker-bootstrap intervals from per-speaker
    ``correct[layer]`` and ``total`` counts."""
    names = names or [f"s{i}" for i in range(len(total))]
    boot = Bootstrap(names, "speaker", resamples, 0.95, seed=seed)
    n = boot.replicate_sums(total)
    rows, reps = [], {}
    for layer, c in correct.items():
        rows.append({"layer": layer, "accuracy": float(np.sum(c) / np.sum(total))})
        reps[(layer,)] = {"accuracy": boot.replicate_sums(c) / n}
    return add_interval_columns(pd.DataFrame(rows), boot, ["layer"], reps, ["accuracy"])


def _counts(rate, seed, speakers=20, total=50):
    rng = np.random.default_rng(seed)
    own = np.clip(rate + rng.normal(0, 0.05, speakers), 0, 1)
    return rng.binomial(total, own).astype(float), np.full(speakers, float(total))


def test_identical_tables_differ_by_zero_with_p_one():
    c, n = _counts(0.7, 1)
    t = _table({9: c, 10: c}, n)
    out = s3viz.compare_scores(t, t)
    assert len(out) == 2 and (out["difference"] == 0).all() and (out["p_value"] == 1).all()
    assert (out["difference_lo"] == 0).all() and (out["difference_hi"] == 0).all()
    assert (out["score"] == "accuracy").all() and (out["unit"] == "speaker").all()


def test_a_planted_difference_is_found_and_a_null_one_is_not():
    c9, n = _counts(0.7, 1)
    c10 = np.minimum(n, c9 + np.round(0.15 * n))  # layer 10 better on every speaker
    res = _table({9: c9, 10: c10}, n)
    out = s3viz.compare_scores(res[res.layer == 10], res[res.layer == 9])
    assert out["difference"].iloc[0] == pytest.approx(0.15, abs=0.02)
    assert out["p_value"].iloc[0] < 0.01
    assert out["difference_lo"].iloc[0] > 0.1 and out["layer_a"].iloc[0] == 10
    same = s3viz.compare_scores(res, layers=(10, 9))
    assert same[["difference", "p_value"]].equals(out[["difference", "p_value"]])
    # noise alone (two draws of one rate): the interval holds 0
    c_other, _ = _counts(0.7, 2)
    null = s3viz.compare_scores(res, _table({9: c_other, 10: c_other}, n), layers=(9, 9))
    assert null["difference_lo"].iloc[0] < 0 < null["difference_hi"].iloc[0]


def test_two_models_pair_row_by_row():
    c, n = _counts(0.7, 1)
    a = _table({0: c, 1: c}, n)
    b = _table({1: c * 0.5, 0: c}, n)
    out = s3viz.compare_scores(a, b)
    assert out["layer"].tolist() == [0, 1]
    assert out["difference"].iloc[0] == 0 and out["difference"].iloc[1] > 0.3


def test_compare_scores_refuses_tables_that_do_not_pair():
    c, n = _counts(0.7, 1)
    a = _table({9: c}, n)
    with pytest.raises(ValueError, match="seed"):
        s3viz.compare_scores(a, _table({9: c}, n, seed=1))
    with pytest.raises(ValueError, match="resamples"):
        s3viz.compare_scores(a, _table({9: c}, n, resamples=400))
    with pytest.raises(ValueError, match="units"):
        s3viz.compare_scores(a, _table({9: c}, n, names=[f"t{i}" for i in range(20)]))
    with pytest.raises(ValueError, match="bootstrap=1000"):
        s3viz.compare_scores(a, pd.DataFrame({"layer": [9], "accuracy": [0.5]}))
    with pytest.raises(ValueError, match="no row of layer 3"):
        s3viz.compare_scores(a, layers=(9, 3))
    with pytest.raises(ValueError, match="score='r2'"):
        s3viz.compare_scores(a, a, score="r2")
    b = _table({9: c}, n)
    b.attrs["split_by"] = "utterance"
    a.attrs["split_by"] = "speaker"
    with pytest.raises(ValueError, match="split_by"):
        s3viz.compare_scores(a, b)


def test_tables_with_intervals_concatenate():
    c, n = _counts(0.7, 1)
    a, b = _table({9: c}, n), _table({9: c * 0.5}, n)
    assert pd.concat([a, a]).attrs["bootstrap"]["replicates"] == a.attrs["bootstrap"]["replicates"]
    assert "bootstrap" not in pd.concat([a, b]).attrs  # two draws' records: neither kept
