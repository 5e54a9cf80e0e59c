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

import contextlib
import math
import re
import warnings

import numpy as np
import torch

def read_dtype(store) -> torch.dtype:
    """float64 for a store that holds float64 frames (``LayerStore.from_tensors``), else
    float32 (a float64 store read in float32 rounds a feature of 1e6 to 1/16)."""
    return torch.float64 if getattr(store, "store_dtype", None) == torch.float64 else torch.float32


def pow2_factor(x: torch.Tensor) -> float:
    """A power of two ``2**-k`` (exact to multiply by) bringing the root mean square of ``x``
    near 1 (1.0 for 0 or empty). The squares are of ``x`` times a power of two bringing its
    largest value near 1 (exact): those of 1e200 do not overflow, nor those of 1e-200 vanish."""
    x = x.double()
    top = float(x.abs().max()) if x.numel() else 0.0
    g = pow2_near(top)
    rms = float((x * g).pow(2).mean().sqrt()) / g if x.numel() else 0.0
    if not (math.isfinite(rms) and rms > 0):
        return 1.0
    return math.ldexp(1.0, min(1023, -round(math.log2(rms))))  # finite for a subnormal rms


def safe_scale(std: torch.Tensor, mean: torch.Tensor | None = None,
               eps: float = torch.finfo(torch.float64).eps, ulps: float = 4.0
               ) -> torch.Tensor:
    """``std`` (``(..., hidden)``) with dead features set to 1: those whose spread is 0,
    or (given ``mean``) at most ``ulps`` units of ``eps`` (the precision of the moments)
    of their own mean. Each feature is judged by itself: a feature of 1e-12 beside
    features of 1 is as alive as they are."""
    live = std > 0
    if mean is not None:
        live &= std > ulps * eps * mean.abs()
    return torch.where(live, std, torch.ones_like(std))


class Moments:
    """Streamed per-feature count, mean and population variance, accurate under any offset.

    The first rows seen fix ``shift`` (their float64 mean); sums are of ``x - shift``.
    ``shape``: the feature shape, e.g. ``(hidden,)`` or ``(layers, hidden)``; ``update``
    takes ``(rows, *shape)`` (``axis=0``) or has its rows on ``axis``. ``device``: where
    the float64 sums live.
    """

    def __init__(self, shape, device=None, axis: int = 0):
        self.axis, self.n = axis, 0
        self.shift, self.s1, self.s2 = (torch.zeros(*shape, dtype=torch.float64, device=device)
                                        for _ in range(3))

    def update(self, x: torch.Tensor, owned: bool = False) -> Moments:
        """Add rows ``x``; ``owned``: ``x`` is the caller's float64 scratch copy, which the
        sums may overwrite (one temporary fewer)."""
        if x.shape[self.axis] == 0:
            return self
        y = x.to(device=self.shift.device, dtype=torch.float64)
        if self.n == 0:  # the first rows fix the shift
            self.shift = y.mean(self.axis)
        # in place where y is ours: the caller's scratch (owned) or a converted copy
        d = (y.sub_ if owned or y is not x else y.sub)(self.shift.unsqueeze(self.axis))
        self.s1 += d.sum(self.axis)
        self.s2 += d.square_().sum(self.axis)  # in place: d is ours
        self.n += y.shape[self.axis]
        return self

    def reduced(self, reduce) -> Moments:
        """The moments of all shards (``reduce`` sums over shards, e.g.
        :func:`s3viz.distributed.all_reduce_sum`; every shard calls this: three collectives),
        each shard re-based on the global mean before the sum."""
        out = Moments(self.shift.shape, self.shift.device, self.axis)
        n_all = float(reduce(self.s1.new_tensor([float(self.n)]))[0])
        if n_all <= 0:
            return out
        mean = reduce(self.s1 + self.n * self.shift) / n_all
        d = self.shift - mean  # re-base this shard's sums on the global mean
        s1 = self.s1 + self.n * d
        s2 = self.s2 + 2 * d * self.s1 + self.n * d * d
        out.shift, out.s1, out.s2 = mean, reduce(s1), reduce(s2)
        out.n = int(round(n_all))
        return out

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / max(self.n, 1)

    @property
    def var(self) -> torch.Tensor:
        n = max(self.n, 1)
        m = self.s1 / n
        return (self.s2 / n - m * m).clamp_min(0)


