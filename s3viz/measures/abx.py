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

    def speakers(self, owned: set) -> list:
        """The speakers whose items the owned cells read (X's, and A's and B's)."""
        mine = [s for s in np.unique(self.spk) if s in owned]
        return mine if self.speaker == "within" or not mine else list(np.unique(self.spk))

    def score(self, features: dict, distance: str, owned: set, max_block: int) -> torch.Tensor:
        """``(cells,)`` correct-triplet sums of the owned cells, zeros elsewhere (float64).

        ``features[s]``: ``(frames, start, lens)`` of speaker ``s``'s items in table order
        (item ``k``: ``lens[k]`` rows from ``start[k]``; cosine: unit rows, :func:`_normalise`).
        """
        out = torch.zeros(len(self.keys), dtype=torch.float64)
        at, group, dist = 0, None, None
        symmetric = self.speaker == "within"
        for s, sx, _, (in_x, in_y, cx, cy), _, names, t in self._walk():
            n = int((t > 0).sum())
            if sx in owned:
                if group != (s, sx):  # one distance matrix per speaker (pair)
                    group = (s, sx)
                    dist = _distance_matrix(*features[sx], *features[s], distance, max_block,
                                            symmetric)
                dev = dist.device
                block = dist[torch.as_tensor(in_x, device=dev)][:, torch.as_tensor(in_y,
                                                                                    device=dev)]
                correct = _cell_sums(block, cx, cy, len(names), symmetric, max_block)
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


