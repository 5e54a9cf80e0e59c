"""ABX phone discriminability of each stored layer, as in ZeroSpeech and Libri-light.

:func:`abx_layers` measures how often a phone token is closer (DTW-averaged
frame distance) to another token of its phone than to one of another phone,
within or across speakers and contexts, with fastabx's definitions. fastabx
needs Python >= 3.12, so the same quantities are computed here in torch and
``tests/test_abx.py`` checks them against fastabx's values. Items, distances,
cells and averaging: ``docs/measures.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from . import _validate as _v
from ._device import resolve_device as _resolve_device
from ._numerics import (float32_distances_span, read_dtype, row_names, tensor_guard, unit_rows,
                        warn_degenerate)
from ._labels import label_str
from .segments import segment_table
from .store import tag_weights

__all__ = ["abx_layers", "ABXCells", "DISTANCES"]


class ABXCells(NamedTuple):
    """:func:`abx_layers` with ``return_cells=True``; unpacks as ``table, cells = ...``."""

    table: pd.DataFrame
    """One row per layer (the table ``abx_layers`` returns without cells)."""
    cells: pd.DataFrame
    """One row per scored cell and layer: the numbers the averages are taken from."""

DISTANCES = ("cosine", "euclidean")
SPEAKER_MODES = ("within", "across")
CONTEXT_MODES = ("any", "within")


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
               symmetric: bool, max_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct-triplet sums and triplet counts of every cell of one block, as ``(num, num)``
    tables indexed by (phone of A and X, phone of B).

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
    pairs = torch.zeros(num, dtype=torch.float64, device=dev)  # (x, a) pairs per phone
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
        pairs.index_add_(0, lx, valid.sum(1).double())
    triplets = pairs[:, None] * n_q[None, :]
    eye = torch.eye(num, dtype=torch.bool, device=dev)
    return correct.masked_fill(eye, 0.0), triplets.masked_fill(eye, 0.0)


def _score_group(dist: torch.Tensor, lab_x: np.ndarray, lab_y: np.ndarray, ctx_x: np.ndarray,
                 ctx_y: np.ndarray, symmetric: bool, keys: dict, out: list,
                 max_block: int = 2 ** 24) -> None:
    """Score every cell whose X are rows and A, B columns of ``dist`` (one speaker or pair)."""
    dev = dist.device
    for c in np.unique(ctx_y):
        in_y = np.flatnonzero(ctx_y == c)
        in_x = np.flatnonzero(ctx_x == c)
        if not len(in_x):
            continue
        names, codes = np.unique(np.concatenate([lab_y[in_y], lab_x[in_x]]), return_inverse=True)
        cy = torch.as_tensor(codes[:len(in_y)], device=dev)
        cx = torch.as_tensor(codes[len(in_y):], device=dev)
        block = dist[torch.as_tensor(in_x, device=dev)][:, torch.as_tensor(in_y, device=dev)]
        correct, triplets = _cell_sums(block, cx, cy, len(names), symmetric, max_block)
        for p, q in torch.nonzero(triplets > 0).tolist():
            n = float(triplets[p, q])
            out.append({**keys, "phone": names[p], "other": names[q], "context": c,
                        "error": 1.0 - float(correct[p, q]) / n, "triplets": int(n)})


def _collapse(cells: pd.DataFrame) -> float:
    """ZeroSpeech's average: over contexts (and x's speaker), then speakers, then phone pairs."""
    if cells.empty:
        return float("nan")
    by_spk = cells.groupby(["phone", "other", "speaker"], sort=False)["error"].mean()
    by_pair = by_spk.groupby(level=["phone", "other"], sort=False).mean()
    return float(by_pair.mean())


# --------------------------------------------------------------------------- public


def abx_layers(store, *, on: str = "phone", speaker: str = "within", context: str = "any",
               distance: str = "cosine", layers: Sequence[int] | None = None,
               max_items: int | None = None, device=None, seed: int = 0,
               max_block: int = 2 ** 24, return_cells: bool = False):
    """ABX error of phone discrimination in every stored layer (``docs/measures.md``).

    Args:
        store: a :class:`~s3viz.store.LayerStore` with phone alignments and,
            for the speaker conditions, a ``speaker`` column in ``store.labels``.
        on: the alignment column whose segments are the items (``"phone"``).
        speaker: ``"within"`` (A, B, X from one speaker) or ``"across"`` (X from
            another speaker than A and B).
        context: ``"any"`` or ``"within"`` (A, B, X share previous and next phone).
        distance: ``"cosine"`` (angular, ZeroSpeech's) or ``"euclidean"`` frame distance.
        layers: stored layer indices (default all).
        max_items: at most this many items per phone, speaker (and context) group,
            drawn with ``seed`` (ZeroSpeech keeps 10); None keeps all.
        device: torch device (None: cuda when available).
        seed: seed of the ``max_items`` draw.
        max_block: frame distances held at once by one DTW block.
        return_cells: also return the scored cells (see Returns).

    Returns:
        One row per layer: ``layer``, ``upstream_layer``, ``on``, ``speaker``,
        ``context``, ``distance``, ``abx_error`` (a fraction; 0.5 is chance),
        ``n_items``, ``n_cells``, ``n_triplets``, ``n_dropped`` (segments
        without a frame). A degenerate layer (constant, all zero, varying only
        at rounding level, for ``"cosine"`` frames all pointing one way, for
        ``"euclidean"`` a frame farther out than float32 distances resolve:
        ``docs/measures.md``) gets ``abx_error`` NaN and one
        :class:`~s3viz._numerics.DegenerateLayerWarning`. With ``return_cells=True``, an :class:`ABXCells`
        named tuple ``(table, cells)``:
        ``cells`` has one row per scored cell and layer (``layer``,
        ``upstream_layer``, ``speaker``,
        ``speaker_x``, ``phone``, ``other``, ``context``, ``error``, ``triplets``),
        the numbers the averages are taken from. Both carry ``attrs["weights"]``,
        the store's :attr:`~s3viz.store.LayerStore.weights`.
    """
    if speaker not in SPEAKER_MODES:
        raise ValueError(f"speaker must be one of {SPEAKER_MODES}, got {speaker!r}")
    if context not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if not isinstance(on, str):
        raise TypeError(f"on must be an alignment column name (str), got {on!r}")
    max_items = _v.integer(max_items, "max_items", minimum=2, none_ok=True)
    max_block = _v.integer(max_block, "max_block", minimum=1)
    seed = _v.integer(seed, "seed", minimum=0)
    if "speaker" not in store.labels.columns:
        raise ValueError("abx_layers needs a 'speaker' column in store.labels (the speaker "
                         "conditions); add one, e.g. one speaker per utterance id")
    layer_list = _v.stored_layers(store, layers)
    dev = _resolve_device(device)
    rows, all_cells, degenerate = [], [], {}
    missing = [store.ids[i] for i, v in enumerate(store.labels["speaker"].tolist())
               if label_str(v) == ""]
    if missing:
        raise ValueError(f"abx_layers: {len(missing)} utterance(s) have no speaker (e.g. "
                         f"{missing[:5]}); the speaker conditions need one for every utterance: "
                         "fill store.labels['speaker'] or drop those utterances")
    for layer in layer_list:
        table = segment_table(store, layer, on)
        if max_items is not None:
            table = _subsample(table, max_items, seed, context)
        if table.empty:
            raise ValueError(f"no {on} segments with frames in stored layer {layer}")
        frames, _ = store.layer(layer, dtype=read_dtype(store))
        # the one guard of every measure (s3viz._numerics), on what the distance sees.
        # cosine: the unit rows (normalised in float64 with a per-row power of two, so
        # no norm vanishes or overflows and no far row matters); degenerate when their
        # spread is float32 rounding (e.g. every frame points one way). euclidean:
        # centred on the per-feature median and scaled by a power of two near the robust
        # spread (one far frame moves neither); refused when a frame lies farther than
        # float32 squared distances resolve
        names = row_names(store, layer)
        if distance == "cosine":
            frames = unit_rows(frames)
            dt = torch.float32 if store.store_dtype == torch.float64 else store.store_dtype
            guard = tensor_guard(frames, dt, centre=False, names=names)
        else:
            guard = tensor_guard(frames, store.store_dtype, centre=True,
                                 span=float32_distances_span(), names=names)
        degenerate[layer] = guard.reason
        if guard.reason:
            rows.append({"layer": layer, "upstream_layer": int(store.layer_ids[layer]), "on": on,
                         "speaker": speaker, "context": context, "distance": distance,
                         "abx_error": float("nan"), "n_items": len(table), "n_cells": 0,
                         "n_triplets": 0, "n_dropped": int(table.attrs.get("dropped", 0))})
            continue
        cells = _abx_layer(guard(frames, torch.float32), table, speaker, context, distance, dev,
                           max_block)
        all_cells.append(cells.assign(layer=layer, upstream_layer=int(store.layer_ids[layer])))
        if cells.empty:
            raise ValueError(
                f"no ABX cell in stored layer {layer} for speaker={speaker!r}, "
                f"context={context!r}: every cell needs two tokens of a phone and one of "
                "another (and for 'across' a second speaker); use more utterances or "
                "context='any'")
        rows.append({
            "layer": layer, "upstream_layer": int(store.layer_ids[layer]), "on": on,
            "speaker": speaker, "context": context, "distance": distance,
            "abx_error": _collapse(cells), "n_items": len(table),
            "n_cells": len(cells), "n_triplets": int(cells["triplets"].sum()),
            "n_dropped": int(table.attrs.get("dropped", 0)),
        })
    warn_degenerate("abx_layers", degenerate, "abx_error")
    out = tag_weights(pd.DataFrame(rows), store)
    if return_cells:
        cells = (pd.concat(all_cells, ignore_index=True) if all_cells
                 else pd.DataFrame(columns=_CELL_COLUMNS + ["layer", "upstream_layer"]))
        return ABXCells(out, tag_weights(cells, store))
    return out


def _subsample(table: pd.DataFrame, max_items: int, seed: int, context: str) -> pd.DataFrame:
    keys = ["label", "speaker"] + (["prev", "next"] if context == "within" else [])
    rng = np.random.default_rng([seed, 31])
    keep = []
    for _, idx in table.groupby(keys, sort=True).indices.items():
        keep.extend(idx if len(idx) <= max_items else rng.choice(idx, max_items, replace=False))
    out = table.iloc[np.sort(np.asarray(keep, dtype=np.int64))].reset_index(drop=True)
    out.attrs.update(table.attrs)
    return out


def _abx_layer(frames, table, speaker, context, distance, dev, max_block) -> pd.DataFrame:
    items = _Items(frames, table["row_start"].to_numpy(), table["row_end"].to_numpy(), dev,
                   distance)
    lab = table["label"].to_numpy(dtype=object).astype(str)
    ctx = ((table["prev"] + "|" + table["next"]).to_numpy(dtype=object).astype(str)
           if context == "within" else np.full(len(table), "", dtype=object).astype(str))
    spk = table["speaker"].to_numpy(dtype=object).astype(str)
    out: list = []
    speakers = np.unique(spk)
    for s in speakers:
        ys = np.flatnonzero(spk == s)
        if speaker == "within":
            dist = _distance_matrix(items, ys, items, ys, distance, max_block)
            _score_group(dist, lab[ys], lab[ys], ctx[ys], ctx[ys], True,
                         {"speaker": s, "speaker_x": s}, out, max_block)
            continue
        for sx in speakers:
            if sx == s:
                continue
            xs = np.flatnonzero(spk == sx)
            dist = _distance_matrix(items, xs, items, ys, distance, max_block)
            _score_group(dist, lab[xs], lab[ys], ctx[xs], ctx[ys], False,
                         {"speaker": s, "speaker_x": sx}, out, max_block)
    return pd.DataFrame(out, columns=_CELL_COLUMNS)


_CELL_COLUMNS = ["speaker", "speaker_x", "phone", "other", "context", "error", "triplets"]
