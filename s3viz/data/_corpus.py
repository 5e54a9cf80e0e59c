"""The corpus types every s3viz analysis reads: :class:`Utterance` and :class:`Corpus`."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from ..interface import SAMPLE_RATE
from .alignments import check_phone_table
from .tracks import check_track_table

__all__ = ["Utterance", "FileUtterance", "Corpus", "PackedTable", "pack_table", "unpack_table"]


def _check_id(uid) -> str:
    if not isinstance(uid, str) or not uid:
        raise ValueError(f"Utterance id must be a non-empty str, got {uid!r}")
    return uid


@dataclass(eq=False)
class Utterance:
    """One utterance.

    Attributes:
        id: unique id within its corpus.
        wav: ``(num_samples,)`` float32 numpy array, mono, 16 kHz, in [-1, 1].
        text: transcript ("" when unknown).
        speaker: speaker label ("" when unknown).
        phones: alignment table ``phone, word, start, end`` (samples, ``end`` exclusive;
            optionally ``word_index``) or ``None``; checked when given or assigned, as
            every alignment is (``docs/alignment.md``); samples no row covers are
            unlabelled.
        labels: further per-utterance labels (e.g. from a labels CSV).
        tracks: continuous values over time (``start, end`` in samples, ``end``
            exclusive, one float64 column per track, NaN where undefined;
            :func:`~s3viz.data.add_acoustic_tracks` makes them) or ``None``; checked when
            given or assigned (:func:`~s3viz.data.tracks.check_track_table`), kept as a
            checked copy.
    """

    id: str
    wav: np.ndarray
    text: str = ""
    speaker: str = ""
    phones: Optional[pd.DataFrame] = None
    labels: Dict[str, object] = field(default_factory=dict)
    tracks: Optional[pd.DataFrame] = None

    def __post_init__(self):
        _check_id(self.id)
        wav = np.asarray(self.wav)
        if wav.ndim != 1:
            raise ValueError(
                f"Utterance {self.id!r}: wav must be 1-D (num_samples,), got shape {wav.shape}; "
                "convert with s3viz.audio.to_mono first")
        self.wav = np.ascontiguousarray(wav, dtype=np.float32)
        self.__dict__["_ready"] = True
        self.phones = self.phones  # checked now that the audio's length is known
        self.tracks = self.tracks

    def __setattr__(self, name, value):
        # every alignment and track table, given at construction or assigned later, is checked
        if name == "phones" and value is not None and self.__dict__.get("_ready"):
            if not isinstance(value, pd.DataFrame):
                raise TypeError(f"Utterance {self.id!r}: phones must be a pandas DataFrame or "
                                f"None, got {type(value).__name__}")
            value = check_phone_table(value, self.num_samples, f"Utterance {self.id!r}")
        if name == "tracks" and value is not None and self.__dict__.get("_ready"):
            value = check_track_table(value, self.num_samples, f"Utterance {self.id!r}")
        object.__setattr__(self, name, value)

    @property
    def num_samples(self) -> int:
        return int(self.wav.shape[0])

    def _content_key(self) -> bytes:  # what Corpus.fingerprint hashes for the audio
        return self.wav.tobytes()

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.num_samples / SAMPLE_RATE

    def _phones_view(self) -> Optional[pd.DataFrame]:
        """``phones`` for a pass over the corpus: a lazy utterance's packed alignment is
        rebuilt for the read and not kept (a DataFrame per utterance would make a large
        corpus's memory grow), and read only (edit ``phones``)."""
        return self.phones

    def _tracks_view(self) -> Optional[pd.DataFrame]:
        """``tracks`` for a pass over the corpus, as :meth:`_phones_view` gives ``phones``."""
        return self.tracks


class PackedTable:
    """An alignment table held as one array per column, strings interned.

    Written here because pandas has no compact frozen table: a 25-row DataFrame costs
    about 15 KiB of pandas objects, which a lazy corpus of many hours would hold per
    utterance (+320 MiB per process at 10 h); these arrays cost about the numbers.
    """

    __slots__ = ("schema", "arrays")
    _schemas: dict = {}  # every (columns, dtypes) seen, held once for the process

    def __init__(self, table: pd.DataFrame):
        key = (tuple(table.columns), tuple(table.dtypes))
        self.schema = self._schemas.setdefault(key, key)
        self.arrays = tuple(
            col.to_numpy(copy=True) if col.dtype.kind in "iufb" and isinstance(col.dtype, np.dtype)
            else np.array([sys.intern(v) if type(v) is str else v for v in col], dtype=object)
            for _, col in table.items())

    @staticmethod
    def fits(table: pd.DataFrame) -> bool:
        """Rebuilt equal from its columns alone: unique column names, a 0.. index, no attrs."""
        index = table.index
        return (not table.attrs and table.columns.is_unique
                and isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1)

    def table(self) -> pd.DataFrame:
        columns, dtypes = self.schema
        return pd.DataFrame({c: pd.Series(a, dtype=d, copy=True)
                             for c, a, d in zip(columns, self.arrays, dtypes)},
                            columns=list(columns))


def pack_table(table):
    """``table`` as a :class:`PackedTable` when it rebuilds equal from its columns, else as
    it is (None stays None): how a store keeps a large corpus's tracks."""
    if isinstance(table, pd.DataFrame) and PackedTable.fits(table):
        return PackedTable(table)
    return table


def unpack_table(held):
    """The DataFrame that :func:`pack_table` gave ``held`` for (a new one on every call)."""
    return held.table() if isinstance(held, PackedTable) else held


class FileUtterance(Utterance):
    """An :class:`Utterance` whose audio stays in its file: ``wav`` reads it (mono, 16 kHz)
    on every access and keeps nothing, so a corpus of these holds only metadata.
    ``num_samples`` (default: from the file's header) must match each read, else the
    file changed and the read raises. Other arguments as for :class:`Utterance`.

    An alignment given to :func:`~s3viz.data.load_folder` is held packed (one array per
    column) until ``phones`` is first read; that read builds the DataFrame and keeps it,
    so edits made in place stay, as on any :class:`Utterance`. The tracks that
    :func:`~s3viz.data.add_acoustic_tracks` gives are held packed the same way until
    ``tracks`` is first read.
    """

    def __init__(self, id: str, path, *, num_samples: Optional[int] = None, text: str = "",
                 speaker: str = "", phones: Optional[pd.DataFrame] = None,
                 labels: Optional[Dict[str, object]] = None, allow_silence: bool = False,
                 tracks: Optional[pd.DataFrame] = None):
        from ..audio import audio_file_length

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or Path), got {type(path).__name__}")
        self.path = os.fspath(path)
        self.allow_silence = bool(allow_silence)
        self._num_samples = (audio_file_length(self.path) if num_samples is None
                             else int(num_samples))
        if self._num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples!r}")
        self.id, self.text, self.speaker = _check_id(id), text, speaker
        self.__dict__["_ready"] = True
        self.phones, self.labels, self.tracks = phones, dict(labels or {}), tracks

    @property
    def wav(self) -> np.ndarray:
        from ..audio import load_audio

        wav = load_audio(self.path, allow_silence=self.allow_silence)
        if wav.shape[0] != self._num_samples:
            raise ValueError(
                f"audio file {self.path!r} (utterance {self.id!r}) now gives {wav.shape[0]} "
                f"samples at 16 kHz, but the corpus was built with {self._num_samples}: the file "
                "changed after loading; load the folder again")
        return wav

    @property
    def num_samples(self) -> int:
        return self._num_samples

    # ``phones`` and ``tracks`` are each held as a DataFrame (``_table``, ``_tracks``) or
    # packed (``_packed``, ``_tracks_packed``) until read
    def _read_table(self, key: str, packed_key: str) -> Optional[pd.DataFrame]:
        d = self.__dict__
        if d.get(packed_key) is not None:
            d[key], d[packed_key] = d[packed_key].table(), None
        return d.get(key)

    def _pack_table(self, key: str, packed_key: str) -> None:
        table = self.__dict__.get(key)
        if table is not None and PackedTable.fits(table):
            self.__dict__.update({key: None, packed_key: PackedTable(table)})

    def _view_table(self, key: str, packed_key: str) -> Optional[pd.DataFrame]:
        packed = self.__dict__.get(packed_key)
        return self._read_table(key, packed_key) if packed is None else packed.table()

    @property
    def phones(self) -> Optional[pd.DataFrame]:
        return self._read_table("_table", "_packed")

    @phones.setter
    def phones(self, table) -> None:  # checked by Utterance.__setattr__
        self.__dict__.update(_table=table, _packed=None)

    @property
    def tracks(self) -> Optional[pd.DataFrame]:
        return self._read_table("_tracks", "_tracks_packed")

    @tracks.setter
    def tracks(self, table) -> None:  # checked by Utterance.__setattr__
        self.__dict__.update(_tracks=table, _tracks_packed=None)

    def _pack_phones(self) -> None:
        """Hold the alignment packed until ``phones`` is read (what a large folder needs)."""
        self._pack_table("_table", "_packed")

    def _pack_tracks(self) -> None:
        """Hold the tracks packed until ``tracks`` is read."""
        self._pack_table("_tracks", "_tracks_packed")

    def _phones_view(self) -> Optional[pd.DataFrame]:
        return self._view_table("_table", "_packed")

    def _tracks_view(self) -> Optional[pd.DataFrame]:
        return self._view_table("_tracks", "_tracks_packed")

    def _content_key(self) -> bytes:  # the file's path, size and mtime (audio not read)
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise FileNotFoundError(f"audio file {self.path!r} (utterance {self.id!r}) is gone: "
                                    f"{err}") from None
        return f"{self.path}|{st.st_size}|{st.st_mtime_ns}|{self._num_samples}".encode()

    def __repr__(self) -> str:
        return (f"FileUtterance(id={self.id!r}, path={self.path!r}, "
                f"num_samples={self._num_samples}, speaker={self.speaker!r})")


