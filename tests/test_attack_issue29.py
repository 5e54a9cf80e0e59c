"""Attacks on issue 29's new features (acoustic tracks, regression probes, bootstrap
intervals and compare_scores, held-out CCA): each test fails now and states the
behaviour that "right or refused, never quietly wrong" asks for."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import _regression_case
import s3viz
from s3viz.probe import RidgeOptions
from s3viz.store import LayerStore

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _store(**extra):
    """Utterance-level data as tests/test_regression_probes.py builds it: layer 0's
    pooled vector encodes ``rate``, layer 1 is noise; ``extra`` columns are added."""
    return _regression_case.store(**extra)


def _ridge(store, target, **kw):
    return s3viz.probe_layers(store, target, method=RidgeOptions(lambdas=(1e-3,)),
                              device="cpu", **kw)


def _right_or_refused(fn, want: pd.DataFrame, target: str, cols=("r2", "chance_r2")):
    """Either a ValueError naming ``target``, or the scores of ``want``."""
    try:
        got = fn()
    except ValueError as err:
        assert target in str(err)
        return
    for c in cols:
        np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float),
                                   atol=1e-6, err_msg=f"column {c}")


# 1. R^2 from raw sums: sst = syy - sy^2 / n cancels catastrophically --------------

def test_utterance_regression_target_with_a_large_offset_is_right_or_refused():
    """R^2 does not depend on the target's offset. ``rate + 1e8`` (sd 1) now gives the
    noise layer R^2 0.74 instead of -0.24 and chance_r2 0.78 instead of -0.05."""
    st = _store(shifted=lambda df: df["rate"] + 1e8)
    want = _ridge(st, "rate")
    _right_or_refused(lambda: _ridge(st, "shifted"), want, "shifted")


# 2. targets at the ends of float64 give NaN rows with no error -----------------------

@pytest.mark.parametrize("scale", [1e300, 1e160, 1e-300])
def test_utterance_regression_target_scaled_is_right_or_refused(scale):
    """R^2 does not depend on the target's scale; ``rate * 1e300`` (finite float64)
    now gives NaN r2, rmse and chance_r2 for every layer, without a word."""
    st = _store(scaled=lambda df: df["rate"] * scale)
    want = _ridge(st, "rate")
    _right_or_refused(lambda: _ridge(st, "scaled"), want, "scaled")


@pytest.fixture(scope="module")
def tracked(small_corpus, tiny_upstream):
    corpus = s3viz.data.add_acoustic_tracks(small_corpus[:8])
    store = s3viz.extract(tiny_upstream, corpus, batch_size=4, device="cpu", progress=False)
    return corpus, store


def _with_tracks(store, tracks):
    return LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                   downsample_rates=store.downsample_rates,
                                   receptive_fields=store.receptive_fields,
                                   labels=store.labels, phones=store.phones, tracks=tracks)


def test_frame_track_scaled_1e300_is_right_or_refused(tracked):
    """An f0 track times 1e300 (finite) gives NaN r2/rmse/chance_r2 rows silently."""
    _, store = tracked
    scaled = [t.assign(f0=t["f0"] * 1e300) for t in store.tracks]
    want = s3viz.probe_layers(store, "f0", layers=[0], folds=3, device="cpu")
    _right_or_refused(lambda: s3viz.probe_layers(_with_tracks(store, scaled), "f0",
                                                 layers=[0], folds=3, device="cpu"),
                      want, "f0")


# 3. integers too big for float64 ---------------------------------------------------

def test_int64_target_that_varies_is_not_refused_as_constant():
    """``2**60 + i`` varies, but the float64 conversion makes every value equal and the
    refusal says the target 'does not vary (every value is 1.15e18)': a false
    statement. Right: regress the exact (centred) values, or refuse saying the values
    are not exactly representable in float64."""
    st = _store(big=lambda df: np.int64(2**60) + df["age"].to_numpy(np.int64))
    try:
        res = _ridge(st, "big")
    except ValueError as err:
        assert "does not vary" not in str(err) and "big" in str(err)
    else:
        want = _ridge(st, "age")
        np.testing.assert_allclose(res["r2"], want["r2"], atol=1e-6)


# 4. pandas' nullable dtypes ----------------------------------------------------------

@pytest.mark.parametrize("dtype,source", [("Int64", "age"), ("Float64", "rate")])
def test_nullable_numeric_columns_are_regressed_like_numpy_ones(dtype, source):
    """An 'Int64' column (no missing value) is now classified (31 classes, accuracy,
    UnseenClassWarning) where the same int64 column is regressed; a 'Float64' column
    is refused with 'every example has its own class ... (is it an id or a continuous
    value?)'. Both are int/float columns: regress them as their numpy twins."""
    st = _store(nullable=lambda df: df[source].astype(dtype))
    want = _ridge(st, source)
    got = _ridge(st, "nullable")
    assert "r2" in got.columns and "accuracy" not in got.columns
    np.testing.assert_allclose(got["r2"], want["r2"], atol=1e-9)


