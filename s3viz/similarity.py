"""Layer similarity: linear CKA (or SVCCA) between every pair of stored layers, or two stores.

:func:`layer_similarity`: exact streamed or minibatch CKA, SVCCA, at frame or utterance
level, sharded or not (``docs/similarity.md``). :class:`CrossProducts` is also the
accumulator of the engine's :class:`~s3viz.measures.LayerCKA`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch

from . import _validate as _v
from ._bootstrap import Bootstrap, bootstrap_options, items_digest, resampling_units
from ._cka_bootstrap import UtteranceHSIC, cka_interval_table
from ._device import resolve_device as _resolve_device
from ._labels import label_strings
from ._numerics import (cross_product, layer_guard, pow2_factor, pow2_near, read_dtype,
                        warn_degenerate)
from .distributed import Sharding
from .store import frame_groups, tag_weights, utterance_selection

__all__ = ["ESTIMATORS", "METHODS", "CCAOptions", "CKAOptions", "cca_naive", "cka_naive", "hsic_unbiased",
           "layer_similarity"]

ESTIMATORS = ("feature", "minibatch")
METHODS = ("cka", "cca")

CHUNK_FRAMES = 16384  # frames per block read (the minibatch estimator's shuffling window)
# The exact estimator's working memory per block of frames, besides its float64 sums
# (docs/similarity.md, "Memory"): the block of every layer in the product dtype, and the
# float64 copies of one layer at a time that reading and profiling it make
BLOCK_BYTES = 128 << 20
# a scaled block whose largest value passes this is re-based (CrossProducts._rebase): its
# float32 products stay far from overflow (2**128) for any block of frames
_REBASE = 2.0 ** 20
BLOCK_COPY_BYTES = 48  # bytes per frame and feature of the one layer being read
MIN_BLOCK_FRAMES = 256  # matrix products of fewer frames run below the machine's speed


def _rebased(f: float | None, top: float) -> tuple[float, float] | None:
    """``(new factor, new / f)`` for a layer scaled by ``f`` that meets a block whose
    largest ``|x - shift|`` is ``top``, where ``top * f`` passes ``_REBASE``: the power of
    two bringing ``top`` near 1 and its exact ratio to ``f``; else None. Exponents are
    compared, not products, so a factor of 2**1023 from a subnormal block cannot overflow."""
    if f is None or not math.isfinite(top) or top <= 0:
        return None
    if math.frexp(top)[1] + math.frexp(f)[1] - 1 <= math.log2(_REBASE):
        return None
    new = pow2_near(top)
    return new, math.ldexp(1.0, math.frexp(new)[1] - math.frexp(f)[1])


@dataclass(frozen=True)
class CCAOptions:
    """SVCCA options: each layer keeps the principal directions holding ``keep_variance``
    of its variance (in ``(0, 1]``; 1.0: plain CCA) before CCA; ``batch_frames`` and
    ``dtype`` of the exact streamed products, as :class:`CKAOptions`'s."""

    keep_variance: float = 0.99
    batch_frames: int | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        kv = self.keep_variance
        if isinstance(kv, bool) or not isinstance(kv, (int, float)) or not 0 < kv <= 1:
            raise ValueError(f"keep_variance must be a number in (0, 1], got {kv!r}")
        object.__setattr__(self, "keep_variance", float(kv))
        CKAOptions(batch_frames=self.batch_frames, dtype=self.dtype)  # the same checks


@dataclass(frozen=True)
class CKAOptions:
    """Linear CKA options (``method=CKAOptions(...)``; ``method="cka"`` is ``CKAOptions()``).

    Args:
        estimator: ``"feature"`` (exact, streamed) or ``"minibatch"`` (unbiased HSIC).
        batch_frames: frames per minibatch (``estimator="minibatch"``, >= 4; ``None``:
            1024), or per block read and multiplied at a time (``estimator="feature"``;
            whole utterances; ``None``: as many as fit ``BLOCK_BYTES``, ``docs/similarity.md``).
        dtype: of the per-block products (``estimator="feature"``; sums are float64).
    """

    estimator: str = "feature"
    batch_frames: int | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype!r}")
        if self.estimator == "minibatch":  # 4: the unbiased HSIC
            bf = _v.integer(1024 if self.batch_frames is None else self.batch_frames,
                            "batch_frames", minimum=4)
        else:
            bf = _v.integer(self.batch_frames, "batch_frames", minimum=1, none_ok=True)
        object.__setattr__(self, "batch_frames", bf)


