"""Weighted-sum featurizers: s3prl's layer weights, made inspectable.

:class:`WeightedSumFeaturizer` has the semantics of s3prl's
``s3prl.nn.upstream.Featurizer``: one logit per selected layer, initialised to
zero (uniform weights), a softmax over the selected layers, and an optional
``normalize`` that applies ``F.layer_norm`` (no affine) to each hidden state
before the sum. Its state dict holds the logits as ``weights``, like s3prl's,
so checkpoints load both ways. Differences, where s3prl is silent or strict:

- layers whose lengths differ raise a :class:`ValueError` naming the layers and
  their lengths (s3prl's ``torch.allclose`` on the lengths is never asserted);
- layers with different downsample rates are supported by aligning each one to
  ``target_rate`` before the sum (see *Mixed downsample rates* below);
- :attr:`WeightedSumFeaturizer.layer_weights` gives the softmax weights as a
  pandas Series, and :meth:`WeightedSumFeaturizer.set_weights` sets them from
  probabilities or logits.

Mixed downsample rates
----------------------
A layer of rate ``r`` (samples per frame) is brought to the target rate ``t``
frame by frame, so that target frame ``j`` covers samples ``[j*t, (j+1)*t)``:

- ``r == t``: unchanged;
- ``r = f*t`` (coarser layer): each frame is repeated ``f`` times; its ``n``
  frames become ``n*f``;
- ``t = f*r`` (finer layer): each group of ``f`` consecutive frames is averaged
  (a partial last group averages the frames it has); its ``n`` frames become
  ``ceil(n / f)`` (:func:`s3viz.align.expected_lengths` with the ``ceil``
  convention), which for ``ceil``-convention layers is exactly the number of
  target-rate frames.

Rates that are not integer multiples of each other are refused. The frame
counts of one utterance must be ones that a single waveform length ``S`` can
produce: a layer of rate ``r`` with ``n`` frames needs ``(n - 1) * r < S <= n * r``
(``ceil``, the convention of s3viz's upstreams) or ``(n - 1) * r <= S < n * r``
(s3prl's ``floor + 1``); otherwise a :class:`ValueError` names the layers and
counts. Layers of one rate must therefore have exactly equal lengths. After the
conversion a repeated (coarser) layer can be up to ``f - 1`` frames longer
than the others; the output keeps the shortest converted length (no frame is
invented).

Training and scoring the weights
--------------------------------
:func:`train_featurizer` learns the layer weights together with a linear head
on a probing task (SUPERB style) from a :class:`s3viz.LayerStore`.
:class:`WeightedScorer` scores *any* weight vector in milliseconds from cached
statistics (the engine of :func:`s3viz.widgets.layer_weight_explorer`).
"""

from __future__ import annotations

import itertools

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .align import expected_lengths
from .interface import AbsFeaturizer, num_layer_of
from . import _validate as _v
from ._device import resolve_device as _resolve_device
from ._numerics import Moments, read_dtype, safe_scale

__all__ = [
    "WeightedScorer",
    "WeightedSumFeaturizer",
    "align_frames",
    "train_featurizer",
    "weighted_sum",
]


_ZERO_LOGIT = -1.0e4
"""Logit standing for a probability of exactly zero (``exp(-1e4)`` underflows to 0)."""

# ----------------------------------------------------------------------------
# plain functions
# ----------------------------------------------------------------------------


def _rate_factor(rate: int, target_rate: int, *, what: str = "layer") -> tuple[str, int]:
    """``("same"|"repeat"|"average", factor)`` to bring ``rate`` to ``target_rate``."""
    rate, target_rate = int(rate), int(target_rate)
    if rate == target_rate:
        return "same", 1
    if rate > target_rate and rate % target_rate == 0:
        return "repeat", rate // target_rate
    if rate < target_rate and target_rate % rate == 0:
        return "average", target_rate // rate
    raise ValueError(
        f"{what} has downsample rate {rate}, which is not an integer multiple or divisor of "
        f"target_rate={target_rate}; choose a target_rate that divides or is divided by every "
        "selected layer's rate (e.g. the smallest rate)"
    )


def _consistent_lengths(counts: torch.Tensor, rates: Sequence[int]) -> torch.Tensor:
    """Whether one waveform length can give these frame counts, per utterance.

    ``counts`` is ``(num_layers, batch_size)``. A layer of rate ``r`` with ``n``
    frames came from ``S`` samples with ``(n - 1) * r < S <= n * r`` (``ceil``
    convention) or ``(n - 1) * r <= S < n * r`` (s3prl's ``floor + 1``); with
    integer bounds both need ``max_l (n_l - 1) r_l < min_l n_l r_l``. Layers of
    one rate must therefore have equal counts.

    Returns:
        ``(batch_size,)`` bool.
    """
    r = torch.as_tensor(list(rates), dtype=torch.long, device=counts.device)[:, None]
    lo = ((counts - 1) * r).max(0).values
    hi = (counts * r).min(0).values
    return lo < hi


