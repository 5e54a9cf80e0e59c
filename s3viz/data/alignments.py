"""Forced alignments of the user's corpus: Praat TextGrids (MFA), TIMIT .PHN/.WRD, segment tables.

Every source becomes the embedded corpus's own alignment table
(:data:`s3viz.data.PHONE_COLUMNS`: ``phone, word, start, end`` in 16 kHz
samples, tiling the utterance), so probes, timelines and explorers read a
TextGrid as they read the embedded corpus. Silence, words and unlabelled
phones follow one rule, and a bad interval raises an :class:`AlignmentError`
naming the file, tier and interval. The rules and checks: ``docs/alignment.md``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from ..interface import SAMPLE_RATE

__all__ = ["AlignmentError", "SILENCE", "SILENCE_LABELS", "TOLERANCE_S", "TIMIT39",
           "PHONE_TIER_NAMES", "WORD_TIER_NAMES", "read_alignment", "read_textgrid",
           "alignment_table", "resolve_phone_map"]

SILENCE = "sil"
"""The phone label of silence, as in the embedded corpus."""

SILENCE_LABELS = frozenset({"", "sil", "sp", "spn"})
"""Interval labels (compared in lower case) that are silence: empty, and MFA's
silence, short pause and spoken noise."""

TOLERANCE_S = 0.01
"""How far (seconds) a TextGrid's end or an interval's end may lie past the
audio's end (10 ms: half a 20-ms frame; MFA and Praat round times to the
millisecond or finer). Within it an end is clipped to the audio; beyond it the
alignment is refused."""

PHONE_TIER_NAMES = ("phones", "phone", "phonemes")
WORD_TIER_NAMES = ("words", "word")

_TIMIT_SILENCE = ("pcl", "tcl", "kcl", "bcl", "dcl", "gcl", "h#", "pau", "epi")
TIMIT39: Dict[str, Optional[str]] = {
    **{p: p for p in ("iy ih eh ae ah uw uh aa ey ay oy aw ow er l r w y m n ng ch jh dh b d "
                      "dx g p t k z v f th s sh hh").split()},
    "ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "ix": "ih", "ux": "uw", "zh": "sh",
    "el": "l", "em": "m", "en": "n", "nx": "n", "eng": "ng", "hv": "hh",
    **{p: SILENCE for p in _TIMIT_SILENCE},
    "q": None,
}
"""TIMIT's 61 phone labels folded to the 39 classes of Lee & Hon (1989): closures,
pauses, epenthetic silence and ``h#`` are silence, the glottal stop ``q`` is
dropped (unlabelled)."""

_Entry = Tuple[float, float, str]


class AlignmentError(ValueError):
    """An alignment file that cannot be used as it is (the message names the file and interval)."""


# --------------------------------------------------------------------------- phone maps


def resolve_phone_map(phone_map) -> Optional[Callable[[str], Optional[str]]]:
    """``None`` | ``"timit39"`` | a dict | a callable -> a function label -> label (or None).

    A dict must map every label it meets: an unmapped label is an error naming
    it (so a typo in a map is never a silent new class).
    """
    if phone_map is None:
        return None
    if isinstance(phone_map, str):
        key = phone_map.strip().lower()
        if key != "timit39":
            raise ValueError(f"phone_map={phone_map!r}: the named maps are 'timit39'; "
                             "or pass a dict or a function")
        table = TIMIT39
        return lambda label: _lookup(table, label.lower(), "timit39")
    if isinstance(phone_map, Mapping):
        table = dict(phone_map)
        return lambda label: _lookup(table, label, "the phone_map dict")
    if callable(phone_map):
        return phone_map
    raise TypeError(f"phone_map must be None, 'timit39', a dict or a function, got "
                    f"{type(phone_map).__name__}")


def _lookup(table, label, what):
    if label not in table:
        raise AlignmentError(f"phone label {label!r} is not in {what}; add it to the map")
    return table[label]


# --------------------------------------------------------------------------- readers


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return raw.decode("utf-16")
    if len(raw) >= 2 and (raw[0] == 0 or raw[1] == 0):  # UTF-16 without a byte-order mark
        try:  # (checked first: NUL bytes are valid UTF-8, so UTF-8 would "succeed")
            return raw.decode("utf-16-be" if raw[0] == 0 else "utf-16-le")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    raise AlignmentError(f"{path}: not UTF-8 or UTF-16 text; save it from Praat as text")


def read_textgrid(path) -> Tuple[float, float, Dict[str, dict]]:
    """``(xmin, xmax, {tier name: {"class", "entries"}})`` of a Praat TextGrid, entries in
    the file's order (long or short text format, UTF-8 or UTF-16), parsed by praatio."""
    from praatio.utilities import textgrid_io

    path = Path(path)
    text = _decode(path)
    # praatio's parser reads "xmin = -0.6" as 0.6 (its number pattern has no sign): refuse
    # negative times here, in both text formats (short-format numbers stand alone on a line)
    negative = re.search(r"^\s*(?:xmin|xmax|number)\s*=\s*-\s*\d|^\s*-\s*\d", text, re.M)
    if negative:
        line = text.count("\n", 0, negative.start()) + 1
        raise AlignmentError(f"{path}:{line}: a negative time ({negative.group(0).strip()!r}...); "
                             "TextGrid times start at 0")
    try:
        tg = textgrid_io.parseTextgridStr(text, includeEmptyIntervals=True)
    except Exception as err:  # praatio raises bare exceptions on malformed files
        raise AlignmentError(f"{path}: praatio cannot parse this TextGrid "
                             f"({type(err).__name__}: {err})") from err
    tiers: Dict[str, dict] = {}
    for tier in tg["tiers"]:
        if tier["name"] in tiers:
            raise AlignmentError(f"{path}: two tiers are named {tier['name']!r}; rename one")
        try:
            entries = [(float(e[0]), float(e[1]), str(e[2])) if len(e) == 3
                       else (float(e[0]), float(e[0]), str(e[1])) for e in tier["entries"]]
        except (TypeError, ValueError) as err:
            raise AlignmentError(f"{path}: tier {tier['name']!r} has a time that is not a "
                                 f"number ({err})") from err
        tiers[tier["name"]] = {"class": tier["class"], "entries": entries}
    return float(tg["xmin"]), float(tg["xmax"]), tiers


