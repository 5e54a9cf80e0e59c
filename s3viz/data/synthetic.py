"""The embedded speech corpus: English sentences synthesized offline with eSpeak NG, with
exact phone alignments from eSpeak's events, deterministic in its parameters and cached
on disk under a hash of them (``docs/data.md``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from .. import _deps
from .._fs import OwnedFolder
from ..interface import SAMPLE_RATE
from . import _espeak
from ._corpus import Corpus, Utterance

__all__ = ["synthetic_corpus", "SPEAKERS", "default_cache_dir", "make_sentences"]

_FORMAT_VERSION = 2
"""Bump when the grammar, the alignment rules or the cache layout change."""

SPEAKERS: Dict[str, Dict[str, object]] = {
    "spk01": dict(voice="en-us+m1", pitch=42, rate=165, range=50, gender="male"),
    "spk02": dict(voice="en-us+f3", pitch=62, rate=175, range=60, gender="female"),
    "spk03": dict(voice="en-us+m3", pitch=32, rate=185, range=40, gender="male"),
    "spk04": dict(voice="en-us+f2", pitch=70, rate=160, range=55, gender="female"),
    "spk05": dict(voice="en+m2", pitch=48, rate=170, range=45, gender="male"),
    "spk06": dict(voice="en+f4", pitch=58, rate=180, range=65, gender="female"),
    "spk07": dict(voice="en-gb-x-rp+m7", pitch=38, rate=155, range=50, gender="male"),
    "spk08": dict(voice="en-gb-x-rp+f1", pitch=66, rate=170, range=50, gender="female"),
}
"""The default speakers: eSpeak NG voice (language+variant), pitch and range (0-100),
rate (words per minute) and a gender label."""

_SPEAKER_DEFAULTS = dict(pitch=50, rate=175, range=50, gender="")


def _pairs(text: str) -> list:
    """``"dog:dogs cat:cats"`` -> ``[("dog", "dogs"), ("cat", "cats")]``."""
    return [tuple(p.split(":")) for p in text.split()]


_NAMES = ("Anna Peter Maria John Lucy David Emma Oliver Sophia Thomas Laura Michael Grace "
          "Daniel Helen Robert Julia Simon Rachel Victor Martin Alice").split()
_RELATIVES = ("mother father brother sister uncle aunt cousin friend neighbour "
              "grandmother teacher doctor").split()
_AGENTS = _pairs(
    "dog:dogs cat:cats bird:birds horse:horses farmer:farmers child:children girl:girls "
    "boy:boys woman:women man:men student:students baker:bakers sailor:sailors pilot:pilots "
    "singer:singers rabbit:rabbits monkey:monkeys soldier:soldiers")
_OBJECTS = ("box chair table window door letter bottle basket jacket ladder bucket lamp key "
            "map book bicycle kettle mirror pencil umbrella orange apple hammer wallet "
            "blanket ticket picture candle radio guitar shoe cup").split()
_ADJECTIVES = ("big small old young heavy quiet noisy yellow purple green red brown tiny huge "
               "shiny broken lazy hungry thirsty clever gentle angry happy sleepy curious "
               "dusty wooden golden silver cheerful nervous famous").split()
_PLACES = ("garden kitchen station river market library village forest harbour bridge "
           "mountain school hospital museum beach office valley castle").split()
_PREPOSITIONS = "near behind beside inside outside under across".split()
_TIMES = ["yesterday", "today", "tomorrow", "tonight", "again", "early", "later",
          "this morning", "last week", "at noon", "on Monday", "on Friday", "every day",
          "after lunch"]
_TRANSITIVE = _pairs(
    "find:found bring:brought paint:painted carry:carried wash:washed open:opened "
    "close:closed fix:fixed sell:sold buy:bought move:moved clean:cleaned hide:hid "
    "take:took catch:caught push:pushed pull:pulled drop:dropped borrow:borrowed "
    "follow:followed measure:measured choose:chose watch:watched check:checked throw:threw")
_INTRANSITIVE = _pairs(
    "wait:waited sleep:slept sing:sang run:ran play:played swim:swam dance:danced sit:sat "
    "stay:stayed laugh:laughed jump:jumped work:worked rest:rested shout:shouted "
    "arrive:arrived fall:fell walk:walked")
_NUMBERS = "Two Three Four Five Six Seven Eight Nine Ten Twelve".split()

# (sentence_type, template); {A}=agent, {As}=agent plural, {O}=object, {J}=adjective,
# {P}=place, {R}=preposition, {T}=time, {N}/{M}=names, {K}=relative, {#}=number,
# {Vt}/{Vtp}=transitive base/past, {Vi}/{Vip}=intransitive base/past
_TEMPLATES = [
    ("statement", "The {J} {A} {Vip} {R} the {P}."),
    ("statement", "{N} {Vtp} the {J} {O}."),
    ("statement", "{N} and {M} {Vip} {T}."),
    ("statement", "My {K} {Vtp} a {J} {O}."),
    ("statement", "{#} {J} {As} {Vip} {R} the {P}."),
    ("statement", "We {Vtp} the {O} {R} the {P}."),
    ("statement", "The {A} {Vtp} my {O} {T}."),
    ("question", "Did the {J} {A} {Vi} {T}?"),
    ("question", "Where did {N} {Vt} the {O}?"),
    ("question", "Is the {O} {R} the {P}?"),
    ("question", "Why is the {O} so {J}?"),
    ("question", "Can your {K} {Vt} the {J} {O}?"),
    ("command", "Please {Vt} the {J} {O}."),
    ("command", "{Vt_cap} the {O} {R} the {P}, please."),
    ("command", "Don't {Vt} the {O} {T}."),
]


def _fill(template: str, rng: random.Random) -> str:
    agent = rng.choice(_AGENTS)
    vt = rng.choice(_TRANSITIVE)
    vi = rng.choice(_INTRANSITIVE)
    n1, n2 = rng.sample(_NAMES, 2)
    values = {
        "A": agent[0], "As": agent[1], "O": rng.choice(_OBJECTS), "J": rng.choice(_ADJECTIVES),
        "P": rng.choice(_PLACES), "R": rng.choice(_PREPOSITIONS), "T": rng.choice(_TIMES),
        "N": n1, "M": n2, "K": rng.choice(_RELATIVES), "#": rng.choice(_NUMBERS),
        "Vt": vt[0], "Vtp": vt[1], "Vi": vi[0], "Vip": vi[1], "Vt_cap": vt[0].capitalize(),
    }
    text = template
    for key in sorted(values, key=len, reverse=True):
        text = text.replace("{" + key + "}", values[key])
    return text[0].upper() + text[1:]


def make_sentences(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` distinct English sentences from the grammar seeded by ``seed``: columns
    ``sentence_id`` (``"s0000"``...), ``text`` and ``sentence_type`` (statement, question,
    command); row ``i`` depends only on ``seed`` and the rows before it.

    Args:
        n: how many sentences.
    """
    n = _check_count(n, "n")
    rng = random.Random(f"s3viz-sentences-{int(seed)}")
    seen, rows = set(), []
    while len(rows) < n:
        kind, template = rng.choice(_TEMPLATES)
        text = _fill(template, rng)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"sentence_id": f"s{len(rows):04d}", "text": text, "sentence_type": kind})
    return pd.DataFrame(rows, columns=["sentence_id", "text", "sentence_type"])


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _resolve_speakers(speakers) -> Dict[str, Dict[str, object]]:
    if speakers is None:
        speakers = list(SPEAKERS)
    elif isinstance(speakers, (int, np.integer)) and not isinstance(speakers, bool):
        if not 1 <= speakers <= len(SPEAKERS):
            raise ValueError(
                f"speakers={speakers}: choose 1..{len(SPEAKERS)} built-in speakers, or pass a "
                "dict {name: {'voice': 'en-us+f3', 'pitch': 50, 'rate': 175}} for your own")
        speakers = list(SPEAKERS)[: int(speakers)]
    elif isinstance(speakers, Mapping):
        if not speakers:
            raise ValueError("speakers is an empty dict; give at least one speaker")
        return {name: _voice_spec(name, spec) for name, spec in speakers.items()}
    elif not isinstance(speakers, Sequence) or isinstance(speakers, str):
        raise TypeError(
            f"speakers must be None, an int, a list of built-in speaker names or a dict of "
            f"voice specs, got {type(speakers).__name__}")
    unknown = [s for s in speakers if s not in SPEAKERS]
    if unknown or not speakers:
        raise ValueError(f"unknown speakers {unknown}; built-in speakers are {list(SPEAKERS)} "
                         "(or pass a dict of your own voice specs)")
    if len(set(speakers)) != len(speakers):
        raise ValueError(f"speakers has duplicates: {list(speakers)}")
    return {k: dict(SPEAKERS[k]) for k in speakers}