def align_frames(
    hs: torch.Tensor, hs_len: torch.Tensor, rate: int, target_rate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring one hidden state from downsample rate ``rate`` to ``target_rate``.

    The convention is described in the module docstring: frames of a coarser
    layer are repeated, frames of a finer layer are averaged in groups (padding
    never enters an average).

    Args:
        hs: ``(batch_size, seq_len, hidden_size)`` hidden state.
        hs_len: ``(batch_size,)`` long valid frames.
        rate: samples per frame of ``hs``.
        target_rate: samples per frame wanted.

    Returns:
        ``(hs, hs_len)`` at ``target_rate``: ``(batch_size, seq_len', hidden_size)``
        and ``(batch_size,)`` long.
    """
    mode, f = _rate_factor(rate, target_rate)
    hs_len = hs_len.to(device=hs.device, dtype=torch.long)
    if mode == "same":
        return hs, hs_len
    if mode == "repeat":
        return hs.repeat_interleave(f, dim=1), hs_len * f
    batch, seq_len, hidden = hs.shape
    pad = (-seq_len) % f
    valid = (torch.arange(seq_len, device=hs.device)[None, :] < hs_len[:, None]).to(hs.dtype)
    x = hs * valid[..., None]
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        valid = F.pad(valid, (0, pad))
    groups = (seq_len + pad) // f
    total = x.view(batch, groups, f, hidden).sum(dim=2)
    count = valid.view(batch, groups, f).sum(dim=2).clamp(min=1.0)
    new_len = expected_lengths(hs_len.cpu(), f, "ceil").to(hs.device)
    return total / count[..., None], new_len


def weighted_sum(
    all_hs: Sequence[torch.Tensor],
    all_hs_len: Sequence[torch.Tensor],
    weights: torch.Tensor,
    *,
    rates: Sequence[int] | None = None,
    target_rate: int | None = None,
    normalize: bool = False,
    layer_names: Sequence | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of hidden states, with length checks and rate alignment.

    Args:
        all_hs: list of ``(batch_size, seq_len_i, hidden_size)`` hidden states (the
            layers to sum, already selected).
        all_hs_len: list of ``(batch_size,)`` long lengths, one per hidden state.
        weights: ``(num_layers,)`` weights (probabilities, not logits).
        rates: downsample rate of each hidden state; needed only when they differ.
        target_rate: rate of the output; defaults to the common rate.
        normalize: apply ``F.layer_norm`` (no affine) to each hidden state first.
        layer_names: names used in error messages (default ``0..num_layers-1``).

    Returns:
        ``(hs, hs_len)``: ``(batch_size, seq_len, hidden_size)`` with zeros after
        each utterance's length, and ``(batch_size,)`` long.

    Raises:
        ValueError: when the layers' lengths differ (after rate alignment, beyond
            its rounding), or shapes do not match.
    """
    n = len(all_hs)
    if n == 0 or len(all_hs_len) != n:
        raise ValueError(
            f"all_hs and all_hs_len must be non-empty lists of equal length, got {n} and "
            f"{len(all_hs_len)}"
        )
    names = list(range(n)) if layer_names is None else list(layer_names)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) (one per hidden state), got "
                         f"{tuple(weights.shape)}")
    rates = [1] * n if rates is None else [int(r) for r in rates]
    if len(rates) != n:
        raise ValueError(f"rates must have {n} entries (one per hidden state), got {len(rates)}")
    if target_rate is None:
        if len(set(rates)) > 1:
            raise ValueError(
                f"the hidden states have different downsample rates {dict(zip(names, rates))}; "
                f"pass target_rate=... (e.g. target_rate={min(rates)})"
            )
        target_rate = rates[0]
    sizes = {int(h.shape[-1]) for h in all_hs}
    if len(sizes) > 1:
        raise ValueError(
            "a weighted sum needs equal hidden sizes; got "
            f"{ {nm: int(h.shape[-1]) for nm, h in zip(names, all_hs)} }"
        )
    batch = {int(h.shape[0]) for h in all_hs} | {int(h_len.shape[0]) for h_len in all_hs_len}
    if len(batch) > 1:
        raise ValueError(f"all hidden states and lengths must share batch_size, got {sorted(batch)}")

    aligned, lens, counts = [], [], []
    for h, h_len, r, nm in zip(all_hs, all_hs_len, rates, names):
        if h.ndim != 3:
            raise ValueError(f"layer {nm}: hidden state must be (batch_size, seq_len, hidden_size), "
                             f"got shape {tuple(h.shape)}")
        h_len = torch.as_tensor(h_len, device=h.device).long()
        if bool((h_len > h.shape[1]).any()) or bool((h_len < 0).any()):
            raise ValueError(f"layer {nm}: lengths must lie in [0, seq_len={h.shape[1]}], got "
                             f"{h_len.tolist()}")
        if normalize:
            h = F.layer_norm(h, h.shape[-1:])
        _rate_factor(r, target_rate, what=f"layer {nm}")
        counts.append(h_len.to(all_hs[0].device))
        h, h_len = align_frames(h, h_len, r, target_rate)
        aligned.append(h)
        lens.append(h_len.to(all_hs[0].device))

    ok = _consistent_lengths(torch.stack(counts), rates)
    if not bool(ok.all()):
        b = int(torch.nonzero(~ok)[0])
        if len(set(rates)) == 1:
            detail = ", ".join(f"layer {nm}: {int(n[b])}" for nm, n in zip(names, counts))
            extra = ""
        else:
            detail = ", ".join(f"layer {nm}: {int(n[b])} at rate {r}"
                               for nm, n, r in zip(names, counts, rates))
            extra = " (no waveform length gives these counts at these rates)"
        raise ValueError(
            f"hidden states of utterance {b} in the batch have different lengths{extra} "
            f"({detail}); a weighted sum needs frame-aligned layers. Check the upstream's "
            "all_hs_len (s3viz.check_upstream) or select layers of one rate with layer_selections"
        )
    stacked_len = torch.stack(lens)  # (num_layers, batch_size) at target_rate
    hs_len = stacked_len.min(0).values
    seq_len = int(hs_len.max()) if hs_len.numel() else 0
    seq_len = max(seq_len, 0)
    w = weights.to(device=aligned[0].device, dtype=aligned[0].dtype)
    out = None
    for wi, h in zip(w, aligned):
        h = h[:, :seq_len]
        if h.shape[1] < seq_len:  # padded shorter than the longest valid length: cannot happen
            h = F.pad(h, (0, 0, 0, seq_len - h.shape[1]))
        out = wi * h if out is None else out + wi * h
    mask = torch.arange(seq_len, device=out.device)[None, :] < hs_len[:, None]
    return out * mask[..., None].to(out.dtype), hs_len


