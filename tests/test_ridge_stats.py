"""The ridge probe's statistics and penalty choice as the issue-32 speed-ups left them:
grouped sums equal the per-group sums, the ranking equals direct solves, and the
penalties chosen on seeded data are those chosen before (``docs/probes.md``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3viz.probe.ridge import LAMBDAS, ridge_fit_folds
from s3viz._numerics import cross_product
from s3viz.probe.stats import ProbeStats


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_product_is_a_transpose_b(dtype):
    x = torch.randn(300, 40, dtype=torch.float64).to(dtype)
    y = torch.randn(300, 7, dtype=torch.float64).to(dtype).requires_grad_(True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for v in (x, x[::2], x[:, 5:17], x[:0]):  # strided and empty views too
        g = cross_product(v)
        assert g.dtype == dtype and g.shape == (v.shape[1], v.shape[1])
        torch.testing.assert_close(g, v.T @ v, rtol=tol, atol=tol * 300)
        assert torch.equal(g, g.T)  # the symmetric update fills both triangles
        w = y[: v.shape[0]]
        torch.testing.assert_close(cross_product(v, w), (v.T @ w).detach(), rtol=tol,
                                   atol=tol * 300)


def _per_group_reference(x, y, g, groups, c, shift):
    """The sums of each group by boolean masks, the way ProbeStats.update took them."""
    out = []
    for k in range(groups):
        r = g == k
        xg = x[r] - shift
        yoh = torch.zeros(int(r.sum()), c, dtype=torch.float64)
        for b in range(y.shape[1]):
            yoh[torch.arange(yoh.shape[0]), y[r, b]] = 1.0
        out.append((int(r.sum()), xg.sum(0), xg.T @ xg, yoh.sum(0), xg.T @ yoh, yoh.sum(0)))
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 120), groups=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       chunks=st.integers(1, 4))
def test_grouped_update_equals_per_group_sums(n, groups, seed, chunks):
    """Rows of interleaved groups, added in chunks: each group's sums equal those of its
    rows alone (whatever the order the update gathers them in)."""
    rng = np.random.default_rng(seed)
    h, c = 7, 5
    x = torch.tensor(rng.normal(size=(n, h)) * rng.uniform(0.1, 10, h) + 3.0)
    y = torch.tensor(np.stack([rng.integers(0, 3, n), rng.integers(3, c, n)], 1))
    g = torch.tensor(rng.integers(0, groups, n))
    stats = ProbeStats.zeros(groups, h, c)
    for part in np.array_split(np.arange(n), chunks):
        p = torch.from_numpy(part)
        stats.update(x[p], y[p], g[p])
    ref = _per_group_reference(x, y, g, groups, c, stats.shift)
    for k, (cnt, sx, sxx, sy, sxy, syy) in enumerate(ref):
        assert int(stats.count[k]) == cnt
        for got, want in ((stats.sum_x[k], sx), (stats.sum_xx[k], sxx), (stats.sum_y[k], sy),
                          (stats.sum_xy[k], sxy), (stats.sum_yy[k], syy)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def test_dev_mse_equals_a_direct_solve_per_penalty():
    """The grid's dev errors from one float32 eigendecomposition equal, to float32
    rounding, those of a float64 solve of each penalty on standardised features."""
    rng = np.random.default_rng(1)
    n, h, c = 600, 12, 4
    x = rng.normal(size=(n, 3)) @ rng.normal(size=(3, h)) + 0.5 * rng.normal(size=(n, h)) + 20
    y = rng.integers(0, c, n)
    tr, dv = slice(0, 450), slice(450, n)
    train = ProbeStats.from_data(torch.tensor(x[tr]), torch.tensor(y[tr]), num_targets=c)
    dev = ProbeStats.from_data(torch.tensor(x[dv]), torch.tensor(y[dv]), num_targets=c)
    got = train.dev_mse(dev, LAMBDAS).double()
    mu, sd = x[tr].mean(0), x[tr].std(0)
    z, zd = (x[tr] - mu) / sd, (x[dv] - mu) / sd
    yoh, yd = np.eye(c)[y[tr]], np.eye(c)[y[dv]]
    for i, lam in enumerate(LAMBDAS):
        w = np.linalg.solve(z.T @ z / len(z) + lam * np.eye(h), z.T @ (yoh - yoh.mean(0)) / len(z))
        want = ((zd @ w + yoh.mean(0) - yd) ** 2).mean(0)
        np.testing.assert_allclose(got[i].numpy(), want, rtol=2e-4, atol=1e-6)


def _seeded_fits(folds, sub, h=24, c=5, n=900, seed=3):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    x = z @ rng.normal(size=(4, h)) + 0.3 * rng.normal(size=(n, h)) + 50.0
    x[:, :3] *= 1e-3  # features of unequal scales: the penalty acts on standardised ones
    y0 = np.argmax(z @ rng.normal(size=(4, c)) + rng.normal(size=(n, c)) * 2.0, 1)
    y1 = rng.integers(0, c, n) + c  # a control block of noise labels
    g = rng.integers(0, folds * sub, n)
    stats = ProbeStats.from_data(torch.tensor(x), torch.tensor(np.stack([y0, y1], 1)),
                                 torch.tensor(g), num_groups=folds * sub, num_targets=2 * c)
    return stats, ridge_fit_folds(stats, folds, sub, [slice(0, c), slice(c, 2 * c)], LAMBDAS)


@pytest.mark.parametrize("folds, sub, expected", [
    (5, 1, [[6, 11], [5, 11], [6, 9], [6, 11], [6, 8]]),
    (3, 1, [[6, 11], [6, 11], [6, 8]]),
    (2, 2, [[6, 9], [6, 9]]),
])
def test_chosen_penalties_unchanged_and_fits_equal_direct_solves(folds, sub, expected):
    """The grid indices each fold and block chose before the speed-ups (recorded from
    the code of then), and each fold's weights equal ProbeStats.solve at its penalty."""
    stats, models = _seeded_fits(folds, sub)
    assert [[LAMBDAS.index(v) for v in m[2]] for m in models] == expected
    for k, (w, b, chosen) in enumerate(models):
        train = stats.without(range(k * sub, (k + 1) * sub))
        for blk, lam in zip((slice(0, 5), slice(5, 10)), chosen):
            w_ref, b_ref = train.solve(lam)
            torch.testing.assert_close(w[:, blk], w_ref[:, blk], rtol=1e-8, atol=1e-10)
            torch.testing.assert_close(b[blk], b_ref[blk], rtol=1e-8, atol=1e-10)


def test_cross_product_reads_a_lazily_negated_view():
    x = torch.randn(50, 6)
    neg = torch._neg_view(-x)  # torch's negation bit, which numpy cannot read
    torch.testing.assert_close(cross_product(neg), x.T @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cross_product(x, neg), x.T @ x, rtol=1e-5, atol=1e-5)
