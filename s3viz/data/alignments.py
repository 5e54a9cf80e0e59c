"""Forced alignments of the user's corpus: Praat TextGrids (MFA), TIMIT .PHN/.WRD, segment tables.

Every source becomes the embedded corpus's alignment table (:data:`ALIGNMENT_TABLE_COLUMNS`,
16 kHz samples) through one check (:func:`check_intervals`); a bad interval raises an
:class:`AlignmentError` naming the file, tier and interval. Rules: ``docs/alignment.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from ..interface import SAMPLE_RATE

__all__ = ["AlignmentError", "SILENCE", "SILENCE_LABELS", "TOLERANCE_S", "TIMIT39",
           "PHONE_TIER_NAMES", "WORD_TIER_NAMES", "PHONE_COLUMNS", "ALIGNMENT_TABLE_COLUMNS",
           "read_alignment", "read_textgrid", "alignment_table", "check_intervals",
           "check_phone_table", "resolve_phone_map", "silence_marks"]

PHONE_COLUMNS = ("phone", "word", "start", "end")
"""Columns of an utterance's phone alignment table; ``start``/``end`` are 16 kHz samples."""

SILENCE = "sil"
"""The phone label of silence, as in the embedded corpus."""

SILENCE_LABELS = frozenset({"", "sil", "sp", "spn", "#", "<p:>", "h#", "pau", "SIL"})
"""The default silence marks (compared stripped, in any case): empty, MFA's ``sil``/``sp``/
``spn``, SPPAS's ``#``, WebMAUS's ``<p:>``, TIMIT's ``h#``/``pau``."""

TOLERANCE_S = 0.01
"""How far (seconds) a TextGrid's range or an interval's end may lie past the audio's end
(aligners round to 1 or 10 ms): within it an end is clipped, beyond it refused."""

PHONE_TIER_NAMES = ("phones", "phone", "phonemes", "phons", "PhonAlign", "MAU")
"""Default phone tiers, first present wins: MFA, praatio's examples, SPPAS, WebMAUS."""
WORD_TIER_NAMES = ("words", "word", "TokensAlign", "ORT-MAU")
"""Default word tiers, first present wins: MFA, SPPAS, WebMAUS."""

_TIMIT_SILENCE = ("pcl", "tcl", "kcl", "bcl", "dcl", "gcl", "h#", "pau", "epi")
TIMIT39: Dict[str, Optional[str]] = {
    **{p: p for p in ("iy ih eh ae ah uw uh aa ey ay oy aw ow er l r w y m n ng ch jh dh b d "
                      "dx g p t k z v f th s sh hh").split()},
    "ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "ix": "ih", "ux": "uw", "zh": "sh",
    "el": "l", "em": "m", "en": "n", "nx": "n", "eng": "ng", "hv": "hh",
    **{p: SILENCE for p in _TIMIT_SILENCE},
    "q": None,
}
"""TIMIT's 61 phone labels folded to the 39 classes of Lee & Hon (1989): closures and
pauses are silence, the glottal stop ``q`` unlabelled."""

_Entry = Tuple[float, float, str]


class AlignmentError(ValueError):
    """An alignment file that cannot be used as it is (the message names the file and interval)."""


def resolve_phone_map(phone_map) -> Optional[Callable[[str], Optional[str]]]:
    """``None`` | ``"timit39"`` | a dict | a callable -> a function label -> label (or None).
    A dict must map every label it meets (an unmapped label is an error naming it)."""
    if phone_map is None or (callable(phone_map) and not isinstance(phone_map, Mapping)):
        return phone_map
    if isinstance(phone_map, str):
        if phone_map.strip().lower() != "timit39":
            raise ValueError(f"phone_map={phone_map!r}: the named maps are 'timit39'; "
                             "or pass a dict or a function")
        table, what, fold = TIMIT39, "timit39", str.lower
    elif isinstance(phone_map, Mapping):
        table, what, fold = dict(phone_map), "the phone_map dict", str
    else:
        raise TypeError(f"phone_map must be None, 'timit39', a dict or a function, got "
                        f"{type(phone_map).__name__}")

    def lookup(label):
        if fold(label) not in table:
            raise AlignmentError(f"phone label {fold(label)!r} is not in {what}; add it to the map")
        return table[fold(label)]
    return lookup


