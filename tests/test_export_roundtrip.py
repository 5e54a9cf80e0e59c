"""export_corpus then its documented reader gives back every utterance as it went out
(phones, words, word_index, labels), or the export refuses naming why, before writing."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from s3viz.data import Corpus, Utterance, export_corpus, load_folder, load_timit
from s3viz.data.formats import MANIFEST, _export_plan

COLUMNS = ["phone", "word", "start", "end", "word_index"]


@pytest.fixture(scope="module")
def base():
    from s3viz.data import synthetic_corpus

    return synthetic_corpus(3, seed=0)


def _copy(corpus) -> Corpus:
    return Corpus([Utterance(id=u.id, wav=u.wav, text=u.text, speaker=u.speaker,
                             phones=u.phones.copy(), labels=dict(u.labels)) for u in corpus])


def _load(folder, layout):
    """The export read back as documented; no file may be skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if layout == "mfa":
            return load_folder(folder / "corpus", folder / "labels.csv",
                               alignments=folder / "aligned")
        return load_timit(folder)


def _expected_ids(corpus, layout):
    stems = _export_plan(corpus, layout)
    return [s.split("/", 1)[1] if layout == "mfa" else s for s in stems]


def _assert_round_trip(corpus, folder, layout):
    back = _load(folder, layout)
    got = {u.id: u for u in back}
    ids = _expected_ids(corpus, layout)
    assert sorted(got) == sorted(ids), "every utterance comes back, and only those"
    for u, i in zip(corpus, ids):
        b = got[i]
        assert b.text == u.text.strip()  # a transcript is read back stripped (documented)
        want = u.phones[COLUMNS].reset_index(drop=True).astype({"phone": str, "word": str})
        pd.testing.assert_frame_equal(b.phones[COLUMNS].reset_index(drop=True), want,
                                      check_dtype=False)
        if layout == "mfa":
            assert b.speaker == u.speaker
            # a label other utterances have and this one lacks reads back missing (None)
            assert {k: str(v) for k, v in b.labels.items() if v is not None} == {
                k: str(v) for k, v in u.labels.items()}
        else:
            assert b.labels["split"] == str(u.labels.get("split", "train")).strip().lower()
            assert b.labels["dialect"] == str(u.labels.get("dialect", "DR1")).strip().upper()


# --------------------------------------------------------------------------- 3: overwrite


@pytest.mark.parametrize("layout", ["mfa", "timit"])
def test_overwrite_removes_the_earlier_exports_files(base, tmp_path, layout):
    out = tmp_path / "e"
    export_corpus(base, out, layout=layout)
    (out / "notes.txt").write_text("mine")  # the user's file, not the export's
    smaller = _copy(base[:2])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_corpus(smaller, out, layout=layout)
    export_corpus(smaller, out, layout=layout, overwrite=True)
    _assert_round_trip(smaller, out, layout)  # 2, not the 3 of the earlier export
    assert len(_load(out, layout)) == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.rglob("*") if base[2].id in p.name]