class Corpus(Sequence[Utterance]):
    """A sized, iterable, indexable collection of :class:`Utterance` with unique ids.

    ``corpus[i]`` gives an utterance, ``corpus[a:b]`` or ``corpus[[i, j]]`` a
    sub-corpus, ``corpus.labels`` a DataFrame with one row per utterance,
    ``corpus.skipped`` the files a loader left out and the label or segment
    rows it ignored because they match no file (``file``, ``reason``; empty
    unless :func:`~s3viz.data.load_folder` ran with ``strict=False``).
    """

    def __init__(self, utterances: Iterable[Utterance], name: str = "corpus"):
        self._utts: List[Utterance] = list(utterances)
        self.name = name
        self.skipped = pd.DataFrame({"file": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
        seen = set()
        for u in self._utts:
            if not isinstance(u, Utterance):
                raise TypeError(f"Corpus items must be Utterance, got {type(u).__name__}")
            if u.id in seen:
                raise ValueError(f"duplicate utterance id {u.id!r} in corpus {name!r}")
            seen.add(u.id)

    def __len__(self) -> int:
        return len(self._utts)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self._utts)

    def __getitem__(self, index: Union[int, slice, Sequence[int]]):
        if isinstance(index, slice):
            return Corpus(self._utts[index], name=self.name)
        if isinstance(index, (list, tuple, np.ndarray)):
            return Corpus([self._utts[int(i)] for i in index], name=self.name)
        return self._utts[index]

    def __repr__(self) -> str:
        minutes = sum(u.num_samples for u in self._utts) / SAMPLE_RATE / 3600 * 60
        return (f"Corpus({self.name!r}, {len(self)} utterances, {minutes:.1f} min, "
                f"{len({u.speaker for u in self._utts})} speakers)")

    @property
    def ids(self) -> List[str]:
        return [u.id for u in self._utts]

    @property
    def labels(self) -> pd.DataFrame:
        """One row per utterance: ``id, speaker, text, num_samples`` and any extra labels."""
        rows = [{"id": u.id, "speaker": u.speaker, "text": u.text, "num_samples": u.num_samples,
                 **u.labels} for u in self._utts]
        return pd.DataFrame(rows, columns=None if rows else ["id", "speaker", "text", "num_samples"])

    def fingerprint(self) -> str:
        """A sha256 over ids, audio, texts, speakers, labels, alignments and tracks, computed
        anew on every call (an utterance edited in place, ``u.wav[:] += noise``, gets a new one).

        The audio of an in-memory :class:`Utterance` is hashed byte for byte; a lazy
        :class:`FileUtterance` is not read: its file's path, size and modification time
        stand for its content, so a file replaced in place is noticed unless the
        replacement keeps the old size and modification time (``cp -p``, ``touch -r``);
        then extract into a new ``cache_dir``.
        """
        h = hashlib.sha256()
        for u in self._utts:
            h.update(u.id.encode())
            h.update(u._content_key())
            h.update(repr((u.text, u.speaker, sorted(u.labels.items()))).encode())
            table = u._phones_view()
            if table is not None:
                h.update(table.to_csv(index=False).encode())
            tracks = u._tracks_view()
            if tracks is not None:  # (a corpus without tracks keeps its old fingerprint)
                h.update(f"tracks|{list(tracks.columns)}|{len(tracks)}|".encode())
                for _, col in tracks.items():  # checked int64 / float64 columns: exact bytes
                    h.update(np.ascontiguousarray(col.to_numpy()).tobytes())
        return h.hexdigest()
