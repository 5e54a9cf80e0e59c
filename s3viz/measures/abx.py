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
from .._bootstrap import (Bootstrap, add_interval_columns, bootstrap_options, items_digest,
                          resampling_units)
from .._numerics import float32_distances_span, tensor_guard, unit_rows, warn_degenerate
from ..store import utterance_selection
from ._abx_task import (ABXTask, collapse, label_values, item_tier, resolve_conditions,
                        subsample)
from ._engine import Batch, Context, CorpusLayers, Measure, agree

__all__ = ["ABX", "DISTANCES", "dtw_costs"]

DISTANCES = ("cosine", "euclidean")


def _normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalised rows plus a border column: a zero row lies at the largest angle from
    every other (fastabx's ``normalize_with_singularity``)."""
    norm = x.norm(dim=1, keepdim=True)
    zero = norm.squeeze(1) == 0
    out = torch.where(zero[:, None], torch.full_like(x, 1.0 / math.sqrt(x.shape[1])),
                      x / torch.where(zero[:, None], torch.ones_like(norm), norm))
    border = torch.where(zero[:, None], torch.full_like(norm, -2 * eps), torch.full_like(norm, eps))
    return torch.cat([out, border], 1)


# length ratio per side of a block: padded / useful frames <= RATIO, so a block's padded
# DTW cells are at most RATIO ** 2 = 1.44 times its useful ones
RATIO = 1.2


def _chunks(lens: np.ndarray, budget: int) -> list:
    """The items (``lens`` frames each) in runs of similar length: positions into ``lens``,
    sorted by length, each run of ``n`` items at most ``max(lens) * n <= RATIO * sum(lens)``
    (padding to its longest item adds at most a fifth) and, past its first item, ``max(lens)
    * n <= budget`` frames."""
    order = np.argsort(lens, kind="stable")
    srt = lens[order].astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(srt)])
    out, s = [], 0
    while s < len(srt):
        count = np.arange(1, len(srt) - s + 1)
        padded = count * srt[s:]  # sorted: the run's last item is its longest
        ok = (padded <= RATIO * (cum[s + 1:] - cum[s])) & (padded <= budget)
        ok[0] = True
        e = s + 1 + int(np.flatnonzero(ok)[-1])
        out.append(order[s:e])
        s = e
    return out


# numbers a block holds per frame distance at most (the frame distances, their padded
# copies and the DTW's three diagonals of cost and steps; 1-frame items the worst case,
# about 6 for items of 4 frames)
_WORK = 24


def _chunk_frames(feats: torch.Tensor, start: np.ndarray, lens: np.ndarray):
    """A run of items as ``(frames, pos)``: their frames, unpadded, and ``pos (S, n)``:
    row ``i`` of item ``k`` in them (its last row past its length: padding never reaches
    a DTW value)."""
    local = np.concatenate([[0], np.cumsum(lens)[:-1]])
    rows = np.repeat(start - local, lens) + np.arange(int(lens.sum()))
    pos = local[None, :] + np.minimum(np.arange(int(lens.max()))[:, None], lens[None, :] - 1)
    return feats[torch.as_tensor(rows, device=feats.device)], torch.as_tensor(
        pos, device=feats.device)


def _block_distances(fa: torch.Tensor, pos_a: torch.Tensor, fb: torch.Tensor,
                     pos_b: torch.Tensor, distance: str) -> torch.Tensor:
    """``(S1, n1, S2, n2)`` frame distances of two runs of items (:func:`_chunk_frames`;
    cosine: of unit rows, :func:`_normalise`): one matrix product (or ``cdist``) of their
    frames, then each item's rows and columns picked (padding costs no product)."""
    if distance == "cosine":
        dist = (fa @ fb.T).clamp_(-1, 1).acos_().div_(math.pi)
    else:
        dist = torch.cdist(fa, fb, compute_mode="donot_use_mm_for_euclid_dist")
    out = dist.index_select(0, pos_a.reshape(-1)).index_select(1, pos_b.reshape(-1))
    return out.view(*pos_a.shape, *pos_b.shape)