def _voice_spec(name, spec) -> Dict[str, object]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"speaker names must be non-empty str, got {name!r}")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("voice"), str):
        raise ValueError(f"speakers[{name!r}] must be a dict with a 'voice' str such as 'en-us+f3' "
                         f"(optional 'pitch', 'rate', 'range', 'gender'), got {spec!r}")
    unknown = set(spec) - {"voice", "pitch", "rate", "range", "gender"}
    if unknown:
        raise ValueError(f"speakers[{name!r}] has unknown keys {sorted(unknown)}")
    full = {**_SPEAKER_DEFAULTS, **spec}
    for key, lo, hi in (("pitch", 0, 100), ("range", 0, 100), ("rate", 80, 450)):
        v = full[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ValueError(f"speakers[{name!r}]['{key}'] must be an int in [{lo}, {hi}], "
                             f"got {v!r}")
        full[key] = int(v)
    return full


def _code_version() -> str:
    """A hash of the code that makes a synthetic corpus (a changed rule never reuses a cache)."""
    h = hashlib.sha256()
    for module in (__file__, _espeak.__file__, Path(__file__).parent.parent / "audio.py"):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """The s3viz cache root: ``$S3VIZ_CACHE``, else ``$XDG_CACHE_HOME/s3viz``, else
    ``~/.cache/s3viz``."""
    env = os.environ.get("S3VIZ_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "s3viz"


def _espeak_paths() -> Tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as e:
        raise ImportError("synthetic_corpus needs the eSpeak NG library from the PyPI package "
                          "'espeakng-loader': pip install espeakng-loader") from e
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


_STRIP = str.maketrans("", "", "ˈˌːˑ',:")


def _clean_phone(ipa: str, ascii_name: str) -> Optional[str]:
    """eSpeak phoneme names -> phone label without stress or length marks: pauses (ASCII
    ``_...``) are ``"sil"``, other unnamed events (linking ``;``) None (merged before)."""
    if ascii_name.startswith("_"):
        return "sil"
    label = ipa.translate(_STRIP).strip()
    return label or None


def _run_espeak(items: List[dict], seed: int) -> Tuple[dict, np.ndarray]:
    """Synthesize ``items`` in a fresh subprocess; returns (header, int16 samples)."""
    library, data = _espeak_paths()
    job = json.dumps({"library": library, "data": data, "seed": int(seed), "items": items})
    proc = subprocess.run([sys.executable, "-I", _espeak.__file__], input=job.encode("utf-8"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        if message.startswith("ValueError: "):
            raise ValueError(message[len("ValueError: "):])
        raise RuntimeError(f"eSpeak NG synthesis subprocess failed (exit {proc.returncode}): "
                           f"{message[-2000:]}")
    head, sep, raw = proc.stdout.partition(b"\n")
    header = json.loads(head.decode("utf-8"))
    samples = np.frombuffer(raw, dtype="<i2")
    if not sep or samples.size != sum(header["num_samples"]):
        raise RuntimeError("eSpeak NG synthesis subprocess returned truncated output")
    return header, samples


def _to_16k(sample: np.ndarray, num_samples_16k: int) -> np.ndarray:
    """22050 Hz sample positions -> nearest 16 kHz positions, clipped to the audio."""
    s = np.asarray(sample, dtype=np.int64)
    num, den = SAMPLE_RATE, _espeak.SAMPLE_RATE_ESPEAK
    return np.clip((2 * s * num + den) // (2 * den), 0, num_samples_16k)


_STOPS = frozenset("p t k b d ɡ tʃ dʒ".split())
_CLOSURE_WINDOW = 80  # 5 ms at 16 kHz
_CLOSURE_STEP = 20
_CLOSURE_THRESHOLD = 0.02  # of the utterance's loudest 5 ms window (RMS)


def _phone_table(events: list, text: str, num_samples_22k: int, wav: np.ndarray) -> list:
    """Tile ``[0, len(wav))`` with ``[phone, word, start, end, word_index]`` rows from eSpeak's
    events: each phoneme starts a segment that ends at the next; the stretch before the
    first and every pause are ``"sil"`` (merged); zero-length segments are dropped; a
    stop's silent closure moves from the segment before into it (eSpeak times the burst).
    ``word_index`` counts eSpeak's word events ("the the cat" keeps two words "the")."""
    num_samples = int(wav.shape[0])
    # the whitespace-separated token around each character: eSpeak's word events
    # give a 1-based character position (their length may stop at an apostrophe)
    token_at = [""] * (len(text) + 1)
    for m in re.finditer(r"\S+", text):
        word = "".join(ch for ch in m.group().lower() if ch.isalnum() or ch == "'").strip("'")
        token_at[m.start(): m.end()] = [word] * (m.end() - m.start())
    starts, phones, words, word_ids = [0], ["sil"], [""], [-1]
    word, word_no = "", -1
    for ev in events:
        if ev[0] == "word":
            pos = int(ev[2]) - 1
            word = token_at[pos] if 0 <= pos < len(text) else ""
            word_no += 1  # every word event is a new word, spelt like the last or not
            continue
        sample = int(ev[1])
        if not 0 <= sample <= num_samples_22k:
            raise RuntimeError(f"eSpeak NG phoneme event at sample {sample} lies outside the "
                               f"{num_samples_22k}-sample audio of {text!r}")
        phone = _clean_phone(ev[2], ev[3])
        if phone is None:
            continue
        starts.append(sample)
        phones.append(phone)
        words.append("" if phone == "sil" else word)
        word_ids.append(-1 if phone == "sil" or not word else word_no)
    start = _to_16k(np.maximum.accumulate(np.asarray(starts)), num_samples)
    end = np.append(start[1:], num_samples)
    rows: list = []
    for p, w, s, e, wi in zip(phones, words, start, end, word_ids):
        if e <= s:
            continue
        if rows and p == "sil" and rows[-1][0] == "sil":
            rows[-1][3] = int(e)
            continue
        rows.append([p, w, int(s), int(e), wi])
    # word positions renumbered 0, 1, ... in time order (words without a phone left out)
    seen: Dict[int, int] = {}
    for r in rows:
        if r[4] >= 0:
            r[4] = seen.setdefault(r[4], len(seen))
    _move_closures(rows, wav)
    return rows


def _move_closures(rows: list, wav: np.ndarray) -> None:
    """Move each stop's start back over the near-silent tail of the segment before it."""
    x = wav.astype(np.float64)
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    w = _CLOSURE_WINDOW

    def rms_before(t):  # RMS of the window [t - w, t)
        return np.sqrt((c[t] - c[t - w]) / w)

    if x.shape[0] <= w:
        return
    peak = np.sqrt(np.max(c[w:] - c[:-w]) / w)
    threshold = _CLOSURE_THRESHOLD * peak
    for i in range(1, len(rows)):
        prev, cur = rows[i - 1], rows[i]
        if cur[0] not in _STOPS or prev[0] == "sil":
            continue
        keep = prev[2] + max((prev[3] - prev[2]) // 4, 160)
        b = quiet_from = cur[2]
        while b - w >= keep and rms_before(b) < threshold:
            quiet_from = b - w  # [quiet_from, stop start) is quiet
            b -= _CLOSURE_STEP
        if quiet_from < cur[2]:
            prev[3] = cur[2] = quiet_from


def _plan(n_utterances: int, seed: int, speakers: Dict[str, dict],
          n_sentences: Optional[int]) -> List[dict]:
    """Which sentence each utterance speaks, and with which speaker."""
    n_sent = n_utterances if n_sentences is None else n_sentences
    sentences = make_sentences(n_sent, seed).to_dict("records")
    names = list(speakers)
    random.Random(f"s3viz-speakers-{int(seed)}").shuffle(names)
    # utterance i speaks sentence i % n_sent; its repetitions go to different speakers
    return [{"index": i, "speaker": names[(i % n_sent + i // n_sent) % len(names)],
             **sentences[i % n_sent]} for i in range(n_utterances)]


def _synthesize(plan: List[dict], speakers: Dict[str, dict], seed: int):
    from ..audio import resample_many

    items = [{"text": p["text"], **{k: speakers[p["speaker"]][k]
                                    for k in ("voice", "rate", "pitch", "range")}} for p in plan]
    header, samples = _run_espeak(items, seed)
    offsets = np.concatenate([[0], np.cumsum(header["num_samples"])])
    raws = []
    for i, p in enumerate(plan):
        raw = samples[offsets[i]: offsets[i + 1]]
        if raw.size == 0 or not np.any(raw):
            raise RuntimeError(f"eSpeak NG produced no audio for {p['text']!r}")
        raws.append(raw.astype(np.float32) / np.float32(32768.0))
    wavs = resample_many(raws, _espeak.SAMPLE_RATE_ESPEAK, SAMPLE_RATE)
    # eSpeak can synthesize up to full scale, and the resampling filter's ringing then
    # overshoots 1 by a hair: scale such an utterance back to a peak of 1 (not clip it)
    for i, w in enumerate(wavs):
        peak = float(np.abs(w).max())
        if peak > 1.0:
            wavs[i] = (w / np.float32(peak)).astype(np.float32)
    tables = [_phone_table(header["events"][i], p["text"], raws[i].size, wavs[i])
              for i, p in enumerate(plan)]
    return header["version"], wavs, tables


def _checksum(arrays: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        if key == "checksum":
            continue
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_COLUMNS = (("phone", str), ("word", str), ("start", np.int64), ("end", np.int64),
            ("word_index", np.int64))
"""The alignment table's columns as the cache stores them (one array each, all utterances)."""


def _pack(meta: dict, wavs: List[np.ndarray], tables: List[list]) -> Dict[str, np.ndarray]:
    rows = [r for t in tables for r in t]
    arrays = {
        "audio": np.concatenate(wavs).astype(np.float32),
        "audio_offsets": np.concatenate([[0], np.cumsum([w.size for w in wavs])]).astype(np.int64),
        "phone_offsets": np.concatenate([[0], np.cumsum([len(t) for t in tables])]).astype(
            np.int64),
        **{c: np.array([r[j] for r in rows], dtype=dtype) for j, (c, dtype) in enumerate(_COLUMNS)},
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
    }
    arrays["checksum"] = np.frombuffer(_checksum(arrays).encode("ascii"), dtype=np.uint8)
    return arrays


def _cache_file(cache_dir, name: str) -> Tuple[Path, str]:
    """The folder the user named (links in it are theirs) and the cache file below it
    (s3viz's own, never followed): ``cache_dir``; else ``$S3VIZ_CACHE`` and
    ``synthetic/``; else ``$XDG_CACHE_HOME`` or ``~/.cache`` and ``s3viz/synthetic/``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser(), name
    if os.environ.get("S3VIZ_CACHE"):
        return default_cache_dir(), f"synthetic/{name}"
    return default_cache_dir().parent, f"{default_cache_dir().name}/synthetic/{name}"


def _read_cache(cache_dir, name: str) -> Optional[Dict[str, np.ndarray]]:
    """The cached arrays, or None when the file is missing, unreadable or corrupt (a link
    on the way is an :class:`s3viz._fs.UnsafePathError`)."""
    root, rel = _cache_file(cache_dir, name)
    path = root / rel
    try:
        data = OwnedFolder(root, "the synthetic corpus cache", create=False).read_bytes(rel)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        warnings.warn(f"unreadable synthetic corpus cache {str(path)!r} ({e}); regenerating it",
                      stacklevel=3)
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        stored = bytes(arrays["checksum"]).decode("ascii")
        if stored != _checksum(arrays):
            raise ValueError("checksum mismatch")
        n = len(json.loads(bytes(arrays["meta"]).decode("utf-8"))["utterances"])
        if arrays["audio_offsets"].shape != (n + 1,) or arrays["phone_offsets"].shape != (n + 1,):
            raise ValueError("inconsistent offsets")
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        warnings.warn(f"corrupt synthetic corpus cache {str(path)!r} ({e}); regenerating it",
                      stacklevel=3)
        return None
    return arrays


def _unpack(arrays: Dict[str, np.ndarray], name: str) -> Corpus:
    meta = json.loads(bytes(arrays["meta"]).decode("utf-8"))
    ao, po = arrays["audio_offsets"], arrays["phone_offsets"]
    utts = []
    for i, m in enumerate(meta["utterances"]):
        a, b = int(po[i]), int(po[i + 1])
        phones = pd.DataFrame({c: arrays[c][a:b].astype(object if dtype is str else dtype)
                               for c, dtype in _COLUMNS})
        utts.append(Utterance(id=m["id"], wav=arrays["audio"][int(ao[i]): int(ao[i + 1])],
                              text=m["text"], speaker=m["speaker"], phones=phones,
                              labels=dict(m["labels"])))
    return Corpus(utts, name=name)


def synthetic_corpus(n_utterances: int = 120, seed: int = 0, *,
                     speakers: Union[None, int, Sequence[str], Mapping[str, Mapping]] = None,
                     n_sentences: Optional[int] = None,
                     cache_dir: Union[None, str, os.PathLike] = None, cache: bool = True
                     ) -> Corpus:
    """Real English speech with phone alignments, synthesized offline with eSpeak NG.

    Each utterance speaks one sentence from a seeded grammar (statements, questions,
    commands; about 1-3 s) with one speaker, the speakers in a seeded cyclic order (so
    every speaker is in every contiguous split).

    Args:
        seed: seeds the sentences and the speaker order (same parameters, same audio bytes).
        speakers: ``None`` (the 8 built-in :data:`SPEAKERS`), an int (the first
            ``k`` of them), a list of built-in names, or a dict
            ``{name: {"voice": "en-us+f3", "pitch": 60, "rate": 170, "range": 50,
            "gender": "female"}}`` of eSpeak NG voices (language+variant).
        n_sentences: number of distinct sentences (default: one per utterance); when
            smaller, utterance ``i`` speaks sentence ``i % n_sentences``, each repetition
            with another speaker.
        cache_dir: folder for the cache file (read and written when ``cache``); default
            ``default_cache_dir() / "synthetic"``; a link below it is refused.

    Returns:
        A :class:`Corpus` of :class:`Utterance` with ``id`` (``"utt0000"``...), ``wav``
        (float32, 16 kHz), ``text``, ``speaker``, ``phones`` (``phone`` as IPA without stress or
        length marks, ``"sil"`` for silence and pauses; ``word``; ``start``/``end`` in 16 kHz
        samples tiling the utterance) and ``labels``: ``sentence_id``, ``sentence_type``,
        ``voice``, ``accent``, ``gender``, ``pitch``, ``rate``.
    """
    n_utterances = _check_count(n_utterances, "n_utterances")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    seed = int(seed)
    if n_sentences is not None:
        n_sentences = _check_count(n_sentences, "n_sentences")
        if n_sentences > n_utterances:
            raise ValueError(f"n_sentences={n_sentences} exceeds n_utterances={n_utterances}")
    spk = _resolve_speakers(speakers)
    name = f"synthetic(seed={seed})"
    library, _ = _espeak_paths()
    version = _espeak.espeak_version(library)
    import soxr
    import torch
    torchaudio = _deps.torchaudio()

    params = {"format": _FORMAT_VERSION, "code": _code_version(), "n_utterances": n_utterances,
              "seed": seed, "speakers": spk, "n_sentences": n_sentences, "espeak": version,
              "torch": torch.__version__, "torchaudio": torchaudio.__version__,
              "soxr": soxr.__version__}  # espeak's 22.05 kHz audio is resampled by soxr
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
    file_name = f"synthetic-{key}.npz"
    if cache:
        arrays = _read_cache(cache_dir, file_name)
        if arrays is not None:
            return _unpack(arrays, name)

    plan = _plan(n_utterances, seed, spk, n_sentences)
    version, wavs, tables = _synthesize(plan, spk, seed)
    utterances = []
    for p in plan:
        s = spk[p["speaker"]]
        utterances.append({
            "id": f"utt{p['index']:04d}", "text": p["text"], "speaker": p["speaker"],
            "labels": {"sentence_id": p["sentence_id"], "sentence_type": p["sentence_type"],
                       "voice": s["voice"], "accent": s["voice"].split("+")[0],
                       "gender": s["gender"], "pitch": s["pitch"], "rate": s["rate"]},
        })
    arrays = _pack({"params": params, "utterances": utterances}, wavs, tables)
    if cache:
        root, rel = _cache_file(cache_dir, file_name)
        try:
            with OwnedFolder(root, "the synthetic corpus cache").open_write(rel) as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            warnings.warn(f"could not write the synthetic corpus cache {str(root / rel)!r} "
                          f"({e}); set S3VIZ_CACHE to a writable folder", stacklevel=2)
    return _unpack(arrays, name)
