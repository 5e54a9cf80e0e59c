"""Offset- and scale-safe moments for the probes, the featurizers and the similarity.

``E[x^2] - E[x]^2`` loses every digit when a feature's mean is large against its
spread (a 1e6 offset leaves nothing of a unit variance in float64 sums over 1e4
frames), and float32 products overflow at 1e19 and vanish at 1e-23. Every sum of
squares in s3viz is therefore taken of ``x - shift``, with ``shift`` a mean of the
first data seen (exact for a constant feature), and float32 products of
``(x - shift) * 2**k`` with ``k`` fixed per layer: shifting and scaling by a power
of two change no result of the scale- and offset-invariant measures.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ROUNDING", "read_dtype", "pow2_factor", "safe_scale", "centred_float32", "Moments"]


def read_dtype(store) -> torch.dtype:
    """float64 for a store that holds float64 frames (``LayerStore.from_tensors``), else float32.

    Reading a float64 store in float32 rounds a feature of 1e6 to 1/16: the
    measures read it in its own precision instead.
    """
    return torch.float64 if getattr(store, "store_dtype", None) == torch.float64 else torch.float32


def pow2_factor(x: torch.Tensor) -> float:
    """A power of two ``2**-k`` bringing the root mean square of ``x`` near 1 (1.0 for 0 or empty).

    Multiplying by a power of two is exact in floating point, so it only moves
    products away from float32's overflow and underflow.
    """
    if x.numel() == 0:
        return 1.0
    rms = float(x.double().pow(2).mean().sqrt())
    if not math.isfinite(rms) or rms == 0.0:
        return 1.0
    return 2.0 ** -round(math.log2(rms))


ROUNDING = 1e-12
"""A spread below this fraction of a feature's own mean is float64 rounding, not signal."""


def safe_scale(std: torch.Tensor, rel: float = 1e-8, mean: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``std`` with dead features set to 1: those below ``rel`` times the largest
    of the layer, or (given ``mean``) below :data:`ROUNDING` times their own mean.

    Relative only, so a layer whose every feature is of size 1e-30 is still
    standardised, and a constant feature of 1e6 whose mean-pooled values differ
    by rounding (1e-10) is not blown up to unit variance.
    ``std``: ``(..., hidden)``; the largest is taken over the last axis.
    """
    top = std.amax(-1, keepdim=True) if std.numel() else std
    live = (std > rel * top) & (std > 0)
    if mean is not None:
        live &= std > ROUNDING * mean.abs()
    return torch.where(live, std, torch.ones_like(std))


def centred_float32(x: torch.Tensor, device=None, reduce=None, rows: int | None = None
                    ) -> torch.Tensor:
    """``x - mean(x)`` in float32 on ``device`` (the mean of all shards' rows with ``reduce``).

    For analyses that keep their examples in float32 (the logistic probe, k-means):
    centring first, in ``x``'s own precision and in blocks of ``rows`` (default:
    about 4M numbers), keeps a
    feature of 1e6 with unit spread from being rounded to 1/16, without a float64
    copy of the whole of ``x``. Any shift leaves those analyses unchanged.
    """
    if rows is None:  # blocks of about 4M numbers: 32 MB in float64, whatever the width
        rows = max(1, (1 << 22) // max(1, x.shape[1]))
    n = x.shape[0]
    s1 = torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, n, rows):
        s1 += x[i:i + rows].double().sum(0).cpu()
    if reduce is not None:
        s1 = reduce(s1.to(device)).cpu()
        n = float(reduce(torch.tensor([float(n)], dtype=torch.float64, device=device))[0])
    mean = s1 / max(n, 1)
    out = torch.empty(x.shape, dtype=torch.float32, device=device)
    for i in range(0, x.shape[0], rows):
        part = x[i:i + rows].double() - mean.to(x.device)
        out[i:i + rows] = part.to(device=device, dtype=torch.float32)
    return out


class Moments:
    """Streamed per-feature count, mean and population variance, accurate under any offset.

    ``update`` adds rows; the first rows seen fix ``shift`` (their float64 mean)
    and sums are of ``x - shift``. ``reduce`` (a sum over shards, e.g.
    :func:`s3viz.distributed.all_reduce_sum`) merges shards whose shifts differ:
    each is re-based on the global mean before the sum (two extra collectives).

    Args:
        shape: the feature shape, e.g. ``(hidden,)`` or ``(layers, hidden)``;
            rows are reduced over the axis before it (``update`` takes
            ``(rows, *shape)``, or ``(*shape[:-1], rows, shape[-1])`` with ``axis=-2``).
        device: where the float64 sums live.
    """

    def __init__(self, shape, device=None, axis: int = 0):
        kw = {"dtype": torch.float64, "device": device}
        self.axis = axis
        self.shift = torch.zeros(*shape, **kw)
        self.s1 = torch.zeros(*shape, **kw)
        self.s2 = torch.zeros(*shape, **kw)
        self.n = 0
        self._fixed = False

    def update(self, x: torch.Tensor) -> Moments:
        if x.shape[self.axis] == 0:
            return self
        x = x.to(device=self.shift.device, dtype=torch.float64)
        if not self._fixed:
            self.shift = x.mean(self.axis)
            self._fixed = True
        d = x - self.shift.unsqueeze(self.axis)
        self.s1 += d.sum(self.axis)
        self.s2 += (d * d).sum(self.axis)
        self.n += x.shape[self.axis]
        return self

    def reduced(self, reduce) -> Moments:
        """The moments of all shards (every shard calls this: three collectives)."""
        out = Moments(self.shift.shape, self.shift.device, self.axis)
        f64 = {"dtype": torch.float64, "device": self.shift.device}
        n_all = float(reduce(torch.tensor([float(self.n)], **f64))[0])
        if n_all <= 0:
            return out
        mean = reduce(self.s1 + self.n * self.shift) / n_all
        d = self.shift - mean  # re-base this shard's sums on the global mean
        s1 = self.s1 + self.n * d
        s2 = self.s2 + 2 * d * self.s1 + self.n * d * d
        out.shift, out.s1, out.s2 = mean, reduce(s1), reduce(s2)
        out.n, out._fixed = int(round(n_all)), True
        return out

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / max(self.n, 1)

    @property
    def var(self) -> torch.Tensor:
        n = max(self.n, 1)
        m = self.s1 / n
        return (self.s2 / n - m * m).clamp_min(0)