def _as_vector(values, n: int, name: str, index=None) -> torch.Tensor:
    """A float64 ``(n,)`` tensor from a Series / dict / sequence / array / tensor."""
    if isinstance(values, pd.Series):
        if index is not None:
            missing = [i for i in index if i not in values.index]
            extra = [i for i in values.index if i not in list(index)]
            if missing or extra:
                raise ValueError(
                    f"{name} is indexed by {list(values.index)}, expected the layers {list(index)}"
                    f" (missing {missing}, unexpected {extra})"
                )
            values = values.reindex(list(index))
        values = values.to_numpy()
    elif isinstance(values, dict):
        if index is None:
            raise TypeError(f"{name}: a dict needs layer keys")
        missing = [i for i in index if i not in values]
        if missing or len(values) != len(index):
            raise ValueError(f"{name} must have one entry per layer {list(index)}, got keys "
                             f"{list(values)}")
        values = [values[i] for i in index]
    if isinstance(values, torch.Tensor):
        t = values.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.tensor(np.array(values, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a sequence of {n} numbers, got {values!r}") from e
    t = t.reshape(-1) if t.ndim == 0 else t
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries (one per selected layer), got shape "
                         f"{tuple(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN: {t.tolist()}")
    return t


def _probs_to_logits(probs, n: int, index=None, atol: float = 1e-4) -> torch.Tensor:
    p = _as_vector(probs, n, "probs", index)
    if (p < 0).any() or torch.isinf(p).any():
        raise ValueError(f"probs must be finite and non-negative, got {p.tolist()}")
    total = float(p.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(
            f"probs must sum to 1 (within {atol}), got sum {total:.6g}; pass probs / probs.sum() "
            "or give logits=... instead"
        )
    logits = torch.log(p / total)
    # exact zeros get a finite logit so low that softmax gives exactly 0 in float32/64
    return (logits - logits.max()).clamp(min=_ZERO_LOGIT)


# ----------------------------------------------------------------------------
# the featurizer
# ----------------------------------------------------------------------------


class WeightedSumFeaturizer(AbsFeaturizer):
    """Softmax-weighted sum of an upstream's hidden states (s3prl's ``Featurizer``).

    Args:
        upstream: an upstream, or anything with ``hidden_sizes``,
            ``downsample_rates`` and ``num_layer``/``num_layers`` (e.g. a
            :class:`s3viz.LayerStore`). Used only to read sizes; not kept.
        layer_selections: indices of the hidden states to sum (sorted, as in
            s3prl); ``None`` selects all.
        normalize: layer-norm (no affine) each hidden state before the sum.
        target_rate: downsample rate of the output; needed only when the
            selected layers have different rates (see the module docstring).

    The parameter ``weights`` holds one logit per selected layer (zeros at
    start). :meth:`forward` takes *all* the upstream's hidden states and picks
    the selected ones, like s3prl's.
    """

    def __init__(
        self,
        upstream,
        layer_selections: Sequence[int] | None = None,
        normalize: bool = False,
        target_rate: int | None = None,
    ):
        super().__init__()
        num_layer = num_layer_of(upstream)
        try:
            hidden_sizes = [int(h) for h in upstream.hidden_sizes]
            rates = [int(r) for r in upstream.downsample_rates]
        except (AttributeError, NotImplementedError, TypeError) as e:
            raise TypeError(
                f"upstream ({type(upstream).__name__}) needs 'hidden_sizes' and "
                "'downsample_rates' lists (s3prl interface), e.g. an s3viz upstream or LayerStore"
            ) from e
        if len(hidden_sizes) != num_layer or len(rates) != num_layer:
            raise ValueError(
                f"upstream has num_layer={num_layer} but {len(hidden_sizes)} hidden_sizes and "
                f"{len(rates)} downsample_rates"
            )
        if layer_selections is None:
            selections = list(range(num_layer))
        else:
            try:
                selections = sorted(int(i) for i in layer_selections)
            except (TypeError, ValueError) as e:
                raise TypeError(f"layer_selections must be a list of layer indices, got "
                                f"{layer_selections!r}") from e
            bad = [i for i in selections if not 0 <= i < num_layer]
            if bad:
                raise ValueError(f"layer_selections {bad} out of range [0, {num_layer}) "
                                 f"for an upstream with {num_layer} hidden states")
            if len(set(selections)) != len(selections) or not selections:
                raise ValueError(f"layer_selections must be non-empty and without repeats, got "
                                 f"{list(layer_selections)}")
        sel_sizes = {i: hidden_sizes[i] for i in selections}
        if len(set(sel_sizes.values())) > 1:
            raise ValueError(
                f"selected layers have different hidden sizes {sel_sizes}; a weighted sum needs "
                "one size: pass layer_selections=... with layers of one size"
            )
        sel_rates = {i: rates[i] for i in selections}
        if target_rate is None:
            if len(set(sel_rates.values())) > 1:
                raise ValueError(
                    f"selected layers have different downsample rates {sel_rates}; pass "
                    f"target_rate=... to align them (e.g. target_rate={min(sel_rates.values())}, "
                    "the finest) or select layers of one rate"
                )
            target_rate = rates[selections[0]]
        if isinstance(target_rate, bool) or not isinstance(target_rate, (int, np.integer)) \
                or target_rate <= 0:
            raise ValueError(f"target_rate must be a positive int (samples per frame), got "
                             f"{target_rate!r}")
        for i in selections:
            _rate_factor(rates[i], int(target_rate), what=f"layer {i}")
        self._num_layer = num_layer
        self._rates = rates
        self._hidden_sizes = hidden_sizes
        self._output_size = hidden_sizes[selections[0]]
        self._downsample_rate = int(target_rate)
        self.normalize = bool(normalize)
        self.layer_selections = selections
        self.weights = nn.Parameter(torch.zeros(len(selections)))

    # -- s3prl interface ------------------------------------------------------
    @property
    def output_size(self) -> int:
        """Hidden size of the weighted sum."""
        return self._output_size

    @property
    def downsample_rate(self) -> int:
        """Downsample rate of the weighted sum (``target_rate``)."""
        return self._downsample_rate

    def forward(
        self, all_hs: list[torch.FloatTensor], all_hs_len: list[torch.LongTensor]
    ) -> tuple[torch.FloatTensor, torch.LongTensor]:
        """Weighted sum of the selected hidden states.

        Args:
            all_hs: all ``num_layer`` hidden states, each
                ``(batch_size, seq_len_i, hidden_size_i)``.
            all_hs_len: ``num_layer`` tensors of shape ``(batch_size,)`` long.

        Returns:
            ``(hs, hs_len)``: ``(batch_size, seq_len, output_size)`` (zeros after
            each length) and ``(batch_size,)`` long.
        """
        if not isinstance(all_hs, (list, tuple)) or not isinstance(all_hs_len, (list, tuple)):
            raise TypeError("all_hs and all_hs_len must be lists of tensors (one per hidden state)")
        if len(all_hs) != self._num_layer or len(all_hs_len) != self._num_layer:
            raise ValueError(
                f"expected {self._num_layer} hidden states and lengths (all of the upstream's; "
                f"the featurizer selects {self.layer_selections}), got {len(all_hs)} and "
                f"{len(all_hs_len)}"
            )
        for i in self.layer_selections:
            if all_hs[i].shape[-1] != self._hidden_sizes[i]:
                raise ValueError(f"hidden state {i} has size {all_hs[i].shape[-1]}, expected "
                                 f"{self._hidden_sizes[i]}")
        # every hidden state comes from the same waveforms: check all of them, selected or not
        dev = all_hs[self.layer_selections[0]].device
        try:
            counts = torch.stack([torch.as_tensor(n, device=dev).long().reshape(-1)
                                  for n in all_hs_len])
        except RuntimeError as e:
            raise ValueError("all_hs_len must hold one (batch_size,) tensor per hidden state, "
                             "all of the same batch_size") from e
        ok = _consistent_lengths(counts, self._rates)
        if not bool(ok.all()):
            b = int(torch.nonzero(~ok)[0])
            detail = ", ".join(f"layer {i}: {int(counts[i, b])}"
                               + (f" at rate {r}" if len(set(self._rates)) > 1 else "")
                               for i, r in enumerate(self._rates))
            raise ValueError(
                f"hidden states of utterance {b} in the batch have different lengths ({detail}); "
                "no waveform length gives these frame counts. A weighted sum needs frame-aligned "
                "layers: check the upstream's all_hs_len (s3viz.check_upstream)"
            )
        hs = [all_hs[i] for i in self.layer_selections]
        lens = [all_hs_len[i] for i in self.layer_selections]
        probs = F.softmax(self.weights, dim=-1)
        return weighted_sum(
            hs, lens, probs,
            rates=[self._rates[i] for i in self.layer_selections],
            target_rate=self._downsample_rate,
            normalize=self.normalize,
            layer_names=self.layer_selections,
        )

    # -- weights ---------------------------------------------------------------
    @property
    def layer_weights(self) -> pd.Series:
        """Softmax weights (probabilities summing to 1), indexed by layer.

        ``featurizer.layer_weights.to_csv("weights.csv")`` saves the numbers.
        """
        with torch.no_grad():
            p = F.softmax(self.weights.detach().double(), dim=-1).cpu().numpy()
        return pd.Series(p, index=pd.Index(self.layer_selections, name="layer"), name="weight")

    def set_weights(self, probs=None, logits=None, *, atol: float = 1e-4) -> WeightedSumFeaturizer:
        """Set the weights from probabilities or logits (exactly one of them).

        Args:
            probs: ``(num_selected,)`` non-negative numbers summing to 1 (within
                ``atol``): a sequence, array, tensor, dict or Series keyed by layer.
                Zeros give a weight of exactly 0 (a logit of ``-1e4``).
            logits: ``(num_selected,)`` finite logits (softmax is applied).

        Returns:
            ``self``.
        """
        if (probs is None) == (logits is None):
            raise ValueError("set_weights needs exactly one of probs=... or logits=...")
        n = len(self.layer_selections)
        if probs is not None:
            new = _probs_to_logits(probs, n, self.layer_selections, atol)
        else:
            new = _as_vector(logits, n, "logits", self.layer_selections)
            if torch.isinf(new).any():
                raise ValueError(f"logits must be finite, got {new.tolist()}; give probs=... "
                                 "with zeros for a weight of exactly 0")
        with torch.no_grad():
            self.weights.copy_(new.to(self.weights.dtype))
        return self

    def extra_repr(self) -> str:
        return (f"layer_selections={self.layer_selections}, normalize={self.normalize}, "
                f"output_size={self.output_size}, downsample_rate={self.downsample_rate}")


# ----------------------------------------------------------------------------
# probing data from a LayerStore: aligned, standardised, split
# ----------------------------------------------------------------------------



def _folds(store, split_by: str | None, level: str, target: str, folds: int, seed: int
           ) -> tuple[np.ndarray, str]:
    """Fold of each utterance from :func:`s3viz.probe.probe_folds` (grouped, balanced by frames).

    ``split_by=None`` means speakers at frame level when the store has at least
    ``folds`` speakers, else utterances.
    """
    from .probe import SPLITS, probe_folds

    labels = store.labels
    if split_by is None:
        split_by = "utterance"
        if level == "frame" and "speaker" in labels.columns and \
                labels["speaker"].astype(str).replace("", np.nan).nunique() >= folds:
            split_by = "speaker"
    if split_by not in SPLITS:
        raise ValueError(f"split_by must be one of {SPLITS} or None, got {split_by!r}")
    if split_by == "speaker" and target == "speaker" and level == "utterance":
        raise ValueError("split_by='speaker' with target='speaker': test speakers would never be "
                         "seen in training; use split_by='utterance'")
    table = probe_folds(store, folds=folds, split_by=split_by, seed=seed)
    fold = np.empty(len(store), dtype=np.int64)
    fold[table["utterance"].to_numpy()] = table["fold"].to_numpy()
    return fold, split_by


class _ProbeData:
    """The frames (or pooled utterances) of selected store layers, at one rate, with labels.

    ``features(j, utts)`` gives layer ``self.layers[j]`` of utterances ``utts``
    aligned to ``target_rate`` (frame level; see :func:`align_frames`) or
    mean-pooled (utterance level), standardised with the train statistics
    when ``standardize``; ``labels(utts)`` the matching class codes (-1 =
    unlabelled: no segment, or a class absent from training).
    """

    def __init__(self, store, target: str, *, level: str = "frame", layers=None,
                 target_rate: int | None = None, split_by: str | None = None,
                 test_fraction: float = 0.25, seed: int = 0, standardize: bool = True):
        from .probe import LEVELS

        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        for attr in ("layer", "lengths", "labels", "hidden_sizes", "downsample_rates"):
            if not hasattr(store, attr):
                raise TypeError(f"store must be an s3viz.LayerStore (s3viz.extract(...)), got "
                                f"{type(store).__name__}")
        if not isinstance(target, str):
            raise TypeError(f"target must be a label name (str), e.g. 'phone' or 'speaker', got "
                            f"{target!r}")
        if not 0 < test_fraction <= 0.5:
            raise ValueError(f"test_fraction must lie in (0, 0.5], got {test_fraction}")
        self.store, self.target, self.level = store, target, level
        num_layer = store.num_layer
        if layers is None:
            layers = list(range(num_layer))
        layers = [int(l_) for l_ in layers]
        bad = [l_ for l_ in layers if not 0 <= l_ < num_layer]
        if bad or not layers or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be distinct stored-layer indices in [0, {num_layer}), "
                             f"got {layers}")
        self.layers = layers
        sizes = {l_: store.hidden_sizes[l_] for l_ in layers}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"a weighted sum needs one hidden size; layers have {sizes}: pass "
                             "layers=... of one size")
        self.hidden_size = int(next(iter(sizes.values())))
        rates = {l_: int(store.downsample_rates[l_]) for l_ in layers}
        if target_rate is None:
            if level == "frame" and len(set(rates.values())) > 1:
                raise ValueError(f"layers have different downsample rates {rates}; pass "
                                 f"target_rate=... (e.g. {min(rates.values())})")
            target_rate = min(rates.values())
        self.target_rate = int(target_rate)
        self.rates = rates
        n = len(store)
        labels_df = store.labels

        if level == "frame":
            conv, counts = [], []
            for l_ in layers:
                mode, f = _rate_factor(rates[l_], self.target_rate, what=f"layer {l_}")
                lens = torch.as_tensor(store.lengths(l_))
                counts.append(lens)
                conv.append((lens * f if mode == "repeat" else
                             expected_lengths(lens, f, "ceil") if mode == "average" else lens
                             ).numpy())
            ok = _consistent_lengths(torch.stack(counts), [rates[l_] for l_ in layers]).numpy()
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                detail = ", ".join(f"layer {l_}: {int(c[i])} at rate {rates[l_]}"
                                   for l_, c in zip(layers, counts))
                raise ValueError(f"utterance {store.ids[i]!r} has inconsistent frame counts across "
                                 f"layers ({detail}); check the store's lengths or choose "
                                 "layers=... of one rate")
            conv = np.stack(conv)
            self.lengths = conv.min(0).astype(np.int64)
            raw = self._frame_label_strings()
        else:
            if target not in labels_df.columns:
                raise KeyError(f"target {target!r} is not a column of store.labels; columns: "
                               f"{list(labels_df.columns)}")
            self.lengths = np.ones(n, dtype=np.int64)
            raw = labels_df[target].to_numpy(dtype=object)
            raw = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                            for v in raw], dtype=object)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])

        nfolds = max(3, round(1.0 / test_fraction))
        self.fold, self.split_by = _folds(store, split_by, level, target, nfolds, seed)
        # fold 0 is held out (test); fold 1 is the dev part of the rest (train_utts)
        self.test_utts = np.flatnonzero(self.fold == 0)
        self.train_utts = np.flatnonzero(self.fold != 0)
        self.dev_utts = np.flatnonzero(self.fold == 1)
        self.fit_utts = np.flatnonzero(self.fold >= 2)

        train_raw = np.concatenate([raw[self.offsets[i]:self.offsets[i + 1]]
                                    for i in self.train_utts]) if len(self.train_utts) else raw[:0]
        classes = sorted({v for v in train_raw if v != ""})
        if len(classes) < 2:
            raise ValueError(f"target {target!r} has {len(classes)} class(es) in the training "
                             "split; a probe needs at least 2")
        self.classes = classes
        code = {c: k for k, c in enumerate(classes)}
        self.y = np.array([code.get(v, -1) for v in raw], dtype=np.int64)
        self.standardize = bool(standardize)
        self.read_dtype = read_dtype(store)
        self.mean: dict[int, torch.Tensor] = {}
        self.std: dict[int, torch.Tensor] = {}
        if self.standardize:
            self._fit_standardization()

    # -- labels -----------------------------------------------------------
    def _frame_label_strings(self) -> np.ndarray:
        store, rate = self.store, self.target_rate
        same = [l_ for l_ in self.layers if self.rates[l_] == rate]
        parts = []
        if same:
            l0 = same[0]
            flat = store.frame_labels(l0, column=self.target)
            lens0 = store.lengths(l0)
            off = np.concatenate([[0], np.cumsum(lens0)])
            for i in range(len(store)):
                parts.append(flat[off[i]: off[i] + self.lengths[i]])
        else:
            from .align import frame_labels

            for i, table in enumerate(store.phones):
                if table is None:
                    parts.append(np.full(int(self.lengths[i]), "", dtype=object))
                else:
                    parts.append(frame_labels(table, int(self.lengths[i]), rate,
                                              column=self.target))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

    def labels(self, utts) -> np.ndarray:
        """``(n,)`` int64 class codes of the frames (or utterances) of ``utts``."""
        return np.concatenate([self.y[self.offsets[i]:self.offsets[i + 1]] for i in utts]) \
            if len(utts) else np.zeros(0, dtype=np.int64)

    def num_items(self, utts) -> int:
        return int(self.lengths[np.asarray(utts, dtype=np.int64)].sum())

    # -- features -----------------------------------------------------------
    def raw_features(self, j: int, utts) -> torch.Tensor:
        """``(n, hidden_size)`` of layer ``self.layers[j]`` (aligned, not standardised), in
        the store's precision (:func:`s3viz._numerics.read_dtype`)."""
        l_ = self.layers[j]
        utts = np.asarray(utts, dtype=np.int64)
        if self.level == "utterance":
            return self.store.pooled(l_, utterances=utts, dtype=self.read_dtype)
        x, _ = self.store.layer(l_, utterances=utts, dtype=self.read_dtype)
        lens = self.store.lengths(l_)[utts]
        want = self.lengths[utts]
        mode, _ = _rate_factor(self.rates[l_], self.target_rate)
        if mode == "same" and np.array_equal(lens, want):
            return x
        out = []
        for part, n_want in zip(torch.split(x, lens.tolist()), want.tolist()):
            h, _ = align_frames(part[None], torch.tensor([part.shape[0]]), self.rates[l_],
                                self.target_rate)
            out.append(h[0, :n_want])
        return torch.cat(out) if out else x[:0]

    def features(self, j: int, utts) -> torch.Tensor:
        """Like :meth:`raw_features`, standardised per dimension with the train statistics
        (in the store's precision), as float32."""
        x = self.raw_features(j, utts)
        if self.standardize:
            l_ = self.layers[j]
            x = (x - self.mean[l_]) / self.std[l_]
        return x.float()

    def _fit_standardization(self, max_frames: int = 65536):
        utts = self.train_utts
        for j, l_ in enumerate(self.layers):
            mom = Moments((self.hidden_size,))  # shifted sums: exact under any offset
            for a in range(0, len(utts), 64):
                chunk = utts[a:a + 64]
                x = self.raw_features(j, chunk)
                keep = torch.from_numpy(self.labels(chunk) >= 0)
                mom.update(x[keep])
            if mom.n == 0:
                raise ValueError("no labelled training frames; check the target and the split")
            self.mean[l_] = mom.mean.to(self.read_dtype)
            self.std[l_] = safe_scale(mom.var.sqrt(), mean=mom.mean).to(self.read_dtype)