def decode_text(path: Path, *, error=None, legacy: bool = False, fix: str = "") -> str:
    """A text file's content: UTF-16 or UTF-8 (byte-order mark or not), with ``legacy`` also
    Windows-1252 / Latin-1; else raises ``error`` naming the file and ``fix``."""
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        encodings = ["utf-16"]
    elif len(raw) >= 2 and (raw[0] == 0 or raw[1] == 0):  # UTF-16 without a byte-order mark
        encodings = ["utf-16-be" if raw[0] == 0 else "utf-16-le"]  # (NULs are valid UTF-8)
    else:  # latin-1 takes the 5 bytes cp1252 leaves undefined
        encodings = ["utf-8-sig"] + (["cp1252", "latin-1"] if legacy and b"\x00" not in raw
                                     else [])
    for encoding in encodings:
        with contextlib.suppress(UnicodeDecodeError):
            return raw.decode(encoding)
    known = "UTF-8, UTF-16" + (" or Latin-1" if legacy else "")
    raise (error or AlignmentError)(f"{path}: not {known} text; {fix or 'save it as UTF-8'}")


# praatio reads times as [\d.]+: "xmin = 5e-05" (Praat's %.17g) is rewritten positionally
_EXPONENT = re.compile(r"^(\s*(?:(?:xmin|xmax|number|time)\s*=\s*)?)"
                       r"([-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+)(\s*)$", re.M)

_STRING = re.compile(r'"(?:[^"]|"")*"')
"""A Praat text string (``""`` inside is a quote): labels, tier names and the header."""


def _outside_strings(text: str, fn) -> str:
    """``text`` with ``fn`` applied outside Praat strings only (a label ``2e3`` stays one)."""
    out, at = [], 0
    for m in _STRING.finditer(text):
        out += [fn(text[at:m.start()]), m.group(0)]
        at = m.end()
    return "".join(out + [fn(text[at:])])


def read_textgrid(path) -> Tuple[float, float, Dict[str, dict]]:
    """``(xmin, xmax, {tier name: {"class", "entries"}})`` of a Praat TextGrid, entries in
    the file's order, parsed by praatio (formats read: ``docs/alignment.md``)."""
    from praatio.utilities import textgrid_io

    path = Path(path)
    text = decode_text(path, legacy=True, fix="save it from Praat as a text file")
    if "ooTextFile" not in text[:200]:
        raise AlignmentError(f"{path}: not a Praat text TextGrid (it should begin with "
                             "'File type = \"ooTextFile\"'); save it from Praat as a text file")
    # praatio reads "xmin = -0.6" as 0.6: refused here (strings blanked, newlines kept)
    numbers = _STRING.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    negative = re.search(r"^\s*(?:xmin|xmax|number|time)\s*=\s*-\s*\.?\d|^\s*-\s*\.?\d",
                         numbers, re.M)
    if negative:
        line = text.count("\n", 0, negative.start()) + 1
        raise AlignmentError(f"{path}:{line}: a negative time ({negative.group(0).strip()!r}...); "
                             "TextGrid times start at 0")
    def positional(m):
        return m.group(1) + np.format_float_positional(float(m.group(2)), trim="-") + m.group(3)
    text = _outside_strings(text, lambda part: _EXPONENT.sub(positional, part))
    try:
        tg = textgrid_io.parseTextgridStr(text, includeEmptyIntervals=True)
        parsed = tg["tiers"]
    except Exception as err:  # praatio raises bare exceptions on malformed files
        tg, parsed = _tier_by_tier(text, path, err)
    tiers: Dict[str, dict] = {}
    for tier in parsed:
        if tier["name"] in tiers:
            raise AlignmentError(f"{path}: two tiers are named {tier['name']!r}; rename one")
        if tier["class"] == _UNREADABLE:
            tiers[tier["name"]] = tier
            continue
        try:
            entries = [(float(e[0]), float(e[1]), str(e[2])) if len(e) == 3
                       else (float(e[0]), float(e[0]), str(e[1])) for e in tier["entries"]]
        except (TypeError, ValueError) as err:
            raise AlignmentError(f"{path}: tier {tier['name']!r} has a time that is not a "
                                 f"number ({err})") from err
        tiers[tier["name"]] = {"class": tier["class"], "entries": entries}
    return float(tg["xmin"]), float(tg["xmax"]), tiers


