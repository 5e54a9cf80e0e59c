"""Real corpora as they come: labels and alignments that must not change meaning on the way in.

Label CSVs (strings as written, stripped, UTF-8/UTF-16), the one interval check every
alignment source goes through (TextGrid, .PHN, segment tables, ``Utterance.phones``),
word identity ("I I think"), Praat's encodings and number formats, and ``load_folder``'s
report of every file that does not fit.
"""

from __future__ import annotations

import string
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from hypothesis import example, given, settings
from hypothesis import strategies as st

from s3viz.align import frame_labels
from s3viz.data import AlignmentError, Utterance, load_folder
from s3viz.data import alignments as al
from s3viz.data.formats import _intervals
from s3viz.segments import _runs

SR = 16000


def _noise(path, seconds, rate=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal(int(round(seconds * rate))) * 0.1).astype(np.float32),
             rate, subtype="PCM_16")


def _textgrid(xmax, tiers, xmin="0"):
    """A long-format TextGrid; ``tiers``: {name: [(start, end, label)]} with times as str
    or numbers, written as given (so exponents and odd encodings reach the reader)."""
    out = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", f"xmin = {xmin}",
           f"xmax = {xmax}", "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for k, (name, entries) in enumerate(tiers.items(), 1):
        out += [f"    item [{k}]:", '        class = "IntervalTier"', f'        name = "{name}"',
                f"        xmin = {xmin}", f"        xmax = {xmax}",
                f"        intervals: size = {len(entries)}"]
        for j, (a, b, lab) in enumerate(entries, 1):
            out += [f"        intervals [{j}]:", f"            xmin = {a}", f"            xmax = {b}",
                    f'            text = "{lab}"']
    return "\n".join(out) + "\n"


def _aligned(tmp_path, tg: str, encoding="utf-8", seconds=1.0, stem="utt1"):
    _noise(tmp_path / "audio" / f"{stem}.wav", seconds)
    (tmp_path / "aligned").mkdir(exist_ok=True)
    (tmp_path / "aligned" / f"{stem}.TextGrid").write_bytes(tg.encode(encoding))


PHONES = [(0, 0.2, "#"), (0.2, 0.5, "a"), (0.5, 0.8, "b"), (0.8, 1.0, "<p:>")]


# --------------------------------------------------------------------------- label CSVs


def _folder(tmp_path, names):
    for n in names:
        _noise(tmp_path / "audio" / n, 0.2)
    return tmp_path / "audio"


def test_labels_are_strings_as_written_and_stripped(tmp_path):
    root = _folder(tmp_path, ["a.wav", "b.wav", "c.wav"])
    csv = tmp_path / "labels.csv"
    csv.write_text("file, speaker , age\na.wav , 01,007\nb.wav,1, 7\nc.wav,s1 ,NA\n")
    c = load_folder(root, csv)
    # "01" and "1" stay two speakers; "s1 " is "s1"; "007" is not 7; "NA" is a word
    assert [u.speaker for u in c] == ["01", "1", "s1"]
    assert [u.labels["age"] for u in c] == ["007", "7", "NA"]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le"])
def test_labels_csv_encodings(tmp_path, encoding):
    root = _folder(tmp_path, ["é.wav"])
    csv = tmp_path / "labels.csv"
    csv.write_bytes("file,speaker\né.wav,Zoë\n".encode(encoding))
    assert load_folder(root, csv)[0].speaker == "Zoë"


def test_labels_csv_in_latin1_is_refused_naming_file_and_fix(tmp_path):
    root = _folder(tmp_path, ["a.wav"])
    csv = tmp_path / "labels.csv"
    csv.write_bytes("file,speaker\na.wav,Zoë\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels.csv: not UTF-8, UTF-16 text; labels_csv: "
                                         r"convert it to UTF-8"):
        load_folder(root, csv)


