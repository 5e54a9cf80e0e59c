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
from .._bootstrap import (Bootstrap, add_interval_columns, bootstrap_options, items_digest,
                          resampling_units)
from .._device import resolve_device as _resolve_device
from .._numerics import Moments, float32_squares_span, tensor_guard, warn_degenerate
from ..units import nearest, kmeans, measures_from_counts
from ..store import tag_weights
from ._engine import Batch, Context, Measure, StoreSource, run_measures

__all__ = ["UnitQuality", "unit_quality"]

SCORES = ("phone_purity", "cluster_purity", "pnmi")
# per-unit tables of the bootstrap (units x phones x k int32 per layer and k): refused above
BOOTSTRAP_BYTES = 2 << 30


def _measures_batch(joint: np.ndarray) -> dict:
    """:func:`~s3viz.units.measures_from_counts`'s purities and PNMI of each of ``(R,
    phones, units)`` tables at once (NaN for an empty one)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = joint / joint.sum((1, 2), keepdims=True)
        py, pz = p.sum(2), p.sum(1)
        ratio = np.where(p > 0, p / (py[:, :, None] * pz[:, None, :]), 1.0)
        mi = (p * np.log(ratio)).sum((1, 2))
        h_y = -(np.where(py > 0, py * np.log(np.where(py > 0, py, 1.0)), 0.0)).sum(1)
        return {"phone_purity": p.max(1).sum(1), "cluster_purity": p.max(2).sum(1),
                "pnmi": np.where(h_y > 0, mi / h_y, np.nan)}


class UnitQuality(Measure):
    """Phone purity, cluster purity and PNMI of k-means units of every layer.

    Args:
        k: clusters, or a list of them (one row per layer and k).
        max_frames: labelled frames (drawn with ``seed``) k-means is fitted on;
            None uses all (then every labelled frame is held in memory).
        seed: seed of the frame draw and of k-means++.
        iters: at most this many Lloyd iterations.
        column: the alignment column the units are compared with.
        bootstrap, confidence: error bars of the purities and PNMI from this many
            resamples of the speakers (or utterances; drawn with ``seed``; None: none),
            a percentile interval at ``confidence``. The units are fitted once; the
            resamples redraw the counted frames by speaker (``docs/measures.md``,
            "Error bars"). Keeps a ``units x phones x k`` table per layer and k.

    ``compute()`` gives the columns of :func:`s3viz.unit_quality`.
    """

    name = "units"
    passes = 2

    def __init__(self, k: int | Sequence[int] = 100, *, max_frames: int | None = 50000,
                 seed: int = 0, iters: int = 50, column: str = "phone",
                 bootstrap: int | None = None, confidence: float = 0.95):
        super().__init__()
        ks = [k] if isinstance(k, (int, np.integer, bool, float)) else k
        if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__") or not list(ks):
            raise ValueError(f"k must be an int >= 2 or a non-empty list of them, got {k!r}")
        self.ks = [_v.integer(v, "k", minimum=2) for v in ks]
        self.max_frames = _v.integer(max_frames, "max_frames", minimum=2, none_ok=True)
        self.iters = _v.integer(iters, "iters", minimum=1)
        self.seed = _v.integer(seed, "seed", minimum=0)
        self.column = column
        self.resamples, self.confidence = bootstrap_options(bootstrap, confidence)

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
        merge = (lambda v, reduce: [None if t is None else reduce(t) for t in v])
        self.add_state("joint", [None] * n_l, merge, after_pass=1)
        self.boot = None
        if self.resamples:  # per-unit joint tables: units of the whole corpus on every rank
            self.unit_of, names, kind = resampling_units(meta.labels)
            self.boot = Bootstrap(names, kind, self.resamples, self.confidence, self.seed,
                                  items=items_digest(meta.labels))
            need = 4 * len(names) * sum(len(c) for c in classes) * sum(self.ks)
            if need > BOOTSTRAP_BYTES:
                raise ValueError(
                    f"unit_quality's bootstrap keeps a {kind} x phone x unit table per layer "
                    f"and k: {need / 2 ** 30:.1f} GiB here, over {BOOTSTRAP_BYTES >> 30} GiB; "
                    "pass fewer layers or k values, or bootstrap=None")
        self.add_state("joint_units", [None] * n_l, merge, after_pass=1)

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
            n_c = len(self.classes[s])
            for j, cent in enumerate(lay["centroids"]):
                units, _ = nearest(xg, cent)
                k = cent.shape[0]
                flat = torch.from_numpy(y).to(units.device) * k + units
                self.joint[s][j, :, :k] += torch.bincount(flat, minlength=n_c * k
                                                   ).reshape(-1, k).cpu()
                if self.boot is not None:  # the same counts, per speaker (or utterance)
                    offs = lay["offsets"]
                    who = np.repeat(self.unit_of[batch.positions],
                                    offs[batch.positions + 1] - offs[batch.positions])
                    wide = self.joint_units[s].shape[-1]  # (k's, units, phones, max k)
                    at = ((torch.from_numpy(who * n_c + y).to(units.device)) * wide + units)
                    at, cnt = torch.unique(at, return_counts=True)  # a dense bincount per
                    self.joint_units[s][j].view(-1).index_add_(  # batch would be the size
                        0, at.cpu(), cnt.cpu().to(torch.int32))  # of the whole table

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
            if self.boot is not None:
                self.joint_units[s] = torch.zeros(len(self.ks), len(self.boot.names),
                                                  len(self.classes[s]), max(self.ks),
                                                  dtype=torch.int32)

    def _name(self, s: int, row: int) -> str:
        """Fit row ``row`` of layer ``s`` as (utterance, frame), for a guard's message."""
        ctx, lay = self.ctx, self.layers[s]
        g = int(lay["fit"][row])
        u = int(np.searchsorted(lay["offsets"], g, side="right") - 1)
        lab = ctx.frame_labels(u, s, self.column, int(ctx.lengths()[u, s]))
        frame = int(np.flatnonzero(lab != "")[g - lay["offsets"][u]])
        return f"utterance {ctx.meta.ids[u]!r}, frame {frame}"

    def compute(self) -> pd.DataFrame:
        ctx, rows, reps = self.ctx, [], {}
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
                if self.boot is not None:
                    reps[(layer, kk)] = self._replicates(self.joint_units[s][j, :, :, :kk])
        warn_degenerate("unit_quality", self.reasons, "purities and PNMI")
        out = pd.DataFrame(rows)
        if self.boot is not None:
            out = add_interval_columns(out, self.boot, ["layer", "k"], reps, list(SCORES))
        return out

    def _replicates(self, per_unit: torch.Tensor, budget: int = 1 << 24) -> dict:
        """``{score: (resamples,)}`` of the joint tables of each resample (chunks of at
        most ``budget`` numbers)."""
        u, c, k = per_unit.shape
        flat = per_unit.reshape(u, c * k).numpy()
        out = {m: np.empty(self.boot.resamples) for m in SCORES}
        step = max(1, budget // (c * k))
        for r0 in range(0, self.boot.resamples, step):
            joint = (self.boot.counts[r0:r0 + step] @ flat).reshape(-1, c, k)
            for m, v in _measures_batch(joint).items():
                out[m][r0:r0 + len(joint)] = v
        return out


def unit_quality(store, *, k: int | Sequence[int] = 100, layers: Sequence[int] | None = None,
                 max_frames: int | None = 50000, seed: int = 0, device=None, iters: int = 50,
                 column: str = "phone", bootstrap: int | None = None,
                 confidence: float = 0.95) -> pd.DataFrame:
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
        bootstrap, confidence: error bars over resampled speakers (or utterances), as
            for :class:`UnitQuality` (``docs/measures.md``, "Error bars").

    Returns:
        One row per layer and ``k``: ``layer``, ``upstream_layer``, ``k``,
        ``phone_purity``, ``cluster_purity``, ``pnmi``, ``n_frames``, ``n_phones``,
        ``n_units`` (units used by at least one frame), ``inertia`` (of the fit, as a
        fraction of the fitted frames' variance: scale-free). A degenerate layer
        (constant, all zero, varying only at rounding level, or with a frame whose
        squared distances overflow float32: ``docs/measures.md``) gets NaN and one
        :class:`~s3viz._numerics.DegenerateLayerWarning`. ``attrs["weights"]``: the
        store's :attr:`~s3viz.store.LayerStore.weights`. With ``bootstrap``:
        ``<score>_lo``/``<score>_hi`` after each of the purities and PNMI,
        ``resampled_by`` and ``attrs["bootstrap"]`` (for :func:`s3viz.compare_scores`).
    """
    measure = UnitQuality(k, max_frames=max_frames, seed=seed, iters=iters, column=column,
                          bootstrap=bootstrap, confidence=confidence)
    layer_list = _v.stored_layers(store, layers)
    table = run_measures([measure], StoreSource(store, layers=layer_list),
                         device=_resolve_device(device))["units"]
    return tag_weights(table, store)
