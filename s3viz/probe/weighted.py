""":class:`WeightedScorer`: the probe score of any weighted sum of layers, in milliseconds.

The ridge probe of :func:`s3viz.probe_layers` (one held-out fold) on ``sum_l w_l x_l``,
from cross-layer statistics cached once, so that a widget can re-score every slider
move (``docs/featurizers.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import _validate as _v
from .._device import resolve_device as _resolve_device
from ..featurizer_training import ProbeData
from ..featurizers import as_vector
from .ridge import LAMBDAS
from .stats import ProbeStats

__all__ = ["BASES", "WeightedScorer"]


class _Blocks:
    """Cross-layer statistics of projected features ``R_l = Z_l P``: ``gram (L, k, L, k)``
    ``R_l^T R_m``, ``cross (L, k, C)`` ``R_l^T Y``, ``sums (L, k)`` ``R_l^T 1``, class
    ``counts``. Summed in float64; ``gram`` is then kept in float32 (a move reads it
    whole: half the bytes, twice the speed; about 1e-6 relative)."""

    def __init__(self, L: int, k: int, C: int, device):
        kw = {"dtype": torch.float64, "device": device}
        self.L, self.k, self.C = L, k, C
        self.gram = torch.zeros(L * k, L * k, **kw)
        self.cross = torch.zeros(L * k, C, **kw)
        self.sums = torch.zeros(L * k, **kw)
        self.counts = torch.zeros(C, **kw)

    def update(self, r: torch.Tensor, y: torch.Tensor):
        """``r``: ``(n, L*k)`` projected frames of all layers side by side; ``y``: ``(n,)`` long."""
        onehot = F.one_hot(y, self.C).to(r.dtype)
        self.gram += (r.T @ r).double()
        self.cross += (r.T @ onehot).double()
        self.sums += r.sum(0).double()
        self.counts += onehot.sum(0).double()

    def finish(self) -> _Blocks:
        L, k, C = self.L, self.k, self.C
        self.gram = self.gram.cpu().view(L, k, L, k).float()
        self.cross = self.cross.cpu().view(L, k, C)
        self.sums = self.sums.cpu().view(L, k)
        self.counts = self.counts.cpu()
        return self

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def stats(self, w: torch.Tensor):
        """:class:`s3viz.ProbeStats` of the weighted sum ``sum_l w_l R_l`` (one group)."""
        wg = w.to(self.gram.dtype)  # sum_lm w_l w_m G_lm, reading the gram once
        gram = torch.tensordot(torch.tensordot(wg, self.gram, dims=([0], [0])), wg,
                               dims=([1], [0]))
        return ProbeStats(
            self.counts.sum().reshape(1),
            torch.einsum("l,lk->k", w, self.sums)[None],
            gram.double()[None],
            self.counts[None],
            torch.einsum("l,lkc->kc", w, self.cross)[None],
            self.counts[None].clone(),
        )


BASES = ("mixed", "pca", "supervised")
"""How :class:`WeightedScorer` chooses its shared basis (``docs/featurizers.md``)."""


def _eig_desc(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh(0.5 * (mat + mat.T))
    order = torch.argsort(evals, descending=True)
    return evals[order], evecs[:, order]


def _basis(cov: torch.Tensor, between: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    """``(H, k)`` orthonormal basis from the pooled covariance and between-class scatter."""
    if kind == "pca":
        return _eig_desc(cov)[1][:, :k]
    evals, evecs = _eig_desc(between)
    rank = int((evals > 1e-9 * max(float(evals[0]), 1e-300)).sum())
    k_sup = min(k if kind == "supervised" else (k + 1) // 2, rank)
    sup = evecs[:, :k_sup]
    if k_sup == k:
        return sup
    # the rest: principal components of what the supervised directions leave
    side = cov - sup @ (sup.T @ cov)
    side = side - (side @ sup) @ sup.T
    rest = _eig_desc(side)[1][:, : k - k_sup]
    return torch.linalg.qr(torch.cat([sup, rest], dim=1))[0]


class WeightedScorer:
    """Probe accuracy of the weighted sum of layers, for any weights, in milliseconds.

    A score is the ridge probe of :func:`s3viz.probe_layers` for one held-out fold on
    ``sum_l w_l Z_l`` (the selected layers standardised, seen through one shared basis
    of ``dims`` directions), from blocks cached in one pass (``docs/featurizers.md``).

    Args:
        test_fraction: in (0, 0.5]; the other arguments of the split as in
            :func:`train_featurizer`.
        dims: ``None`` (no projection) only for ``num_layers * hidden_size <= 4096``.
        basis: one of :data:`BASES` or a ``(hidden_size, dims)`` tensor of your own.
        lambdas: one value is a fixed penalty (default: ``probe_layers``' grid).
        pca_frames: training frames used to estimate the basis.
        device: where the one-off statistics are computed; each score runs on the
            CPU in float64.
    """

    def __init__(self, store, target: str, *, level: str = "frame", layers=None,
                 dims: int | None = 128, lambdas: Sequence[float] | None = None,
                 target_rate: int | None = None, split_by: str = "auto",
                 test_fraction: float = 0.25, seed: int = 0, device=None,
                 pca_frames: int = 4096, basis="mixed", utterances=None):
        self.data = data = ProbeData(store, target, level=level, layers=layers,
                                     target_rate=target_rate, split_by=split_by,
                                     test_fraction=test_fraction, seed=seed,
                                     utterances=utterances)
        self.layers, self.classes = list(data.layers), list(data.classes)
        self.split_by = data.split_by  # the split "auto" (or the caller) chose
        self.level, self.target = level, target
        self.lambdas = tuple(_v.numbers(LAMBDAS if lambdas is None else lambdas, "lambdas"))
        L, H, C = len(self.layers), data.hidden_size, len(self.classes)
        if dims is None:
            if L * H > 4096:
                raise ValueError(f"dims=None keeps all {H} dimensions, which needs a "
                                 f"({L * H})^2 Gram matrix; pass dims=128 (or fewer)")
            dims = H
        self.dims = k = min(_v.integer(dims, "dims"), H)
        dev = _resolve_device(device)
        if len(data.dev_utts) == 0 or len(data.fit_utts) == 0:
            raise ValueError("the split left no dev or training utterances; lower test_fraction "
                             "or give more utterances / speakers")

        # 1. shared basis from a sample of training utterances
        if isinstance(basis, torch.Tensor):
            if basis.ndim != 2 or basis.shape[0] != H or basis.shape[1] > H:
                raise ValueError(f"basis must be a (hidden_size={H}, dims) tensor, got "
                                 f"{tuple(basis.shape)}")
            self.basis = torch.linalg.qr(basis.double().cpu())[0].float()
            k = self.dims = self.basis.shape[1]
        elif basis not in BASES:
            raise ValueError(f"basis must be one of {BASES} or a (hidden_size, dims) tensor, "
                             f"got {basis!r}")
        elif k < H:
            order = np.random.default_rng(seed).permutation(data.fit_utts)  # not dev's
            xs, y = data.examples(next(data.runs(order, pca_frames)))
            onehot = F.one_hot(y, C).double().to(dev)
            inv_n = 1.0 / onehot.sum(0).clamp(min=1.0)
            cov = torch.zeros(H, H, dtype=torch.float64, device=dev)
            between = torch.zeros(H, H, dtype=torch.float64, device=dev)
            for x in xs:
                x = x.to(dev)
                cov += (x.T @ x).double()
                sums = onehot.T @ x.double()  # (C, H) class sums
                between += sums.T @ (sums * inv_n[:, None])
            self.basis = _basis(cov, between, k, basis).float().cpu()
        else:
            self.basis = None
        basis = None if self.basis is None else self.basis.to(dev)

        # 2. cross-layer blocks over the fit and dev utterances, in chunks of utterances
        self.fit_blocks = _Blocks(L, k, C, dev)
        self.dev_blocks = _Blocks(L, k, C, dev)
        for part, utts in ((self.fit_blocks, data.fit_utts), (self.dev_blocks, data.dev_utts)):
            for a in range(0, len(utts), 64):
                xs, y = data.examples(utts[a:a + 64])
                if len(y):
                    part.update(torch.cat([self._project(x.to(dev), basis) for x in xs], dim=1),
                                y.to(dev))
            part.finish()
        if self.fit_blocks.n == 0 or self.dev_blocks.n == 0:
            raise ValueError("no labelled frames in the training or dev part of the split")
        self.n_train = self.fit_blocks.n + self.dev_blocks.n

        # 3. projected test frames (unseen classes stay: always wrong, as in the probes)
        xs, self.y_test = data.examples(data.test_utts, unseen=True)
        self.chance, self.n_test_unseen = data.chance, data.n_test_unseen
        self.n_test = len(self.y_test)
        if self.n_test == 0:
            raise ValueError("no labelled test frames: the held-out split has no labels")
        self.test = torch.stack([self._project(x.to(dev), basis).cpu()
                                 for x in xs]).double()  # (L, n_test, k)

    @staticmethod
    def _project(x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        return x if basis is None else x @ basis

    def _weights(self, weights) -> torch.Tensor:
        w = as_vector(weights, len(self.layers), "weights", self.layers, nonnegative=True)
        total = float(w.sum())
        if total <= 0:
            raise ValueError("weights are all zero; give at least one positive weight")
        return w / total

    def probe(self, weights):
        """Ridge probe of the weighted sum with ``weights`` (as in :meth:`evaluate`):
        ``(weight, bias, lam)``, float64 ``(dims, num_classes)`` and ``(num_classes,)``
        (projected frames ``x`` score ``x @ weight + bias``) and the penalty used."""
        w = self._weights(weights)
        fit, dev = self.fit_blocks.stats(w), self.dev_blocks.stats(w)
        if len(self.lambdas) == 1:  # a fixed penalty: no dev choice
            lam = self.lambdas[0]
        else:
            mse = fit.dev_mse(dev, self.lambdas)  # (num_lambdas, C)
            lam = self.lambdas[int(torch.argmin(mse.sum(1)))]
        weight, bias = (fit + dev).solve(lam)
        return weight, bias, lam

    def evaluate(self, weights) -> dict[str, float]:
        """Probe the weighted sum with ``weights``.

        Args:
            weights: ``(num_layers,)`` non-negative weights, one per selected layer
                (sequence, array, tensor, or Series / dict keyed by layer); they
                are normalised to sum to 1.

        Returns:
            dict with ``accuracy`` (on the test frames; NaN when every weight is on
            degenerate layers, which read as zeros), ``chance`` (the training majority
            class on the same frames), ``lam`` (the ridge penalty), ``n_train``,
            ``n_test`` and ``n_test_unseen`` (test frames whose class training lacks:
            wrong in both ``accuracy`` and ``chance``; :class:`ProbeData`).
        """
        w = self._weights(weights)
        weight, bias, lam = self.probe(w)
        x = torch.einsum("l,lnk->nk", w, self.test)
        pred = (x @ weight + bias).argmax(1)
        acc = float((pred == self.y_test).double().mean())
        live = torch.tensor([not self.data.degenerate.get(l_) for l_ in self.layers])
        if not bool((w.cpu()[live] > 0).any()):  # only degenerate layers (read as zeros)
            acc = float("nan")
        return {"accuracy": acc, "chance": self.chance, "lam": lam, "n_train": self.n_train,
                "n_test": self.n_test, "n_test_unseen": self.n_test_unseen}

    def score(self, weights) -> float:
        """Test accuracy of the ridge probe on the weighted sum (see :meth:`evaluate`)."""
        return self.evaluate(weights)["accuracy"]

    def layer_scores(self) -> pd.Series:
        """Accuracy of each single layer (one-hot weights), indexed by layer
        (``attrs["split_by"]``: the split)."""
        out = [self.score(w) for w in np.eye(len(self.layers))]
        scores = pd.Series(out, index=pd.Index(self.layers, name="layer"), name="accuracy")
        scores.attrs["split_by"] = self.split_by
        return scores

    def __repr__(self) -> str:
        return (f"WeightedScorer(target={self.target!r}, level={self.level!r}, layers={self.layers}, "
                f"dims={self.dims}, classes={len(self.classes)}, split_by={self.split_by!r}, "
                f"n_train={self.n_train}, n_test={self.n_test})")
