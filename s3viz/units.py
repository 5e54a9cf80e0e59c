"""k-means units (:func:`kmeans`) and how well they match the phones (phone purity, cluster
purity, PNMI: Hsu et al. 2021), applied to every layer by :mod:`s3viz.measures.units`;
definitions: ``docs/measures.md``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["kmeans", "measures_from_counts", "unit_measures"]


def unit_measures(phones, units) -> dict:
    """Phone purity, cluster purity and PNMI of unit labels against phone labels.

    Args:
        phones: ``(n,)`` phone label of each frame (any hashable values).
        units: ``(n,)`` unit (cluster) of each frame.

    Returns:
        ``{"phone_purity", "cluster_purity", "pnmi", "n_frames", "n_phones", "n_units"}``
        (``docs/measures.md``; natural logarithms, which cancel in the ratio).
    """
    phones, units = np.asarray(phones), np.asarray(units)
    if phones.shape != units.shape or phones.ndim != 1:
        raise ValueError(f"phones and units must be 1-D of one length, got {phones.shape} "
                         f"and {units.shape}")
    if not len(phones):
        raise ValueError("no frames: phones and units are empty")
    _, y = np.unique(phones, return_inverse=True)
    _, z = np.unique(units, return_inverse=True)
    counts = np.zeros((y.max() + 1, z.max() + 1))
    np.add.at(counts, (y, z), 1.0)
    return measures_from_counts(counts)


def measures_from_counts(counts) -> dict:
    """:func:`unit_measures` from a phone x unit table of frame counts (rows or columns
    of zeros are phones or units no frame has; they change nothing).

    Args:
        counts: ``(num_phones, num_units)``: how many frames of each phone each unit holds.
    """
    joint = np.asarray(counts, dtype=np.float64)
    n = joint.sum()
    joint = joint / n
    py, pz = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(py, pz)[nz])).sum())
    p = py[py > 0]
    h_y = float(-(p * np.log(p)).sum())
    return {
        "phone_purity": float(joint.max(0).sum()),
        "cluster_purity": float(joint.max(1).sum()),
        "pnmi": mi / h_y if h_y > 0 else float("nan"),
        "n_frames": int(round(n)), "n_phones": int((py > 0).sum()),
        "n_units": int((pz > 0).sum()),
    }


def nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = 16384):
    """(index of the nearest centroid, squared distance) for each row of ``x``.

    The nearest centroid from ``|x|^2 - 2 x.c + |c|^2`` (one matrix product), its
    distance from ``x - c`` itself: the expansion cancels ``eps * |x|^2``, which for a
    far row swamps every typical row's distance (and the inertia that decides convergence)."""
    cc = (c * c).sum(1)
    idx = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk]
        d = (xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + cc
        near = d.argmin(1)
        idx[i:i + chunk] = near
        dist[i:i + chunk] = (xb - c[near]).pow(2).sum(1)
    return idx, dist


def kmeans(x: torch.Tensor, k: int, *, iters: int = 50, tol: float = 1e-4, seed: int = 0,
           init: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """k-means++ (or the given centroids) then Lloyd iterations on the rows of ``x``
    (on its device).

    Args:
        x: ``(n, d)`` float rows (centred by the caller for precision).
        k: clusters.
        iters, tol: at most ``iters`` Lloyd steps; stop when the inertia improves
            by less than ``tol`` (relative).
        seed: seed of the k-means++ draws.
        init: ``(k, d)`` starting centroids, or None to draw them by k-means++
            (``kmeans(x, k, iters=0, seed=s)`` returns those draws).

    Returns:
        ``(centroids (k, d), inertia)``: the mean squared distance to the nearest centroid.
        An emptied cluster is re-seeded with the row farthest from its centroid.
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"k={k} clusters need at least {k} frames, got {n}; lower k or "
                         "raise max_frames")
    if init is not None:
        if not isinstance(init, torch.Tensor) or tuple(init.shape) != (k, x.shape[1]):
            got = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
            raise ValueError(f"init must be a ({k}, {x.shape[1]}) tensor of starting centroids "
                             f"(k, features of x), got {got}")
        cent = init.to(device=x.device, dtype=x.dtype, copy=True)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        cent = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
        best = torch.zeros(n, dtype=x.dtype, device=x.device)  # D^2 sampling (the first: uniform)
        for j in range(k):
            w = best.double().cpu()
            pick = int(torch.multinomial(w / w.sum(), 1, generator=gen)) if float(w.sum()) > 0 \
                else int(torch.randint(n, (1,), generator=gen))
            cent[j] = x[pick]
            d = (x - cent[j]).pow(2).sum(1)  # from the differences, not the expansion (see nearest)
            best = d if j == 0 else torch.minimum(best, d)
    prev = None
    for step in range(iters + 1):
        idx, dist = nearest(x, cent)
        inertia = float(dist.mean())  # of the current centroids
        if step == iters or (prev is not None and prev - inertia <= tol * max(prev, 1e-30)):
            break
        prev = inertia
        sums = torch.zeros_like(cent).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        empty = counts == 0
        cent = torch.where(empty[:, None], cent, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):
            far = torch.argsort(dist, descending=True)[: int(empty.sum())]
            cent[empty] = x[far]
            prev = None  # re-seeded: not converged
    return cent, inertia
