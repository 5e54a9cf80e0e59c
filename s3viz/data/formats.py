"""Corpora in the layouts of the field: TIMIT (read), and MFA / TIMIT (written).

:func:`load_timit` reads a TIMIT copy (``TRAIN|TEST/DR*/<speaker>/<utt>.WAV``
NIST SPHERE audio, read by soundfile, with ``.PHN``/``.WRD`` in samples at the audio's rate
and ``.TXT``). :func:`export_corpus` writes any corpus with alignments in the
Montreal Forced Aligner's layout (audio, ``.lab`` transcripts and TextGrids, so
it opens in Praat) or in TIMIT's, so tests and notebooks have real-format files
without the network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import pandas as pd

from .._fs import OwnedFolder, check_name, collision_key
from ..interface import SAMPLE_RATE
from ._corpus import Corpus
from .alignments import SILENCE

__all__ = ["load_timit", "export_corpus"]

_TIMIT_SPLITS = ("train", "test")


def _timit_text(path: Path) -> str:
    """``0 46797 She had your dark suit in greasy wash water all year.`` -> the sentence."""
    if not path.is_file():
        return ""
    parts = path.read_text(errors="replace").strip().split(maxsplit=2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
        return parts[2].strip()
    return " ".join(parts)


def load_timit(root: Union[str, os.PathLike], split: Optional[str] = None, phone_map=None, *,
               lazy: bool = False, strict: bool = True, silence=None) -> Corpus:
    """Load a TIMIT copy as a :class:`Corpus` with its hand-labelled phone and word alignments.

    Args:
        root: the folder holding ``TRAIN`` and/or ``TEST`` (any case), each with
            ``DR1`` ... ``DR8`` dialect folders of speaker folders of
            ``<utt>.WAV`` (NIST SPHERE) + ``.PHN`` + ``.WRD`` + ``.TXT`` files.
        split: ``"train"``, ``"test"`` or None (both).
        phone_map: None keeps the labels as written (closures, ``epi`` ...)
            except the silence marks; ``"timit39"`` folds them to the 39
            classes of Lee & Hon (1989), closures and pauses as ``"sil"``, ``q``
            unlabelled; or a dict / function as for :func:`load_folder`.
        lazy, strict: as for :func:`load_folder`.
        silence: as for :func:`load_folder`; the default makes ``h#`` and
            ``pau`` the phone ``"sil"``.

    Returns:
        A :class:`Corpus` whose ids are the files' paths without suffix
        (``"TRAIN/DR1/FCJF0/SA1"``), ``speaker`` the speaker folder's name,
        ``text`` the ``.TXT`` sentence, and labels ``dialect`` (``"DR1"``),
        ``sex`` (``"F"``/``"M"``, the speaker folder's first letter) and
        ``split`` (``"train"``/``"test"``).
    """
    from .folder import load_folder

    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path, got {type(root).__name__}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"TIMIT root folder not found: {str(root)!r}")
    if split is not None and (not isinstance(split, str) or split.lower() not in _TIMIT_SPLITS):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    wanted = _TIMIT_SPLITS if split is None else (split.lower(),)
    rows = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if split_dir.name.lower() not in wanted:
            continue
        for wav in sorted(split_dir.glob("*/*/*")):
            dialect, speaker = wav.parent.parent.name, wav.parent.name
            if wav.suffix.lower() != ".wav" or not re.fullmatch(r"(?i)dr\d+", dialect):
                continue
            rows.append({"file": wav.relative_to(root).as_posix(), "speaker": speaker,
                         "text": _timit_text(wav.with_suffix(".TXT")
                                             if wav.with_suffix(".TXT").is_file()
                                             else wav.with_suffix(".txt")),
                         "dialect": dialect.upper(), "sex": speaker[:1].upper(),
                         "split": split_dir.name.lower()})
    if not rows:
        raise FileNotFoundError(
            f"no TIMIT audio under {str(root)!r}: expected TRAIN|TEST/DR*/<speaker>/<utt>.WAV "
            f"(split={split!r}); found folders {sorted(p.name for p in root.iterdir())[:10]}")
    table = pd.DataFrame(rows)
    return load_folder(root, table, pattern=list(table["file"]), alignments="sibling",
                       phone_map=phone_map, lazy=lazy, strict=strict, silence=silence,
                       name=f"timit-{split.lower()}" if split else "timit")


# --------------------------------------------------------------------------- export


_MFA_COLUMNS = ("file", "id", "speaker", "text", "num_samples")
"""Columns of the ``mfa`` layout's ``labels.csv`` that are not labels: written by the export
(``file``, ``speaker``, ``text``) or read otherwise by :func:`load_folder` (``id`` names
the utterance, ``num_samples`` is computed and refused as a label)."""

_SUFFIXES = {"mfa": (".wav", ".lab", ".TextGrid"), "timit": (".WAV", ".PHN", ".WRD", ".TXT")}
"""The files each layout writes per utterance: ``<stem><suffix>``."""


def _safe(name, what: str, *, suffixes=()) -> str:
    """``name`` as one folder or file name in an export (refused: empty, ``.``/``..``, a path
    separator, NUL; what each layout's readers would take apart), and with each of
    ``suffixes`` added still one name the file system takes (255 bytes)."""
    text = str(name).strip()
    room = max((len(os.fsencode(s)) for s in suffixes), default=0)
    check_name(text, what, room=room)
    for suffix in suffixes:  # the full names written, in bytes (room covers them; kept
        check_name(text + suffix, what)  # explicit so a new suffix cannot slip past)
    return text


def _intervals(table: pd.DataFrame, column: str, num_samples: int):
    """(start, end, label) intervals of ``column`` in 16 kHz samples: silence (and the word
    "") as empty labels, consecutive equal labels of one word merged for the word tier
    (of one ``word_index`` where the table has it: "I I" stays two words)."""
    out = []
    index = (table["word_index"] if "word_index" in table.columns
             else pd.Series(0, index=table.index))
    last = None
    for phone, word, start, end, k in zip(table["phone"], table["word"], table["start"],
                                          table["end"], index):
        label = word if column == "word" else phone
        label = "" if label is None or (column == "phone" and label == SILENCE) else str(label)
        start, end = int(start), int(end)
        same_word, last = k == last, k
        if column == "word" and out and out[-1][2] == label and out[-1][1] == start \
                and same_word:
            out[-1] = (out[-1][0], end, label)  # one word interval spans its phones
        else:
            out.append((start, end, label))
    return [(s, e, lab) for s, e, lab in out if e > s and min(e, num_samples) > s]


def export_corpus(corpus, folder: Union[str, os.PathLike], layout: str = "mfa", *,
                  overwrite: bool = False) -> Dict[str, Path]:
    """Write a corpus's audio and alignments in a layout other tools read.

    Args:
        corpus: a :class:`Corpus` whose utterances have alignment tables
            (``phones``), e.g. :func:`synthetic_corpus`.
        folder: where to write (created; must be empty unless ``overwrite``).
        layout:
            - ``"mfa"``: the Montreal Forced Aligner's input and output layout:
              ``folder/corpus/<speaker>/<id>.wav`` (16-bit PCM, 16 kHz) with a
              ``.lab`` transcript, ``folder/aligned/<speaker>/<id>.TextGrid``
              (long text format, UTF-8, tiers ``words`` and ``phones``, silence
              as empty intervals, as MFA writes), and ``folder/labels.csv``
              (one row per file: ``file``, ``speaker``, ``text`` and the
              utterance's labels; a label named ``file``, ``id``, ``speaker``,
              ``text`` or ``num_samples`` is refused: rename it). Load it back with ``load_folder(folder / "corpus",
              folder / "labels.csv", alignments=folder / "aligned")``.
            - ``"timit"``: ``folder/TRAIN/DR1/<sex><speaker>/<id>.WAV`` as NIST
              SPHERE with ``.PHN``/``.WRD`` (16 kHz samples; labels as written,
              so the corpus's silence stays ``"sil"``) and ``.TXT``; ``<sex>``
              is ``F``/``M`` from a ``gender`` (or ``sex``) label, else ``X``;
              ``split`` and ``dialect`` labels choose the folders (default
              ``TRAIN``, ``DR1``). Load it back with :func:`load_timit`.
        overwrite: allow writing into a folder that is not empty.

    Returns:
        ``{"root": folder, ...}`` with ``"audio"``, ``"alignments"`` and
        ``"labels"`` for ``"mfa"``.
    """
    import soundfile as sf

    layout = str(layout).lower()
    if layout not in ("mfa", "timit"):
        raise ValueError(f"layout must be 'mfa' or 'timit', got {layout!r}")
    if not isinstance(corpus, Corpus):
        corpus = Corpus(list(corpus))
    unaligned = [u.id for u in corpus if u.phones is None]
    if unaligned:
        raise ValueError(f"{len(unaligned)} utterance(s) have no alignment (phones=None), e.g. "
                         f"{unaligned[:5]}; export needs alignment tables")
    # labels the layout cannot hold are refused before anything is written
    for u in corpus:
        phones = u.phones["phone"].astype(str)
        if layout == "mfa" and (phones.str.strip() == "").any():
            raise ValueError(f"utterance {u.id!r} has unlabelled phones (''): an empty TextGrid "
                             "interval reads back as silence; map them to a label first")
        if layout == "timit" and (phones.str.strip().eq("") | phones.str.contains(r"\s")).any():
            raise ValueError(f"utterance {u.id!r} has a phone label that is empty or has spaces, "
                             "which a .PHN line cannot hold; use layout='mfa'")
    if layout == "mfa":
        for u in corpus:
            clash = [k for k in u.labels if k in _MFA_COLUMNS]
            if clash:
                raise ValueError(
                    f"utterance {u.id!r} has label(s) {clash} that labels.csv of layout='mfa' "
                    f"holds as its own columns {list(_MFA_COLUMNS)} (the file, id, speaker "
                    "and text of each utterance), so they would overwrite them or be lost; "
                    "rename those labels first, e.g. for u in corpus: if "
                    f"{clash[0]!r} in u.labels: u.labels['label_{clash[0]}'] = "
                    f"u.labels.pop({clash[0]!r})")
    files = _export_plan(corpus, layout)  # every name checked before anything is written
    root = Path(folder).expanduser()
    if root.exists() and root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(root)!r} is not empty; choose a new folder or pass "
                              "overwrite=True")
    out = OwnedFolder(root, "the export folder")
    if layout == "mfa":
        return _export_mfa(corpus, out, files, sf)
    return _export_timit(corpus, out, files, sf)


def _speaker_dir(u) -> str:
    return _safe(u.speaker or "unknown", f"speaker of utterance {u.id!r}")


def _export_plan(corpus, layout: str) -> list:
    """The file stem (a path below the export folder) of each utterance, checked: each
    part is one plain name, every file name written (the id with each of the layout's
    suffixes) fits in 255 bytes, and no two utterances map to one file (compared as the
    file systems that fold case and Unicode normalisation would), else the two are named."""
    stems, seen = [], {}
    for u in corpus:
        base = _safe(str(u.id).replace("/", "_").replace("\\", "_"), "utterance id",
                     suffixes=_SUFFIXES[layout])
        if layout == "mfa":
            parts = ("corpus", _speaker_dir(u), base)
        else:
            sex = str(u.labels.get("gender", "") or u.labels.get("sex", "")).strip().upper()[:1]
            sex = sex if sex in ("F", "M") else "X"
            parts = (_safe(str(u.labels.get("split", "train")).upper(),
                           f"label 'split' of utterance {u.id!r}"),
                     _safe(str(u.labels.get("dialect", "DR1")).upper(),
                           f"label 'dialect' of utterance {u.id!r}"),
                     _safe(f"{sex}{_speaker_dir(u)}", f"speaker of utterance {u.id!r}"), base)
        stem = "/".join(parts)
        key = collision_key(stem)
        if key in seen:
            raise ValueError(
                f"utterances {seen[key]!r} and {u.id!r} would both be written to {stem!r} "
                f"(layout={layout!r} replaces '/' in ids by '_' and some file systems ignore "
                "case and Unicode normalisation); give them ids that differ otherwise")
        seen[key] = u.id
        stems.append(stem)
    return stems


def _export_mfa(corpus, out: OwnedFolder, stems, sf) -> Dict[str, Path]:
    from praatio import textgrid

    label_rows = []
    for u, stem in zip(corpus, stems):
        rel = stem.split("/", 1)[1]  # <speaker>/<id>
        with out.open_write(f"corpus/{rel}.wav") as f:
            sf.write(f, np.clip(u.wav, -1, 1), SAMPLE_RATE, format="WAV", subtype="PCM_16")
        out.write_text(f"corpus/{rel}.lab", u.text + "\n")
        duration = u.num_samples / SAMPLE_RATE
        tg = textgrid.Textgrid(0.0, duration)
        for name, column in (("words", "word"), ("phones", "phone")):
            entries = [(s / SAMPLE_RATE, e / SAMPLE_RATE, lab)
                       for s, e, lab in _intervals(u.phones, column, u.num_samples) if lab]
            tg.addTier(textgrid.IntervalTier(name, entries, 0.0, duration))
        out.write_text(f"aligned/{rel}.TextGrid", _textgrid_text(tg))
        label_rows.append({"file": f"{rel}.wav", "speaker": u.speaker, "text": u.text,
                           **u.labels})  # no label clashes with these (export_corpus)
    labels = out.write_with("labels.csv", lambda f: pd.DataFrame(label_rows).to_csv(
        f, index=False), text=True)
    return {"root": out.folder, "audio": out.path("corpus"), "alignments": out.path("aligned"),
            "labels": labels}


def _textgrid_text(tg) -> str:
    """A TextGrid as MFA writes it (long format, UTF-8), made in memory.

    praatio's public API saves only to a file name; ``Textgrid.save`` is these three
    steps and then a write to that name, so they are called here without the file
    (``_tgToDictionary`` is praatio's private helper: praatio is pinned to 6.x, and
    ``tests/test_fs.py`` checks the text equals what ``save`` writes).
    """
    from praatio.data_classes.textgrid import _tgToDictionary
    from praatio.utilities import textgrid_io

    tg.validate("warning")
    return textgrid_io.getTextgridAsStr(_tgToDictionary(tg), "long_textgrid", True, None, None,
                                        None)


def _export_timit(corpus, out: OwnedFolder, stems, sf) -> Dict[str, Path]:
    for u, base in zip(corpus, stems):
        with out.open_write(base + ".WAV") as f:
            sf.write(f, np.clip(u.wav, -1, 1), SAMPLE_RATE, format="NIST", subtype="PCM_16")
        phn = [f"{int(s)} {int(e)} {p}"
               for p, s, e in u.phones[["phone", "start", "end"]].itertuples(index=False)]
        out.write_text(base + ".PHN", "\n".join(phn) + "\n")
        words = [w for w in _intervals(u.phones, "word", u.num_samples) if w[2]]
        out.write_text(base + ".WRD", "".join(f"{s} {e} {w}\n" for s, e, w in words))
        out.write_text(base + ".TXT", f"0 {u.num_samples} {u.text}\n")
    return {"root": out.folder}
