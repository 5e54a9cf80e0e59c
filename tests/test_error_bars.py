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
from s3viz.measures._abx_task import collapse

matplotlib.use("Agg")


SPEAKERS = _abx_case.SPEAKERS + ["spkD", "spkE"]  # a bootstrap takes >= 5 (MIN_UNITS)


@pytest.fixture(scope="module")
def abx_store():
    """The fixed ABX case with two more speakers: spkA's and spkB's utterances again,
    their frames shifted by a speaker offset of their own."""
    import torch

    from s3viz.store import LayerStore

    hidden, tables, labels = _abx_case.case()
    rng = np.random.default_rng(7)
    for new, old in (("spkD", "spkA"), ("spkE", "spkB")):
        offset = torch.tensor(rng.standard_normal(6) * 0.8, dtype=torch.float32)
        for i in np.flatnonzero(labels["speaker"].to_numpy() == old):
            hidden.append([h + offset for h in hidden[i]])
            tables.append(tables[i].copy())
            labels.loc[len(labels)] = {"id": f"{new}_{labels['id'][i].split('_')[1]}",
                                       "speaker": new}
    return LayerStore.from_tensors(hidden, downsample_rates=[_abx_case.RATE] * 2,
                                   labels=labels, phones=tables)


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
                                  speaker_x=f"{row.get('speaker_x', '')}#{j}"))
    return pd.DataFrame(parts)


@pytest.mark.parametrize("speaker", ["within", "across"])
def test_abx_replicates_are_the_error_of_resampled_speakers(abx_store, speaker):
    kw = {"by": "speaker"} if speaker == "within" else {"across": "speaker"}
    res, cells = abx_layers(abx_store, **kw, device="cpu", return_cells=True, bootstrap=100)
    cells = cells[cells["layer"] == 1].drop(columns=["layer", "upstream_layer"])
    boot = Bootstrap(SPEAKERS, "speaker", 100, seed=0)
    reps = res.attrs["bootstrap"]["replicates"][(1,)]["abx_error"]
    x_cols = ["speaker_x"] if speaker == "across" else []
    for r in range(12):
        if np.isnan(reps[r]):  # across, one speaker drawn: no cell
            assert speaker == "across" and (boot.counts[r] > 0).sum() == 1
            continue
        dup = _duplicated(cells, boot.counts[r], boot.names, speaker == "across")
        if speaker == "within":
            dup = dup.drop(columns="speaker_x")
        want = collapse(dup, [["speaker"]], x_cols)[0]
        assert reps[r] == pytest.approx(want, abs=1e-12)
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
    from s3viz.store import LayerStore

    hidden, tables, labels = _abx_case.case()
    st = LayerStore.from_tensors(hidden, downsample_rates=[320, 320],
                                 labels=labels.assign(speaker="spkA"), phones=tables)
    with pytest.raises(ValueError, match="resample speakers"):
        abx_layers(st, device="cpu", bootstrap=100)
    three = LayerStore.from_tensors(hidden, downsample_rates=[320, 320], labels=labels,
                                    phones=tables)
    with pytest.raises(ValueError, match="at least 5 speakers to resample \\(from 3"):
        abx_layers(three, device="cpu", bootstrap=100)


def test_unit_measures_of_many_tables_equal_one_at_a_time():
    from s3viz.measures.units import _measures_batch
    from s3viz.units import measures_from_counts

    rng = np.random.default_rng(0)
    joint = rng.poisson(2.0, size=(5, 4, 6)).astype(float)
    joint[1, 2] = 0  # a phone no frame has
    joint[2, :, 3] = 0  # a unit no frame has
    got = _measures_batch(joint)
    for r in range(5):
        want = measures_from_counts(joint[r])
        for m in ("phone_purity", "cluster_purity", "pnmi"):
            assert got[m][r] == pytest.approx(want[m], abs=1e-12)


def test_unit_quality_intervals(abx_store):
    plain = s3viz.unit_quality(abx_store, k=[4, 8], device="cpu")
    res = s3viz.unit_quality(abx_store, k=[4, 8], device="cpu", bootstrap=200)
    for m in ("phone_purity", "cluster_purity", "pnmi"):
        assert res[m].equals(plain[m])
        assert (res[f"{m}_lo"] <= res[f"{m}_hi"]).all()
        reps = np.stack([res.attrs["bootstrap"]["replicates"][(r.layer, r.k)][m]
                         for r in res.itertuples()])
        # a resample drawing every speaker once is the corpus: the point value
        counts = Bootstrap(SPEAKERS, "speaker", 200, seed=0).counts
        once = (counts == 1).all(1)
        assert once.any()
        np.testing.assert_allclose(reps[:, once], np.repeat(res[[m]].to_numpy(), once.sum(), 1),
                                   rtol=1e-12)
        # 5 speakers: a resample is one of 126 multisets of them
        assert len({tuple(np.round(r, 12)) for r in reps.T}) <= 126
    assert (res["resampled_by"] == "speaker").all()
    assert list(res.attrs["bootstrap"]["key"]) == ["layer", "k"]
    out = s3viz.compare_scores(res[res.k == 8], layers=(0, 1))
    assert out["score"].iat[0] == "pnmi" and len(out) == 1


def _bars(ax) -> int:
    from matplotlib.container import ErrorbarContainer

    return sum(isinstance(c, ErrorbarContainer) for c in ax.containers)


def test_plots_draw_intervals_when_the_table_has_them(abx_store):
    import matplotlib.pyplot as plt

    abx = abx_layers(abx_store, device="cpu", bootstrap=100)
    units = s3viz.unit_quality(abx_store, k=4, device="cpu", bootstrap=100)
    probe = pd.DataFrame({"layer": [0, 1], "target": "phone", "accuracy": [0.6, 0.7],
                          "accuracy_lo": [0.55, 0.62], "accuracy_hi": [0.66, 0.75]})
    for draw, with_bars, bars, without in (
            (s3viz.plot.abx_curve, abx, 1, abx.drop(columns=["abx_error_lo", "abx_error_hi"])),
            (s3viz.plot.unit_quality, units, 3, units.filter(regex="^(?!.*_(lo|hi)$)")),
            (s3viz.plot.probe_curve, probe, 1, probe[["layer", "target", "accuracy"]])):
        ax = draw(with_bars)
        assert _bars(ax) == bars, draw
        lo = ax.containers[0].lines[2][0].get_segments()[0][:, 1].min()
        plain = draw(without)
        assert _bars(plain) == 0
        caps = sum(len(c.lines[1]) for c in ax.containers)  # the bars' cap markers
        assert len(plain.lines) == len(ax.lines) - caps and lo > 0
        np.testing.assert_array_equal(plain.lines[0].get_ydata(), ax.lines[0].get_ydata())
        plt.close("all")
