"""The user's corpus with its alignments: TextGrids (MFA), TIMIT, segment tables, export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from s3viz.align import frame_labels
from s3viz.measures import RidgeProbe
from s3viz.data import (PHONE_COLUMNS, AlignmentError, export_corpus, load_folder, load_timit,
                        synthetic_corpus)
from s3viz.data import alignments as al

SR = 16000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(10, seed=0)


@pytest.fixture(scope="module")
def mfa(corpus, tmp_path_factory):
    return export_corpus(corpus, tmp_path_factory.mktemp("export") / "mfa")


def _labels(table, n_samples, column="phone"):
    return frame_labels(table, n_samples // 320, 320, column=column, receptive_field_samples=400)


def _noise(path, seconds, rate=SR, fmt=None):
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(int(round(seconds * rate))) * 0.1).astype(np.float32)
    sf.write(path, wav, rate, subtype="PCM_16", **({"format": fmt} if fmt else {}))


# A hand-written MFA-style TextGrid (multi-speaker tier names, sil/sp/spn, <unk>).
LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.0
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "spk1 - words"
        xmin = 0
        xmax = 1.0
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.5
            text = "she"
        intervals [3]:
            xmin = 0.5
            xmax = 0.8
            text = "<unk>"
        intervals [4]:
            xmin = 0.8
            xmax = 1.0
            text = ""
    item [2]:
        class = "IntervalTier"
        name = "spk1 - phones"
        xmin = 0
        xmax = 1.0
        intervals: size = 6
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = "sil"
        intervals [2]:
            xmin = 0.1
            xmax = 0.3
            text = "SH"
        intervals [3]:
            xmin = 0.3
            xmax = 0.5
            text = "IY1"
        intervals [4]:
            xmin = 0.5
            xmax = 0.8
            text = "spn"
        intervals [5]:
            xmin = 0.8
            xmax = 0.9
            text = "sp"
        intervals [6]:
            xmin = 0.9
            xmax = 1.0
            text = ""
'''

SHORT = '''File type = "ooTextFile"
Object class = "TextGrid"

0
1.0
<exists>
2
"IntervalTier"
"spk1 - words"
0
1.0
4
0
0.1
""
0.1
0.5
"she"
0.5
0.8
"<unk>"
0.8
1.0
""
"IntervalTier"
"spk1 - phones"
0
1.0
6
0
0.1
"sil"
0.1
0.3
"SH"
0.3
0.5
"IY1"
0.5
0.8
"spn"
0.8
0.9
"sp"
0.9
1.0
""
'''

def _one(tmp_path, textgrid: str, encoding="utf-8", seconds=1.0, **kw):
    audio = tmp_path / "audio" / "spk1"
    audio.mkdir(parents=True, exist_ok=True)
    _noise(audio / "utt1.wav", seconds)
    aligned = tmp_path / "aligned" / "spk1"
    aligned.mkdir(parents=True, exist_ok=True)
    (aligned / "utt1.TextGrid").write_bytes(textgrid.encode(encoding))
    return load_folder(tmp_path / "audio", alignments=tmp_path / "aligned", **kw)


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("text,encoding", [(LONG, "utf-8"), (SHORT, "utf-8"), (LONG, "utf-16"),
                                           (SHORT, "utf-16")],
                         ids=["long", "short", "long-utf16", "short-utf16"])
def test_textgrid_formats_and_silence_rule(tmp_path, text, encoding):
    c = _one(tmp_path, text, encoding)
    table = c[0].phones
    assert c[0].id == "spk1/utt1"
    # spn (MFA's phone of the <unk> word), sp and the empty tail are one silence with the
    # word "", as the embedded corpus labels silence
    expected = pd.DataFrame({"phone": ["sil", "SH", "IY1", "sil"],
                             "word": ["", "she", "she", ""],
                             "start": [0, 1600, 4800, 8000], "end": [1600, 4800, 8000, 16000],
                             "word_index": [-1, 0, 0, -1]})
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False)


def test_utf16_without_byte_order_mark(tmp_path):
    for codec in ("utf-16-le", "utf-16-be"):
        d = tmp_path / codec
        c = _one(d, LONG, codec)
        assert c[0].phones["phone"].tolist() == ["sil", "SH", "IY1", "sil"]


def test_negative_times_are_refused(tmp_path):
    # praatio's own parser would read -0.05 as 0.05
    with pytest.raises(AlignmentError, match=r"utt1.TextGrid:\d+: a negative time"):
        _one(tmp_path / "long", _with_phone(LONG, 1, -0.05, 0.1))
    short = SHORT.replace("\n0\n0.1\n\"sil\"", "\n-0.05\n0.1\n\"sil\"")
    with pytest.raises(AlignmentError, match="a negative time"):
        _one(tmp_path / "short", short)


def test_utf16_ipa_labels(tmp_path):
    text = LONG.replace('"SH"', '"ʃ"').replace('"she"', '"shé"')
    table = _one(tmp_path, text, "utf-16")[0].phones
    assert table["phone"].tolist()[1] == "ʃ" and table["word"].tolist()[1] == "shé"


def test_tiers_by_name_or_given(tmp_path):
    renamed = LONG.replace('"spk1 - phones"', '"segments"')
    with pytest.raises(AlignmentError, match=r"no phone tier.*the file has tiers \['spk1 - words', "
                                             r"'segments'\]"):
        _one(tmp_path, renamed)
    c = load_folder(tmp_path / "audio", alignments=tmp_path / "aligned", phone_tier="segments")
    assert c[0].phones["phone"].tolist()[1] == "SH"
    with pytest.raises(AlignmentError, match=r"no word tier \(looked for \['nope'\]"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "aligned", phone_tier="segments",
                    word_tier="nope")


def test_two_speakers_tiers_are_ambiguous(tmp_path):
    second = LONG.split("    item [2]:\n")[1].replace("spk1 - phones", "spk2 - phones")
    two = LONG.replace("size = 2\n", "size = 3\n", 1) + "    item [3]:\n" + second
    with pytest.raises(AlignmentError, match="several phone tiers"):
        _one(tmp_path, two)


def test_phone_map_dict_and_no_word_tier(tmp_path):
    no_words = LONG.replace("size = 2", "size = 1").split("    item [1]:")[0] + \
        "    item [1]:" + LONG.split("    item [2]:")[1]
    c = _one(tmp_path, no_words, phone_map={"SH": "sh", "IY1": "iy"})
    assert c[0].phones["phone"].tolist() == ["sil", "sh", "iy", "sil"]
    assert set(c[0].phones["word"]) == {""}
    with pytest.raises(AlignmentError, match="'IY1' is not in the phone_map dict"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "aligned", phone_map={"SH": "sh"})


# --------------------------------------------------------------------------- bad alignments


def _with_phone(text, k, start, end):
    """LONG with the phone interval k (1-based) given new times."""
    head, rest = text.split('name = "spk1 - phones"')
    parts = rest.split(f"intervals [{k}]:\n")
    lines = parts[1].split("\n")
    lines[0] = f"            xmin = {start}"
    lines[1] = f"            xmax = {end}"
    return head + 'name = "spk1 - phones"' + parts[0] + f"intervals [{k}]:\n" + "\n".join(lines)


def test_overlapping_intervals_name_file_and_interval(tmp_path):
    with pytest.raises(AlignmentError, match=r"utt1.TextGrid: tier 'spk1 - phones', interval 3 "
                                             r"\(0.25-0.5 s, 'IY1'\): overlaps interval 2"):
        _one(tmp_path, _with_phone(LONG, 3, 0.25, 0.5))


def test_unsorted_intervals(tmp_path):
    with pytest.raises(AlignmentError, match="interval 3 .*not in time order"):
        _one(tmp_path, _with_phone(LONG, 3, 0.05, 0.08))


def test_interval_past_the_audio(tmp_path):
    text = _with_phone(LONG, 6, 0.9, 1.2).replace("xmax = 1.0\n", "xmax = 1.2\n")
    with pytest.raises(AlignmentError, match="spans 0-1.2 s but the audio lasts 1.000 s"):
        _one(tmp_path, text)
    # the TextGrid's range agrees with the audio but one interval runs past it
    with pytest.raises(AlignmentError, match=r"interval 6 \(0.9-1.2 s, ''\): ends 0.200 s past "
                                             r"the end of the audio"):
        _one(tmp_path, _with_phone(LONG, 6, 0.9, 1.2))


def test_end_within_tolerance_is_clipped_not_refused(tmp_path):
    # the audio is 4 ms shorter than the TextGrid: within TOLERANCE_S (10 ms)
    c = _one(tmp_path, LONG, seconds=0.996)
    assert c[0].phones["end"].iloc[-1] == c[0].num_samples == 15936


def test_textgrid_for_a_shorter_file(tmp_path):
    with pytest.raises(AlignmentError, match="spans 0-1 s but the audio lasts 2.000 s"):
        _one(tmp_path, LONG, seconds=2.0)


def test_point_tier_is_refused(tmp_path):
    text = LONG.replace('class = "IntervalTier"\n        name = "spk1 - phones"',
                        'class = "TextTier"\n        name = "spk1 - phones"')
    text = text.split('name = "spk1 - phones"')[0] + '''name = "spk1 - phones"
        xmin = 0
        xmax = 1.0
        points: size = 1
        points [1]:
            number = 0.5
            mark = "x"
'''
    with pytest.raises(AlignmentError, match="is a TextTier; phones and words need an "
                                             "IntervalTier"):
        _one(tmp_path, text)


def test_missing_alignment_strict_and_not(tmp_path):
    _one(tmp_path, LONG)
    _noise(tmp_path / "audio" / "spk1" / "utt2.wav", 0.5)
    with pytest.raises(AlignmentError, match=r"(?s)1 of 2 audio file\(s\) .* \(no alignment\):\n"
                                             r"  spk1/utt2.wav: .*strict=False"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "aligned")
    with pytest.warns(UserWarning, match="1 of 2 audio file.* left out"):
        c = load_folder(tmp_path / "audio", alignments=tmp_path / "aligned", strict=False)
    assert c.ids == ["spk1/utt1"] and c[0].phones is not None
    assert c.skipped["file"].tolist() == ["spk1/utt2.wav"]


def test_bad_arguments(tmp_path):
    _one(tmp_path, LONG)
    with pytest.raises(FileNotFoundError, match="alignments .* not found"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="apply to alignments"):
        load_folder(tmp_path / "audio", phone_tier="phones")
    with pytest.raises(ValueError, match="the named maps are 'timit39'"):
        load_folder(tmp_path / "audio", alignments=tmp_path / "aligned", phone_map="timit48")
    with pytest.raises(TypeError, match="alignments must be"):
        load_folder(tmp_path / "audio", alignments=3)


# --------------------------------------------------------------------------- segment tables


def test_segment_csv_and_tsv(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    _noise(audio / "a.wav", 1.0)
    _noise(audio / "b.flac", 0.5)
    seg = pd.DataFrame({"file": ["a.wav", "a.wav", "b"], "start": [0.1, 0.4, 0.0],
                        "end": [0.4, 0.6, 0.25], "phone": ["k", "ae", "t"],
                        "word": ["cat", "cat", "t"]})
    seg.to_csv(tmp_path / "seg.csv", index=False)
    seg.to_csv(tmp_path / "seg.tsv", index=False, sep="\t")
    for source in (tmp_path / "seg.csv", tmp_path / "seg.tsv", seg):
        c = load_folder(audio, alignments=source)
        a = c[0].phones
        # what the table does not cover is unlabelled (no row), not silence
        assert a["phone"].tolist() == ["k", "ae"]
        assert a["word"].tolist() == ["cat", "cat"]
        assert a["start"].tolist() == [1600, 6400] and a["end"].tolist() == [6400, 9600]
        assert c[1].phones["phone"].tolist() == ["t"]


def test_no_table_travels_in_attrs(tmp_path):
    """pandas copies a table's attrs into every table derived from it (each groupby group,
    each selection): a whole table kept there made reading a corpus's segment table
    quadratic in its size (1 h of audio: 92 s and 4.6 GiB). Nothing s3viz reads keeps a
    table, or anything as long as one, in attrs."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for k in range(30):
        _noise(audio / f"u{k}.wav", 0.3)
        rows += [{"file": f"u{k}.wav", "start": 0.0, "end": 0.1, "phone": "a", "word": "x"},
                 {"file": f"u{k}.wav", "start": 0.1, "end": 0.3, "phone": "b", "word": "x"}]
    pd.DataFrame(rows).to_csv(tmp_path / "seg.csv", index=False)
    pd.DataFrame({"file": [f"u{k}.wav" for k in range(30)],
                  "speaker": [f"s{k % 3}" for k in range(30)]}).to_csv(tmp_path / "l.csv",
                                                                      index=False)
    c = load_folder(audio, alignments=tmp_path / "seg.csv", labels_csv=tmp_path / "l.csv")

    def small(value):
        return not isinstance(value, (pd.DataFrame, pd.Series, np.ndarray, list, dict)) \
            or len(value) < 10

    from s3viz.data.folder import read_csv_strings, read_segment_table

    read = [read_csv_strings(tmp_path / "l.csv", what="labels_csv"),
            read_segment_table(tmp_path / "seg.csv")]
    for table in read + [c.labels] + [u.phones for u in c]:
        assert all(small(v) for v in table.attrs.values()), table.attrs.keys()


