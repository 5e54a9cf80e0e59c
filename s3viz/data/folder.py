"""A corpus from a folder of the user's own audio files, with per-file labels from a CSV and
forced alignments (the rules: ``docs/data.md``)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import unicodedata
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .._validate import caller_stacklevel
from ._corpus import Corpus, FileUtterance, Utterance
from .alignments import (AlignmentError, _tier_candidates, check_alignment_pattern,
                         decode_text, find_alignment_file, read_alignment, resolve_phone_map,
                         silence_marks, table_alignment)

__all__ = ["load_folder", "read_csv_strings", "AUDIO_SUFFIXES"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
"""Suffixes (any case) that :func:`load_folder` picks up when no ``pattern`` is given."""

_MAX_LISTED = 10
_MAX_REPORTED = 50


def _listing(items: Sequence[str], sep: str = ", ") -> str:
    more = len(items) - _MAX_LISTED
    return sep.join(items[:_MAX_LISTED]) + (f" ... and {more} more" if more > 0 else "")


def _walk(root: Path) -> List[Path]:
    """Every file under ``root``, following symlinked folders (pathlib's rglob does not
    before Python 3.13) without looping through a link back to a folder already seen."""
    out, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        out += [Path(folder) / n for n in names]
    return out


def _find_files(root: Path, pattern: Union[None, str, Sequence[str]]) -> List[Path]:
    if pattern is None:
        files = [p for p in _walk(root) if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
    else:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"pattern must be a glob str or a list of them, got {pattern!r}")
        files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT or (
            isinstance(value, float) and np.isnan(value)):
        return None
    return value


def read_csv_strings(path, *, what: str, sep: str = ",") -> pd.DataFrame:
    """A CSV/TSV file as a table of strings, read as ``docs/data.md`` says of a labels CSV
    (cells as written, stripped, empty -> missing; UTF-8 or UTF-16).

    Args:
        what: what the file is (``"alignments"``, ``"labels_csv"``), named in errors.
        sep: the column separator (``"\\t"`` for TSV).
    """
    return _read_csv(path, what=what, sep=sep)[0]


def _read_csv(path, *, what: str, sep: str = ",") -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`read_csv_strings`'s table, and the table as written (for messages)."""
    path = Path(path)
    text = decode_text(path, error=ValueError,
                       fix=f"{what}: convert it to UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or "
                           "iconv -f LATIN1 -t UTF-8)")
    drop = _header_check(text, sep, f"{what} {str(path)!r}")
    try:
        with warnings.catch_warnings():
            # pandas warns that it drops rows' empty trailing fields (checked above); with
            # index_col=False a longer row never turns the first column into the index
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            raw = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                              index_col=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} {str(path)!r} is empty; it needs a header line and one row "
                         "per file") from None
    if drop:
        raw = raw.iloc[:, [j for j in range(raw.shape[1]) if j not in drop]]
    return _stripped(raw, f"{what} {str(path)!r}")


def _header_check(text: str, sep: str, what: str) -> set:
    """Positions of the nameless columns (``file,speaker,``) empty on every line, to drop;
    a nameless column with a value, or a value past the header's last column, is refused.
    Read with ``csv`` (pandas would rename the header ``Unnamed: 2``, or take the first
    column as the index when lines are longer than the header)."""
    if len(sep) != 1:
        return set()
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    rows = [(reader.line_num, fields) for fields in reader if fields]  # blank lines skipped
    if not rows:
        return set()
    header, rows = [f.strip() for f in rows[0][1]], rows[1:]
    for line, fields in rows:
        extra = [f for f in fields[len(header):] if f.strip()]
        if extra:
            raise ValueError(f"{what}: line {line} has {len(fields)} fields but the header names "
                             f"{len(header)} columns ({', '.join(map(repr, header))}); the value "
                             f"{extra[0]!r} has no column: add its name to the header or remove it")
    drop = set()
    for j in (j for j, name in enumerate(header) if not name):
        used = [(line, f[j]) for line, f in rows if j < len(f) and f[j].strip()]
        if used:
            raise ValueError(
                f"{what}: column {j + 1} has no name in the header but holds values (e.g. "
                f"{used[0][1]!r} on line {used[0][0]}); name it in the header, or delete it")
        drop.add(j)
    return drop


