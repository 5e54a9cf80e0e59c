"""Held-out CCA of every layer against a reference (log-mel, phones, words or arrays),
Pasad et al.'s protocol: regularised CCA fitted on train speakers, its ridge chosen on
dev, projection-weighted CCA (PWCCA, Morcos et al. 2018) reported on test, all from
streamed covariance sums (``docs/similarity.md``, "Held-out CCA").

Written here: scikit-learn's ``CCA`` is iterative NIPALS on in-memory frames, with no
ridge, held-out scoring or projection weighting, and no maintained library has PWCCA.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import linalg

from .. import _validate as _v
from .._bootstrap import (MIN_UNITS, Bootstrap, add_interval_columns, bootstrap_options,
                          items_digest, resampling_units)
from .._deps import torchaudio as _import_torchaudio
from .._device import resolve_device
from .._labels import label_strings
from .._numerics import warn_degenerate
from ..probe.folds import assign_folds
from ..similarity import CrossProducts
from ..store import tag_weights, utterance_selection
from ._engine import Batch, Context, Measure, StoreSource, run_measures

__all__ = ["CCA", "DEFAULT_REGS", "REFERENCES", "cca_layers"]

REFERENCES = ("mel", "phone", "word")
"""The named references; anything else is an array per utterance."""

DEFAULT_REGS = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1)
"""The regularisations tried on each side (every pair of them), relative to that side's
largest variance."""

PARTS = ("train", "dev", "test")
MEL = {"bins": 80, "window": 400, "hop": 160}  # samples at 16 kHz: 25 ms windows every 10 ms
RANK_TOL = 1e-10  # directions of a training covariance below this share of its top are dropped
MIN_TEST_UNITS = MIN_UNITS  # the test part's units a bootstrap needs
MAX_CLASSES = 4096  # one-hot references wider than this are refused (their d x d sums)


# -- the maths, on covariance sums (numpy / scipy) ------------------------------


def _subspace(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of ``c`` above ``RANK_TOL`` of its largest: constant
    columns, a one-hot's sum-to-one direction and exact collinearities are dropped."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    top = float(w.max()) if w.size else 0.0
    keep = w > RANK_TOL * top if top > 0 else np.zeros(w.shape, dtype=bool)
    return w[keep], v[:, keep]


def solve_cca(cxx: np.ndarray, cxy: np.ndarray, cyy: np.ndarray, reg_x: float,
              reg_y: float, bases=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regularised CCA from centred covariances (any common scale per side).

    Each side keeps the directions of its covariance above ``RANK_TOL`` of the largest
    (eigenvalues ``w``, vectors ``V``) and is whitened by ``V (w + reg * max w)^-1/2``:
    the ridge ``reg * max w`` is added to every kept variance (``reg`` is relative, as
    Pasad et al.'s epsilon on covariances divided by their largest entry). The SVD of
    the whitened cross-covariance gives the canonical pairs.

    Args:
        cxx, cxy, cyy: ``(dx, dx)``, ``(dx, dy)``, ``(dy, dy)`` centred sums.
        reg_x, reg_y: the relative ridge of each side.
        bases: ``(_subspace(cxx), _subspace(cyy))`` when already computed.

    Returns:
        ``(A (dx, k), B (dy, k), correlations (k,))`` with ``k`` the smaller of the two
        kept ranks; ``x A`` and ``y B`` are the canonical projections.
    """
    (wx, vx), (wy, vy) = bases if bases is not None else (_subspace(cxx), _subspace(cyy))
    hx = vx / np.sqrt(wx + reg_x * wx.max())
    hy = vy / np.sqrt(wy + reg_y * wy.max())
    u, s, vt = np.linalg.svd(hx.T @ cxy @ hy, full_matrices=False)
    return hx @ u, hy @ vt.T, s


