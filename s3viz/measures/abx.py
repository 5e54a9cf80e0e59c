"""ABX phone discriminability of every layer, on the measure engine (ZeroSpeech's ABX).

:class:`ABX`: how often a phone token is closer (DTW-averaged frame distance) to
another token of its phone than to one of another phone, within or across
speakers and contexts, with fastabx's definitions (computed here in torch:
fastabx needs Python >= 3.12; ``tests/test_abx.py`` checks against it). One pass
gathers the items' frames (summed over ranks); each rank then scores the cells
of the X speakers it owns, and one more sum gives every rank every cell.
:func:`s3viz.abx_layers` runs it on a store. Details: ``docs/measures.md``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .. import _validate as _v
from .._labels import label_str
from .._numerics import float32_distances_span, tensor_guard, unit_rows, warn_degenerate
from ..segments import segment_table
from ._engine import Batch, Context, CorpusLayers, Measure, agree

__all__ = ["ABX", "DISTANCES", "dtw_costs"]

DISTANCES = ("cosine", "euclidean")
SPEAKER_MODES = ("within", "across")
CONTEXT_MODES = ("any", "within")
_CELL_COLUMNS = ["speaker", "speaker_x", "phone", "other", "context", "error", "triplets"]


# --------------------------------------------------------------------------- distances, DTW


def _normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalised rows plus a border column: a zero row lies at the largest angle from
    every other (fastabx's ``normalize_with_singularity``)."""
    norm = x.norm(dim=1, keepdim=True)
    zero = norm.squeeze(1) == 0
    out = torch.where(zero[:, None], torch.full_like(x, 1.0 / math.sqrt(x.shape[1])),
                      x / torch.where(zero[:, None], torch.ones_like(norm), norm))
    border = torch.where(zero[:, None], torch.full_like(norm, -2 * eps), torch.full_like(norm, eps))
    return torch.cat([out, border], 1)


