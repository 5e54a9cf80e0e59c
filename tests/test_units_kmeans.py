"""s3viz.units.kmeans and nearest: the fused, blocked assignment against a reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3viz.units import kmeans, nearest

# A distance from the expansion is kept only where it is above 1/32 of |x|^2 + |c|^2,
# whose rounding (a few eps of it) is then at most 32 * 4 * eps32 = 1.5e-5 of it.
RTOL = 32 * 4 * torch.finfo(torch.float32).eps


def _reference_nearest(x, c):
    """The assignment before the fused one (every distance from the differences)."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
    near = d.argmin(1)
    return near, (x - c[near]).pow(2).sum(1)


def _reference_step(x, cent, idx, dist):
    """Each centroid the mean of its rows; an empty one takes the farthest rows in turn."""
    order, used, new = torch.argsort(dist, descending=True), 0, cent.clone()
    for j in range(cent.shape[0]):
        rows = x[idx == j]
        if len(rows):
            new[j] = rows.mean(0)
        else:
            new[j], used = x[order[used]], used + 1
    return new, used > 0


def _reference_kmeans(x, k, iters, tol, seed):
    """s3viz's kmeans before the fused assignment: k-means++ from the differences, then
    Lloyd steps with every distance from the differences."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    cent = torch.empty(k, x.shape[1], dtype=x.dtype)
    best = torch.zeros(n, dtype=x.dtype)
    for j in range(k):
        w = best.double()
        pick = int(torch.multinomial(w / w.sum(), 1, generator=gen)) if float(w.sum()) > 0 \
            else int(torch.randint(n, (1,), generator=gen))
        cent[j] = x[pick]
        d = (x - cent[j]).pow(2).sum(1)
        best = d if j == 0 else torch.minimum(best, d)
    init, prev = cent.clone(), None
    for step in range(iters + 1):
        idx, dist = _reference_nearest(x, cent)
        inertia = float(dist.mean())
        if step == iters or (prev is not None and prev - inertia <= tol * max(prev, 1e-30)):
            break
        cent, reseeded = _reference_step(x, cent, idx, dist)
        prev = None if reseeded else inertia
    return init, cent, inertia


def _blobs(n=1500, d=12, blobs=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(blobs, d, generator=g) * 3
    x = centres[torch.randint(blobs, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return x - x.mean(0)


@pytest.mark.parametrize("k, iters, tol", [(8, 15, 0.0), (30, 50, 1e-4), (5, 0, 0.0)])
def test_kmeans_equals_the_reference(k, iters, tol):
    x = _blobs()
    init, cent_ref, inertia_ref = _reference_kmeans(x, k, iters, tol, seed=4)
    assert torch.equal(kmeans(x, k, iters=0, seed=4)[0], init)  # the same k-means++ rows
    cent, inertia = kmeans(x, k, iters=iters, tol=tol, seed=4)
    torch.testing.assert_close(cent, cent_ref, rtol=1e-5, atol=1e-5)
    assert inertia == pytest.approx(inertia_ref, rel=1e-5)


def test_init_is_where_lloyd_starts():
    x = _blobs()
    c0 = kmeans(x, 7, iters=0, seed=2)[0]
    assert torch.equal(kmeans(x, 7, iters=0, init=c0)[0], c0)
    fitted, inertia = kmeans(x, 7, iters=10, seed=2)
    again, inertia2 = kmeans(x, 7, iters=10, seed=99, init=c0)  # the seed then draws nothing
    assert torch.equal(fitted, again) and inertia == inertia2
    other = x[:7].clone()
    _, _, inertia_ref = _reference_kmeans_from(x, other, 10)
    assert kmeans(x, 7, iters=10, tol=0, init=other)[1] == pytest.approx(inertia_ref, rel=1e-5)
    assert torch.equal(other, x[:7])  # the caller's tensor is not moved


def _reference_kmeans_from(x, cent, iters):
    for _ in range(iters):
        cent = _reference_step(x, cent, *_reference_nearest(x, cent))[0]
    idx, dist = _reference_nearest(x, cent)
    return idx, cent, float(dist.mean())


@pytest.mark.parametrize("init", [torch.zeros(6, 12), torch.zeros(7, 11), torch.zeros(7),
                                  [[0.0] * 12] * 7])
def test_init_of_the_wrong_shape_is_refused(init):
    with pytest.raises(ValueError, match=r"init must be a \(7, 12\) tensor"):
        kmeans(_blobs(), 7, init=init)


def test_blocked_assignment_equals_one_block():
    x = _blobs(n=1001)
    c = x[torch.randperm(1001, generator=torch.Generator().manual_seed(1))[:13]]
    whole = nearest(x, c, block_bytes=1 << 40)
    for rows in (1, 7, 64, 1000, 1001):
        idx, dist = nearest(x, c, block_bytes=rows * 13 * 4)
        assert torch.equal(idx, whole[0])
        torch.testing.assert_close(dist, whole[1], rtol=RTOL, atol=0)  # BLAS's rounding
    assert kmeans(x, 13, iters=8, block_bytes=7 * 13 * 4)[1] == \
        pytest.approx(kmeans(x, 13, iters=8, block_bytes=1 << 40)[1], rel=1e-6)  # averaged


def test_a_far_row_and_its_own_centroid_get_exact_distances():
    """The expansion carries ``eps * |x|^2``: 1e5 ** 2 * 6e-8 = 600 for the far row, whose
    true distance to its own centroid is 0, against typical distances of about 12."""
    x = _blobs(n=400)
    x[17] = 1e5
    c = torch.cat([x[:5], x[17:18]])
    idx, dist = nearest(x, c)
    ref_idx, ref = _reference_nearest(x, c)
    assert torch.equal(idx, ref_idx)
    assert dist[17] == 0 and (dist[:5] == 0).all()
    torch.testing.assert_close(dist, ref, rtol=RTOL, atol=0)
    cent, inertia = kmeans(x, 6, iters=5, tol=0, seed=0)
    assert inertia == pytest.approx(_reference_kmeans(x, 6, 5, 0.0, 0)[2], rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 50), st.integers(1, 9), st.integers(1, 8), st.integers(1, 60),
       st.integers(0, 2 ** 16))
def test_each_row_goes_to_a_nearest_centroid_at_its_exact_distance(n, d, k, rows, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 10 ** torch.randint(-3, 4, (1,), generator=g)
    c = torch.cat([x[torch.randint(n, (min(k, n),), generator=g)],
                   torch.randn(k - min(k, n), d, generator=g)])
    idx, dist = nearest(x, c, block_bytes=rows * k * 4)
    exact = (x.double()[:, None, :] - c.double()[None]).pow(2).sum(2)
    best = exact.min(1).values
    chosen = exact.gather(1, idx[:, None]).squeeze(1)
    scale = (x.double() ** 2).sum(1) + (c.double() ** 2).sum(1).max()
    assert (chosen <= best + 1e-5 * scale).all()  # ties within rounding of the expansion
    torch.testing.assert_close(dist.double(), chosen, rtol=RTOL, atol=1e-30)


def test_no_rows_get_no_assignment():
    idx, dist = nearest(torch.zeros(0, 4), torch.ones(3, 4))
    assert idx.shape == dist.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_take_the_first_centroid_and_any_strides_or_grad_are_read(dtype):
    """The CPU path (numpy's product and argmin) as torch.min: the first of equal minima;
    a transposed view, a float64 input and one that requires grad read alike."""
    x = _blobs(n=300).to(dtype)
    c = torch.cat([x[:4], x[:4]])  # every centroid twice: rows 4..7 never win
    idx, dist = nearest(x, c)
    ref_idx, ref = _reference_nearest(x, c[:4])
    assert torch.equal(idx, ref_idx) and int(idx.max()) < 4
    strided = x.T.contiguous().T.requires_grad_(True)
    idx2, dist2 = nearest(strided, c.requires_grad_(True))
    assert torch.equal(idx2, idx) and dist2.dtype == dtype
    torch.testing.assert_close(dist2, dist, rtol=RTOL, atol=0)  # BLAS's order for the layout


def test_nearest_refuses_what_it_cannot_assign_and_reads_negated_views():
    x = _blobs(n=50)
    with pytest.raises(ValueError, match="x must be a 2-D floating-point tensor"):
        nearest(x[:, 0], x[:3])
    with pytest.raises(ValueError, match="c must be centroids of x's dtype and width"):
        nearest(x, x[:3].double())
    with pytest.raises(ValueError, match="c must be centroids of x's dtype and width"):
        nearest(x, x[:3, :5])
    neg = torch._neg_view(-x)  # torch's lazy negation bit, which numpy cannot read
    assert neg.is_neg()
    idx, dist = nearest(neg, x[:4])
    ref_idx, ref = _reference_nearest(x, x[:4])
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref, rtol=RTOL, atol=0)
    assert kmeans(neg, 3, iters=2, seed=0)[1] == pytest.approx(kmeans(x, 3, iters=2, seed=0)[1])