_UNREADABLE = "unreadable tier"


def _tier_by_tier(text: str, path: Path, err: Exception):
    """A long-format TextGrid parsed one tier at a time (a malformed tier kept unreadable)."""
    from praatio.utilities import textgrid_io

    parts = re.split(r"(?m)^(?=[ \t]*item ?\[\d+\]:)", text)
    head, tiers, tg = parts[0], [], None
    for k, item in enumerate(parts[1:] if "item []" in head else [], 1):
        name = re.search(r'(?m)^\s*name\s*=\s*"(.*)"\s*$', item)
        name = name.group(1) if name else f"item {k}"
        try:
            one = textgrid_io.parseTextgridStr(head + item, includeEmptyIntervals=True)
            tg = tg or one
            tiers += one["tiers"]
        except Exception as tier_err:
            tiers.append({"name": name, "class": _UNREADABLE,
                          "error": f"{type(tier_err).__name__}: {tier_err}"})
    if tg is None:
        raise AlignmentError(f"{path}: praatio cannot parse this TextGrid "
                             f"({type(err).__name__}: {err})") from err
    return tg, tiers


def _read_timit_file(path: Path, sample_rate: int) -> List[_Entry]:
    """TIMIT ``.PHN`` / ``.WRD`` lines ``start end label`` (samples at ``sample_rate``) -> seconds."""
    entries = []
    for n, line in enumerate(decode_text(path).splitlines(), 1):
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
        entries.append((start / sample_rate, end / sample_rate, " ".join(parts[2:])))
    return entries


def _tier_candidates(wanted, default: Sequence[str], kind: str) -> List[str]:
    if wanted is None:
        return list(default)
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"{kind}_tier must be a tier name or a list of candidate names, "
                        f"got {wanted!r}")
    return names


def _pick_tier(names: Sequence[str], wanted, default: Sequence[str], kind: str, path,
               required: bool) -> Optional[str]:
    """The first candidate name the file has: exactly, else in any case, else as MFA's
    multi-speaker ``"SPEAKER - name"`` (two speakers' tiers of one name are ambiguous)."""
    candidates = _tier_candidates(wanted, default, kind)
    for cand in candidates:
        hits = ([n for n in names if n == cand] or [n for n in names if n.lower() == cand.lower()]
                or [n for n in names if n.rsplit(" - ", 1)[-1].strip().lower() == cand.lower()])
        if len(hits) > 1:
            raise AlignmentError(f"{path}: several {kind} tiers {hits}; choose one with "
                                 f"{kind}_tier='NAME'")
        if hits:
            return hits[0]
    if required:
        raise AlignmentError(f"{path}: no {kind} tier (looked for {candidates}, any case, also "
                             f"as 'SPEAKER - {candidates[0]}'); the file has tiers {list(names)}; "
                             f"name yours with {kind}_tier='NAME' or a list of names")
    return None


COMMON_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)
"""Sample rates a ``.PHN`` may have been written for (:func:`_check_phn_rate`)."""


def _check_phn_rate(entries: Sequence[_Entry], duration: float, sample_rate: int, path) -> None:
    """Refuse a ``.PHN`` written for a lower rate than its audio's (how: ``docs/alignment.md``)."""
    if not entries:
        return
    last = max(e for _, e, _ in entries) * sample_rate  # the last end, in the file's counts
    if duration - last / sample_rate <= TOLERANCE_S:
        return
    for rate in COMMON_RATES:
        if rate != sample_rate and abs(last / rate - duration) <= TOLERANCE_S:
            raise AlignmentError(
                f"{path}: its last end, sample {last:.0f}, is {last / sample_rate:.3f} s at the "
                f"audio file's own rate ({sample_rate} Hz) but the audio lasts {duration:.3f} s; "
                f"at {rate} Hz it is the audio's end: the .PHN counts samples of {rate} Hz "
                f"audio (the audio was resampled after aligning?). Align the audio as it is, "
                f"or give this file's phones as a segment table in seconds (alignments=CSV)")


