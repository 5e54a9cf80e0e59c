"""Real recordings with real aligners' output (MFA, praatio's examples, SPPAS), loaded as a
phonetician would, each in one call with the documented options (docs/data.md).

The data live outside the repository (``shared/realspeech``, see its README); the tests
skip where it is absent. Set ``S3VIZ_REALSPEECH`` to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from praatio.utilities.errors import ParsingError

from s3viz.data import AlignmentError, load_folder
from s3viz.data.alignments import SILENCE_LABELS

REAL = Path(os.environ.get("S3VIZ_REALSPEECH",
                           Path(__file__).resolve().parents[2] / "shared" / "realspeech"))
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"no real-speech data at {REAL}")

SPPAS = dict(pattern="samples-*/*.wav", alignment_pattern="{parent}/{stem}-merge.TextGrid",
             phone_tier="PhonAlign", word_tier="TokensAlign")


def _mfa(**kw):
    root = REAL / "mfa" / "tests" / "data"
    return load_folder(root / "wav", REAL / "mfa" / "speakers.csv",
                       alignments=root / "textgrid", lazy=True, **kw)


def _praatio(**kw):
    return load_folder(REAL / "praatio" / "examples" / "files", alignments="sibling",
                       alignment_pattern=["{stem}.TextGrid", "{stem}_phones.TextGrid"],
                       phone_tier=["phone", "phons"], lazy=True, **kw)


def _sppas(**kw):
    root = REAL / "sppas" / "samples"
    return load_folder(root, REAL / "sppas" / "speakers.csv",
                       alignments=root / "annotation-results", lazy=True, **SPPAS, **kw)


def _agrees(utt, textgrid: Path, tier: str, column: str):
    """Every interval of ``tier``, read by praatio on its own, labels the table's row at
    its midpoint (silence marks as "sil" / the word ""); returns how many were compared."""
    from praatio import textgrid as ptg

    tg = ptg.openTextgrid(str(textgrid), includeEmptyIntervals=False)
    table = utt.phones
    n = 0
    for start, end, label in tg.getTier(tier).entries:
        mid = int((start + end) / 2 * 16000)
        row = table[(table["start"] <= mid) & (table["end"] > mid)]
        assert len(row) == 1, (textgrid, start, end, label)
        silent = label.strip().lower() in {m.lower() for m in SILENCE_LABELS}
        if column == "word" and row["phone"].iat[0] == "sil":
            silent = True  # a silence phone carries the word "" (MFA's <unk>/[bracketed] on spn)
        want = ("sil" if column == "phone" else "") if silent else label.strip()
        assert row[column].iat[0] == want, (textgrid, tier, start, end, label)
        n += 1
    return n


def test_mfa_output_loads_and_agrees_with_its_textgrids():
    c = _mfa()
    assert len(c) == 4 and c.skipped.empty
    assert sorted({u.speaker for u in c}) == ["michael", "sickmichael"]
    n = 0
    for u in c:
        tg = REAL / "mfa" / "tests" / "data" / "textgrid" / f"{u.id}.TextGrid"
        n += _agrees(u, tg, "phones", "phone") + _agrees(u, tg, "words", "word")
    assert n > 500
    # repeated words stay separate word segments: word_index counts every word interval
    u = c[c.ids.index("acoustic_corpus")]
    words = u.phones[u.phones["word_index"] >= 0].drop_duplicates("word_index")
    assert words["word_index"].tolist() == list(range(len(words)))


def test_praatio_examples_load_with_tier_candidates():
    c = _praatio()
    assert c.ids == ["bobby", "damon_set_test", "mary"] and c.skipped.empty
    files = REAL / "praatio" / "examples" / "files"
    assert _agrees(c[0], files / "bobby_phones.TextGrid", "phone", "phone") > 5
    assert _agrees(c[1], files / "damon_set_test.TextGrid", "phons", "phone") > 5
    assert _agrees(c[2], files / "mary.TextGrid", "phone", "phone") > 5
    assert _agrees(c[2], files / "mary.TextGrid", "word", "word") > 1
    # bobby's first phone starts at 12.5 ms: the time before it is unlabelled, not silence
    assert c[0].phones["start"].iat[0] > 0


def test_sppas_output_loads_and_its_faulty_file_is_reported():
    with pytest.warns(UserWarning, match="(?s)1 of 20 audio file.*TB-FE1-H1_phrase2.wav.*spans "
                                         "0-6 s but the audio lasts 5.354 s"):
        c = _sppas(strict=False)
    assert len(c) == 19
    assert c.skipped["file"].tolist() == ["samples-cat/TB-FE1-H1_phrase2.wav"]
    results = REAL / "sppas" / "samples" / "annotation-results"
    n, unparsable = 0, []
    for u in c:
        parent, stem = u.id.rsplit("/", 1)
        tg = results / parent / f"{stem}-merge.TextGrid"
        try:
            n += _agrees(u, tg, "PhonAlign", "phone") + _agrees(u, tg, "TokensAlign", "word")
        except ParsingError:
            unparsable.append(u.id)
    assert n > 1000
    # praatio cannot open these two as a whole (point tiers written as 'intervals' with
    # 'time ='); s3viz reads them tier by tier, and their PhonAlign/TokensAlign are fine
    assert unparsable == ["samples-fra/AC track_0379", "samples-fra/F_F_B003-P9"]
    phones = [u.phones for u in c if u.id in unparsable]
    assert all(len(t) > 20 and (t["word"] != "").sum() > 10 for t in phones)
    with pytest.raises(AlignmentError, match="TB-FE1-H1_phrase2-merge.TextGrid: the TextGrid "
                                             "spans 0-6 s"):
        _sppas()


def test_the_cli_loads_sppas_output_and_lists_what_it_leaves_out(capsys):
    """python -m s3viz.run takes the same options as load_folder, tiers as comma lists."""
    from s3viz.run import _corpus, parse_args

    root = REAL / "sppas" / "samples"
    argv = ["--folder", str(root), "--labels", str(REAL / "sppas" / "speakers.csv"),
            "--pattern", "samples-*/*.wav", "--alignments", str(root / "annotation-results"),
            "--alignment-pattern", "{parent}/{stem}-merge.TextGrid",
            "--phone-tier", "phones,PhonAlign", "--word-tier", "TokensAlign",
            "--silence", "#,sil", "--out", "unused"]
    corpus = _corpus(parse_args(argv + ["--no-strict"]))
    err = capsys.readouterr().err
    assert "left out 1 file" in err and "TB-FE1-H1_phrase2" in err
    assert len(corpus) == 19 and corpus.skipped["file"].str.contains("TB-FE1-H1").all()
    with pytest.raises(AlignmentError, match="TB-FE1-H1_phrase2"):
        _corpus(parse_args(argv))