# ----------------------------------------------------------------------------
# train_featurizer: layer weights + linear head, SUPERB-style
# ----------------------------------------------------------------------------


def train_featurizer(
    store,
    target: str,
    *,
    level: str = "frame",
    layers: Sequence[int] | None = None,
    steps: int = 300,
    lr: float = 0.01,
    batch_frames: int = 2048,
    eval_every: int = 25,
    device=None,
    seed: int = 0,
    split_by: str | None = None,
    dev_fraction: float = 0.25,
    standardize: bool = True,
    target_rate: int | None = None,
    max_cache_bytes: int = 256 * 2**20,
) -> tuple[WeightedSumFeaturizer, pd.DataFrame]:
    """Learn layer weights together with a linear head on a probing task.

    The SUPERB recipe in miniature: softmax weights over the layers (logits
    start at zero) and a linear classifier on the weighted sum, trained jointly
    with Adam on cross-entropy, on minibatches of frames (or utterances).
    Features are standardised per layer and dimension with training statistics
    (``standardize=True``), so the weights compare layers independently of
    their scale; ``standardize=False`` learns on the raw hidden states as
    s3prl does. Utterances are split into train / dev by ``split_by`` groups
    (default: speakers for frame targets, utterances for utterance targets).

    Args:
        store: a :class:`s3viz.LayerStore`.
        target: frame level: a column of the alignment tables (``"phone"``,
            ``"word"``); utterance level: a column of ``store.labels``.
        level: ``"frame"`` or ``"utterance"`` (mean-pooled features).
        layers: stored layers to weigh (default all).
        steps, lr, batch_frames: optimisation: Adam steps, learning rate,
            frames (or utterances) per minibatch.
        eval_every: steps between dev evaluations (and history rows).
        device: ``None`` = cuda when available else cpu.
        max_cache_bytes: training features up to this size are held in memory
            (random frame minibatches); larger stores are streamed in
            minibatches of whole utterances.

    Returns:
        ``(featurizer, history)``: a :class:`WeightedSumFeaturizer` over the
        store's layers holding the learned weights, and a DataFrame with one row
        per evaluation: ``step, loss, dev_accuracy`` and ``weight_<layer>`` for
        each layer (``history.attrs`` holds ``classes, n_train, n_dev``). Its
        first row is step 0, the starting weights (the loss of the first batch
        before any update).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    lr = _v.number(lr, "lr", positive=True)  # also refuses NaN, which `not lr > 0` let by
    seed = _v.integer(seed, "seed", minimum=0)
    dev_fraction = _v.number(dev_fraction, "dev_fraction", nonnegative=True, below=1)
    max_cache_bytes = _v.integer(max_cache_bytes, "max_cache_bytes", minimum=0)
    if isinstance(batch_frames, bool) or not isinstance(batch_frames, (int, np.integer)) \
            or batch_frames < 1:
        raise ValueError(f"batch_frames must be a positive int, got {batch_frames!r}")
    eval_every = _v.integer(eval_every, "eval_every")
    data = _ProbeData(store, target, level=level, layers=layers, target_rate=target_rate,
                      split_by=split_by, test_fraction=dev_fraction, seed=seed,
                      standardize=standardize)
    dev = _resolve_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    L, H, C = len(data.layers), data.hidden_size, len(data.classes)
    logits = nn.Parameter(torch.zeros(L, device=dev))
    head = nn.Linear(H, C).to(dev)
    torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam([logits, *head.parameters()], lr=float(lr))

    train_utts, dev_utts = data.train_utts, data.test_utts
    n_train_items = data.num_items(train_utts)
    cached = n_train_items * L * H * 4 <= max_cache_bytes
    if cached:
        y_train = torch.from_numpy(data.labels(train_utts))
        keep = y_train >= 0
        x_train = torch.stack([data.features(j, train_utts)[keep] for j in range(L)])
        y_train = y_train[keep]
        if y_train.numel() == 0:
            raise ValueError("no labelled training frames")
        x_train, y_train = x_train.to(dev), y_train.to(dev)

    def batches():
        if cached:
            n = y_train.shape[0]
            while n <= batch_frames:  # everything fits in one batch: no copies
                yield x_train, y_train
            while True:
                perm = torch.randperm(n, generator=gen)
                for a in range(0, n - min(batch_frames, n) + 1, min(batch_frames, n)):
                    idx = perm[a:a + batch_frames].to(dev)
                    yield x_train[:, idx], y_train[idx]
        else:
            while True:
                perm = train_utts[torch.randperm(len(train_utts), generator=gen).numpy()]
                group, count = [], 0
                for u in perm:
                    group.append(int(u))
                    count += int(data.lengths[u])
                    if count >= batch_frames:
                        yield _batch(group)
                        group, count = [], 0
                if group:
                    yield _batch(group)

    def _batch(group):
        y = torch.from_numpy(data.labels(group))
        keep = y >= 0
        x = torch.stack([data.features(j, group)[keep] for j in range(L)])
        return x.to(dev), y[keep].to(dev)

    def dev_groups():
        for a in range(0, len(dev_utts), 32):
            group = dev_utts[a:a + 32]
            y = torch.from_numpy(data.labels(group))
            keep = y >= 0
            if bool(keep.any()):
                x = torch.stack([data.features(j, group)[keep] for j in range(L)])
                yield x.to(dev), y[keep].to(dev)

    n_dev_items = data.num_items(dev_utts)
    dev_cache = list(dev_groups()) if n_dev_items * L * H * 4 <= max_cache_bytes else None

    def dev_accuracy() -> float:
        correct = total = 0
        with torch.no_grad():
            p = torch.softmax(logits, 0)
            for x, y in (dev_cache if dev_cache is not None else dev_groups()):
                pred = head(torch.einsum("l,lnh->nh", p, x)).argmax(1)
                correct += int((pred == y).sum())
                total += int(y.numel())
        return correct / total if total else float("nan")

    rows = []
    layer_cols = [f"weight_{l_}" for l_ in data.layers]
    it = batches()
    first = next(it)
    it = itertools.chain([first], it)
    with torch.no_grad():  # step 0: the starting weights, before any update
        z0 = torch.einsum("l,lnh->nh", torch.softmax(logits, 0), first[0])
        loss0 = float(F.cross_entropy(head(z0), first[1])) if first[1].numel() else float("nan")
    rows.append({"step": 0, "loss": loss0, "dev_accuracy": dev_accuracy(),
                 **dict(zip(layer_cols, torch.softmax(logits.detach().double(), 0).cpu().numpy()))})
    running = []
    for step in range(1, int(steps) + 1):
        x, y = next(it)
        if y.numel() == 0:
            continue
        p = torch.softmax(logits, 0)
        z = torch.einsum("l,lnh->nh", p, x)
        loss = F.cross_entropy(head(z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            w = torch.softmax(logits.detach().double(), 0).cpu().numpy()
            rows.append({"step": step, "loss": float(np.mean(running)),
                         "dev_accuracy": dev_accuracy(), **dict(zip(layer_cols, w))})
            running = []
    history = pd.DataFrame(rows, columns=["step", "loss", "dev_accuracy", *layer_cols])
    history.attrs.update({"classes": list(data.classes), "n_train": n_train_items,
                          "n_dev": data.num_items(dev_utts), "target": target, "level": level,
                          "layers": list(data.layers), "standardize": standardize})
    featurizer = WeightedSumFeaturizer(store, layer_selections=data.layers,
                                       target_rate=data.target_rate)
    featurizer.set_weights(logits=logits.detach().double().cpu())
    return featurizer, history


# ----------------------------------------------------------------------------
# WeightedScorer: the probe score of any weight vector, from cached statistics
# ----------------------------------------------------------------------------

def _weighted_gram(gram: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_lm w_l w_m G_lm`` for ``gram`` of shape ``(L, k, L, k)`` and ``w`` ``(L,)``.

    Two matrix-vector products (``tensordot``), reading ``gram`` once.
    """
    w = w.to(gram.dtype)
    return torch.tensordot(torch.tensordot(w, gram, dims=([0], [0])), w, dims=([1], [0]))