def cka_naive(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``(n, H)`` frames from Gram and centring matrices (an O(n^3)
    float64 reference)."""
    x, y = x.double(), y.double()
    h = torch.eye(x.shape[0], dtype=torch.float64) - 1.0 / x.shape[0]
    kh, lh = x @ x.T @ h, y @ y.T @ h
    return float(torch.trace(kh @ lh) / torch.sqrt(torch.trace(kh @ kh) * torch.trace(lh @ lh)))


def cca_naive(x: torch.Tensor, y: torch.Tensor, keep_variance: float = 0.99) -> float:
    """SVCCA (mean canonical correlation) of ``(n, H)`` frames, from the frames
    themselves (a reference for tests)."""
    def basis(a):
        a = torch.as_tensor(a, dtype=torch.float64)
        u, sv, _ = torch.linalg.svd(a - a.mean(0), full_matrices=False)
        return u[:, :_keep(sv * sv, keep_variance)]

    return float(torch.linalg.svdvals(basis(x).T @ basis(y)).clamp(0, 1).mean())


def _keep(var: torch.Tensor, keep_variance: float) -> int:
    """How many of the (descending) component variances ``var`` to keep."""
    var = var.clamp_min(0)
    tol = float(var.max()) * 1e-10 if var.numel() else 0.0
    nonzero = int((var > tol).sum())
    if keep_variance >= 1.0:
        return max(nonzero, 1)
    cum = torch.cumsum(var, 0) / var.sum()
    return max(1, min(nonzero, int((cum < keep_variance).sum()) + 1))


def _svcca(cxx: torch.Tensor, cyy: torch.Tensor, cxy: torch.Tensor,
           keep_variance: float) -> float:
    """Mean canonical correlation from centred covariances (any common scale)."""
    def whitener(c):
        ev, u = torch.linalg.eigh(c)
        ev, u = ev.flip(0), u.flip(1)  # descending
        k = _keep(ev, keep_variance)
        return u[:, :k] / ev[:k].clamp_min(1e-300).sqrt()

    return float(torch.linalg.svdvals(whitener(cxx).T @ cxy @ whitener(cyy)).clamp(0, 1).mean())


def hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> float:
    """The unbiased HSIC estimator of Song et al. (2012).

    Args:
        k, l_: ``(n, n)`` Gram matrices (n >= 4).
    """
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples, got {n}")
    grams = torch.stack([k.double(), l_.double()])
    grams[:, range(n), range(n)] = 0
    return float(_hsic_u(grams)[0, 1])


def _hsic_u(grams: torch.Tensor) -> torch.Tensor:
    """``(L, L)`` unbiased HSIC of ``(L, n, n)`` zero-diagonal Gram matrices."""
    n = grams.shape[1]
    ks = grams.reshape(len(grams), -1).double()
    s, u = ks.sum(1), grams.double().sum(2)
    return (ks @ ks.T + torch.outer(s, s) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (u @ u.T)) / (n * (n - 3))


def _frame_counts(items, labels, sel) -> np.ndarray:
    """Frames per selected utterance, which every compared ``(store, layer)`` must share."""
    (st0, l0), ref = items[0], np.asarray(items[0][0].lengths(items[0][1]))[sel]
    for (st, layer), label in zip(items, labels):
        got = np.asarray(st.lengths(layer))[sel]
        if not np.array_equal(got, ref):
            raise ValueError(
                f"stored layer {label} has a different number of frames per utterance than "
                f"stored layer {labels[0]} (downsample rate {st.downsample_rates[layer]} vs "
                f"{st0.downsample_rates[l0]}; up to {int(np.abs(got - ref).max())} frames "
                "differ): frame-level CKA pairs frames by position. Compare layers of one rate "
                "(pass layers=/other_layers=) or use level='utterance' (mean-pooled vectors)")
    return ref


def _corpus_difference(store, other) -> str | None:
    """Why ``store`` and ``other`` (same ids) are not of one corpus (``docs/similarity.md``),
    or None."""
    fa, fb = store.corpus_fingerprint, other.corpus_fingerprint
    if fa is not None and fb is not None and fa != fb:
        return f"their corpus fingerprints differ ({fa[:12]} vs {fb[:12]})"
    la, lb = store.labels, other.labels
    for col in ("num_samples", "speaker", "text"):  # the columns of Corpus.labels
        if col in la.columns and col in lb.columns:
            a, b = label_strings(la[col]), label_strings(lb[col])
            if (a != b).any():
                k = int(np.flatnonzero(a != b)[0])
                return (f"labels[{col!r}] differ (first at utterance {store.ids[k]!r}: "
                        f"{a[k]!r} vs {b[k]!r})")
    for k, (pa, pb) in enumerate(zip(store.phones, other.phones)):
        if pa is not None and pb is not None:
            cols = [c for c in ("phone", "start", "end") if c in pa.columns and c in pb.columns]
            if not pa[cols].reset_index(drop=True).equals(pb[cols].reset_index(drop=True)):
                return f"the alignments of utterance {store.ids[k]!r} differ"

    def span(st):  # (layers, N): samples the frames cover, and the slack of that estimate
        rates = np.asarray(st.downsample_rates)[:, None]
        fields = np.asarray(st.receptive_fields)[:, None]
        return np.stack([st.lengths(i) for i in range(st.num_layer)]) * rates, rates + fields

    (sa, ta), (sb, tb) = span(store), span(other)
    gap = (np.abs(sa[:, None, :] - sb[None, :, :]) - ta[:, None] - tb[None, :]).min((0, 1))
    if (gap > 0).any():
        k = int(np.flatnonzero(gap > 0)[0])
        return (f"utterance {store.ids[k]!r} lasts about {int(sa[0, k])} samples in one and "
                f"{int(sb[0, k])} in the other (frames x downsample rate)")
    return None


def _check_other(store, other):
    a, b = list(store.ids), list(other.ids)
    if a != b:
        bad = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        raise ValueError(
            f"`other` must hold the same utterances in the same order ({len(a)} vs "
            f"{len(b)} utterances; first difference at position {bad}); extract both "
            "upstreams from one corpus")
    why = _corpus_difference(store, other)
    if why is not None:
        a, b = (f"{st.name!r} ({'in memory' if st.path is None else f'at {st.path}'}, "
                f"fingerprint {st.fingerprint[:12]})" for st in (store, other))
        raise ValueError(
            f"`store` {a} and `other` {b} have the same utterance ids but not the same "
            f"corpus: {why}. Layers compared across corpora pair unrelated frames; extract "
            "both upstreams from one corpus")


def _block_frames(sizes, dtype: torch.dtype = torch.float32, budget: int | None = None) -> int:
    """Frames per block of the exact estimator on layers of hidden sizes ``sizes`` with
    products in ``dtype``: ``budget // (itemsize * sum(sizes) + BLOCK_COPY_BYTES *
    max(sizes))`` (``budget`` None: ``BLOCK_BYTES``), at least ``MIN_BLOCK_FRAMES``
    (``docs/similarity.md``, "Memory")."""
    budget = BLOCK_BYTES if budget is None else budget
    per_frame = dtype.itemsize * sum(sizes) + BLOCK_COPY_BYTES * max(sizes)
    return max(MIN_BLOCK_FRAMES, int(budget) // per_frame)


def _blocks(items, guards, level, sel, counts, keep, frames=CHUNK_FRAMES):
    """Per block of at most ``frames`` frames of the utterances ``sel`` (``counts`` frames
    each), an iterator over every ``(store, layer)`` item's features, each read when it is
    reached (one layer's copy at a time), through its guard (``guards`` None: as read);
    only the frames ``keep`` marks (None: all)."""
    offs = np.concatenate([[0], np.cumsum(counts)])

    def read(utts, mask):
        for k, (st, layer) in enumerate(items):
            dt = read_dtype(st)
            x = (torch.as_tensor(st.pooled(layer, utterances=utts, dtype=dt))
                 if level == "utterance" else st.layer(layer, utterances=utts, dtype=dt)[0])
            x = x if guards is None else guards[k](x)
            yield x if mask is None else x[mask]

    for a, b in frame_groups(counts, frames):
        mask = None if keep is None else torch.from_numpy(keep[offs[a]:offs[b]])
        if offs[a] == offs[b] or (mask is not None and not bool(mask.any())):
            continue
        yield read(sel[a:b].tolist(), mask)


def layer_similarity(
    store,
    other=None,
    *,
    method: str | CKAOptions | CCAOptions = "cka",
    layers: Sequence[int] | None = None,
    other_layers: Sequence[int] | None = None,
    level: str = "frame",
    device=None,
    max_frames: int | None = None,
    utterances=None,
    seed: int = 0,
    sharding: Sharding | None = None,
    bootstrap: int | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Linear CKA (or SVCCA) between every pair of layers (``docs/similarity.md``).

    Args:
        other: a :class:`~s3viz.store.LayerStore` of another upstream on the same corpus
            (``None``: ``store`` with itself).
        method: ``"cka"`` (``CKAOptions()``), :class:`CKAOptions` (its ``estimator``,
            ``batch_frames``, ``dtype``), ``"cca"`` or :class:`CCAOptions` (SVCCA, exact
            estimator).
        other_layers: stored layers of ``other`` (columns; default all, or ``layers``).
        level: ``"frame"`` (frames paired by position) or ``"utterance"`` (mean-pooled).
        max_frames: a seeded random subset of this many frames (``None``: all).
        sharding: a :class:`~s3viz.distributed.Sharding` (``estimator="feature"``,
            ``max_frames=None``) when ``store`` holds one shard.
        bootstrap, confidence: CKA's error bars (``level="frame"``, ``max_frames=None``):
            this many resamples of the speakers (or utterances), drawn with ``seed``, of
            a per-utterance minibatch estimator, its percentile interval at
            ``confidence`` shifted onto the exact CKA (``docs/similarity.md``, "Error bars").

    Returns:
        Rows: layers of ``store`` (``"layer"``); columns: of ``other`` (``"other_layer"``)
        or ``store``; ``attrs``: ``upstream_layers``, ``other_upstream_layers``,
        ``num_frames``, ``estimator``, ``level``, ``method`` (``keep_variance`` for
        SVCCA), ``weights`` (and ``other_weights``). With ``bootstrap``: a long table
        instead, one row per ``(layer, other_layer)``: ``layer``, ``other_layer``,
        ``cka``, ``cka_lo``, ``cka_hi``, ``resampled_by``, with the same ``attrs`` plus
        ``bootstrap`` (for :func:`s3viz.compare_scores`) and ``short_utterances``
        (utterances of fewer than 4 frames, which add nothing to the interval).
    """
    opts = CKAOptions()
    if isinstance(method, CCAOptions):
        opts = CKAOptions(batch_frames=method.batch_frames, dtype=method.dtype)
        keep_variance, method = method.keep_variance, "cca"
    elif isinstance(method, CKAOptions):
        keep_variance, opts, method = CCAOptions().keep_variance, method, "cka"
    elif isinstance(method, str) and method in METHODS:
        keep_variance = CCAOptions().keep_variance
    else:
        raise ValueError(f"method must be one of {METHODS}, CKAOptions(...) or CCAOptions(...), "
                         f"got {method!r}")
    estimator, batch_size, dtype = opts.estimator, opts.batch_frames, opts.dtype
    if level not in ("frame", "utterance"):
        raise ValueError(f"level must be 'frame' or 'utterance', got {level!r}")
    max_frames = _v.integer(max_frames, "max_frames", minimum=4, none_ok=True)
    seed = _v.integer(seed, "seed", minimum=0)
    resamples, confidence = bootstrap_options(bootstrap, confidence)
    if resamples:
        check_bootstrap(method, level, max_frames, sharding)
    if sharding is not None and not isinstance(sharding, Sharding):
        raise TypeError(f"sharding must be a s3viz.distributed.Sharding (e.g. "
                        f"Sharding(reduce=all_reduce_sum)), got {sharding!r}")
    reduce = None if sharding is None else sharding.reduce
    if reduce is not None and (estimator != "feature" or max_frames is not None):
        raise ValueError("sharded CKA (sharding=...) needs estimator='feature' and "
                         "max_frames=None")
    rows = _v.stored_layers(store, layers, "layers")
    if other is not None:  # items: the (store, layer) compared; rows and columns index them
        _check_other(store, other)
        cols = _v.stored_layers(other, other_layers, "other_layers")
        items = [(store, r) for r in rows] + [(other, c) for c in cols]
        labels = [str(r) for r in rows] + [f"{c} of `other`" for c in cols]
        row_idx, col_idx = list(range(len(rows))), list(range(len(rows), len(items)))
    else:
        cols = rows if other_layers is None else _v.stored_layers(store, other_layers,
                                                                  "other_layers")
        uniq = sorted(set(rows) | set(cols))
        items, labels = [(store, u) for u in uniq], [str(u) for u in uniq]
        row_idx, col_idx = [uniq.index(r) for r in rows], [uniq.index(c) for c in cols]
    sel = utterance_selection(utterances, len(store))
    device = _resolve_device(device)
    counts = (_frame_counts(items, labels, sel) if level == "frame"
              else np.ones(len(sel), dtype=np.int64))
    total = int(counts.sum())
    if reduce is not None:
        total = int(reduce(torch.tensor([total], dtype=torch.float64))[0])
    if total < 4:
        raise ValueError(f"only {total} frames to compare; CKA needs at least 4")
    keep = None
    if max_frames is not None and max_frames < total:
        rng = np.random.default_rng([seed, 31])
        keep = np.zeros(total, dtype=bool)
        keep[rng.choice(total, size=max_frames, replace=False)] = True
    pairs = sorted({(min(i, j), max(i, j)) for i in row_idx for j in col_idx}
                   | {(i, i) for i in row_idx + col_idx})
    # the guard of every measure (s3viz._numerics): a degenerate layer (or pooled vectors
    # of rounding noise) -> NaN. The exact estimator needs only its verdict (its products
    # shift and scale each layer themselves); the minibatch estimator reads through it.
    sizes = [int(st.hidden_sizes[layer]) for st, layer in items]
    frames = (batch_size or _block_frames(sizes, dtype)) if estimator == "feature" else None
    guards = [layer_guard(st, layer, sel, centre=True, level=level, reduce=reduce,
                          chunk_frames=frames or 65536) for st, layer in items]
    if estimator == "feature":
        acc = CrossProducts(pairs, device, dtype)
        for feats in _blocks(items, None, level, sel, counts, keep, frames):
            acc.add(feats)
        if reduce is not None:
            acc = acc.reduced(reduce, sizes)
        values, n = acc.svcca(keep_variance) if method == "cca" else acc.hsic()
    else:
        blocks = partial(_blocks, items, guards, level)
        values, n = _minibatch_hsic(blocks, sel, counts, keep, pairs, device, batch_size, seed)
    oth = store if other is None else other
    extra = {"keep_variance": float(keep_variance)} if method == "cca" else {}
    bad = [g.reason for g in guards]
    df = cka_table(values, rows, cols, row_idx, col_idx, bad, other_axis=other is not None,
                   upstream_layers=[store.layer_ids[r] for r in rows],
                   other_upstream_layers=[oth.layer_ids[c] for c in cols], num_frames=int(n),
                   estimator=estimator, level=level, method=method, **extra)
    warn_degenerate("layer_similarity", dict(zip(labels, bad)), method.upper())
    tag_weights(df, store)
    if other is not None:
        tag_weights(df, other, key="other_weights")
    if resamples:
        unit_of, names, kind = _units(store, sel, sharding)
        boot = Bootstrap(names, kind, resamples, confidence, seed, items=items_digest(
            store.labels if sharding is None else sharding.reference.labels,
            sel if sharding is None else None))
        hsic = UtteranceHSIC(len(names), len(items), device)
        for lo, hi, xs in _utterance_blocks(items, guards, sel, counts, sizes):
            at = 0
            for u in range(lo, hi):
                n = int(counts[u])
                hsic.add([x[at:at + n] for x in xs], int(unit_of[u]))
                at += n
        if reduce is not None:
            hsic = hsic.reduced(reduce)
        df = cka_interval_table(df, hsic, boot, row_idx, col_idx)
    return df


def check_bootstrap(method: str, level: str, max_frames, sharding) -> None:
    """Refuse a bootstrap :func:`layer_similarity` cannot give (``docs/similarity.md``)."""
    if method != "cka":
        raise ValueError("bootstrap= is for CKA only (method='cka' or CKAOptions(...)); "
                         "SVCCA has no per-speaker statistics to resample: pass bootstrap=None")
    if level != "frame":
        raise ValueError(
            "bootstrap= needs level='frame': at level='utterance' each utterance is one point "
            "and no per-speaker statistic of bounded size gives a resample's CKA (its "
            "cross-products are layers^2 x hidden^2 numbers per speaker); pass level='frame' "
            "or bootstrap=None")
    if max_frames is not None:
        raise ValueError("bootstrap= resamples whole utterances: pass max_frames=None")
    if sharding is not None and getattr(sharding, "reference", None) is None:
        raise ValueError("a sharded bootstrap needs the whole corpus's speakers: pass "
                         "sharding=Sharding.of(corpus, shard_store, shard_positions)")


def _units(store, sel, sharding):
    """``(unit of each selected utterance, unit names, kind)``: of the whole corpus
    (``sharding.reference``) when ``store`` holds one shard."""
    if sharding is None:
        return resampling_units(store.labels, sel)
    ref = sharding.reference
    codes, names, kind = resampling_units(ref.labels)
    pos = {str(v): k for k, v in enumerate(ref.ids)}
    return codes[[pos[str(store.ids[int(u)])] for u in sel]], names, kind


def _utterance_blocks(items, guards, sel, counts, sizes):
    """``(first, end, features)`` per block of whole utterances ``sel[first:end]``: every
    item's frames read through its guard (float64, one common scale on every shard)."""
    frames = _block_frames(sizes, torch.float64)
    for a, b in frame_groups(counts, frames):
        utts = sel[a:b].tolist()
        xs = [guards[k](st.layer(layer, utterances=utts, dtype=read_dtype(st))[0])
              for k, (st, layer) in enumerate(items)]
        yield a, b, xs


def cka_table(values: dict, rows, cols, row_idx, col_idx, bad, *, other_axis: bool = False,
              **attrs) -> pd.DataFrame:
    """The table of :func:`layer_similarity` and :class:`~s3viz.measures.LayerCKA` from
    ``values[(i, j)]`` (``i <= j`` items, ``row_idx``/``col_idx`` each row's and column's):
    HSIC (normalised here to CKA) or SVCCA; an item with a reason in ``bad`` gets NaN."""
    out = np.empty((len(rows), len(cols)))
    for a, i in enumerate(row_idx):
        for b, j in enumerate(col_idx):
            v = values[(min(i, j), max(i, j))]
            if attrs["method"] == "cka":
                den = np.sqrt(values[(i, i)] * values[(j, j)])
                v = v / den if den > 0 else np.nan
            out[a, b] = np.nan if bad[i] or bad[j] else v
    df = pd.DataFrame(out, index=pd.Index(rows, name="layer"),
                      columns=pd.Index(cols, name="other_layer" if other_axis else "layer"))
    df.attrs.update(attrs)
    return df


class CrossProducts:
    """Streamed centred cross-products of layer pairs, for the feature-space CKA and SVCCA.

    Each layer is shifted by its first block's mean (no cancellation of large offsets; for
    float32 frames the mean rounded to float32, so that the difference of two nearby
    float32 numbers is exact) and scaled by a power of two fixed by its first varying block
    (float32 products of 1e20 or 1e-30 neither overflow nor vanish), in ``dtype``; the
    block products, in ``dtype``, are summed in float64, and so are the columns multiplied
    (the sums centre exactly what was multiplied). :meth:`reduced` merges shards.
    """

    def __init__(self, pairs, device, dtype):
        self.pairs, self.device, self.dtype = list(pairs), device, dtype
        self.layers = sorted({i for p in self.pairs for i in p})
        self.acc, self.sums, self.shift, self.factor, self.n = {}, {}, {}, {}, 0

    def add(self, feats) -> None:
        """Add one block: ``feats`` yields, in order, the ``(frames, H_i)`` tensor of every
        layer ``i`` (a list, or an iterator reading one layer at a time)."""
        want, xs = set(self.layers), {}
        for i, x in enumerate(feats):
            if i in want:
                x = x.to(self.device)
                if x.shape[0] == 0:
                    return
                xs[i] = self._centre(i, x)
        self.n += xs[self.layers[0]].shape[0]
        for i, j in self.pairs:
            prod = cross_product(xs[i], xs[j] if j != i else None)
            if (i, j) in self.acc:
                self.acc[(i, j)] += prod  # float64 += dtype, in place
            else:
                self.acc[(i, j)] = prod.double()

    def _centre(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``(x - shift_i) * factor_i`` of one layer's block in ``dtype``; adds its column sums."""
        if i not in self.shift:
            mean = x.mean(0, dtype=torch.float64)
            self.shift[i] = mean.to(x.dtype).double() if x.dtype == torch.float32 else mean
            self.sums[i] = torch.zeros_like(mean)
        shift = self.shift[i]
        if i not in self.factor:
            d = x.double() - shift
            if bool((d != 0).any()):
                self.factor[i] = pow2_factor(d)  # earlier blocks added exact zeros
        out = torch.empty(x.shape, dtype=self.dtype, device=x.device)
        if x.dtype == torch.float32 == self.dtype:  # no float64 copy: see the class docstring
            torch.sub(x, shift.to(x.dtype), out=out)
            out.mul_(self._fit(i, float(out.abs().max())))
        else:
            step = max(1, (1 << 22) // max(1, x.shape[1]))  # float64 copies of 4M numbers
            for a in range(0, x.shape[0], step):
                d = x[a:a + step].double() - shift
                f, was = self._fit(i, float(d.abs().max())), self.factor.get(i, 1.0)
                if a and f != was:
                    out[:a].mul_(f / was)  # rows scaled before a re-base: see _fit
                out[a:a + step] = d * f
        self.sums[i] += out.sum(0, dtype=torch.float64)
        return out

    def _fit(self, i: int, top: float) -> float:
        """Layer ``i``'s factor for a block whose largest ``|x - shift|`` is ``top``. Where
        ``top`` times the factor passes ``_REBASE`` (a block far larger than the first
        varying one, e.g. after a near-silent first utterance), the factor becomes the
        power of two bringing ``top`` near 1, and what was summed with the old one is
        multiplied by their ratio (exact; earlier products far below the new scale may
        vanish), else ``dtype`` products would overflow. Exponents are compared, not
        products, so a factor of 2**1023 from a subnormal first block cannot overflow."""
        f = self.factor.get(i)
        rebase = _rebased(f, top)
        if rebase is None:
            return 1.0 if f is None else f
        new, r = rebase
        self.factor[i] = new
        self.sums[i] *= r
        for p in self.acc:
            if i in p:
                self.acc[p] *= r * r if p[0] == p[1] else r
        return new

    def reduced(self, reduce, sizes) -> CrossProducts:
        """The products of every shard (``reduce`` sums a tensor over shards; ``sizes[i]``:
        the hidden size of layer ``i``), centred on the global mean.

        A shard holds ``C = sum (x - s_i)(y - s_j)^T f_i f_j`` and ``S_i = sum (x - s_i) f_i``
        with its own shifts ``s`` and powers of two ``f``. All shards move to common
        factors ``g`` (the shards' mean exponent, a power of two: exact); then, with
        ``d = (s - m) g`` (``m`` the global mean),
        ``sum (x - m_i)(y - m_j)^T g_i g_j = C + S_i d_j^T + d_i S_j^T + n d_i d_j^T``.
        """
        f64 = {"dtype": torch.float64, "device": self.device}
        n_all = float(reduce(torch.tensor([float(self.n)], **f64))[0])
        exps = reduce(torch.tensor([[math.log2(self.factor[i]), 1.0] if i in self.factor
                                    else [0.0, 0.0] for i in self.layers], **f64))
        out = CrossProducts(self.pairs, self.device, self.dtype)
        out.n, to_common, sums, d = int(round(n_all)), {}, {}, {}
        for i, (e, held) in zip(self.layers, exps.tolist()):
            g = 2.0 ** round(e / max(held, 1.0))
            to_common[i] = g / self.factor.get(i, g)
            zero = torch.zeros(sizes[i], **f64)  # a shard without frames
            shift = self.shift.get(i, zero)
            sums[i] = self.sums.get(i, zero) * to_common[i]
            mean = reduce(sums[i] / g + self.n * shift) / n_all
            d[i] = (shift - mean) * g
            out.shift[i], out.factor[i], out.sums[i] = mean, g, zero
        for i, j in self.pairs:
            c = self.acc.get((i, j))
            c = (torch.zeros(sizes[i], sizes[j], **f64) if c is None
                 else c * (to_common[i] * to_common[j]))
            c = (c + torch.outer(sums[i], d[j]) + torch.outer(d[i], sums[j])
                 + self.n * torch.outer(d[i], d[j]))
            out.acc[(i, j)] = reduce(c)
        return out

    def _centred(self, pair) -> torch.Tensor:
        """The centred ``X_i^T X_j`` of one pair (float64)."""
        i, j = pair
        return self.acc[pair] - torch.outer(self.sums[i], self.sums[j]) / self.n

    def centred(self, reduce=None, sizes=None) -> tuple[dict, int]:
        """``({pair: centred X_i^T X_j}, frames)``, summed over shards with ``reduce``."""
        if reduce is not None:
            return self.reduced(reduce, sizes).centred()
        return {p: self._centred(p) for p in self.acc}, self.n

    def hsic(self, reduce=None, sizes=None) -> tuple[dict, int]:
        """``({pair: ||centred X_i^T X_j||_F^2}, frames)``, summed over shards with ``reduce``
        (one centred pair in memory at a time)."""
        if reduce is not None:
            return self.reduced(reduce, sizes).hsic()
        return {p: float(self._centred(p).square_().sum()) for p in self.acc}, self.n

    def svcca(self, keep_variance: float) -> tuple[dict, int]:
        """``({pair: mean canonical correlation}, frames)`` (``docs/similarity.md``)."""
        diag = {i: self._centred((i, i)) for i in self.layers}
        return {(i, j): _svcca(diag[i], diag[j], diag[i] if i == j else self._centred((i, j)),
                               keep_variance) for i, j in self.acc}, self.n


def _minibatch_hsic(blocks, sel, counts, keep, pairs, device, batch_size, seed):
    """Mean over minibatches of ``batch_size`` random frames of each pair's unbiased HSIC.

    Utterance blocks are visited in a random order and each block's frames shuffled
    and cut into minibatches (the rest carried into the next block); a last short
    minibatch counts when it has 4 frames and half a minibatch (or is the only one).
    """
    perm = np.random.default_rng([seed, 53]).permutation(len(sel))
    if keep is not None:
        offs = np.concatenate([[0], np.cumsum(counts)])
        keep = np.concatenate([keep[offs[k]:offs[k + 1]] for k in perm])
    gen = torch.Generator().manual_seed(seed)
    layers = sorted({i for p in pairs for i in p})
    total, batches, n, factor, rest = 0.0, 0, 0, {}, None

    def batch_hsic(feats, total):
        """``total`` plus the (layers, layers) unbiased HSIC of one minibatch, with ``total``
        first re-based where a layer's power of two changes (see CrossProducts._fit;
        HSIC is quadratic in each layer's scale)."""
        grams, r = [], torch.ones(len(layers), dtype=torch.float64)
        for a, i in enumerate(layers):
            x = feats[i].to(device=device, dtype=torch.float64)
            x = x - x.mean(0)  # the unbiased HSIC is invariant to shifts; this keeps it exact
            if i not in factor and bool((x != 0).any()):  # one power of two per layer
                factor[i] = pow2_factor(x)                  # (see CrossProducts)
            top = float(x.abs().max()) if x.numel() else 0.0
            rebase = _rebased(factor.get(i), top)  # as CrossProducts._fit
            if rebase is not None:
                factor[i], r[a] = rebase
            x = (x * factor.get(i, 1.0)).to(torch.float32)
            k = x @ x.T
            k.fill_diagonal_(0)
            grams.append(k)
        r2 = (r * r).to(device)
        if isinstance(total, torch.Tensor):
            total = total * torch.outer(r2, r2).to(total.dtype)
        return total + _hsic_u(torch.stack(grams))

    for feats in blocks(sel[perm], counts[perm], keep):
        feats = list(feats)
        order = torch.randperm(feats[0].shape[0], generator=gen)
        feats = [f[order] for f in feats]
        if rest is not None:
            feats = [torch.cat([r, f]) for r, f in zip(rest, feats)]
        full = feats[0].shape[0] // batch_size * batch_size
        for b in range(0, full, batch_size):
            total, batches = batch_hsic([f[b:b + batch_size] for f in feats], total), batches + 1
        n += full
        rest = [f[full:] for f in feats]
    left = 0 if rest is None else rest[0].shape[0]
    if left >= 4 and (batches == 0 or left >= batch_size // 2):
        total, batches, n = batch_hsic(rest, total), batches + 1, n + left
    if batches == 0:
        raise ValueError("fewer than 4 frames: the minibatch estimator needs at least 4")
    at = {i: a for a, i in enumerate(layers)}
    return {(i, j): float(total[at[i], at[j]]) / batches for i, j in pairs}, n
