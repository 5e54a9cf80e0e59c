"""The embedded synthetic corpus (eSpeak NG) and the folder loader."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from s3viz.data import (
    PHONE_COLUMNS,
    SPEAKERS,
    Corpus,
    Utterance,
    default_cache_dir,
    load_folder,
    make_sentences,
    synthetic_corpus,
)
from s3viz.data import synthetic as syn

N_UTT = 16


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(scope="module")
def corpus(cache_dir):
    return synthetic_corpus(N_UTT, seed=0, cache_dir=cache_dir)


def _bytes(c: Corpus):
    return [u.wav.tobytes() for u in c]


# ---------------------------------------------------------------------------
# synthetic corpus: types, determinism, alignment
# ---------------------------------------------------------------------------

def test_corpus_types_and_labels(corpus):
    assert isinstance(corpus, Corpus) and len(corpus) == N_UTT
    assert corpus.ids == [f"utt{i:04d}" for i in range(N_UTT)]
    for u in corpus:
        assert isinstance(u, Utterance)
        assert u.wav.dtype == np.float32 and u.wav.ndim == 1
        assert 0.8 <= u.duration <= 3.5, (u.id, u.duration)
        assert np.all(np.isfinite(u.wav)) and 0.05 < np.abs(u.wav).max() <= 1.0
        assert u.text and u.speaker in SPEAKERS
        assert set(u.labels) >= {"sentence_id", "sentence_type", "voice", "gender"}
        assert u.labels["voice"] == SPEAKERS[u.speaker]["voice"]
    labels = corpus.labels
    assert list(labels["id"]) == corpus.ids
    assert {"speaker", "text", "num_samples", "sentence_id", "voice"} <= set(labels.columns)


def test_at_least_six_speakers(corpus):
    assert len({u.speaker for u in corpus}) >= 6
    assert len(SPEAKERS) >= 6
    specs = {(s["voice"], s["pitch"], s["rate"]) for s in SPEAKERS.values()}
    assert len(specs) == len(SPEAKERS)
    # speakers are balanced: the cyclic order gives every speaker 2 of 16 utterances
    assert corpus.labels["speaker"].value_counts().tolist() == [2] * 8


def test_same_seed_same_bytes(corpus):
    again = synthetic_corpus(N_UTT, seed=0, cache=False)
    assert _bytes(again) == _bytes(corpus)
    for a, b in zip(again, corpus):
        pd.testing.assert_frame_equal(a.phones, b.phones)
        assert (a.text, a.speaker, a.labels) == (b.text, b.speaker, b.labels)
    assert again.fingerprint() == corpus.fingerprint()


def test_different_seed_differs(corpus):
    other = synthetic_corpus(4, seed=1, cache=False)
    assert [u.text for u in other] != [u.text for u in corpus[:4]]
    assert _bytes(other) != _bytes(corpus[:4])


def test_phones_tile_each_utterance(corpus):
    marks = re.compile("[ˈˌːˑ',:]")
    for u in corpus:
        ph = u.phones
        assert list(ph.columns) == [*PHONE_COLUMNS, "word_index"]  # words numbered
        start, end = ph["start"].to_numpy(), ph["end"].to_numpy()
        assert start.dtype == np.int64 and end.dtype == np.int64
        assert start[0] == 0 and end[-1] == u.num_samples
        np.testing.assert_array_equal(start[1:], end[:-1])  # no gaps, no overlaps
        assert np.all(end > start)  # non-empty, sorted
        assert np.all((start >= 0) & (end <= u.num_samples))
        for p in ph["phone"]:
            assert isinstance(p, str) and p and not marks.search(p), (u.id, p)
        # no two silences in a row; silences carry no word
        is_sil = (ph["phone"] == "sil").to_numpy()
        assert not np.any(is_sil[1:] & is_sil[:-1])
        assert set(ph.loc[is_sil, "word"]) <= {""}
        assert ph["phone"].iloc[-1] == "sil"
        # the words, in order, are the words of the text
        word = list(ph["word"])
        words = [w for i, w in enumerate(word) if w and (i == 0 or word[i - 1] != w)]
        ref = [re.sub(r"[^a-z0-9']", "", w.lower()).strip("'") for w in u.text.split()]
        assert words == ref, (u.text, words)


def test_alignment_is_acoustically_plausible(corpus):
    """Silence segments are quiet and vowel segments loud (energy per segment)."""
    vowels = set("aeiouæɑɒɔəɛɜɪʊʌɚᵻɐ")
    rms = {"sil": [], "vowel": []}
    for u in corpus:
        for p, s, e in zip(u.phones["phone"], u.phones["start"], u.phones["end"]):
            r = float(np.sqrt(np.mean(u.wav[s:e].astype(np.float64) ** 2)))
            if p == "sil":
                rms["sil"].append(r)
            elif p[0] in vowels:
                rms["vowel"].append(r)
    assert len(rms["sil"]) >= N_UTT and len(rms["vowel"]) >= 4 * N_UTT
    assert np.median(rms["sil"]) < 0.05 * np.median(rms["vowel"])
    assert np.percentile(rms["vowel"], 5) > 10 * np.median(rms["sil"])


def test_phone_table_rules():
    """Unit test of the event -> segment rules on a hand-made event list."""
    wav = np.full(16000, 0.3, dtype=np.float32)
    wav[6000:6400] = 0.0  # a closure right before the stop event at 16 kHz sample 6400
    def to22(s16):
        return round(s16 * 22050 / 16000)

    events = [
        ["word", 10, 1, 5],
        ["phoneme", to22(1000), "h", "h"],
        ["phoneme", to22(2000), "ˈɛ", "'E"],
        ["phoneme", to22(3000), "", ";"],        # linking: merged into the previous phone
        ["phoneme", to22(4000), "l", "l"],
        ["phoneme", to22(4000), "oʊ", "oU"],     # zero-length "l": dropped
        ["phoneme", to22(5000), "", "_:"],       # pause
        ["phoneme", to22(5500), "", "_"],        # pause: merged with the one before
        ["word", to22(5700), 8, 2],
        ["phoneme", to22(5800), "ə", "@"],
        ["phoneme", to22(6400), "t", "t"],
        ["phoneme", to22(7000), "", "_"],
    ]
    rows = syn._phone_table(events, "Hello, at.", to22(16000), wav)
    df = pd.DataFrame(rows, columns=list(PHONE_COLUMNS) + ["word_index"])
    assert list(df["phone"]) == ["sil", "h", "ɛ", "oʊ", "sil", "ə", "t", "sil"]
    assert list(df["word_index"]) == [-1, 0, 0, 0, -1, 1, 1, -1]
    assert list(df["word"]) == ["", "hello", "hello", "hello", "", "at", "at", ""]
    assert list(df["start"]) == [0, 1000, 2000, 4000, 5000, 5800, 6000, 7000]
    assert list(df["end"]) == [1000, 2000, 4000, 5000, 5800, 6000, 7000, 16000]


def test_event_outside_audio_is_an_error():
    wav = np.full(1000, 0.1, dtype=np.float32)
    with pytest.raises(RuntimeError, match="outside"):
        syn._phone_table([["phoneme", 5000, "a", "a"]], "a", 1378, wav)


# ---------------------------------------------------------------------------
# sentences and speakers
# ---------------------------------------------------------------------------

def test_sentences_are_varied_and_held_out_unseen(corpus):
    texts = [u.text for u in corpus]
    assert len(set(texts)) == len(texts)
    train, test = set(texts[: N_UTT * 3 // 4]), set(texts[N_UTT * 3 // 4:])
    assert not train & test
    big = make_sentences(2000, seed=0)
    assert big["text"].is_unique and big["sentence_id"].is_unique
    assert set(big["sentence_type"]) == {"statement", "question", "command"}
    # a held-out fifth shares almost nothing with the rest
    seen = set(big["text"][:1600])
    assert sum(t in seen for t in big["text"][1600:]) == 0
    # prefix-stable and seeded
    pd.testing.assert_frame_equal(make_sentences(50, seed=0), big.iloc[:50])
    assert list(make_sentences(50, seed=1)["text"]) != list(big["text"][:50])
    assert sorted(corpus.labels["sentence_id"]) == list(big["sentence_id"][:N_UTT])


def test_repeated_sentences_use_different_speakers():
    plan = syn._plan(12, 0, syn._resolve_speakers(None), n_sentences=4)
    by_sentence = {}
    for p in plan:
        by_sentence.setdefault(p["sentence_id"], []).append(p["speaker"])
    assert len(by_sentence) == 4
    for speakers in by_sentence.values():
        assert len(speakers) == 3 and len(set(speakers)) == 3


def test_custom_speakers(tmp_path):
    c = synthetic_corpus(
        2, seed=3, cache_dir=tmp_path,
        speakers={"me": {"voice": "en-us+m4", "pitch": 30, "rate": 200}},
    )
    assert [u.speaker for u in c] == ["me", "me"]
    assert c[0].labels["voice"] == "en-us+m4" and c[0].labels["pitch"] == 30
    two = synthetic_corpus(2, seed=3, cache_dir=tmp_path, speakers=["spk02", "spk05"])
    assert {u.speaker for u in two} == {"spk02", "spk05"}


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(n_utterances=0), ValueError, "n_utterances"),
        (dict(n_utterances=2.5), ValueError, "n_utterances"),
        (dict(seed="0"), TypeError, "seed"),
        (dict(speakers=99), ValueError, "1..8"),
        (dict(speakers=["spk01", "nobody"]), ValueError, "nobody"),
        (dict(speakers={"x": {"pitch": 3}}), ValueError, "voice"),
        (dict(speakers={"x": {"voice": "en", "rate": 5}}), ValueError, "rate"),
        (dict(speakers="spk01"), TypeError, "speakers"),
        (dict(n_utterances=2, n_sentences=3), ValueError, "n_sentences"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    kwargs = {"n_utterances": 2, **kwargs}
    with pytest.raises(exc, match=match):
        synthetic_corpus(cache=False, **kwargs)


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(ValueError, match="no voice 'xx-nowhere'"):
        synthetic_corpus(1, cache=False, speakers={"x": {"voice": "xx-nowhere"}})


# ---------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------

def _cache_files(folder):
    return sorted(p for p in folder.iterdir() if p.suffix == ".npz")


def test_cache_hit_returns_identical_data_without_synthesis(corpus, cache_dir, monkeypatch):
    assert len(_cache_files(cache_dir)) >= 1

    def boom(*args, **kwargs):
        raise AssertionError("synthesized although the cache holds the corpus")

    monkeypatch.setattr(syn, "_run_espeak", boom)
    hit = synthetic_corpus(N_UTT, seed=0, cache_dir=cache_dir)
    assert hit.fingerprint() == corpus.fingerprint()
    assert _bytes(hit) == _bytes(corpus)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_cache_is_detected_and_regenerated(tmp_path, damage):
    first = synthetic_corpus(3, seed=7, cache_dir=tmp_path)
    (path,) = _cache_files(tmp_path)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 3] ^= 0xFF  # inside the stored audio: zip CRC or checksum catches it
    else:
        raw = bytearray(b"not a zip file at all")
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="corrupt synthetic corpus cache"):
        again = synthetic_corpus(3, seed=7, cache_dir=tmp_path)
    assert again.fingerprint() == first.fingerprint()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is valid again
        third = synthetic_corpus(3, seed=7, cache_dir=tmp_path)
    assert third.fingerprint() == first.fingerprint()


def test_checksum_catches_a_consistent_but_altered_file(tmp_path):
    synthetic_corpus(2, seed=8, cache_dir=tmp_path)
    (path,) = _cache_files(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["audio"] = arrays["audio"].copy()
    arrays["audio"][100] += 0.5  # a valid npz whose data no longer matches its checksum
    np.savez(path, **arrays)
    with pytest.warns(UserWarning, match="checksum"):
        synthetic_corpus(2, seed=8, cache_dir=tmp_path)


def test_interrupted_write_leaves_no_cache_file(tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(syn.np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        synthetic_corpus(1, seed=9, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("S3VIZ_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("S3VIZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "s3viz"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == __import__("pathlib").Path.home() / ".cache" / "s3viz"


def test_unwritable_cache_warns_and_still_returns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="could not write"):
        c = synthetic_corpus(1, seed=0, cache_dir=blocker / "sub")
    assert len(c) == 1


# ---------------------------------------------------------------------------
# load_folder
# ---------------------------------------------------------------------------

def _tone(n, rate, freq, channels=1, amp=0.5):
    t = np.arange(n) / rate
    sig = amp * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return sig
    return np.stack([sig * (1 + 0.2 * c) for c in range(channels)], axis=1)


@pytest.fixture()
def audio_folder(tmp_path):
    root = tmp_path / "mine"
    (root / "spk1").mkdir(parents=True)
    (root / "spk2").mkdir()
    stereo = (_tone(44100, 44100, 220, channels=2) * 32767).astype(np.int16)
    sf.write(root / "spk1" / "a.wav", stereo, 44100, subtype="PCM_16")
    sf.write(root / "spk1" / "b.flac", _tone(8000, 8000, 300), 8000)
    sf.write(root / "spk2" / "c.WAV", _tone(16000, 16000, 440), 16000, subtype="FLOAT")
    (root / "notes.txt").write_text("not audio")
    return root, stereo


def test_load_folder_round_trip(audio_folder, tmp_path):
    root, stereo = audio_folder
    csv = tmp_path / "labels.csv"
    pd.DataFrame({
        "file": ["spk1/a.wav", "./spk1/b.flac", "spk2/c.WAV"],
        "speaker": ["alice", "alice", "bob"],
        "text": ["hello", "", "world"],
        "emotion": ["happy", "sad", "happy"],
        "age": [31, 31, 40],
    }).to_csv(csv, index=False)
    c = load_folder(root, csv)
    assert c.ids == ["spk1/a", "spk1/b", "spk2/c"]
    assert [u.speaker for u in c] == ["alice", "alice", "bob"]
    assert [u.text for u in c] == ["hello", "", "world"]
    # every cell is read as the string written (no guessing of numbers)
    assert [u.labels for u in c] == [
        {"emotion": "happy", "age": "31"}, {"emotion": "sad", "age": "31"},
        {"emotion": "happy", "age": "40"}]
    assert list(c.labels.columns) == ["id", "speaker", "text", "num_samples", "emotion", "age"]
    assert [u.num_samples for u in c] == [16000, 16000, 16000]
    assert all(u.phones is None and u.wav.dtype == np.float32 for u in c)
    # reference: int16 -> float by 1/32768, average channels, libsoxr's one-shot resample
    # (s3viz streams through soxr, ending at ceil(n * 16000 / rate) where soxr rounds)
    import soxr

    ref = soxr.resample(((stereo.astype(np.float64) / 32768).mean(1)).astype(np.float32),
                        44100, 16000, quality="HQ")
    np.testing.assert_allclose(c[0].wav[: ref.size], ref, rtol=0, atol=1e-6)
    ref_b = soxr.resample(sf.read(root / "spk1" / "b.flac", dtype="float32")[0], 8000, 16000,
                          quality="HQ")
    np.testing.assert_allclose(c[1].wav[: ref_b.size], ref_b, rtol=0, atol=1e-6)
    assert c.name == "mine"


def test_load_folder_by_id_column_and_dataframe(audio_folder):
    root, _ = audio_folder
    labels = pd.DataFrame({"id": ["spk2/c", "spk1/b", "spk1/a"], "group": [1, 2, 3]})
    c = load_folder(root, labels)
    assert [u.labels["group"] for u in c] == [3, 2, 1]
    assert [u.speaker for u in c] == ["", "", ""]


def test_load_folder_without_labels_and_pattern(audio_folder):
    root, _ = audio_folder
    assert load_folder(root).ids == ["spk1/a", "spk1/b", "spk2/c"]
    assert load_folder(root, pattern="**/*.flac").ids == ["spk1/b"]
    assert load_folder(root, pattern=["spk1/*.wav", "spk2/*"]).ids == ["spk1/a", "spk2/c"]


def test_load_folder_csv_mismatches_name_the_files(audio_folder, tmp_path):
    root, _ = audio_folder
    extra = pd.DataFrame({"file": ["spk1/a.wav", "spk1/b.flac", "spk2/c.WAV", "spk3/zzz.wav"],
                          "x": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match=r"match no audio file.*spk3/zzz\.wav"):
        load_folder(root, extra)
    short = pd.DataFrame({"file": ["spk1/a.wav"], "x": [1]})
    with pytest.raises(ValueError, match=r"no row in labels_csv.*spk1/b\.flac.*spk2/c\.WAV"):
        load_folder(root, short)
    relaxed = load_folder(root, short.assign(), strict=False)
    assert [u.labels for u in relaxed] == [{"x": 1}, {}, {}]
    relaxed = load_folder(root, extra, strict=False)
    assert len(relaxed) == 3
    dup = pd.DataFrame({"file": ["spk1/a.wav", "spk1/a", "spk1/b.flac", "spk2/c.WAV"]})
    with pytest.raises(ValueError, match="several rows"):
        load_folder(root, dup)
    with pytest.raises(ValueError, match="'file' column"):
        load_folder(root, pd.DataFrame({"name": ["spk1/a.wav"]}))
    with pytest.raises(ValueError, match="reserved"):
        load_folder(root, pd.DataFrame({"id": ["spk1/a"], "num_samples": [3]}))
    with pytest.raises(FileNotFoundError, match="labels_csv"):
        load_folder(root, tmp_path / "nope.csv")
    with pytest.raises(TypeError, match="labels_csv"):
        load_folder(root, 42)


def test_load_folder_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_folder(tmp_path / "missing")
    f = tmp_path / "x.wav"
    sf.write(f, _tone(1600, 16000, 100), 16000)
    with pytest.raises(NotADirectoryError, match="load_audio"):
        load_folder(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_folder(empty)
    (empty / "a.mp4").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"\.mp4"):
        load_folder(empty)
    with pytest.raises(TypeError, match="path"):
        load_folder(None)
    clash = tmp_path / "clash"
    clash.mkdir()
    sf.write(clash / "a.wav", _tone(1600, 16000, 100), 16000)
    sf.write(clash / "a.flac", _tone(1600, 16000, 100), 16000)
    with pytest.raises(ValueError, match="clash"):
        load_folder(clash)


def test_load_folder_silent_file_is_named(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    sf.write(root / "quiet.wav", np.zeros(1600), 16000)
    with pytest.raises(ValueError, match=r"quiet\.wav.*all zeros"):
        load_folder(root)
    assert len(load_folder(root, allow_silence=True)) == 1


def test_full_scale_voice_is_scaled_back_into_range(tmp_path):
    """Seed 0 with 4 speakers has an utterance whose resampled audio overshot 1 (1.0008):
    it is scaled to a peak of exactly 1, so extraction never warns about it."""
    c = synthetic_corpus(12, seed=0, speakers=4, cache_dir=tmp_path)
    peaks = [float(np.abs(u.wav).max()) for u in c]
    assert max(peaks) <= 1.0
    assert max(peaks) > 0.999  # the loud one is scaled, not attenuated further


def test_load_folder_lazy_equals_eager(audio_folder, tmp_path):
    """lazy=True reads headers only; the audio, lengths and labels are the same. (The
    fingerprints differ by design: a lazy corpus's stands for its files by path, size and
    modification time instead of reading every file.)"""
    from s3viz.data import FileUtterance

    root, _ = audio_folder
    eager, lazy = load_folder(root), load_folder(root, lazy=True)
    assert all(isinstance(u, FileUtterance) for u in lazy)
    assert lazy.ids == eager.ids
    # 44.1 kHz, 8 kHz and 16 kHz files: the header length is the resampled length
    assert [u.num_samples for u in lazy] == [u.num_samples for u in eager]
    pd.testing.assert_frame_equal(lazy.labels, eager.labels)
    for a, b in zip(lazy, eager, strict=True):
        np.testing.assert_array_equal(a.wav, b.wav)
        assert "wav" not in vars(a)  # nothing kept after a read
    assert lazy.fingerprint() != eager.fingerprint()
    assert lazy.fingerprint() == load_folder(root, lazy=True).fingerprint()
    assert "path=" in repr(lazy[0])
    # a file that changes after loading is caught on read, not used silently
    sf.write(root / "spk2" / "c.WAV", _tone(8000, 16000, 440), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="changed"):
        _ = lazy[2].wav
    # silence is reported when the file is read
    quiet = tmp_path / "q"
    quiet.mkdir()
    sf.write(quiet / "z.wav", np.zeros(1600), 16000)
    (u,) = load_folder(quiet, lazy=True)
    with pytest.raises(ValueError, match="all zeros"):
        _ = u.wav
    assert load_folder(quiet, lazy=True, allow_silence=True)[0].wav.shape == (1600,)


def test_file_utterance_bad_input(tmp_path):
    from s3viz.data import FileUtterance

    with pytest.raises(TypeError, match="path"):
        FileUtterance("a", 3)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        FileUtterance("a", tmp_path / "missing.wav")
    f = tmp_path / "x.wav"
    sf.write(f, _tone(1600, 16000, 100), 16000)
    with pytest.raises(ValueError, match="non-empty"):
        FileUtterance("", f)
    with pytest.raises(ValueError, match="phones"):
        FileUtterance("a", f, phones=pd.DataFrame({"phone": ["a"]}))
    assert FileUtterance("a", f).num_samples == 1600


def test_public_names():
    from s3viz import data

    for name in ("Utterance", "Corpus", "PHONE_COLUMNS", "synthetic_corpus", "load_folder"):
        assert name in data.__all__ and hasattr(data, name)
    assert os.fspath(default_cache_dir())
