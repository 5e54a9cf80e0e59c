"""CKA's error bars: per-unit sums of a per-utterance estimator, resampled.

Each utterance's frames form one minibatch (Nguyen, Raghu & Kornblith 2021) whose
unbiased HSIC (Song et al. 2012) of every layer pair is summed per speaker (or
utterance); a replicate is ``sum HSIC_xy / sqrt(sum HSIC_xx sum HSIC_yy)`` over a
resample's units, shifted by ``cka - m`` (``m``: the estimator on all the data) so the
interval is centred on the exact CKA (``docs/similarity.md``, "Error bars").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ._bootstrap import MIN_UNITS, Bootstrap, add_interval_columns

__all__ = ["MIN_FRAMES", "UtteranceHSIC", "cka_interval_table", "utterance_hsic"]

MIN_FRAMES = 4  # the unbiased HSIC's least number of frames
GRAM_NUMBERS = 1 << 24  # float64 numbers of the Gram rows held at a time (128 MiB)


def utterance_hsic(xs) -> torch.Tensor:
    """``(L, L)`` unbiased HSIC (float64) of the linear Grams of ``L`` layers' ``(n,
    H_l)`` frames of one utterance (``n >= 4``), from blocks of Gram rows (memory
    ``GRAM_NUMBERS``, not ``L n^2``)."""
    xs = [x.to(torch.float64) for x in xs]
    xs = [x - x.mean(0) for x in xs]  # HSIC_u is shift-invariant; centring keeps it exact
    n, n_l = xs[0].shape[0], len(xs)
    dev = xs[0].device
    step = max(1, GRAM_NUMBERS // max(1, n_l * n))
    kl = torch.zeros(n_l, n_l, dtype=torch.float64, device=dev)  # sum_ij K_ij L_ij
    rows = torch.zeros(n_l, n, dtype=torch.float64, device=dev)   # row sums
    for a in range(0, n, step):
        b = min(n, a + step)
        block = torch.stack([x[a:b] @ x.T for x in xs])  # (L, b - a, n)
        idx = torch.arange(a, b, device=dev)
        block[:, idx - a, idx] = 0  # the zero diagonal of the unbiased estimator
        flat = block.reshape(n_l, -1)
        kl += flat @ flat.T
        rows[:, a:b] = block.sum(2)
    s = rows.sum(1)
    return (kl + torch.outer(s, s) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (rows @ rows.T)) / (n * (n - 3))


class UtteranceHSIC:
    """Per-unit sums ``(units, L, L)`` of :func:`utterance_hsic`, and how many
    utterances were too short (fewer than ``MIN_FRAMES`` frames) to add anything."""

    def __init__(self, units: int, layers: int, device="cpu"):
        self.per_unit = torch.zeros(units, layers, layers, dtype=torch.float64, device=device)
        self.short = torch.zeros(1, dtype=torch.float64, device=device)
        self.used = torch.zeros(units, dtype=torch.float64, device=device)  # utterances added

    def add(self, xs, unit: int) -> None:
        """Add one utterance's frames ``xs`` (one ``(n, H_l)`` tensor per layer) to ``unit``."""
        if xs[0].shape[0] < MIN_FRAMES:
            self.short += 1
            return
        self.per_unit[unit] += utterance_hsic(xs).to(self.per_unit.device)
        self.used[unit] += 1

    def reduced(self, reduce) -> UtteranceHSIC:
        """The sums over shards (``reduce`` sums a tensor over them)."""
        self.per_unit, self.short = reduce(self.per_unit), reduce(self.short)
        self.used = reduce(self.used)
        return self


def _ratio(h: np.ndarray, i: int, j: int) -> np.ndarray:
    """CKA ``h[..., i, j] / sqrt(h[..., i, i] h[..., j, j])`` (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt(h[..., i, i] * h[..., j, j])
        return np.where(den > 0, h[..., i, j] / np.where(den > 0, den, 1.0), np.nan)


def cka_interval_table(square: pd.DataFrame, hsic: UtteranceHSIC, boot: Bootstrap,
                       row_idx, col_idx) -> pd.DataFrame:
    """The long table of a bootstrapped CKA: one row per cell of ``square`` (the exact
    CKA, rows and columns items ``row_idx``/``col_idx`` of ``hsic``) with ``cka_lo``,
    ``cka_hi``, ``resampled_by``; replicates shifted onto the exact value."""
    per_unit = hsic.per_unit.cpu().numpy()
    have = int((hsic.used.cpu().numpy() > 0).sum())
    if have < MIN_UNITS:  # the resampled estimator would be undefined (NaN intervals)
        raise ValueError(
            f"layer_similarity(bootstrap=) resamples each utterance's unbiased HSIC, which "
            f"needs utterances of at least {MIN_FRAMES} frames; only {have} of the "
            f"{len(boot.names)} {boot.kind}s have one ({int(round(float(hsic.short[0])))} "
            f"utterance(s) are shorter), and an interval needs {MIN_UNITS}: use longer "
            "utterances (or a layer of a finer frame rate), or pass bootstrap=None")
    whole = per_unit.sum(0)
    reps_h = boot.replicate_sums(per_unit.reshape(len(per_unit), -1)).reshape(
        (boot.resamples,) + whole.shape)
    rows, reps = [], {}
    for a, i in enumerate(row_idx):
        for b, j in enumerate(col_idx):
            layer, oth = square.index[a], square.columns[b]
            cka = float(square.iat[a, b])
            shift = cka - float(_ratio(whole, i, j))  # NaN for a degenerate layer
            reps[(layer, oth)] = {"cka": _ratio(reps_h, i, j) + shift}
            rows.append({"layer": layer, "other_layer": oth, "cka": cka})
    out = pd.DataFrame(rows)
    out = add_interval_columns(out, boot, ["layer", "other_layer"], reps, ["cka"])
    out.attrs.update({k: v for k, v in square.attrs.items()})
    out.attrs["short_utterances"] = int(round(float(hsic.short[0])))
    return out