# 5. compare_scores pairs tables of different corpora ---------------------------------

@pytest.fixture(scope="module")
def two_corpora(tiny_upstream):
    out = []
    for seed in (0, 1):  # same ids utt0000.., same speaker names spk01.., other audio
        corpus = s3viz.data.synthetic_corpus(10, seed=seed)
        store = s3viz.extract(tiny_upstream, corpus, batch_size=5, device="cpu",
                              progress=False)
        out.append((corpus, store))
    return out


def test_compare_scores_refuses_tables_of_two_corpora(two_corpora):
    """docs/measures.md: compare_scores pairs tables 'on one corpus ... anything else is
    refused, naming what differs'. Two synthetic corpora (seeds 0, 1) share ids and
    speaker names, so the draws' units match, and their tables are paired silently: the
    p-value treats unrelated data as paired replicates."""
    (_, a), (_, b) = two_corpora
    ra = s3viz.probe_layers(a, "rate", layers=[0, 1], folds=3, bootstrap=100, device="cpu")
    rb = s3viz.probe_layers(b, "rate", layers=[0, 1], folds=3, bootstrap=100, device="cpu")
    with pytest.raises(ValueError, match="corpus|corpora"):
        s3viz.compare_scores(ra, rb)


def test_compare_scores_refuses_tables_of_different_utterance_selections(two_corpora):
    """Same corpus, but b probed only 8 of the 10 utterances (other folds, other test
    sets): not one resample of one corpus, yet paired silently."""
    (_, a), _ = two_corpora
    ra = s3viz.probe_layers(a, "rate", layers=[0], folds=3, bootstrap=100, device="cpu")
    rb = s3viz.probe_layers(a, "rate", layers=[0], folds=3, bootstrap=100, device="cpu",
                            utterances=list(range(8)))
    with pytest.raises(ValueError, match="utterances|corpus"):
        s3viz.compare_scores(ra, rb)


# 6. cca_layers(reference="mel") with the audio of another corpus ----------------------

def test_cca_mel_refuses_another_corpus_with_the_same_ids(two_corpora):
    """corpus= is checked by ids only: another corpus with the same ids (other audio,
    other lengths: store.labels['num_samples'] differ) gives a PWCCA against the wrong
    audio (0.001 instead of 0.06 here) without a word."""
    (_, store), (other, _) = two_corpora
    assert list(other.ids) == list(store.ids)
    assert [u.num_samples for u in other] != list(store.labels["num_samples"])
    with pytest.raises(ValueError, match="corpus"):
        s3viz.cca_layers(store, "mel", corpus=other, layers=[0], device="cpu")


# 7. unclear errors -------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(max_formant=5.5), dict(formant_window_length=1e-5)])
def test_formant_settings_praat_cannot_use_are_refused_naming_the_argument(kw):
    """max_formant in kHz (5.5, a likely slip for 5500 Hz) passes the check and Praat
    raises 'PraatError: Window too short. Sound: formant analysis (Burg) not
    performed.' after the corpus is read, naming no argument."""
    from s3viz.data import Corpus, Utterance

    t = np.arange(16000) / 16000
    corpus = Corpus([Utterance("u", (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32))])
    with pytest.raises(ValueError, match=next(iter(kw))):
        s3viz.data.add_acoustic_tracks(corpus, **kw)


