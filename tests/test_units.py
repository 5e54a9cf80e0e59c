"""unit_quality: k-means units of each layer against the phones (purities, PNMI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score

import _abx_case
from s3viz import unit_quality
from s3viz.units import kmeans, unit_measures


def test_measures_equal_a_direct_computation_and_scikit_learn():
    rng = np.random.default_rng(0)
    phones = rng.choice(["a", "e", "i", "o", "sil"], size=3000, p=[0.3, 0.2, 0.2, 0.1, 0.2])
    units = np.where(rng.random(3000) < 0.6, np.searchsorted(["a", "e", "i", "o", "sil"], phones),
                     rng.integers(0, 12, size=3000))
    m = unit_measures(phones, units)
    table = np.zeros((5, 12))
    for p, u in zip(np.searchsorted(["a", "e", "i", "o", "sil"], phones), units):
        table[p, u] += 1
    assert m["phone_purity"] == pytest.approx(table.max(0).sum() / 3000)
    assert m["cluster_purity"] == pytest.approx(table.max(1).sum() / 3000)
    h_y = entropy(np.unique(phones, return_counts=True)[1])
    assert m["pnmi"] == pytest.approx(mutual_info_score(phones, units) / h_y, rel=1e-10)
    assert (m["n_frames"], m["n_phones"], m["n_units"]) == (3000, 5, 12)


def test_measures_at_their_extremes():
    phones = np.array(list("aabbbccd"))
    same = unit_measures(phones, phones)
    assert same["phone_purity"] == same["cluster_purity"] == pytest.approx(1.0)
    assert same["pnmi"] == pytest.approx(1.0)
    one = unit_measures(phones, np.zeros(8, dtype=int))
    assert one["pnmi"] == pytest.approx(0.0, abs=1e-12)
    assert one["phone_purity"] == pytest.approx(3 / 8)  # the most frequent phone
    assert one["cluster_purity"] == pytest.approx(1.0)  # every phone in the one unit
    with pytest.raises(ValueError, match="one length"):
        unit_measures(phones, phones[:3])


def test_kmeans_finds_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 5, generator=gen) * 10
    lab = torch.arange(6).repeat_interleave(200)
    x = centres[lab] + torch.randn(1200, 5, generator=gen) * 0.5
    cent, inertia = kmeans(x - x.mean(0), 6, seed=3)
    from s3viz.units import nearest

    units, _ = nearest(x - x.mean(0), cent)
    assert unit_measures(lab.numpy(), units.numpy())["pnmi"] == pytest.approx(1.0)
    assert inertia == pytest.approx(5 * 0.25, rel=0.15)  # the noise variance per frame
    with pytest.raises(ValueError, match="at least 7 frames"):
        kmeans(x[:6], 7)


@pytest.fixture(scope="module")
def store():
    return _abx_case.store()


def test_unit_quality_table(store):
    res = unit_quality(store, k=[4, 8], device="cpu")
    assert list(res["layer"]) == [0, 0, 1, 1] and list(res["k"]) == [4, 8, 4, 8]
    for col in ("phone_purity", "cluster_purity", "pnmi"):
        assert res[col].between(0, 1).all()
    n_lab = int((store.frame_labels(0) != "").sum())
    assert (res["n_frames"] == n_lab).all()
    assert (res["n_phones"] == 5).all()  # a, i, s, t and silence
    assert (res["n_units"] <= res["k"]).all()
    again = unit_quality(store, k=[4, 8], device="cpu")
    np.testing.assert_array_equal(res["pnmi"], again["pnmi"])  # seeded
    # the made-up phones are far apart in layer 0: 8 units must carry most of them
    assert res["pnmi"].iat[1] > 0.5
    sub = unit_quality(store, k=4, max_frames=50, device="cpu", layers=[0])
    assert len(sub) == 1 and sub["n_frames"].iat[0] == n_lab


@pytest.mark.parametrize("kw, exc, match", [
    ({"k": 1}, ValueError, "k must be >= 2"),
    ({"k": []}, ValueError, "non-empty list"),
    ({"k": 10 ** 6}, ValueError, "fewer than k"),
    ({"max_frames": 0}, ValueError, "max_frames must be >= 2"),
    ({"k": 40, "max_frames": 20}, ValueError, "raise max_frames"),
    ({"layers": [9]}, IndexError, "layer"),
])
def test_unit_quality_bad_arguments(store, kw, exc, match):
    with pytest.raises(exc, match=match):
        unit_quality(store, device="cpu", **kw)