def _stripped(table: pd.DataFrame, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Header names and string cells stripped, empty -> missing; a nameless column (``""``,
    ``Unnamed: <position>``) dropped when empty, else refused. Returns the stripped table and
    the table as given (to quote cells in messages; not in ``attrs``, which pandas copies)."""
    keep = []
    for j, c in enumerate(table.columns):
        if isinstance(c, str) and (not c.strip() or c == f"Unnamed: {j}"):
            col = table.iloc[:, j]
            filled = col[~col.map(lambda v: _plain(v) is None
                                  or (isinstance(v, str) and not v.strip()))]
            if len(filled):
                raise ValueError(
                    f"{what}: column {j + 1} has no name ({c!r}) but holds values (e.g. "
                    f"{filled.iloc[0]!r}); name it, or drop it")
        else:
            keep.append(j)
    if len(keep) != table.shape[1]:
        table = table.iloc[:, keep]
    names = [c.strip() if isinstance(c, str) else c for c in table.columns]
    clash = sorted({n for n in names if names.count(n) > 1}, key=str)
    if clash:
        raise ValueError(f"{what}: columns {[c for c in table.columns if c.strip() in clash]} "
                         "are the same name once spaces are stripped; rename one")
    out = table.copy()
    out.columns = names
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].map(lambda v: (v.strip() or None) if isinstance(v, str) else v
                                    ).astype(object)
    return out, table


def read_segment_table(source) -> pd.DataFrame:
    """A CSV/TSV path (read as :func:`read_csv_strings` reads it) or DataFrame of segments:
    ``file`` or ``id``, ``start``, ``end`` (seconds), ``phone``, optional ``word`` and
    ``word_index``; returned with a ``key`` column."""
    if isinstance(source, pd.DataFrame):
        table, name = source.copy(), "the alignments DataFrame"
    else:
        path = Path(source)
        table = read_csv_strings(path, what="alignments",
                                 sep="\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
        name = str(path)
    key = "file" if "file" in table.columns else "id" if "id" in table.columns else None
    missing = [c for c in ("start", "end", "phone") if c not in table.columns]
    if key is None or missing:
        raise AlignmentError(f"{name}: a segment table needs columns 'file' (or 'id'), 'start', "
                             f"'end' (seconds) and 'phone' (optional 'word', 'word_index'); it "
                             f"has {list(table.columns)}")
    for col in ("start", "end", "word_index"):
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col], errors="coerce")
        if values.isna().any():
            line = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
            raise AlignmentError(f"{name}: line {line}: '{col}' is not a number"
                                 + (" of seconds" if col != "word_index" else ""))
        table[col] = values.astype(np.float64)
    table["key"] = table[key].astype(str)
    table.attrs["source"] = name
    table.attrs["key_column"] = key
    return table


def _check_unique(table: pd.DataFrame, col: str, raw: pd.DataFrame):
    """Refuse two rows whose ``col`` is equal once stripped (``raw``: as written, quoted)."""
    seen: Dict[str, int] = {}
    j = table.columns.get_loc(col)
    for pos, value in enumerate(table[col]):
        key = _normalise_key(value)
        if key in seen:
            first = seen[key]
            raise ValueError(f"labels_csv rows {first + 2} and {pos + 2} give the same {col!r} "
                             f"{key!r} (written {raw.iloc[first, j]!r} and {raw.iloc[pos, j]!r}; "
                             "spaces around values are stripped); keep one")
        seen[key] = pos


def _normalise_key(value) -> str:
    key = str(value).strip().replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def _folded(key: str) -> str:
    return unicodedata.normalize("NFKC", key).casefold()


class _FileLookup:
    """File index by relative path (``spk1/a.wav``) or id (``spk1/a``); ``get`` of a name that
    differs from a file's only in Unicode normalisation raises, saying so."""

    def __init__(self, rel: Sequence[str], ids: Sequence[str], root: Path, strict: bool):
        self.root, self.strict = root, strict
        self.exact: Dict[str, int] = {}
        for i, (r, u) in enumerate(zip(rel, ids)):
            self.exact[r] = i
            self.exact.setdefault(u, i)
        self.nfc = {unicodedata.normalize("NFC", k): k for k in self.exact}
        self.folded = {_folded(k): k for k in reversed(list(self.exact))}  # the first name wins

    def get(self, key: str) -> Optional[int]:
        i = self.exact.get(key)
        twin = None if i is not None else self.nfc.get(unicodedata.normalize("NFC", key))
        if twin is not None:
            from ..audio import unicode_mismatch

            raise FileNotFoundError(f"audio file not found: {unicode_mismatch(key, twin)}")
        return i

    def unmatched(self, rows: List[tuple], what: str, fix: str, dropped: str):
        """``(line, key)`` rows of ``what`` matching no audio file: refused when strict
        (``fix``: the mend), else one warning (``dropped``: the cost) and a ``corpus.skipped``
        table; the reason names the file the key spells up to case or normalisation."""
        if not rows:
            return None
        out = []
        for line, key in rows:
            near = self.folded.get(_folded(key))
            hint = (f"; {near!r} differs only in case or Unicode normalisation: fix the name"
                    if near is not None else "")
            out.append((key, f"{what} row {line} matches no audio file{hint}"))
        shown = _listing([f"{f!r} ({r})" for f, r in out], "; ")
        head = f"{len(out)} {what} row(s) match no audio file under {str(self.root)!r}"
        if self.strict:
            raise ValueError(f"{head}: {shown}; {fix}")
        warnings.warn(f"{head} and are ignored ({dropped}; corpus.skipped lists them): {shown}",
                      stacklevel=caller_stacklevel())
        return pd.DataFrame(out, columns=["file", "reason"])


def load_folder(path: Union[str, os.PathLike],
                labels_csv: Union[None, str, os.PathLike, pd.DataFrame] = None, *,
                pattern: Union[None, str, Sequence[str]] = None, strict: bool = True,
                allow_silence: bool = False, name: Optional[str] = None, lazy: bool = False,
                alignments: Union[None, str, os.PathLike, pd.DataFrame] = None,
                alignment_pattern: Union[None, str, Sequence[str]] = None,
                phone_tier: Union[None, str, Sequence[str]] = None,
                word_tier: Union[None, str, Sequence[str]] = None, phone_map=None,
                silence=None) -> Corpus:
    """Load every audio file under a folder as a :class:`Corpus` (mono, 16 kHz; ids: the
    files' POSIX paths relative to ``path`` without suffix, sorted), with per-file labels
    and forced alignments when given. Every argument's rules: ``docs/data.md``.

    Args:
        labels_csv: a CSV path (or DataFrame), one row per file, matched by its ``file``
            column (relative to ``path``, with or without suffix) or else ``id``;
            ``speaker`` and ``text`` fill those fields, other columns become labels.
        pattern: a glob (or list of globs) relative to ``path``; default: every ``.wav``,
            ``.flac`` and ``.ogg`` file (any case).
        strict: True: one error lists every file that does not fit and every CSV or
            segment row matching no file. False: they are left out, named in one warning
            and listed in ``corpus.skipped`` (``file``, ``reason``).
        lazy: read only headers now; utterances are :class:`~s3viz.data.FileUtterance`.
        alignments: a folder of TextGrids (or TIMIT ``.PHN``) at the audio's relative
            paths, ``"sibling"``, or a CSV/TSV path (or DataFrame) of segments.
        alignment_pattern, phone_tier, word_tier, phone_map, silence: how alignments are
            found and read (``docs/data.md``); bad ones are
            :class:`~s3viz.data.AlignmentError` (``docs/alignment.md``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path (str or Path), got {type(path).__name__}")
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"audio folder not found: {str(root)!r}")
    if not root.is_dir():
        raise NotADirectoryError(
            f"{str(root)!r} is a file, not a folder; for one file use s3viz.audio.load_audio")
    files = _find_files(root, pattern)
    if not files:
        others = sorted({p.suffix.lower() or "(no suffix)" for p in root.rglob("*") if p.is_file()})
        what = f"pattern {pattern!r}" if pattern is not None else (
            f"suffixes {list(AUDIO_SUFFIXES)}")
        hint = f"; files there have suffixes {others}" if others else "; the folder is empty"
        raise FileNotFoundError(f"no audio files matching {what} under {str(root)!r}{hint}")
    rel = [p.relative_to(root).as_posix() for p in files]
    ids = [r[: -len(p.suffix)] if p.suffix else r for r, p in zip(rel, files)]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(
            f"files differ only by suffix, so their ids clash: {_listing(list(map(repr, dupes)))}"
            "; keep one format or restrict pattern (e.g. pattern='**/*.wav')")
    lookup = _FileLookup(rel, ids, root, strict)
    rows, csv_ids, rejected = _labels_by_file(labels_csv, lookup, rel)
    aligner = _Aligner(alignments, lookup, rel, phone_tier=phone_tier, word_tier=word_tier,
                       phone_map=phone_map, silence=silence, pattern=alignment_pattern)
    utterances, skipped = [], []
    for i, file in enumerate(files):
        try:
            utt = _utterance(file, csv_ids.get(i, ids[i]), rows.get(i, {}), lazy=lazy,
                             allow_silence=allow_silence)
        except (ValueError, OSError) as err:  # what load_audio and the header read raise
            skipped.append((rel[i], f"audio: {err}", err))
            continue
        try:
            utt.phones = aligner.table(i, file, utt.num_samples)
            if lazy:
                utt._pack_phones()
        except AlignmentError as err:
            skipped.append((rel[i], f"alignment: {err}", err))
            continue
        utterances.append(utt)
    corpus = Corpus(utterances, name=name or root.resolve().name)
    tables = [t for t in (rejected, aligner.rejected) if t is not None]
    if skipped:
        tables.insert(0, _report(skipped, len(files), root, strict))
    if tables:
        corpus.skipped = pd.concat(tables, ignore_index=True)
    return corpus


class _Missing(AlignmentError):
    """No alignment file (or no segment rows) for an audio file."""


def _labels_by_file(labels_csv, lookup: _FileLookup, rel: List[str]):
    """``({file index: labels}, {file index: CSV id}, skipped table of rows matching no
    file or None)`` from ``labels_csv``."""
    rows: Dict[int, dict] = {}
    csv_ids: Dict[int, str] = {}
    if labels_csv is None:
        return rows, csv_ids, None
    if isinstance(labels_csv, pd.DataFrame):
        table, raw = _stripped(labels_csv, "labels_csv")
    elif not isinstance(labels_csv, (str, os.PathLike)):
        raise TypeError(f"labels_csv must be a CSV path or a pandas DataFrame, got "
                        f"{type(labels_csv).__name__}")
    elif not os.path.isfile(labels_csv):
        raise FileNotFoundError(f"labels_csv not found: {os.fspath(labels_csv)!r}")
    else:
        table, raw = _read_csv(labels_csv, what="labels_csv")
    key_col = "file" if "file" in table.columns else "id" if "id" in table.columns else None
    if key_col is None:
        raise ValueError(
            f"labels_csv needs a 'file' column (path relative to the folder) or an 'id' "
            f"column (path without suffix); it has columns {list(table.columns)}")
    if "num_samples" in table.columns:
        raise ValueError("labels_csv columns ['num_samples'] are reserved (computed by s3viz); "
                         "rename them")
    id_col = "id" in table.columns and key_col == "file"
    for col in [key_col] + (["id"] if id_col else []):
        if table[col].isna().any():
            bad = [int(i) + 2 for i in np.flatnonzero(table[col].isna().to_numpy())]
            raise ValueError(f"labels_csv has rows with an empty '{col}' (CSV lines "
                             f"{bad[:10]}); fill them or drop those rows")
        _check_unique(table, col, raw)
    matched: Dict[int, int] = {}
    unmatched: List[tuple] = []  # (CSV line, key)
    for row_pos, key in enumerate(map(_normalise_key, table[key_col])):
        i = lookup.get(key)
        if i is None:
            unmatched.append((row_pos + 2, key))
        elif i in matched:
            raise ValueError(f"labels_csv has several rows for file {rel[i]!r} (rows "
                             f"{matched[i] + 2} and {row_pos + 2} of the CSV); keep one")
        else:
            matched[i] = row_pos
    missing = [rel[i] for i in range(len(rel)) if i not in matched]
    rejected = lookup.unmatched(
        unmatched, "labels_csv",
        f"fix the '{key_col}' values (relative paths such as {rel[0]!r}) or pass strict=False "
        "to ignore them", f"{len(missing)} audio file(s) have no row and keep empty labels")
    if lookup.strict and missing:
        raise ValueError(
            f"{len(missing)} audio file(s) have no row in labels_csv: "
            f"{_listing(list(map(repr, missing)))}; add rows for them, restrict pattern, or "
            "pass strict=False to keep them without labels")
    label_cols = [c for c in table.columns if c not in ("file", "id")]
    for i, row_pos in matched.items():
        record = table.iloc[row_pos]
        rows[i] = {c: _plain(record[c]) for c in label_cols}
        if id_col:
            csv_ids[i] = str(record["id"])
    return rows, csv_ids, rejected


def _utterance(file: Path, uid: str, labels: dict, *, lazy: bool, allow_silence: bool):
    from ..audio import load_audio

    labels = dict(labels)
    speaker, text = labels.pop("speaker", None), labels.pop("text", None)
    fields = dict(text="" if text is None else str(text),
                  speaker="" if speaker is None else str(speaker), phones=None, labels=labels)
    if lazy:
        return FileUtterance(uid, file, allow_silence=allow_silence, **fields)
    return Utterance(id=uid, wav=load_audio(file, allow_silence=allow_silence), **fields)


def _report(skipped, total: int, root: Path, strict: bool) -> pd.DataFrame:
    """The files left out, as a table; one error listing them when ``strict``, else a warning."""
    table = pd.DataFrame([(f, r) for f, r, _ in skipped], columns=["file", "reason"])
    shown = "\n".join(f"  {f}: {r}" for f, r in table.head(_MAX_REPORTED).itertuples(index=False))
    more = len(table) - _MAX_REPORTED
    shown += f"\n  ... and {more} more" if more > 0 else ""
    if strict:
        errors = [e for _, _, e in skipped]
        cls = AlignmentError if all(isinstance(e, AlignmentError) for e in errors) else ValueError
        missing = all(isinstance(e, _Missing) for e in errors)
        err = cls(f"{len(table)} of {total} audio file(s) under {str(root)!r} do not fit"
                  f"{' (no alignment)' if missing else ''}:\n{shown}\nfix them, restrict "
                  "pattern, or pass strict=False to leave them out (listed in corpus.skipped)")
        err.skipped = table
        raise err from errors[0]
    warnings.warn(f"{len(table)} of {total} audio file(s) under {str(root)!r} do not fit and are "
                  f"left out (corpus.skipped lists them):\n{shown}", stacklevel=3)
    return table


class _Aligner:
    """Finds and reads each file's alignment for :func:`load_folder` (or does nothing)."""

    def __init__(self, alignments, lookup: _FileLookup, rel: List[str], *, phone_tier,
                 word_tier, phone_map, silence, pattern):
        self.source, self.lookup, self.rel, self.pattern = alignments, lookup, rel, pattern
        self.kw = dict(phone_tier=phone_tier, word_tier=word_tier, phone_map=phone_map,
                       silence=silence)
        self.segments = self.rejected = None  # rejected: segment rows matching no file
        if alignments is None:
            given = [k for k, v in dict(self.kw, alignment_pattern=pattern).items()
                     if v is not None]
            if given:
                raise ValueError(f"{given} apply to alignments; pass alignments= as well")
            return
        resolve_phone_map(phone_map)  # bad arguments fail before any file is read
        silence_marks(silence)
        check_alignment_pattern(pattern)
        for kind in ("phone", "word"):
            _tier_candidates(self.kw[f"{kind}_tier"], (), kind)
        is_path = isinstance(alignments, (str, os.PathLike)) and alignments != "sibling"
        if isinstance(alignments, pd.DataFrame) or (is_path and Path(alignments).is_file()):
            if phone_tier is not None or word_tier is not None or pattern is not None:
                raise ValueError("phone_tier / word_tier / alignment_pattern locate TextGrids; "
                                 "a segment table has the columns 'phone' and 'word'")
            self._index_segments(read_segment_table(alignments))
        elif is_path and not Path(alignments).exists():
            raise FileNotFoundError(
                f"alignments {os.fspath(alignments)!r} not found: pass a folder of TextGrids "
                "(MFA's output), 'sibling', or a CSV/TSV of segments")
        elif not isinstance(alignments, (str, os.PathLike)):
            raise TypeError(f"alignments must be a folder, 'sibling', a CSV/TSV path or a "
                            f"DataFrame, got {type(alignments).__name__}")

    def _index_segments(self, table: pd.DataFrame):
        self.segments, self.segment_source = {}, table.attrs["source"]
        unmatched = []  # (first line in the table, key)
        for key, rows in table.groupby("key", sort=False):
            i = self.lookup.get(_normalise_key(key))
            if i is None:
                first = rows.index[0]  # the table line (the header is line 1), or its index
                unmatched.append((int(first) + 2 if isinstance(first, (int, np.integer))
                                  else first, key))
            elif i in self.segments:
                first = self.segments[i][table.attrs["key_column"]].iloc[0]
                raise ValueError(
                    f"{self.segment_source}: segments of file {self.rel[i]!r} are given under "
                    f"two names, {first!r} and {key!r}; use one")
            else:
                self.segments[i] = rows
        self.rejected = self.lookup.unmatched(
            unmatched, self.segment_source, "fix them or pass strict=False",
            "the audio files they were meant for have no alignment")

    def table(self, i: int, file: Path, num_samples: int):
        """The file's alignment table (None without ``alignments``), or AlignmentError."""
        if self.source is None:
            return None
        if self.segments is not None:
            rows = self.segments.get(i)
            if rows is None:
                raise _Missing(f"no rows in {self.segment_source}")
            return table_alignment(rows, num_samples,
                                   source=f"{self.segment_source} ({self.rel[i]})",
                                   phone_map=self.kw["phone_map"], silence=self.kw["silence"])
        path = find_alignment_file(file, self.rel[i], self.source, root=self.lookup.root,
                                   pattern=self.pattern)
        if path is None:
            where = "beside the audio file" if self.source == "sibling" else \
                f"under {os.fspath(self.source)!r}"
            looked = (f"as {self.pattern!r}" if self.pattern else
                      "as a .TextGrid or .PHN named as the audio")
            raise _Missing(f"no alignment {where} ({looked})")
        rate = None  # a .PHN counts samples at the audio file's own rate
        if path.suffix.lower() == ".phn":
            import soundfile as sf

            with contextlib.suppress(RuntimeError, TypeError, ValueError):
                rate = int(sf.info(str(file)).samplerate)
        return read_alignment(path, num_samples, sample_rate=rate, **self.kw)