ROUNDING_ULPS = 4  # a spread within this many ulps of its magnitude is rounding
POOLED_ULPS = 4  # pooled vectors: x ROUNDING_ULPS of the frames' size (docs/measures.md)
SAMPLE_ROWS = 4096  # rows kept (every stride-th) for Profile's robust statistics


class DegenerateLayerWarning(UserWarning):
    """A layer is constant, all zero, or varies only at rounding level: its result is NaN."""


def dtype_eps(dtype: torch.dtype) -> float:
    """The unit roundoff of a floating dtype (float32 for anything else)."""
    return torch.finfo(dtype if dtype in (torch.float16, torch.bfloat16, torch.float32,
                                          torch.float64) else torch.float32).eps


def _row_blocks(x: torch.Tensor) -> list[slice]:
    """Blocks of ``x``'s rows of about 256K numbers each: their float64 temporaries (a few
    per block) stay a few MiB, whatever the layer's size (4M numbers made them add up to
    about 4x a 34 MB layer's frames in ABX; benchmarks/peers/abx.py)."""
    step = max(1, (1 << 18) // max(1, x.shape[-1]))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


def pow2_near(v: float) -> float:
    """``2**-e`` with ``v * 2**-e`` in ``[0.5, 1)``: exact to multiply by (1.0 for 0/inf);
    for a subnormal ``v`` (below 2**-1022) the largest finite power, 2**1023, which
    brings it within a few powers of two of 1 instead of overflowing."""
    return (math.ldexp(1.0, min(1023, -math.frexp(v)[1])) if math.isfinite(v) and v > 0.0
            else 1.0)


class Guard:
    """How a measure reads one layer: ``(x - shift) * scale`` in float64, or NaN if degenerate.

    ``scale``: a power of two bringing the values (with ``centre``, their spread) near 1;
    per feature (``(hidden,)``, 0 for a dead feature) for measures that standardise each
    feature. ``shift``: the per-feature median (None without ``centre``). ``reason``: why
    the layer is degenerate (None if it is not).
    """

    def __init__(self, scale, shift: torch.Tensor | None, reason: str | None,
                 outlier: int | None = None):
        self.scale, self.shift, self.reason = scale, shift, reason
        self.outlier = outlier  # the row (counted from 0) farthest from the typical rows

    def __call__(self, x: torch.Tensor, dtype: torch.dtype = torch.float64, device=None
                 ) -> torch.Tensor:
        """``(x - shift) * scale`` in ``dtype`` on ``device`` (default ``x``'s), computed in
        float64 in blocks (no float64 copy of a whole layer)."""
        device = x.device if device is None else device
        out = torch.empty(x.shape, dtype=dtype, device=device)
        scale = self.scale.to(x.device) if isinstance(self.scale, torch.Tensor) else self.scale
        for b in _row_blocks(x):
            y = x[b].to(torch.float64)
            if self.shift is not None:
                y = y - self.shift.to(y.device)
            out[b] = (y * scale).to(device=device, dtype=dtype)
        return out


def _all_in(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every value of ``x`` is exact in ``dtype``."""
    return bool((x.to(dtype).to(x.dtype) == x).all())


def cross_product(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``a^T b`` (``a^T a`` when ``b`` is None), in ``a``'s dtype. On the CPU through numpy:
    its ``a.T @ a`` is BLAS's symmetric rank-k update (half the products of torch's
    ``mm``, which has no such call), and OpenBLAS's float32 ``a.T @ b`` ran about 1.1x
    torch's on one core here (2048- to 8192-row blocks of 768 features)."""
    if b is None:
        b = a
    if a.device.type == "cpu" and a.dtype == b.dtype and a.dtype in (torch.float32,
                                                                     torch.float64):
        # resolve_neg: numpy cannot read a view with torch's lazy negation bit
        an = a.detach().resolve_neg().contiguous().numpy()
        bn = an if b is a else b.detach().resolve_neg().contiguous().numpy()
        return torch.from_numpy(an.T @ bn)
    return a.T @ b


def column_median(x: torch.Tensor) -> torch.Tensor:
    """``x.median(0).values`` (per column, the lower of the two middle values) of a CPU
    ``(rows, columns)`` tensor: numpy's partition of the transposed copy, 2.2x faster
    than torch's median (measured on the 4096-row profile sample); NaN falls back to
    torch, which propagates it where the partition would sort it last."""
    # a NaN (or both infinities) makes the sum NaN: one vectorised pass, no mask
    if x.device.type != "cpu" or x.shape[0] == 0 or math.isnan(float(x.sum())):
        return x.median(0).values
    a = np.ascontiguousarray(x.numpy().T)
    mid = (a.shape[1] - 1) // 2
    a.partition(mid, axis=1)
    return torch.from_numpy(a[:, mid].copy())


class Profile:
    """Streamed magnitude and spread of a layer, to build its :class:`Guard`; rows are added
    times a power of two fixed by the largest value so far (re-based exactly when a larger
    one comes), so that no square under- or overflows in float64."""

    def __init__(self):
        self.mom: Moments | None = None
        self.scale = 1.0  # rows are added as x * scale
        self.rows = 0
        self.peak = 0.0  # largest |x| * scale so far
        self.exact = [torch.float16, torch.float32]  # narrower dtypes holding every value
        self.integral = True  # every value an integer (exact in any float: not rounding)
        # the robust statistics (Profile.robust): a deterministic sample of the rows (every
        # stride-th row, the stride doubling when the sample fills: the same sample
        # whatever the chunking), the per-feature extremes and the farthest row
        self.stride = 1
        self.sample: list[tuple[int, torch.Tensor]] = []
        self.hi: torch.Tensor | None = None
        self.lo: torch.Tensor | None = None
        self.far = (-1.0, None)  # (largest max |x - shift| of a row, its row index)
        # reduced(): the merged shards' robust statistics and (deviations, magnitudes)
        self.robust_override = self.span_override = None

    def update(self, x: torch.Tensor) -> Profile:
        if x.shape[0] == 0:
            return self
        x = x.detach().to(device="cpu")
        # float32 rows are tested, and their extremes taken, in float32 (the same results:
        # every float32 value is exact there); the moments and the sample are float64
        xw = x if x.dtype == torch.float32 else x.to(torch.float64)
        # the precision the values really carry: float32 frames stored as float64 round
        # like float32 (a cheap test, rows are read once anyway; the first row often settles it)
        self.exact = [d for d in self.exact
                      if d == xw.dtype or (_all_in(xw[:1], d) and _all_in(xw, d))]
        self.integral = (self.integral and bool((xw[:1] == xw[:1].round()).all())
                         and bool((xw == xw.round()).all()))
        hi, lo = xw.amax(0).double(), xw.amin(0).double()
        top = float(torch.maximum(hi.abs(), lo.abs()).max())  # = x.abs().max(), one pass fewer
        x = xw.to(torch.float64, copy=True)  # this update's own: overwritten below
        if self.mom is None:
            self.mom = Moments((x.shape[1],))
        if top > 0 and (top * self.scale >= 1.0 or self.peak == 0.0):
            new = pow2_near(top)
            r = new / self.scale
            m = self.mom
            m.shift, m.s1, m.s2 = m.shift * r, m.s1 * r, m.s2 * r * r
            self.scale, self.peak = new, self.peak * r
        self.peak = max(self.peak, top * self.scale)
        self.mom.update(x * self.scale, owned=True)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        idx = torch.arange(self.rows, self.rows + x.shape[0])
        keep = idx % self.stride == 0
        self.sample.extend(zip(idx[keep].tolist(), x[keep]))  # copies, before x is reused
        # deviations in the values' own units (a 1e-300 feature beside one of 1e300 would
        # vanish at the moments' scale), in place in the copy
        dev = x.sub_(self.mom.shift / self.scale).abs_().amax(1)
        k = int(dev.argmax())
        if float(dev[k]) > self.far[0]:
            self.far = (float(dev[k]), self.rows + k)
        while len(self.sample) > SAMPLE_ROWS:
            self.stride *= 2
            self.sample = [(i, r) for i, r in self.sample if i % self.stride == 0]
        self.rows += x.shape[0]
        return self

    def robust(self) -> tuple[torch.Tensor, float, float, torch.Tensor, torch.Tensor]:
        """``(centre, spread, magnitude, mad, level)`` of the typical rows (the sample): the
        per-feature median; the root mean square of ``mad``; the median root mean square of
        a row; per feature, 1.4826 x the median absolute deviation (a higher quantile where
        over half the values sit at the median); per feature, the median ``|x|``."""
        if self.robust_override is not None:
            return self.robust_override
        x = torch.stack([r for _, r in self.sample])
        top = float(x.abs().max())
        f = pow2_near(top)  # exact: no square of 1e300 overflows, none of 1e-300 vanishes
        x.mul_(f)
        centre = column_median(x)
        dev = (x - centre).abs_()
        mad = column_median(dev) * 1.4826
        for q in (0.75, 0.9, 0.99, 1.0):  # sparse features: a higher quantile
            if bool((mad > 0).all()) or q == 1.0:
                break
            mad = torch.where(mad > 0, mad, dev.quantile(q, dim=0) * 1.4826)
        # squares of spreads and rows far below the largest value (1e-162 of it) vanish in
        # float64: each is brought near 1 by a power of two of its own first (exact)
        g = pow2_near(float(mad.max()))
        spread = math.sqrt(float(((mad * g) ** 2).mean())) / g
        ax = x.abs_()  # x is not needed signed any more: |x| in place serves both below
        _, e = torch.frexp(ax.amax(1))
        magnitude = float((torch.ldexp(ax, -e[:, None]).pow_(2).mean(1).sqrt()
                           * torch.ldexp(torch.ones_like(ax[:, 0]), e)).median())
        level = column_median(ax)
        return centre / f, spread / f, magnitude / f, mad / f, level / f

    def reduced(self, reduce) -> Profile:
        """The profile of all shards (``reduce`` sums a tensor over shards; every shard
        calls it), at one common scale (the mean exponent: exact). Medians and maxima
        cannot be summed: how they are merged, ``docs/measures.md`` ("Sharded runs")."""
        f64 = torch.float64
        h = self.mom.shift.shape[0] if self.mom is not None else 0
        info = reduce(torch.tensor([math.log2(self.scale) if self.rows else 0.0,
                                    1.0 if self.rows else 0.0, float(h),
                                    float(not self.integral)]
                                   + [float(d not in self.exact) for d in Profile().exact],
                                   dtype=f64))
        held = max(float(info[1]), 1.0)
        width = int(round(float(info[2]) / held))
        common = 2.0 ** round(float(info[0]) / held)
        mom = self.mom if self.mom is not None else Moments((width,))
        r = common / self.scale
        mom.shift, mom.s1, mom.s2 = mom.shift * r, mom.s1 * r, mom.s2 * r * r
        out = Profile()
        out.mom, out.scale = mom.reduced(reduce), common
        out.rows = out.mom.n
        out.integral = float(info[3]) == 0
        out.exact = [d for d, inexact in zip(out.exact, info[4:].tolist()) if inexact == 0]
        # robust statistics: row-weighted means of the shards' (medians would need a gather)
        n = float(self.rows)
        zero = torch.zeros(width, dtype=f64)
        if self.rows:
            c, sp, mag, mad, level = self.robust()
            c, mad, level = c * common, mad * common, level * common
        else:
            c, sp, mag, mad, level = zero, 0.0, 0.0, zero, zero
        tot = reduce(torch.cat([n * c, n * mad * mad, n * level * level,
                                torch.tensor([n * (sp * common) ** 2, n * mag * common],
                                             dtype=f64)]))
        n_all = max(float(out.rows), 1.0)
        c_sum, mad_sq, level_sq, rest = tot.split([width, width, width, 2])
        centre = c_sum / n_all
        out.robust_override = (centre / common, math.sqrt(float(rest[0]) / n_all) / common,
                               float(rest[1]) / n_all / common, (mad_sq / n_all).sqrt() / common,
                               (level_sq / n_all).sqrt() / common)
        # per feature, the largest deviation from the common centre and the largest |x|:
        # the root of the shards' summed squares (within sqrt(shards) of the largest)
        dev, top = zero, zero
        if self.rows:
            dev = torch.maximum(self.hi * common - centre, centre - self.lo * common)
            top = torch.maximum(self.hi.abs(), self.lo.abs()) * common
        both = reduce(torch.cat([dev * dev, top * top])).sqrt() / common
        out.span_override = (both[:width], both[width:])
        return out

    def guard(self, dtype: torch.dtype, *, centre: bool, reference: torch.Tensor | None = None,
              ulps: float = 1.0, span: float | None = None, per_feature: bool = False
              ) -> Guard:
        """The :class:`Guard` of the profiled values (``docs/measures.md``, "Degenerate layers").

        Args:
            dtype: the dtype the values were computed in (the store's); the narrower one
                every value fits exactly is used instead unless every value is an integer.
            centre: subtract the per-feature median (for offset-invariant measures).
            reference: per feature, the typical size rounding is judged against (default
                the median ``|x|``); pooled vectors pass their frames'.
            ulps: the threshold in multiples of :data:`ROUNDING_ULPS`.
            span: the largest dynamic range, in robust spreads, the measure's arithmetic
                resolves (the ``*_span`` functions; None: no limit).
            per_feature: a power of two per feature, a dead feature reads as 0 (the probes).
        """
        if self.exact and not self.integral and dtype_eps(self.exact[0]) > dtype_eps(dtype):
            dtype = self.exact[0]  # e.g. float32 frames in a float64 store
        tol = ROUNDING_ULPS * dtype_eps(dtype) * ulps
        if not self.rows:
            return Guard(1.0, None, "it has no rows")
        med, rspread, rmag, mad, level = self.robust()
        # per feature, the largest distance of a value from the median and the largest |x|
        dev, top = self.span_override or (torch.maximum(self.hi - med, med - self.lo),
                                          torch.maximum(self.hi.abs(), self.lo.abs()))
        ref = level if reference is None else torch.maximum(level, reference)
        quiet = mad <= tol * ref
        dead = dev <= tol * torch.maximum(top, ref)
        name = str(dtype).replace("torch.", "")
        reason = None
        if bool(quiet.all()):
            if float(top.max()) == 0.0:
                reason = "every value is 0"
            elif float(dev.max()) == 0.0:
                reason = "it is constant (every row is the same)"
            elif bool(dead.all()):
                reason = (f"it varies only at {name} rounding level (every feature within "
                          f"{tol:.1e} of its magnitude)")
            else:
                reason = (f"its typical rows vary at most at {name} rounding level (every "
                          f"feature's robust spread within {tol:.1e} of its magnitude); only "
                          "a few rows differ beyond it{where}")
        scale = 1.0
        if reason is None:
            if per_feature:
                # a quiet feature with a few real rows: its steps are those rows' deviations
                own = torch.where(quiet, dev, mad)
                live = ~dead & (own > 0)
                dyn = float(torch.where(live, dev / torch.where(live, own, 1.0), 0.0).max())
                scale = torch.tensor([pow2_near(float(v)) if ok else 0.0
                                      for v, ok in zip(own.tolist(), live.tolist())],
                                     dtype=torch.float64)
            else:
                dyn = float(dev.max()) / rspread if rspread > 0 else math.inf
                # the typical rows all alike: the root mean square (about the mean) of all
                m = self.mom
                sq = m.var.mean() if centre else (m.var + m.mean * m.mean).mean()
                typical = (rspread if centre else rmag) or math.sqrt(float(sq)) / self.scale
                scale = pow2_near(typical)
            if span is not None and dyn > span:
                reason = (f"one or more rows lie {dyn:.1e} robust spreads from its median "
                          f"(largest deviation {float(dev.max()):.3g} against a typical spread "
                          f"{rspread:.3g}{{where}}), beyond the {span:.1e} this measure's "
                          "arithmetic resolves: its typical rows would be lost to rounding")
        shift = med if centre else None
        return Guard(scale if reason is None else 1.0, shift, reason, self.far[1])


# The dynamic ranges (in robust spreads) each arithmetic resolves: the table and the
# reasoning are in docs/measures.md ("Far frames").
def float32_squares_span(width: int) -> float:
    """k-means (nearest centroid): squared distances of ``width`` features, summed over up
    to 1e7 rows, stay below float32's largest number."""
    return math.sqrt(torch.finfo(torch.float32).max / (max(width, 1) * 1e7))


def float32_distances_span() -> float:
    """Float32 distances from a far row compared with each other (ABX): two digits kept."""
    return 1e-2 / torch.finfo(torch.float32).eps


def float64_sums_span() -> float:
    """Float64 sums of squares (the ridge probe's ``X^T X``): three digits of the typical
    rows' squares kept."""
    return math.sqrt(1e-3 / torch.finfo(torch.float64).eps)


def tensor_guard(x: torch.Tensor, dtype: torch.dtype, *, centre: bool,
                 span: float | None = None, names=None, per_feature: bool = False) -> Guard:
    """The :class:`Guard` of rows already in memory (``dtype``: the precision they were
    computed in, e.g. the store's; ``span``, ``per_feature``: see :meth:`Profile.guard`;
    ``names``: a callable naming a row, for the message)."""
    prof = Profile()
    for b in _row_blocks(x):
        prof.update(x[b])
    return profile_guard(prof, dtype, centre=centre, span=span, per_feature=per_feature,
                         names=names)


def row_names(store, layer: int, utterances=None):
    """A callable naming row ``i`` of a layer's frames (as read with ``utterances``)."""
    lengths = np.asarray(store.lengths(layer))
    pos = np.arange(len(lengths)) if utterances is None else np.asarray(utterances, dtype=int)
    offs = np.concatenate([[0], np.cumsum(lengths[pos])])

    def name(i: int) -> str:
        u = int(np.searchsorted(offs, i, side="right") - 1)
        return f"utterance {store.ids[int(pos[u])]!r}, frame {int(i - offs[u])}"
    return name


def profile_layer(store, layer: int, utterances=None, *, chunk_frames: int = 65536) -> Profile:
    """One streamed pass over a stored layer's frames (in the store's precision)."""
    prof = Profile()
    for x, _ in store.iter_layer(layer, utterances=utterances, chunk_frames=chunk_frames,
                                 dtype=read_dtype(store)):
        prof.update(x)
    return prof


def layer_guard(store, layer: int, utterances=None, *, centre: bool, level: str = "frame",
                reduce=None, span: float | None = None, per_feature: bool = False,
                chunk_frames: int = 65536) -> Guard:
    """The :class:`Guard` of a stored layer, at frame or utterance level (the mean-pooled
    vectors, judged against the typical size of the frames they are means of).
    ``reduce``: sharded runs (every shard calls this; one common guard). ``span``,
    ``per_feature``: see :meth:`Profile.guard`. ``chunk_frames``: frames profiled at a
    time (each makes a few float64 copies)."""
    dtype = getattr(store, "store_dtype", torch.float32)
    if getattr(store, "_precision", None) is not None:  # a segment store: its frames' precision
        dtype = store._precision[layer]
    frames = profile_layer(store, layer, utterances, chunk_frames=chunk_frames)
    pooled = None if level == "frame" else Profile().update(torch.as_tensor(
        store.pooled(layer, utterances=utterances, dtype=read_dtype(store))))
    names = None
    if reduce is not None:  # one guard of every shard's rows: no row to name
        frames = frames.reduced(reduce)
        pooled = None if pooled is None else pooled.reduced(reduce)
    elif pooled is None:
        names = row_names(store, layer, utterances)
    else:
        ids = list(store.ids) if utterances is None else [store.ids[int(u)] for u in utterances]
        names = lambda i: f"utterance {ids[i]!r}"  # noqa: E731
    return profile_guard(frames, dtype, pooled=pooled, centre=centre, span=span,
                         per_feature=per_feature, names=names)


def profile_guard(frames: Profile, dtype: torch.dtype, *, pooled: Profile | None = None,
                  centre: bool, span: float | None = None, per_feature: bool = False,
                  names=None) -> Guard:
    """The :class:`Guard` of a layer from the :class:`Profile` of its frames (frame
    level) or of its pooled vectors (``pooled``: utterance level, judged against the
    typical size of the frames they are means of, in the frames' precision)."""
    if pooled is None:
        guard = frames.guard(dtype, centre=centre, span=span, per_feature=per_feature)
    else:
        pooled.exact, pooled.integral = frames.exact, frames.integral  # the frames' precision
        typical = frames.robust()[4] if frames.rows else None  # the frames' typical size
        guard = pooled.guard(dtype, centre=centre, reference=typical, ulps=POOLED_ULPS,
                             span=span, per_feature=per_feature)
    if guard.reason and "{where}" in guard.reason:  # name the farthest row
        where = "" if names is None or guard.outlier is None else \
            f"; the farthest row: {names(guard.outlier)}"
        guard.reason = guard.reason.replace("{where}", where)
    return guard


def warn_degenerate(measure: str, reasons: dict, what: str = "results") -> None:
    """One :class:`DegenerateLayerWarning` naming every degenerate layer of a call."""
    bad = {k: v for k, v in reasons.items() if v}
    if not bad:
        return
    names = "; ".join(f"stored layer {k}: {v}" for k, v in bad.items())
    warnings.warn(f"{measure} gives NaN {what} for {len(bad)} degenerate layer(s) ({names}). "
                  "A layer without variation beyond rounding carries no information to "
                  "measure, and one whose typical rows the measure's arithmetic cannot "
                  "resolve beside a far row has no trustworthy number; check the upstream "
                  "(e.g. a normalisation per utterance before mean pooling, a frame of "
                  "overflowing activations) or leave the layer out with layers=",
                  DegenerateLayerWarning, stacklevel=3)


@contextlib.contextmanager
def renamed_layers(mapping):
    """Re-issue the :class:`DegenerateLayerWarning` raised inside with "stored layer k" read
    as ``mapping[k]``: a measure of a derived store (segment means) names its caller's
    layers. Other warnings pass through unchanged."""
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # re-issued outside the recording, even when the body raised
        for w in caught:
            if issubclass(w.category, DegenerateLayerWarning):
                text = re.sub(r"stored layer (\d+):",
                              lambda m: f"stored layer {mapping[int(m.group(1))]}:",
                              str(w.message))
                warnings.warn(text, w.category, stacklevel=3)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def unit_rows(x: torch.Tensor, dtype: torch.dtype = torch.float32, *,
              in_place: bool = False) -> torch.Tensor:
    """The rows of ``x`` divided by their L2 norm (zero rows stay zero), in ``dtype``: each
    row is first brought near 1 by a power of two of its own (exact), then normalised in
    float64, so a norm of 1e-30 or 1e300 is no different from a norm of 1. ``in_place``
    (``x`` already in ``dtype``) writes them over ``x``: each block is read before it is
    written, and no second layer-sized tensor is made."""
    out = x if in_place and x.dtype == dtype else torch.empty(x.shape, dtype=dtype,
                                                              device=x.device)
    for b in _row_blocks(x):
        y = x[b].to(torch.float64)
        _, e = torch.frexp(y.abs().amax(1, keepdim=True))
        y = torch.ldexp(y, -e)
        norm = y.norm(dim=1, keepdim=True)
        out[b] = torch.where(norm > 0, y / torch.where(norm > 0, norm, 1.0), y).to(dtype)
    return out
