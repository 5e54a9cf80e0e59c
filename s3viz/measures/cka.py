"""Linear CKA between every pair of layers, in one pass summing the accumulator of
``layer_similarity`` (exact estimator, :class:`~s3viz.similarity.CrossProducts`) and,
with ``bootstrap=``, per-speaker sums of a per-utterance estimator; ``docs/similarity.md``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .._bootstrap import Bootstrap, bootstrap_options, items_digest, resampling_units
from .._cka_bootstrap import UtteranceHSIC, cka_interval_table
from .. import _validate as _v
from .._numerics import Profile, profile_guard, warn_degenerate
from ..similarity import CrossProducts, check_bootstrap, cka_table
from ._engine import Batch, Context, Measure

__all__ = ["LayerCKA"]


class LayerCKA(Measure):
    """Feature-space linear CKA of every layer with every other.

    Args:
        level: ``"frame"`` (every layer must have the same frames) or
            ``"utterance"`` (mean-pooled vectors).
        bootstrap, confidence: error bars over resampled speakers (or utterances), as
            for :func:`s3viz.layer_similarity` (``level="frame"`` only).
        seed: seed of the resamples.

    ``compute()`` gives the table of :func:`s3viz.layer_similarity` (with ``bootstrap``,
    its long table).
    """

    name = "cka"
    passes = 1

    def __init__(self, level: str = "frame", *, bootstrap: int | None = None,
                 confidence: float = 0.95, seed: int = 0):
        super().__init__()
        if level not in ("frame", "utterance"):
            raise ValueError(f"cka level must be 'frame' or 'utterance', got {level!r}")
        self.level = level
        self.resamples, self.confidence = bootstrap_options(bootstrap, confidence)
        self.seed = _v.integer(seed, "seed", minimum=0)
        if self.resamples:
            check_bootstrap("cka", level, None, None)

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        if self.level == "frame" and len(set(ctx.rates)) > 1:
            raise ValueError(f"frame-level CKA needs one downsample rate, got "
                             f"{sorted(set(ctx.rates))}; use level='utterance'")
        n_l, sizes = ctx.num_layers, ctx.sizes
        pairs = [(i, j) for i in range(n_l) for j in range(i, n_l)]
        self.add_state("products", CrossProducts(pairs, ctx.device, torch.float64),
                       lambda cp, reduce: cp.reduced(reduce, sizes))
        # the guard of every measure (s3viz._numerics): a degenerate layer gets NaN
        merge = (lambda profs, reduce: [p.reduced(reduce) for p in profs])
        self.add_state("frames", [Profile() for _ in range(n_l)], merge)
        self.add_state("pooled", [Profile() for _ in range(n_l)] if self.level == "utterance"
                       else None, merge)
        self.boot = None
        if self.resamples:  # per-unit sums: the units of the whole corpus on every rank
            self.unit_of, names, kind = resampling_units(ctx.meta.labels)
            self.boot = Bootstrap(names, kind, self.resamples, self.confidence, self.seed,
                                  items=items_digest(ctx.meta.labels))
        self.add_state("hsic", UtteranceHSIC(len(self.boot.names), n_l, ctx.device) if self.boot
                       else None, lambda h, reduce: h.reduced(reduce))

    def update(self, batch: Batch, pass_index: int) -> None:
        if self.level == "frame":
            if not (batch.lens == batch.lens[:, :1]).all():
                raise ValueError("frame-level CKA needs the same frames in every layer; "
                                 "use level='utterance'")
            self.products.add(batch.frames)
            if self.hsic is not None:
                offs = np.concatenate([[0], np.cumsum(batch.lens[:, 0])])
                for k, u in enumerate(batch.positions):
                    self.hsic.add([f[offs[k]:offs[k + 1]] for f in batch.frames],
                                  int(self.unit_of[int(u)]))
        else:
            self.products.add([batch.pooled(s) for s in range(self.ctx.num_layers)])
        for s in range(self.ctx.num_layers):
            self.frames[s].update(batch.frames[s])
            if self.pooled is not None:
                self.pooled[s].update(batch.pooled(s))

    def compute(self) -> pd.DataFrame:
        hsic, n = self.products.hsic()  # merged over ranks: centred on the global mean
        if n < 4:
            raise ValueError(f"only {n} frames to compare; CKA needs at least 4")
        ctx = self.ctx
        idx = list(range(ctx.num_layers))
        bad = [profile_guard(self.frames[s], ctx.store_dtype, centre=True,
                             pooled=None if self.pooled is None else self.pooled[s]).reason
               for s in idx]
        df = cka_table(hsic, ctx.layer_index, ctx.layer_index, idx, idx, bad,
                       upstream_layers=list(ctx.layer_ids),
                       other_upstream_layers=list(ctx.layer_ids), num_frames=int(n),
                       estimator="feature", level=self.level, method="cka",
                       weights=ctx.weights)
        warn_degenerate("layer_similarity", dict(zip(ctx.layer_index, bad)), "CKA")
        if self.boot is not None:
            df = cka_interval_table(df, self.hsic, self.boot, idx, idx)
        return df
