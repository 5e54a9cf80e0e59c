"""A lazy folder corpus holds its alignments packed (one array per column), so a run over
many hours does not hold a pandas DataFrame per utterance; reading ``phones`` gives the
same table as an eager load and keeps it, so edits in place stay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from s3viz.data import FileUtterance, load_folder, synthetic_corpus
from s3viz.interface import SAMPLE_RATE


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six synthetic utterances as WAV files with a segment-table CSV (seconds)."""
    root = tmp_path_factory.mktemp("lazyali")
    (root / "audio").mkdir()
    rows = []
    for u in synthetic_corpus(6, seed=3):
        sf.write(root / "audio" / f"{u.id}.wav", u.wav, SAMPLE_RATE, subtype="FLOAT")
        for r in u.phones.itertuples(index=False):
            rows.append((f"{u.id}.wav", r.start / SAMPLE_RATE, r.end / SAMPLE_RATE, r.phone,
                         r.word, r.word_index))
    pd.DataFrame(rows, columns=["file", "start", "end", "phone", "word", "word_index"]).to_csv(
        root / "ali.csv", index=False)
    return root


def _load(folder, lazy):
    return load_folder(folder / "audio", lazy=lazy, alignments=folder / "ali.csv")


def _packed(u) -> bool:
    return vars(u).get("_packed") is not None and vars(u).get("_table") is None


def test_packed_tables_read_back_equal_and_edits_stay(folder):
    lazy, eager = _load(folder, True), _load(folder, False)
    assert all(isinstance(u, FileUtterance) and _packed(u) for u in lazy)
    assert lazy.ids == eager.ids
    for a, b in zip(lazy, eager, strict=True):
        pd.testing.assert_frame_equal(a._phones_view(), b.phones)
        assert _packed(a)  # a pass's read keeps nothing
        pd.testing.assert_frame_equal(a.phones, b.phones)
        assert not _packed(a) and a.phones is a.phones  # the first read keeps the table
    # an edit in place stays and every reader sees it
    u = _load(folder, True)[0]
    before = _load(folder, True).fingerprint()
    u.phones.loc[1, "phone"] = "EDITED"
    assert u.phones.loc[1, "phone"] == "EDITED"
    assert u._phones_view().loc[1, "phone"] == "EDITED"
    # assigning a table checks it, as on any utterance
    with pytest.raises(ValueError, match="phones"):
        u.phones = pd.DataFrame({"phone": ["a"]})
    u.phones = None
    assert u.phones is None and u._phones_view() is None
    # the fingerprint reads the packed tables without unpacking them, and sees an edit
    again = _load(folder, True)
    assert again.fingerprint() == before and all(_packed(x) for x in again)
    again[2].phones.loc[0, "end"] += 1
    assert again.fingerprint() != before


def test_a_streamed_run_leaves_them_packed_with_the_eager_tables(folder):
    """Every measure of a stream reads the alignments without unpacking them, and gives the
    tables of the same run over the eager corpus."""
    from s3viz.measures import RidgeProbe, SegmentProbe, UnitQuality
    from s3viz.stream import stream_analysis
    from s3viz.upstreams import get_upstream

    upstream = get_upstream("tiny")
    lazy, eager = _load(folder, True), _load(folder, False)

    def measures():
        return [RidgeProbe("phone", folds=2), UnitQuality(k=4, iters=2),
                SegmentProbe("phone", folds=2)]

    got = stream_analysis(upstream, lazy, measures(), max_batch_seconds=4.0)
    assert all(_packed(u) for u in lazy)
    want = stream_analysis(upstream, eager, measures(), max_batch_seconds=4.0)
    for name in want.tables:
        pd.testing.assert_frame_equal(got.tables[name], want.tables[name])
    assert np.isfinite(got.tables["probe"]["accuracy"]).all()
