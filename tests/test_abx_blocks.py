"""ABX's blocked DTW: the anti-diagonal recursion, the length blocks and the cell sums
against one pair (or one triplet) at a time, on random lengths and tied distances."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3viz.measures.abx import (RATIO, _cell_sums, _chunks, _distance_matrix, _normalise,
                                _wavefront, dtw_costs)
from test_abx import _dtw_ref, _frame_dist


def _dtw_cells(dist: torch.Tensor, len1, len2) -> torch.Tensor:
    """The recursion cell by cell, row after row, every pair at once (one loop step per
    cell, as s3viz computed it before the anti-diagonals); an +inf border stands for the
    cells above row 0 and left of column 0."""
    s1, s2 = dist.shape[:2]
    cost = torch.full((s1 + 1, s2 + 1, *dist.shape[2:]), math.inf)
    steps = torch.zeros(cost.shape)
    cost[0, 0], steps[0, 0] = 0, 0  # the start, diagonal to cell (0, 0)
    for i, j in itertools.product(range(1, s1 + 1), range(1, s2 + 1)):
        diag, left, up = cost[i - 1, j - 1], cost[i, j - 1], cost[i - 1, j]
        pick = torch.where((diag <= left) & (diag <= up), 0, torch.where(left <= up, 1, 2))
        prev_c = torch.stack([diag, left, up]).gather(0, pick[None])[0]
        prev_s = torch.stack([steps[i - 1, j - 1], steps[i, j - 1],
                              steps[i - 1, j]]).gather(0, pick[None])[0]
        cost[i, j], steps[i, j] = dist[i - 1, j - 1] + prev_c, prev_s + 1
    a = torch.tensor(len1)[:, None].expand(len(len1), len(len2))
    b = torch.tensor(len2)[None, :].expand(len(len1), len(len2))
    n1, n2 = torch.meshgrid(torch.arange(len(len1)), torch.arange(len(len2)), indexing="ij")
    return cost[a, b, n1, n2] / steps[a, b, n1, n2]


def _tied_block(seed: int, len1, len2, levels: int) -> torch.Tensor:
    """``(S1, S2, n1, n2)`` distances drawn from ``levels`` values (ties everywhere when
    few), padding at 99."""
    rng = np.random.default_rng(seed)
    s1, s2 = max(len1), max(len2)
    d = torch.full((s1, s2, len(len1), len(len2)), 99.0)
    for a, b in itertools.product(range(len(len1)), range(len(len2))):
        d[: len1[a], : len2[b], a, b] = torch.from_numpy(
            rng.integers(0, levels, (len1[a], len2[b])).astype(np.float32) / 4)
    return d


lengths = st.lists(st.integers(1, 9), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(len1=lengths, len2=lengths, levels=st.sampled_from([2, 3, 1000]),
       seed=st.integers(0, 2 ** 16))
def test_anti_diagonals_equal_the_cell_by_cell_recursion_and_one_pair_at_a_time(
        len1, len2, levels, seed):
    d = _tied_block(seed, len1, len2, levels)
    got = dtw_costs(d, torch.tensor(len1), torch.tensor(len2))
    torch.testing.assert_close(got, _dtw_cells(d, len1, len2), rtol=0, atol=0)
    for a, b in itertools.product(range(len(len1)), range(len(len2))):
        ref = _dtw_ref(d[: len1[a], : len2[b], a, b].numpy())
        assert float(got[a, b]) == np.float32(ref)


@settings(max_examples=40, deadline=None)
@given(len1=lengths, len2=lengths, levels=st.sampled_from([2, 3, 1000]),
       seed=st.integers(0, 2 ** 16))
def test_the_mirror_is_the_dtw_of_the_swapped_items(len1, len2, levels, seed):
    """One pass gives both orders: the transposed distances under the same tie rule."""
    d = _tied_block(seed, len1, len2, levels)
    a, b = torch.tensor(len1), torch.tensor(len2)
    cost, mirror = _wavefront(d.permute(0, 2, 1, 3), a, b, both=True)
    swapped = dtw_costs(d.permute(1, 0, 3, 2), b, a)
    torch.testing.assert_close(cost, dtw_costs(d, a, b), rtol=0, atol=0)
    torch.testing.assert_close(mirror.T, swapped, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(lens=st.lists(st.integers(1, 40), min_size=1, max_size=200),
       budget=st.sampled_from([1, 5, 40, 10 ** 6]))
def test_length_blocks_pad_little_and_cover_every_item_once(lens, budget):
    lens = np.array(lens)
    chunks = _chunks(lens, budget)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lens)))
    padded = useful = 0
    for c in chunks:
        top = lens[c].max()
        assert top * len(c) <= RATIO * lens[c].sum() + 1e-9
        assert len(c) == 1 or top * len(c) <= budget
        padded += top * len(c)
        useful += lens[c].sum()
    # a block pads each side by at most RATIO: its DTW cells at most RATIO ** 2 <= 1.5
    assert padded <= RATIO * useful + 1e-9
    assert RATIO ** 2 <= 1.5


def _items(seed: int, n: int, dim: int = 5):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 12, n)
    frames = rng.standard_normal((int(lens.sum()), dim)).astype(np.float32)
    frames[rng.random(len(frames)) < 0.05] = 0  # zero frames: fastabx's largest angle
    start = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return torch.from_numpy(frames), start, lens


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), n=st.integers(1, 16), distance=st.sampled_from(
    ["cosine", "euclidean"]), symmetric=st.booleans())
def test_item_distances_equal_one_pair_at_a_time_at_any_block_size(seed, n, distance,
                                                                   symmetric):
    fx, sx, lx = _items(seed, n)
    fy, sy, ly = (fx, sx, lx) if symmetric else _items(seed + 1, n + 3)
    seen = [_normalise(f) if distance == "cosine" else f for f in (fx, fy)]
    mats = [_distance_matrix(seen[0], sx, lx, seen[1], sy, ly, distance, mb, symmetric)
            for mb in (1, 50, 2 ** 20)]
    # one answer at any block size, up to the rounding of the products: an angle near 0
    # has float32 acos's resolution, sqrt(2 * eps32) / pi ~ 1.6e-4 (nearly parallel frames)
    tol = 2e-4 if distance == "cosine" else 1e-6
    for m in mats[1:]:
        torch.testing.assert_close(m, mats[0], rtol=0, atol=tol)
    fx64, fy64 = fx.double().numpy(), fy.double().numpy()
    for a, b in itertools.product(range(len(lx)), range(len(ly))):
        xa, yb = fx64[sx[a]:sx[a] + lx[a]], fy64[sy[b]:sy[b] + ly[b]]
        if distance == "cosine" and not (np.abs(xa).sum(1).all() and np.abs(yb).sum(1).all()):
            continue  # a zero frame: _frame_dist has no angle for it
        want = _dtw_ref(_frame_dist(xa, yb, distance).astype(np.float32))
        assert abs(float(mats[-1][a, b]) - want) <= max(tol, 1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 16), nx=st.integers(1, 12), ny=st.integers(2, 12),
       num=st.integers(2, 4), symmetric=st.booleans(), max_block=st.sampled_from([1, 7, 10 ** 6]))
def test_cell_sums_equal_every_triplet_one_by_one(seed, nx, ny, num, symmetric, max_block):
    rng = np.random.default_rng(seed)
    if symmetric:
        nx = ny
    lab_y = rng.integers(0, num, ny)
    lab_x = lab_y.copy() if symmetric else rng.integers(0, num, nx)
    d = torch.from_numpy(rng.integers(0, 4, (nx, ny)).astype(np.float32))  # many ties
    if symmetric:
        d = torch.minimum(d, d.T)
    want = np.zeros((num, num))
    for x, a, b in itertools.product(range(nx), range(ny), range(ny)):
        if lab_y[a] != lab_x[x] or (symmetric and a == x):
            continue
        dax, dbx = float(d[x, a]), float(d[x, b])
        want[lab_x[x], lab_y[b]] += 1.0 if dax < dbx else 0.5 if dax == dbx else 0.0
    got = _cell_sums(d, lab_x, lab_y, num, symmetric, max_block)
    np.testing.assert_array_equal(got.numpy(), want)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), max_block=st.sampled_from([1, 30, 400, 5000]),
       symmetric=st.booleans())
def test_a_block_holds_at_most_max_block_frame_distances(seed, max_block, symmetric):
    """Each side of a block has at most sqrt(max_block) frames, or is one item."""
    from unittest import mock

    import s3viz.measures.abx as abx

    sizes, real = [], abx._block_distances

    def spy(fa, pos_a, fb, pos_b, distance):
        sizes.append((pos_a.numel(), pos_b.numel(), pos_a.shape[1], pos_b.shape[1]))
        return real(fa, pos_a, fb, pos_b, distance)

    f, start, lens = _items(seed, 25)
    with mock.patch.object(abx, "_block_distances", spy):
        abx._distance_matrix(f, start, lens, f, start, lens, "euclidean", max_block, symmetric)
    side = math.isqrt(max_block)
    for frames_a, frames_b, n1, n2 in sizes:
        assert frames_a <= side or n1 == 1
        assert frames_b <= side or n2 == 1