class _Blocks:
    """Cross-layer statistics of projected features ``R_l = Z_l P`` over some frames.

    ``gram (L, k, L, k)``: ``R_l^T R_m``; ``cross (L, k, C)``: ``R_l^T Y``;
    ``sums (L, k)``: ``R_l^T 1``; ``counts (C,)``: class counts; ``n``: frames.
    Accumulated in float64; ``gram`` is then kept in float32 (a move reads it
    whole, so half the bytes is twice the speed; its weighted sum is returned in
    float64, accurate to about 1e-6 relative).
    """

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
        from .probe import ProbeStats

        return ProbeStats(
            self.counts.sum().reshape(1),
            torch.einsum("l,lk->k", w, self.sums)[None],
            _weighted_gram(self.gram, w).double()[None],
            self.counts[None],
            torch.einsum("l,lkc->kc", w, self.cross)[None],
            self.counts[None].clone(),
        )


BASES = ("mixed", "pca", "supervised")
"""How :class:`WeightedScorer` chooses its shared basis (see there)."""


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

    The representation scored is ``sum_l w_l Z_l``, the weighted sum of the
    selected layers each standardised with training statistics (as
    :func:`train_featurizer` does by default), seen through one shared
    orthonormal basis ``P`` of ``dims`` directions (no projection when
    ``dims >= hidden_size``). Because ``P`` is shared, projecting the weighted
    sum equals weighting the projections, ``(sum_l w_l Z_l) P = sum_l w_l (Z_l P)``.
    ``basis`` chooses ``P`` from a sample of training frames of all layers
    pooled together:

    - ``"supervised"``: the top directions of the between-class scatter (the
      span of the class means, where a linear probe finds its signal);
    - ``"pca"``: the top principal components (largest variance);
    - ``"mixed"`` (default): half of each (PCA of what the supervised half
      leaves), so that the probe also sees the largest noise directions it may
      need to cancel. On the benchmark store (13 x 768, 40 classes) a 128-dim
      ``"mixed"`` basis scores like the full 768 dimensions, ``"pca"`` far below;
    - a ``(hidden_size, dims)`` tensor of your own (orthonormalised).

    At construction (one pass over the store) the scorer caches, for the
    training and the dev utterances, the blocks ``G_lm = (Z_l P)^T (Z_m P)``,
    ``(Z_l P)^T Y`` and ``(Z_l P)^T 1``, plus the projected test frames. A
    score then needs only ``dims``-sized algebra: the weighted blocks give the
    :class:`s3viz.ProbeStats` of the weighted sum, the ridge penalty is chosen
    on the dev part exactly as :func:`s3viz.probe_layers` does (same grid,
    same dev mean squared error), the probe is fit on train + dev and scored on
    the held-out test utterances. It is the ridge probe of ``probe_layers``
    for one fold, applied to the weighted sum.

    Args:
        store: a :class:`s3viz.LayerStore`.
        target, level, layers, target_rate, split_by, seed: as in
            :func:`train_featurizer`.
        test_fraction: share of the groups held out for the score (the split
            is :func:`s3viz.probe.probe_folds` with ``round(1 / test_fraction)``
            folds: fold 0 is the test, fold 1 the dev part).
        dims: size of the shared basis (``None``: no projection; only for
            ``num_layers * hidden_size <= 4096``).
        basis: ``"mixed"``, ``"supervised"``, ``"pca"`` or a tensor (see above).
        lam: a fixed ridge penalty (relative, as in ``probe_layers``); None
            chooses one from ``lambdas`` for every weight vector.
        pca_frames: training frames used to estimate the basis.
        chunk_utterances: utterances per chunk of the statistics pass.
        device: where the one-off statistics are computed (None = cuda when
            available); each score runs on the CPU in float64.
    """

    def __init__(self, store, target: str, *, level: str = "frame", layers=None,
                 dims: int | None = 128, lam: float | None = None,
                 lambdas: Sequence[float] | None = None,
                 target_rate: int | None = None, split_by: str | None = None,
                 test_fraction: float = 0.25, seed: int = 0, device=None,
                 pca_frames: int = 4096, chunk_utterances: int = 64, basis="mixed"):
        from .probe import LAMBDAS

        data = _ProbeData(store, target, level=level, layers=layers, target_rate=target_rate,
                          split_by=split_by, test_fraction=test_fraction, seed=seed)
        self.data = data
        self.layers = list(data.layers)
        self.classes = list(data.classes)
        self.level, self.target = level, target
        self.lam = None if lam is None else float(lam)
        self.lambdas = tuple(LAMBDAS if lambdas is None else lambdas)
        L, H, C = len(self.layers), data.hidden_size, len(self.classes)
        if dims is None:
            if L * H > 4096:
                raise ValueError(f"dims=None keeps all {H} dimensions, which needs a "
                                 f"({L * H})^2 Gram matrix; pass dims=128 (or fewer)")
            dims = H
        if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
            raise ValueError(f"dims must be a positive int or None, got {dims!r}")
        k = min(int(dims), H)
        self.dims = k
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
            rng = np.random.default_rng(seed)
            sample, count = [], 0
            for u in rng.permutation(data.fit_utts):  # not the dev part that picks the penalty
                sample.append(int(u))
                count += int(data.lengths[u])
                if count >= pca_frames:
                    break
            y = torch.from_numpy(data.labels(sample))
            keep = y >= 0
            onehot = F.one_hot(y[keep], C).double().to(dev)
            inv_n = 1.0 / onehot.sum(0).clamp(min=1.0)
            cov = torch.zeros(H, H, dtype=torch.float64, device=dev)
            between = torch.zeros(H, H, dtype=torch.float64, device=dev)
            for j in range(L):
                x = data.features(j, sample)[keep].to(dev)
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
            for a in range(0, len(utts), chunk_utterances):
                group = utts[a:a + chunk_utterances]
                y = torch.from_numpy(data.labels(group))
                keep = y >= 0
                if bool(keep.any()):
                    r = torch.cat([self._project(data.features(j, group)[keep].to(dev), basis)
                                   for j in range(L)], dim=1)
                    part.update(r, y[keep].to(dev))
            part.finish()
        if self.fit_blocks.n == 0 or self.dev_blocks.n == 0:
            raise ValueError("no labelled frames in the training or dev part of the split")
        self.n_train = self.fit_blocks.n + self.dev_blocks.n

        # 3. projected test frames
        y = torch.from_numpy(data.labels(data.test_utts))
        keep = y >= 0
        self.y_test = y[keep]
        self.n_test = int(keep.sum())
        if self.n_test == 0:
            raise ValueError("no labelled test frames: the held-out split has no labels")
        self.test = torch.stack([
            self._project(data.features(j, data.test_utts)[keep].to(dev), basis).cpu()
            for j in range(L)]).double()  # (L, n_test, k)

    @staticmethod
    def _project(x: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        return x if basis is None else x @ basis

    def _weights(self, weights) -> torch.Tensor:
        w = _as_vector(weights, len(self.layers), "weights", self.layers)
        if (w < 0).any() or torch.isinf(w).any():
            raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
        total = float(w.sum())
        if total <= 0:
            raise ValueError("weights are all zero; give at least one positive weight")
        return w / total

    def probe(self, weights):
        """Ridge probe of the weighted sum with ``weights`` (``(num_layers,)``, as in :meth:`evaluate`).

        Returns:
            ``(weight, bias, lam)``: ``(dims, num_classes)`` and ``(num_classes,)``
            float64 (scores of projected frames ``x`` are ``x @ weight + bias``) and
            the penalty used.
        """
        w = self._weights(weights)
        fit, dev = self.fit_blocks.stats(w), self.dev_blocks.stats(w)
        if self.lam is None:
            mse = fit.dev_mse(dev, self.lambdas)  # (num_lambdas, C)
            lam = self.lambdas[int(torch.argmin(mse.sum(1)))]
        else:
            lam = self.lam
        weight, bias = (fit + dev).solve(lam)
        return weight, bias, lam

    def evaluate(self, weights) -> dict[str, float]:
        """Probe the weighted sum with ``weights``.

        Args:
            weights: ``(num_layers,)`` non-negative weights, one per selected layer
                (sequence, array, tensor, or Series / dict keyed by layer); they
                are normalised to sum to 1.

        Returns:
            dict with ``accuracy`` (on the test frames), ``lam`` (ridge penalty
            used), ``n_train``, ``n_test``.
        """
        w = self._weights(weights)
        weight, bias, lam = self.probe(w)
        x = torch.einsum("l,lnk->nk", w, self.test)
        pred = (x @ weight + bias).argmax(1)
        acc = float((pred == self.y_test).double().mean())
        return {"accuracy": acc, "lam": lam, "n_train": self.n_train, "n_test": self.n_test}

    def score(self, weights) -> float:
        """Test accuracy of the ridge probe on the weighted sum (see :meth:`evaluate`)."""
        return self.evaluate(weights)["accuracy"]

    def layer_scores(self) -> pd.Series:
        """Accuracy of each single layer (one-hot weights), indexed by layer."""
        out = []
        for j in range(len(self.layers)):
            w = np.zeros(len(self.layers))
            w[j] = 1.0
            out.append(self.score(w))
        return pd.Series(out, index=pd.Index(self.layers, name="layer"), name="accuracy")

    def __repr__(self) -> str:
        return (f"WeightedScorer(target={self.target!r}, level={self.level!r}, layers={self.layers}, "
                f"dims={self.dims}, classes={len(self.classes)}, n_train={self.n_train}, "
                f"n_test={self.n_test})")
