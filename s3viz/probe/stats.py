"""Sufficient statistics of the ridge probe, :class:`ProbeStats`: per group, sums that
add over shards and fit ridge regressions without the frames (``docs/probes.md``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._numerics import cross_product, safe_scale

__all__ = ["ProbeStats"]


class ProbeStats:
    """Sufficient statistics of a linear least-squares probe, per group of examples.

    For each of ``G`` groups (e.g. folds) of examples ``x`` with targets ``y``:
    ``count`` ``(G,)``, ``sum_x = X^T 1`` ``(G, H)``, ``sum_xx = X^T X`` ``(G, H, H)``,
    ``sum_y = Y^T 1`` ``(G, C)``, ``sum_xy = X^T Y`` ``(G, H, C)`` and
    ``sum_yy = diag(Y^T Y)`` ``(G, C)``.

    The ``x`` sums are of ``x - shift`` (``(H,)``, default 0; empty statistics take
    the mean of their first examples), so that a large mean does not cancel the
    digits of the covariance (:mod:`s3viz._numerics`). Statistics of two shards add
    up (``a + b``) to those of their union; a distributed run merges with
    :meth:`reduced`. :meth:`solve` fits the ridge probe from them.

    Args:
        count, sum_x, sum_xx, sum_y, sum_xy, sum_yy: the sums above.
        shift: ``(H,)`` the point the ``x`` sums are taken from (default 0).
    """

    _FIELDS = ("count", "sum_x", "sum_xx", "sum_y", "sum_xy", "sum_yy")

    def __init__(self, count, sum_x, sum_xx, sum_y, sum_xy, sum_yy, shift=None):
        g, h, c = count.shape[0], sum_x.shape[-1], sum_y.shape[-1]
        shapes = ((g,), (g, h), (g, h, h), (g, c), (g, h, c), (g, c))
        for name, v, shape in zip(self._FIELDS, (count, sum_x, sum_xx, sum_y, sum_xy, sum_yy),
                                  shapes):
            if tuple(v.shape) != shape:
                raise ValueError(f"ProbeStats: {name} must have shape {shape} (groups, hidden, "
                                 f"targets), got {tuple(v.shape)}")
        self.count, self.sum_x, self.sum_xx = count, sum_x, sum_xx
        self.sum_y, self.sum_xy, self.sum_yy = sum_y, sum_xy, sum_yy
        self._shift_fixed = shift is not None or bool((count != 0).any())
        if shift is None:
            shift = torch.zeros(h, dtype=sum_x.dtype, device=sum_x.device)
        shift = torch.as_tensor(shift).to(device=sum_x.device, dtype=sum_x.dtype)
        if tuple(shift.shape) != (h,):
            raise ValueError(f"ProbeStats: shift must have shape ({h},), got {tuple(shift.shape)}")
        self.shift = shift

    @classmethod
    def zeros(cls, num_groups: int, hidden_size: int, num_targets: int, *,
              dtype=torch.float64, device=None) -> ProbeStats:
        """Empty statistics.

        Args:
            num_groups: groups (folds' parts) the sums are kept apart for.
            num_targets: target columns (one per class of a one-hot target).
        """
        kw = {"dtype": dtype, "device": device}
        g, h, c = int(num_groups), int(hidden_size), int(num_targets)
        return cls(torch.zeros(g, **kw), torch.zeros(g, h, **kw), torch.zeros(g, h, h, **kw),
                   torch.zeros(g, c, **kw), torch.zeros(g, h, c, **kw), torch.zeros(g, c, **kw))

    @classmethod
    def from_data(cls, x: torch.Tensor, y: torch.Tensor, group: torch.Tensor | None = None, *,
                  num_groups: int | None = None, num_targets: int | None = None,
                  dtype=torch.float64, device=None) -> ProbeStats:
        """Statistics of examples ``x`` with targets ``y`` (:meth:`update`).

        Args:
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
            x: ``(num_examples, hidden_size)`` features (accumulated in this dtype).
            y: ``(num_examples,)`` or ``(num_examples, num_blocks)`` long class
                indices (one-hot per block), or a ``(num_examples, num_targets)``
                float target matrix.
            group: ``(num_examples,)`` long group of each example (None: group 0).
        """
        dev, dt = self.device, self.dtype
        x = torch.as_tensor(x).to(device=dev, dtype=dt)
        y = torch.as_tensor(y).to(device=dev)
        if x.ndim != 2 or x.shape[1] != self.hidden_size:
            raise ValueError(f"x must have shape (num_examples, {self.hidden_size}), got "
                             f"{tuple(x.shape)}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows but x has {x.shape[0]}")
        if not self._shift_fixed and x.shape[0]:
            # exact for a constant feature of float32 data: x - shift is then 0
            self.shift = x.mean(0)
            self._shift_fixed = True
        if group is None:
            x, bounds = x - self.shift, [(0, 0, x.shape[0])]
        else:
            group = torch.as_tensor(group).to(dev).long()
            if group.shape != (x.shape[0],):
                raise ValueError(f"group must have shape ({x.shape[0]},), got {tuple(group.shape)}")
            uniq = torch.unique(group).tolist()
            if uniq and (uniq[0] < 0 or uniq[-1] >= self.num_groups):
                raise ValueError(f"group values must be in [0, {self.num_groups}), got {uniq}")
            # one gather puts each group's rows together (contiguous, for cross_product)
            order = torch.argsort(group, stable=True)
            x, y = x.index_select(0, order), y.index_select(0, order)
            x -= self.shift
            ends = torch.bincount(group, minlength=self.num_groups).cumsum(0).tolist()
            bounds = [(g, ends[g - 1] if g else 0, ends[g]) for g in uniq]
        for g, a, e in bounds:
            xg, yg = x[a:e], y[a:e]
            self.count[g] += xg.shape[0]
            self.sum_x[g] += xg.sum(0)
            self.sum_xx[g] += cross_product(xg)
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
                xy_t = torch.zeros(self.num_targets, self.hidden_size, dtype=dt, device=dev)
                for b in range(yg.shape[1]):
                    self.sum_y[g].index_add_(0, yg[:, b], ones)
                    self.sum_yy[g].index_add_(0, yg[:, b], ones)
                    xy_t.index_add_(0, yg[:, b], xg)
                self.sum_xy[g] += xy_t.T
        return self

    def _tensors(self):
        return tuple(getattr(self, f) for f in self._FIELDS)

    def _like(self, *tensors, shift=None) -> ProbeStats:
        out = ProbeStats(*tensors, shift=self.shift if shift is None else shift)
        out._shift_fixed = self._shift_fixed
        return out

    def rebased(self, shift: torch.Tensor) -> ProbeStats:
        """The same statistics with the ``x`` sums taken from another point (with
        ``d = self.shift - shift``: ``S + n d`` and ``XX + S d^T + d S^T + n d d^T``).

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
                raise ValueError(f"cannot add ProbeStats of different shapes: {name} "
                                 f"{tuple(a.shape)} vs {tuple(b.shape)} (same groups, hidden "
                                 "size and targets needed)")
        if not self._shift_fixed:  # empty: the sum is the other, with its reference point
            other = other.to(self.device, self.dtype)
            return other._like(*(t.clone() for t in other._tensors()))
        other = other.to(self.device, self.dtype).rebased(self.shift)
        return self._like(*(a + b for a, b in zip(self._tensors(), other._tensors())))

    __radd__ = __add__  # so that sum([a, b, c]) works

    def reduced(self, reduce) -> ProbeStats:
        """The statistics of all shards, from this shard's (every shard calls this).

        ``reduce`` sums a tensor over shards (e.g. :func:`s3viz.distributed.all_reduce_sum`);
        each shard is first re-based on the global mean of ``x``.
        """
        n_all = reduce(self.count.sum().reshape(1).clone())
        total = self.sum_x.sum(0) + self.count.sum() * self.shift
        mean = reduce(total) / n_all.clamp_min(1)
        base = self.rebased(mean)
        # copies: a reduce may sum in place, and these may be this shard's own tensors
        return ProbeStats(*(reduce(t.clone()) for t in base._tensors()), shift=mean)

    def select(self, groups: Sequence[int]) -> ProbeStats:
        """Statistics of the union of some groups, as a single group.

        Args:
            groups: indices of the groups summed.
        """
        idx = torch.as_tensor(list(groups), dtype=torch.long, device=self.device)
        return self._like(*(t.index_select(0, idx).sum(0, keepdim=True) for t in self._tensors()))

    def without(self, groups: Sequence[int]) -> ProbeStats:
        """Statistics of every other group (e.g. a fold's training part), summed rather
        than subtracted from the total (no cancellation).

        Args:
            groups: indices of the groups left out.
        """
        drop = {int(g) for g in groups}
        return self.select([g for g in range(self.num_groups) if g not in drop])

    def keep_targets(self, targets: Sequence[int]) -> ProbeStats:
        """The statistics of some target columns only (e.g. dropping classes never seen):
        equal to accumulating only those columns.

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
        return (f"ProbeStats(num_groups={self.num_groups}, hidden_size={self.hidden_size}, "
                f"num_targets={self.num_targets}, examples={int(self.count.sum())}, "
                f"dtype={self.dtype}, device={self.device})")

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

    def dev_mse(self, dev: ProbeStats, lambdas: Sequence[float]) -> torch.Tensor:
        """``(len(lambdas), num_targets)`` mean squared error on held-out examples of ridge
        fits on these statistics, one per penalty, from the statistics alone (one
        eigendecomposition for the grid; float32: it only ranks them).

        Args:
            dev: statistics of the held-out examples (all their groups pooled).
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
        h, c, nl = p.shape[0], p.shape[1], lam.numel()
        # every penalty's weights side by side, (H, L * C): two matrix products in all
        q = (p[:, None, :] / (evals[:, None, None] + lam[None, :, None])).reshape(h, nl * c)
        ws = evecs @ q
        cross = (ws * ztyc.repeat(1, nl)).sum(0).reshape(nl, c)
        quad = (ws * (ztz @ ws)).sum(0).reshape(nl, c)
        return (yyc[None] - 2 * cross + quad) / max(n, 1.0)

    def solve(self, lam: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit the ridge probe on all groups: ``weight (hidden_size, num_targets)`` and
        ``bias (num_targets,)``, scores ``x @ weight + bias``.

        Minimises ``mean ||y - W^T x - b||^2 + lam * ||W_std||^2`` (``W_std``: the
        weights on standardised features; ``lam`` relative to their covariance's mean
        eigenvalue, 1; the intercept not penalised).
        """
        mu, sd, ybar, a, b = self._moments()
        w = _ridge_solve(a, b, float(lam)) / sd[:, None]
        return w, ybar - (self.shift + mu) @ w


def _ridge_solve(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    m = a + lam * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    evals, evecs = torch.linalg.eigh(a)
    return evecs @ ((evecs.T @ b) / (evals.clamp_min(0) + lam)[:, None])