def _orthonormal_loadings(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``|Q' Z|`` summed over the neurons: ``Q`` the projections ``Z p`` of one side
    orthonormalised in order (Gram-Schmidt), from that side's centred covariance ``c``
    alone. ``R`` (``Z p = Q R``) is the Cholesky factor of ``p' c p`` and
    ``Q' Z = R^-T p' c``. A projection in the span of the earlier ones on this part
    (a phone class the part lacks) adds no direction: its weight is 0."""
    cp = c @ p
    g = p.T @ cp
    try:
        keep = np.ones(len(g), dtype=bool)
        r = linalg.cholesky(g, lower=False)
        if not (np.diag(r) > np.sqrt(RANK_TOL * np.maximum(np.diag(g), 0))).all():
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:  # dependent projections: Gram-Schmidt skipping them
        keep = np.zeros(len(g), dtype=bool)
        r = np.zeros_like(g)
        for i in range(len(g)):
            prev = np.flatnonzero(keep)
            ri = (linalg.solve_triangular(r[np.ix_(prev, prev)], g[prev, i], trans="T")
                  if len(prev) else np.zeros(0))
            res = g[i, i] - ri @ ri
            if g[i, i] > 0 and res > RANK_TOL * g[i, i]:
                r[prev, i], r[i, i], keep[i] = ri, np.sqrt(res), True
        r = r[np.ix_(keep, keep)]
    alpha = np.zeros(len(g))
    if keep.any():
        alpha[keep] = np.abs(linalg.solve_triangular(r, cp[:, keep].T, trans="T")).sum(1)
    return alpha


def heldout_pwcca(a: np.ndarray, b: np.ndarray, cxx: np.ndarray, cxy: np.ndarray,
                  cyy: np.ndarray, weigh_by: str) -> tuple[float, np.ndarray, np.ndarray]:
    """PWCCA of fixed directions ``a``, ``b`` on another part's centred covariances.

    The correlation of pair ``i`` on that part is ``a_i' Cxy b_i / sqrt(a_i' Cxx a_i
    b_i' Cyy b_i)``, signed (an unrelated layer averages near 0, not above it), and 0
    where a projection is constant on the part. Its weight (Morcos et al. 2018) is
    ``sum_j |<h_i, z_j>|`` over the centred neurons ``z_j`` of the side ``weigh_by``,
    ``h_i`` that side's projections orthonormalised in order; the weights sum to 1.
    All of it comes from the part's covariance sums (:func:`_orthonormal_loadings`),
    so no frame is kept.

    Returns:
        ``(pwcca, correlations (k,), weights (k,))``; NaN when no projection varies.
    """
    sxy = ((cxy @ b) * a).sum(0)
    sxx, syy = ((cxx @ a) * a).sum(0), ((cyy @ b) * b).sum(0)
    live = (sxx > 0) & (syy > 0)
    rho = np.zeros(len(sxy))
    rho[live] = sxy[live] / np.sqrt(sxx[live] * syy[live])
    alpha = _orthonormal_loadings(a, cxx) if weigh_by == "layer" else _orthonormal_loadings(b, cyy)
    if not alpha.sum() > 0:
        return float("nan"), rho, np.full(len(rho), np.nan)
    w = alpha / alpha.sum()
    return float(w @ rho), rho, w


# -- references ---------------------------------------------------------------


def log_mel(wav) -> np.ndarray:
    """``(frames, 80)`` Kaldi log-mel filterbank of a 16 kHz waveform
    (``torchaudio.compliance.kaldi.fbank``: 25 ms windows every 10 ms, no dither; frame
    ``m`` covers samples ``[160 m, 160 m + 400)``)."""
    _import_torchaudio()
    kaldi = importlib.import_module("torchaudio.compliance.kaldi")
    w = torch.as_tensor(np.asarray(wav, dtype=np.float32)).reshape(1, -1)
    if w.shape[1] < MEL["window"]:
        raise ValueError(f"a log-mel frame needs {MEL['window']} samples (25 ms), the "
                         f"waveform has {w.shape[1]}")
    return kaldi.fbank(w, num_mel_bins=MEL["bins"], frame_length=25.0, frame_shift=10.0,
                       sample_frequency=16000.0, dither=0.0).double().numpy()


def mel_frames(num_frames: int, rate: int, receptive_field: int, num_mel: int) -> np.ndarray:
    """The mel frame of each of a layer's ``num_frames`` frames: the one whose centre
    (``160 m + 200``) is nearest the layer frame's centre ``k * rate + rf / 2`` (the
    convention of :func:`s3viz.align.frame_labels`), clipped to ``[0, num_mel)``; its
    25 ms window covers that centre but in the last few ms of an utterance."""
    centres = np.arange(int(num_frames), dtype=np.float64) * rate + receptive_field / 2.0
    m = np.floor((centres - MEL["window"] / 2.0) / MEL["hop"] + 0.5).astype(np.int64)
    return np.clip(m, 0, num_mel - 1)


class _Shared:
    """Reference data shared by the copies of a measure (``run_measures`` copies the
    measure's settings for each run; a corpus or arrays are read, never copied)."""

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self


def _check_reference(reference):
    if isinstance(reference, str):
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES} or an array per utterance "
                             f"(a list in corpus order or a dict id -> (frames, dims)), got "
                             f"{reference!r}")
        return reference
    if isinstance(reference, (Mapping, Sequence)) and not isinstance(reference, bytes):
        return reference
    raise TypeError(f"reference must be one of {REFERENCES} or an array per utterance (a list "
                    f"in corpus order or a dict id -> (frames, dims) array), got "
                    f"{type(reference).__name__}")