def check_intervals(entries: Sequence[_Entry], duration: float, path, tier: str, *,
                    allow_overlap: bool = False) -> List[_Entry]:
    """The one check every alignment goes through (``docs/alignment.md``): entries must be
    finite, ``end > start >= 0``, in time order, not overlapping and end at most
    :data:`TOLERANCE_S` past the audio (clipped to it). Returns them with labels stripped,
    else raises :class:`AlignmentError` naming ``path``, ``tier`` and the interval.

    Args:
        entries: ``(start, end, label)`` intervals in seconds, in the source's order.
        duration: the audio's length in seconds.
        tier: the tier's name, for errors.
        allow_overlap: accept intervals that overlap (TIMIT's words).
    """
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
        out.append((max(start, 0.0), min(end, duration), str(label).strip()))
    return out


def check_phone_table(table: pd.DataFrame, num_samples: int, source: str) -> pd.DataFrame:
    """An in-memory alignment table (``phone, word, start, end`` in 16 kHz samples) checked
    by :func:`check_intervals`; returns it, or a copy with ends clipped to the audio."""
    missing = [c for c in PHONE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{source}: phones table lacks columns {missing}; it needs "
                         f"{list(PHONE_COLUMNS)}")
    start, end = (pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64)
                  for c in ("start", "end"))
    if (np.r_[start, end] != np.round(np.r_[start, end])).any():  # (NaN != NaN)
        raise AlignmentError(f"{source}: phones 'start' and 'end' must be whole numbers of "
                             "16 kHz samples")
    entries = list(zip(start / SAMPLE_RATE, end / SAMPLE_RATE, table["phone"].astype(str)))
    check_intervals(entries, num_samples / SAMPLE_RATE, source, "phones")
    if len(table) and end.max() > num_samples:
        table = table.copy()
        table["end"] = np.minimum(end, num_samples).astype(np.int64)
        table = table[table["end"] > table["start"]].reset_index(drop=True)
    return table


def _is_silence(label: str, marks: frozenset) -> bool:
    return label.strip().lower() in marks


def silence_marks(silence=None) -> frozenset:
    """``None`` (:data:`SILENCE_LABELS`) or a set / list / comma-separated string of marks
    -> the marks stripped, in lower case."""
    if silence is None:
        silence = SILENCE_LABELS
    elif isinstance(silence, str):
        silence = silence.split(",")
    try:
        return frozenset(str(m).strip().lower() for m in silence)
    except TypeError:
        raise TypeError(f"silence must be a set of labels (or a comma-separated str), got "
                        f"{type(silence).__name__}") from None


ALIGNMENT_TABLE_COLUMNS = ("phone", "word", "start", "end", "word_index")
""":data:`PHONE_COLUMNS` and ``word_index``, the position of the phone's word (-1 for none),
so that two words in a row spelt alike ("I I think") stay two words."""

SAMPLE_NOISE = 1e-6
"""How far (samples) a time may lie past a whole sample and still be it (float noise)."""


def to_sample(t: float) -> int:
    """The first 16 kHz sample at or after time ``t`` (seconds), ``ceil(t * 16000)`` up to
    :data:`SAMPLE_NOISE` (why not rounding: ``docs/alignment.md``)."""
    return int(math.ceil(t * SAMPLE_RATE - SAMPLE_NOISE))


