"""Acoustic tracks (F0, voicing, intensity, formants) computed with Praat's algorithms
through Parselmouth: :func:`add_acoustic_tracks` (``docs/data.md``)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..interface import SAMPLE_RATE
from ._corpus import Corpus, FileUtterance, Utterance
from .tracks import DEFAULT_TRACKS, TRACK_NAMES

__all__ = ["add_acoustic_tracks"]

SILENT_DB = -299.0  # Praat gives -300 dB for a window of digital silence

MIN_MAX_FORMANT = 1000.0  # Hz: a lower formant ceiling is a kHz-for-Hz slip (5.5 for 5500)

PARSELMOUTH_FIX = "pip install 'praat-parselmouth>=0.4.7,<0.5'"


def _parselmouth():
    try:
        import parselmouth
    except ImportError as err:
        raise ImportError("add_acoustic_tracks needs Praat's analyses from the PyPI package "
                          f"'praat-parselmouth': {PARSELMOUTH_FIX}") from err
    return parselmouth


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_formant_settings(settings: dict) -> None:
    """Refuse formant settings Praat's ``To Formant (burg)`` cannot use, naming the
    argument. Praat resamples the sound to ``2 * max_formant`` Hz, fits
    ``int(2 * max_number_of_formants)`` LPC poles and needs its Gaussian window
    (``2 * formant_window_length`` long) to hold at least one sample more than that
    (else "Window too short")."""
    ceiling = settings["max_formant"]
    if ceiling < MIN_MAX_FORMANT:
        hint = (f"; did you mean {ceiling * 1000:g} Hz?" if ceiling * 1000 < SAMPLE_RATE / 2
                else "")
        raise ValueError(f"max_formant is in Hz, the formant ceiling (Praat's 5500 for an adult "
                         f"female, 5000 for an adult male); got {ceiling:g} Hz, below "
                         f"{MIN_MAX_FORMANT:g} Hz, where not even F1 and F2 fit{hint}")
    count = settings["max_number_of_formants"]
    if count < 1:
        raise ValueError(f"max_number_of_formants must be at least 1 (Praat's 5: formants "
                         f"searched below max_formant), got {count:g}")
    poles = int(2 * count)
    shortest = (poles + 1) / (4.0 * ceiling)
    window = settings["formant_window_length"]
    if window < shortest * (1 + 1e-9):
        raise ValueError(
            f"formant_window_length={window:g} s is too short for max_formant={ceiling:g} Hz "
            f"and max_number_of_formants={count:g}: Praat resamples to 2 x max_formant and "
            f"its window (2 x formant_window_length) must hold more than "
            f"2 x max_number_of_formants = {poles} samples; pass formant_window_length of "
            f"at least {shortest * (1 + 1e-6):.3g} s (Praat's default 0.025)")


def _check_tracks(tracks) -> tuple:
    if isinstance(tracks, str):
        tracks = (tracks,)
    try:
        names = tuple(tracks)
    except TypeError:
        raise TypeError(f"tracks must be a sequence of track names from {TRACK_NAMES}, got "
                        f"{tracks!r}") from None
    unknown = [t for t in names if t not in TRACK_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"tracks must be distinct names from {TRACK_NAMES} (at least one), got "
                         f"{list(names)}" + (f"; unknown: {unknown}" if unknown else ""))
    return tuple(t for t in TRACK_NAMES if t in names)  # the table's columns in one order


def utterance_tracks(wav: np.ndarray, tracks: Sequence[str], *, time_step: float,
                     pitch_floor: float, pitch_ceiling: float, intensity_minimum_pitch: float,
                     max_formant: float, max_number_of_formants: float,
                     formant_window_length: float) -> pd.DataFrame:
    """The track table of one 16 kHz waveform (arguments checked by the caller)."""
    pm = _parselmouth()
    n = int(wav.shape[0])
    win = int(round(time_step * SAMPLE_RATE))
    sound = pm.Sound(np.asarray(wav, dtype=np.float64), sampling_frequency=SAMPLE_RATE)
    duration = n / SAMPLE_RATE
    columns = {"start": np.zeros(0, np.int64), "end": np.zeros(0, np.int64),
               **{t: np.zeros(0) for t in tracks}}
    # The rows are the frames of Praat's pitch analysis, whose window is 3 periods of the
    # pitch floor: a sound shorter than that has no frame (Praat refuses to analyse it).
    if duration < 3.0 / pitch_floor:
        return pd.DataFrame(columns)
    pitch = sound.to_pitch_ac(time_step=time_step, pitch_floor=pitch_floor,
                              pitch_ceiling=pitch_ceiling)
    times = pitch.xs()
    # the window of frame k, centred at Praat's time x1 + k * dx, in whole samples: the
    # first from x1, the others a whole window further each, so rows never overlap
    first = int(math.floor(pitch.x1 * SAMPLE_RATE - win / 2 + 0.5))
    start = first + win * np.arange(len(times), dtype=np.int64)
    end = np.minimum(start + win, n)
    start = np.maximum(start, 0)
    keep = end > start
    columns["start"], columns["end"] = start, end
    if {"f0", "f0_semitones", "voicing"} & set(tracks):
        f0 = pitch.selected_array["frequency"].astype(np.float64)  # 0 Hz: unvoiced
        voiced = f0 > 0
        if "f0" in tracks:
            columns["f0"] = np.where(voiced, f0, np.nan)
        if "f0_semitones" in tracks:  # Praat's unit "semitones re 100 Hz"
            with np.errstate(divide="ignore", invalid="ignore"):
                columns["f0_semitones"] = np.where(voiced, 12.0 * np.log2(f0 / 100.0), np.nan)
        if "voicing" in tracks:
            columns["voicing"] = voiced.astype(np.float64)
    if "intensity" in tracks:
        columns["intensity"] = np.full(len(times), np.nan)
        if duration >= 6.4 / intensity_minimum_pitch:  # Praat's window, else no frame
            intensity = sound.to_intensity(minimum_pitch=intensity_minimum_pitch,
                                           time_step=time_step)
            # Praat's own "Get value at time" (cubic), NaN outside its frames; Praat's
            # -300 dB for a digitally silent window is no level: undefined (NaN), or it
            # would dominate every mean and regression over the track
            level = np.array([intensity.get_value(t) for t in times], dtype=np.float64)
            columns["intensity"] = np.where(level > SILENT_DB, level, np.nan)
    for name in ("f1", "f2"):
        if name in tracks:
            columns[name] = np.full(len(times), np.nan)
    if ("f1" in tracks or "f2" in tracks) and duration >= 2 * formant_window_length:
        formant = sound.to_formant_burg(time_step=time_step,
                                        max_number_of_formants=max_number_of_formants,
                                        maximum_formant=max_formant,
                                        window_length=formant_window_length)
        for k, name in ((1, "f1"), (2, "f2")):
            if name in tracks:  # Praat's "Get value at time" (linear), NaN where none
                columns[name] = np.array([formant.get_value_at_time(k, t) for t in times])
    table = pd.DataFrame(columns)
    return table[keep].reset_index(drop=True)


def add_acoustic_tracks(corpus: Corpus, tracks: Sequence[str] = DEFAULT_TRACKS, *,
                        time_step: float = 0.01, pitch_floor: float = 75.0,
                        pitch_ceiling: float = 600.0, intensity_minimum_pitch: float = 100.0,
                        max_formant: float = 5500.0, max_number_of_formants: float = 5.0,
                        formant_window_length: float = 0.025) -> Corpus:
    """A new corpus whose utterances carry acoustic ``tracks`` computed by Praat (through
    Parselmouth); the input corpus is not changed.

    Each utterance's ``tracks`` table has one row per frame of Praat's pitch analysis
    (``Sound: To Pitch (ac)``; frames every ``time_step``, centred in the sound, the first
    and last half window, 1.5 periods of ``pitch_floor``, having none): ``start, end``, the
    ``time_step`` window centred at the frame's time in 16 kHz samples (``end``
    exclusive, clipped to the audio), and one float64 column per track: ``f0`` (Hz, NaN
    where Praat finds the frame unvoiced), ``f0_semitones`` (not by default: the same
    F0 in semitones re 100 Hz, ``12 log2(f0 / 100)``, as phoneticians compare pitch), ``voicing`` (1.0 voiced, 0.0 unvoiced),
    ``intensity`` (dB re 2e-5 Pa, Praat's ``To Intensity`` with the mean subtracted,
    read at the frame's time with Praat's cubic interpolation; NaN where the audio is
    digitally silent (Praat's -300 dB) and outside Praat's intensity frames), ``f1``, ``f2`` (Hz,
    Praat's ``To Formant (burg)`` read at the frame's time with linear interpolation;
    NaN where Praat gives none). An utterance shorter than 3 periods of ``pitch_floor``
    gets an empty table. Defaults are Praat's except ``time_step`` (10 ms).

    Utterances are rebuilt with their audio shared (an in-memory ``wav`` array is the
    input's, not a copy), their alignments copied; a lazy :class:`FileUtterance`
    stays lazy (each file is read once here) and holds its tracks packed, one array
    per column, until ``tracks`` is read.

    Args:
        corpus: the :class:`Corpus` (in memory or lazy).
        tracks: which of :data:`~s3viz.data.tracks.TRACK_NAMES` to compute.
        time_step: seconds between frames, a whole number of 16 kHz samples (0.01 = 160).
        pitch_floor, pitch_ceiling: Hz, the pitch search range (Praat's 75 and 600).
        intensity_minimum_pitch: Hz, sets the intensity window, 3.2 periods of it (Praat's
            100).
        max_formant: Hz, the formant ceiling (Praat's 5500, for an adult female; 5000
            for an adult male).
        max_number_of_formants: formants searched below ``max_formant`` (Praat's 5).
        formant_window_length: seconds, the formant analysis window (Praat's 0.025).
    """
    if not isinstance(corpus, Corpus):
        raise TypeError(f"corpus must be an s3viz.data.Corpus, got {type(corpus).__name__}")
    names = _check_tracks(tracks)
    time_step = _positive(time_step, "time_step")
    win = time_step * SAMPLE_RATE
    if abs(win - round(win)) > 1e-6 or round(win) < 1:
        raise ValueError(f"time_step must be a whole number of 16 kHz samples (0.01 s = 160 "
                         f"samples), got {time_step!r} s = {win:g} samples")
    settings = dict(time_step=time_step, pitch_floor=_positive(pitch_floor, "pitch_floor"),
                    pitch_ceiling=_positive(pitch_ceiling, "pitch_ceiling"),
                    intensity_minimum_pitch=_positive(intensity_minimum_pitch,
                                                      "intensity_minimum_pitch"),
                    max_formant=_positive(max_formant, "max_formant"),
                    max_number_of_formants=_positive(max_number_of_formants,
                                                     "max_number_of_formants"),
                    formant_window_length=_positive(formant_window_length,
                                                    "formant_window_length"))
    if settings["pitch_ceiling"] <= settings["pitch_floor"]:
        raise ValueError(f"pitch_ceiling ({pitch_ceiling}) must exceed pitch_floor "
                         f"({pitch_floor})")
    if settings["max_formant"] >= SAMPLE_RATE / 2:
        raise ValueError(f"max_formant must be below the Nyquist frequency {SAMPLE_RATE // 2} "
                         f"Hz of 16 kHz audio, got {max_formant!r}")
    _check_formant_settings(settings)
    pm = _parselmouth()  # a missing package is reported before any audio is read
    out = []
    for u in corpus:
        try:
            table = utterance_tracks(u.wav, names, **settings)
        except pm.PraatError as err:  # a limit of Praat's not checked above
            raise ValueError(
                f"add_acoustic_tracks: Praat could not analyse utterance {u.id!r} "
                f"({u.num_samples} samples) with {settings}: "
                f"{' '.join(str(err).split())}; change the setting Praat names (or leave "
                f"the utterance out)") from err
        out.append(_with_tracks(u, table))
    result = Corpus(out, name=corpus.name)
    result.skipped = corpus.skipped.copy()
    return result


def _with_tracks(u: Utterance, table: pd.DataFrame) -> Utterance:
    """A new utterance like ``u`` with ``tracks`` (``u`` is not changed)."""
    phones = u._phones_view()  # (a lazy utterance's packed alignment stays packed)
    phones = None if phones is None else phones.copy()
    if isinstance(u, FileUtterance):
        new = FileUtterance(u.id, u.path, num_samples=u.num_samples, text=u.text,
                            speaker=u.speaker, phones=phones, labels=dict(u.labels),
                            allow_silence=u.allow_silence, tracks=table)
        new._pack_phones()
        new._pack_tracks()
        return new
    return Utterance(id=u.id, wav=u.wav, text=u.text, speaker=u.speaker, phones=phones,
                     labels=dict(u.labels), tracks=table)