def _read_timit_file(path: Path) -> List[_Entry]:
    """TIMIT ``.PHN`` / ``.WRD``: ``start end label`` lines in 16 kHz samples -> seconds."""
    entries = []
    for n, line in enumerate(_decode(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 3:
            raise AlignmentError(f"{path}:{n}: expected 'start end label' (samples), got {line!r}")
        try:
            start, end = int(parts[0]), int(parts[1])
        except ValueError:
            raise AlignmentError(f"{path}:{n}: start and end must be whole sample numbers, "
                                 f"got {line!r}") from None
        entries.append((start / SAMPLE_RATE, end / SAMPLE_RATE, " ".join(parts[2:])))
    return entries


def _pick_tier(names: Sequence[str], wanted: Optional[str], candidates, kind: str, path,
               required: bool) -> Optional[str]:
    if wanted is not None:
        hits = [n for n in names if n == wanted] or [n for n in names
                                                      if n.lower() == str(wanted).lower()]
        if not hits:
            raise AlignmentError(f"{path}: no tier named {wanted!r} ({kind}_tier); tiers "
                                 f"found: {list(names)}")
        return hits[0]

    def base(name):  # MFA's multi-speaker files name tiers "SPEAKER - phones"
        return name.rsplit(" - ", 1)[-1].strip().lower()

    hits = [n for n in names if base(n) in candidates]
    if len(hits) > 1:
        raise AlignmentError(f"{path}: several {kind} tiers {hits}; choose one with "
                             f"{kind}_tier='NAME'")
    if hits:
        return hits[0]
    if required:
        raise AlignmentError(f"{path}: no {kind} tier (looked for {list(candidates)}, any case, "
                             f"also as 'SPEAKER - {candidates[0]}'); tiers found: {list(names)}; "
                             f"name it with {kind}_tier='NAME'")
    return None


def _checked(entries: Sequence[_Entry], duration: float, path, tier: str, *,
             allow_overlap: bool = False) -> List[_Entry]:
    """Entries in file order, checked: sorted, not overlapping (unless ``allow_overlap``),
    inside the audio (ends within TOLERANCE_S past it are clipped)."""
    out: List[_Entry] = []
    prev = None
    for k, (start, end, label) in enumerate(entries, 1):
        where = f"{path}: tier {tier!r}, interval {k} ({start:g}-{end:g} s, {label!r})"
        if not (np.isfinite(start) and np.isfinite(end)):
            raise AlignmentError(f"{where}: times must be finite numbers")
        if end <= start:
            raise AlignmentError(f"{where}: ends at or before it starts")
        if start < -1e-9:
            raise AlignmentError(f"{where}: starts before 0 s")
        if prev is not None:
            p_start, p_end, p_label = prev
            if start < p_start:
                raise AlignmentError(f"{where}: intervals are not in time order (interval "
                                     f"{k - 1} starts later, at {p_start:g} s); sort the tier")
            if start < p_end - 1e-9 and not allow_overlap:
                raise AlignmentError(f"{where}: overlaps interval {k - 1} ({p_start:g}-"
                                     f"{p_end:g} s, {p_label!r})")
        if end > duration + TOLERANCE_S:
            raise AlignmentError(f"{where}: ends {end - duration:.3f} s past the end of the audio "
                                 f"({duration:.3f} s; tolerance {TOLERANCE_S} s): the alignment "
                                 "is for another file or another sample rate")
        prev = (start, end, label)
        out.append((max(start, 0.0), min(end, duration), label.strip()))
    return out


def alignment_table(phones: Sequence[_Entry], words: Optional[Sequence[_Entry]], num_samples: int,
                    *, phone_map=None, phone_words: Optional[Sequence[str]] = None
                    ) -> pd.DataFrame:
    """The ``phone, word, start, end`` table (16 kHz samples, tiling ``[0, num_samples)``)
    from checked phone entries and optional word entries (seconds), by the module's rules.

    ``phone_words`` gives each phone's word directly (segment tables) instead of ``words``.
    """
    fn = resolve_phone_map(phone_map)
    w_start = w_end = w_label = None
    if words:
        w_start = np.array([w[0] for w in words])
        w_end = np.array([w[1] for w in words])
        w_label = ["" if w[2].strip().lower() in SILENCE_LABELS else w[2].strip() for w in words]
    rows: List[list] = []

    def add(phone, word, start, end):
        if end <= start:
            return
        if rows and phone == SILENCE and rows[-1][0] == SILENCE and rows[-1][1] == word \
                and rows[-1][3] == start:
            rows[-1][3] = end
            return
        rows.append([phone, word, start, end])

    def word_at(mid_s):
        if w_start is None:
            return ""
        i = int(np.searchsorted(w_start, mid_s, side="right")) - 1
        return w_label[i] if i >= 0 and mid_s < w_end[i] else ""

    cursor = 0
    for k, (start_s, end_s, label) in enumerate(phones):
        start = min(int(round(start_s * SAMPLE_RATE)), num_samples)
        end = min(int(round(end_s * SAMPLE_RATE)), num_samples)
        if start > cursor:  # a gap is silence
            add(SILENCE, "", cursor, start)
        raw = label.strip()
        if raw.lower() in SILENCE_LABELS:
            phone = SILENCE
        elif fn is None:
            phone = raw
        else:
            mapped = fn(raw)
            phone = "" if mapped is None else str(mapped)
        if phone == SILENCE:
            word = ""
        elif phone_words is not None:
            word = phone_words[k]
            word = "" if word is None or str(word).strip().lower() in SILENCE_LABELS else word
        else:
            word = word_at((start + end) / 2 / SAMPLE_RATE)
        add(phone, str(word).strip(), max(start, cursor), end)
        cursor = max(cursor, end)
    if cursor < num_samples:
        add(SILENCE, "", cursor, num_samples)
    table = pd.DataFrame(rows, columns=["phone", "word", "start", "end"])
    return table.astype({"phone": str, "word": str, "start": np.int64, "end": np.int64})


def read_alignment(path, num_samples: int, *, phone_tier: Optional[str] = None,
                   word_tier: Optional[str] = None, phone_map=None) -> pd.DataFrame:
    """The alignment table of one utterance of ``num_samples`` 16 kHz samples from a
    ``.TextGrid`` or a TIMIT ``.PHN`` (its ``.WRD`` beside it is read when present)."""
    path = Path(path)
    duration = num_samples / SAMPLE_RATE
    if path.suffix.lower() == ".phn":
        if phone_tier is not None or word_tier is not None:
            raise ValueError(f"{path}: phone_tier / word_tier name TextGrid tiers; a .PHN file "
                             "has none")
        phones = _checked(_read_timit_file(path), duration, path, "PHN")
        words = None
        for suffix in (".WRD", ".wrd"):
            wrd = path.with_suffix(suffix)
            if wrd.is_file():
                # TIMIT's word boundaries may overlap where adjacent words share a phone;
                # the midpoint rule then gives such a phone the later word
                words = _checked(_read_timit_file(wrd), duration, wrd, "WRD",
                                 allow_overlap=True)
                break
        return alignment_table(phones, words, num_samples, phone_map=phone_map)
    xmin, xmax, tiers = read_textgrid(path)
    if abs(xmin) > TOLERANCE_S or abs(xmax - duration) > TOLERANCE_S:
        raise AlignmentError(f"{path}: the TextGrid spans {xmin:g}-{xmax:g} s but the audio lasts "
                             f"{duration:.3f} s (tolerance {TOLERANCE_S} s): it aligns another "
                             "file, or the audio was cut after aligning")
    names = list(tiers)
    p_name = _pick_tier(names, phone_tier, PHONE_TIER_NAMES, "phone", path, required=True)
    w_name = _pick_tier(names, word_tier, WORD_TIER_NAMES, "word", path,
                        required=word_tier is not None)
    for name in (p_name, w_name):
        if name is not None and tiers[name]["class"] != "IntervalTier":
            raise AlignmentError(f"{path}: tier {name!r} is a {tiers[name]['class']}; phones and "
                                 "words need an IntervalTier")
    phones = _checked(tiers[p_name]["entries"], duration, path, p_name)
    words = _checked(tiers[w_name]["entries"], duration, path, w_name) if w_name else None
    return alignment_table(phones, words, num_samples, phone_map=phone_map)


# --------------------------------------------------------------------------- segment tables


def read_segment_table(source) -> pd.DataFrame:
    """A CSV/TSV path (or DataFrame) of segments: ``file`` or ``id``, ``start``, ``end``
    (seconds), ``phone``, optional ``word``; returned with a ``key`` column."""
    if isinstance(source, pd.DataFrame):
        table, name = source.copy(), "the alignments DataFrame"
    else:
        path = Path(source)
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        table = pd.read_csv(path, sep=sep, dtype={"file": str, "id": str, "phone": str,
                                                  "word": str}, keep_default_na=False)
        name = str(path)
    key = "file" if "file" in table.columns else "id" if "id" in table.columns else None
    missing = [c for c in ("start", "end", "phone") if c not in table.columns]
    if key is None or missing:
        raise AlignmentError(f"{name}: a segment table needs columns 'file' (or 'id'), 'start', "
                             f"'end' (seconds) and 'phone' (optional 'word'); it has "
                             f"{list(table.columns)}")
    for col in ("start", "end"):
        values = pd.to_numeric(table[col], errors="coerce")
        if values.isna().any():
            line = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
            raise AlignmentError(f"{name}: line {line}: '{col}' is not a number of seconds")
        table[col] = values.astype(np.float64)
    table["key"] = table[key].astype(str)
    table.attrs["source"] = name
    table.attrs["key_column"] = key
    return table


def table_alignment(rows: pd.DataFrame, num_samples: int, *, source: str, phone_map=None
                    ) -> pd.DataFrame:
    """The alignment table of one utterance from its rows of a segment table (file order)."""
    entries = list(zip(rows["start"], rows["end"], rows["phone"].fillna("").astype(str)))
    phones = _checked(entries, num_samples / SAMPLE_RATE, source, "phone")
    words = (list(rows["word"].fillna("").astype(str)) if "word" in rows.columns
             else [""] * len(phones))
    return alignment_table(phones, None, num_samples, phone_map=phone_map, phone_words=words)


# --------------------------------------------------------------------------- locating files

ALIGNMENT_SUFFIXES = (".TextGrid", ".textgrid", ".TEXTGRID", ".PHN", ".phn")


def find_alignment_file(audio: Path, rel_id: str, alignments: Union[str, os.PathLike]
                        ) -> Optional[Path]:
    """The alignment file of an audio file: beside it (``"sibling"``) or at the same
    relative path under an alignment folder (MFA's output layout)."""
    base = audio.with_suffix("") if alignments == "sibling" else Path(alignments) / rel_id
    for suffix in ALIGNMENT_SUFFIXES:
        candidate = base.parent / (base.name + suffix)
        if candidate.is_file():
            return candidate
    return None
