"""The ridge probe's fits of every fold: from :class:`~.stats.ProbeStats` (summed by
the :class:`~s3viz.measures.RidgeProbe` measure) with a penalty picked on a dev fold
from :data:`LAMBDAS`, or for few utterances in the ``n x n`` dual."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._numerics import Guard, safe_scale
from .folds import fold_class_counts
from .stats import ProbeStats, _ridge_solve
from .targets import ProbeTask

LAMBDAS = tuple(float(v) for v in 10.0 ** np.linspace(-5.0, 3.0, 12))
"""Penalty grid of the ridge probe, relative to the mean eigenvalue of the
standardised feature covariance (which is 1)."""


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, c: int) -> np.ndarray:
    return torch.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c).cpu().numpy()


def fold_scores(x: torch.Tensor, fold: torch.Tensor, models) -> torch.Tensor:
    """``(n, C_all)`` scores of examples ``x`` under the stacked ``models`` of their folds."""
    w, b, _ = models
    out = torch.empty(x.shape[0], w.shape[2], dtype=w.dtype, device=x.device)
    for f in torch.unique(fold).tolist():
        r = fold == f
        out[r] = x[r].to(w.dtype) @ w[f] + b[f]
    return out


def add_confusions(conf: torch.Tensor, x, y, fold, models, blocks: list[slice], c: int):
    """Add to ``conf`` ``(blocks, folds, C, C)`` the confusions of examples ``x`` (classes
    ``y`` ``(n, blocks)``) under the stacked ``models`` of their folds ``fold``; returns
    ``(n, blocks)`` whether each example's class was right."""
    scores = fold_scores(x, fold, models)
    right = torch.empty(y.shape, dtype=torch.bool, device=y.device)
    for bi, blk in enumerate(blocks):
        pred, true = scores[:, blk].argmax(1), y[:, bi] - bi * c
        right[:, bi] = pred == true
        conf[bi] += torch.bincount(fold * (c * c) + true * c + pred, minlength=conf.shape[1] * c * c
                                   ).reshape(conf.shape[1:]).to(conf.device)
    return right


def add_residuals(sums: torch.Tensor, x, y, fold, models, train_mean: torch.Tensor,
                  centre: torch.Tensor):
    """Add to ``sums`` ``(blocks, folds, 6)`` the held-out ``count, sum (y - c), sum
    (y - c)^2, sum of squared residuals, sum of squared deviations from the training
    mean, sum c`` of examples ``x`` (float targets ``y`` ``(n, blocks)``) under the
    models of their folds; ``c`` (``centre``, ``(n, blocks)``) is a point near each
    example's fold mean, so a fold's spread is not lost to cancellation
    (``docs/probes.md``); returns the ``(n, blocks)`` residuals."""
    y = y.to(torch.float64)
    resid = y - fold_scores(x, fold, models).to(torch.float64)
    base = y - train_mean.to(torch.float64)[fold]
    dev = y - centre
    folds = sums.shape[1]
    for bi in range(y.shape[1]):
        for j, v in enumerate((torch.ones_like(y[:, bi]), dev[:, bi], dev[:, bi] ** 2,
                               resid[:, bi] ** 2, base[:, bi] ** 2, centre[:, bi])):
            sums[bi, :, j] += torch.bincount(fold, weights=v, minlength=folds).to(sums.device)
    return resid


def stacked(models: list) -> tuple:
    """Per-fold ``(weight, bias, lambdas)`` stacked, the penalties averaged over folds."""
    return (torch.stack([m[0] for m in models]), torch.stack([m[1] for m in models]),
            np.mean([m[2] for m in models], axis=0))


def _dev_fold(k: int, folds: int, sub: int) -> tuple[list[int], list[int]]:
    """(groups of test fold k, groups of its dev part) in the sub-fold numbering."""
    return [k * sub + s for s in range(sub)], [((k + 1) % folds) * sub]


