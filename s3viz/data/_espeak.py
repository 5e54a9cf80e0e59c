"""A minimal ctypes binding to eSpeak NG: text in, 22050 Hz int16 audio and events out.

Run as a script (standard library only) in a fresh subprocess per corpus, since eSpeak
keeps hidden state between calls: the protocol is in ``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import threading
from typing import Dict, List

__all__ = ["SAMPLE_RATE_ESPEAK", "espeak_version", "synthesize"]

SAMPLE_RATE_ESPEAK = 22050

# speak_lib.h: espeak_AUDIO_OUTPUT, options, espeak_EVENT_TYPE, espeak_PARAMETER
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_PHONEME = 7
_PARAMETERS = {"rate": 1, "pitch": 3, "range": 4}  # item key: espeak_PARAMETER, set in order


class _EventId(ctypes.Union):  # union { int number; const char *name; char string[8]; } id;
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT in speak_lib.h (40 bytes on 64-bit platforms)
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))

# eSpeak's global state is not thread-safe: one lock guards every call, and the
# library is initialized once per process.
_LOCK = threading.Lock()
_STATE: Dict[str, object] = {}


def _load(library: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(library)
    c = ctypes
    for name, restype, argtypes in (
            ("espeak_Info", c.c_char_p, [c.c_void_p]),
            ("espeak_Initialize", c.c_int, [c.c_int, c.c_int, c.c_char_p, c.c_int]),
            ("espeak_SetSynthCallback", None, [_SynthCallback]),
            ("espeak_SetVoiceByName", c.c_int, [c.c_char_p]),
            ("espeak_SetParameter", c.c_int, [c.c_int, c.c_int, c.c_int]),
            ("espeak_Synth", c.c_int, [c.c_void_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint,
                                       c.c_uint, c.c_void_p, c.c_void_p]),
            ("espeak_ng_SetPhonemeEvents", c.c_int, [c.c_int, c.c_int])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def espeak_version(library: str) -> str:
    """The eSpeak NG version string of the shared library at ``library`` (no initialization)."""
    return _load(library).espeak_Info(None).decode("ascii", "replace")


def _initialized(library: str, data: str):
    """Load and initialize eSpeak once per process; returns ``(lib, buffer)``."""
    if _STATE.get("pid") == os.getpid():
        if _STATE["library"] != library:
            raise RuntimeError(
                f"eSpeak NG is already initialized from {_STATE['library']!r} in this process")
        return _STATE["lib"], _STATE["buffer"]
    lib = _load(library)
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(),
                                 _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA)
    if rate != SAMPLE_RATE_ESPEAK:
        raise RuntimeError(
            f"espeak_Initialize returned {rate} (expected sample rate {SAMPLE_RATE_ESPEAK}); "
            f"check the espeak-ng data folder {data!r} (reinstall espeakng-loader)")
    buffer: Dict[str, list] = {"audio": [], "events": []}

    def callback(wav, num_samples, events):
        if wav and num_samples > 0:
            buffer["audio"].append(ctypes.string_at(wav, num_samples * 2))
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == EVENT_PHONEME:
                # string[8] is zero-terminated unless the name needs all 8 bytes
                name = bytes(ev.id.string).split(b"\0", 1)[0].decode("utf-8", "ignore")
                buffer["events"].append(["phoneme", ev.sample, name])
            elif ev.type == EVENT_WORD:
                buffer["events"].append(["word", ev.sample, ev.text_position, ev.length])
            i += 1
        return 0

    c_callback = _SynthCallback(callback)
    lib.espeak_SetSynthCallback(c_callback)
    _STATE.update(pid=os.getpid(), library=library, lib=lib, buffer=buffer,
                  callback=c_callback)  # keep the callback alive
    return lib, buffer


def synthesize(library: str, data: str, items: List[dict], seed: int = 0) -> List[dict]:
    """Synthesize ``items`` (keys: ``docs/data.md``) in order, with IPA phoneme names.

    Returns one dict per item: ``audio`` (bytes, int16 little-endian mono at 22050 Hz)
    and ``events`` in eSpeak's order: ``["phoneme", sample, ipa_name, ascii_name]``
    (``ascii_name`` is ``"_"`` for a final pause and may repeat the IPA name when no
    second pass ran) and ``["word", sample, text_position (1-based), length]``;
    ``sample`` counts from the item's first sample.
    """
    with _LOCK:
        lib, buffer = _initialized(library, data)
        with contextlib.suppress(AttributeError):  # older library without the symbol
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed.restype = None
            lib.espeak_ng_SetRandSeed(int(seed))
        results = []
        current_voice = None
        for item in items:
            if item["voice"] != current_voice:
                err = lib.espeak_SetVoiceByName(item["voice"].encode())
                if err != 0:
                    raise ValueError(
                        f"eSpeak NG has no voice {item['voice']!r} (error {err}); use a "
                        "language name such as 'en-us' or 'en', optionally with a variant "
                        "such as 'en-us+f3' or 'en+m1'")
                current_voice = item["voice"]
            for key, param in _PARAMETERS.items():
                lib.espeak_SetParameter(param, int(item[key]), 0)
            text = item["text"].encode("utf-8") + b"\0"
            # pass 1: audio, timing and IPA phoneme names
            lib.espeak_ng_SetPhonemeEvents(1, 1)
            audio, events = _synth_one(lib, buffer, text)
            ipa = [e for e in events if e[0] == "phoneme"]
            names = [e[2] for e in ipa]
            last = max((i for i, n in enumerate(names) if n), default=-1)
            if "" in names[:last]:
                # pass 2, only when an unnamed event lies between named ones: eSpeak's
                # own (ASCII) names tell pauses ("_", "_:") from vowel-to-vowel
                # linking (";"); both are unnamed in IPA
                lib.espeak_ng_SetPhonemeEvents(1, 0)
                _, ascii_events = _synth_one(lib, buffer, text)
                asc = [e[2] for e in ascii_events if e[0] == "phoneme"]
                if len(asc) != len(ipa):
                    raise RuntimeError(
                        f"eSpeak NG gave {len(ipa)} IPA but {len(asc)} ASCII phoneme events "
                        f"for {item['text']!r}")
            else:  # unnamed events after the last named phoneme are the final pause
                asc = [n if n else "_" for n in names]
            for e, a in zip(ipa, asc):
                e.append(a)
            results.append({"audio": audio, "events": events})
        return results


def _synth_one(lib, buffer, text: bytes):
    buffer["audio"].clear()
    buffer["events"].clear()
    err = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != 0:
        raise RuntimeError(f"espeak_Synth failed with error {err} for {text[:-1]!r}")
    return b"".join(buffer["audio"]), list(buffer["events"])


def _main() -> None:
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    try:
        results = synthesize(job["library"], job["data"], job["items"], job.get("seed", 0))
    except (ValueError, RuntimeError, OSError) as e:
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.exit(2)
    header = {"version": espeak_version(job["library"]),
              "num_samples": [len(r["audio"]) // 2 for r in results],
              "events": [r["events"] for r in results]}
    out = sys.stdout.buffer
    out.write(json.dumps(header).encode("utf-8") + b"\n")
    for r in results:
        out.write(r["audio"] if sys.byteorder == "little" else _swap16(r["audio"]))
    out.flush()


def _swap16(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[0::2], b[1::2] = raw[1::2], raw[0::2]
    return bytes(b)


if __name__ == "__main__":
    _main()