def _check_parts(parts) -> tuple[int, int, int]:
    ok = (isinstance(parts, (tuple, list)) and len(parts) == 3
          and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 1
                  for p in parts))
    if not ok:
        raise ValueError(f"parts must be 3 whole numbers >= 1, the folds of speakers (or "
                         f"utterances) given to train, dev and test, e.g. (3, 1, 1) for "
                         f"60/20/20; got {parts!r}")
    return tuple(int(p) for p in parts)


def _check_regs(regs) -> tuple[float, ...]:
    if regs is None:
        return DEFAULT_REGS
    vals = _v.numbers(regs, "regs", positive=False)
    if any(not 0 <= r < 1e6 for r in vals):
        raise ValueError(f"regs must be numbers >= 0 (relative ridges, e.g. {DEFAULT_REGS}), "
                         f"got {list(regs)!r}")
    return tuple(vals)


def _check_mel_corpus(corpus, meta) -> None:
    """Refuse a ``corpus=`` (same ids as the frames) that is not the one the frames were
    extracted from: an utterance's length differs from the frames' ``num_samples``
    label, or the corpus's fingerprint differs from the store's ``corpus_fingerprint``."""
    fix = ("pass the corpus the store was extracted from (or extract the store again from "
           "this corpus)")
    labels = meta.labels
    if "num_samples" in labels.columns:
        known = labels["num_samples"].to_numpy()
        for k, u in enumerate(corpus):
            want = known[k]
            if pd.notna(want) and int(u.num_samples) != int(want):
                raise ValueError(
                    f"reference='mel': corpus= is not the corpus the frames were extracted "
                    f"from: utterance {str(meta.ids[k])!r} has {int(u.num_samples)} samples in "
                    f"it, {int(want)} when the frames were extracted (same ids, other audio); "
                    f"{fix}")
    stored = getattr(meta, "corpus_fingerprint", None)
    if stored is not None and corpus.fingerprint() != stored:
        raise ValueError(
            "reference='mel': corpus= is not the corpus the frames were extracted from: its "
            f"fingerprint ({corpus.fingerprint()[:12]}) differs from the store's "
            f"corpus_fingerprint ({str(stored)[:12]}), so its audio, texts, speakers, labels, "
            f"alignments or tracks changed since; {fix}")


# -- the measure --------------------------------------------------------------


