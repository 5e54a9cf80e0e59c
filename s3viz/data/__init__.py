"""Corpora: the :class:`Utterance` and :class:`Corpus` types, the embedded synthetic
speech corpus and a loader for a folder of the user's own audio files."""

from __future__ import annotations

from ._corpus import PHONE_COLUMNS, Corpus, FileUtterance, Utterance
from .folder import load_folder
from .synthetic import SPEAKERS, default_cache_dir, make_sentences, synthetic_corpus

__all__ = [
    "Utterance",
    "FileUtterance",
    "Corpus",
    "PHONE_COLUMNS",
    "synthetic_corpus",
    "make_sentences",
    "SPEAKERS",
    "default_cache_dir",
    "load_folder",
]