def test_a_track_with_no_defined_value_is_refused_saying_so(tracked):
    """Every f0 NaN (or every table empty) is refused with 'does not vary among the
    probed examples', which reads as a constant target; say no value is defined."""
    _, store = tracked
    nan = [t.assign(f0=np.nan) for t in store.tracks]
    with pytest.raises(ValueError, match="NaN|undefined|no defined|no value"):
        s3viz.probe_layers(_with_tracks(store, nan), "f0", layers=[0], folds=3, device="cpu")


# 8. s3viz.align.frame_values reads tables no check has seen ---------------------------

def test_align_frame_values_refuses_a_table_with_overlapping_rows():
    """Row [0, 400) covers frame 1's centre (240) but the later row [100, 150) shadows
    it, so the frame gets NaN; a store refuses such a table (check_track_table), the
    public function reads it."""
    from s3viz.align import frame_values

    table = pd.DataFrame({"start": [0, 100], "end": [400, 150], "f0": [100.0, 200.0]})
    with pytest.raises(ValueError, match="overlap"):
        frame_values(table, 3, 160, column="f0")


def test_align_frame_values_refuses_inf():
    from s3viz.align import frame_values

    table = pd.DataFrame({"start": [0, 160], "end": [160, 320], "f0": [np.inf, 1.0]})
    with pytest.raises(ValueError, match="inf"):
        frame_values(table, 2, 160, column="f0")


# 9. docs -----------------------------------------------------------------------------

def test_docs_probes_has_the_continuous_targets_section_the_docstrings_cite():
    """probe_layers, is_continuous and RidgeProbe cite docs/probes.md, 'Continuous
    targets'; the file has no such section and 'The table' lists no r2, rmse,
    chance_r2, unit, n_undefined or control_r2."""
    text = (DOCS / "probes.md").read_text()
    assert re.search(r"^#+ .*Continuous targets", text, re.M)
    for col in ("r2", "rmse", "chance_r2", "n_undefined", "control_r2"):
        assert f"`{col}`" in text


# 10. cca_layers(reference="phone", utterances=...) one-hots the left-out utterances too -

def test_cca_phone_reference_with_utterances_leaving_out_a_phone(tiny_store):
    """The classes are the selected utterances' labels, but every frame of a batch is
    one-hot encoded before the unselected ones are dropped: a phone only the left-out
    utterances have raises a bare ``KeyError: 'ɑɹ'`` (synthetic_corpus(12, seed=0),
    utterances=range(10)). Leaving utterances out must work (or be refused naming
    utterances=)."""
    phones = tiny_store.phones
    sets = [set(p["phone"]) for p in phones]
    rare = min(set().union(*sets), key=lambda v: sum(v in s for s in sets))
    sel = [i for i, s in enumerate(sets) if rare not in s]
    assert 3 <= len(sel) < len(phones)
    res = s3viz.cca_layers(tiny_store, "phone", utterances=sel, parts=(1, 1, 1), layers=[0],
                           device="cpu")
    assert np.isfinite(res["pwcca"]).all()


# 11. intervals and p-values from two resampled units ---------------------------------

def test_cca_bootstrap_over_two_test_speakers_is_refused(tiny_store):
    """The CCA bootstrap resamples the test part's speakers only; with the default
    parts=(3, 1, 1) the 8 speakers of synthetic_corpus(12) leave 2 there, so the
    replicates take 3 values ({A, A}, {A, B}, {B, B}): pwcca_hi equals pwcca, the 0.999
    interval equals the 0.95 one, and compare_scores(res, layers=(0, 4)) reports
    p = 0.0198 (its floor 2 / (R + 1)) from two speakers. Too few units for a percentile
    interval should be refused naming them (as ABX refuses one speaker)."""
    with pytest.raises(ValueError, match="speaker"):
        s3viz.cca_layers(tiny_store, "phone", bootstrap=100, layers=[0], device="cpu")
