"""ABX phone discriminability of every layer, on the measure engine (ZeroSpeech's ABX,
with fastabx's definitions; ``docs/measures.md``): one pass gathers the items' frames
(summed over ranks); each rank then scores the cells of the X speakers it owns, and one
more sum gives every rank every cell. :func:`s3viz.abx_layers` runs it on a store.
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


def _padded(frames: torch.Tensor, offs: np.ndarray, device, distance: str) -> torch.Tensor:
    """``(items, longest, D)``: item ``k``'s frames ``frames[offs[k]:offs[k + 1]]``, padded
    (cosine: as unit rows, :func:`_normalise`)."""
    lens = np.diff(offs)
    pad = torch.zeros(len(lens), int(lens.max()) if len(lens) else 1, frames.shape[1],
                      dtype=torch.float32, device=device)
    for k, (a, b) in enumerate(zip(offs[:-1], offs[1:])):
        pad[k, : b - a] = frames[a:b].to(device=device, dtype=torch.float32)
    if distance == "cosine":
        pad = _normalise(pad.reshape(-1, pad.shape[-1])).view(pad.shape[0], pad.shape[1], -1)
    return pad


def _distance_matrix(pad: torch.Tensor, lens: np.ndarray, xi: np.ndarray, yi: np.ndarray,
                     distance: str, max_block: int) -> torch.Tensor:
    """``(len(xi), len(yi))`` DTW distances between the padded items ``xi`` and ``yi``
    (``lens`` frames each), in blocks of at most ``max_block`` frame distances (items
    sorted by length first, so a block pads little)."""
    dev = pad.device
    out = torch.empty(len(xi), len(yi), dtype=torch.float32, device=dev)
    if not len(xi) or not len(yi):
        return out
    ox, oy = np.argsort(lens[xi], kind="stable"), np.argsort(lens[yi], kind="stable")
    sx, sy = xi[ox], yi[oy]
    cols = max(1, min(len(sy), max_block // max(1, int(lens[sy].max()) * int(lens[sx].max()))))
    for c0 in range(0, len(sy), cols):
        cy = sy[c0:c0 + cols]
        wy = int(lens[cy].max())
        r0 = 0
        while r0 < len(sx):
            # rows while the block stays under max_block (lengths increase along sx)
            rows = max(1, max_block // max(1, len(cy) * wy * int(lens[sx[-1]])))
            cx = sx[r0:r0 + rows]
            wx = int(lens[cx].max())
            d = _frame_distances(pad[cx, :wx], pad[cy, :wy], distance)
            block = dtw_costs(d, torch.as_tensor(lens[cx], device=dev),
                              torch.as_tensor(lens[cy], device=dev))
            out[torch.as_tensor(ox[r0:r0 + rows], device=dev)[:, None],
                torch.as_tensor(oy[c0:c0 + cols], device=dev)[None, :]] = block
            r0 += rows
    return out


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
        rows, trip = [], []
        for s, sx, _, _, c, names, t in self._walk():
            p, q = np.nonzero(t > 0)
            rows += [(s, sx, names[a], names[b], c) for a, b in zip(p, q)]
            trip.append(t[p, q])
        self.keys = pd.DataFrame(rows, columns=_CELL_COLUMNS[:5])
        self.keys["triplets"] = np.concatenate(trip) if trip else np.zeros(0, dtype=np.int64)

    def _walk(self):
        """Per group (speaker of A and B, speaker of X; X items, A/B items) in order, its
        cells (:func:`_contexts`)."""
        lab, ctx, within = self.lab, self.ctx, self.speaker == "within"
        speakers = np.unique(self.spk)
        for s in speakers:
            ys = np.flatnonzero(self.spk == s)
            for sx in ([s] if within else speakers[speakers != s]):
                xs = ys if within else np.flatnonzero(self.spk == sx)
                for c, in_x, in_y, names, cx, cy, t in _contexts(lab[xs], lab[ys], ctx[xs],
                                                                  ctx[ys], within):
                    yield s, sx, (xs, ys), (in_x, in_y, cx, cy), c, names, t

    def score(self, pad: torch.Tensor, lens: np.ndarray, distance: str, owned: set,
              max_block: int) -> torch.Tensor:
        """``(cells,)`` correct-triplet sums of the owned cells of the padded items
        (:func:`_padded`), zeros elsewhere (float64)."""
        out = torch.zeros(len(self.keys), dtype=torch.float64)
        dev, at, group, dist = pad.device, 0, None, None
        symmetric = self.speaker == "within"
        for s, sx, (xs, ys), (in_x, in_y, cx, cy), _, names, t in self._walk():
            n = int((t > 0).sum())
            if sx in owned:
                if group != (s, sx):  # one distance matrix per speaker (pair)
                    group = (s, sx)
                    dist = _distance_matrix(pad, lens, xs, ys, distance, max_block)
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
        max_block: frame distances held at once by one DTW block.

    ``compute()`` gives the columns of :func:`s3viz.abx_layers`. The labels need a
    ``speaker`` column (the corpus's, or ``store.labels``).
    """

    name = "abx"
    passes = 1

    def __init__(self, *, on: str = "phone", speaker: str = "within", context: str = "any",
                 distance: str = "cosine", max_items: int | None = None, seed: int = 0,
                 max_block: int = 2 ** 24, cells: bool = False):
        super().__init__()
        for arg, value, choices in (("speaker", speaker, SPEAKER_MODES),
                                    ("context", context, CONTEXT_MODES),
                                    ("distance", distance, DISTANCES)):
            if value not in choices:
                raise ValueError(f"{arg} must be one of {choices}, got {value!r}")
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
        spk, first = np.unique(speakers, return_index=True)
        self.owned = set(spk[np.isin(first, ctx.positions)].tolist())
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
            offs = np.concatenate([[0], np.cumsum(sizes)])
            # per row of the items' frames its frame in its utterance; per utterance its rows
            row_utt = np.repeat(table["utt"].to_numpy(np.int64), sizes)
            self.layers.append({"table": table, "plan": plan, "offsets": offs,
                                "frame": np.repeat(table["frame_start"].to_numpy(np.int64)
                                                   - offs[:-1], sizes) + np.arange(offs[-1]),
                                "rows": np.searchsorted(row_utt, np.arange(len(meta) + 1)),
                                "cells": slice(n_cells, n_cells + len(plan.keys))})
            n_cells += len(plan.keys)
            frames.append(torch.zeros(int(sizes.sum()), ctx.sizes[s], dtype=ctx.read_dtype))
        self.n_cells = n_cells
        self.add_state("frames", frames, lambda v, reduce: [reduce(t) for t in v])

    def update(self, batch: Batch, pass_index: int) -> None:
        for s, lay in enumerate(self.layers):
            lo, hi = lay["rows"][batch.positions], lay["rows"][batch.positions + 1]
            dst = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]
                                 + [np.zeros(0, dtype=np.int64)])
            starts = np.concatenate([[0], np.cumsum(batch.lens[:, s])])  # in the batch
            src = np.repeat(starts[:-1], hi - lo) + lay["frame"][dst]
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
            # the guard of every measure (s3viz._numerics) on what the distance sees: the
            # unit rows (cosine) or the centred frames (euclidean); docs/measures.md
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
            pad = _padded(guard(x, torch.float32), offs, ctx.device, self.distance)
            del x
            self.correct[lay["cells"]] = lay["plan"].score(pad, np.diff(offs), self.distance,
                                                           self.owned, self.max_block)

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
            cells = lay["plan"].keys.iloc[:0]  # a degenerate layer: none scored, NaN
            if not lay["reason"]:
                keys = lay["plan"].keys
                correct = self.correct[lay["cells"]].numpy()
                cells = keys.assign(error=1.0 - correct / keys["triplets"].to_numpy(np.float64))
                cells = cells[_CELL_COLUMNS]
                all_cells.append(cells.assign(layer=layer, upstream_layer=base["upstream_layer"]))
            rows.append(dict(base, abx_error=_collapse(cells), n_items=len(table),
                             n_cells=len(cells), n_triplets=int(cells["triplets"].sum()),
                             n_dropped=int(table.attrs.get("dropped", 0))))
        warn_degenerate("abx_layers", self.reasons, "abx_error")
        out = pd.DataFrame(rows)
        if self.keep_cells:
            return {"": out, "cells": (
                pd.concat(all_cells, ignore_index=True) if all_cells else
                pd.DataFrame(columns=_CELL_COLUMNS + ["layer", "upstream_layer"]))}
        return out