def _wavefront(dist: torch.Tensor, len1: torch.Tensor, len2: torch.Tensor, both: bool = False):
    """The DTW of :func:`dtw_costs` over anti-diagonals: ``dist (S1, n1, S2, n2)``, ``len1
    (n1,)``, ``len2 (n2,)``. Returns ``(n1, n2)`` costs over steps with the tie rule
    diagonal, ``j - 1``, ``i - 1``; with ``both`` also over the steps of the rule
    diagonal, ``i - 1``, ``j - 1`` (the same pairs' DTW with the items swapped: ``dist``
    transposed gives the same costs).

    No library offers this batched DTW with the tie rule and path length fastabx's
    torchdtw uses (torchdtw is a compiled extension for Python >= 3.12); cell ``(i, j)``
    needs ``(i-1, j)``, ``(i, j-1)`` and ``(i-1, j-1)``, so the ``i + j = k`` cells of
    every pair are one vector step: ``S1 + S2 - 1`` steps instead of ``S1 * S2``.
    """
    s1, n1, s2, n2 = dist.shape
    dev, ch, p = dist.device, 3 if both else 2, n1 * n2
    dist = dist.contiguous()
    # diagonal k in buffer k % 3: channel 0 the cost, 1 (and 2) the steps; row r is cell
    # (r - 1, k - r + 1). Row 0 and every row never written stay +inf: the cells left of
    # column 0 and above row 0. The valid rows of diagonal k are written at step k and
    # read at k + 1 and k + 2 only (a row past them is one never written: still +inf).
    buf = torch.empty(3, ch, s1 + 1, n1, n2, dtype=dist.dtype, device=dev)
    buf[:, 0] = math.inf
    buf[0, 0, 1] = dist[0, :, 0]
    buf[0, 1:, 1] = 1
    out = torch.empty(ch, p, dtype=dist.dtype, device=dev)
    l1 = len1.to(device=dev, dtype=torch.long)[:, None].expand(n1, n2).reshape(-1)
    l2 = len2.to(device=dev, dtype=torch.long)[None, :].expand(n1, n2).reshape(-1)
    end_k = (l1 + l2 - 2).cpu().numpy()
    order = np.argsort(end_k, kind="stable")
    bounds = np.searchsorted(end_k[order], np.arange(s1 + s2))
    order_t = torch.as_tensor(order, device=dev)
    base, row_step = dist.storage_offset(), n1 * s2 * n2 - n2  # (i, j) -> (i + 1, j - 1)
    for k in range(s1 + s2 - 1):
        cur = buf[k % 3]
        if k:
            prev, prev2 = buf[(k - 1) % 3], buf[(k - 2) % 3]
            lo, hi = max(0, k - s2 + 1), min(k, s1 - 1)
            up, left, diag = prev[:, lo:hi + 1], prev[:, lo + 1:hi + 2], prev2[:, lo:hi + 1]
            lu = torch.where(left[0] <= up[0], left, up)  # ties: j - 1 before i - 1
            if both:  # ties: i - 1 before j - 1
                lu[2] = torch.where(up[0] <= left[0], up[2], left[2])
            best = torch.where(diag[0] <= lu[0], diag, lu)  # the diagonal first
            d = dist.as_strided((hi - lo + 1, n1, n2), (row_step, s2 * n2, 1),
                                base + k * n2 + lo * row_step)
            torch.add(best[0], d, out=cur[0, lo + 1:hi + 2])
            torch.add(best[1:], 1, out=cur[1:, lo + 1:hi + 2])
        if bounds[k + 1] > bounds[k]:  # the pairs whose last cell is on this diagonal
            sel = order_t[bounds[k]:bounds[k + 1]]
            flat = cur.view(ch, s1 + 1, p)
            out[:, sel] = flat[:, l1[sel], sel]
    out = out.view(ch, n1, n2)
    return (out[0] / out[1], out[0] / out[2]) if both else out[0] / out[1]


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
    return _wavefront(dist.permute(0, 2, 1, 3), torch.as_tensor(len1), torch.as_tensor(len2))


