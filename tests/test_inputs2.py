"""Inputs that changed meaning on the way in (docs/refusals.md, "Values that change
on the way in or out"): one number spelled two ways, CSV rows that match no file,
TextGrid times rounded across a frame centre, a cryptic refusal of 2-fold ridge,
a trailing comma in a labels CSV, a `.PHN` written for another sample rate, and
repeated words of the synthetic corpus merged into one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from s3viz.probe import RidgeOptions, probe_folds, probe_layers
from s3viz.probe.targets import check_classes, label_str
from s3viz.store import LayerStore

pytestmark = pytest.mark.usefixtures("one_thread")


def _store(labels: pd.DataFrame, frames: int = 6, phones=None) -> LayerStore:
    g = torch.Generator().manual_seed(0)
    hs = [[torch.randn(frames, 5, generator=g), torch.randn(frames, 5, generator=g)]
          for _ in range(len(labels))]
    return LayerStore.from_tensors(hs, downsample_rates=[320, 320], labels=labels, phones=phones)


def _ids(n):
    return [f"u{i}" for i in range(n)]


# ----------------------------------------------------------------------------- 1. one number, two spellings


def test_an_int_and_the_same_float_are_one_class():
    """The issue's case: ages 1, 2 (int) and 1.0, 2.0 (float) were 4 classes, chance 0.25."""
    age = pd.Series([1, 2] * 4 + [1.0, 2.0] * 4, dtype=object)
    store = _store(pd.DataFrame({"id": _ids(16), "age": age}))
    res = probe_layers(store, "age", split_by="utterance", folds=4, device="cpu")
    assert (res["n_classes"] == 2).all()
    assert (res["chance"] == 0.5).all()


def test_frame_labels_int_and_float_are_one_class():
    ph = [pd.DataFrame({"start": [0, 1000], "end": [1000, 4000],
                        "phone": pd.Series([1, 2.0] if i % 2 else [np.float32(1), np.int8(2)],
                                           dtype=object)}) for i in range(8)]
    store = _store(pd.DataFrame({"id": _ids(8)}), frames=10, phones=ph)
    res = probe_layers(store, "phone", layers=[0], folds=4, split_by="utterance", device="cpu")
    assert res["n_classes"].tolist() == [2]


def test_a_speaker_written_as_int_and_float_is_one_group():
    """Speaker 7 and 7.0 were two split groups: one speaker on both sides of a split."""
    spk = pd.Series([7, 8, 9, 10] * 2 + [7.0, 8.0, 9.0, 10.0] * 2, dtype=object)
    store = _store(pd.DataFrame({"id": _ids(16), "speaker": spk}))
    table = probe_folds(store, folds=2, split_by="speaker")
    assert table.groupby("group")["fold"].nunique().max() == 1
    assert sorted(set(table["group"])) == ["10", "7", "8", "9"]


def test_strings_that_spell_one_number_differently_are_refused_naming_them():
    lab = pd.Series(["1", "2"] * 4 + ["1.0", "2.0"] * 4, dtype=object)
    store = _store(pd.DataFrame({"id": _ids(16), "age": lab}))
    with pytest.raises(ValueError, match=r"'1' and '1.0'.*'2' and '2.0'.*write each value one way"):
        probe_layers(store, "age", split_by="utterance", folds=4, device="cpu")


