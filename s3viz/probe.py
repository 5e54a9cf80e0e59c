"""Per-layer probes: which layer of an upstream linearly encodes which label.

:func:`probe_layers` trains one linear classifier per stored layer of a
:class:`~s3viz.extract.LayerStore` and scores it on held-out utterances
(grouped K-fold: no utterance, or no speaker with ``split_by="speaker"``, has
frames on both sides of a split). Two probes:

``ridge``
    A closed-form linear least-squares probe (one-hot targets, L2 penalty,
    standardised features, unpenalised intercept). Everything it needs is a
    set of sufficient statistics per fold, :class:`ProbeStats` (counts,
    ``X^T 1``, ``X^T X``, ``X^T Y``, ``Y^T 1``), accumulated in float64 in one
    streamed pass over the store per layer; the training statistics of fold
    ``k`` are the sum of the other folds' statistics, so one pass serves all
    folds. The penalty of test fold ``k`` is chosen from a grid (:data:`LAMBDAS`)
    by the mean squared error on the next fold (a dev fold, never the test
    fold) of a fit on the remaining folds, computed from the statistics alone
    for the whole grid with one eigendecomposition (with ``folds=2`` each fold
    is cut in two groups-whole halves to make room for a dev part). A second
    streamed pass predicts the test frames. Memory is ``O(folds *
    hidden_size ** 2)`` per layer, independent of the number of frames. With
    fewer utterances than dimensions (utterance level) the same problem is
    solved in its ``n x n`` dual form.
``logistic``
    Softmax (multinomial logistic) classifiers of all layers with the same
    hidden size and frame rate trained together as one batched operation
    (weights ``(num_layers, hidden_size, num_classes)``, ``torch.bmm``) with
    Adam on minibatches on ``device``, an L2 penalty equal to scikit-learn's
    default ``C=1`` and early stopping on a grouped dev split of the training
    utterances. With ``dev_fraction=0`` there is no dev split and no early
    stopping: every classifier is trained on the whole training part to the
    optimum of that L2-penalised objective with full-batch L-BFGS (all layers
    batched), the solution scikit-learn's ``LogisticRegression()`` converges
    to. The features of a group of layers are held on the device
    (``max_memory`` bounds how many layers are trained at once).

Control tasks (``control=True``), after Hewitt & Liang (2019, "Designing and
Interpreting Probes with Control Tasks"): every *type* of input gets a control
class drawn once (seeded) from the empirical class distribution of the real
target, and every token of that type carries it. A probe reaching high
accuracy on the control task does so by memorising types, not by reading the
target from the representation; ``selectivity = accuracy - control_accuracy``.
The type of a token (``control_by``):

- frame level, default ``"context"``: the target label of the frame's segment
  together with the labels of the segments before and after it in the
  utterance (a triphone for ``target="phone"``). Mapping the target label
  itself to random classes would only merge classes (an easier task, never a
  control), so the type must be finer than the label;
- frame level, any other column of the alignment tables (e.g. ``"word"``);
- utterance level, a column of ``store.labels``; default ``"text"`` (the
  sentence) when the target is not the text itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ._numerics import Moments, centred_float32, read_dtype, safe_scale
from .align import frame_labels as _align_frame_labels
from . import _validate as _v
from ._device import resolve_device as _resolve_device
from .extract import _selection

__all__ = [
    "LAMBDAS",
    "LEVELS",
    "METHODS",
    "SPLITS",
    "ProbeStats",
    "control_labels",
    "probe_folds",
    "probe_layers",
]

METHODS = ("ridge", "logistic")
LEVELS = ("frame", "utterance", "segment")
SPLITS = ("speaker", "utterance")
LAMBDAS = tuple(float(v) for v in 10.0 ** np.linspace(-5.0, 3.0, 12))
"""Penalty grid of the ridge probe, relative to the mean eigenvalue of the
standardised feature covariance (which is 1)."""

_ALIGN_COLUMNS = ("start", "end")


# ---------------------------------------------------------------------------
# sufficient statistics
# ---------------------------------------------------------------------------


class ProbeStats:
    """Sufficient statistics of a linear least-squares probe, per group of examples.

    One instance holds, for each of ``num_groups`` groups (typically the folds
    of a cross-validation) of examples ``x`` with targets ``y``:

    ============  ==================================  ====================
    attribute     value                               shape
    ============  ==================================  ====================
    ``count``     number of examples                  ``(G,)``
    ``sum_x``     ``X^T 1``                           ``(G, H)``
    ``sum_xx``    ``X^T X``                           ``(G, H, H)``
    ``sum_y``     ``Y^T 1``                           ``(G, C)``
    ``sum_xy``    ``X^T Y``                           ``(G, H, C)``
    ``sum_yy``    ``diag(Y^T Y)``                     ``(G, C)``
    ============  ==================================  ====================

    The ``x`` sums are of ``x - shift``, with ``shift`` ``(H,)`` the mean of the
    first examples added to empty statistics: ``X^T X`` of features with a
    large mean would otherwise cancel every digit of their covariance (see
    :mod:`s3viz._numerics`). Everything is a sum over examples, so statistics of
    two shards of data add up (``a + b``, re-based on one shift when theirs
    differ) to the statistics of their union; a sharded or distributed run
    merges with :meth:`reduced` (``torch.distributed.all_reduce`` through
    ``reduce``). :meth:`solve` fits the ridge probe from them.

    Args:
        count, sum_x, sum_xx, sum_y, sum_xy, sum_yy: tensors of the shapes above.
        shift: ``(H,)`` the point the ``x`` sums are taken from (default 0).
    """

    _FIELDS = ("count", "sum_x", "sum_xx", "sum_y", "sum_xy", "sum_yy")

    def __init__(self, count, sum_x, sum_xx, sum_y, sum_xy, sum_yy, shift=None):
        g = count.shape[0]
        h = sum_x.shape[-1]
        c = sum_y.shape[-1]
        expected = {
            "count": (g,), "sum_x": (g, h), "sum_xx": (g, h, h),
            "sum_y": (g, c), "sum_xy": (g, h, c), "sum_yy": (g, c),
        }
        values = dict(zip(self._FIELDS, (count, sum_x, sum_xx, sum_y, sum_xy, sum_yy)))
        for name, shape in expected.items():
            if tuple(values[name].shape) != shape:
                raise ValueError(
                    f"ProbeStats: {name} must have shape {shape} (groups, hidden, targets), "
                    f"got {tuple(values[name].shape)}"
                )
        self.count, self.sum_x, self.sum_xx = count, sum_x, sum_xx
        self.sum_y, self.sum_xy, self.sum_yy = sum_y, sum_xy, sum_yy
        self._shift_fixed = shift is not None or bool((count != 0).any())
        if shift is None:
            shift = torch.zeros(h, dtype=sum_x.dtype, device=sum_x.device)
        shift = torch.as_tensor(shift).to(device=sum_x.device, dtype=sum_x.dtype)
        if tuple(shift.shape) != (h,):
            raise ValueError(f"ProbeStats: shift must have shape ({h},), got {tuple(shift.shape)}")
        self.shift = shift

    # -- construction -------------------------------------------------------
    @classmethod
    def zeros(cls, num_groups: int, hidden_size: int, num_targets: int, *,
              dtype=torch.float64, device=None) -> ProbeStats:
        """Empty statistics for ``num_groups`` groups of ``hidden_size``-dim examples."""
        kw = {"dtype": dtype, "device": device}
        g, h, c = int(num_groups), int(hidden_size), int(num_targets)
        # no shift yet: the first update fixes it
        return cls(torch.zeros(g, **kw), torch.zeros(g, h, **kw), torch.zeros(g, h, h, **kw),
                   torch.zeros(g, c, **kw), torch.zeros(g, h, c, **kw), torch.zeros(g, c, **kw))

    @classmethod
    def from_data(cls, x: torch.Tensor, y: torch.Tensor, group: torch.Tensor | None = None, *,
                  num_groups: int | None = None, num_targets: int | None = None,
                  dtype=torch.float64, device=None) -> ProbeStats:
        """Statistics of examples ``x`` with targets ``y`` (see :meth:`update`).

        Args:
            x: ``(num_examples, hidden_size)`` features.
            y: ``(num_examples,)`` or ``(num_examples, num_blocks)`` long class
                indices into ``[0, num_targets)`` (one-hot, or one-hot per block),
                or a ``(num_examples, num_targets)`` float target matrix.
            group: ``(num_examples,)`` long group of each example (default all 0).
            num_groups: number of groups (default ``group.max() + 1``).
            num_targets: number of target columns (default from ``y``).
        """
        if group is None:
            num_groups = 1 if num_groups is None else num_groups
        elif num_groups is None:
            num_groups = int(torch.as_tensor(group).max()) + 1 if len(group) else 1
        if num_targets is None:
            if y.is_floating_point():
                num_targets = y.shape[-1]
            else:
                num_targets = int(y.max()) + 1 if y.numel() else 1
        device = x.device if device is None else device
        out = cls.zeros(num_groups, x.shape[-1], num_targets, dtype=dtype, device=device)
        return out.update(x, y, group)

    def update(self, x: torch.Tensor, y: torch.Tensor,
               group: torch.Tensor | None = None) -> ProbeStats:
        """Add examples in place and return ``self``.

        Args:
            x: ``(num_examples, hidden_size)`` features (any float dtype;
                accumulated in this object's dtype).
            y: ``(num_examples,)`` or ``(num_examples, num_blocks)`` long class
                indices (each row of ``Y`` is one-hot in each block), or a
                ``(num_examples, num_targets)`` float target matrix.
            group: ``(num_examples,)`` long group index of each example, or
                ``None`` when all examples belong to group 0.
        """
        dev, dt = self.device, self.dtype
        x = torch.as_tensor(x).to(device=dev, dtype=dt)
        y = torch.as_tensor(y).to(device=dev)
        if x.ndim != 2 or x.shape[1] != self.hidden_size:
            raise ValueError(
                f"x must have shape (num_examples, {self.hidden_size}), got {tuple(x.shape)}"
            )
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows but x has {x.shape[0]}")
        if not self._shift_fixed and x.shape[0]:
            # exact for a constant feature of float32 data: x - shift is then 0
            self.shift = x.mean(0)
            self._shift_fixed = True
        x = x - self.shift
        if group is None:
            groups = [(0, slice(None))]
        else:
            group = torch.as_tensor(group).to(dev).long()
            if group.shape != (x.shape[0],):
                raise ValueError(f"group must have shape ({x.shape[0]},), got {tuple(group.shape)}")
            uniq = torch.unique(group).tolist()
            if uniq and (uniq[0] < 0 or uniq[-1] >= self.num_groups):
                raise ValueError(f"group values must be in [0, {self.num_groups}), got {uniq}")
            groups = [(g, group == g) for g in uniq]
        for g, rows in groups:
            xg, yg = x[rows], y[rows]
            self.count[g] += xg.shape[0]
            self.sum_x[g] += xg.sum(0)
            self.sum_xx[g] += xg.T @ xg
            if yg.is_floating_point():
                yg = yg.to(dt)
                self.sum_y[g] += yg.sum(0)
                self.sum_xy[g] += xg.T @ yg
                self.sum_yy[g] += (yg * yg).sum(0)
            else:
                yg = yg.long().reshape(yg.shape[0], -1)
                if yg.numel() and (int(yg.min()) < 0 or int(yg.max()) >= self.num_targets):
                    raise ValueError(f"class indices in y must be in [0, {self.num_targets})")
                ones = torch.ones(yg.shape[0], dtype=dt, device=dev)
                xy_t = self.sum_xy[g].T  # (C, H) view
                for b in range(yg.shape[1]):
                    self.sum_y[g].index_add_(0, yg[:, b], ones)
                    self.sum_yy[g].index_add_(0, yg[:, b], ones)
                    xy_t.index_add_(0, yg[:, b], xg)
        return self

    # -- algebra ------------------------------------------------------------
    def _tensors(self):
        return tuple(getattr(self, f) for f in self._FIELDS)

    def _like(self, *tensors, shift=None) -> ProbeStats:
        out = ProbeStats(*tensors, shift=self.shift if shift is None else shift)
        out._shift_fixed = self._shift_fixed
        return out

    def rebased(self, shift: torch.Tensor) -> ProbeStats:
        """The same statistics with the ``x`` sums taken from ``shift`` instead.

        With ``d = self.shift - shift``: ``sum (x - shift) = S + n d`` and
        ``sum (x - shift)(x - shift)^T = XX + S d^T + d S^T + n d d^T`` per group;
        exact up to rounding when the two shifts are close (as shards' are).
        """
        shift = torch.as_tensor(shift).to(device=self.device, dtype=self.dtype)
        if torch.equal(shift, self.shift):
            return self
        d = self.shift - shift
        n = self.count[:, None]
        sx = self.sum_x + n * d
        sxx = (self.sum_xx + self.sum_x[:, :, None] * d[None, None, :]
               + d[None, :, None] * self.sum_x[:, None, :] + n[:, :, None] * torch.outer(d, d))
        sxy = self.sum_xy + d[None, :, None] * self.sum_y[:, None, :]
        return ProbeStats(self.count, sx, sxx, self.sum_y, sxy, self.sum_yy, shift=shift)

    def __add__(self, other: ProbeStats) -> ProbeStats:
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, ProbeStats):
            return NotImplemented
        for a, b, name in zip(self._tensors(), other._tensors(), self._FIELDS):
            if a.shape != b.shape:
                raise ValueError(
                    f"cannot add ProbeStats of different shapes: {name} {tuple(a.shape)} vs "
                    f"{tuple(b.shape)} (same groups, hidden size and targets needed)"
                )
        if not self._shift_fixed:  # empty: the sum is the other, with its reference point
            other = other.to(self.device, self.dtype)
            return other._like(*(t.clone() for t in other._tensors()))
        other = other.to(self.device, self.dtype).rebased(self.shift)
        return self._like(*(a + b for a, b in zip(self._tensors(), other._tensors())))

    __radd__ = __add__  # so that sum([a, b, c]) works

    def reduced(self, reduce) -> ProbeStats:
        """The statistics of all shards, from this shard's (every shard calls this).

        ``reduce`` sums a tensor over shards (e.g.
        :func:`s3viz.distributed.all_reduce_sum`). The shards' shifts differ, so
        each is first re-based on the global mean of ``x`` (one collective more
        than the statistics themselves); the result is the same on every shard.
        """
        n_all = reduce(self.count.sum().reshape(1).clone())
        total = self.sum_x.sum(0) + self.count.sum() * self.shift
        mean = reduce(total) / n_all.clamp_min(1)
        base = self.rebased(mean)
        # copies: a reduce may sum in place, and these may be this shard's own tensors
        return ProbeStats(*(reduce(t.clone()) for t in base._tensors()), shift=mean)

    def select(self, groups: Sequence[int]) -> ProbeStats:
        """Statistics of the union of ``groups`` (a single group)."""
        idx = torch.as_tensor(list(groups), dtype=torch.long, device=self.device)
        return self._like(*(t.index_select(0, idx).sum(0, keepdim=True) for t in self._tensors()))

    def without(self, groups: Sequence[int]) -> ProbeStats:
        """Statistics of every group except ``groups`` (e.g. the training part of a fold).

        Summed from the remaining groups rather than subtracted from the total,
        so no precision is lost to cancellation.
        """
        drop = {int(g) for g in groups}
        return self.select([g for g in range(self.num_groups) if g not in drop])

    def keep_targets(self, targets: Sequence[int]) -> ProbeStats:
        """The statistics of target columns ``targets`` only (e.g. dropping classes never seen).

        Each target column is an independent regression sharing the ``x``
        statistics, so the result equals accumulating only those columns.
        """
        idx = torch.as_tensor(list(targets), dtype=torch.long, device=self.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_targets):
            raise IndexError(f"targets must be in [0, {self.num_targets}), got {list(targets)}")
        return self._like(self.count, self.sum_x, self.sum_xx, self.sum_y.index_select(1, idx),
                          self.sum_xy.index_select(2, idx), self.sum_yy.index_select(1, idx))

    def total(self) -> ProbeStats:
        """Statistics of all groups together (a single group)."""
        return self.select(range(self.num_groups))

    def to(self, device=None, dtype=None) -> ProbeStats:
        return self._like(*(t.to(device=device, dtype=dtype) for t in self._tensors()),
                          shift=self.shift.to(device=device, dtype=dtype))

    # -- properties ---------------------------------------------------------
    @property
    def num_groups(self) -> int:
        return int(self.count.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.sum_x.shape[-1])

    @property
    def num_targets(self) -> int:
        return int(self.sum_y.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.count.device

    @property
    def dtype(self) -> torch.dtype:
        return self.count.dtype

    def __repr__(self) -> str:
        return (
            f"ProbeStats(num_groups={self.num_groups}, hidden_size={self.hidden_size}, "
            f"num_targets={self.num_targets}, examples={int(self.count.sum())}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # -- fitting ------------------------------------------------------------
    def _moments(self):
        """(mean - shift, scale, ybar, A, B) of all groups: A = standardised covariance,
        B = cross-covariance; the mean relative to ``shift``, as the sums are."""
        st = self.total() if self.num_groups != 1 else self
        n = float(st.count[0])
        if n <= 0:
            raise ValueError("ProbeStats hold no examples")
        mu = st.sum_x[0] / n
        cov = st.sum_xx[0] / n - torch.outer(mu, mu)
        cov = 0.5 * (cov + cov.T)
        ybar = st.sum_y[0] / n
        cxy = st.sum_xy[0] / n - torch.outer(mu, ybar)
        sd = safe_scale(torch.sqrt(torch.diagonal(cov).clamp_min(0)), 1e-10, mean=self.shift + mu)
        a = cov / torch.outer(sd, sd)
        b = cxy / sd[:, None]
        return mu, sd, ybar, a, b

    def _standardized(self):
        """(mean, scale, ybar, A, B) of all groups, the mean in the features' own space."""
        mu, sd, ybar, a, b = self._moments()
        return self.shift + mu, sd, ybar, a, b

    def dev_mse(self, dev: ProbeStats, lambdas: Sequence[float]) -> torch.Tensor:
        """Mean squared error on ``dev`` of ridge fits on these statistics, for each penalty.

        Only statistics are used: ``||Y - Z W - ybar||^2`` expands into terms of
        ``Z^T Z``, ``Z^T Y`` and ``Y^T Y`` of the dev examples standardised with the
        training mean and scale. One eigendecomposition serves the whole grid.

        Args:
            dev: statistics of the held-out examples (all their groups are pooled).
            lambdas: the penalties to compare (as in :meth:`solve`).

        Returns:
            ``(len(lambdas), num_targets)`` per-column mean squared error (float32:
            it only ranks the penalties; the statistics themselves stay float64).
        """
        mu, sd, ybar, a, b = self._moments()
        d = dev.total() if dev.num_groups != 1 else dev
        d = d.to(self.device, self.dtype).rebased(self.shift)  # the same reference point
        n = float(d.count[0])
        sx, sxx, sy, sxy, syy = d.sum_x[0], d.sum_xx[0], d.sum_y[0], d.sum_xy[0], d.sum_yy[0]
        ztz = sxx - torch.outer(sx, mu) - torch.outer(mu, sx) + n * torch.outer(mu, mu)
        ztz = ztz / torch.outer(sd, sd)
        sz = (sx - n * mu) / sd
        zty = (sxy - torch.outer(mu, sy)) / sd[:, None]
        ztyc = zty - torch.outer(sz, ybar)
        yyc = syy - 2 * ybar * sy + n * ybar * ybar
        # the statistics are float64; ranking penalties is safe in float32 (twice as fast)
        a, b, ztz, ztyc, yyc = (t.float() for t in (a, b, ztz, ztyc, yyc))
        evals, evecs = torch.linalg.eigh(a)
        evals = evals.clamp_min(0)
        p = evecs.T @ b  # (H, C)
        lam = torch.as_tensor(list(lambdas), dtype=a.dtype, device=a.device)
        ws = evecs @ (p[None] / (evals[None, :, None] + lam[:, None, None]))  # (L, H, C)
        cross = (ws * ztyc[None]).sum(1)
        quad = (ws * (ztz @ ws)).sum(1)
        return (yyc[None] - 2 * cross + quad) / max(n, 1.0)

    def solve(self, lam: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit the ridge probe on all groups.

        Minimises ``mean ||y - W^T x - b||^2 + lam * ||W_std||^2`` where ``W_std``
        are the weights on standardised features (zero mean, unit variance; the
        intercept is not penalised).

        Args:
            lam: penalty relative to the mean eigenvalue (1) of the standardised
                covariance.

        Returns:
            ``weight`` ``(hidden_size, num_targets)`` and ``bias`` ``(num_targets,)``
            in the original feature space: scores are ``x @ weight + bias``.
        """
        mu, sd, ybar, a, b = self._standardized()
        ws = _ridge_solve(a, b, float(lam))
        w = ws / sd[:, None]
        return w, ybar - mu @ w


def _ridge_solve(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    m = a + lam * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    evals, evecs = torch.linalg.eigh(a)
    return evecs @ ((evecs.T @ b) / (evals.clamp_min(0) + lam)[:, None])


# ---------------------------------------------------------------------------
# folds, targets, controls
# ---------------------------------------------------------------------------


def _assign_folds(groups: np.ndarray, weights: np.ndarray, folds: int, seed: int,
                  strata: np.ndarray | None = None, what: str = "group") -> np.ndarray:
    """Fold of each item so that items of one group share a fold.

    Without ``strata``: groups in decreasing weight (ties random) go to the
    lightest fold. With ``strata`` (one value per item, constant within a
    group): groups sorted by stratum (random within) are dealt round-robin.
    """
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if len(uniq) < folds:
        raise ValueError(
            f"only {len(uniq)} distinct {what}s to split into folds={folds}: lower `folds` "
            f"(at least 2) or use split_by='utterance'"
        )
    rng = np.random.default_rng(seed)
    gw = np.bincount(inv, weights=np.asarray(weights, dtype=np.float64), minlength=len(uniq))
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    if strata is not None:
        gs = np.empty(len(uniq), dtype=object)
        gs[inv] = np.asarray(strata).astype(str)
        order = np.lexsort((rng.random(len(uniq)), gs.astype(str)))
        fold_of_group[order] = (np.arange(len(uniq)) + rng.integers(folds)) % folds
    else:
        order = np.lexsort((rng.random(len(uniq)), -gw))
        load = np.zeros(folds)
        perm = rng.permutation(folds)
        for g in order:
            k = perm[np.argmin(load[perm])]
            fold_of_group[g] = k
            load[k] += gw[g]
    return fold_of_group[inv]


def _positions(store, utterances) -> np.ndarray:
    return _selection(utterances, len(store))


def _store_arg(sel: np.ndarray, n: int):
    return None if len(sel) == n else sel.tolist()


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        return bool(pd.isna(v)) if np.ndim(v) == 0 else False
    except (TypeError, ValueError):
        return False


def _split_groups(store, sel: np.ndarray, split_by: str) -> np.ndarray:
    if split_by == "utterance":  # a store of segments groups them by their utterance
        return np.asarray(getattr(store, "_group_ids", store.ids), dtype=object)[sel].astype(str)
    ids = np.asarray(store.ids, dtype=object)[sel]
    labels = store.labels
    if "speaker" not in labels.columns:
        raise ValueError(
            "split_by='speaker' needs a 'speaker' column in store.labels; there is none. "
            "Use split_by='utterance'"
        )
    spk = labels["speaker"].to_numpy()[sel]
    bad = [ids[i] for i, v in enumerate(spk) if _is_missing(v) or str(v) == ""]
    if bad:
        raise ValueError(
            f"split_by='speaker' but {len(bad)} utterance(s) have no speaker (e.g. {bad[:5]}); "
            "fill store.labels['speaker'], select the others with `utterances=`, "
            "or use split_by='utterance'"
        )
    return np.asarray([str(v) for v in spk], dtype=object)


def probe_folds(store, *, folds: int = 5, split_by: str = "speaker", seed: int = 0,
                utterances=None, weights: np.ndarray | None = None,
                strata: np.ndarray | None = None) -> pd.DataFrame:
    """The grouped K-fold split that :func:`probe_layers` uses.

    With the defaults this is exactly the split of frame-level probes. For
    utterance-level targets with ``split_by="utterance"``, :func:`probe_layers`
    stratifies by the target class and weighs utterances equally: pass
    ``weights=np.ones(n)`` and ``strata=<class of each utterance>`` to get it.

    Args:
        store: a :class:`~s3viz.extract.LayerStore`.
        folds: number of folds (>= 2).
        split_by: ``"speaker"`` (no speaker in two folds) or ``"utterance"``.
        seed: seed of the assignment.
        utterances: utterance positions to split (default all).
        weights: ``(len(utterances),)`` weight of each utterance to balance the
            folds by (default: frames of stored layer 0).
        strata: ``(len(utterances),)`` class of each utterance: groups are then
            dealt round-robin by class instead of balanced by weight.

    Returns:
        DataFrame with one row per selected utterance: ``utterance`` (position),
        ``id``, ``group`` (speaker or id) and ``fold``.
    """
    folds = _check_folds(folds)
    if split_by not in SPLITS:
        raise ValueError(f"split_by must be one of {SPLITS}, got {split_by!r}")
    sel = _positions(store, utterances)
    groups = _split_groups(store, sel, split_by)
    if weights is None:
        weights = np.asarray(store.lengths(0))[sel]
    fold = _assign_folds(groups, weights, folds, seed, strata=strata, what=split_by)
    return pd.DataFrame({
        "utterance": sel, "id": np.asarray(store.ids, dtype=object)[sel],
        "group": groups, "fold": fold,
    })


def control_labels(types: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control labels: each type gets a class drawn from ``y``'s distribution.

    Args:
        types: ``(num_examples,)`` type of each example (any hashable values).
        y: ``(num_examples,)`` int class of each example in ``[0, num_classes)``.
        num_classes: number of classes.
        seed: seed of the draw.

    Returns:
        ``(num_examples,)`` int64 control class; equal types get equal classes.
    """
    y = np.asarray(y, dtype=np.int64)
    types = np.asarray(types, dtype=object).astype(str)
    uniq, inv = np.unique(types, return_inverse=True)
    p = np.bincount(y, minlength=num_classes).astype(np.float64)
    p /= p.sum()
    rng = np.random.default_rng([int(seed), 4611])
    return rng.choice(num_classes, size=len(uniq), p=p)[inv].astype(np.int64)


def _check_folds(folds) -> int:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    return int(folds)


def _phone_columns(store) -> list[str]:
    cols: list[str] = []
    for ph in getattr(store, "phones", None) or []:
        if ph is not None:
            for c in ph.columns:
                if c not in cols and c not in _ALIGN_COLUMNS:
                    cols.append(c)
    return cols


def _resolve_level(store, target: str, level: str | None) -> str:
    label_cols = [c for c in store.labels.columns if c != "id"]
    phone_cols = _phone_columns(store)
    if level is None:
        if target in label_cols:
            return "utterance"
        if target in phone_cols:
            return "frame"
    elif level == "utterance" and target in label_cols or level == "frame" and target in phone_cols:
        return level
    elif level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None (guess), got {level!r}")
    raise KeyError(
        f"unknown target {target!r} for level={level!r}: utterance-level targets (columns of "
        f"store.labels) are {label_cols}; frame-level targets (columns of the phone "
        f"alignments) are {phone_cols or 'none (the store has no alignments)'}"
    )


class _Task:
    """Everything about one target that does not depend on the layer."""

    def __init__(self, store, target, level, sel, folds, split_by, seed, control, control_by):
        self.target, self.level, self.sel = target, level, sel
        self.folds, self.split_by, self.seed = folds, split_by, seed
        self.control, self.control_by = control, control_by
        self.n_utt = len(store)
        self.ids = np.asarray(store.ids, dtype=object)[sel]
        self.groups = _split_groups(store, sel, split_by)
        if level == "utterance":
            self._init_utterance(store)
        else:
            self._init_frame(store)

    # -- utterance level ------------------------------------------------------
    def _init_utterance(self, store):
        vals = store.labels[self.target].to_numpy()[self.sel]
        bad = [self.ids[i] for i, v in enumerate(vals) if _is_missing(v) or str(v) == ""]
        if bad:
            raise ValueError(
                f"target {self.target!r} is missing (None/NaN/'') for {len(bad)} utterance(s), "
                f"e.g. {bad[:5]}; fill store.labels[{self.target!r}] or probe only the labelled "
                "ones with `utterances=`"
            )
        keys = np.asarray([str(v) for v in vals], dtype=object)
        self.classes, y = np.unique(keys.astype(str), return_inverse=True)
        self._check_classes(len(keys))
        self.y = y.astype(np.int64)
        if self.split_by == "speaker":
            spk_of_class = pd.Series(self.groups).groupby(self.y).nunique()
            cls_of_spk = pd.Series(self.y).groupby(self.groups).nunique()
            if (spk_of_class == 1).all() and (cls_of_spk == 1).all():
                raise ValueError(
                    f"target {self.target!r} identifies the speaker one-to-one, so with "
                    "split_by='speaker' no test class is ever seen in training; use "
                    "split_by='utterance' to probe speaker identity"
                )
        # utterances are stratified by class; segments share their utterance's fold
        strata = (self.y if self.split_by == "utterance"
                  and getattr(store, "_group_ids", None) is None else None)
        self.utt_fold = _assign_folds(self.groups, np.ones(len(self.sel)), self.folds, self.seed,
                                      strata=strata, what=self.split_by)
        if self.control:
            by = self.control_by
            if by is None:
                if self.target == "text" or "text" not in store.labels.columns:
                    raise ValueError(
                        "control=True at utterance level needs control_by=<column of "
                        "store.labels> giving the type of each utterance (default 'text', "
                        f"not usable for target {self.target!r})"
                    )
                by = "text"
            if by not in store.labels.columns:
                raise KeyError(f"control_by={by!r} is not a column of store.labels: "
                               f"{list(store.labels.columns)}")
            types = store.labels[by].to_numpy()[self.sel]
            self.y_ctrl = control_labels(types, self.y, len(self.classes), self.seed)

    # -- frame level ----------------------------------------------------------
    def _init_frame(self, store):
        phones = store.phones
        missing = [self.ids[i] for i, u in enumerate(self.sel) if phones[u] is None]
        if missing:
            raise ValueError(
                f"frame-level target {self.target!r} needs phone alignments, but {len(missing)} "
                f"utterance(s) have none (e.g. {missing[:5]}); probe the aligned ones with "
                "`utterances=[i for i, p in enumerate(store.phones) if p is not None]`"
            )
        lacking = [self.ids[i] for i, u in enumerate(self.sel)
                   if self.target not in phones[u].columns]
        if lacking:
            raise ValueError(
                f"the alignments of {len(lacking)} utterance(s) (e.g. {lacking[:5]}) have no "
                f"column {self.target!r}"
            )
        self._labels: dict[tuple, np.ndarray] = {}
        self._keys: dict[int, tuple] = {}
        self.store = store

    def frame_key(self, layer: int) -> tuple:
        """Layers with equal key have identical frame labels."""
        if layer not in self._keys:
            lengths = np.asarray(self.store.lengths(layer))[self.sel]
            rf = self.store.receptive_fields[layer]
            self._keys[layer] = (int(self.store.downsample_rates[layer]), int(rf),
                                 hash(lengths.tobytes()))
        return self._keys[layer]

    def frame_targets(self, layer: int):
        """(y (sum_T,) int64 with -1 = unlabelled, y_ctrl or None, fold (sum_T,), utt (sum_T,))."""
        key = self.frame_key(layer)
        if key not in self._labels:
            store = self.store
            lab = np.asarray(store.frame_labels(layer, column=self.target,
                                                utterances=_store_arg(self.sel, self.n_utt)),
                             dtype=object)
            lengths = np.asarray(store.lengths(layer))[self.sel].astype(np.int64)
            if lab.shape[0] != lengths.sum():
                raise RuntimeError(
                    f"store.frame_labels({layer}) gave {lab.shape[0]} labels for "
                    f"{lengths.sum()} frames"
                )
            utt = np.repeat(np.arange(len(self.sel)), lengths)
            lab_s = np.asarray([_label_str(v) for v in lab], dtype=object)
            labelled = lab_s != ""
            self._labels[key] = {"raw": lab_s, "labelled": labelled, "utt": utt, "lengths": lengths}
        return self._labels[key]

    def set_frame_classes(self, layers: Sequence[int]):
        """Fix the class list from the labels of all probed layers, and the folds."""
        for layer in layers:
            self.frame_targets(layer)
        all_labels = np.concatenate([d["raw"][d["labelled"]] for d in self._labels.values()])
        self.classes = np.unique(all_labels.astype(str))
        self._check_classes(len(all_labels))
        utt_w = np.asarray(self.store.lengths(0))[self.sel]  # as probe_folds does
        self.utt_fold = _assign_folds(self.groups, utt_w, self.folds, self.seed,
                                      what=self.split_by)
        index = {c: i for i, c in enumerate(self.classes)}
        for (rate, rf, _), d in self._labels.items():
            y = np.full(d["raw"].shape[0], -1, dtype=np.int64)
            y[d["labelled"]] = [index[v] for v in d["raw"][d["labelled"]]]
            d["y"] = y
            d["fold"] = self.utt_fold[d["utt"]]
            if self.control:
                d["y_ctrl"] = self._frame_control(d, rate, rf)

    def _frame_control(self, d, rate, rf) -> np.ndarray:
        by = "context" if self.control_by is None else self.control_by
        types = np.empty(d["raw"].shape[0], dtype=object)
        offs = np.concatenate([[0], np.cumsum(d["lengths"])])
        for i, u in enumerate(self.sel):
            ph = self.store.phones[u]
            if by == "context":
                ph = ph.sort_values("start", kind="stable")
                lab = [_label_str(v) for v in ph[self.target].tolist()]
                ctx = [f"{a}|{b}|{c}" for a, b, c in zip(["<s>"] + lab[:-1], lab, lab[1:] + ["</s>"])]
                ph = pd.DataFrame({"start": ph["start"].to_numpy(), "end": ph["end"].to_numpy(),
                                   "_type": ctx})
                col = "_type"
            else:
                if by not in ph.columns:
                    raise KeyError(f"control_by={by!r} is not a column of the alignment of "
                                   f"utterance {self.ids[i]!r}: {list(ph.columns)}")
                col = by
            types[offs[i]:offs[i + 1]] = _align_frame_labels(
                ph, int(d["lengths"][i]), rate, column=col, receptive_field_samples=rf)
        if by == "context":  # the middle of the context must be the frame's own label
            mid = np.asarray([t.split("|")[1] if t else "" for t in types], dtype=object)
            if not np.array_equal(mid[d["labelled"]], d["raw"][d["labelled"]]):
                raise RuntimeError("control types disagree with store.frame_labels "
                                   "(alignment convention mismatch)")
        y_ctrl = np.full(d["raw"].shape[0], -1, dtype=np.int64)
        m = d["labelled"]
        y_ctrl[m] = control_labels(types[m], d["y"][m], len(self.classes), self.seed)
        return y_ctrl

    def _check_classes(self, n_examples: int):
        if len(self.classes) < 2:
            raise ValueError(
                f"target {self.target!r} has a single class ({self.classes[0]!r}) among the "
                "probed examples: nothing to classify; choose another target or more utterances"
            )
        if len(self.classes) == n_examples:
            raise ValueError(
                f"every example of target {self.target!r} has its own class ({n_examples} "
                "classes): a classification probe cannot generalise (is it an id or a "
                "continuous value?)"
            )


def _label_str(v) -> str:
    if _is_missing(v):
        return ""
    return str(v)


# ---------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------


def _scores(conf: np.ndarray, train_counts: np.ndarray) -> dict:
    """Scores from per-fold confusion matrices ``(folds, C, C)`` (true, pred)."""
    fold_n = conf.sum((1, 2))
    fold_acc = np.trace(conf, axis1=1, axis2=2) / np.maximum(fold_n, 1)
    fold_acc = np.where(fold_n > 0, fold_acc, np.nan)
    pooled = conf.sum(0)
    n = pooled.sum()
    tp = np.diag(pooled).astype(np.float64)
    fp = pooled.sum(0) - tp
    fn = pooled.sum(1) - tp
    present = (tp + fp + fn) > 0
    f1 = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    # chance: always predict the majority class of the fold's training part
    test_counts = conf.sum(2)  # (folds, C)
    majority = train_counts.argmax(1)
    chance_hits = test_counts[np.arange(len(majority)), majority].sum()
    used = fold_n > 0
    return {
        "accuracy": float(tp.sum() / max(n, 1)),
        "accuracy_std": float(np.std(fold_acc[used])) if used.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "chance": float(chance_hits / max(n, 1)),
        "fold_accuracy": [float(v) for v in fold_acc],
    }


def _confusion(y_true: torch.Tensor, y_pred: torch.Tensor, c: int) -> np.ndarray:
    return torch.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c).cpu().numpy()


# ---------------------------------------------------------------------------
# ridge
# ---------------------------------------------------------------------------


def _dev_fold(k: int, folds: int, sub: int) -> tuple[list[int], list[int]]:
    """(groups of test fold k, groups of its dev part) in the sub-fold numbering."""
    test = [k * sub + s for s in range(sub)]
    dev = [((k + 1) % folds) * sub]
    return test, dev


def _sub_folds(task: _Task, sub: int) -> np.ndarray:
    """Sub-fold of each utterance: fold * sub + part. With 2 folds each fold is cut in two
    (whole groups) so that a dev part exists outside the test fold and the training part."""
    if sub == 1:
        return task.utt_fold.copy()
    rng = np.random.default_rng([task.seed, 77])
    g_uniq, g_inv = np.unique(task.groups.astype(str), return_inverse=True)
    g_sub = np.zeros(len(g_uniq), dtype=np.int64)
    for f in range(task.folds):  # alternate parts within each fold so both are non-empty
        members = np.unique(g_inv[task.utt_fold == f])
        g_sub[rng.permutation(members)] = np.arange(len(members)) % sub
    return task.utt_fold * sub + g_sub[g_inv]


def _ridge_fit_folds(stats: ProbeStats, folds: int, sub: int, blocks: list[slice],
                     lambdas: Sequence[float]):
    """Per fold: (weight (H, C_all), bias (C_all,), chosen lambdas per block)."""
    models = []
    for k in range(folds):
        test, dev = _dev_fold(k, folds, sub)
        if len(lambdas) > 1:
            mse = stats.without(test + dev).dev_mse(stats.select(dev), lambdas)  # (nl, C)
        else:
            mse = torch.zeros(1, stats.num_targets)
        train = stats.without(test)
        mu, sd, ybar, a, b = train._standardized()
        ws = torch.empty_like(b)
        chosen = [lambdas[int(torch.argmin(mse[:, blk].sum(1)))] for blk in blocks]
        for lam in set(chosen):  # one factorisation per distinct penalty
            cols = torch.cat([torch.arange(blk.start, blk.stop)
                              for blk, lb in zip(blocks, chosen) if lb == lam]).to(b.device)
            ws[:, cols] = _ridge_solve(a, b[:, cols], lam)
        w = ws / sd[:, None]
        models.append((w, ybar - mu @ w, chosen))
    return models


def _shard_frames(task: _Task, d: dict, shard) -> tuple[list[int] | None, np.ndarray | None]:
    """(utterances of the shard store to stream, their frames' rows in the task's frame table)."""
    if shard is None:
        return _store_arg(task.sel, task.n_utt), None
    shard_pos, task_pos = shard
    offs = np.concatenate([[0], np.cumsum(d["lengths"])])
    rows = [np.arange(offs[t], offs[t + 1]) for t in task_pos]
    return list(shard_pos), (np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))


def _ridge_layer_frame(task: _Task, store, layer: int, blocks, c: int, lambdas, device,
                       chunk_frames: int, stats_dtype, shard=None, reduce=None):
    d = task.frame_targets(layer)
    folds = task.folds
    sub = 2 if folds == 2 else 1
    frame_sub = _sub_folds(task, sub)[d["utt"]]
    y_all = d["y"]
    y_ctrl = d.get("y_ctrl") if task.control else None
    stats = ProbeStats.zeros(folds * sub, store.hidden_sizes[layer], len(blocks) * c,
                             dtype=stats_dtype, device=device)
    arg, rows = _shard_frames(task, d, shard)
    if rows is not None:  # a shard: only its frames, in the shard store's order
        y_all, frame_sub = y_all[rows], frame_sub[rows]
        y_ctrl = y_ctrl[rows] if y_ctrl is not None else None

    def _chunks():
        pos = 0
        if arg is not None and not arg:
            return
        for x, _ in store.iter_layer(layer, utterances=arg, max_frames=chunk_frames,
                                     dtype=read_dtype(store)):
            n = x.shape[0]
            sl = slice(pos, pos + n)
            pos += n
            m = y_all[sl] >= 0
            if not m.any():
                continue
            yy = [y_all[sl][m]]
            if y_ctrl is not None:
                yy.append(y_ctrl[sl][m] + c)
            mt = torch.from_numpy(m)
            yield (x[mt].to(device), torch.from_numpy(np.stack(yy, 1)).to(device),
                   torch.from_numpy(frame_sub[sl][m]).to(device))
        if pos != y_all.shape[0]:
            raise RuntimeError(f"store.iter_layer({layer}) gave {pos} frames, expected "
                               f"{y_all.shape[0]}")

    for x, yy, g in _chunks():
        stats.update(x, yy, g)
    if reduce is not None:  # sum the statistics of all shards
        stats = stats.reduced(reduce)
    models = _ridge_fit_folds(stats, folds, sub, blocks, lambdas)
    ws = torch.stack([m[0] for m in models])  # (folds, H, C_all)
    bs = torch.stack([m[1] for m in models])
    conf = np.zeros((len(blocks), folds, c, c), dtype=np.int64)
    for x, yy, g in _chunks():
        fold = torch.div(g, sub, rounding_mode="floor")
        for k in torch.unique(fold).tolist():
            r = fold == k
            s = x[r].to(stats_dtype) @ ws[k] + bs[k]
            for bi, blk in enumerate(blocks):
                pred = s[:, blk].argmax(1)
                conf[bi, k] += _confusion(yy[r, bi] - bi * c, pred, c)
    if reduce is not None:
        conf = reduce(torch.from_numpy(conf)).cpu().numpy()
    counts, n_train = _train_counts(stats, folds, sub)
    lam = np.mean([m[2] for m in models], axis=0)
    return conf, counts, n_train, lam


def _train_counts(stats: ProbeStats, folds: int, sub: int):
    """Class counts ``(folds, C_all)`` and examples ``(folds,)`` of each fold's training part."""
    test = stats.sum_y.reshape(folds, sub, -1).sum(1).cpu().numpy()
    n_test = stats.count.reshape(folds, sub).sum(1).cpu().numpy()
    return test.sum(0, keepdims=True) - test, n_test.sum() - n_test


def _dual_standardize(x: torch.Tensor, idx: torch.Tensor):
    """Mean, scale (as :meth:`ProbeStats._standardized`) and standardised rows ``idx``."""
    xs = x[idx]
    mu = xs.mean(0)
    sd = safe_scale(xs.std(0, unbiased=False), 1e-10, mean=mu)
    return mu, sd, (xs - mu) / sd


def _ridge_fit_folds_dual(x: torch.Tensor, yoh: torch.Tensor, g: torch.Tensor, folds: int,
                          sub: int, blocks: list[slice], lambdas: Sequence[float]):
    """:func:`_ridge_fit_folds` for ``n <= hidden_size`` examples held in memory.

    The same objective, solved in the dual: ``W = Z^T (Z Z^T + n lam I)^-1 Yc`` with
    the standardised training examples ``Z`` (an ``n x n`` eigendecomposition
    instead of ``hidden x hidden``). Returns the same primal ``(weight, bias, lambdas)``.

    Args:
        x: ``(n, hidden_size)`` float64; yoh: ``(n, C_all)`` one-hot (per block);
        g: ``(n,)`` sub-fold of each example.
    """
    models = []
    lam = torch.as_tensor(list(lambdas), dtype=x.dtype, device=x.device)
    for k in range(folds):
        test, dev = _dev_fold(k, folds, sub)
        in_test = torch.isin(g, torch.as_tensor(test, device=g.device))
        in_dev = torch.isin(g, torch.as_tensor(dev, device=g.device))
        chosen = [lambdas[0]] * len(blocks)
        if len(lambdas) > 1:
            td = torch.nonzero(~in_test & ~in_dev).squeeze(1)
            dv = torch.nonzero(in_dev).squeeze(1)
            mu, sd, z = _dual_standardize(x, td)
            ybar = yoh[td].mean(0)
            evals, u = torch.linalg.eigh(z @ z.T)
            p = u.T @ (yoh[td] - ybar)  # (n, C)
            kd = ((x[dv] - mu) / sd) @ z.T @ u  # (n_dev, n)
            n = td.numel()
            pred = ybar + kd[None] @ (p[None] / (evals.clamp_min(0)[None, :, None]
                                                  + n * lam[:, None, None]))
            mse = ((pred - yoh[dv][None]) ** 2).mean(1)  # (n_lambda, C)
            chosen = [lambdas[int(torch.argmin(mse[:, blk].sum(1)))] for blk in blocks]
        tr = torch.nonzero(~in_test).squeeze(1)
        mu, sd, z = _dual_standardize(x, tr)
        ybar = yoh[tr].mean(0)
        gram = z @ z.T
        eye = torch.eye(tr.numel(), dtype=x.dtype, device=x.device)
        ws = torch.empty(x.shape[1], yoh.shape[1], dtype=x.dtype, device=x.device)
        for blk, lam_b in zip(blocks, chosen):
            alpha = torch.linalg.solve(gram + tr.numel() * lam_b * eye, yoh[tr][:, blk] - ybar[blk])
            ws[:, blk] = z.T @ alpha
        w = ws / sd[:, None]
        models.append((w, ybar - mu @ w, chosen))
    return models


def _ridge_layer_utterance(task: _Task, x: torch.Tensor, blocks, c: int, lambdas, stats_dtype):
    folds = task.folds
    sub = 2 if folds == 2 else 1
    utt_sub = _sub_folds(task, sub)
    yy = [task.y]
    if task.control:
        yy.append(task.y_ctrl + c)
    y = torch.from_numpy(np.stack(yy, 1)).to(x.device)
    g = torch.from_numpy(utt_sub).to(x.device)
    stats = ProbeStats.zeros(folds * sub, x.shape[1], len(blocks) * c, dtype=stats_dtype,
                             device=x.device).update(x, y, g)
    if x.shape[0] <= x.shape[1]:  # fewer utterances than dimensions: the n x n dual form
        yoh = torch.zeros(x.shape[0], len(blocks) * c, dtype=stats_dtype, device=x.device)
        for bi in range(len(blocks)):
            yoh[torch.arange(x.shape[0], device=x.device), y[:, bi]] = 1.0
        models = _ridge_fit_folds_dual(x.to(stats_dtype), yoh, g, folds, sub, blocks, lambdas)
    else:
        models = _ridge_fit_folds(stats, folds, sub, blocks, lambdas)
    conf = np.zeros((len(blocks), folds, c, c), dtype=np.int64)
    fold = torch.from_numpy(task.utt_fold).to(x.device)
    for k, (w, b, _) in enumerate(models):
        r = fold == k
        s = x[r].to(stats_dtype) @ w + b
        for bi, blk in enumerate(blocks):
            conf[bi, k] += _confusion(y[r, bi] - bi * c, s[:, blk].argmax(1), c)
    counts, n_train = _train_counts(stats, folds, sub)
    lam = np.mean([m[2] for m in models], axis=0)
    return conf, counts, n_train, lam


# ---------------------------------------------------------------------------
# logistic (batched over layers)
# ---------------------------------------------------------------------------


def _train_scaling(x: torch.Tensor, train: torch.Tensor, reduce=None):
    """Per layer mean and scale (population std, 1 for constant features) of rows ``train``
    (of the rows of all shards, merged with ``reduce``)."""
    mom = Moments((x.shape[0], x.shape[2]), device=x.device, axis=1)
    for i in range(0, int(train.numel()), 8192):
        mom.update(x[:, train[i:i + 8192]])
    if reduce is not None:
        mom = mom.reduced(reduce)
    return mom.mean.float(), safe_scale(mom.var.sqrt()).float()


def _fit_logistic_full(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, c: int, *,
                       weight_decay: float | None, max_iter: int, chunk: int = 8192,
                       tolerance_grad: float = 1e-4, history_size: int = 20, reduce=None):
    """All layers' (and heads') penalised softmax regressions to their optimum, full batch.

    Minimises, per layer and head, ``mean NLL + weight_decay / 2 * ||W||^2`` (bias not
    penalised; ``weight_decay=None`` is ``1 / n_train``: scikit-learn's ``C=1``) with
    L-BFGS on the sum over layers and heads (independent problems), stopping when the
    largest gradient entry is under ``tolerance_grad`` (scikit-learn's default ``tol``
    on the same mean-loss scale). Returns as :func:`_fit_logistic`.

    With ``reduce`` (a sum over shards; ``train`` indexes this shard's rows) the
    scaling, the loss and its gradients are summed over shards before every step,
    so all shards take the same steps to the optimum of all their examples.
    """
    num_l, _, h = x.shape
    k = y.shape[0]
    n_train = int(train.numel())
    if reduce is not None:
        n_train = int(reduce(torch.tensor([n_train], dtype=torch.float64))[0])
    wd = 1.0 / max(n_train, 1) if weight_decay is None else float(weight_decay)
    mean, scale = _train_scaling(x, train, reduce)
    w = torch.zeros(num_l, h, k * c, device=x.device, requires_grad=True)
    b = torch.zeros(num_l, k * c, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=int(max_iter), history_size=history_size,
                            tolerance_grad=tolerance_grad, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    n_local = int(train.numel())

    def closure():
        opt.zero_grad()
        w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for i in range(0, n_local, chunk):
            idx = train[i:i + chunk]
            z = torch.baddbmm(b[:, None], (x[:, idx] - mean[:, None]) / scale[:, None], w)
            logp = torch.log_softmax(z.view(num_l, -1, k, c), -1)
            t = y[:, idx].T  # (B, K)
            nll = -logp.gather(-1, t[None, :, :, None].expand(num_l, -1, -1, 1)).sum()
            (nll / n_train).backward()
            total += nll.detach().double() / n_train
        if reduce is not None:  # every shard's data term, then the (shared) penalty
            reduce(w.grad), reduce(b.grad), reduce(total)
        pen = 0.5 * wd * (w * w).sum()
        pen.backward()
        return float(total) + float(pen.detach())

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mean, scale


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, dev: torch.Tensor,
                  c: int, *, seed: int, lr: float, batch_size: int, max_epochs: int,
                  patience: int, weight_decay: float | None, min_steps: int = 200):
    """Train softmax classifiers of all layers (and heads) at once.

    Args:
        x: ``(num_layers, num_examples, hidden_size)`` float32 features on the device.
        y: ``(num_heads, num_examples)`` long targets (head 0 the target, 1 the control).
        train, dev: long indices of the training and early-stopping examples.

    Returns:
        ``(weight (L, H, K*C), bias (L, K*C), mean (L, H), scale (L, H))``.
    """
    num_l, _, h = x.shape
    k = y.shape[0]
    device = x.device
    n_train = int(train.numel())
    wd = 1.0 / n_train if weight_decay is None else float(weight_decay)
    mean, scale = _train_scaling(x, train)  # standardisation from the training part
    w = torch.zeros(num_l, h, k * c, device=device)
    b = torch.zeros(num_l, k * c, device=device)
    best_w, best_b = w.clone(), b.clone()
    best = torch.full((num_l, k), float("inf"), device=device)
    bad = torch.zeros(num_l, k, dtype=torch.long, device=device)
    # Adam state (written out: the gradient of softmax cross-entropy is analytic)
    mw, vw, mb, vb = (torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(b),
                      torch.zeros_like(b))
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    gen = torch.Generator().manual_seed(int(seed))
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    check_every = max(1, math.ceil(20 / steps_per_epoch))  # >= ~20 steps between checks
    max_epochs = max(int(max_epochs), math.ceil(min_steps / steps_per_epoch))
    ar = torch.arange(k, device=device)

    def _standardized(idx):
        return (x[:, idx] - mean[:, None]) / scale[:, None]  # (L, B, H)

    def _nll(z, t):  # z (L, B, K, C), t (B, K) -> (L, K) mean negative log-likelihood
        logp = torch.log_softmax(z, -1)
        return -logp.gather(-1, t[None, :, :, None].expand(num_l, -1, -1, 1)).squeeze(-1).mean(1)

    for epoch in range(max_epochs):
        perm = train[torch.randperm(n_train, generator=gen).to(device)]
        for i in range(0, n_train, batch_size):
            idx = perm[i:i + batch_size]
            xb = _standardized(idx)
            z = torch.baddbmm(b[:, None], xb, w).view(num_l, -1, k, c)
            g = torch.softmax(z, -1)
            t = y[:, idx].T  # (B, K)
            g[:, torch.arange(t.shape[0], device=device)[:, None], ar[None, :], t] -= 1.0
            g = g.view(num_l, -1, k * c) / idx.numel()
            gw = torch.bmm(xb.transpose(1, 2), g).add_(w, alpha=wd)
            gb = g.sum(1)
            step += 1
            c1, c2 = 1 - beta1 ** step, 1 - beta2 ** step
            for p, m, v, gr in ((w, mw, vw, gw), (b, mb, vb, gb)):
                m.mul_(beta1).add_(gr, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(gr, gr, value=1 - beta2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(eps), value=-lr / c1)
        if (epoch + 1) % check_every and epoch + 1 < max_epochs:
            continue
        dl = torch.zeros(num_l, k, device=device)
        for i in range(0, int(dev.numel()), 8192):
            idx = dev[i:i + 8192]
            z = torch.baddbmm(b[:, None], _standardized(idx), w).view(num_l, -1, k, c)
            dl += _nll(z, y[:, idx].T) * idx.numel()
        dl /= max(int(dev.numel()), 1)
        better = dl < best - 1e-4 * best.abs().clamp_max(1e6)
        best = torch.where(better, dl, best)
        bad = torch.where(better, torch.zeros_like(bad), bad + 1)
        cols = better[:, None, :, None].expand(num_l, h, k, c).reshape(num_l, h, k * c)
        best_w = torch.where(cols, w, best_w)
        best_b = torch.where(cols[:, 0], b, best_b)
        if bool((bad >= patience).all()):
            break
    return best_w, best_b, mean, scale


def _logistic_group(task: _Task, xs: torch.Tensor, y_np: np.ndarray, fold_np: np.ndarray,
                    group_np: np.ndarray, c: int, opts: dict, reduce=None):
    """Cross-validated logistic probes of a group of layers sharing their examples.

    Args:
        xs: ``(num_layers, num_examples, hidden_size)`` features on the device.
        y_np: ``(num_heads, num_examples)`` targets; fold_np, group_np: ``(num_examples,)``.
        reduce: sharded (``dev_fraction=0`` only): sums a tensor over shards; the
            returned confusions and counts are then those of all shards.
    """
    device = xs.device
    folds = task.folds
    k = y_np.shape[0]
    y = torch.from_numpy(y_np).to(device)
    conf = np.zeros((xs.shape[0], k, folds, c, c), dtype=np.int64)
    counts = np.zeros((k, folds, c))
    n_fold = np.zeros(folds)
    for f in range(folds):
        test_m = fold_np == f
        te = torch.from_numpy(np.flatnonzero(test_m)).to(device)
        if opts["dev_fraction"] == 0:  # no early stopping: the penalised optimum
            tr = torch.from_numpy(np.flatnonzero(~test_m)).to(device)
            w, b, mean, scale = _fit_logistic_full(
                xs, y, tr, c, weight_decay=opts["weight_decay"],
                max_iter=25 * opts["max_epochs"], reduce=reduce)
        else:
            train_groups = np.unique(group_np[~test_m])
            rng = np.random.default_rng([task.seed, 1000 + f])
            n_dev = min(max(1, round(opts["dev_fraction"] * len(train_groups))),
                        len(train_groups) - 1)
            dev_groups = rng.choice(train_groups, size=n_dev, replace=False)
            dev_m = np.isin(group_np, dev_groups) & ~test_m
            fit_m = ~test_m & ~dev_m
            tr = torch.from_numpy(np.flatnonzero(fit_m)).to(device)
            dv = torch.from_numpy(np.flatnonzero(dev_m)).to(device)
            w, b, mean, scale = _fit_logistic(
                xs, y, tr, dv, c, seed=task.seed * 7919 + f, lr=opts["lr"],
                batch_size=opts["batch_size"], max_epochs=opts["max_epochs"],
                patience=opts["patience"], weight_decay=opts["weight_decay"])
        with torch.no_grad():
            for i in range(0, int(te.numel()), 8192):
                idx = te[i:i + 8192]
                z = torch.baddbmm(b[:, None], (xs[:, idx] - mean[:, None]) / scale[:, None], w)
                pred = z.view(xs.shape[0], -1, k, c).argmax(-1)  # (L, B, K)
                for hh in range(k):
                    t = y[hh, idx]
                    for li in range(xs.shape[0]):
                        conf[li, hh, f] += _confusion(t, pred[li, :, hh], c)
        train_all = ~test_m
        for hh in range(k):
            counts[hh, f] = np.bincount(y_np[hh][train_all], minlength=c)
        n_fold[f] = train_all.sum()
    if reduce is not None:
        conf = reduce(torch.from_numpy(conf)).numpy()
        counts = reduce(torch.from_numpy(counts)).numpy()
        n_fold = reduce(torch.from_numpy(n_fold)).numpy()
    return conf, counts, n_fold


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------



def _as_list(v, name: str, allowed=None) -> list:
    vals = [v] if isinstance(v, str) else list(v)
    if not vals:
        raise ValueError(f"{name} must name at least one value")
    if allowed is not None:
        for x in vals:
            if x not in allowed:
                raise ValueError(f"{name} must be one of {allowed} (or a list of them), got {x!r}")
    return vals


def _check_layers(store, layers) -> list[int]:
    return _v.stored_layers(store, layers)


def probe_layers(
    store,
    target: str | Sequence[str] = "phone",
    *,
    level: str | None = None,
    method: str | Sequence[str] = "ridge",
    layers: Sequence[int] | None = None,
    folds: int = 5,
    split_by: str = "speaker",
    control: bool = False,
    control_by: str | None = None,
    utterances=None,
    device=None,
    seed: int = 0,
    lambdas: Sequence[float] = LAMBDAS,
    chunk_frames: int = 16384,
    lr: float = 1e-2,
    batch_size: int = 1024,
    max_epochs: int = 40,
    patience: int = 3,
    weight_decay: float | None = None,
    dev_fraction: float = 0.15,
    max_memory: int = 2 ** 31,
    reference=None,
    reduce=None,
) -> pd.DataFrame:
    """Cross-validated linear probes of every stored layer.

    Args:
        store: a :class:`~s3viz.extract.LayerStore`.
        target: label name(s). Frame-level targets are columns of the phone
            alignments (``"phone"``, ``"word"``), read per frame with
            ``store.frame_labels`` (frames labelled ``""`` are left out);
            utterance-level targets are columns of ``store.labels``
            (``"speaker"``, ``"sentence_id"`` ...), probed on mean-pooled features.
        level: ``"frame"``, ``"utterance"``, ``"segment"`` or ``None`` (utterance
            level when the target is a column of ``store.labels``, else frame
            level). ``"segment"``: each segment of the target in the alignments
            (a phone, or a run of one word's phones for ``"word"``; silence left
            out; :func:`s3viz.segments.segment_table`) is one example, the mean
            of its frames; folds keep each utterance (or speaker) on one side,
            and the control type defaults to the segment with its neighbours.
        method: ``"ridge"``, ``"logistic"`` or a list of both (see module doc).
        layers: stored layer indices to probe (default all).
        folds: number of grouped cross-validation folds (>= 2).
        split_by: ``"speaker"`` (no speaker in two folds) or ``"utterance"``.
        control: also train on Hewitt & Liang control labels and report
            ``control_accuracy`` and ``selectivity``.
        control_by: what defines a type for the control task (see module doc).
        utterances: utterance positions to use (default all).
        device: torch device; ``None`` is cuda when available, else cpu.
        seed: seed of folds, control labels and the logistic probe's shuffling.
        lambdas: ridge penalty grid (relative to the standardised covariance).
        chunk_frames: frames per chunk when streaming the store (ridge).
        lr, batch_size, max_epochs, patience, weight_decay, dev_fraction:
            logistic probe training (Adam, at least 200 steps and at most
            ``max_epochs`` epochs otherwise; ``weight_decay=None`` is ``1 /
            n_train``, the L2 penalty of scikit-learn's ``C=1``; ``dev_fraction``
            of the training groups is held out, the dev loss is checked every
            ~20 steps and each classifier keeps its best weights, training
            stops when none improved for ``patience`` checks). ``dev_fraction=0``:
            no dev split, full-batch L-BFGS to the optimum of the penalised
            objective on the whole training part (at most ``max_epochs * 25``
            iterations; ``lr``, ``batch_size`` and ``patience`` unused).
        max_memory: bytes of features the logistic probe may hold on the device.
        reference: sharded runs (ridge, or logistic with ``dev_fraction=0``, whose
            full-batch gradients are summed over shards): the whole corpus's metadata, a
            store-like object with ``ids, labels, phones, lengths(layer),
            frame_labels(...), downsample_rates, receptive_fields, hidden_sizes,
            num_layer, layer_ids`` (no frames needed; see
            :func:`s3viz.distributed.reference_store`). ``store`` then holds one
            shard (a subset of ``reference.ids``); folds, classes and control
            labels come from ``reference`` so every shard agrees, and
            ``utterances`` are positions in ``reference``.
        reduce: sharded runs: ``reduce(tensor) -> tensor`` summing a tensor over
            all shards (e.g. :func:`s3viz.distributed.all_reduce_sum`). The
            ridge statistics, the pooled vectors (utterance level), the
            logistic probe's scaling, losses and gradients and the confusion
            counts are summed with it, so each shard returns the same table as
            :func:`probe_layers` on the union of the shards (logistic: up to the
            order of float sums).

    Returns:
        DataFrame with one row per target, method and layer: ``target, method,
        level, layer, upstream_layer, accuracy`` (pooled over the test folds,
        every example is tested once), ``accuracy_std`` (std over folds),
        ``macro_f1``, ``chance`` (always predicting the training majority class),
        ``n_classes``, ``n_train``, ``n_test`` (mean examples per fold),
        ``lambda`` (ridge: mean chosen penalty), and with ``control=True``
        ``control_accuracy`` and ``selectivity``. ``df.attrs["fold_accuracy"]``
        maps ``(target, method, layer)`` to the accuracy of each fold (folds as
        in :func:`probe_folds`).
    """
    if target is None:
        raise TypeError("target must be a label name (str) or a list of them, e.g. 'phone' or "
                        "['phone', 'speaker'], got None")
    targets = _as_list(target, "target")
    methods = _as_list(method, "method", METHODS)
    lambdas = _v.numbers(lambdas, "lambdas")
    chunk_frames = _v.integer(chunk_frames, "chunk_frames")
    lr = _v.number(lr, "lr", positive=True)
    batch_size = _v.integer(batch_size, "batch_size")
    max_epochs = _v.integer(max_epochs, "max_epochs")
    patience = _v.integer(patience, "patience")
    weight_decay = _v.number(weight_decay, "weight_decay", nonnegative=True, none_ok=True)
    max_memory = _v.integer(max_memory, "max_memory")
    seed = _v.integer(seed, "seed", minimum=0)
    shard_store, shard_pos_all = None, None
    if reference is not None or reduce is not None:
        if reference is None or reduce is None:
            raise ValueError("sharded probes need both `reference` (the whole corpus) and "
                             "`reduce` (a sum over shards); pass both or neither")
        if "logistic" in methods and dev_fraction != 0:
            raise ValueError(
                "sharded logistic probes need dev_fraction=0 (full-batch L-BFGS, whose "
                "gradients sum over shards); early stopping's minibatches cannot be split "
                "across shards")
        ref_index = {u: i for i, u in enumerate(reference.ids)}
        unknown = [u for u in store.ids if u not in ref_index]
        if unknown:
            raise ValueError(f"{len(unknown)} utterance(s) of the shard store are not in "
                             f"`reference` (e.g. {unknown[:5]}); pass the whole corpus's metadata")
        shard_store, store = store, reference
        shard_pos_all = np.asarray([ref_index[u] for u in shard_store.ids], dtype=np.int64)
    folds = _check_folds(folds)
    if split_by not in SPLITS:
        raise ValueError(f"split_by must be one of {SPLITS}, got {split_by!r}")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS} or None, got {level!r}")
    if level == "segment":
        if shard_store is not None:
            raise ValueError("segment-level probes do not run sharded yet; probe the whole "
                             "store (its segments are small) or use level='frame'")
        return _probe_segments(
            store, targets, method=methods, layers=_check_layers(store, layers), folds=folds,
            split_by=split_by, control=control, control_by=control_by, utterances=utterances,
            device=device, seed=seed, lambdas=lambdas, chunk_frames=chunk_frames, lr=lr,
            batch_size=batch_size, max_epochs=max_epochs, patience=patience,
            weight_decay=weight_decay, dev_fraction=dev_fraction, max_memory=max_memory)
    layer_list = _check_layers(store, layers)
    sel = _positions(store, utterances)
    device = _resolve_device(device)
    lambdas = tuple(lambdas)
    if isinstance(dev_fraction, bool) or not isinstance(dev_fraction, (int, float)) \
            or not 0 <= dev_fraction < 1:
        raise ValueError(f"dev_fraction must be a number in [0, 1) (0: no early stopping, "
                         f"train to the optimum), got {dev_fraction!r}")
    opts = {"lr": lr, "batch_size": int(batch_size), "max_epochs": int(max_epochs),
                "patience": int(patience), "weight_decay": weight_decay,
                "dev_fraction": float(dev_fraction)}
    layer_ids = list(getattr(store, "layer_ids", range(store.num_layer)))
    rows = []
    fold_accuracy = {}
    for tgt in targets:
        if not isinstance(tgt, str):
            raise TypeError(f"target must be a label name (str), got {tgt!r}")
        lev = _resolve_level(store, tgt, level)
        if split_by == "speaker" and tgt == "speaker":
            raise ValueError(
                "target='speaker' with split_by='speaker' is impossible: test speakers are "
                "never seen in training. Use split_by='utterance' to probe speaker identity"
            )
        task = _Task(store, tgt, lev, sel, folds, split_by, seed, control, control_by)
        if lev == "frame":
            task.set_frame_classes(layer_list)
        shard = None
        if shard_store is not None:  # (shard store positions, task positions) in shard order
            task_of = {int(u): k for k, u in enumerate(sel)}
            keep = [j for j, u in enumerate(shard_pos_all) if int(u) in task_of]
            shard = (keep, [task_of[int(shard_pos_all[j])] for j in keep])
        c = len(task.classes)
        blocks = [slice(0, c)] + ([slice(c, 2 * c)] if control else [])
        for meth in methods:
            per_layer = {}
            if meth == "ridge":
                for layer in layer_list:
                    if lev == "frame":
                        per_layer[layer] = _ridge_layer_frame(
                            task, store if shard is None else shard_store, layer, blocks, c,
                            lambdas, device, chunk_frames, torch.float64, shard=shard,
                            reduce=reduce)
                    elif shard is not None:
                        x = _pooled_sharded(shard_store, layer, task, shard, reduce).to(device)
                        per_layer[layer] = _ridge_layer_utterance(
                            task, x, blocks, c, lambdas, torch.float64)
                    else:
                        x = _pooled(store, layer, task).to(device)
                        per_layer[layer] = _ridge_layer_utterance(
                            task, x, blocks, c, lambdas, torch.float64)
            else:
                per_layer = _logistic_layers(task, store, layer_list, c, device, opts,
                                             max_memory, shard_store=shard_store, shard=shard,
                                             reduce=reduce)
            for layer in layer_list:
                rows.append(_result_row(tgt, meth, lev, layer, int(layer_ids[layer]), c, folds,
                                        control, per_layer[layer], fold_accuracy))
    return _result_table(rows, fold_accuracy, control, folds=folds, split_by=split_by, seed=seed)


def _probe_segments(store, targets, *, layers, utterances, control_by, **kw) -> pd.DataFrame:
    """probe_layers(level="segment"): the utterance-level probes of a store of segments."""
    from .segments import segment_store

    tables = []
    for tgt in targets:
        seg = segment_store(store, tgt, layers, utterances=utterances)
        res = probe_layers(seg, tgt, level="utterance", layers=None, control_by=(
            "context" if control_by is None else control_by), **kw)
        res["level"] = "segment"
        res["layer"] = [layers[i] for i in res["layer"]]
        res["upstream_layer"] = [int(store.layer_ids[v]) for v in res["layer"]]
        fold_acc = {(t, m, layers[i]): v for (t, m, i), v in res.attrs["fold_accuracy"].items()}
        res.attrs["fold_accuracy"] = fold_acc
        res.attrs["n_dropped"] = seg._dropped
        tables.append(res)
    out = pd.concat(tables, ignore_index=True)
    out.attrs = {**tables[0].attrs, "fold_accuracy": {
        k: v for t in tables for k, v in t.attrs["fold_accuracy"].items()}}
    return out


_RESULT_COLUMNS = ["target", "method", "level", "layer", "upstream_layer", "accuracy",
                   "accuracy_std", "macro_f1", "chance", "n_classes", "n_train", "n_test", "lambda"]


def _result_row(tgt, meth, lev, layer: int, upstream_layer: int, c: int, folds: int,
                control: bool, result, fold_accuracy: dict) -> dict:
    """One row of :func:`probe_layers`'s table from ``(conf, counts, n_train, lambdas)``."""
    conf, counts, n_fold, lam = result
    main = _scores(conf[0], counts[:, :c] if counts.ndim == 2 else counts[0])
    fold_accuracy[(tgt, meth, layer)] = main.pop("fold_accuracy")
    n_total = conf[0].sum()
    row = dict(target=tgt, method=meth, level=lev, layer=layer, upstream_layer=upstream_layer,
               **main, n_classes=c, n_train=round(float(np.mean(n_fold))),
               n_test=round(n_total / folds),
               **{"lambda": float(lam[0]) if lam is not None else float("nan")})
    if control:
        cc = counts[:, c:] if counts.ndim == 2 else counts[1]
        ctrl = _scores(conf[1], cc)
        ctrl.pop("fold_accuracy")
        row["control_accuracy"] = ctrl["accuracy"]
        row["selectivity"] = row["accuracy"] - ctrl["accuracy"]
    return row


def _result_table(rows: list[dict], fold_accuracy: dict, control: bool, **attrs) -> pd.DataFrame:
    cols = _RESULT_COLUMNS + (["control_accuracy", "selectivity"] if control else [])
    df = pd.DataFrame(rows, columns=cols)
    df.attrs["fold_accuracy"] = fold_accuracy
    df.attrs.update(attrs)
    return df


def _pooled(store, layer: int, task: _Task) -> torch.Tensor:
    x = store.pooled(layer, utterances=_store_arg(task.sel, task.n_utt), dtype=read_dtype(store))
    x = torch.as_tensor(x)
    empty = torch.isnan(x).any(1)
    if bool(empty.any()):
        bad = [task.ids[i] for i in torch.nonzero(empty).squeeze(1).tolist()]
        raise ValueError(
            f"{len(bad)} utterance(s) have no frames in stored layer {layer} (e.g. {bad[:5]}), "
            "so no pooled vector; leave them out with `utterances=`"
        )
    if x.shape[0] != len(task.sel):
        raise RuntimeError(f"store.pooled({layer}) gave {x.shape[0]} rows for {len(task.sel)} "
                           "utterances")
    return x


def _pooled_sharded(shard_store, layer: int, task: _Task, shard, reduce) -> torch.Tensor:
    """The ``(len(task.sel), H)`` pooled vectors of all shards: each fills its rows, then a sum."""
    keep, task_pos = shard
    x = torch.zeros(len(task.sel), shard_store.hidden_sizes[layer], dtype=torch.float64)
    if keep:
        x[torch.as_tensor(task_pos)] = torch.as_tensor(shard_store.pooled(
            layer, utterances=list(keep), dtype=read_dtype(shard_store)), dtype=torch.float64)
    filled = torch.zeros(len(task.sel), dtype=torch.float32)
    filled[torch.as_tensor(task_pos, dtype=torch.long)] = 1.0
    x, filled = reduce(x), reduce(filled)
    if not bool((filled == 1).all()):
        bad = [task.ids[i] for i in torch.nonzero(filled != 1).squeeze(1).tolist()[:5]]
        raise ValueError(f"the shards must hold every probed utterance exactly once; "
                         f"e.g. {bad} are missing or repeated")
    if bool(torch.isnan(x).any()):
        raise ValueError(f"some utterances have no frames in stored layer {layer}; "
                         "leave them out with `utterances=`")
    return x


def _logistic_layers(task: _Task, store, layer_list: list[int], c: int, device, opts,
                     max_memory: int, shard_store=None, shard=None, reduce=None) -> dict:
    """Group layers (same hidden size and frame labels), train each group batched.

    Sharded (``shard_store``, ``shard``, ``reduce``): this process holds the examples
    of its shard only; the L-BFGS gradients, the scaling and the counts are summed
    over shards with ``reduce`` (``dev_fraction=0``).
    """
    groups: dict[tuple, list[int]] = {}
    for layer in layer_list:
        key = (store.hidden_sizes[layer],
               task.frame_key(layer) if task.level == "frame" else None)
        groups.setdefault(key, []).append(layer)
    out = {}
    for (h, _), members in groups.items():
        rows = None
        if task.level == "frame":
            d = task.frame_targets(members[0])
            arg, rows = _shard_frames(task, d, shard)
            if rows is None:
                keep = d["y"] >= 0
                sel_rows = np.flatnonzero(keep)
            else:  # this shard's frames, in the shard store's order
                keep = d["y"][rows] >= 0
                sel_rows = rows[keep]
            n = len(sel_rows)
            y_np = [d["y"][sel_rows]] + ([d["y_ctrl"][sel_rows]] if task.control else [])
            fold_np = d["fold"][sel_rows]
            group_np = task.groups[d["utt"][sel_rows]]
        else:
            keep = None
            pos = np.arange(len(task.sel)) if shard is None else np.asarray(shard[1], dtype=int)
            n = len(pos)
            y_np = [task.y[pos]] + ([task.y_ctrl[pos]] if task.control else [])
            fold_np = task.utt_fold[pos]
            group_np = task.groups[pos]
        y_np = np.stack(y_np).astype(np.int64).reshape(len(y_np), n)
        n_group = n
        if reduce is not None:  # every shard must group the layers alike (same collectives)
            n_group = int(reduce(torch.tensor([float(n)], dtype=torch.float64))[0])
        per = max(1, int(max_memory // max(1, n_group * h * 4)))
        for start in range(0, len(members), per):
            batch = members[start:start + per]
            feats = []
            for layer in batch:
                src = store if shard is None else shard_store
                dt = read_dtype(src)
                if task.level == "frame" and shard is None:
                    x, _ = store.layer(layer, utterances=_store_arg(task.sel, task.n_utt),
                                       dtype=dt)
                    x = torch.as_tensor(x)[torch.from_numpy(keep)]
                elif task.level == "frame":
                    x = (shard_store.layer(layer, utterances=arg, dtype=dt)[0] if arg
                         else torch.zeros(0, h, dtype=dt))
                    x = torch.as_tensor(x)[torch.from_numpy(keep)]
                elif shard is None:
                    x = _pooled(store, layer, task)
                else:
                    x = (torch.as_tensor(shard_store.pooled(layer, utterances=list(shard[0]),
                                                            dtype=dt))
                         if len(shard[0]) else torch.zeros(0, h, dtype=dt))
                feats.append(centred_float32(x, device, reduce))
            xs = torch.stack(feats)
            del feats
            conf, counts, n_fold = _logistic_group(task, xs, y_np, fold_np, group_np, c, opts,
                                                   reduce=reduce)
            del xs
            for li, layer in enumerate(batch):
                out[layer] = (conf[li], counts, n_fold, None)
    return out
