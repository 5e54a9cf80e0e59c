"""Corpora in the layouts of the field: TIMIT (read), and MFA / TIMIT (written).

:func:`load_timit` reads a TIMIT copy; :func:`export_corpus` writes any corpus with
alignments in the Montreal Forced Aligner's layout (audio, ``.lab`` transcripts and
TextGrids) or in TIMIT's, so tests and notebooks have real-format files offline.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import pandas as pd

from .._fs import OwnedFolder, check_name, collision_key
from ..interface import SAMPLE_RATE
from ._corpus import Corpus
from .alignments import SILENCE, _is_silence, silence_marks

__all__ = ["load_timit", "export_corpus"]

_TIMIT_SPLITS = ("train", "test")
_TIMIT_DIALECT = re.compile(r"(?i)dr\d+")  # the dialect folders load_timit reads
_AUDIO_SUFFIX = ".wav"


def _timit_text(path: Path) -> str:
    """``0 46797 She had your dark suit in greasy wash water all year.`` -> the sentence."""
    if not path.is_file():
        return ""
    # newline="": a "\r" inside the sentence is kept, not made a "\n"
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        parts = f.read().strip().split(maxsplit=2)
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return parts[2].strip() if len(parts) == 3 else ""  # "0 46797" has no sentence
    return " ".join(parts)


def load_timit(root: Union[str, os.PathLike], split: Optional[str] = None, phone_map=None, *,
               lazy: bool = False, strict: bool = True, silence=None) -> Corpus:
    """Load a TIMIT copy (``root``/``TRAIN|TEST/DR<n>/<speaker>/<utt>.WAV`` + ``.PHN``,
    ``.WRD``, ``.TXT``, any case) as a :class:`Corpus`; ``split``: ``"train"``, ``"test"``
    or None (both), the rest as for :func:`load_folder`. Ids are the paths without suffix,
    labels ``dialect``, ``sex`` and ``split``; audio outside the layout is named in a warning.
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
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in wanted):
        for wav in sorted(split_dir.glob("*/*/*")):
            dialect, speaker = wav.parent.parent.name, wav.parent.name
            if wav.suffix.lower() != _AUDIO_SUFFIX or not _TIMIT_DIALECT.fullmatch(dialect):
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
    read, skipped = {r["file"] for r in rows}, {}  # folders of audio it does not read
    for folder, _, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        top = rel.parts[0].lower() if rel.parts else ""
        if top in _TIMIT_SPLITS and top not in wanted:  # a split left out by split=
            continue
        for name in names:
            if Path(name).suffix.lower() == _AUDIO_SUFFIX and (rel / name).as_posix() not in read:
                skipped[rel.as_posix()] = skipped.get(rel.as_posix(), 0) + 1
    if skipped:
        shown = ", ".join(f"{k!r} ({v})" for k, v in sorted(skipped.items())[:10])
        warnings.warn(
            f"load_timit skipped {sum(skipped.values())} audio file(s) under {str(root)!r} "
            f"outside TIMIT's TRAIN|TEST/DR<n>/<speaker>/ layout, in: {shown}"
            + (f" and {len(skipped) - 10} more folder(s)" if len(skipped) > 10 else "")
            + "; move them into that layout, or read them with load_folder",
            stacklevel=2)
    table = pd.DataFrame(rows)
    # each file matched as itself: an id may hold glob characters ("q[12]", "a*")
    return load_folder(root, table, pattern=[glob.escape(f) for f in table["file"]],
                       alignments="sibling",
                       phone_map=phone_map, lazy=lazy, strict=strict, silence=silence,
                       name=f"timit-{split.lower()}" if split else "timit")


# labels.csv's columns that are not labels (written by the export, or read otherwise)
_MFA_COLUMNS = ("file", "id", "speaker", "text", "num_samples")
_SUFFIXES = {"mfa": (".wav", ".lab", ".TextGrid"), "timit": (".WAV", ".PHN", ".WRD", ".TXT")}


