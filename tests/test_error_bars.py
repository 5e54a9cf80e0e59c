"""Error bars of the measures (issue 29): ABX, unit quality and CKA with bootstrap=,
their replicates against a brute force on resampled data, and the plots' intervals."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

import _abx_case
import s3viz
from s3viz._bootstrap import Bootstrap
from s3viz.abx import abx_layers
from s3viz.measures.abx import _collapse, _resampled_errors

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def abx_store():
    return _abx_case.store()


def _duplicated(cells: pd.DataFrame, counts: np.ndarray, names, across: bool) -> pd.DataFrame:
    """The cells of a resample: each drawn speaker's cells once per draw, as a new speaker
    (across: a cell (s, x) once per pair of copies)."""
    at = {n: i for i, n in enumerate(names)}
    parts = []
    for _, row in cells.iterrows():
        cs = int(counts[at[row["speaker"]]])
        cx = int(counts[at[row["speaker_x"]]]) if across else 1
        for i in range(cs):
            for j in range(cx):
                parts.append(dict(row, speaker=f"{row['speaker']}#{i}",
                                  speaker_x=f"{row['speaker_x']}#{j}"))
    return pd.DataFrame(parts)


@pytest.mark.parametrize("speaker", ["within", "across"])
def test_abx_replicates_are_the_error_of_resampled_speakers(abx_store, speaker):
    res, cells = abx_layers(abx_store, speaker=speaker, device="cpu", return_cells=True,
                            bootstrap=100)
    cells = cells[cells["layer"] == 1]
    boot = Bootstrap(_abx_case.SPEAKERS, "speaker", 100, seed=0)
    reps = _resampled_errors(cells, boot, speaker == "across")
    assert np.array_equal(reps, res.attrs["bootstrap"]["replicates"][(1,)]["abx_error"],
                          equal_nan=True)
    for r in range(6):
        if np.isnan(reps[r]):  # across, one speaker drawn: no cell
            assert (boot.counts[r] > 0).sum() == 1
            continue
        want = _collapse(_duplicated(cells, boot.counts[r], boot.names, speaker == "across"))
        assert reps[r] == pytest.approx(want, abs=1e-12)
    boot.counts = np.ones((1, 3))  # every speaker once: the point value
    assert _resampled_errors(cells, boot, speaker == "across")[0] == pytest.approx(
        res["abx_error"].iat[1], abs=1e-12)
    lo, hi = res["abx_error_lo"].to_numpy(), res["abx_error_hi"].to_numpy()
    assert (lo <= hi).all() and (res["resampled_by"] == "speaker").all()


def test_abx_without_bootstrap_is_unchanged(abx_store):
    plain = abx_layers(abx_store, device="cpu")
    boot = abx_layers(abx_store, device="cpu", bootstrap=100)
    assert "bootstrap" not in plain.attrs and "abx_error_lo" not in plain.columns
    assert boot["abx_error"].equals(plain["abx_error"])
    out = s3viz.compare_scores(boot, layers=(1, 0))
    assert out["difference"].iat[0] == pytest.approx(
        plain["abx_error"].iat[1] - plain["abx_error"].iat[0])


def test_abx_bootstrap_refusals(abx_store):
    with pytest.raises(ValueError, match="at least 100"):
        abx_layers(abx_store, device="cpu", bootstrap=10)
    one = abx_store.labels.assign(speaker="spkA")
    from s3viz.store import LayerStore

    hidden, tables, _ = _abx_case.case()
    st = LayerStore.from_tensors(hidden, downsample_rates=[320, 320], labels=one, phones=tables)
    with pytest.raises(ValueError, match="resample speakers"):
        abx_layers(st, device="cpu", bootstrap=100)