def test_ids_equal_once_stripped_are_refused_naming_both(tmp_path):
    root = _folder(tmp_path, ["a.wav", "b.wav"])
    csv = tmp_path / "labels.csv"
    csv.write_text('file,id\na.wav,"x "\nb.wav,x\n')
    with pytest.raises(ValueError, match=r"rows 2 and 3 give the same 'id' 'x' \(written 'x ' "
                                         r"and 'x'"):
        load_folder(root, csv)
    csv.write_text('file,speaker\na.wav,p\n"a.wav ",q\nb.wav,p\n')
    with pytest.raises(ValueError, match=r"rows 2 and 3 give the same 'file' 'a.wav'"):
        load_folder(root, csv)


_cell = st.text(alphabet=string.ascii_letters + string.digits + " .-_éß", min_size=1,
                max_size=8).filter(lambda s: s.strip())


@settings(max_examples=30, deadline=None)
@given(st.lists(_cell, min_size=2, max_size=2))
@example([" 01", "1 "])
def test_labels_round_trip_as_strings(tmp_path_factory, values):
    tmp = tmp_path_factory.mktemp("rt")
    root = _folder(tmp, ["a.wav", "b.wav"])
    pd.DataFrame({"file": ["a.wav", "b.wav"], "speaker": values}).to_csv(tmp / "l.csv",
                                                                          index=False)
    assert [u.speaker for u in load_folder(root, tmp / "l.csv")] == [v.strip() for v in values]


# --------------------------------------------------------------------------- one interval check


def test_utterance_phones_are_checked_like_every_alignment():
    wav = np.zeros(16000, np.float32)

    def table(starts, ends):
        return pd.DataFrame({"phone": ["a"] * len(starts), "word": [""] * len(starts),
                             "start": starts, "end": ends})

    with pytest.raises(AlignmentError, match=r"Utterance 'u': .*past the end of the audio"):
        Utterance("u", wav, phones=table([0, 8000], [8000, 20000]))
    with pytest.raises(AlignmentError, match=r"interval 2 .*overlaps interval 1"):
        Utterance("u", wav, phones=table([0, 7000], [8000, 9000]))
    with pytest.raises(AlignmentError, match="not in time order"):
        Utterance("u", wav, phones=table([8000, 0], [9000, 8000]))
    u = Utterance("u", wav, phones=table([0, 8000], [8000, 16100]))  # within 10 ms: clipped
    assert u.phones["end"].tolist() == [8000, 16000]
    with pytest.raises(AlignmentError, match="overlaps"):  # assigned later: checked too
        u.phones = table([0, 7000], [8000, 9000])


_bounds = st.lists(st.integers(0, 16000), min_size=2, max_size=12, unique=True).map(sorted)


@settings(max_examples=40, deadline=None)
@given(_bounds, st.data())
def test_valid_intervals_pass_unchanged_and_gaps_stay_unlabelled(bounds, data):
    pairs = list(zip(bounds[:-1], bounds[1:]))
    keep = data.draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    pairs = [p for p, k in zip(pairs, keep) if k] or pairs[:1]
    entries = [(a / SR, b / SR, f"p{i}") for i, (a, b) in enumerate(pairs)]
    table = al.alignment_table(al.check_intervals(entries, 1.0, "x", "t"), None, 16000)
    assert list(zip(table["start"], table["end"])) == pairs
    labels = frame_labels(table, 50, 320, receptive_field_samples=320)
    centres = np.arange(50) * 320 + 160
    covered = np.zeros(50, bool)
    for a, b in pairs:
        covered |= (centres >= a) & (centres < b)
    assert ((labels == "") == ~covered).all()  # uncovered frames: unlabelled, never "sil"


@settings(max_examples=30, deadline=None)
@given(_bounds, st.integers(1, 2000))
def test_overlaps_and_overruns_are_refused(bounds, shift):
    entries = [(a / SR, b / SR, "p") for a, b in zip(bounds[:-1], bounds[1:])]
    last_start, last_end = entries[-1][:2]
    over = entries + [((last_start + last_end) / 2, last_end + shift / SR, "q")]
    with pytest.raises(AlignmentError, match="overlaps|not in time order"):
        al.check_intervals(over, 2.0, "x", "t")
    late = entries[:-1] + [(entries[-1][0], 1.0 + al.TOLERANCE_S + shift / SR, "q")]
    with pytest.raises(AlignmentError, match="past the end of the audio"):
        al.check_intervals(late, 1.0, "x", "t")


