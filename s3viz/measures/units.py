"""Unit quality: k-means units of every layer against the phones, in two passes.

Pass 1 gathers each layer's fit sample (``max_frames`` labelled frames drawn with
the seed by global frame index, the same draw whatever the batching or sharding)
into one matrix per layer summed over ranks; k-means then runs identically on
every rank. Pass 2 counts the phone x unit table of every labelled frame, summed
over ranks; purities and PNMI come from it (``docs/measures.md``). Memory:
``layers x max_frames x hidden`` numbers, nothing that grows with the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .. import _validate as _v
from .._device import resolve_device as _resolve_device
from .._numerics import Moments, float32_squares_span, tensor_guard, warn_degenerate
from ..units import nearest, kmeans, measures_from_counts
from ..store import tag_weights
from ._engine import Batch, Context, Measure, StoreSource, run_measures

__all__ = ["UnitQuality", "unit_quality"]


class UnitQuality(Measure):
    """Phone purity, cluster purity and PNMI of k-means units of every layer.

    Args:
        k: clusters, or a list of them (one row per layer and k).
        max_frames: labelled frames (drawn with ``seed``) k-means is fitted on;
            None uses all (then every labelled frame is held in memory).
        seed: seed of the frame draw and of k-means++.
        iters: at most this many Lloyd iterations.
        column: the alignment column the units are compared with.

    ``compute()`` gives the columns of :func:`s3viz.unit_quality`.
    """

    name = "units"
    passes = 2

    def __init__(self, k: int | Sequence[int] = 100, *, max_frames: int | None = 50000,
                 seed: int = 0, iters: int = 50, column: str = "phone"):
        super().__init__()
        ks = [k] if isinstance(k, (int, np.integer, bool, float)) else k
        if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__") or not list(ks):
            raise ValueError(f"k must be an int >= 2 or a non-empty list of them, got {k!r}")
        self.ks = [_v.integer(v, "k", minimum=2) for v in ks]
        self.max_frames = _v.integer(max_frames, "max_frames", minimum=2, none_ok=True)
        self.iters = _v.integer(iters, "iters", minimum=1)
        self.seed = _v.integer(seed, "seed", minimum=0)
        self.column = column

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        meta, lengths = ctx.meta, ctx.lengths()
        if all(p is None for p in meta.phones):
            raise ValueError("unit_quality needs phone alignments (store.phones); the store "
                             "has none")
        n_l, self.layers = ctx.num_layers, []
        classes, fits = [], []
        for s in range(n_l):
            # labelled frames per utterance, and the classes: from the alignments alone
            counts = np.zeros(len(meta), dtype=np.int64)
            seen = set()
            for u in range(len(meta)):
                lab = ctx.frame_labels(u, s, self.column, int(lengths[u, s]))
                lab = lab[lab != ""]
                counts[u] = len(lab)
                seen.update(lab.tolist())
            total = int(counts.sum())
            if total < max(self.ks):
                raise ValueError(f"stored layer {ctx.layer_index[s]} has {total} labelled "
                                 f"frames, fewer than k={max(self.ks)}; lower k")
            rng = np.random.default_rng([self.seed, ctx.layer_index[s], 11])
            fit = (np.arange(total) if self.max_frames is None or self.max_frames >= total
                   else np.sort(rng.choice(total, self.max_frames, replace=False)))
            if max(self.ks) > len(fit):  # now, not after a pass over the frames
                raise ValueError(f"k={max(self.ks)} needs at least {max(self.ks)} fitted "
                                 "frames; raise max_frames")
            self.layers.append({"offsets": np.concatenate([[0], np.cumsum(counts)]),
                                "fit": fit, "total": total})
            cls = np.asarray(sorted(seen), dtype=object)
            classes.append(cls)
            fits.append(torch.zeros(len(fit), ctx.sizes[s], dtype=ctx.read_dtype))
        self.classes = classes
        self.index = [{c: i for i, c in enumerate(cls)} for cls in classes]
        self.add_state("fit_x", fits, lambda v, reduce: [reduce(t) for t in v])
        self.add_state("joint", [None] * n_l, lambda v, reduce: [
            None if t is None else reduce(t) for t in v], after_pass=1)

    def _labelled(self, batch: Batch, s: int):
        """(labelled frames, their global labelled indices, class indices) of layer ``s``."""
        lab = batch.frame_labels(s, self.column)
        keep = lab != ""
        offs = self.layers[s]["offsets"]
        starts = offs[batch.positions]
        n_lab = offs[batch.positions + 1] - starts
        glob = np.concatenate([np.arange(a, a + n) for a, n in zip(starts, n_lab)]) \
            if len(starts) else np.zeros(0, dtype=np.int64)
        y = np.fromiter((self.index[s][v] for v in lab[keep]), dtype=np.int64,
                        count=int(keep.sum()))
        return batch.frames[s][torch.from_numpy(keep)], glob, y

    def update(self, batch: Batch, pass_index: int) -> None:
        for s in range(self.ctx.num_layers):
            if pass_index == 1 and self.joint[s] is None:
                continue  # a degenerate layer
            x, glob, y = self._labelled(batch, s)
            if pass_index == 0:
                fit = self.layers[s]["fit"]
                at = np.searchsorted(fit, glob)
                hit = (at < len(fit)) & (fit[np.minimum(at, len(fit) - 1)] == glob)
                self.fit_x[s][torch.from_numpy(at[hit])] = x[torch.from_numpy(hit)].to(
                    self.fit_x[s].dtype)
                continue
            lay = self.layers[s]
            xg = lay["guard"](x, torch.float32, self.ctx.device)
            for j, cent in enumerate(lay["centroids"]):
                units, _ = nearest(xg, cent)
                k = cent.shape[0]
                flat = torch.from_numpy(y).to(units.device) * k + units
                self.joint[s][j, :, :k] += torch.bincount(flat, minlength=len(self.classes[s]) * k
                                                   ).reshape(-1, k).cpu()

    def end_pass(self, pass_index: int) -> None:
        if pass_index != 0:
            return
        ctx, self.reasons = self.ctx, {}
        for s in range(ctx.num_layers):
            lay, x = self.layers[s], self.fit_x[s]
            self.fit_x[s] = None
            guard = tensor_guard(x, ctx.store_dtype, centre=True,
                                 span=float32_squares_span(x.shape[1]),
                                 names=lambda i, s=s: self._name(s, int(i)))
            self.reasons[ctx.layer_index[s]] = guard.reason
            if guard.reason:
                continue
            x = guard(x, torch.float32, ctx.device)
            # the fitted frames' variance about their mean, in float64 about a shift
            mom = Moments((x.shape[1],), device=x.device)
            for i in range(0, x.shape[0], 65536):
                mom.update(x[i:i + 65536])
            total_var = float(mom.var.sum())
            lay["guard"], lay["centroids"], lay["inertia"] = guard, [], []
            for kk in self.ks:
                cent, inertia = kmeans(x, kk, iters=self.iters, seed=self.seed)
                lay["centroids"].append(cent)
                lay["inertia"].append(inertia / total_var)
            self.joint[s] = torch.zeros(len(self.ks), len(self.classes[s]), max(self.ks),
                                        dtype=torch.int64)

    def _name(self, s: int, row: int) -> str:
        """Fit row ``row`` of layer ``s`` as (utterance, frame), for a guard's message."""
        ctx, lay = self.ctx, self.layers[s]
        g = int(lay["fit"][row])
        u = int(np.searchsorted(lay["offsets"], g, side="right") - 1)
        lab = ctx.frame_labels(u, s, self.column, int(ctx.lengths()[u, s]))
        frame = int(np.flatnonzero(lab != "")[g - lay["offsets"][u]])
        return f"utterance {ctx.meta.ids[u]!r}, frame {frame}"

    def compute(self) -> pd.DataFrame:
        ctx, rows = self.ctx, []
        for s in range(ctx.num_layers):
            layer, lay = ctx.layer_index[s], self.layers[s]
            base = {"layer": layer, "upstream_layer": int(ctx.layer_ids[s])}
            if self.joint[s] is None:
                rows.extend(dict(base, k=kk, phone_purity=float("nan"),
                                 cluster_purity=float("nan"), pnmi=float("nan"),
                                 n_frames=lay["total"], n_phones=len(self.classes[s]),
                                 n_units=0, inertia=float("nan")) for kk in self.ks)
                continue
            for j, kk in enumerate(self.ks):
                m = measures_from_counts(self.joint[s][j, :, :kk].numpy())
                rows.append(dict(base, k=kk, **m, inertia=lay["inertia"][j]))
        warn_degenerate("unit_quality", self.reasons, "purities and PNMI")
        return pd.DataFrame(rows)


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
    measure = UnitQuality(k, max_frames=max_frames, seed=seed, iters=iters, column=column)
    layer_list = _v.stored_layers(store, layers)
    table = run_measures([measure], StoreSource(store, layers=layer_list),
                         device=_resolve_device(device))["units"]
    return tag_weights(table, store)