def _resampled_errors(cells: pd.DataFrame, boot: Bootstrap, across: bool,
                      budget: int = 1 << 24) -> np.ndarray:
    """``(resamples,)`` ABX errors of :func:`_collapse` with the speakers drawn in each
    resample: the cells' errors held fixed, a speaker drawn ``c`` times weighs ``c`` in
    the mean over speakers (and, ``across``, over X speakers; a cell ``(s, x)`` then
    weighs ``c_s c_x``); a phone pair no drawn speaker has drops out of the last mean.
    Replicates go in chunks of at most ``budget`` numbers."""
    at = {n: i for i, n in enumerate(boot.names)}
    spk = cells["speaker"].map(at).to_numpy(np.int64)
    g1_keys = cells[["phone", "other", "speaker"]].astype(str).agg("\x1f".join, axis=1)
    g1_names, g1 = np.unique(g1_keys.to_numpy(), return_inverse=True)
    first = np.unique(g1, return_index=True)[1]  # one cell of each (phone, other, speaker)
    g1_spk = spk[first]
    pair = cells[["phone", "other"]].astype(str).agg("\x1f".join, axis=1).to_numpy()[first]
    _, g2 = np.unique(pair, return_inverse=True)
    n1, n2, err = len(g1_names), int(g2.max()) + 1, cells["error"].to_numpy(np.float64)
    if not across:  # the mean over contexts does not depend on the draw
        m1 = np.bincount(g1, err, n1) / np.bincount(g1, minlength=n1)
    else:
        xs = cells["speaker_x"].map(at).to_numpy(np.int64)
    out = np.empty(boot.resamples)
    step = max(1, budget // max(len(cells), n1))
    for r0 in range(0, boot.resamples, step):
        c = boot.counts[r0:r0 + step]
        rc = len(c)
        off = (np.arange(rc) * n1)[:, None]
        if across:
            w = c[:, xs]  # (rc, cells): the draws of each cell's X speaker
            num = np.bincount((off + g1).ravel(), (w * err).ravel(), rc * n1).reshape(rc, n1)
            den = np.bincount((off + g1).ravel(), w.ravel(), rc * n1).reshape(rc, n1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean1 = num / den
        else:
            mean1 = np.broadcast_to(m1, (rc, n1))
        w2 = np.where(np.isfinite(mean1), c[:, g1_spk], 0.0)
        off2 = (np.arange(rc) * n2)[:, None]
        num = np.bincount((off2 + g2).ravel(), (w2 * np.nan_to_num(mean1)).ravel(), rc * n2)
        den = np.bincount((off2 + g2).ravel(), w2.ravel(), rc * n2)
        with np.errstate(invalid="ignore", divide="ignore"):
            m2 = (num / den).reshape(rc, n2)
        m2 = np.where(den.reshape(rc, n2) > 0, m2, 0.0)
        pairs = (den.reshape(rc, n2) > 0).sum(1)  # none: a draw of one speaker, across
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r0:r0 + rc] = np.where(pairs > 0, m2.sum(1) / pairs, np.nan)
    return out


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
        max_block: frame distances of one DTW block (items of similar length, each side
            at most ``sqrt(max_block)`` frames); the block holds at most 24 numbers per
            frame distance (about 6 for items of 4 frames). The result does not depend
            on it.
        bootstrap, confidence: error bars: ``abx_error_lo``/``_hi`` from this many
            resamples of the speakers (drawn with ``seed``; None: none), a percentile
            interval at ``confidence`` (``docs/measures.md``, "Error bars").

    ``compute()`` gives the columns of :func:`s3viz.abx_layers`. The labels need a
    ``speaker`` column (the corpus's, or ``store.labels``).
    """

    name = "abx"
    passes = 1

    def __init__(self, *, on: str = "phone", speaker: str = "within", context: str = "any",
                 distance: str = "cosine", max_items: int | None = None, seed: int = 0,
                 max_block: int = 2 ** 20, cells: bool = False, bootstrap: int | None = None,
                 confidence: float = 0.95):
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
        self.resamples, self.confidence = bootstrap_options(bootstrap, confidence)

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
        self.boot = None
        if self.resamples:
            _, names, kind = resampling_units(meta.labels)
            if kind != "speaker":
                raise ValueError("ABX intervals resample speakers, and the corpus has one; "
                                 "pass bootstrap=None or use a corpus of several speakers")
            self.boot = Bootstrap(names, kind, self.resamples, self.confidence, self.seed,
                                  items=items_digest(meta.labels))
        # the cells of X speaker s are scored by the rank holding s's first utterance
        spk, first = np.unique(speakers, return_index=True)
        self.owned = set(spk[np.isin(first, ctx.positions)].tolist())
        corpus, self.layers, frames, n_cells = CorpusLayers(ctx), [], [], 0
        items: dict = {}  # layers of one frame rate, field and frame counts: one item set
        for s in range(ctx.num_layers):
            key = (corpus.downsample_rates[s], corpus.receptive_fields[s],
                   corpus.lengths(s).tobytes())
            if key not in items:
                items[key] = self._items(corpus, s)
            table, plan = items[key]["table"], items[key]["plan"]
            layer = ctx.layer_index[s]
            if table.empty:
                raise ValueError(f"no {self.on} segments with frames in stored layer {layer}")
            if plan.keys.empty:
                raise ValueError(
                    f"no ABX cell in stored layer {layer} for speaker={self.speaker!r}, "
                    f"context={self.context!r}: every cell needs two tokens of a phone and one "
                    "of another (and for 'across' a second speaker); use more utterances or "
                    "context='any'")
            self.layers.append(dict(items[key], cells=slice(n_cells, n_cells + len(plan.keys))))
            n_cells += len(plan.keys)
            frames.append(torch.zeros(int(items[key]["offsets"][-1]), ctx.sizes[s],
                                      dtype=ctx.read_dtype))
        self.n_cells = n_cells
        self.add_state("frames", frames, lambda v, reduce: [reduce(t) for t in v])

    def _items(self, corpus: CorpusLayers, s: int) -> dict:
        """Layer ``s``'s items (the table, its cells, where each item's frames go)."""
        table = segment_table(corpus, s, self.on)
        if self.max_items is not None:
            table = _subsample(table, self.max_items, self.seed, self.context)
        plan = _Plan(table, self.speaker, self.context)
        sizes = (table["frame_end"] - table["frame_start"]).to_numpy(np.int64)
        offs = np.concatenate([[0], np.cumsum(sizes)])
        # per row of the items' frames its frame in its utterance; per utterance its rows
        row_utt = np.repeat(table["utt"].to_numpy(np.int64), sizes)
        return {"table": table, "plan": plan, "offsets": offs,
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
        ctx, self.reasons = self.ctx, {}
        for s, lay in enumerate(self.layers):
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
                continue
            offs, plan = lay["offsets"], lay["plan"]
            lens = np.diff(offs)
            features = {}  # per speaker its items' frames, as the distance reads them
            for spk in plan.speakers(self.owned):
                items = np.flatnonzero(plan.spk == spk)
                start = np.concatenate([[0], np.cumsum(lens[items])])
                rows = np.repeat(offs[items] - start[:-1], lens[items]) + np.arange(start[-1])
                f = guard(x[torch.from_numpy(rows)], torch.float32).to(ctx.device)
                features[spk] = (_normalise(f) if self.distance == "cosine" else f,
                                 start[:-1], lens[items])
            del x
            self.correct[lay["cells"]] = plan.score(features, self.distance, self.owned,
                                                    self.max_block)

    def _name(self, s: int, row: int) -> str:
        """Row ``row`` of layer ``s``'s item frames as (utterance, frame), for a guard's message."""
        lay = self.layers[s]
        k = int(np.searchsorted(lay["offsets"], row, side="right") - 1)
        item = lay["table"].iloc[k]
        return (f"utterance {item['id']!r}, frame "
                f"{int(item['frame_start'] + row - lay['offsets'][k])}")

    def compute(self) -> pd.DataFrame:
        ctx, rows, all_cells, reps = self.ctx, [], [], {}
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
                if self.boot is not None:
                    reps[(layer,)] = {"abx_error": _resampled_errors(
                        cells, self.boot, self.speaker == "across")}
            rows.append(dict(base, abx_error=_collapse(cells), n_items=len(table),
                             n_cells=len(cells), n_triplets=int(cells["triplets"].sum()),
                             n_dropped=int(table.attrs.get("dropped", 0))))
        warn_degenerate("abx_layers", self.reasons, "abx_error")
        out = pd.DataFrame(rows)
        if self.boot is not None:
            out = add_interval_columns(out, self.boot, ["layer"], reps, ["abx_error"])
        if self.keep_cells:
            return {"": out, "cells": (
                pd.concat(all_cells, ignore_index=True) if all_cells else
                pd.DataFrame(columns=_CELL_COLUMNS + ["layer", "upstream_layer"]))}
        return out