@settings(max_examples=60, deadline=None)
@example(2**53 + 1)  # no float spells it: stays its own class, not 2**53's
@given(st.one_of(st.integers(-10**20, 10**20),
                 st.floats(allow_nan=False, allow_infinity=False, width=64),
                 st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_equal_numbers_have_one_spelling_and_unequal_ones_two(v):
    """label_str spells a number by its value: every type of an equal value gives one class,
    and the spelling reads back as the same number (no two values merge)."""
    spellings = {label_str(v)}
    if float(v) == v:  # the value has a float spelling (ints beyond 2**53 may not)
        spellings |= {label_str(float(v)), label_str(np.float64(v))}
    if float(v).is_integer() and int(v) == v:
        spellings.add(label_str(int(v)))
        if abs(v) < 2**31:
            spellings.add(label_str(np.int32(int(v))))
    assert len(spellings) == 1
    s = spellings.pop()
    assert float(s) == float(v)
    if isinstance(v, int):
        assert int(s) == v  # ints beyond 2**53 are not rounded through float
    check_classes("t", [s, label_str(float(v) + 1.0) if abs(v) < 2**52 else "x"], None)


# ----------------------------------------------------------------------------- 2. rows matching no file


def _wavs(folder, names, seconds=0.5):
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        sf.write(folder / n, np.random.default_rng(0).normal(size=int(16000 * seconds)) * 0.1,
                 16000)
    return folder


def test_a_csv_row_differing_in_case_is_reported_not_dropped(tmp_path):
    """The issue's case: a.WAV vs a.wav under strict=False: speaker '' with no word."""
    from s3viz.data import load_folder

    audio = _wavs(tmp_path / "au", ["a.wav", "b.wav"])
    (tmp_path / "l.csv").write_text("file,speaker\na.WAV,s1\nb.wav,s2\n")
    with pytest.warns(UserWarning, match=r"'a\.WAV' \(labels_csv row 2 matches no audio file; "
                                         r"'a\.wav' differs only in case"):
        c = load_folder(audio, tmp_path / "l.csv", strict=False)
    assert [u.speaker for u in c] == ["", "s2"]
    assert c.skipped["file"].tolist() == ["a.WAV"]
    assert "'a.wav' differs only in case" in c.skipped["reason"].iloc[0]
    with pytest.raises(ValueError, match=r"'a\.wav' differs only in case"):
        load_folder(audio, tmp_path / "l.csv")


@pytest.mark.parametrize("key,near", [("SPK/A", "spk/a"), ("spk/ﬁle.wav", "spk/file.wav"),
                                      ("nothere.wav", None)])
def test_unmatched_ids_and_segment_rows_are_reported(tmp_path, key, near):
    """Ids as well as file names, a ligature (NFKC), a plain miss; segment tables too."""
    from s3viz.data import load_folder

    audio = _wavs(tmp_path / "au" / "spk", ["a.wav", "file.wav"]).parent
    col = "id" if "." not in key else "file"
    other = "spk/file" if col == "id" else "spk/a.wav"
    with pytest.warns(UserWarning, match="match no audio file") as rec:
        c = load_folder(audio, pd.DataFrame({col: [key, other], "x": ["1", "2"]}), strict=False)
    msg = str(rec[0].message)
    assert repr(key) in msg and (near is None or f"{near!r} differs only in case" in msg)
    assert key in c.skipped["file"].tolist()
    seg = pd.DataFrame({col: [key, other], "start": [0.0, 0.0], "end": [0.4, 0.4],
                        "phone": ["p", "q"]})
    with pytest.warns(UserWarning, match="match no audio file"):
        c = load_folder(audio, alignments=seg, strict=False)
    assert key in c.skipped["file"].tolist()


# ----------------------------------------------------------------------------- 3. boundaries at frame centres

REAL = Path(os.environ.get("S3VIZ_REALSPEECH",
                           Path(__file__).resolve().parents[2] / "shared" / "realspeech"))
_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real-speech data at {REAL}")


def _frame_disagreements(utt, textgrid: Path, tier: str, rate: int = 320, rf: int = 400):
    """Frames whose label (s3viz.align.frame_labels of the table) is not the label of the
    interval praatio reads at the frame's centre sample c: the interval [s, e) (seconds)
    with s * 16000 <= c < e * 16000, computed exactly (Fraction) per frame."""
    from fractions import Fraction

    from praatio import textgrid as ptg

    from s3viz.align import frame_labels
    from s3viz.data.alignments import SILENCE_LABELS

    n = (utt.num_samples - rf) // rate + 1
    got = frame_labels(utt.phones, n, rate, receptive_field_samples=rf)
    entries = ptg.openTextgrid(str(textgrid), includeEmptyIntervals=True).getTier(tier).entries
    bounds = [(Fraction(s) * 16000, Fraction(e) * 16000, lab.strip()) for s, e, lab in entries]
    marks = {m.lower() for m in SILENCE_LABELS}
    eps = Fraction(1, 10**6)  # float noise of a time at an exact sample
    bad, j = [], 0
    for k in range(n):
        c = k * rate + rf // 2
        while j < len(bounds) and bounds[j][1] - eps <= c:
            j += 1
        want = ""
        if j < len(bounds) and bounds[j][0] - eps <= c < bounds[j][1] - eps:
            lab = bounds[j][2]
            want = "sil" if lab.lower() in marks else lab
        if got[k] != want:
            bad.append((k, c, got[k], want))
    return bad, n


@_real
def test_the_sppas_frame_next_to_a_boundary_has_the_textgrids_label():
    """The issue's case: F_F_C006-P6 frame 1052 (centre 336840 = 21.05250 s) lies before the
    boundary Z -> # at 21.052512 s (336840.19 samples), rounded to 336840: it was 'sil'."""
    from s3viz.align import frame_labels
    from s3viz.data import load_folder

    root = REAL / "sppas" / "samples"
    c = load_folder(root, pattern="samples-fra/F_F_C006-P6.wav", lazy=True,
                    alignments=root / "annotation-results",
                    alignment_pattern="{parent}/{stem}-merge.TextGrid", phone_tier="PhonAlign")
    u = c[0]
    lab = frame_labels(u.phones, 1060, 320, receptive_field_samples=400)
    assert lab[1052] == "Z"


@_real
@pytest.mark.slow
@pytest.mark.parametrize("which", ["mfa", "sppas", "praatio"])
def test_every_frame_centre_agrees_with_praatio(which):
    from s3viz.data import load_folder

    if which == "mfa":
        root = REAL / "mfa" / "tests" / "data"
        c = load_folder(root / "wav", alignments=root / "textgrid", lazy=True)
        files = [(u, root / "textgrid" / f"{u.id}.TextGrid", "phones") for u in c]
    elif which == "praatio":  # 48 kHz (bobby, mary) and 16 kHz (damon) audio
        root = REAL / "praatio" / "examples" / "files"
        c = load_folder(root, alignments="sibling", lazy=True,
                        alignment_pattern=["{stem}.TextGrid", "{stem}_phones.TextGrid"],
                        phone_tier=["phone", "phons"])
        files = [(c[0], root / "bobby_phones.TextGrid", "phone"),
                 (c[1], root / "damon_set_test.TextGrid", "phons"),
                 (c[2], root / "mary.TextGrid", "phone")]
    else:
        root = REAL / "sppas" / "samples"
        c = load_folder(root, pattern="samples-*/*.wav", lazy=True, strict=False,
                        alignments=root / "annotation-results",
                        alignment_pattern="{parent}/{stem}-merge.TextGrid", phone_tier="PhonAlign")
        files = [(u, root / "annotation-results" / f"{u.id}-merge.TextGrid", "PhonAlign")
                 for u in c]
    total, bad, skipped = 0, [], 0
    from praatio.utilities.errors import ParsingError

    for u, tg, tier in files:
        try:
            b, n = _frame_disagreements(u, tg, tier)
        except ParsingError:  # two SPPAS files praatio cannot open (s3viz reads them per tier)
            skipped += 1
            continue
        total += n
        bad += [(u.id, *x) for x in b]
    assert total > (100 if which == "praatio" else 2000) and skipped <= 2
    assert bad == []


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**8), st.sampled_from([8000, 16000, 22050, 44100, 48000]))
def test_a_time_becomes_the_first_sample_at_or_after_it(n, rate):
    """Sample n of a file at ``rate`` (a .PHN time, or a TextGrid time at a sample) becomes
    the first 16 kHz sample at or after it, computed here in integers."""
    from s3viz.data.alignments import to_sample

    assert to_sample(n / rate) == -(-n * 16000 // rate)


# ----------------------------------------------------------------------------- 4. 2-fold ridge, one group per fold


def _two_speaker_store(n_spk=2, n=16):
    spk = [f"s{i % n_spk}" for i in range(n)]
    ph = [pd.DataFrame({"start": [0, 1000], "end": [1000, 4000], "phone": ["x", "y"]})
          for _ in range(n)]
    lab = pd.DataFrame({"id": _ids(n), "speaker": spk, "cls": ["a", "b"] * (n // 2)})
    return _store(lab, frames=10, phones=ph)


def test_two_fold_ridge_with_one_speaker_per_fold_is_refused_with_cause_and_fix():
    """The issue's case: 'ProbeStats hold no examples', naming neither cause nor fix."""
    store = _two_speaker_store()
    with pytest.raises(ValueError, match=r"folds=2 picks its penalty on a dev part.*fold 0 holds "
                                         r"1 speaker\(s\) \('s0'\).*Fix: split_by='utterance'.*"
                                         r"lambdas=\[1e-3\]") as err:
        probe_layers(store, "phone", layers=[0], folds=2, device="cpu")
    assert "folds=" not in str(err.value).split("Fix:")[1].replace("folds=2", "")  # 2 speakers
    # each fix works
    for kw in ({"split_by": "utterance"}, {"method": RidgeOptions(lambdas=[1e-3])}):
        assert probe_layers(store, "phone", layers=[0], folds=2, device="cpu", **kw)[
            "accuracy"].notna().all()


def test_two_fold_ridge_at_utterance_level_names_the_lone_fold_and_more_folds():
    store = _two_speaker_store(n_spk=3, n=18)
    with pytest.raises(ValueError, match=r"fold \d holds 1 speaker.*Fix: folds=3"):
        probe_layers(store, "cls", folds=2, split_by="speaker", device="cpu")
    assert probe_layers(store, "cls", folds=3, split_by="speaker", device="cpu")[
        "accuracy"].notna().all()


# ----------------------------------------------------------------------------- 5. nameless columns


@pytest.mark.parametrize("text", ["file,speaker,\na.wav,s1,\nb.wav,s2,\n",  # the issue
                                  "file,,speaker\na.wav,,s1\nb.wav,,s2\n",
                                  "file,speaker\na.wav,s1,\nb.wav,s2,\n",  # rows, not header
                                  "file,speaker\r\na.wav,s1\r\n\r\nb.wav,\"s2\"\r\n"])
def test_an_empty_trailing_column_is_dropped(tmp_path, text):
    """`file,speaker,` added a label column 'Unnamed: 2'; a trailing comma on the rows
    alone made pandas take `file` as the index, shifting every value one column left."""
    from s3viz.data import load_folder

    audio = _wavs(tmp_path / "au", ["a.wav", "b.wav"])
    (tmp_path / "l.csv").write_text(text)
    c = load_folder(audio, tmp_path / "l.csv")
    assert list(c.labels.columns) == ["id", "speaker", "text", "num_samples"]
    assert [u.speaker for u in c] == ["s1", "s2"]


@pytest.mark.parametrize("text,match", [
    ("file,speaker,\na.wav,s1,x\nb.wav,s2,\n", r"column 3 has no name.*'x' on line 2"),
    ("file,speaker\na.wav,s1\nb.wav,s2,y\n", r"line 3 has 3 fields.*'y' has no column"),
])
def test_a_value_without_a_column_name_is_refused(tmp_path, text, match):
    from s3viz.data import load_folder

    audio = _wavs(tmp_path / "au", ["a.wav", "b.wav"])
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_folder(audio, tmp_path / "l.csv", strict=False)


def test_a_dataframe_read_from_such_a_csv_is_treated_alike(tmp_path):
    from s3viz.data import load_folder

    audio = _wavs(tmp_path / "au", ["a.wav", "b.wav"])
    (tmp_path / "l.csv").write_text("file,speaker,\na.wav,s1,\nb.wav,s2,\n")
    c = load_folder(audio, pd.read_csv(tmp_path / "l.csv"))
    assert "Unnamed: 2" not in c.labels.columns
    with pytest.raises(ValueError, match=r"column 2 has no name \(''\) but holds values"):
        load_folder(audio, pd.DataFrame({"file": ["a.wav", "b.wav"], "": ["x", None]}))


# ----------------------------------------------------------------------------- 6. .PHN of another rate


def test_a_phn_counting_16k_samples_beside_44k_audio_is_refused(tmp_path):
    """16 kHz counts beside 44.1 kHz audio were read as 44.1 kHz: every time shrunk to 36%,
    the tail unlabelled, no word."""
    from s3viz.data import AlignmentError, load_folder

    d = _wavs(tmp_path / "t", [], seconds=1.0)
    import soundfile as sf

    sf.write(d / "SA1.WAV", np.random.default_rng(0).normal(size=44100) * 0.1, 44100)
    (d / "SA1.PHN").write_text("0 2000 h#\n2000 12000 ae\n12000 16000 h#\n")
    with pytest.raises(AlignmentError, match=r"SA1.PHN: its last end, sample 16000.*44100 Hz.*"
                                             r"counts samples of 16000 Hz audio"):
        load_folder(d, alignments="sibling")
    with pytest.warns(UserWarning, match="16000 Hz audio"):
        c = load_folder(d, alignments="sibling", strict=False)
    assert len(c) == 0 and c.skipped["file"].tolist() == ["SA1.WAV"]
    # counts of the audio's own rate: read, ending at the audio's end
    (d / "SA1.PHN").write_text("0 5512 h#\n5512 33075 ae\n33075 44100 h#\n")
    t = load_folder(d, alignments="sibling")[0].phones
    assert t["end"].iat[-1] == 16000 and t["start"].iat[1] == 2000  # ceil(5512 * 16000 / 44100)
    # ending early at no other rate's length: the tail stays unlabelled, as in any gap
    (d / "SA1.PHN").write_text("0 5512 h#\n5512 26460 ae\n")
    assert load_folder(d, alignments="sibling")[0].phones["end"].iat[-1] == 9600


# ----------------------------------------------------------------------------- 7. synthetic word_index


def test_the_synthetic_tables_keep_repeated_words_apart():
    """"the the cat": eSpeak gives a word event per word, but the table had no word_index,
    so both "the" merged into one word segment."""
    from s3viz.data import synthetic as syn
    from s3viz.segments import _runs

    def to22(s16):
        return round(s16 * 22050 / 16000)

    wav = np.full(16000, 0.3, dtype=np.float32)
    text = "the the cat"
    events = [["word", 0, 1, 3], ["phoneme", to22(1000), "ð", "D"], ["phoneme", to22(2000), "ə", "@"],
              ["word", 0, 5, 3], ["phoneme", to22(3000), "ð", "D"], ["phoneme", to22(4000), "ə", "@"],
              ["word", 0, 9, 3], ["phoneme", to22(5000), "k", "k"], ["phoneme", to22(6000), "æ", "a"],
              ["phoneme", to22(7000), "", "_"]]
    rows = syn._phone_table(events, text, to22(16000), wav)
    t = pd.DataFrame(rows, columns=["phone", "word", "start", "end", "word_index"])
    assert t["word_index"].tolist() == [-1, 0, 0, 1, 1, 2, 2, -1]
    words = _runs(t, "word")
    assert words.loc[words["label"] != "", "label"].tolist() == ["the", "the", "cat"]


def test_a_column_mixing_booleans_with_0_and_1_is_refused_naming_them():
    from s3viz.probe.targets import check_classes

    with pytest.raises(ValueError, match=r"'True' and '1'|'1' and 'True'"):
        check_classes("voiced", np.array(["0", "1", "True"], dtype=object), None)
    check_classes("voiced", np.array(["False", "True"], dtype=object), None)  # one spelling
