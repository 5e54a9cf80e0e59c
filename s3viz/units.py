"""k-means units (:func:`kmeans`) and how well they match the phones (phone purity, cluster
purity, PNMI: Hsu et al. 2021), applied to every layer by :mod:`s3viz.measures.units`;
definitions: ``docs/measures.md``.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _validate as _v

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


# Bytes of one block's (rows, k) distance matrix: on a CPU about what its caches
# keep (the block is read back at once by the row minimum), on a GPU enough rows to
# fill it. Measured in benchmarks/peers/kmeans.py.
BLOCK_BYTES = {"cpu": 2 ** 19, "cuda": 2 ** 28}


def _block_rows(x: torch.Tensor, k: int, block_bytes: int | None) -> int:
    if block_bytes is None:
        block_bytes = BLOCK_BYTES.get(x.device.type, BLOCK_BYTES["cuda"])
    return max(1, int(block_bytes) // (k * x.element_size()))


def _squared_norms(x: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """``|x|^2`` of each row, a block of rows at a time (no ``x``-sized temporary)."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], rows):
        torch.linalg.vecdot(x[i:i + rows], x[i:i + rows], out=out[i:i + rows])
    return out


def _cluster_sums(x: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """``(k, d)`` sums of the rows of each cluster: a one-hot ``(k, n)`` sparse matrix
    times ``x``, which on a CPU takes half of ``index_add_``'s time (a scatter). The
    indices are valid by construction: torch's invariant checks are opted out of
    explicitly (else ``sparse.mm`` warns that they are implicitly off)."""
    n = x.shape[0]
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        onehot = torch.sparse_coo_tensor(
            torch.stack([idx, torch.arange(n, device=x.device)]),
            torch.ones(n, dtype=x.dtype, device=x.device), (k, n))
        return torch.sparse.mm(onehot, x)


def _exact_where_cancelled(x, c, near, est, xx, cc):
    """``est`` (``|x|^2 + |c|^2 - 2 x.c`` of each row's centroid ``near``) with the rows
    where the expansion lost more than 5 of float's bits (``est <= (|x|^2 + |c|^2) / 32``,
    e.g. a far row next to its own centroid) recomputed from ``x - c`` itself; in place."""
    bad = (est <= (xx + cc[near]) * 2.0 ** -5).nonzero().squeeze(1)
    if bad.numel():
        est[bad] = (x[bad] - c[near[bad]]).pow(2).sum(1)
    return est


def _float_matrix(t, name: str) -> None:
    """Refuse anything but a 2-D floating-point tensor for argument ``name``."""
    if not isinstance(t, torch.Tensor) or t.ndim != 2 or not t.is_floating_point():
        raise ValueError(f"{name} must be a 2-D floating-point tensor (frames, features), got "
                         f"{getattr(t, 'shape', type(t).__name__)} "
                         f"{getattr(t, 'dtype', '')}".rstrip())


def _nearest_numpy(x, c, cc, rows, idx, dist):
    """:func:`nearest`'s blocks on the CPU through numpy, written into ``idx`` and ``dist``
    (``|c|^2 - 2 x.c`` of the nearest centroid). Measured on one core (AMD EPYC): the
    matrix product of numpy's OpenBLAS ran 1.2x-1.5x torch's, and numpy's vectorised
    argmin 6x-16x torch's reduction with indices (scalar code on the CPU); both take
    the first of equal minima."""
    xn, ccn = x.numpy(), cc.numpy()
    m2ct = (c * -2).T.numpy()  # exact: a power of two
    idxn, distn = idx.numpy(), dist.numpy()
    buf = np.empty((rows, c.shape[0]), dtype=xn.dtype)
    for i in range(0, xn.shape[0], rows):
        xb = xn[i:i + rows]
        d = np.matmul(xb, m2ct, out=buf[:xb.shape[0]])
        d += ccn
        np.argmin(d, axis=1, out=idxn[i:i + rows])
        np.min(d, axis=1, out=distn[i:i + rows])  # the value at the argmin (a NaN alike)


def nearest(x: torch.Tensor, c: torch.Tensor, *, xx: torch.Tensor | None = None,
            block_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest centroid, squared distance) for each row of ``x``.

    The nearest centroid from ``|c|^2 - 2 x.c`` (one matrix product per block of
    rows); the distance ``|x|^2 + |c|^2 - 2 x.c``, except where that expansion cancels:
    it carries about ``eps * (|x|^2 + |c|^2)`` of rounding, which for a far row next to
    its centroid swamps every typical row's distance (and the inertia that decides
    convergence). A row whose distance is below 1/32 of ``|x|^2 + |c|^2`` gets it from
    ``x - c`` itself, so every distance keeps all but about 5 bits of float's precision.

    Args:
        x: ``(n, d)`` rows.
        c: ``(k, d)`` centroids.
        xx: ``(n,)`` squared norms of the rows, when the caller holds them (kmeans
            computes them once for all its steps); None computes them.
        block_bytes: memory of one block's ``(rows, k)`` distances; None:
            ``BLOCK_BYTES`` of the device type.
    """
    _float_matrix(x, "x")
    _float_matrix(c, "c")
    if c.dtype != x.dtype or c.shape[1] != x.shape[1]:
        raise ValueError(f"c must be centroids of x's dtype and width ({x.dtype}, "
                         f"{x.shape[1]} features), got {c.dtype}, {c.shape[1]}")
    # an assignment: nothing to differentiate; numpy cannot read a lazily negated view
    x, c = x.detach().resolve_neg(), c.detach().resolve_neg()
    n, k = x.shape[0], c.shape[0]
    if xx is None:
        xx = _squared_norms(x)
    cc = torch.linalg.vecdot(c, c)
    idx = torch.empty(n, dtype=torch.long, device=x.device)
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    rows = max(1, min(n, _block_rows(x, k, block_bytes)))
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        _nearest_numpy(x, c, cc, rows, idx, dist)
    else:
        buf = torch.empty(rows, k, dtype=x.dtype, device=x.device)  # one block's, reused
        for i in range(0, n, rows):
            xb = x[i:i + rows]
            d = torch.addmm(cc, xb, c.T, alpha=-2, out=buf[:xb.shape[0]])  # |c|^2 - 2 x.c
            torch.min(d, 1, out=(dist[i:i + rows], idx[i:i + rows]))
    dist += xx
    return idx, _exact_where_cancelled(x, c, idx, dist, xx, cc)


def _plusplus(x: torch.Tensor, k: int, seed: int, xx: torch.Tensor) -> torch.Tensor:
    """``k`` rows of ``x`` drawn by k-means++ (D^2 sampling; the first: uniform);
    ``xx``: the rows' squared norms. Each draw's distances are one matrix-vector
    product, protected as :func:`nearest`'s."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    cent = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    best = torch.zeros(n, dtype=x.dtype, device=x.device)
    zero = torch.zeros(n, dtype=torch.long, device=x.device)
    for j in range(k):
        w = best.double().cpu()
        pick = int(torch.multinomial(w / w.sum(), 1, generator=gen)) if float(w.sum()) > 0 \
            else int(torch.randint(n, (1,), generator=gen))
        cent[j] = x[pick]
        c = cent[j:j + 1]
        cc = torch.linalg.vecdot(c, c)
        d = torch.addmv(xx + cc, x, c[0], alpha=-2)
        d = _exact_where_cancelled(x, c, zero, d, xx, cc)
        best = d if j == 0 else torch.minimum(best, d)
    return cent


