"""How well k-means units of each layer match the phones (the HuBERT paper's measures).

:func:`unit_quality` clusters each layer's frames with k-means (batched on the
device) and reports phone purity, cluster purity and PNMI from the phone x unit
contingency table (Hsu et al. 2021), fitted on a seeded sample of
``max_frames`` frames and counted over every labelled frame. Definitions:
``docs/measures.md``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from . import _validate as _v
from ._device import resolve_device as _resolve_device
from ._numerics import (Moments, float32_squares_span, read_dtype, row_names, tensor_guard,
                        warn_degenerate)
from ._labels import label_strings
from .store import tag_weights

__all__ = ["unit_quality", "unit_measures", "kmeans"]


def _frame_name(store, layer: int, keep: np.ndarray, row: int) -> str:
    """Row ``row`` of the labelled frames ``keep`` of a layer, named (utterance, frame)."""
    return row_names(store, layer)(int(keep[row]))


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
    joint = np.zeros((y.max() + 1, z.max() + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= joint.sum()
    py, pz = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(py, pz)[nz])).sum())
    h_y = float(-(py * np.log(py)).sum())
    return {
        "phone_purity": float(joint.max(0).sum()),
        "cluster_purity": float(joint.max(1).sum()),
        "pnmi": mi / h_y if h_y > 0 else float("nan"),
        "n_frames": int(len(phones)), "n_phones": int(joint.shape[0]),
        "n_units": int(joint.shape[1]),
    }


def _nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = 16384):
    """(index of the nearest centroid, squared distance) for each row of ``x``.

    The nearest centroid from ``|x|^2 - 2 x.c + |c|^2`` (one matrix product), its
    distance then from ``x - c`` itself: the expansion cancels ``eps * |x|^2``, which
    for a far row (1e5 spreads out) is larger than every typical row's distance, and
    would swamp the inertia that decides convergence."""
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


def kmeans(x: torch.Tensor, k: int, *, iters: int = 50, tol: float = 1e-4, seed: int = 0
           ) -> tuple[torch.Tensor, float]:
    """k-means++ then Lloyd iterations on the rows of ``x`` (on its device).

    Args:
        x: ``(n, d)`` float rows (centred by the caller for precision).
        k: clusters (``<= n``).
        iters, tol: at most ``iters`` Lloyd steps; stop when the inertia improves
            by less than ``tol`` (relative).
        seed: seed of the k-means++ draws.

    Returns:
        ``(centroids (k, d), inertia)``: the mean squared distance to the nearest centroid.
        An emptied cluster is re-seeded with the row farthest from its centroid.
    """
    n = x.shape[0]
    if k > n:
        raise ValueError(f"k={k} clusters need at least {k} frames, got {n}; lower k or "
                         "raise max_frames")
    gen = torch.Generator().manual_seed(int(seed))
    cent = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    def sq_dist(c):  # ||x - c||^2 from the differences: the expansion |x|^2 - 2x.c + |c|^2
        # cancels eps * |x|^2, more than a typical row's distance when a row lies far out
        return (x - c).pow(2).sum(1)

    cent[0] = x[int(torch.randint(n, (1,), generator=gen))]
    best = sq_dist(cent[0])
    for j in range(1, k):  # D^2 sampling
        w = best.double().cpu()
        pick = int(torch.multinomial(w / w.sum(), 1, generator=gen)) if float(w.sum()) > 0 \
            else int(torch.randint(n, (1,), generator=gen))
        cent[j] = x[pick]
        best = torch.minimum(best, sq_dist(cent[j]))
    prev = None
    for step in range(iters + 1):
        idx, dist = _nearest(x, cent)
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


def unit_quality(store, *, k: int | Sequence[int] = 100, layers: Sequence[int] | None = None,
                 max_frames: int | None = 50000, seed: int = 0, device=None, iters: int = 50,
                 column: str = "phone") -> pd.DataFrame:
    """Purity and PNMI of k-means units of every stored layer against the phones.

    Args:
        store: a :class:`~s3viz.store.LayerStore` with phone alignments.
        k: clusters, or a list of them (one row per layer and k).
        layers: stored layer indices (default all).
        max_frames: labelled frames (drawn with ``seed``) k-means is fitted on;
            None uses all. Every labelled frame is assigned and counted.
        seed: seed of the frame draw and of k-means++.
        device: torch device (None: cuda when available).
        iters: at most this many Lloyd iterations.
        column: the alignment column the units are compared with.

    Returns:
        One row per layer and ``k``: ``layer``, ``upstream_layer``, ``k``,
        ``phone_purity``, ``cluster_purity``, ``pnmi``, ``n_frames``, ``n_phones``,
        ``n_units`` (units used by at least one frame), ``inertia`` (of the fit, as a
        fraction of the fitted frames' variance: scale-free). A degenerate layer
        (constant, all zero, varying only at rounding level, or with a frame whose
        squared distances overflow float32: ``docs/measures.md``) gets NaN and one
        :class:`~s3viz._numerics.DegenerateLayerWarning`. ``attrs["weights"]``: the
        store's :attr:`~s3viz.store.LayerStore.weights`.
    """
    ks = [k] if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else list(k)
    if not ks:
        raise ValueError("k must be a positive int or a non-empty list of them")
    ks = [_v.integer(v, "k", minimum=2) for v in ks]
    max_frames = _v.integer(max_frames, "max_frames", minimum=2, none_ok=True)
    iters = _v.integer(iters, "iters", minimum=1)
    seed = _v.integer(seed, "seed", minimum=0)
    if all(p is None for p in store.phones):
        raise ValueError("unit_quality needs phone alignments (store.phones); the store has "
                         "none")
    layer_list = _v.stored_layers(store, layers)
    dev = _resolve_device(device)
    rows, degenerate = [], {}
    for layer in layer_list:
        # the probes' label rule: a frame without a segment or with a missing label
        # (None/NaN/NA) is unlabelled
        lab = label_strings(store.frame_labels(layer, column=column))
        keep = np.flatnonzero(lab != "")
        if len(keep) < max(ks):
            raise ValueError(f"stored layer {layer} has {len(keep)} labelled frames, fewer "
                             f"than k={max(ks)}; lower k")
        x, _ = store.layer(layer, dtype=read_dtype(store))
        x = x[torch.from_numpy(keep)]
        # the one guard of every measure (s3viz._numerics): k-means is offset-, scale- and
        # rotation-invariant, so centre on the per-feature median and scale by a power of
        # two near the robust spread (float32 squares of 1e-30 would vanish; one far frame
        # moves neither); a degenerate layer, or one with a frame farther than float32
        # squared distances resolve, gets NaN
        guard = tensor_guard(x, store.store_dtype, centre=True,
                             span=float32_squares_span(x.shape[1]),
                             names=functools.partial(_frame_name, store, layer, keep))
        degenerate[layer] = guard.reason
        if guard.reason:
            rows.extend({"layer": layer, "upstream_layer": int(store.layer_ids[layer]), "k": kk,
                         "phone_purity": float("nan"), "cluster_purity": float("nan"),
                         "pnmi": float("nan"), "n_frames": len(keep),
                         "n_phones": len(np.unique(lab[keep])), "n_units": 0,
                         "inertia": float("nan")} for kk in ks)
            continue
        x = guard(x, torch.float32, dev)  # blockwise: no float64 copy of the layer
        rng = np.random.default_rng([seed, layer, 11])
        fit = (np.arange(len(keep)) if max_frames is None or max_frames >= len(keep)
               else np.sort(rng.choice(len(keep), max_frames, replace=False)))
        fit_x = x[torch.as_tensor(fit, device=dev)]
        # the fitted frames' variance: about their mean (the guard centres on the median,
        # so sum |x|^2 is not it), streamed in float64 about a shift (exact for any offset)
        mom = Moments((fit_x.shape[1],), device=fit_x.device)
        for i in range(0, fit_x.shape[0], 65536):
            mom.update(fit_x[i:i + 65536])
        total = float(mom.var.sum())
        for kk in ks:
            if kk > len(fit):
                raise ValueError(f"k={kk} needs at least {kk} fitted frames; raise max_frames")
            cent, inertia = kmeans(fit_x, kk, iters=iters, seed=seed)
            units, _ = _nearest(x, cent)
            m = unit_measures(lab[keep], units.cpu().numpy())
            rows.append({"layer": layer, "upstream_layer": int(store.layer_ids[layer]),
                         "k": kk, "phone_purity": m["phone_purity"],
                         "cluster_purity": m["cluster_purity"], "pnmi": m["pnmi"],
                         "n_frames": m["n_frames"], "n_phones": m["n_phones"],
                         "n_units": m["n_units"], "inertia": inertia / total})
    warn_degenerate("unit_quality", degenerate, "purities and PNMI")
    return tag_weights(pd.DataFrame(rows), store)