def ridge_fit_folds(stats: ProbeStats, folds: int, sub: int, blocks: list[slice],
                     lambdas: Sequence[float]):
    """Per fold: (weight (H, C_all), bias (C_all,), chosen lambdas per block)."""
    models = []
    for k in range(folds):
        test, dev = _dev_fold(k, folds, sub)
        chosen = [lambdas[0]] * len(blocks)
        if len(lambdas) > 1:
            mse = stats.without(test + dev).dev_mse(stats.select(dev), lambdas)  # (nl, C)
            chosen = [lambdas[int(torch.argmin(mse[:, blk].sum(1)))] for blk in blocks]
        train = stats.without(test)
        mu, sd, ybar, a, b = train._moments()
        ws = torch.empty_like(b)
        for lam in set(chosen):  # one factorisation per distinct penalty
            cols = torch.cat([torch.arange(blk.start, blk.stop)
                              for blk, lb in zip(blocks, chosen) if lb == lam]).to(b.device)
            ws[:, cols] = _ridge_solve(a, b[:, cols], lam)
        w = ws / sd[:, None]
        models.append((w, ybar - (train.shift + mu) @ w, chosen))
    return models


def fold_train_counts(stats: ProbeStats, folds: int, sub: int):
    """Class counts ``(folds, C_all)`` and examples ``(folds,)`` of each fold's training part."""
    test = stats.sum_y.reshape(folds, sub, -1).sum(1).cpu().numpy()
    n_test = stats.count.reshape(folds, sub).sum(1).cpu().numpy()
    return test.sum(0, keepdims=True) - test, n_test.sum() - n_test


def _dual_standardize(x: torch.Tensor, idx: torch.Tensor):
    """Mean, scale (as :meth:`ProbeStats.solve` standardises) and standardised rows ``idx``."""
    xs = x[idx]
    mu = xs.mean(0)
    sd = safe_scale(xs.std(0, unbiased=False), mean=mu)
    return mu, sd, (xs - mu) / sd


def ridge_fit_folds_dual(x: torch.Tensor, yoh: torch.Tensor, g: torch.Tensor, folds: int,
                          sub: int, blocks: list[slice], lambdas: Sequence[float]):
    """:func:`ridge_fit_folds` of ``n <= hidden_size`` examples ``x`` (float64) with
    one-hot targets ``yoh`` and sub-folds ``g``, solved in the dual:
    ``W = Z^T (Z Z^T + n lam I)^-1 Yc`` (``Z``: the standardised training examples)."""
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


def ridge_layer_utterance(task: ProbeTask, x: torch.Tensor, lambdas, guard: Guard | None = None):
    """The ridge fits of ``n <= hidden_size`` pooled vectors ``x`` (every selected
    utterance, read through ``guard``) in the dual: ``(x as fitted, stacked models,
    (training part's class counts or target sums (folds, C_all), its examples (folds,)))``."""
    if guard is not None:
        x = guard(x, torch.float64)
    x = x.to(torch.float64)
    folds, blocks, c = task.folds, task.blocks, task.width
    sub = 2 if folds == 2 else 1
    y_np = task.heads(np.arange(len(task.sel)))
    g = torch.from_numpy(task.sub_folds(lambdas)).to(x.device)
    if task.continuous:
        yoh = torch.from_numpy(np.ascontiguousarray(y_np, dtype=np.float64)).to(x.device)
        train = np.stack([np.bincount(task.utt_fold, weights=h, minlength=folds)
                          for h in y_np.T], 1)
        train = train.sum(0, keepdims=True) - train
    else:
        train = np.concatenate([fold_class_counts(h, task.utt_fold, folds, c)[1]
                                for h in y_np.T], 1).astype(np.float64)
        y_np[:, 1:] += c
        y = torch.from_numpy(y_np).to(x.device)
        yoh = torch.zeros(x.shape[0], len(blocks) * c, dtype=x.dtype, device=x.device)
        for bi in range(len(blocks)):
            yoh[torch.arange(x.shape[0], device=x.device), y[:, bi]] = 1.0
    models = stacked(ridge_fit_folds_dual(x, yoh, g, folds, sub, blocks, lambdas))
    n_test = np.bincount(task.utt_fold, minlength=folds)
    return x, models, (train, n_test.sum() - n_test)
