"""Inputs that changed meaning on the way in (docs/refusals.md, "Values that change
on the way in or out"): one number spelled two ways, CSV rows that match no file,
TextGrid times rounded across a frame centre, a cryptic refusal of 2-fold ridge,
a trailing comma in a labels CSV, a `.PHN` written for another sample rate, and
repeated words of the synthetic corpus merged into one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3viz.probe import probe_folds, probe_layers
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
@given(st.one_of(st.integers(-10**20, 10**20),
                 st.floats(allow_nan=False, allow_infinity=False, width=64),
                 st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_equal_numbers_have_one_spelling_and_unequal_ones_two(v):
    """label_str spells a number by its value: every type of an equal value gives one class,
    and the spelling reads back as the same number (no two values merge)."""
    spellings = {label_str(v), label_str(np.float64(v))}
    if float(v).is_integer():
        spellings |= {label_str(int(v)), label_str(float(v))}
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