def test_overwrite_of_a_folder_no_export_made_is_refused_naming_it(base, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.wav").write_bytes(b"keep")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=f"{MANIFEST}.*new or empty folder") as e:
            export_corpus(base, out, overwrite=overwrite)
        assert str(out) in str(e.value) and "thesis.wav" in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.wav"]


def test_a_record_that_names_files_outside_the_folder_is_refused(base, tmp_path):
    out = tmp_path / "e"
    export_corpus(base, out, layout="timit")
    (tmp_path / "victim.txt").write_text("keep")
    (out / MANIFEST).write_text('{"files": ["../victim.txt"]}')
    with pytest.raises(ValueError, match="not a record s3viz wrote"):
        export_corpus(base, out, layout="timit", overwrite=True)
    assert (tmp_path / "victim.txt").read_text() == "keep"


def test_a_record_that_is_a_link_or_names_a_folder_is_refused_before_writing(base, tmp_path):
    import os

    from s3viz._fs import UnsafePathError

    out = tmp_path / "e"
    export_corpus(base, out, layout="timit")
    before = sorted(p.name for p in out.rglob("*"))
    (out / MANIFEST).write_text('{"files": ["TRAIN"]}')
    with pytest.raises(IsADirectoryError, match="TRAIN"):
        export_corpus(base, out, layout="timit", overwrite=True)
    assert (out / MANIFEST).read_text() == '{"files": ["TRAIN"]}'  # nothing written
    (tmp_path / "elsewhere.json").write_text('{"files": []}')
    os.replace(out / MANIFEST, tmp_path / "old.json")
    os.symlink(tmp_path / "elsewhere.json", out / MANIFEST)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        export_corpus(base, out, layout="timit", overwrite=True)
    assert sorted(p.name for p in out.rglob("*")) == before


# --------------------------------------------------------------------------- 4: folders


@pytest.mark.parametrize("label", [{"split": "dev"}, {"split": "validation"},
                                   {"dialect": "NORTH"}, {"dialect": "DR"}])
def test_timit_export_refuses_folders_load_timit_does_not_read(base, tmp_path, label):
    corpus = _copy(base)
    corpus[1].labels.update(label)
    ((key, value),) = label.items()
    with pytest.raises(ValueError, match=f"{key} {value!r}.*load_timit") as e:
        export_corpus(corpus, tmp_path / "e", layout="timit")
    assert repr(corpus[1].id) in str(e.value)
    assert not (tmp_path / "e").exists()


def test_load_timit_names_the_folders_it_skips(base, tmp_path):
    out = tmp_path / "e"
    export_corpus(base, out, layout="timit")
    (out / "TRAIN" / "DR1").rename(out / "TRAIN" / "NORTH")
    (out / "TRAIN").rename(out / "DEV")
    export_corpus(base[:1], tmp_path / "f", layout="timit")
    (tmp_path / "f" / "TRAIN").rename(out / "TEST")  # one utterance it still reads
    with pytest.warns(UserWarning, match=r"skipped 3 audio file.*'DEV/NORTH/"):
        back = load_timit(out)
    assert len(back) == 1
    with warnings.catch_warnings():  # a split left out by split= is not "skipped"
        warnings.simplefilter("error")
        (out / "DEV").rename(out / "TRAIN")
        (out / "TRAIN" / "NORTH").rename(out / "TRAIN" / "DR1")
        assert len(load_timit(out, split="test")) == 1


# --------------------------------------------------------------------------- 5: silence


@pytest.mark.parametrize("layout", ["mfa", "timit"])
@pytest.mark.parametrize("column, label", [("phone", "pau"), ("phone", "SP"), ("word", "Sil"),
                                           ("phone", "h#"), ("word", "<p:>"),
                                           ("phone", "SIL")])
def test_labels_the_reader_reads_as_silence_are_refused(base, tmp_path, layout, column, label):
    corpus = _copy(base)
    t = corpus[0].phones
    rows = t.index[t["word_index"] == 1] if column == "word" else t.index[t["phone"] != "sil"][:1]
    t.loc[rows, column] = label
    corpus[0].phones = t
    with pytest.raises(ValueError, match="silence marks") as e:
        export_corpus(corpus, tmp_path / "e", layout=layout)
    assert repr(label) in str(e.value) and repr(corpus[0].id) in str(e.value)
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- 6, 7: ids, words


@pytest.mark.parametrize("new_id, matched", [("q[12]", "q1"), ("a*", "ab"), ("b?", "bc"),
                                             ("[!x]", "y"), ("c[[]", "c[")])
def test_ids_with_glob_characters_round_trip_through_timit(base, tmp_path, new_id, matched):
    corpus = _copy(base)
    corpus[0].id = new_id
    corpus[1].id = matched  # what new_id matches as a glob
    export_corpus(corpus, tmp_path / "e", layout="timit")
    _assert_round_trip(corpus, tmp_path / "e", "timit")


@pytest.mark.parametrize("word", ["ice\n0 99 x", "a\tb", "a  b", "x\r", "a\u2028b", "a\x1cb"])
def test_timit_export_refuses_words_a_wrd_line_cannot_hold(base, tmp_path, word):
    corpus = _copy(base)
    t = corpus[1].phones
    t.loc[t["word_index"] == 0, "word"] = word
    corpus[1].phones = t
    with pytest.raises(ValueError, match=r"\.WRD line|surrounding whitespace|line breaks") as e:
        export_corpus(corpus, tmp_path / "e", layout="timit")
    assert repr(corpus[1].id) in str(e.value)
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- the property

_plain = list("abZé日[]*?!\"'#<>:,.-_")  # glob characters, quotes, TextGrid's own marks
_space = [" ", "\n", "\t", "\r", "\u2028", "\x1c"]  # what splits .WRD lines and words
_clean = st.text(st.sampled_from(_plain), min_size=1, max_size=6)
_texts = st.one_of(
    _clean, _clean, _clean, _clean.map(lambda t: t[:1] + " " + t),
    st.text(st.sampled_from(_plain + _space), min_size=1, max_size=6),
    st.sampled_from(["pau", "SP", "Sil", "sil", "h#", "<p:>", " a", "#", "spn", "SIL"]))
_splits = st.sampled_from(["train", "TEST", "Train", "test"] * 5 + ["dev", " test"])
_dialects = st.sampled_from(["DR1", "dr7", "DR12"] * 5 + ["NORTH", "DR"])


@settings(max_examples=60, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: an export a step
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(layout=st.sampled_from(["mfa", "timit"]), data=st.data())
def test_export_then_load_gives_every_utterance_back_or_refuses(base, tmp_path_factory,
                                                                 layout, data):
    corpus = _copy(base)
    for u in corpus:
        if data.draw(st.booleans()):
            u.id = data.draw(_texts)
        if data.draw(st.booleans()):
            u.text = data.draw(_texts)
            u.labels["note"] = data.draw(_texts)
        u.labels["split"] = data.draw(_splits)
        u.labels["dialect"] = data.draw(_dialects)
        t = u.phones
        speech = t.index[t["phone"] != "sil"]
        for _ in range(data.draw(st.integers(0, 2))):
            t.loc[data.draw(st.sampled_from(list(speech))), "phone"] = data.draw(_texts)
        if data.draw(st.booleans()):
            k = data.draw(st.sampled_from(sorted(set(t.loc[speech, "word_index"]))))
            t.loc[t["word_index"] == k, "word"] = data.draw(_texts)
        u.phones = t
    out = tmp_path_factory.mktemp("rt") / "e"
    try:
        export_corpus(corpus, out, layout=layout)
    except ValueError as e:  # refused: naming an utterance, before anything is written
        assert any(repr(u.id) in str(e) or repr(str(u.id)) in str(e) for u in corpus), str(e)
        assert not out.exists()
        event(f"{layout}: refused")
        return
    _assert_round_trip(corpus, out, layout)
    event(f"{layout}: read back whole")


def test_a_timit_transcript_keeps_its_carriage_returns_and_may_be_empty(base, tmp_path):
    layout = "timit"
    corpus = _copy(base)
    corpus[0].text, corpus[1].text, corpus[2].text = "a\rb\r\nc", "", "  x  y \n"
    export_corpus(corpus, tmp_path / "e", layout=layout)
    _assert_round_trip(corpus, tmp_path / "e", layout)