def alignment_table(phones: Sequence[_Entry], words: Optional[Sequence[_Entry]], num_samples: int,
                    *, phone_map=None, phone_words: Optional[Sequence[str]] = None,
                    phone_word_index: Optional[Sequence[int]] = None, silence=None
                    ) -> pd.DataFrame:
    """The :data:`ALIGNMENT_TABLE_COLUMNS` table from checked phone entries, by the rules of
    ``docs/alignment.md`` (what no phone covers is unlabelled, never silence).

    Args:
        words: checked word entries, or None; a phone's word is the one its midpoint is in.
        phone_words: each phone's word, given directly (segment tables) instead of ``words``.
        phone_word_index: with ``phone_words``, each phone's word position (default: runs
            of equal words).
    """
    fn = resolve_phone_map(phone_map)
    marks = silence_marks(silence)
    bounds = np.minimum(np.reshape([(to_sample(s), to_sample(e)) for s, e, _ in phones],
                                   (-1, 2)), num_samples)
    if phone_words is None and words:  # the word interval holding the phone's midpoint
        mids = bounds.mean(axis=1) / SAMPLE_RATE
        at = np.searchsorted([w[0] for w in words], mids, side="right") - 1
        phone_word_index = np.where((at >= 0) & (mids < np.array([w[1] for w in words])[at]),
                                    at, -1)
        phone_words = [words[i][2] if i >= 0 else "" for i in phone_word_index]
    elif phone_words is None:
        phone_words = [""] * len(phones)
    if phone_word_index is None:  # runs of equal words
        phone_word_index = np.cumsum([k > 0 and (phone_words[k - 1] is None
                                                 or w != phone_words[k - 1])
                                      for k, w in enumerate(phone_words)])
    rows: List[list] = []
    cursor = 0
    for (start, end), (_, _, label), word, index in zip(bounds.tolist(), phones, phone_words,
                                                         phone_word_index):
        raw = label.strip()
        mapped = SILENCE if _is_silence(raw, marks) else raw if fn is None else fn(raw)
        phone = "" if mapped is None else str(mapped)
        silent = phone == SILENCE or word is None or _is_silence(str(word), marks)
        word = "" if silent else str(word).strip()
        index = int(index) if word else -1
        start, cursor = max(start, cursor), max(cursor, end)
        if end <= start:
            continue
        if rows and phone == SILENCE and rows[-1][0] == SILENCE and rows[-1][3] == start:
            rows[-1][3] = end
        else:
            rows.append([phone, word, start, end, index])
    table = pd.DataFrame(rows, columns=list(ALIGNMENT_TABLE_COLUMNS))
    if len(table):  # word positions renumbered 0, 1, ... in time order
        ids = table["word_index"].to_numpy()
        known = ids >= 0
        change = np.r_[True, ids[1:] != ids[:-1]] & known
        table.loc[known, "word_index"] = np.cumsum(change)[known] - 1
    return table.astype({"phone": str, "word": str, "start": np.int64, "end": np.int64,
                         "word_index": np.int64})


def read_alignment(path, num_samples: int, *, phone_tier=None, word_tier=None, phone_map=None,
                   silence=None, sample_rate: Optional[int] = None) -> pd.DataFrame:
    """The alignment table of one utterance of ``num_samples`` 16 kHz samples from a
    ``.TextGrid`` or a TIMIT ``.PHN`` (and its ``.WRD`` when present); the other arguments
    as for :func:`~s3viz.data.load_folder`. ``sample_rate``: the audio file's own rate,
    required for ``.PHN``/``.WRD``, whose times count samples at that rate."""
    path = Path(path)
    duration = num_samples / SAMPLE_RATE
    if path.suffix.lower() == ".phn":
        if phone_tier is not None or word_tier is not None:
            raise ValueError(f"{path}: phone_tier / word_tier name TextGrid tiers; a .PHN file "
                             "has none")
        if sample_rate is None:
            raise ValueError(f"{path}: a .PHN file counts samples at its audio file's own rate; "
                             "pass sample_rate= (soundfile.info(audio).samplerate)")
        entries = _read_timit_file(path, sample_rate)
        _check_phn_rate(entries, duration, sample_rate, path)
        phones = check_intervals(entries, duration, path, "PHN")
        wrd = next((w for w in map(path.with_suffix, (".WRD", ".wrd")) if w.is_file()), None)
        # TIMIT's words may overlap (adjacent words sharing a phone: it takes the later one)
        words = None if wrd is None else check_intervals(
            _read_timit_file(wrd, sample_rate), duration, wrd, "WRD", allow_overlap=True)
        return alignment_table(phones, words, num_samples, phone_map=phone_map, silence=silence)
    xmin, xmax, tiers = read_textgrid(path)
    if abs(xmin) > TOLERANCE_S or abs(xmax - duration) > TOLERANCE_S:
        raise AlignmentError(f"{path}: the TextGrid spans {xmin:g}-{xmax:g} s but the audio lasts "
                             f"{duration:.3f} s (tolerance {TOLERANCE_S} s): it aligns another "
                             "file, or the audio was cut after aligning")
    names = (_pick_tier(list(tiers), phone_tier, PHONE_TIER_NAMES, "phone", path, required=True),
             _pick_tier(list(tiers), word_tier, WORD_TIER_NAMES, "word", path,
                        required=word_tier is not None))
    for name in filter(None, names):
        if tiers[name]["class"] == _UNREADABLE:
            raise AlignmentError(f"{path}: praatio cannot parse tier {name!r} "
                                 f"({tiers[name]['error']})")
        if tiers[name]["class"] != "IntervalTier":
            raise AlignmentError(f"{path}: tier {name!r} is a {tiers[name]['class']}; phones and "
                                 "words need an IntervalTier")
    phones, words = (name and check_intervals(tiers[name]["entries"], duration, path, name)
                     for name in names)
    return alignment_table(phones, words, num_samples, phone_map=phone_map, silence=silence)