def test_partial_segment_table_leaves_the_rest_unlabelled(tmp_path):
    root = _folder(tmp_path, ["a.wav"])
    seg = pd.DataFrame({"file": ["a.wav"], "start": [0.25], "end": [0.5], "phone": ["k"]})
    root = tmp_path / "audio"
    _noise(root / "a.wav", 1.0)
    t = load_folder(root, alignments=seg)[0].phones
    assert t[["phone", "start", "end"]].values.tolist() == [["k", 4000, 8000]]
    labels = frame_labels(t, 50, 320)
    assert set(labels[:12]) == {""} and set(labels[13:25]) == {"k"} and set(labels[26:]) == {""}


def test_phn_counts_samples_at_the_audio_files_own_rate(tmp_path):
    d = tmp_path / "timit"
    _noise(d / "SA1.WAV", 1.0, rate=8000)
    (d / "SA1.PHN").write_text("0 2000 h#\n2000 6000 ae\n6000 8000 h#\n")
    t = load_folder(d, alignments="sibling")[0].phones
    # 8 kHz sample 2000 is 0.25 s, 16 kHz sample 4000 (not 2000)
    assert t[["phone", "start", "end"]].values.tolist() == [["sil", 0, 4000], ["ae", 4000, 12000],
                                                            ["sil", 12000, 16000]]
    with pytest.raises(ValueError, match="pass sample_rate="):
        al.read_alignment(d / "SA1.PHN", 16000)
    (d / "SA1.PHN").write_text("0 2000 h#\n2000 16000 ae\n")  # 16 kHz counts for 8 kHz audio
    with pytest.raises(AlignmentError, match="past the end of the audio"):
        load_folder(d, alignments="sibling")


# --------------------------------------------------------------------------- words


def test_repeated_words_stay_separate_words(tmp_path):
    tg = _textgrid(1.0, {"words": [(0, 0.2, "I"), (0.2, 0.4, "I"), (0.4, 1.0, "think")],
                         "phones": [(0, 0.2, "AY1"), (0.2, 0.4, "AY1"), (0.4, 0.6, "TH"),
                                    (0.6, 0.8, "IH1"), (0.8, 1.0, "NGK")]})
    _aligned(tmp_path, tg)
    t = load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")[0].phones
    assert t["word_index"].tolist() == [0, 1, 2, 2, 2]
    assert _runs(t, "word")["label"].tolist() == ["I", "I", "think"]
    assert [w[2] for w in _intervals(t, "word", 16000)] == ["I", "I", "think"]
    seg = pd.DataFrame({"file": "utt1", "start": [0, 0.2, 0.4], "end": [0.2, 0.4, 1.0],
                        "phone": ["AY1", "AY1", "TH"], "word": ["I", "I", "think"],
                        "word_index": [0, 1, 2]})
    t = load_folder(tmp_path / "audio", alignments=seg)[0].phones
    assert _runs(t, "word")["label"].tolist() == ["I", "I", "think"]


# --------------------------------------------------------------------------- TextGrids


def test_latin1_textgrid_is_read(tmp_path):
    _aligned(tmp_path, _textgrid(1.0, {"phones": [(0, 0.5, "é"), (0.5, 1.0, "ç")]}), "latin-1")
    t = load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")[0].phones
    assert t["phone"].tolist() == ["é", "ç"]


