"""Corpora: the :class:`Utterance` and :class:`Corpus` types, the embedded synthetic
speech corpus, acoustic tracks computed by Praat (:func:`add_acoustic_tracks`), loaders for the user's own audio with its forced alignments (a folder with
TextGrids, TIMIT) and an exporter to the MFA and TIMIT layouts."""

from __future__ import annotations

from ._corpus import Corpus, FileUtterance, Utterance
from .acoustic import add_acoustic_tracks
from .alignments import PHONE_COLUMNS, AlignmentError
from .folder import load_folder
from .formats import export_corpus, load_timit
from .synthetic import SPEAKERS, default_cache_dir, make_sentences, synthetic_corpus

__all__ = ["Utterance", "FileUtterance", "Corpus", "PHONE_COLUMNS", "synthetic_corpus",
           "make_sentences", "SPEAKERS", "default_cache_dir", "load_folder", "load_timit",
           "export_corpus", "AlignmentError", "add_acoustic_tracks"]