def test_segment_dataframe_with_missing_labels(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    _noise(audio / "a.wav", 1.0)
    seg = pd.DataFrame({"file": ["a", "a"], "start": [0.0, 0.5], "end": [0.5, 1.0],
                        "phone": ["k", None], "word": [np.nan, "cat"]})
    table = load_folder(audio, alignments=seg)[0].phones
    # a missing phone is silence (as an empty interval), a missing word is "", never "nan"
    assert table["phone"].tolist() == ["k", "sil"] and table["word"].tolist() == ["", ""]


def test_segment_table_errors(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    _noise(audio / "a.wav", 1.0)
    with pytest.raises(AlignmentError, match="needs columns 'file'"):
        load_folder(audio, alignments=pd.DataFrame({"file": ["a"], "begin": [0.0]}))
    bad = pd.DataFrame({"file": ["a", "a"], "start": [0.0, 0.2], "end": [0.3, 0.5],
                        "phone": ["x", "y"]})
    with pytest.raises(AlignmentError, match=r"\(a.wav\): tier 'phone', interval 2 .*overlaps"):
        load_folder(audio, alignments=bad)
    ghost = pd.DataFrame({"file": ["a", "zz"], "start": [0.0, 0.0], "end": [0.3, 0.3],
                          "phone": ["x", "y"]})
    with pytest.raises(ValueError, match="match no audio file.*'zz'"):
        load_folder(audio, alignments=ghost)
    assert load_folder(audio, alignments=ghost, strict=False)[0].phones is not None
    twice = pd.DataFrame({"file": ["a.wav", "./a"], "start": [0.0, 0.5], "end": [0.3, 0.8],
                          "phone": ["x", "y"]})
    with pytest.raises(ValueError, match="segments of file 'a.wav' are given under two names"):
        load_folder(audio, alignments=twice)
    nan = pd.DataFrame({"file": ["a"], "start": ["soon"], "end": [0.3], "phone": ["x"]})
    with pytest.raises(AlignmentError, match="line 2: 'start' is not a number"):
        load_folder(audio, alignments=nan)


# --------------------------------------------------------------------------- TIMIT


def _timit(root: Path, split="TRAIN", speaker="FABC0", utt="SA1"):
    d = root / split / "DR3" / speaker
    d.mkdir(parents=True)
    _noise(d / f"{utt}.WAV", 1.0, fmt="NIST")  # NIST SPHERE, as TIMIT ships it
    (d / f"{utt}.PHN").write_text("0 2000 h#\n2000 3000 bcl\n3000 4000 b\n4000 6000 ae\n"
                                  "6000 6500 q\n6500 8000 dx\n8000 12000 axr\n12000 16000 h#\n")
    (d / f"{utt}.WRD").write_text("2000 6500 bat\n6500 12000 ter\n")
    (d / f"{utt}.TXT").write_text("0 16000 Batter.\n")
    return d


def test_load_timit_layout_and_labels(tmp_path):
    _timit(tmp_path)
    _timit(tmp_path, "TEST", "MXYZ1", "SX10")
    c = load_timit(tmp_path)
    assert [u.id for u in c] == ["TEST/DR3/MXYZ1/SX10", "TRAIN/DR3/FABC0/SA1"]
    u = c[1]
    assert (u.speaker, u.text) == ("FABC0", "Batter.")
    assert u.labels == {"dialect": "DR3", "sex": "F", "split": "train"}
    # h# is a default silence mark; the other labels stay as written
    assert u.phones["phone"].tolist() == ["sil", "bcl", "b", "ae", "q", "dx", "axr", "sil"]
    assert u.phones["word"].tolist() == ["", "bat", "bat", "bat", "bat", "ter", "ter", ""]
    assert [x.id for x in load_timit(tmp_path, split="test")] == ["TEST/DR3/MXYZ1/SX10"]
    with pytest.raises(ValueError, match="split must be"):
        load_timit(tmp_path, split="dev")


def test_timit39(tmp_path):
    _timit(tmp_path)
    u = load_timit(tmp_path, phone_map="timit39")[0]
    # closures and h# fold into silence (word "", merged), q is unlabelled, axr -> er
    assert u.phones["phone"].tolist() == ["sil", "b", "ae", "", "dx", "er", "sil"]
    assert u.phones["word"].tolist() == ["", "bat", "bat", "bat", "ter", "ter", ""]
    assert u.phones["end"].tolist()[0] == 3000
    assert len(set(al.TIMIT39.values()) - {None}) == 39
    assert len(al.TIMIT39) == 61


def test_timit_overlapping_words_take_the_later_word(tmp_path):
    d = _timit(tmp_path)
    # TIMIT lets adjacent words share a phone: "bat" ends inside "ter"'s first phone
    (d / "SA1.WRD").write_text("2000 7000 bat\n6500 12000 ter\n")
    u = load_timit(tmp_path)[0]
    assert u.phones["word"].tolist() == ["", "bat", "bat", "bat", "bat", "ter", "ter", ""]


def test_timit_bad_phn_names_the_line(tmp_path):
    d = _timit(tmp_path)
    (d / "SA1.PHN").write_text("0 2000 h#\n2000 x ae\n")
    with pytest.raises(AlignmentError, match=r"SA1.PHN:2: start and end must be whole sample"):
        load_timit(tmp_path)
    (d / "SA1.PHN").write_text("0 2000 h#\n2000 19000 ae\n")
    with pytest.raises(AlignmentError, match="tier 'PHN', interval 2 .* past the end"):
        load_timit(tmp_path)


def test_timit_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TIMIT audio"):
        load_timit(tmp_path)


# --------------------------------------------------------------------------- export round trips


def test_mfa_export_round_trip_equals_the_embedded_corpus(corpus, mfa):
    assert (mfa["alignments"] / corpus[0].speaker / f"{corpus[0].id}.TextGrid").is_file()
    assert (mfa["audio"] / corpus[0].speaker / f"{corpus[0].id}.lab").read_text().strip() == \
        corpus[0].text
    back = load_folder(mfa["audio"], mfa["labels"], alignments=mfa["alignments"])
    by_id = {u.id.split("/")[-1]: u for u in back}
    for u in corpus:
        b = by_id[u.id]
        assert b.speaker == u.speaker and b.num_samples == u.num_samples
        cols = [*PHONE_COLUMNS, "word_index"]  # words keep their numbering
        pd.testing.assert_frame_equal(b.phones[cols], u.phones[cols])
        for column in ("phone", "word"):
            assert (_labels(b.phones, u.num_samples, column)
                    == _labels(u.phones, u.num_samples, column)).all()


def test_timit_export_round_trip(corpus, tmp_path):
    export_corpus(corpus, tmp_path, layout="timit")
    back = load_timit(tmp_path)
    by_id = {u.id.split("/")[-1]: u for u in back}
    for u in corpus:
        cols = [*PHONE_COLUMNS, "word_index"]
        pd.testing.assert_frame_equal(by_id[u.id].phones[cols], u.phones[cols])
        assert by_id[u.id].labels["sex"] == u.labels["gender"][0].upper()
    assert sf.info(str(next(tmp_path.rglob("*.WAV")))).format == "NIST"


def test_export_refuses_bad_input(corpus, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_corpus(corpus, tmp_path / "x")
    with pytest.raises(ValueError, match="layout must be"):
        export_corpus(corpus, tmp_path / "y", layout="kaldi")
    from s3viz.data import Corpus, Utterance

    bare = Corpus([Utterance(id="a", wav=np.zeros(1600, np.float32) + 0.1)])
    with pytest.raises(ValueError, match="no alignment"):
        export_corpus(bare, tmp_path / "z")
    unlabelled = Corpus([Utterance(id="a", wav=np.zeros(1600, np.float32) + 0.1, phones=pd.DataFrame(
        {"phone": ["k", ""], "word": ["", ""], "start": [0, 800], "end": [800, 1600]}))])
    for layout in ("mfa", "timit"):
        with pytest.raises(ValueError, match="unlabelled phones|empty or has spaces"):
            export_corpus(unlabelled, tmp_path / f"u-{layout}", layout=layout)
        assert not (tmp_path / f"u-{layout}").exists(), "nothing is written before refusing"
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- downstream


@pytest.mark.slow
def test_everything_downstream_works_on_an_aligned_folder(corpus, mfa):
    import s3viz
    from s3viz.upstreams import get_upstream
    from s3viz.widgets import alignment_explorer

    back = load_folder(mfa["audio"], mfa["labels"], alignments=mfa["alignments"], lazy=True)
    up = get_upstream("tiny", pretrained=False)
    store = s3viz.extract(up, back, progress=False)
    ref = s3viz.extract(up, corpus, progress=False)
    for target in ("phone", "word"):
        got = s3viz.probe_layers(store, target, folds=2, split_by="utterance")
        want = s3viz.probe_layers(ref, target, folds=2, split_by="utterance")
        np.testing.assert_allclose(np.sort(got["accuracy"].to_numpy()),
                                   np.sort(want["accuracy"].to_numpy()), atol=1e-6)
    timeline = s3viz.frame_timeline(up, back[0].num_samples, layer=0)
    assert len(timeline) == store.lengths(0)[0]
    explorer = alignment_explorer(back, up)
    assert explorer is not None
    streamed = s3viz.stream_analysis(
        up, back, [RidgeProbe("phone", folds=2, split_by="utterance")])["probe"]
    direct = s3viz.probe_layers(store, "phone", folds=2, split_by="utterance")
    np.testing.assert_allclose(streamed["accuracy"].to_numpy(), direct["accuracy"].to_numpy(),
                               rtol=1e-6)


@pytest.mark.slow
def test_run_with_alignments(mfa, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "s3viz.run", "--upstream", "tiny", "--random-weights",
         "--folder", str(mfa["audio"]), "--labels", str(mfa["labels"]),
         "--alignments", str(mfa["alignments"]), "--targets", "phone", "word",
         "--folds", "2", "--split-by", "utterance", "--no-figures", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probes = pd.read_csv(out / "probes.csv")
    assert set(probes["target"]) == {"phone", "word"}
    assert probes["accuracy"].between(0, 1).all()
    bad = subprocess.run([sys.executable, "-m", "s3viz.run", "--corpus", "synthetic:2",
                          "--alignments", "sibling", "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--alignments needs --folder" in bad.stderr
