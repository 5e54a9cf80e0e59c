"""Sufficient statistics of the ridge probe: :class:`ProbeStats`.

Per group (fold, speaker ...): counts, ``X^T 1``, ``X^T X``, ``X^T Y``, ``Y^T 1``,
``Y^T Y``, summed about a shift so that large offsets do not cancel. Statistics of
shards add (``a + b``, ``reduced``); ``solve`` and ``dev_mse`` fit ridge regressions
from them without the frames. The maths: ``docs/probes.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._numerics import safe_scale

__all__ = ["ProbeStats"]


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
        """Empty statistics for ``num_groups`` groups of ``hidden_size``-dim examples.

        Args:
            num_groups: groups (folds' parts) the sums are kept apart for.
            num_targets: target columns (one per class of a one-hot target).
        """
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

        Args:
            shift: the ``(hidden_size,)`` vector subtracted from ``x`` before summing.
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
        """Statistics of the union of ``groups`` (a single group).

        Args:
            groups: indices of the groups summed.
        """
        idx = torch.as_tensor(list(groups), dtype=torch.long, device=self.device)
        return self._like(*(t.index_select(0, idx).sum(0, keepdim=True) for t in self._tensors()))

    def without(self, groups: Sequence[int]) -> ProbeStats:
        """Statistics of every group except ``groups`` (e.g. the training part of a fold).

        Summed from the remaining groups rather than subtracted from the total,
        so no precision is lost to cancellation.

        Args:
            groups: indices of the groups left out.
        """
        drop = {int(g) for g in groups}
        return self.select([g for g in range(self.num_groups) if g not in drop])

    def keep_targets(self, targets: Sequence[int]) -> ProbeStats:
        """The statistics of target columns ``targets`` only (e.g. dropping classes never seen).

        Each target column is an independent regression sharing the ``x``
        statistics, so the result equals accumulating only those columns.

        Args:
            targets: indices of the target columns kept, in ``0..num_targets-1``.
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
        sd = safe_scale(torch.sqrt(torch.diagonal(cov).clamp_min(0)), mean=self.shift + mu)
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
