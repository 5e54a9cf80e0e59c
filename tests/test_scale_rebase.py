"""Layers whose scale changes across the corpus, and inputs at the edges of what the
fast paths take: right or refused (issue 32's review). A near-silent first utterance
must not fix a scale that makes later products overflow; a subnormal one must not
overflow the power of two; k-means and the ridge statistics take inputs that require
grad, and k-means refuses starting centroids Lloyd's definition cannot use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from s3viz._numerics import pow2_near, pow2_factor
from s3viz.probe import ProbeStats
from s3viz.similarity import CKAOptions, layer_similarity
from s3viz.store import LayerStore
from s3viz.units import kmeans


def _cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(a.T @ b) ** 2
                 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def _store(first_scale: float, dtype=torch.float32, frames=40):
    g = torch.Generator().manual_seed(0)
    hs = []
    for u in range(6):
        s = first_scale if u == 0 else 1e3
        a = torch.randn(frames, 8, generator=g, dtype=torch.float64) * s
        b = a @ torch.randn(8, 8, generator=g, dtype=torch.float64) + torch.randn(
            frames, 8, generator=g, dtype=torch.float64) * s
        hs.append([a.to(dtype), b.to(dtype)])
    ref = _cka(*(np.concatenate([h[i].double().numpy() for h in hs]) for i in (0, 1)))
    return LayerStore.from_tensors(hs, downsample_rates=[320, 320]), ref


@pytest.mark.parametrize("batch_frames", [None, 6, 40, 80])
def test_cka_after_a_near_silent_first_utterance_is_the_reference(batch_frames):
    st, ref = _store(1e-20)
    got = layer_similarity(st, device="cpu", method=CKAOptions(batch_frames=batch_frames))
    assert got.iloc[0, 1] == pytest.approx(ref, rel=1e-5)
    assert got.iloc[0, 0] == pytest.approx(1.0, rel=1e-6)


def test_minibatch_cka_after_a_near_silent_first_utterance_is_finite():
    st, _ = _store(1e-20)
    got = layer_similarity(st, device="cpu", method=CKAOptions("minibatch", 40))
    assert np.isfinite(got.to_numpy()).all()


@pytest.mark.parametrize("batch_frames", [6, 100])
def test_cka_with_a_subnormal_first_block_is_the_reference(batch_frames):
    g = torch.Generator().manual_seed(0)
    hs = []
    for u in range(4):
        z = torch.randn(6, 3, generator=g, dtype=torch.float64)
        l0 = (1e-300 + 1e-309 * z[:, :2] if u == 0
              else z[:, :2] + 0.3 * torch.randn(6, 2, generator=g, dtype=torch.float64))
        hs.append([l0, z @ torch.randn(3, 4, generator=g, dtype=torch.float64)])
    st = LayerStore.from_tensors(hs, downsample_rates=[320, 320])
    ref = _cka(*(np.concatenate([h[i].numpy() for h in hs]) for i in (0, 1)))
    got = layer_similarity(st, device="cpu", method=CKAOptions(batch_frames=batch_frames))
    assert got.iloc[0, 1] == pytest.approx(ref, rel=1e-6)


def test_powers_of_two_stay_finite_for_subnormal_values():
    for v in (1e-309, 5e-324, 1e-300):
        f = pow2_near(v)
        assert math.isfinite(f) and f > 0 and math.frexp(f)[0] == 0.5  # a power of two
        assert math.isfinite(pow2_factor(torch.full((4,), v, dtype=torch.float64)))


def test_kmeans_and_ridge_statistics_take_inputs_that_require_grad():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(1))
    c1, i1 = kmeans(x, 4, seed=0)
    c2, i2 = kmeans(x.clone().requires_grad_(), 4, seed=0)
    assert torch.equal(c1, c2) and i1 == i2
    y = torch.arange(60) % 3
    s1 = ProbeStats.from_data(x, y, num_targets=3)
    s2 = ProbeStats.from_data(x.clone().requires_grad_(), y, num_targets=3)
    assert torch.equal(s1.sum_xx, s2.sum_xx)


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k must be >= 1"),
    ({"k": 2.5}, "k must be a whole number"),
    ({"k": 3, "iters": -1}, "iters must be >= 0"),
    ({"k": 3, "init": torch.tensor([[1.0, 2, 3, 4]] * 3)}, "init rows 0 and 1 are the same"),
    ({"k": 3, "init": torch.full((3, 4), float("nan"))}, "NaN or infinite"),
    ({"k": 3, "init": torch.ones(3, 4, dtype=torch.bool)}, "real floating-point"),
    ({"k": 3, "init": torch.ones(3, 4, dtype=torch.complex64)}, "real floating-point"),
])
def test_kmeans_refuses_what_lloyd_cannot_use(kwargs, match):
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    with pytest.raises((ValueError, TypeError), match=match):
        kmeans(x, **kwargs)


def test_kmeans_refuses_rows_that_are_not_a_float_matrix():
    with pytest.raises(ValueError, match="x must be a 2-D floating-point tensor"):
        kmeans(torch.arange(10), 2)
