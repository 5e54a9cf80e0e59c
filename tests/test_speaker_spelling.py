"""A speaker is one speaker however its label is spelled, in every measure that uses
speakers; a missing speaker is refused where speakers are used."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import s3viz
from s3viz.probe import probe_folds
from s3viz.segments import segment_store

PHONES = "abcdef"


def _store(speakers):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(len(PHONES), 4, generator=g, dtype=torch.float64) * 3
    hs, ph = [], []
    for u in range(len(speakers)):
        lab = [PHONES[(u + k) % len(PHONES)] for k in range(6)]
        x = torch.cat([means[PHONES.index(p)].expand(4, 4) for p in lab])
        hs.append([x + 2.5 * torch.randn(24, 4, generator=g, dtype=torch.float64)])
        ph.append(pd.DataFrame({"phone": lab, "word": "w", "start": [k * 1280 for k in range(6)],
                                "end": [(k + 1) * 1280 for k in range(6)]}))
    labels = pd.DataFrame({"id": [f"u{u}" for u in range(len(speakers))],
                           "speaker": pd.Series(speakers, dtype=object)})
    return s3viz.LayerStore.from_tensors(hs, downsample_rates=[320], phones=ph, labels=labels)


INTS = [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
MIXED = [1, 1.0, 1, 2, 2.0, 2, 3, np.float64(3), 3, 4, 4.0, np.int64(4)]


def test_abx_counts_one_speaker_per_value():
    a = s3viz.abx_layers(_store(INTS), device="cpu", return_cells=True)
    b = s3viz.abx_layers(_store(MIXED), device="cpu", return_cells=True)
    assert sorted(b.cells["speaker"].unique()) == ["1", "2", "3", "4"]
    assert 0.02 < a.table["abx_error"].iloc[0] < 0.45  # a measure that can move
    assert b.table["abx_error"].tolist() == pytest.approx(a.table["abx_error"].tolist())


def test_segment_folds_keep_a_speaker_in_one_fold():
    seg = segment_store(_store(MIXED), "phone", [0])
    folds = probe_folds(seg, folds=3, split_by="speaker")
    # the speaker as a number, whatever the store's spelling of it
    spk = pd.to_numeric(pd.Series(seg.labels["speaker"].to_numpy(), dtype=object)).to_numpy()
    for s in set(spk):
        assert folds.loc[spk == s, "fold"].nunique() == 1, s


@pytest.mark.parametrize("missing", [None, np.nan])
def test_a_missing_speaker_is_refused_where_speakers_are_used(missing):
    speakers = list(INTS)
    speakers[4] = missing
    store = _store(speakers)
    with pytest.raises(ValueError, match=r"have no speaker.*u4"):
        s3viz.abx_layers(store, across="speaker", device="cpu")
    with pytest.raises(ValueError, match=r"have no speaker.*u4"):
        s3viz.probe_layers(store, "phone", level="segment", split_by="speaker", folds=2,
                           device="cpu")