def _distance_matrix(fx: torch.Tensor, start_x: np.ndarray, lens_x: np.ndarray,
                     fy: torch.Tensor, start_y: np.ndarray, lens_y: np.ndarray,
                     distance: str, max_block: int, symmetric: bool) -> torch.Tensor:
    """``(nx, ny)`` DTW distances between the items of ``fx`` (frames ``start_x[k]`` on,
    ``lens_x[k]`` of them) and those of ``fy``, in blocks of items of similar length
    (:func:`_chunks`) of at most ``max_block`` frame distances (each side at most
    ``sqrt(max_block)`` frames, or one item), so a block holds at most ``_WORK *
    max_block`` numbers. ``symmetric``: the same items on both sides (``fy`` is ``fx``);
    a block and its mirror are one DTW."""
    dev = fx.device
    out = torch.empty(len(lens_x), len(lens_y), dtype=torch.float32, device=dev)
    if not len(lens_x) or not len(lens_y):
        return out
    side = max(1, math.isqrt(max_block))
    cx = _chunks(lens_x, side)
    cy = cx if symmetric else _chunks(lens_y, side)
    for i, rx in enumerate(cx):
        fa, pos_a = _chunk_frames(fx, start_x[rx], lens_x[rx])
        tx, l1 = torch.as_tensor(rx, device=dev), torch.as_tensor(lens_x[rx], device=dev)
        for j in range(i if symmetric else 0, len(cy)):
            ry = cy[j]
            fb, pos_b = (fa, pos_a) if symmetric and j == i else _chunk_frames(
                fy, start_y[ry], lens_y[ry])
            ty, l2 = torch.as_tensor(ry, device=dev), torch.as_tensor(lens_y[ry], device=dev)
            d = _block_distances(fa, pos_a, fb, pos_b, distance)
            if symmetric and j > i:
                cost, mirror = _wavefront(d, l1, l2, both=True)
                out[ty[:, None], tx[None, :]] = mirror.T
            else:
                cost = _wavefront(d, l1, l2)
            out[tx[:, None], ty[None, :]] = cost
    return out