def test_binary_textgrid_is_a_named_error(tmp_path):
    _noise(tmp_path / "audio" / "utt1.wav", 1.0)
    (tmp_path / "aligned").mkdir()
    (tmp_path / "aligned" / "utt1.TextGrid").write_bytes(b"ooBinaryFile\x08TextGrid\x00\x01\xff")
    with pytest.raises(AlignmentError, match="utt1.TextGrid: not UTF-8, UTF-16 or Latin-1 text; "
                                             "save it from Praat as a text file"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")
    (tmp_path / "aligned" / "utt1.TextGrid").write_text("0 1.0 a\n")  # text, not a TextGrid
    with pytest.raises(AlignmentError, match="utt1.TextGrid: not a Praat text TextGrid"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")


def test_exponent_times_as_praat_writes_them(tmp_path):
    tg = _textgrid(1.0, {"phones": [("5e-05", 0.5, "a"), (0.5, "1.0E0", "b")]}, xmin="5e-05")
    _aligned(tmp_path, tg)
    t = load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")[0].phones
    assert t[["phone", "start", "end"]].values.tolist() == [["a", 1, 8000], ["b", 8000, 16000]]
    short = ('File type = "ooTextFile"\nObject class = "TextGrid"\n\n5e-05\n1.0\n<exists>\n1\n'
             '"IntervalTier"\n"phones"\n5e-05\n1.0\n2\n5e-05\n0.5\n"a"\n0.5\n1.0E0\n"b"\n')
    _aligned(tmp_path, short, "utf-16")  # the short format, as Praat writes it in UTF-16
    t = load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")[0].phones
    assert t[["phone", "start", "end"]].values.tolist() == [["a", 1, 8000], ["b", 8000, 16000]]
    _aligned(tmp_path, _textgrid(1.0, {"phones": [(0, 0.5, "a")]}, xmin="5e-01"))
    with pytest.raises(AlignmentError, match="spans 0.5-1 s"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")


# --------------------------------------------------------------------------- load_folder options


def test_every_file_that_does_not_fit_is_reported_at_once(tmp_path):
    good = _textgrid(1.0, {"phones": PHONES})
    _aligned(tmp_path, good, stem="ok")
    _aligned(tmp_path, _textgrid(1.5, {"phones": [(0, 1.5, "a")]}), stem="long")  # 0-1.5 s
    _aligned(tmp_path, _textgrid(1.0, {"segments": PHONES}), stem="notier")
    _noise(tmp_path / "audio" / "noalign.wav", 1.0)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF not audio")
    kw = dict(alignments=tmp_path / "aligned")
    with pytest.raises(ValueError, match="(?s)4 of 5 audio file.*broken.wav: audio.*long.wav: "
                                         "alignment.*spans 0-1.5 s.*noalign.wav: alignment: no "
                                         "alignment.*notier.wav: alignment: .*no phone tier") as e:
        load_folder(tmp_path / "audio", **kw)
    assert len(e.value.skipped) == 4
    with pytest.warns(UserWarning, match="(?s)4 of 5 audio file.*left out.*broken.wav"):
        c = load_folder(tmp_path / "audio", strict=False, **kw)
    assert c.ids == ["ok"]
    assert c.skipped["file"].tolist() == ["broken.wav", "long.wav", "noalign.wav", "notier.wav"]
    assert c.skipped["reason"].str.contains("spans 0-1.5 s").tolist() == [False, True, False,
                                                                          False]


def test_alignment_pattern_tier_candidates_and_silence_marks(tmp_path):
    _noise(tmp_path / "audio" / "fra" / "A b.wav", 1.0)
    out = tmp_path / "results" / "fra"
    out.mkdir(parents=True)
    (out / "A b-merge.TextGrid").write_text(_textgrid(1.0, {
        "TokensAlign": [(0, 0.2, "#"), (0.2, 0.8, "ab"), (0.8, 1.0, "#")],
        "phons": [(0, 1.0, "x")], "PhonAlign": PHONES}))
    kw = dict(alignments=tmp_path / "results", alignment_pattern="{parent}/{stem}-merge.TextGrid")
    t = load_folder(tmp_path / "audio", phone_tier=["phones", "PhonAlign", "phons"],
                    word_tier="TokensAlign", **kw)[0].phones
    # SPPAS's '#' and WebMAUS's '<p:>' are silence by default, in phones and words
    assert t[["phone", "word"]].values.tolist() == [["sil", ""], ["a", "ab"], ["b", "ab"],
                                                    ["sil", ""]]
    t = load_folder(tmp_path / "audio", phone_tier=["phons", "PhonAlign"], **kw)[0].phones
    assert t["phone"].tolist() == ["x"]  # the first candidate present wins
    t = load_folder(tmp_path / "audio", phone_tier="PhonAlign", silence={"#"}, **kw)[0].phones
    assert t["phone"].tolist() == ["sil", "a", "b", "<p:>"]
    with pytest.raises(AlignmentError, match=r"looked for \['MAU'\].*the file has tiers "
                                             r"\['TokensAlign', 'phons', 'PhonAlign'\]"):
        load_folder(tmp_path / "audio", phone_tier=["MAU"], **kw)
    with pytest.raises(ValueError, match=r"placeholders are \{parent\}, \{stem\} and \{name\}"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "results",
                    alignment_pattern="{folder}/{stem}.TextGrid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AlignmentError, match=r"no alignment .*as '\{stem\}.TextGrid'"):
            load_folder(tmp_path / "audio", alignments=tmp_path / "results",
                        alignment_pattern="{stem}.TextGrid")


def test_a_malformed_tier_blocks_only_itself(tmp_path):
    # SPPAS writes point tiers as 'intervals: size' with 'time =' (Praat reads by position,
    # praatio by key): the phone tier beside it must still load, the bad tier be refused
    tg = _textgrid(1.0, {"PhonAlign": PHONES}).replace("size = 1", "size = 2")
    tg += ('    item [2]:\n        class = "TextTier"\n        name = "Momel"\n'
           "        xmin = 0\n        xmax = 1.0\n        intervals: size = 1\n"
           '        points [1]:\n        time = 0.5\n        mark = "183"\n')
    _aligned(tmp_path, tg)
    kw = dict(alignments=tmp_path / "aligned")
    assert load_folder(tmp_path / "audio", **kw)[0].phones["phone"].tolist() == ["sil", "a", "b",
                                                                                  "sil"]
    with pytest.raises(AlignmentError, match="praatio cannot parse tier 'Momel'"):
        load_folder(tmp_path / "audio", phone_tier="Momel", **kw)


def _one_tier_textgrid(folder, intervals, xmin="0", xmax="1.0"):
    """folder/a.wav (1 s) beside folder/a.TextGrid, long format, one 'phones' tier."""
    import soundfile as sf

    sf.write(folder / "a.wav", 0.1 * np.sin(np.arange(16000) / 7.0), 16000)
    rows = "".join(f'        intervals [{i + 1}]:\n            xmin = {a}\n            xmax = {b}\n'
                   f'            text = "{t}"\n' for i, (a, b, t) in enumerate(intervals))
    (folder / "a.TextGrid").write_text(
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\n'
        f"xmin = {xmin}\nxmax = {xmax}\ntiers? <exists>\nsize = 1\nitem []:\n"
        f'    item [1]:\n        class = "IntervalTier"\n        name = "phones"\n'
        f"        xmin = {xmin}\n        xmax = {xmax}\n        intervals: size = "
        f"{len(intervals)}\n" + rows, encoding="utf-8")


@pytest.mark.parametrize("time", ["-.2", "-0.2", "- .2", "-2e-1"])
def test_a_negative_time_is_refused_however_it_is_written(tmp_path, time):
    _one_tier_textgrid(tmp_path, [(time, "0.5", "a"), ("0.5", "1.0", "b")], xmin=time)
    with pytest.raises(AlignmentError, match="negative time"):
        load_folder(tmp_path, alignments="sibling")


def test_numbers_inside_a_label_are_left_as_written(tmp_path):
    """A multi-line label holding '2e3' or '-1' is text, not a time to rewrite or refuse."""
    _one_tier_textgrid(tmp_path, [("0", "0.5", "x\n2e3\n-1\ny"), ("0.5", "1.0", "b")])
    corpus = load_folder(tmp_path, alignments="sibling", silence=["sil"])
    assert corpus[0].phones["phone"].tolist()[0] == "x\n2e3\n-1\ny"