def kmeans(x: torch.Tensor, k: int, *, iters: int = 50, tol: float = 1e-4, seed: int = 0,
           init: torch.Tensor | None = None, block_bytes: int | None = None
           ) -> tuple[torch.Tensor, float]:
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
        block_bytes: memory of one block of the assignment's distances
            (:func:`nearest`); None: ``BLOCK_BYTES`` of the device type.

    Returns:
        ``(centroids (k, d), inertia)``: the mean squared distance to the nearest centroid.
        An emptied cluster is re-seeded with the row farthest from its centroid.
    """
    k, iters = _v.integer(k, "k", minimum=1), _v.integer(iters, "iters", minimum=0)
    _float_matrix(x, "x")
    x = x.detach().resolve_neg()  # not differentiable; numpy reads no lazily negated view
    n = x.shape[0]
    if k > n:
        raise ValueError(f"k={k} clusters need at least {k} frames, got {n}; lower k or "
                         "raise max_frames")
    xx = _squared_norms(x)  # once: every step's distances add it
    if init is not None:
        if not isinstance(init, torch.Tensor) or tuple(init.shape) != (k, x.shape[1]):
            got = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
            raise ValueError(f"init must be a ({k}, {x.shape[1]}) tensor of starting centroids "
                             f"(k, features of x), got {got}")
        if not init.is_floating_point() or init.is_meta:
            raise ValueError(f"init must hold real floating-point values, got {init.dtype}"
                             f"{' on the meta device' if init.is_meta else ''}")
        cent = init.detach().to(device=x.device, dtype=x.dtype, copy=True)
        if not bool(torch.isfinite(cent).all()):
            raise ValueError("init holds NaN or infinite values (in x's dtype); give finite "
                             "starting centroids")
        # two equal centroids tie on every row: rounding, not the data, would split
        # their rows, where Lloyd's definition empties one (and re-seeds it)
        _, inverse = torch.unique(cent, dim=0, return_inverse=True)
        if int(inverse.max()) + 1 < k:
            first = {}
            i, j = next((first[v], r) for r, v in enumerate(inverse.tolist())
                        if first.setdefault(v, r) != r)
            raise ValueError(f"init rows {i} and {j} are the same centroid; give k distinct "
                             "starting centroids")
    else:
        cent = _plusplus(x, k, seed, xx)
    prev = None
    for step in range(iters + 1):
        idx, dist = nearest(x, cent, xx=xx, block_bytes=block_bytes)
        inertia = float(dist.mean())  # of the current centroids
        if step == iters or (prev is not None and prev - inertia <= tol * max(prev, 1e-30)):
            break
        prev = inertia
        sums = _cluster_sums(x, idx, k)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        empty = counts == 0
        cent = torch.where(empty[:, None], cent, sums / counts.clamp_min(1)[:, None])
        if bool(empty.any()):
            far = torch.argsort(dist, descending=True)[: int(empty.sum())]
            cent[empty] = x[far]
            prev = None  # re-seeded: not converged
    return cent, inertia