def _cell_sums(dist: torch.Tensor, lab_x: np.ndarray, lab_y: np.ndarray, num: int,
               symmetric: bool, max_block: int) -> torch.Tensor:
    """Correct-triplet sums of every cell of one block, as a ``(num, num)`` table indexed
    by (phone of A and X, phone of B); the triplet counts are :func:`_contexts`'.

    ``dist (nx, ny)``: X rows, A and B columns; ``lab_x``, ``lab_y``: phone codes in
    ``[0, num)``. A triplet ``(a, b, x)`` counts ``1{d(a,x) < d(b,x)} + 1/2 1{=}``;
    with ``symmetric`` the rows are the columns and ``a = x`` is left out. Summed over
    the ``a`` of ``x``'s phone, a ``b`` counts ``(#{a: d(a,x) < d(b,x)} + #{a: d(a,x) <=
    d(b,x)}) / 2``: two binary searches of ``d(b, x)`` among ``x``'s sorted ``d(a, x)``
    (integers, exact), instead of the ``nx * na * nb`` comparisons; then summed per
    phone of ``b``. Rows go in chunks of at most ``max_block`` numbers.
    """
    dev = dist.device
    correct = torch.zeros(num, num, dtype=torch.float64, device=dev)
    lab_y_t = torch.as_tensor(lab_y, device=dev)
    step = max(1, max_block // max(1, dist.shape[1]))
    for p in np.unique(lab_x):
        cols = torch.as_tensor(np.flatnonzero(lab_y == p), device=dev)  # the a of phone p
        rows = np.flatnonzero(lab_x == p)  # the x of phone p
        if not len(cols):
            continue
        for r0 in range(0, len(rows), step):
            rx = torch.as_tensor(rows[r0:r0 + step], device=dev)
            d = dist[rx]  # (x, b): d(b, x)
            thr = d[:, cols]  # (x, a): d(a, x)
            if symmetric:  # a = x is no triplet
                thr = thr.masked_fill(cols[None, :] == rx[:, None], math.inf)
            thr = thr.sort(dim=1).values
            twice = (torch.searchsorted(thr, d, right=False)
                     + torch.searchsorted(thr, d, right=True)).sum(0)  # per b, over x
            per_q = torch.zeros(num, dtype=torch.int64, device=dev).index_add_(0, lab_y_t, twice)
            correct[p] += per_q.double() * 0.5
    return correct


# frame-distance entries of one group's item matrix computed at once (beyond it, one
# matrix per unit pair): 2^26 DTW costs, 256 MiB of float32
GROUP_BUDGET = 1 << 26


def _score_task(task: ABXTask, features, distance: str, owned: set, max_block: int,
                bar) -> torch.Tensor:
    """``(cells,)`` correct-triplet sums of the cells whose X unit is in ``owned``, zeros
    elsewhere (float64). ``features(units)``: ``(frames, start, lens)`` of those units'
    items, in that order (cosine: unit rows, :func:`_normalise`).

    The units sharing the by values (every unit pair of an across task is in one such
    group) get one symmetric item matrix when it fits :data:`GROUP_BUDGET`: its blocks are
    big, and the DTW of a pair and its mirror is one pass, where one matrix per unit pair
    would run many small blocks. A cell reads the rows of its X unit and the columns of
    its A/B unit."""
    out = torch.zeros(len(task.keys), dtype=torch.float64)
    at, cache = 0, {}
    for s, sx, cx, cy, names, scored in task.walk():
        n = int(scored.sum())
        if sx in owned:
            units = task.groups[task.by_key[s]]
            size = sum(len(task.items[u]) for u in units)
            if size * size <= GROUP_BUDGET:
                key = task.by_key[s]
                if key not in cache:
                    cache.clear()  # one group's matrix at a time
                    f = features(units)
                    pos, k = {}, 0
                    for u in units:
                        pos[u] = np.arange(k, k + len(task.items[u]))
                        k += len(task.items[u])
                    cache[key] = (_distance_matrix(*f, *f, distance, max_block, True), pos)
                full, pos = cache[key]
                dev = full.device
                dist = full[torch.as_tensor(pos[sx], device=dev)][
                    :, torch.as_tensor(pos[s], device=dev)]
            else:
                dist = _distance_matrix(*features([sx]), *features([s]), distance, max_block,
                                        task.symmetric and s == sx)
            correct = _cell_sums(dist, cx, cy, len(names), task.symmetric, max_block)
            out[at:at + n] = correct[torch.as_tensor(scored, device=dist.device)].cpu()
            bar.update(n)
        at += n
    return out


class ABX(Measure):
    """ABX error of any label in every layer, as fastabx's ``Task`` defines it
    (``docs/measures.md``, "ABX on any label").

    Args:
        on: what A and X share and B does not: an alignment tier (``"phone"``, ``"word"``),
            ``"speaker"``, a column of the labels, or ``"context"`` (the neighbouring
            segments ``"<previous>|<next>"``).
        by: label(s) A, B and X all share. None: ``"speaker"`` (ZeroSpeech's within-speaker
            task) unless the speaker is ``on`` or in ``across``; ``()`` for none.
        across: label(s) A and B share and X differs in (each of them); None: none.
        distance: ``"cosine"`` (angular, ZeroSpeech's) or ``"euclidean"`` frame distance.
        max_items: at most this many items of each group of items sharing the on, by and
            across labels (an A, B or X set of a cell: fastabx's ``max_size_group``),
            drawn with ``seed``; a pair ``(n, m)`` also keeps at most ``m`` X groups per
            cell of an across task (fastabx's ``max_x_across``; an int keeps 5, as
            ZeroSpeech); None: every item and X group.
        max_block: frame distances of one DTW block (items of similar length, each side
            at most ``sqrt(max_block)`` frames); the block holds at most 24 numbers per
            frame distance. The result does not depend on it.
        utterances: corpus positions whose segments are items (None: all).
        progress: a progress bar over the scored cells.
        bootstrap, confidence: error bars: ``abx_error_lo``/``_hi`` from this many
            resamples of the speakers (drawn with ``seed``; None: none), a percentile
            interval at ``confidence``; the speaker must be a by or across label.

    ``compute()`` gives the columns of :func:`s3viz.abx_layers`.
    """

    name = "abx"
    passes = 1

    def __init__(self, *, on: str = "phone", by=None, across=None, distance: str = "cosine",
                 max_items=10, seed: int = 0, max_block: int = 2 ** 20, cells: bool = False,
                 bootstrap: int | None = None, confidence: float = 0.95, utterances=None,
                 progress: bool = False):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.on, self.by, self.across = resolve_conditions(on, by, across)
        self.by_default = by is None
        self.distance = distance
        self.max_items, self.max_x_across = _max_items(max_items)
        self.max_block = _v.integer(max_block, "max_block", minimum=1)
        self.seed = _v.integer(seed, "seed", minimum=0)
        self.keep_cells = bool(cells)
        self.utterances, self.progress = utterances, bool(progress)
        self.resamples, self.confidence = bootstrap_options(bootstrap, confidence)
        if self.resamples and "speaker" not in self.by + self.across:
            raise ValueError("ABX intervals resample speakers, which needs 'speaker' among the "
                             f"by or across labels (by={self.by}, across={self.across}); pass "
                             "bootstrap=None")

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        meta = ctx.meta
        self.sel = utterance_selection(self.utterances, len(meta.ids))
        if "speaker" in [self.on, *self.by, *self.across] and \
                "speaker" not in meta.labels.columns:
            role = ("by (by=None's default: within speaker)" if self.by_default and
                    "speaker" in self.by else "on" if self.on == "speaker" else
                    "by" if "speaker" in self.by else "across")
            fix = ("pass by=() to compare the items of all speakers together"
                   if role.startswith("by (") else f"leave 'speaker' out of {role}")
            raise ValueError(f"ABX needs a 'speaker' column in the labels (store.labels, or "
                             f"the corpus's): 'speaker' is in {role}; add one (e.g. one "
                             f"speaker per utterance id), or {fix}")
        corpus, self.layers, frames, n_cells = CorpusLayers(ctx), [], [], 0
        mine = np.zeros(len(meta.ids), dtype=bool)
        mine[ctx.positions] = True
        items: dict = {}  # layers of one frame rate, field and frame counts: one item set
        for s in range(ctx.num_layers):
            key = (corpus.downsample_rates[s], corpus.receptive_fields[s],
                   corpus.lengths(s).tobytes())
            if key not in items:
                items[key] = self._items(corpus, s, meta.labels, mine)
            table, task = items[key]["table"], items[key]["task"]
            layer = ctx.layer_index[s]
            if table.empty:
                raise ValueError(f"no {task.tier} segments with frames in stored layer {layer}")
            if task.keys.empty:
                raise ValueError(
                    f"no ABX cell in stored layer {layer} for on={self.on!r}, by={self.by}, "
                    f"across={self.across}: a cell needs two items of one {self.on} and one of "
                    f"another sharing {self.by or 'nothing'}"
                    + (f", and an X of another {'/'.join(self.across)}" if self.across else "")
                    + "; use more utterances or fewer conditions")
            self.layers.append(dict(items[key], cells=slice(n_cells, n_cells + len(task.keys))))
            n_cells += len(task.keys)
            frames.append(torch.zeros(int(items[key]["offsets"][-1]), ctx.sizes[s],
                                      dtype=ctx.read_dtype))
        self.boot = None
        if self.resamples:
            _, names, kind = resampling_units(meta.labels, self.sel)
            if kind != "speaker":
                raise ValueError("ABX intervals resample speakers, and the selected "
                                 "utterances have one speaker only; pass bootstrap=None or "
                                 "use utterances of several speakers")
            self.boot = Bootstrap(names, kind, self.resamples, self.confidence, self.seed,
                                  items=items_digest(meta.labels, self.sel))
        self.n_cells = n_cells
        self.add_state("frames", frames, lambda v, reduce: [reduce(t) for t in v])

    def _items(self, corpus: CorpusLayers, s: int, labels: pd.DataFrame, mine) -> dict:
        """Layer ``s``'s items (the table, its task, where each item's frames go) and the
        X units this rank scores (those whose first item's utterance it holds)."""
        from ..segments import segment_table

        tier = item_tier(self.on, self.by, self.across)
        table = segment_table(corpus, s, tier,
                              utterances=None if self.utterances is None else self.sel)
        dropped = table.attrs.get("dropped", 0)
        if self.max_items is not None and len(table):
            values = {n: label_values(table, labels, n, tier)
                      for n in [self.on, *self.by, *self.across]}
            table = table.iloc[subsample(table, values, self.max_items, self.seed)]
            table = table.reset_index(drop=True)
        task = ABXTask(table, labels, self.on, self.by, self.across, self.max_x_across,
                       self.seed)
        sizes = (table["frame_end"] - table["frame_start"]).to_numpy(np.int64)
        offs = np.concatenate([[0], np.cumsum(sizes)])
        row_utt = np.repeat(table["utt"].to_numpy(np.int64), sizes)
        first_utt = {u: int(table["utt"].iat[task.items[u][0]]) for u in task.units}
        return {"table": table, "task": task, "offsets": offs, "dropped": dropped,
                "owned": {u for u, i in first_utt.items() if mine[i]},
                "frame": np.repeat(table["frame_start"].to_numpy(np.int64) - offs[:-1], sizes)
                + np.arange(offs[-1]),
                "rows": np.searchsorted(row_utt, np.arange(len(corpus) + 1))}

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
        from tqdm.auto import tqdm

        ctx, self.reasons = self.ctx, {}
        total = sum(int(lay["task"].keys["triplets"].size) for lay in self.layers)
        with tqdm(total=total, unit="cell", desc="ABX cells", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            for s, lay in enumerate(self.layers):
                bar.set_postfix_str(f"layer {ctx.layer_index[s]}")
                self._score_layer(s, lay, bar)

    def _score_layer(self, s: int, lay: dict, bar) -> None:
        ctx = self.ctx
        x, self.frames[s] = self.frames[s], None
        # the guard of every measure (s3viz._numerics) on what the distance sees: the
        # unit rows (cosine) or the centred frames (euclidean); docs/measures.md
        names = lambda i, s=s: self._name(s, int(i))  # noqa: E731
        if self.distance == "cosine":
            x = unit_rows(x, in_place=True)  # x is this measure's own copy
            dt = torch.float32 if ctx.store_dtype == torch.float64 else ctx.store_dtype
            guard = tensor_guard(x, dt, centre=False, names=names)
        else:
            guard = tensor_guard(x, ctx.store_dtype, centre=True,
                                 span=float32_distances_span(), names=names)
        self.reasons[ctx.layer_index[s]] = lay["reason"] = guard.reason
        if guard.reason:
            bar.update(len(lay["task"].keys))
            return
        offs, task = lay["offsets"], lay["task"]
        lens = np.diff(offs)
        def features(units):  # those units' items' frames, as the distance reads them
            items = np.concatenate([task.items[u] for u in units])
            start = np.concatenate([[0], np.cumsum(lens[items])])
            rows = np.repeat(offs[items] - start[:-1], lens[items]) + np.arange(start[-1])
            f = guard(x[torch.from_numpy(rows)], torch.float32).to(ctx.device)
            return (_normalise(f) if self.distance == "cosine" else f, start[:-1],
                    lens[items])

        self.correct[lay["cells"]] = _score_task(task, features, self.distance, lay["owned"],
                                                 self.max_block, bar)
        x = None  # frees the layer copy (the closure above holds it until now)

    def _name(self, s: int, row: int) -> str:
        """Row ``row`` of layer ``s``'s item frames as (utterance, frame), for a guard's message."""
        lay = self.layers[s]
        k = int(np.searchsorted(lay["offsets"], row, side="right") - 1)
        item = lay["table"].iloc[k]
        return (f"utterance {item['id']!r}, frame "
                f"{int(item['frame_start'] + row - lay['offsets'][k])}")

    def _collapse(self, task: ABXTask, cells: pd.DataFrame, counts=None) -> np.ndarray:
        weights = None
        if counts is not None:
            at = {n: i for i, n in enumerate(self.boot.names)}
            cols = [c for c in ("speaker", "speaker_x") if c in cells.columns]
            weights = {c: counts[:, cells[c].map(at).to_numpy(np.int64)] for c in cols}
        return collapse(cells, task.levels(), [f"{n}_x" for n in self.across],
                        weights, 1 if counts is None else len(counts))

    def compute(self) -> pd.DataFrame:
        ctx, rows, all_cells, reps = self.ctx, [], [], {}
        for s, lay in enumerate(self.layers):
            table, task, layer = lay["table"], lay["task"], ctx.layer_index[s]
            base = {"layer": layer, "upstream_layer": int(ctx.layer_ids[s]), "on": self.on,
                    "by": "+".join(self.by), "across": "+".join(self.across),
                    "distance": self.distance}
            cells = task.keys.iloc[:0].assign(error=0.0)  # a degenerate layer: none, NaN
            if not lay["reason"]:
                correct = self.correct[lay["cells"]].numpy()
                cells = task.keys.assign(
                    error=1.0 - correct / task.keys["triplets"].to_numpy(np.float64))
                all_cells.append(cells.assign(layer=layer, upstream_layer=base["upstream_layer"]))
                if self.boot is not None:
                    reps[(layer,)] = {"abx_error": self._collapse(task, cells, self.boot.counts)}
            rows.append(dict(base, abx_error=float(self._collapse(task, cells)[0]),
                             n_items=len(table), n_cells=len(cells),
                             n_triplets=int(cells["triplets"].sum()),
                             n_dropped=int(lay["dropped"])))
        warn_degenerate("abx_layers", self.reasons, "abx_error")
        out = pd.DataFrame(rows)
        if self.boot is not None:
            out = add_interval_columns(out, self.boot, ["layer"], reps, ["abx_error"])
        if self.keep_cells:
            cols = list(self.layers[0]["task"].keys.columns) + ["error", "layer", "upstream_layer"]
            return {"": out, "cells": (pd.concat(all_cells, ignore_index=True) if all_cells
                                       else pd.DataFrame(columns=cols))}
        return out


def _max_items(value) -> tuple:
    """``(group cap, X-group cap)`` from ``max_items`` (an int keeps ZeroSpeech's 5 X groups)."""
    if value is None:
        return None, None
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"max_items must be an int, a pair (items per group, X groups "
                             f"per cell) or None, got {value!r}")
        return (_v.integer(value[0], "max_items", minimum=2, none_ok=True),
                _v.integer(value[1], "max_items (X groups)", minimum=1, none_ok=True))
    if isinstance(value, (str, bytes)) or not np.isscalar(value):
        raise TypeError(f"max_items must be an int, a pair (items per group, X groups per "
                        f"cell) or None, got {value!r}")
    return _v.integer(value, "max_items", minimum=2), 5