class CCA(Measure):
    """Held-out PWCCA of every layer against a reference (``docs/similarity.md``).

    Args:
        reference: ``"mel"`` (80 log-mel bins, 25 ms / 10 ms, from ``corpus``'s audio),
            ``"phone"`` or ``"word"`` (a one-hot of the alignment label of each frame;
            frames labelled ``""`` are left out and counted), or an array per utterance:
            a list in corpus order or a dict id -> ``(frames, dims)`` array with exactly
            the frames of every analysed layer (one row per layer frame).
        parts: folds of speakers (utterances when the corpus has no speakers) for train,
            dev and test: ``(3, 1, 1)`` deals the speakers into 5 folds of balanced
            frames, 3 to train, 1 to dev, 1 to test.
        regs: relative ridges tried on each side (every pair); the pair with the best
            dev PWCCA is used on test. None: :data:`DEFAULT_REGS`.
        seed: the seed of the split and of the bootstrap.
        bootstrap: resamples of the test speakers for a percentile interval of
            ``pwcca`` (None: no interval; at least 100).
        confidence: the interval's coverage.
        corpus: the corpus the frames come from (``"mel"`` reads its audio).
        utterances: corpus positions to use (None: all).
    """

    name = "cca"
    passes = 1

    def __init__(self, reference="phone", *, parts=(3, 1, 1), regs=None, seed: int = 0,
                 bootstrap: int | None = None, confidence: float = 0.95, corpus=None,
                 utterances=None):
        super().__init__()
        self.reference = _check_reference(reference)
        self.parts = _check_parts(parts)
        self.regs = _check_regs(regs)
        self.seed = _v.integer(seed, "seed", minimum=0)
        self.resamples, self.confidence = bootstrap_options(bootstrap, confidence)
        self.passes = 2 if self.resamples else 1
        if self.reference == "mel" and corpus is None:
            raise ValueError("reference='mel' needs the audio: pass corpus= (the corpus the "
                             "frames were extracted from)")
        self.data = _Shared((None if isinstance(reference, str) else reference, corpus))
        self.utterances = utterances

    # -- setup: split, reference dimensions, state

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        meta, n = ctx.meta, len(ctx.meta)
        sel = utterance_selection(self.utterances, n)
        codes, names, kind = resampling_units(meta.labels, sel)
        folds = sum(self.parts)
        if len(names) < folds:
            raise ValueError(
                f"cca needs at least {folds} {kind}s for parts={self.parts} (the {kind}s are "
                f"dealt into {folds} folds: train, dev and test share none), there are "
                f"{len(names)}; pass parts=(1, 1, 1) (3 {kind}s) or use more {kind}s")
        weights = ctx.lengths()[sel, 0].astype(np.float64)
        fold = assign_folds(np.asarray(names, dtype=object)[codes], weights, folds, self.seed,
                            what=kind)
        part = np.digitize(fold, np.cumsum(self.parts)[:2])  # 0 train, 1 dev, 2 test
        self.part_of = np.full(n, -1, dtype=np.int64)
        self.part_of[sel] = part
        self.split = pd.DataFrame({"utterance": sel,
                                   "id": [str(meta.ids[int(i)]) for i in sel],
                                   "group": np.asarray(names, dtype=object)[codes],
                                   "part": np.asarray(PARTS, dtype=object)[part]})
        self.split_by = kind
        # the test part's units, for the bootstrap
        test_codes = np.unique(codes[part == 2])
        self.unit_row = np.full(n, -1, dtype=np.int64)
        self.unit_row[sel[part == 2]] = np.searchsorted(test_codes, codes[part == 2])
        self.test_units = [names[c] for c in test_codes]
        self.items = items_digest(meta.labels, sel)  # what two paired tables must share
        if self.resamples and len(self.test_units) < MIN_TEST_UNITS:
            raise ValueError(
                f"cca_layers(bootstrap={self.resamples}) resamples the TEST part's {kind}s "
                f"only (the CCA is fitted on train and dev and held fixed), and with "
                f"parts={self.parts} the test part has {len(self.test_units)} {kind}(s) "
                f"({self.test_units}); a percentile interval needs at least "
                f"{MIN_TEST_UNITS}: use more {kind}s, a larger test part (parts=, e.g. "
                f"parts=(3, 1, 2) or (1, 1, 1)), or bootstrap=None")
        self.dims = self._setup_reference(ctx, sel)
        sizes = [[ctx.sizes[s], self.dims] for s in range(ctx.num_layers)]
        self.add_state("products", [[CrossProducts([(0, 0), (0, 1), (1, 1)], ctx.device,
                                                   torch.float64) for _ in PARTS]
                                    for _ in range(ctx.num_layers)],
                       lambda v, reduce: [[cp.reduced(reduce, sizes[s]) for cp in row]
                                          for s, row in enumerate(v)])
        self.add_state("left_out", torch.zeros(ctx.num_layers, dtype=torch.float64,
                                               device=ctx.device))

    def _setup_reference(self, ctx: Context, sel: np.ndarray) -> int:
        """The reference's columns (checked against the corpus)."""
        arrays, corpus = self.data.value
        meta = ctx.meta
        if self.reference in ("phone", "word"):
            column = self.reference
            values = set()
            for u in sel:
                table = meta.phones[int(u)]
                if table is None:
                    continue
                if column not in table.columns:
                    raise ValueError(f"reference={column!r}: the alignment of utterance "
                                     f"{meta.ids[int(u)]!r} has no {column!r} column "
                                     f"(it has {list(table.columns)})")
                values |= set(label_strings(table[column].tolist()))
            classes = sorted(v for v in values if v != "")
            if len(classes) < 2:
                raise ValueError(f"reference={column!r} needs at least 2 {column} labels in the "
                                 f"selected utterances' alignments (a one-hot of fewer has no "
                                 f"variation); found {classes}")
            if len(classes) > MAX_CLASSES:
                raise ValueError(f"reference={column!r} has {len(classes)} classes, above "
                                 f"{MAX_CLASSES} (a one-hot that wide needs d x d sums per "
                                 f"part and layer); pass an array per utterance (e.g. word "
                                 f"embeddings) or fewer utterances")
            self.classes = {c: i for i, c in enumerate(classes)}
            return len(classes)
        if self.reference == "mel":
            ids = [str(u) for u in getattr(corpus, "ids", [])]
            if ids != [str(u) for u in meta.ids]:
                raise ValueError("reference='mel': corpus= must be the corpus the frames were "
                                 f"extracted from (the same ids in the same order); it has "
                                 f"{len(ids)} utterances, the frames {len(meta.ids)}")
            _check_mel_corpus(corpus, meta)
            return MEL["bins"]
        return self._check_arrays(arrays, meta, sel)

    def _check_arrays(self, arrays, meta, sel) -> int:
        if isinstance(arrays, Mapping):
            missing = [str(meta.ids[int(u)]) for u in sel if str(meta.ids[int(u)]) not in arrays]
            if missing:
                raise ValueError(f"reference (a dict id -> array) lacks {len(missing)} of the "
                                 f"utterances used (e.g. {missing[:5]}); give every one")
            get = {int(u): arrays[str(meta.ids[int(u)])] for u in sel}
        else:
            if len(arrays) != len(meta.ids):
                raise ValueError(f"reference (a list of arrays in corpus order) has "
                                 f"{len(arrays)} entries for {len(meta.ids)} utterances")
            get = {int(u): arrays[int(u)] for u in sel}
        dims = None
        for u, a in get.items():
            a = np.asarray(a)
            if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
                raise ValueError(f"reference array of utterance {meta.ids[u]!r} must be a 2-D "
                                 f"numeric (frames, dims) array, got shape {a.shape} "
                                 f"dtype {a.dtype}")
            if dims is None:
                dims = a.shape[1]
            if a.shape[1] != dims:
                raise ValueError(f"reference arrays must all have the same dims; utterance "
                                 f"{meta.ids[u]!r} has {a.shape[1]}, others {dims}")
            if not np.isfinite(a).all():
                raise ValueError(f"reference array of utterance {meta.ids[u]!r} holds NaN or "
                                 f"inf; CCA cannot use it: fix or leave it out with utterances=")
        if dims is None or dims < 2:
            raise ValueError(f"reference arrays need at least 2 dims, got {dims}")
        self.arrays = get
        return int(dims)

    # -- the passes

    def _reference(self, batch: Batch, s: int, cache: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(keep (frames,) bool, (kept, dims) float64)`` of layer ``s``'s frames."""
        lens = batch.lens[:, s]
        ctx = self.ctx
        if self.reference in ("phone", "word"):
            lab = batch.frame_labels(s, self.reference)
            # the selected utterances' labelled frames only: the classes are theirs
            keep = (lab != "") & (np.repeat(self.part_of[batch.positions], lens) >= 0)
            y = np.zeros((int(keep.sum()), self.dims))
            y[np.arange(len(y)), [self.classes[v] for v in lab[keep]]] = 1.0
            return keep, y
        parts = []
        for pos, t in zip(batch.positions.tolist(), lens.tolist()):
            if self.part_of[pos] < 0:
                parts.append(np.zeros((t, self.dims)))  # not selected: dropped by the caller
            elif self.reference == "mel":
                if pos not in cache:
                    cache[pos] = log_mel(self.data.value[1][pos].wav)
                mel = cache[pos]
                parts.append(mel[mel_frames(t, ctx.rates[s], ctx.fields[s], len(mel))])
            else:
                a = np.asarray(self.arrays[pos], dtype=np.float64)
                if a.shape[0] != t:
                    raise ValueError(
                        f"reference array of utterance {ctx.meta.ids[pos]!r} has {a.shape[0]} "
                        f"rows, but stored layer {ctx.layer_index[s]} has {t} frames there: an "
                        "array reference needs one row per frame of every analysed layer "
                        "(pass layers= of one frame rate)")
                parts.append(a)
        y = np.concatenate(parts) if parts else np.zeros((0, self.dims))
        if not np.isfinite(y).all():
            raise ValueError("the log-mel reference holds NaN or inf (audio with NaN?)")
        return np.ones(len(y), dtype=bool), y

    def update(self, batch: Batch, pass_index: int) -> None:
        cache: dict = {}
        for s in range(self.ctx.num_layers):
            lens = batch.lens[:, s]
            used = np.repeat(self.part_of[batch.positions], lens) >= 0
            keep, y = self._reference(batch, s, cache)  # y: the rows of the kept frames
            if pass_index == 0:
                self.left_out[s] += float((used & ~keep).sum())
            y = torch.from_numpy(y[used[keep]])
            keep &= used
            x = batch.frames[s][torch.from_numpy(keep).to(batch.frames[s].device)]
            part = np.repeat(self.part_of[batch.positions], lens)[keep]
            if pass_index == 0:
                for p in range(len(PARTS)):
                    m = torch.from_numpy(part == p)
                    self.products[s][p].add([x[m.to(x.device)], y[m]])
            else:
                self._add_unit_sums(s, x, y, part, np.repeat(
                    self.unit_row[batch.positions], lens)[keep])

    def _add_unit_sums(self, s, x, y, part, unit) -> None:
        fit = self.fits[s]
        if fit.get("k") is None:
            return
        m = part == 2
        dev = self.unit_sums[s].device
        xs = x[torch.from_numpy(m).to(x.device)].to(device=dev, dtype=torch.float64)
        u = ((xs - fit["shift"][0]) * fit["factor"][0]) @ fit["a"]
        v = ((y[torch.from_numpy(m)].to(dev) - fit["shift"][1]) * fit["factor"][1]) @ fit["b"]
        stats = torch.cat([torch.ones(len(u), 1, dtype=torch.float64, device=dev), u, v,
                           u * u, v * v, u * v], 1)
        self.unit_sums[s].index_add_(0, torch.from_numpy(unit[m]).to(dev), stats)

    def end_pass(self, pass_index: int) -> None:
        if pass_index == 0:
            self.fits = [self._fit(s) for s in range(self.ctx.num_layers)]
            if self.resamples:
                self.add_state("unit_sums", [torch.zeros(
                    len(self.test_units), 1 + 5 * f.get("k", 0),
                    dtype=torch.float64, device=self.ctx.device) for f in self.fits],
                    lambda v, reduce: [reduce(t) for t in v], after_pass=1)

    def _covs(self, s: int) -> list:
        out = []
        for p, name in enumerate(PARTS):
            cp = self.products[s][p]
            if cp.n == 0:
                raise ValueError(f"stored layer {self.ctx.layer_index[s]}: the {name} part has "
                                 f"no frames with a reference; use more {self.split_by}s or "
                                 f"other parts=")
            c, n = cp.centred()
            out.append(([c[k].cpu().numpy() for k in ((0, 0), (0, 1), (1, 1))], n))
        return out

    def _fit(self, s: int) -> dict | None:
        """Train on train, pick the ridge pair on dev, score on test (layer ``s``)."""
        ctx = self.ctx
        lid = ctx.layer_index[s]
        covs = self._covs(s)
        (cxx, cxy, cyy), n_train = covs[0]
        h = ctx.sizes[s]
        if n_train <= max(h, self.dims):
            raise ValueError(
                f"stored layer {lid}: {n_train} training frames for {h} layer dims and "
                f"{self.dims} reference dims; CCA needs more frames than dimensions in the "
                "training part: use more utterances (or a larger train share, parts=), or "
                "fewer dimensions (a PCA of the layer, a smaller reference)")
        dy = np.diag(cyy)
        if dy.max() <= 0 or int((dy > RANK_TOL * dy.max()).sum()) < 2:
            raise ValueError(f"the reference has fewer than 2 varying dimensions in the training "
                             f"part of stored layer {lid} (constant columns carry nothing to "
                             "correlate); use a richer reference or more utterances")
        bases = (_subspace(cxx), _subspace(cyy))
        rx, ry = len(bases[0][0]), len(bases[1][0])
        out = {"n": [c[1] for c in covs], "rx": rx, "ry": ry, "degenerate": None}
        if rx == 0:
            out["degenerate"] = "the layer is constant in the training part"
            return out
        k = min(rx, ry)
        weigh_by = "reference" if ry <= rx else "layer"
        for name, (_, n) in zip(PARTS[1:], covs[1:]):
            if n <= k:
                raise ValueError(f"stored layer {lid}: the {name} part has {n} frames for {k} "
                                 f"canonical directions; PWCCA on it needs more frames than "
                                 f"directions: use more utterances or a larger {name} share "
                                 f"(parts=)")
        best = None
        for ex in self.regs:
            for ey in self.regs:
                a, b, _ = solve_cca(cxx, cxy, cyy, ex, ey, bases)
                score = heldout_pwcca(a, b, *covs[1][0], weigh_by)[0]
                if np.isfinite(score) and (best is None or score > best[0]):
                    best = (score, ex, ey, a, b)
        if best is None:
            raise ValueError(f"stored layer {lid}: no canonical projection varies on the dev "
                             "part, for any of regs; use more dev utterances (parts=)")
        dev_score, ex, ey, a, b = best
        score, rho, w = heldout_pwcca(a, b, *covs[2][0], weigh_by)
        if not np.isfinite(score):
            raise ValueError(f"stored layer {lid}: no canonical projection varies on the test "
                             "part; use more test utterances (parts=)")
        test = self.products[s][2]
        out.update(pwcca=score, mean_cca=float(np.mean(rho)), dev_pwcca=dev_score, reg_x=ex,
                   reg_y=ey, k=k, weigh_by=weigh_by, rho=rho, w=w,
                   a=torch.from_numpy(a).to(ctx.device), b=torch.from_numpy(b).to(ctx.device),
                   shift=(test.shift[0], test.shift[1]), factor=(test.factor[0], test.factor[1]))
        return out

    # -- the table

    def compute(self) -> dict:
        ctx, rows, bad, replicates = self.ctx, [], {}, {}
        for s, fit in enumerate(self.fits):
            lid = ctx.layer_index[s]
            done = fit.get("k") is not None
            bad[lid] = fit["degenerate"]
            rows.append({
                "layer": lid, "upstream_layer": ctx.layer_ids[s],
                "reference": self.reference if isinstance(self.reference, str) else "array",
                "pwcca": fit["pwcca"] if done else np.nan,
                "mean_cca": fit["mean_cca"] if done else np.nan,
                "dev_pwcca": fit["dev_pwcca"] if done else np.nan,
                "reg_layer": fit["reg_x"] if done else np.nan,
                "reg_reference": fit["reg_y"] if done else np.nan,
                "directions": fit["k"] if done else 0,
                "dims_layer": fit["rx"], "dims_reference": fit["ry"],
                "weighted_by": fit["weigh_by"] if done else "",
                "train_frames": fit["n"][0], "dev_frames": fit["n"][1],
                "test_frames": fit["n"][2],
                "left_out_frames": int(self.left_out[s]),
                "split_by": self.split_by})
            if self.resamples and done:
                replicates[(lid,)] = {"pwcca": self._replicates(s)}
        table = pd.DataFrame(rows)
        table.attrs.update(parts=self.parts, regs=self.regs, seed=self.seed,
                           split_by=self.split_by)
        if self.resamples:
            boot = self._boot()
            table = add_interval_columns(table, boot, ["layer"], replicates, ["pwcca"])
        warn_degenerate("cca_layers", bad, "PWCCA")
        return {"": table, "split": self.split.copy()}

    def _boot(self) -> Bootstrap:
        return Bootstrap(self.test_units, self.split_by, self.resamples, self.confidence,
                         self.seed, items=self.items)

    def _replicates(self, s: int) -> np.ndarray:
        """PWCCA of each resample of the test units: the correlations of the fixed test
        projections recomputed from the resampled per-unit sums, weighted by the whole
        test part's PWCCA weights (the weights are held fixed; ``docs/similarity.md``)."""
        fit, k = self.fits[s], self.fits[s]["k"]
        sums = self._boot().replicate_sums(self.unit_sums[s].cpu().numpy())
        n = sums[:, :1]
        su, sv, suu, svv, suv = (sums[:, 1 + i * k:1 + (i + 1) * k] for i in range(5))
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (suv - su * sv / n) / np.sqrt((suu - su * su / n) * (svv - sv * sv / n))
        return rho @ fit["w"]


def cca_layers(store, reference="phone", *, layers: Sequence[int] | None = None,
               parts=(3, 1, 1), regs=None, seed: int = 0, bootstrap: int | None = None,
               confidence: float = 0.95, corpus=None, utterances=None,
               device=None) -> pd.DataFrame:
    """Held-out projection-weighted CCA of every stored layer against a reference.

    Pasad et al.'s protocol: the speakers are dealt into train, dev and test parts;
    regularised CCA is fitted on train for every pair of ``regs``, the pair with the
    best dev PWCCA is kept, and its PWCCA on test is reported (``docs/similarity.md``,
    "Held-out CCA").

    Args:
        store: a :class:`~s3viz.store.LayerStore`.
        reference: ``"mel"``, ``"phone"``, ``"word"`` or an array per utterance (see
            :class:`s3viz.measures.CCA`).
        layers: stored layer indices (default all).
        parts: folds of speakers for train, dev and test (default ``(3, 1, 1)``: 60/20/20).
        regs: relative ridges tried on each side (None: :data:`DEFAULT_REGS`).
        seed: the seed of the split and of the bootstrap.
        bootstrap: resamples of the test speakers for ``pwcca_lo`` / ``pwcca_hi`` (None:
            no interval).
        confidence: the interval's coverage.
        corpus: the corpus the store was extracted from (needed for ``"mel"``).
        utterances: store positions to use (None: all).
        device: torch device of the sums (None: cuda when available).

    Returns:
        One row per layer: ``layer``, ``upstream_layer``, ``reference``, ``pwcca`` (on
        test; with ``bootstrap``: ``pwcca_lo``, ``pwcca_hi`` and ``resampled_by``),
        ``mean_cca`` (the unweighted mean test correlation), ``dev_pwcca``,
        ``reg_layer``, ``reg_reference`` (the chosen ridges), ``directions``,
        ``dims_layer``, ``dims_reference`` (ranks used), ``weighted_by`` (the side whose
        neurons weight PWCCA: the one with fewer dims), ``train_frames``,
        ``dev_frames``, ``test_frames``, ``left_out_frames`` (unlabelled) and
        ``split_by`` (``"speaker"`` or ``"utterance"``). ``attrs["weights"]``: the
        store's weights.
    """
    measure = CCA(reference, parts=parts, regs=regs, seed=seed, bootstrap=bootstrap,
                  confidence=confidence, corpus=corpus, utterances=utterances)
    layer_list = _v.stored_layers(store, layers)
    table = run_measures([measure], StoreSource(store, layers=layer_list),
                         device=resolve_device(device))["cca"]
    return tag_weights(table, store)
