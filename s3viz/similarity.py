"""Layer similarity: linear CKA (or SVCCA) between every pair of stored layers, or two stores.

:func:`layer_similarity` computes linear CKA exactly from streamed
cross-covariances (``estimator="feature"``, memory independent of the frames)
or as the unbiased minibatch estimate (``"minibatch"``), SVCCA with
``method="cca"``, at frame or utterance level, and sharded with ``sharding=``.
The estimators, their memory and when CCA means nothing: ``docs/similarity.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import _validate as _v
from ._device import resolve_device as _resolve_device
from .distributed import Sharding
from ._numerics import layer_guard, pow2_factor, read_dtype, warn_degenerate
from ._labels import label_str
from .store import tag_weights, utterance_selection

__all__ = ["ESTIMATORS", "METHODS", "CCAOptions", "cca_naive", "cka_naive", "hsic_unbiased",
           "layer_similarity"]

ESTIMATORS = ("feature", "minibatch")
METHODS = ("cka", "cca")

CHUNK_FRAMES = 16384
"""Frames per block streamed from a store (the shuffling window of the minibatch
estimator; the exact estimator's result does not depend on it)."""


@dataclass(frozen=True)
class CCAOptions:
    """SVCCA (``layer_similarity(method=CCAOptions(...))``; ``"cca"`` is the default):
    each layer is reduced to the principal directions keeping ``keep_variance`` of its
    variance (in ``(0, 1]``; 1.0: plain CCA) before CCA."""

    keep_variance: float = 0.99

    def __post_init__(self):
        kv = self.keep_variance
        if isinstance(kv, bool) or not isinstance(kv, (int, float)) or not 0 < kv <= 1:
            raise ValueError(f"keep_variance must be a number in (0, 1], got {kv!r}")
        object.__setattr__(self, "keep_variance", float(kv))



def cka_naive(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA from Gram matrices and centring matrices (a reference, O(n^3)).

    Args:
        x: ``(num_frames, hidden_size_x)``; y: ``(num_frames, hidden_size_y)``.

    Returns:
        ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``HSIC(K, L) = tr(K H L H)``,
        ``K = x x^T``, ``L = y y^T``, ``H = I - 1 1^T / n``, in float64.
    """
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = x @ x.T, y @ y.T
    kh, lh = k @ h, l_ @ h

    def hsic(a, b):
        return torch.trace(a @ b)

    return float(hsic(kh, lh) / torch.sqrt(hsic(kh, kh) * hsic(lh, lh)))


def cca_naive(x: torch.Tensor, y: torch.Tensor, keep_variance: float = 0.99) -> float:
    """SVCCA from the frames themselves (a reference for tests): mean canonical correlation.

    Each of ``x (n, H1)``, ``y (n, H2)`` is centred and projected on its top
    principal components explaining ``keep_variance`` of its variance; the
    canonical correlations are the singular values of ``Qx^T Qy`` with ``Qx``, ``Qy``
    orthonormal bases of the projections.
    """
    def basis(a):
        a = torch.as_tensor(a, dtype=torch.float64)
        a = a - a.mean(0)
        u, sv, _ = torch.linalg.svd(a, full_matrices=False)
        k = _keep(sv * sv, keep_variance)
        return u[:, :k]

    qx, qy = basis(x), basis(y)
    return float(torch.linalg.svdvals(qx.T @ qy).clamp(0, 1).mean())


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

    wx, wy = whitener(cxx), whitener(cyy)
    return float(torch.linalg.svdvals(wx.T @ cxy @ wy).clamp(0, 1).mean())


def hsic_unbiased(k: torch.Tensor, l_: torch.Tensor) -> float:
    """The unbiased HSIC estimator of Song et al. (2012) for two Gram matrices.

    Args:
        k, l_: ``(n, n)`` Gram matrices (n >= 4).

    Returns:
        ``[tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))``
        where ``K~`` is ``K`` with its diagonal set to zero.
    """
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples, got {n}")
    k = k.double().clone()
    l_ = l_.double().clone()
    k.fill_diagonal_(0)
    l_.fill_diagonal_(0)
    one = torch.ones(n, dtype=torch.float64)
    val = ((k * l_).sum() + k.sum() * l_.sum() / ((n - 1) * (n - 2))
           - 2.0 / (n - 2) * (one @ k @ l_ @ one))
    return float(val / (n * (n - 3)))


def _frame_counts(store, layers) -> np.ndarray:
    return np.stack([np.asarray(store.lengths(layer)) for layer in layers])  # (L, N)


def _check_frames(store, layers, other, other_layers, sel):
    """Every compared layer must have the same frames per utterance."""
    counts = _frame_counts(store, layers)[:, sel]
    ref = counts[0]
    rates = store.downsample_rates

    def _explain(what, rate, got):
        diff = int(np.abs(got - ref).max())
        return (
            f"{what} has a different number of frames per utterance than stored layer "
            f"{layers[0]} (downsample rate {rate} vs {rates[layers[0]]}; up to {diff} frames "
            "differ): frame-level CKA pairs frames by position. Compare layers of one rate "
            "(pass layers=/other_layers=) or use level='utterance' (mean-pooled vectors)"
        )

    for layer, c in zip(layers, counts):
        if not np.array_equal(c, ref):
            raise ValueError(_explain(f"stored layer {layer}", rates[layer], c))
    if other is not None:
        oc = _frame_counts(other, other_layers)[:, sel]
        for layer, c in zip(other_layers, oc):
            if not np.array_equal(c, ref):
                raise ValueError(_explain(f"layer {layer} of `other`",
                                          other.downsample_rates[layer], c))
    return ref


def _describe(st) -> str:
    where = "in memory" if st.path is None else f"at {st.path}"
    return f"{st.name!r} ({where}, fingerprint {st.fingerprint[:12]})"


_CORPUS_COLUMNS = ("num_samples", "speaker", "text")
"""Columns of ``store.labels`` that describe the audio itself (``Corpus.labels``)."""


def _corpus_difference(store, other) -> str | None:
    """Why ``store`` and ``other`` (same ids) are not of one corpus, or None.

    Everything both stores know of their audio must agree: the corpus fingerprint
    of an extraction (in memory or on disk), the corpus columns of ``labels`` (samples, speaker,
    text), the alignment tables, and each utterance's duration as its frames
    imply it (frames x downsample rate, within a frame and a receptive field).
    """
    fa, fb = store.corpus_fingerprint, other.corpus_fingerprint
    if fa is not None and fb is not None and fa != fb:
        return f"their corpus fingerprints differ ({fa[:12]} vs {fb[:12]})"
    la, lb = store.labels, other.labels
    for col in _CORPUS_COLUMNS:
        if col in la.columns and col in lb.columns:
            a = np.asarray([label_str(v) for v in la[col]], dtype=object)
            b = np.asarray([label_str(v) for v in lb[col]], dtype=object)
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
    gap = np.abs(sa[:, None, :] - sb[None, :, :]) - ta[:, None] - tb[None, :]
    if (gap.min((0, 1)) > 0).any():
        k = int(np.flatnonzero(gap.min((0, 1)) > 0)[0])
        return (f"utterance {store.ids[k]!r} lasts about {int(sa[0, k])} samples in one and "
                f"{int(sb[0, k])} in the other (frames x downsample rate)")
    return None


def _check_other(store, other):
    if len(other) != len(store) or list(other.ids) != list(store.ids):
        a, b = list(store.ids), list(other.ids)
        bad = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        raise ValueError(
            f"`other` must hold the same utterances in the same order ({len(store)} vs "
            f"{len(other)} utterances; first difference at position {bad}); extract both "
            "upstreams from one corpus"
        )
    why = _corpus_difference(store, other)
    if why is not None:
        raise ValueError(
            f"`store` {_describe(store)} and `other` {_describe(other)} have the same "
            f"utterance ids but not the same corpus: {why}. Layers compared across corpora "
            "pair unrelated frames; extract both upstreams from one corpus"
        )


def _blocks(lengths: np.ndarray, sel: np.ndarray, max_frames: int):
    start, total = 0, 0
    for j in range(len(sel)):
        n = int(lengths[j])
        if j > start and total + n > max_frames:
            yield sel[start:j]
            start, total = j, 0
        total += n
    if start < len(sel):
        yield sel[start:]


def _positions(store, utterances) -> np.ndarray:
    return utterance_selection(utterances, len(store))


class _Source:
    """Per block of utterances: the features of each compared layer, same frames."""

    def __init__(self, store, layers, other, other_layers, level, sel, reduce=None):
        self.items = [(store, layer) for layer in layers]
        if other is not None:
            self.items += [(other, layer) for layer in other_layers]
        self.level, self.sel = level, sel
        # the one guard of every measure (s3viz._numerics): CKA and CCA are offset- and
        # scale-invariant, so each layer is centred and scaled by a power of two before
        # any product; a degenerate layer (or pooled vectors of rounding noise) -> NaN
        self.guards = [layer_guard(st, layer, sel, centre=True, level=level, reduce=reduce)
                       for st, layer in self.items]

    def degenerate(self) -> list[str | None]:
        return [g.reason for g in self.guards]

    def block(self, utts: np.ndarray) -> list[torch.Tensor]:
        out = []
        for (st, layer), guard in zip(self.items, self.guards):
            dt = read_dtype(st)
            if self.level == "utterance":
                x = torch.as_tensor(st.pooled(layer, utterances=utts.tolist(), dtype=dt))
            else:
                x, _ = st.layer(layer, utterances=utts.tolist(), dtype=dt)
            out.append(guard(x))
        return out


def layer_similarity(
    store,
    other=None,
    *,
    method: str = "cka",
    layers: Sequence[int] | None = None,
    other_layers: Sequence[int] | None = None,
    level: str = "frame",
    estimator: str = "feature",
    device=None,
    max_frames: int | None = None,
    batch_frames: int = 1024,
    utterances=None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    sharding: Sharding | None = None,
) -> pd.DataFrame:
    """Linear CKA (or SVCCA) between every pair of layers.

    Args:
        store: a :class:`~s3viz.store.LayerStore`.
        other: another store of the same utterances (same ids, same order, same
            frames per utterance) to compare two upstreams; ``None`` compares
            ``store`` with itself.
        method: ``"cka"`` (linear CKA), ``"cca"`` or :class:`CCAOptions`
            (SVCCA: mean canonical correlation of the layers reduced to
            ``keep_variance`` of their variance, 0.99 for ``"cca"``;
            ``estimator="feature"`` only).
        layers: stored layers of ``store`` (rows; default all).
        other_layers: stored layers of ``other`` (columns; default all, or ``layers``).
        level: ``"frame"`` (frames paired by position) or ``"utterance"``
            (mean-pooled vectors, one per utterance).
        estimator: ``"feature"`` (exact, streamed cross-covariances) or
            ``"minibatch"`` (unbiased HSIC averaged over minibatches); see
            ``docs/similarity.md``.
        device: torch device; ``None`` is cuda when available, else cpu.
        max_frames: use a random subset of this many frames (seeded); ``None``: all.
        batch_frames: frames per minibatch (``estimator="minibatch"``, >= 4;
            was ``batch_size``).
        utterances: utterance positions to use (default all).
        seed: seed of the frame subset and of the minibatches.
        dtype: dtype of the per-block products (``estimator="feature"``); sums
            over blocks are float64. ``torch.float64`` for the last digits.
        sharding: sharded runs (``estimator="feature"``, ``max_frames=None``): a
            :class:`~s3viz.distributed.Sharding` whose ``reduce(tensor) -> tensor``
            sums a tensor over all shards (its ``reference`` is not needed);
            ``store`` holds one shard and every shard gets the CKA of the union of
            the shards. The frame counts and sums are reduced first to centre every
            shard's cross-products on the global mean, then the cross-products are
            summed.

    Returns:
        DataFrame of CKA (or SVCCA) values, index = layers of ``store`` (name ``"layer"``),
        columns = layers of ``other`` (or ``store``) (name ``"other_layer"`` or
        ``"layer"``). ``df.attrs`` records ``upstream_layers``,
        ``other_upstream_layers``, ``num_frames``, ``estimator``, ``level``,
        ``method`` (and ``keep_variance`` for SVCCA), ``weights`` (the store's
        :attr:`~s3viz.store.LayerStore.weights`) and, with ``other``,
        ``other_weights``.
    """
    if isinstance(method, CCAOptions):
        keep_variance, method = method.keep_variance, "cca"
    elif method in METHODS:
        keep_variance = CCAOptions().keep_variance
    else:
        raise ValueError(f"method must be one of {METHODS} or CCAOptions(...), got {method!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if level not in ("frame", "utterance"):
        raise ValueError(f"level must be 'frame' or 'utterance', got {level!r}")
    max_frames = _v.integer(max_frames, "max_frames", minimum=4, none_ok=True)
    seed = _v.integer(seed, "seed", minimum=0)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    batch_size = _v.integer(batch_frames, "batch_frames", minimum=4)  # 4: the unbiased HSIC
    if method == "cca" and estimator != "feature":
        raise ValueError("method='cca' needs estimator='feature' (the full covariances)")
    if sharding is not None and not isinstance(sharding, Sharding):
        raise TypeError(f"sharding must be a s3viz.distributed.Sharding (e.g. "
                        f"Sharding(reduce=all_reduce_sum)), got {sharding!r}")
    reduce = None if sharding is None else sharding.reduce
    if reduce is not None and (estimator != "feature" or max_frames is not None):
        raise ValueError("sharded CKA (sharding=...) needs estimator='feature' and "
                         "max_frames=None")
    rows = _v.stored_layers(store, layers, "layers")
    if other is not None:
        _check_other(store, other)
        cols = _v.stored_layers(other, other_layers, "other_layers")
    else:
        cols = rows if other_layers is None else _v.stored_layers(store, other_layers, "other_layers")
    sel = _positions(store, utterances)
    device = _resolve_device(device)
    if other is None:
        uniq = sorted(set(rows) | set(cols))
        row_idx = [uniq.index(r) for r in rows]
        col_idx = [uniq.index(c) for c in cols]
        if level == "frame":
            counts = _check_frames(store, uniq, None, None, sel)
        else:
            counts = np.ones(len(sel), dtype=np.int64)
        src = _Source(store, uniq, None, None, level, sel, reduce)
    else:
        row_idx = list(range(len(rows)))
        col_idx = list(range(len(rows), len(rows) + len(cols)))
        if level == "frame":
            counts = _check_frames(store, rows, other, cols, sel)
        else:
            counts = np.ones(len(sel), dtype=np.int64)
        src = _Source(store, rows, other, cols, level, sel, reduce)
    total = int(counts.sum())
    if reduce is not None:
        total = int(reduce(torch.tensor([total], dtype=torch.float64))[0])
    if total < 4:
        raise ValueError(f"only {total} frames to compare; CKA needs at least 4")
    keep = None
    if max_frames is not None and int(max_frames) < total:
        rng = np.random.default_rng([int(seed), 31])
        keep = np.zeros(total, dtype=bool)
        keep[rng.choice(total, size=int(max_frames), replace=False)] = True
    pairs = sorted({(min(i, j), max(i, j)) for i in row_idx for j in col_idx}
                   | {(i, i) for i in row_idx + col_idx})
    if estimator == "feature":
        sizes = [int(st.hidden_sizes[layer]) for st, layer in src.items]
        hsic, n = _feature_hsic(src, sel, counts, keep, pairs, device, CHUNK_FRAMES, dtype,
                                reduce=reduce, sizes=sizes,
                                keep_variance=float(keep_variance) if method == "cca" else None)
    else:
        hsic, n = _minibatch_hsic(src, sel, counts, keep, pairs, device, CHUNK_FRAMES,
                                  int(batch_size), int(seed))
    ids = list(getattr(store, "layer_ids", range(store.num_layer)))
    oth = other if other is not None else store
    oids = list(getattr(oth, "layer_ids", range(oth.num_layer)))
    extra = {"keep_variance": float(keep_variance)} if method == "cca" else {}
    df = cka_table(hsic, rows, cols, row_idx, col_idx, other_axis=other is not None,
                   direct=method == "cca", upstream_layers=[ids[r] for r in rows],
                   other_upstream_layers=[oids[c] for c in cols],
                   num_frames=int(n), estimator=estimator, level=level, method=method,
                   **extra)
    bad = src.degenerate()
    df.iloc[[a for a, i in enumerate(row_idx) if bad[i]], :] = np.nan
    df.iloc[:, [b for b, j in enumerate(col_idx) if bad[j]]] = np.nan
    names = {f"{c}{'' if other is None or i < len(rows) else ' of `other`'}": bad[i]
             for i, c in enumerate(rows + cols if other is not None else uniq)}
    warn_degenerate("layer_similarity", names, method.upper())
    tag_weights(df, store)
    if other is not None:
        tag_weights(df, other, key="other_weights")
    return df


def cka_table(hsic: dict, rows, cols, row_idx, col_idx, *, other_axis: bool = False,
               direct: bool = False, **attrs) -> pd.DataFrame:
    """The DataFrame of :func:`layer_similarity` from the HSIC of each pair (CKA), or
    from each pair's value itself (``direct``, SVCCA)."""
    out = np.empty((len(rows), len(cols)))
    for a, i in enumerate(row_idx):
        for b, j in enumerate(col_idx):
            if direct:
                out[a, b] = hsic[(min(i, j), max(i, j))]
                continue
            den = np.sqrt(hsic[(i, i)] * hsic[(j, j)])
            out[a, b] = hsic[(min(i, j), max(i, j))] / den if den > 0 else np.nan
    df = pd.DataFrame(out, index=pd.Index(rows, name="layer"),
                      columns=pd.Index(cols, name="other_layer" if other_axis else "layer"))
    df.attrs.update(attrs)
    return df


def _iter_blocks(src: _Source, sel, counts, keep, chunk_frames):
    """Yield per block the list of (frames, H_l) tensors (subsampled when ``keep``)."""
    offs = np.concatenate([[0], np.cumsum(counts)])
    pos_of = {int(u): k for k, u in enumerate(sel)}
    for utts in _blocks(counts, sel, chunk_frames):
        feats = src.block(utts)
        if keep is not None:
            a, b = offs[pos_of[int(utts[0])]], offs[pos_of[int(utts[-1])] + 1]
            m = torch.from_numpy(keep[a:b])
            if not bool(m.any()):
                continue
            feats = [f[m] for f in feats]
        if feats[0].shape[0] == 0:
            continue
        yield feats


def _feature_hsic(src, sel, counts, keep, pairs, device, chunk_frames, dtype, reduce=None,
                  sizes=None, keep_variance=None):
    """||centred X_i^T X_j||_F^2 for each pair, from one streamed pass (see
    :class:`CrossProducts`); with ``keep_variance``, the pairs' SVCCA instead."""
    acc = CrossProducts(pairs, device, dtype)
    for feats in _iter_blocks(src, sel, counts, keep, chunk_frames):
        acc.add(feats)
    if keep_variance is not None:
        return acc.svcca(keep_variance, reduce=reduce, sizes=sizes)
    return acc.hsic(reduce=reduce, sizes=sizes)


class CrossProducts:
    """Streamed centred cross-products of layer pairs, for the feature-space CKA.

    Each layer is shifted by its first block's mean (so the final centring does
    not cancel large offsets) and multiplied by a power of two fixed by that
    block (so that float32 products of features of 1e20 or 1e-30 neither
    overflow nor vanish; CKA and SVCCA do not see either), block products are
    taken in ``dtype`` and summed over blocks in float64. With ``reduce`` (one
    shard of the frames), the shard's products are brought to common factors,
    re-centred on the global mean (``reduce`` of the sums) and summed over shards.
    """

    def __init__(self, pairs, device, dtype):
        self.pairs, self.device, self.dtype = list(pairs), device, dtype
        self.layers = sorted({i for p in self.pairs for i in p})
        self.acc, self.sums, self.shift, self.factor, self.n = {}, {}, {}, {}, 0

    def add(self, feats) -> None:
        """Add one block: ``feats[i]`` is the ``(frames, H_i)`` tensor of layer ``i``."""
        xs = {}
        for i in self.layers:
            x = feats[i].to(device=self.device, dtype=torch.float64)
            if i not in self.shift:
                self.shift[i] = x.mean(0)
                self.sums[i] = torch.zeros_like(self.shift[i])
            d = x - self.shift[i]
            if i not in self.factor and bool((d != 0).any()):
                # fixed by the first block that varies (earlier blocks added exact zeros)
                self.factor[i] = pow2_factor(d)
            x = d * self.factor.get(i, 1.0)
            self.sums[i] += x.sum(0)
            xs[i] = x.to(self.dtype)
        self.n += feats[self.layers[0]].shape[0]
        for i, j in self.pairs:
            prod = (xs[i].T @ xs[j]).double()
            if (i, j) in self.acc:
                self.acc[(i, j)] += prod
            else:
                self.acc[(i, j)] = prod

    def centred(self, reduce=None, sizes=None) -> tuple[dict, int]:
        """``({pair: centred X_i^T X_j}, frames)``, summed over shards with ``reduce``."""
        acc, sums, n = self.acc, self.sums, self.n
        if reduce is not None:
            acc, sums, n = _reduce_centred(acc, sums, self.shift, self.factor, n, self.pairs,
                                           self.layers, sizes, self.device, reduce)
        return {(i, j): c - torch.outer(sums[i], sums[j]) / n for (i, j), c in acc.items()}, n

    def hsic(self, reduce=None, sizes=None) -> tuple[dict, int]:
        """``({pair: ||centred X_i^T X_j||_F^2}, frames)``, summed over shards with ``reduce``."""
        cov, n = self.centred(reduce, sizes)
        return {p: float((c * c).sum()) for p, c in cov.items()}, n

    def svcca(self, keep_variance: float, reduce=None, sizes=None) -> tuple[dict, int]:
        """``({pair: mean canonical correlation}, frames)`` (``docs/similarity.md``)."""
        cov, n = self.centred(reduce, sizes)
        return {(i, j): _svcca(cov[(i, i)], cov[(j, j)], c, keep_variance)
                for (i, j), c in cov.items()}, n


def _reduce_centred(acc, sums, shift, factor, n, pairs, layers_used, sizes, device, reduce):
    """Sum over shards of cross-products centred on the global mean of each layer.

    A shard holds ``C = sum (x - s_i)(y - s_j)^T f_i f_j`` and ``S_i = sum (x - s_i) f_i``
    with its own shifts ``s`` and powers of two ``f``. First all shards move to
    common factors ``g`` (the geometric mean of the shards', rounded to a power
    of two: an exact rescaling); then, with ``d = (s - m) g`` (``m`` the global
    mean), ``sum (x - m_i)(y - m_j)^T g_i g_j = C + S_i d_j^T + d_i S_j^T + n d_i d_j^T``.
    """
    f64 = {"dtype": torch.float64, "device": device}
    for i in layers_used:
        if i not in shift:  # a shard without frames
            shift[i] = torch.zeros(sizes[i], **f64)
            sums[i] = torch.zeros(sizes[i], **f64)
    n_all = float(reduce(torch.tensor([float(n)], **f64))[0])
    if n_all <= 0:
        raise ValueError("no frames in any shard")
    # exponents of the shards that hold frames -> one common power of two per layer
    exps = torch.tensor([[math.log2(factor[i]) if i in factor else 0.0, 1.0 if i in factor else 0.0]
                         for i in layers_used], **f64)
    exps = reduce(exps)
    common = {i: 2.0 ** round(float(e[0]) / max(float(e[1]), 1.0))
              for i, e in zip(layers_used, exps)}
    to_common = {i: common[i] / factor.get(i, common[i]) for i in layers_used}
    sums = {i: sums[i] * to_common[i] for i in layers_used}
    mean = {i: reduce(sums[i] / common[i] + n * shift[i]) / n_all for i in layers_used}
    out = {}
    for i, j in pairs:
        c = acc.get((i, j))
        if c is None:
            c = torch.zeros(sizes[i], sizes[j], **f64)
        c = c * (to_common[i] * to_common[j])
        di, dj = (shift[i] - mean[i]) * common[i], (shift[j] - mean[j]) * common[j]
        c = c + torch.outer(sums[i], dj) + torch.outer(di, sums[j]) + n * torch.outer(di, dj)
        out[(i, j)] = reduce(c)
    zero = {i: torch.zeros(sizes[i], **f64) for i in layers_used}  # centred: sums are 0
    return out, zero, int(round(n_all))


def _minibatch_hsic(src, sel, counts, keep, pairs, device, chunk_frames, batch_size, seed):
    """Sum over minibatches of the unbiased HSIC of each pair, then divided by their count.

    Utterance blocks are visited in a random order and each block's frames are
    shuffled before being cut into minibatches.
    """
    rng = np.random.default_rng([int(seed), 53])
    perm = rng.permutation(len(sel))
    sel_p, counts_p = sel[perm], counts[perm]
    keep_p = None
    if keep is not None:
        offs = np.concatenate([[0], np.cumsum(counts)])
        keep_p = np.concatenate([keep[offs[k]:offs[k + 1]] for k in perm])
    gen = torch.Generator().manual_seed(int(seed))
    layers_used = sorted({i for p in pairs for i in p})
    total = {p: 0.0 for p in pairs}
    batches = 0
    n = 0
    pending: list[list[torch.Tensor]] = []
    pending_n = 0
    factor: dict = {}

    def _batch_hsic(feats):
        m = feats[0].shape[0]
        grams = {}
        for i in layers_used:
            x = feats[i].to(device=device, dtype=torch.float64)
            x = x - x.mean(0)  # the unbiased HSIC is invariant to shifts; this keeps it exact
            if i not in factor and bool((x != 0).any()):  # one power of two per layer
                factor[i] = pow2_factor(x)                  # (see CrossProducts)
            x = (x * factor.get(i, 1.0)).to(torch.float32)
            k = x @ x.T
            k.fill_diagonal_(0)
            grams[i] = k
        ks = torch.stack([grams[i] for i in layers_used]).reshape(len(layers_used), -1).double()
        tr = ks @ ks.T
        s = ks.sum(1)
        u = torch.stack([grams[i].double().sum(1) for i in layers_used])
        uu = u @ u.T
        val = (tr + torch.outer(s, s) / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * uu) / (m * (m - 3))
        pos = {i: a for a, i in enumerate(layers_used)}
        return {p: float(val[pos[p[0]], pos[p[1]]]) for p in pairs}

    for feats in _iter_blocks(src, sel_p, counts_p, keep_p, chunk_frames):
        order = torch.randperm(feats[0].shape[0], generator=gen)
        feats = [f[order] for f in feats]
        if pending:
            feats = [torch.cat([p, f]) for p, f in zip(pending, feats)]
            pending, pending_n = [], 0
        nb = feats[0].shape[0]
        full = nb // batch_size
        for b in range(full):
            part = [f[b * batch_size:(b + 1) * batch_size] for f in feats]
            for p, v in _batch_hsic(part).items():
                total[p] += v
            batches += 1
            n += batch_size
        if nb % batch_size:
            pending = [f[full * batch_size:] for f in feats]
            pending_n = nb - full * batch_size
    if pending_n >= 4 and (batches == 0 or pending_n >= batch_size // 2):
        for p, v in _batch_hsic(pending).items():
            total[p] += v
        batches += 1
        n += pending_n
    if batches == 0:
        raise ValueError("fewer than 4 frames: the minibatch estimator needs at least 4")
    return {p: v / batches for p, v in total.items()}, n