def table_alignment(rows: pd.DataFrame, num_samples: int, *, source: str, phone_map=None,
                    silence=None) -> pd.DataFrame:
    """The alignment table of one utterance from its rows of a segment table (file order)."""
    entries = list(zip(rows["start"], rows["end"], rows["phone"].fillna("").astype(str)))
    phones = check_intervals(entries, num_samples / SAMPLE_RATE, source, "phone")
    words = (list(rows["word"].fillna("").astype(str)) if "word" in rows.columns
             else [""] * len(phones))
    index = rows["word_index"].tolist() if "word_index" in rows.columns else None
    return alignment_table(phones, None, num_samples, phone_map=phone_map, phone_words=words,
                           phone_word_index=index, silence=silence)


ALIGNMENT_SUFFIXES = (".TextGrid", ".textgrid", ".TEXTGRID", ".PHN", ".phn")


def find_alignment_file(audio: Path, rel: str, alignments: Union[str, os.PathLike], *,
                        root: Optional[Path] = None, pattern: Optional[str] = None
                        ) -> Optional[Path]:
    """The alignment file of an audio file (``rel``: its path relative to the audio folder
    ``root``): beside it (``"sibling"``), at ``rel`` under the alignment folder (MFA's
    layout), or where ``pattern`` says (its placeholders: ``docs/data.md``)."""
    rel_path = Path(rel)
    if pattern is not None:
        base = root if alignments == "sibling" else Path(alignments)
        fields = dict(parent=rel_path.parent.as_posix(), stem=rel_path.stem, name=rel_path.name)
        candidates = [base / one.format(**fields)
                      for one in ([pattern] if isinstance(pattern, str) else pattern)]
    else:
        base = (audio.with_suffix("") if alignments == "sibling"
                else Path(alignments) / rel_path.with_suffix(""))
        candidates = [base.parent / (base.name + suffix) for suffix in ALIGNMENT_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def check_alignment_pattern(pattern):
    """``alignment_pattern`` (a str, or a list tried in order) checked before any file is
    read: known placeholders only."""
    if pattern is None:
        return None
    patterns = [pattern] if isinstance(pattern, str) else list(pattern) \
        if isinstance(pattern, (list, tuple)) else [None]
    for one in patterns:
        if not isinstance(one, str) or not one:
            raise TypeError(f"alignment_pattern must be a str such as "
                            f"'{{parent}}/{{stem}}-merge.TextGrid' (or a list of them), got "
                            f"{pattern!r}")
        try:
            one.format(parent="p", stem="s", name="n")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"alignment_pattern {one!r}: the placeholders are {{parent}}, "
                             f"{{stem}} and {{name}} ({type(err).__name__}: {err})") from None
    return pattern