def _frame_distances(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """``(S1, S2, n1, n2)`` frame distances of padded items ``a (n1, S1, D)``, ``b (n2, S2, D)``."""
    n1, s1, d = a.shape
    n2, s2, _ = b.shape
    fa, fb = a.reshape(n1 * s1, d), b.reshape(n2 * s2, d)
    if distance == "cosine":
        dist = (fa @ fb.T).clamp_(-1, 1).acos_().div_(math.pi)
    else:
        dist = torch.cdist(fa, fb, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.view(n1, s1, n2, s2).permute(1, 3, 0, 2).contiguous()


def dtw_costs(dist: torch.Tensor, len1: torch.Tensor, len2: torch.Tensor) -> torch.Tensor:
    """DTW cost divided by the path length, for a batch of item pairs.

    Args:
        dist: ``(S1, S2, n1, n2)`` frame distances (padding anywhere past each length).
        len1, len2: ``(n1,)``, ``(n2,)`` frames of each item (>= 1).

    Returns:
        ``(n1, n2)``: ``C[l1 - 1, l2 - 1] / steps`` with ``C[i, j] = d[i, j] +
        min(C[i-1, j], C[i-1, j-1], C[i, j-1])`` and ``steps`` the length of the
        path found back from the end preferring the diagonal, then ``j - 1``,
        then ``i - 1`` at ties (torchdtw's rule, so that the result is fastabx's).
        A cell depends only on cells above and left of it, so padding past an
        item's length never reaches its value.
    """
    s1, s2 = dist.shape[:2]
    cost = torch.empty_like(dist)
    steps = torch.empty(dist.shape, dtype=torch.int32, device=dist.device)
    cost[0, 0] = dist[0, 0]
    steps[0, 0] = 1
    for i in range(1, s1):
        cost[i, 0] = cost[i - 1, 0] + dist[i, 0]
        steps[i, 0] = i + 1
    for j in range(1, s2):
        cost[0, j] = cost[0, j - 1] + dist[0, j]
        steps[0, j] = j + 1
    for i in range(1, s1):
        for j in range(1, s2):
            up, left, diag = cost[i - 1, j], cost[i, j - 1], cost[i - 1, j - 1]
            take_diag = (diag <= left) & (diag <= up)
            take_left = ~take_diag & (left <= up)
            best = torch.where(take_diag, diag, torch.where(take_left, left, up))
            cost[i, j] = dist[i, j] + best
            steps[i, j] = torch.where(take_diag, steps[i - 1, j - 1],
                                      torch.where(take_left, steps[i, j - 1], steps[i - 1, j])) + 1
    i1 = (len1 - 1).long()[:, None].expand(-1, len(len2))
    i2 = (len2 - 1).long()[None, :].expand(len(len1), -1)
    r1 = torch.arange(len(len1), device=dist.device)[:, None].expand_as(i1)
    r2 = torch.arange(len(len2), device=dist.device)[None, :].expand_as(i2)
    return cost[i1, i2, r1, r2] / steps[i1, i2, r1, r2].to(cost.dtype)


class _Items:
    """The padded frames of a set of items (sorted by length) and their lengths."""

    def __init__(self, frames: torch.Tensor, starts: np.ndarray, ends: np.ndarray, device,
                 distance: str):
        self.lens = (ends - starts).astype(np.int64)
        width = int(self.lens.max()) if len(starts) else 1
        pad = torch.zeros(len(starts), width, frames.shape[1], dtype=torch.float32, device=device)
        for k, (a, b) in enumerate(zip(starts, ends)):
            pad[k, : b - a] = frames[a:b].to(device=device, dtype=torch.float32)
        if distance == "cosine":
            flat = _normalise(pad.reshape(-1, pad.shape[-1]))
            pad = flat.view(pad.shape[0], pad.shape[1], -1)
        self.pad = pad
        self.len_t = torch.as_tensor(self.lens, device=device)


def _distance_matrix(x: _Items, xi: np.ndarray, y: _Items, yi: np.ndarray, distance: str,
                     max_block: int) -> torch.Tensor:
    """``(len(xi), len(yi))`` DTW distances between items ``xi`` of ``x`` and ``yi`` of ``y``,
    in blocks of at most ``max_block`` frame distances (items sorted by length first, so a
    block pads little)."""
    dev = x.pad.device
    out = torch.empty(len(xi), len(yi), dtype=torch.float32, device=dev)
    if not len(xi) or not len(yi):
        return out
    ox, oy = np.argsort(x.lens[xi], kind="stable"), np.argsort(y.lens[yi], kind="stable")
    sx, sy = xi[ox], yi[oy]
    ly = int(y.lens[sy].max())
    cols = max(1, min(len(sy), max_block // max(1, ly * int(x.lens[sx].max()))))
    for c0 in range(0, len(sy), cols):
        cy = sy[c0:c0 + cols]
        wy = int(y.lens[cy].max())
        r0 = 0
        while r0 < len(sx):
            # rows while the block stays under max_block (lengths increase along sx)
            rows = max(1, max_block // max(1, len(cy) * wy * int(x.lens[sx[-1]])))
            cx = sx[r0:r0 + rows]
            wx = int(x.lens[cx].max())
            d = _frame_distances(x.pad[cx, :wx], y.pad[cy, :wy], distance)
            block = dtw_costs(d, x.len_t[cx], y.len_t[cy])
            out[torch.as_tensor(ox[r0:r0 + rows], device=dev)[:, None],
                torch.as_tensor(oy[c0:c0 + cols], device=dev)[None, :]] = block
            r0 += rows
    return out


# --------------------------------------------------------------------------- cells


def _cell_sums(dist: torch.Tensor, lab_x: torch.Tensor, lab_y: torch.Tensor, num: int,
               symmetric: bool, max_block: int) -> torch.Tensor:
    """Correct-triplet sums of every cell of one block, as a ``(num, num)`` table indexed
    by (phone of A and X, phone of B); the triplet counts are :func:`_contexts`'.

    ``dist (nx, ny)``: X rows, A and B columns; ``lab_x``, ``lab_y``: phone codes in
    ``[0, num)``. A triplet ``(a, b, x)`` counts ``1{d(a,x) < d(b,x)} + 1/2 1{=}``;
    with ``symmetric`` the rows are the columns and ``a = x`` is left out. For
    each ``x`` its distances are sorted once and a running count per phone
    gives, for every ``a`` at once, how many ``b`` of each phone lie farther or
    at the same distance (instead of the ``nx * na * nb`` comparisons); rows go
    in chunks of at most ``max_block`` numbers.
    """
    nx, ny = dist.shape
    dev = dist.device
    n_q = torch.bincount(lab_y, minlength=num).double()  # B candidates per phone
    correct = torch.zeros(num, num, dtype=torch.float64, device=dev)
    rows = max(1, max_block // max(1, ny * num))
    for r0 in range(0, nx, rows):
        d = dist[r0:r0 + rows]
        lx = lab_x[r0:r0 + rows]
        srt, order = torch.sort(d, dim=1)
        cum = torch.nn.functional.one_hot(lab_y[order], num).to(torch.float64).cumsum(1)
        cum = torch.cat([torch.zeros(d.shape[0], 1, num, dtype=cum.dtype, device=dev), cum], 1)
        lo = torch.searchsorted(srt, d.contiguous(), right=False)  # b strictly closer
        hi = torch.searchsorted(srt, d.contiguous(), right=True)   # b at most as far
        idx = lambda k: k[:, :, None].expand(-1, -1, num)  # noqa: E731
        le, lt = cum.gather(1, idx(hi)), cum.gather(1, idx(lo))
        score = (n_q - le) + 0.5 * (le - lt)  # (rows, ny, num): per a, per phone of b
        valid = lab_y[None, :] == lx[:, None]  # a shares x's phone
        if symmetric:
            cols = torch.arange(ny, device=dev)
            valid &= cols[None, :] != (torch.arange(d.shape[0], device=dev) + r0)[:, None]
        per_x = (score * valid[:, :, None]).sum(1)  # (rows, num): summed over a
        correct.index_add_(0, lx, per_x)
    return correct


def _contexts(lab_x: np.ndarray, lab_y: np.ndarray, ctx_x: np.ndarray, ctx_y: np.ndarray,
              symmetric: bool):
    """The cells of one speaker (or speaker pair), from the labels alone.

    Yields per context with an X: ``(context, X rows, A/B columns, phone names,
    X codes, A/B codes, triplets)``; ``triplets (num, num)`` counts the triplets
    of each (phone of A and X, phone of B) cell: the ``(x, a)`` pairs of the phone
    (``a != x`` when ``symmetric``) times the ``b`` of the other phone, 0 on the
    diagonal. A cell is scored where its count is positive.
    """
    for c in np.unique(ctx_y):
        in_y = np.flatnonzero(ctx_y == c)
        in_x = np.flatnonzero(ctx_x == c)
        if not len(in_x):
            continue
        names, codes = np.unique(np.concatenate([lab_y[in_y], lab_x[in_x]]), return_inverse=True)
        cy, cx = codes[:len(in_y)], codes[len(in_y):]
        n_y = np.bincount(cy, minlength=len(names)).astype(np.int64)
        n_x = np.bincount(cx, minlength=len(names)).astype(np.int64)
        pairs = n_x * n_y - (n_y if symmetric else 0)
        triplets = pairs[:, None] * n_y[None, :]
        np.fill_diagonal(triplets, 0)
        yield c, in_x, in_y, names, cx, cy, triplets


def _groups(spk: np.ndarray, speaker: str):
    """``(speaker of A and B, speaker of X, X items, A/B items)`` of every group, in order."""
    speakers = np.unique(spk)
    for s in speakers:
        ys = np.flatnonzero(spk == s)
        if speaker == "within":
            yield s, s, ys, ys
            continue
        for sx in speakers:
            if sx != s:
                yield s, sx, np.flatnonzero(spk == sx), ys


class _Plan:
    """Every cell of one layer's items, in one fixed order, from the labels alone.

    ``keys``: one row per cell (``speaker``, ``speaker_x``, ``phone``, ``other``,
    ``context``, ``triplets``); :meth:`score` fills the correct-triplet sums of the
    cells whose X speaker is in ``owned`` at their place in that order.
    """

    def __init__(self, table: pd.DataFrame, speaker: str, context: str):
        self.lab = table["label"].to_numpy(dtype=object).astype(str)
        self.ctx = ((table["prev"] + "|" + table["next"]).to_numpy(dtype=object).astype(str)
                    if context == "within" else np.full(len(table), "", dtype=object).astype(str))
        self.spk = table["speaker"].to_numpy(dtype=object).astype(str)
        self.speaker = speaker
        rows = {k: [] for k in ("speaker", "speaker_x", "phone", "other", "context")}
        trip = []
        for s, sx, _, _, c, names, t in self._walk():
            p, q = np.nonzero(t > 0)
            rows["speaker"] += [s] * len(p)
            rows["speaker_x"] += [sx] * len(p)
            rows["phone"] += list(names[p])
            rows["other"] += list(names[q])
            rows["context"] += [c] * len(p)
            trip.append(t[p, q])
        self.keys = pd.DataFrame(rows)
        self.keys["triplets"] = np.concatenate(trip) if trip else np.zeros(0, dtype=np.int64)

    def _walk(self):
        lab, ctx, symmetric = self.lab, self.ctx, self.speaker == "within"
        for s, sx, xs, ys in _groups(self.spk, self.speaker):
            for c, in_x, in_y, names, cx, cy, t in _contexts(lab[xs], lab[ys], ctx[xs],
                                                              ctx[ys], symmetric):
                yield s, sx, (xs, ys), (in_x, in_y, cx, cy), c, names, t

    def score(self, items: _Items, distance: str, owned: set, max_block: int) -> torch.Tensor:
        """``(cells,)`` correct-triplet sums of the owned cells, zeros elsewhere (float64)."""
        out = torch.zeros(len(self.keys), dtype=torch.float64)
        dev, at, group, dist = items.pad.device, 0, None, None
        symmetric = self.speaker == "within"
        for s, sx, (xs, ys), (in_x, in_y, cx, cy), _, names, t in self._walk():
            n = int((t > 0).sum())
            if sx in owned:
                if group != (s, sx):  # one distance matrix per speaker (pair)
                    group = (s, sx)
                    dist = _distance_matrix(items, xs, items, ys, distance, max_block)
                block = dist[torch.as_tensor(in_x, device=dev)][:, torch.as_tensor(in_y,
                                                                                    device=dev)]
                correct = _cell_sums(block, torch.as_tensor(cx, device=dev),
                                     torch.as_tensor(cy, device=dev), len(names), symmetric,
                                     max_block)
                out[at:at + n] = correct[torch.as_tensor(t > 0, device=dev)].cpu()
            at += n
        return out


def _collapse(cells: pd.DataFrame) -> float:
    """ZeroSpeech's average: over contexts (and x's speaker), then speakers, then phone pairs."""
    if cells.empty:
        return float("nan")
    by_spk = cells.groupby(["phone", "other", "speaker"], sort=False)["error"].mean()
    by_pair = by_spk.groupby(level=["phone", "other"], sort=False).mean()
    return float(by_pair.mean())


# --------------------------------------------------------------------------- items


def _subsample(table: pd.DataFrame, max_items: int, seed: int, context: str) -> pd.DataFrame:
    """At most ``max_items`` items per phone, speaker (and context) group, drawn with ``seed``."""
    keys = ["label", "speaker"] + (["prev", "next"] if context == "within" else [])
    rng = np.random.default_rng([seed, 31])
    keep = []
    for _, idx in table.groupby(keys, sort=True).indices.items():
        keep.extend(idx if len(idx) <= max_items else rng.choice(idx, max_items, replace=False))
    out = table.iloc[np.sort(np.asarray(keep, dtype=np.int64))].reset_index(drop=True)
    out.attrs.update(table.attrs)
    return out


# --------------------------------------------------------------------------- the measure


class ABX(Measure):
    """ABX error of phone discrimination in every layer (``docs/measures.md``).

    Args:
        on: the alignment column whose segments are the items (``"phone"``).
        speaker: ``"within"`` (A, B, X from one speaker) or ``"across"`` (X from
            another speaker than A and B).
        context: ``"any"`` or ``"within"`` (A, B, X share previous and next phone).
        distance: ``"cosine"`` (angular, ZeroSpeech's) or ``"euclidean"`` frame distance.
        max_items: at most this many items per phone, speaker (and context) group,
            drawn with ``seed`` (ZeroSpeech keeps 10); None keeps all.
        seed: seed of the ``max_items`` draw.
        max_block: frame distances held at once by one DTW block.
        cells: also return the scored cells, as a second table (``"abx_cells"`` of
            :func:`~s3viz.measures.run_measures`).

    ``compute()`` gives the columns of :func:`s3viz.abx_layers`. The labels need a
    ``speaker`` column (the corpus's, or ``store.labels``).
    """

    name = "abx"
    passes = 1

    def __init__(self, *, on: str = "phone", speaker: str = "within", context: str = "any",
                 distance: str = "cosine", max_items: int | None = None, seed: int = 0,
                 max_block: int = 2 ** 24, cells: bool = False):
        super().__init__()
        if speaker not in SPEAKER_MODES:
            raise ValueError(f"speaker must be one of {SPEAKER_MODES}, got {speaker!r}")
        if context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not isinstance(on, str):
            raise TypeError(f"on must be an alignment column name (str), got {on!r}")
        self.on, self.speaker, self.context, self.distance = on, speaker, context, distance
        self.max_items = _v.integer(max_items, "max_items", minimum=2, none_ok=True)
        self.max_block = _v.integer(max_block, "max_block", minimum=1)
        self.seed = _v.integer(seed, "seed", minimum=0)
        self.keep_cells = bool(cells)

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        meta = ctx.meta
        if "speaker" not in meta.labels.columns:
            raise ValueError("ABX needs a 'speaker' column in the labels (store.labels, or "
                             "the corpus's) for the speaker conditions; add one, e.g. one "
                             "speaker per utterance id")
        speakers = [label_str(v) for v in meta.labels["speaker"].tolist()]
        missing = [meta.ids[i] for i, v in enumerate(speakers) if v == ""]
        if missing:
            raise ValueError(f"ABX: {len(missing)} utterance(s) have no speaker (e.g. "
                             f"{missing[:5]}); the speaker conditions need one for every "
                             "utterance: fill the labels' 'speaker' or drop those utterances")
        # the cells of X speaker s are scored by the rank holding s's first utterance
        first: dict = {}
        for pos, s in enumerate(speakers):
            first.setdefault(s, pos)
        mine = set(np.asarray(ctx.positions).tolist())
        self.owned = {s for s, pos in first.items() if pos in mine}
        corpus, self.layers, frames, n_cells = CorpusLayers(ctx), [], [], 0
        for s in range(ctx.num_layers):
            table = segment_table(corpus, s, self.on)
            if self.max_items is not None:
                table = _subsample(table, self.max_items, self.seed, self.context)
            layer = ctx.layer_index[s]
            if table.empty:
                raise ValueError(f"no {self.on} segments with frames in stored layer {layer}")
            plan = _Plan(table, self.speaker, self.context)
            if plan.keys.empty:
                raise ValueError(
                    f"no ABX cell in stored layer {layer} for speaker={self.speaker!r}, "
                    f"context={self.context!r}: every cell needs two tokens of a phone and one "
                    "of another (and for 'across' a second speaker); use more utterances or "
                    "context='any'")
            sizes = (table["frame_end"] - table["frame_start"]).to_numpy(np.int64)
            self.layers.append({"table": table, "plan": plan, "utt": table["utt"].to_numpy(),
                                "first": table["frame_start"].to_numpy(np.int64),
                                "offsets": np.concatenate([[0], np.cumsum(sizes)]),
                                "cells": slice(n_cells, n_cells + len(plan.keys))})
            n_cells += len(plan.keys)
            frames.append(torch.zeros(int(sizes.sum()), ctx.sizes[s], dtype=ctx.read_dtype))
        self.n_cells = n_cells
        self.add_state("frames", frames, lambda v, reduce: [reduce(t) for t in v])

    def update(self, batch: Batch, pass_index: int) -> None:
        for s, lay in enumerate(self.layers):
            utt, offs = lay["utt"], lay["offsets"]
            starts = np.concatenate([[0], np.cumsum(batch.lens[:, s])])
            lo = np.searchsorted(utt, batch.positions, side="left")
            hi = np.searchsorted(utt, batch.positions, side="right")
            items = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) \
                if len(lo) else np.zeros(0, dtype=np.int64)
            if not len(items):
                continue
            local = np.repeat(np.arange(len(lo)), hi - lo)  # each item's place in the batch
            sizes = offs[items + 1] - offs[items]
            dst = np.repeat(offs[items] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes) \
                + np.arange(int(sizes.sum()))
            src = dst + np.repeat(starts[local] + lay["first"][items] - offs[items], sizes)
            self.frames[s][torch.from_numpy(dst)] = batch.frames[s][torch.from_numpy(src)].to(
                self.frames[s].dtype)

    def end_pass(self, pass_index: int) -> None:
        # this rank's cells, then one sum over ranks: every rank holds every cell
        self.correct = torch.zeros(self.n_cells, dtype=torch.float64)
        agree(self._score, self.ctx.reduce)
        self.correct = self.ctx.reduce(self.correct)

    def _score(self) -> None:
        ctx, self.reasons = self.ctx, {}
        for s, lay in enumerate(self.layers):
            x, self.frames[s] = self.frames[s], None
            # the one guard of every measure (s3viz._numerics), on what the distance sees.
            # cosine: the unit rows (normalised in float64 with a per-row power of two, so
            # no norm vanishes or overflows and no far row matters); degenerate when their
            # spread is float32 rounding (e.g. every frame points one way). euclidean:
            # centred on the per-feature median and scaled by a power of two near the
            # robust spread (one far frame moves neither); refused when a frame lies
            # farther than float32 squared distances resolve
            names = lambda i, s=s: self._name(s, int(i))  # noqa: E731
            if self.distance == "cosine":
                x = unit_rows(x)
                dt = torch.float32 if ctx.store_dtype == torch.float64 else ctx.store_dtype
                guard = tensor_guard(x, dt, centre=False, names=names)
            else:
                guard = tensor_guard(x, ctx.store_dtype, centre=True,
                                     span=float32_distances_span(), names=names)
            self.reasons[ctx.layer_index[s]] = lay["reason"] = guard.reason
            if guard.reason:
                continue
            offs = lay["offsets"]
            items = _Items(guard(x, torch.float32), offs[:-1], offs[1:], ctx.device,
                           self.distance)
            del x
            self.correct[lay["cells"]] = lay["plan"].score(items, self.distance, self.owned,
                                                           self.max_block)

    def _name(self, s: int, row: int) -> str:
        """Row ``row`` of layer ``s``'s item frames as (utterance, frame), for a guard's message."""
        lay = self.layers[s]
        k = int(np.searchsorted(lay["offsets"], row, side="right") - 1)
        item = lay["table"].iloc[k]
        return (f"utterance {item['id']!r}, frame "
                f"{int(item['frame_start'] + row - lay['offsets'][k])}")

    def compute(self) -> pd.DataFrame:
        ctx, rows, all_cells = self.ctx, [], []
        for s, lay in enumerate(self.layers):
            table, layer = lay["table"], ctx.layer_index[s]
            base = {"layer": layer, "upstream_layer": int(ctx.layer_ids[s]), "on": self.on,
                    "speaker": self.speaker, "context": self.context,
                    "distance": self.distance}
            counts = {"n_items": len(table), "n_dropped": int(table.attrs.get("dropped", 0))}
            if lay["reason"]:
                rows.append(dict(base, abx_error=float("nan"), n_items=counts["n_items"],
                                 n_cells=0, n_triplets=0, n_dropped=counts["n_dropped"]))
                continue
            keys = lay["plan"].keys
            correct = self.correct[lay["cells"]].numpy()
            cells = keys.assign(error=1.0 - correct / keys["triplets"].to_numpy(np.float64))
            cells = cells[_CELL_COLUMNS]
            all_cells.append(cells.assign(layer=layer, upstream_layer=base["upstream_layer"]))
            rows.append(dict(base, abx_error=_collapse(cells), n_items=counts["n_items"],
                             n_cells=len(cells), n_triplets=int(cells["triplets"].sum()),
                             n_dropped=counts["n_dropped"]))
        warn_degenerate("abx_layers", self.reasons, "abx_error")
        out = pd.DataFrame(rows)
        if self.keep_cells:
            return {"": out, "cells": (
                pd.concat(all_cells, ignore_index=True) if all_cells else
                pd.DataFrame(columns=_CELL_COLUMNS + ["layer", "upstream_layer"]))}
        return out