def _safe(name, what: str, *, suffixes=()) -> str:
    """``name`` as one file or folder name of an export (:func:`check_name`, no control
    characters), and still one name with each of ``suffixes`` added."""
    text = str(name).strip()
    room = max((len(os.fsencode(s)) for s in suffixes), default=0)
    check_name(text, what, room=room)
    odd = sorted({c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
    if odd:  # a file name may hold them, but labels.csv's lines and most tools cannot
        raise ValueError(f"{what} {text!r} holds control character(s) or line break(s) "
                         f"{odd!r}, which the export's file names and labels.csv cannot "
                         "hold; replace them first")
    for suffix in suffixes:  # (room covers them; checked so a new suffix cannot slip past)
        check_name(text + suffix, what)
    return text


def _intervals(table: pd.DataFrame, column: str, num_samples: int):
    """(start, end, label) intervals of ``column`` in samples: silence as "", a word's phones
    (equal labels of one ``word_index``: "I I" stays two words) merged for the word tier."""
    out = []
    index = table["word_index"] if "word_index" in table.columns else [0] * len(table)
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


MANIFEST = "s3viz-export.json"
"""The record an export keeps: its layout and every file it wrote (all ``overwrite`` removes)."""


def export_corpus(corpus, folder: Union[str, os.PathLike], layout: str = "mfa", *,
                  overwrite: bool = False) -> Dict[str, Path]:
    """Write a corpus with alignment tables in the layout ``"mfa"`` or ``"timit"``, which
    :func:`load_folder` / :func:`load_timit` read back equal, into ``folder`` (empty, or
    an earlier export replaced with ``overwrite=True``: only the files its
    ``s3viz-export.json`` lists are removed). Layouts and refusals: ``docs/data.md``.

    Returns:
        ``{"root": folder, "manifest": ...}`` with ``"audio"``, ``"alignments"`` and
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
    for u in corpus:  # labels the layout or its reader would change: refused before writing
        _check_read_back(u, layout)
    for u in corpus if layout == "mfa" else ():
        clash = [k for k in u.labels if k in _MFA_COLUMNS]
        if clash:
            raise ValueError(
                f"utterance {u.id!r} has label(s) {clash} that labels.csv of layout='mfa' holds "
                f"as its own columns {list(_MFA_COLUMNS)}; rename those labels first, e.g. "
                f"u.labels['label_{clash[0]}'] = u.labels.pop({clash[0]!r})")
    stems = _export_plan(corpus, layout)  # every name checked before anything is written
    files = _files_of(stems, layout)
    root = Path(folder).expanduser()
    earlier = _earlier_export(root, overwrite)
    out = OwnedFolder(root, "the export folder")
    # the record lists every file this export may leave (the earlier export's too) before
    # any is touched, so an export cut short is still replaced whole by the next one
    _write_manifest(out, layout, sorted(set(earlier) | set(files)))
    for rel in earlier:
        out.unlink(rel)
    written = (_export_mfa if layout == "mfa" else _export_timit)(corpus, out, stems, sf)
    written["manifest"] = _write_manifest(out, layout, files)
    return written


def _check_read_back(u, layout: str) -> None:
    """Refuse, naming the utterance, labels the layout cannot hold or its reader would read
    back changed (stripped, or default silence marks folded into ``"sil"``)."""
    marks = silence_marks(None)
    phones = ["" if p is None else str(p) for p in u.phones["phone"]]
    words = ["" if w is None or (isinstance(w, float) and np.isnan(w)) else str(w)
             for w in u.phones["word"]]
    both = phones + words
    checks = [  # (labels found, what they are, the fix), refused in this order
        ([p for p in phones if not p.strip()], "unlabelled phones",
         "an empty interval reads back as silence; map them to a label first"),
        # the phone "sil" is the corpus's own silence; a word "sil" would be read as silence
        ([x for x in phones if x != SILENCE and _is_silence(x, marks)]
         + [w for w in words if w and _is_silence(w, marks)], "label(s)",
         "the readers' default silence marks (s3viz.data.alignments.SILENCE_LABELS, any "
         f"case) would read them back as silence; rename them first (the corpus's silence is "
         f"the phone {SILENCE!r} itself)"),
        ([x for x in both if x != x.strip()], "label(s) with surrounding whitespace",
         "the readers strip it; strip the labels first"),
        # a TextGrid reader keeps no "\r" and a .PHN/.WRD line ends at each of them
        ([x for x in both if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in x)],
         "label(s) with control characters or line breaks (a tab, a newline)",
         "the layout's files cannot hold them as written; replace them first"),
        ([w for p, w in zip(phones, words) if p == SILENCE and w],
         f"the silence phone {SILENCE!r} inside word(s)",
         "silence reads back with the word ''; give those phones another label or the word ''"),
    ]
    if layout == "mfa":  # labels.csv: load_folder strips every header and cell
        checks.append(([k for k, v in u.labels.items()
                        if str(k) != str(k).strip() or (isinstance(v, str) and v != v.strip())],
                       "label(s) whose name or value has surrounding whitespace",
                       "load_folder strips labels.csv's names and cells; strip them first"))
    else:
        checks += [([p for p in phones if any(c.isspace() for c in p)],
                    "phone label(s) with whitespace",
                    "a .PHN line cannot hold them; use layout='mfa'"),
                   ([w for w in words if w != " ".join(w.split())],
                    "word(s) with whitespace other than single spaces (a newline, a tab)",
                    "a .WRD line cannot hold them (its reader joins its words with single "
                    "spaces); use layout='mfa' or replace that whitespace first")]
    for found, what, fix in checks:
        if found:
            found = sorted(set(found))
            raise ValueError(f"utterance {u.id!r} has {what} {found[:10]!r}"
                             + (f" and {len(found) - 10} more" if len(found) > 10 else "")
                             + f"; {fix}")


def _files_of(stems, layout: str) -> list:
    if layout == "timit":
        return [stem + suffix for stem in stems for suffix in _SUFFIXES["timit"]]
    files = ["labels.csv"]
    for stem in stems:
        rel = stem.split("/", 1)[1]  # <speaker>/<id>
        files += [f"corpus/{rel}.wav", f"corpus/{rel}.lab", f"aligned/{rel}.TextGrid"]
    return files


def _earlier_export(root: Path, overwrite: bool) -> list:
    """The files the earlier export in ``root`` wrote (its record), [] for an empty or
    missing folder; refused when the folder holds anything else, or without ``overwrite``."""
    if not root.is_dir():
        return []
    here = OwnedFolder(root, "the export folder", create=False)
    names = here.listdir()
    if not names:
        return []
    if MANIFEST not in names:
        raise FileExistsError(
            f"{str(root)!r} is not empty and holds no {MANIFEST} (the record an s3viz "
            f"export keeps), so s3viz cannot tell an earlier export's files from others "
            f"(e.g. {names[:5]}); export into a new or empty folder")
    if not overwrite:
        raise FileExistsError(f"{str(root)!r} holds an earlier export; pass overwrite=True to "
                              "replace it, or choose a new folder")
    where = root / MANIFEST
    data = here.read_bytes(MANIFEST)  # a link there is refused as such
    try:
        files = json.loads(data.decode("utf-8"))["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("'files' is not a list of names")
        for f in files:
            here.parts(f)  # refuses a name that would leave the folder
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(where)!r} is not a record s3viz wrote ({e}); remove the "
                         "folder's contents yourself or export into a new folder") from e
    folders = [f for f in files if here.kind(f) == "folder"]  # (a link on the way: refused)
    if folders:
        raise IsADirectoryError(f"{str(where)!r} lists {folders[:5]!r}, now folders in "
                                f"{str(root)!r}; s3viz removes only files: move them away")
    return files


def _write_manifest(out: OwnedFolder, layout: str, files) -> Path:
    return out.write_text(MANIFEST, json.dumps(
        {"s3viz_export": 1, "layout": layout, "files": list(files)}, indent=1) + "\n")


def _speaker_dir(u) -> str:
    return _safe(u.speaker or "unknown", f"speaker of utterance {u.id!r}")


def _export_plan(corpus, layout: str) -> list:
    """Each utterance's file stem below the export folder, checked: one plain name per part,
    every file name written fits, no two utterances share a file (up to case and Unicode
    normalisation, as some file systems fold them)."""
    stems, seen = [], {}
    for u in corpus:
        base = _safe(str(u.id).replace("/", "_").replace("\\", "_"),
                     f"utterance id {str(u.id)!r} as the file name", suffixes=_SUFFIXES[layout])
        if layout == "mfa":
            parts = ("corpus", _speaker_dir(u), base)
        else:
            sex = str(u.labels.get("gender", "") or u.labels.get("sex", "")).strip().upper()[:1]
            sex = sex if sex in ("F", "M") else "X"
            parts = tuple(_safe(str(u.labels.get(k, default)).upper(),
                                f"label {k!r} of utterance {u.id!r}")
                          for k, default in (("split", "train"), ("dialect", "DR1")))
            parts += (_safe(f"{sex}{_speaker_dir(u)}", f"speaker of utterance {u.id!r}"), base)
            for key, reads, ok in (
                    ("split", f"{list(_TIMIT_SPLITS)}", parts[0].lower() in _TIMIT_SPLITS),
                    ("dialect", "DR<n> ('DR1' ... 'DR8' in TIMIT)",
                     _TIMIT_DIALECT.fullmatch(parts[1]))):
                if not ok:
                    raise ValueError(
                        f"utterance {u.id!r} has {key} {u.labels.get(key)!r}, a folder load_timit"
                        f" does not read back (it reads {reads}, any case); relabel it, or use "
                        "layout='mfa'")
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
    # every cell quoted: csv quotes by itself only the line terminator's "\n", so a "\r" in
    # a text or label would end the line for CSV readers
    labels = out.write_with("labels.csv", lambda f: pd.DataFrame(label_rows).to_csv(
        f, index=False, quoting=csv.QUOTE_ALL), text=True)
    return {"root": out.folder, "audio": out.path("corpus"), "alignments": out.path("aligned"),
            "labels": labels}


def _textgrid_text(tg) -> str:
    """A TextGrid as MFA writes it, made in memory: ``Textgrid.save``'s steps without the
    file (praatio's private ``_tgToDictionary``, pinned 6.x; ``tests/test_fs.py`` checks)."""
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
