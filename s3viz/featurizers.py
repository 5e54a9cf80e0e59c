"""Weighted-sum featurizers: s3prl's layer weights, made inspectable.

:class:`WeightedSumFeaturizer` is s3prl's ``Featurizer`` that also refuses layers whose
lengths differ and aligns layers of different rates (:func:`align_frames`); training:
:mod:`s3viz.featurizer_training`; scoring any weights: :class:`s3viz.probe.weighted.WeightedScorer`.
The semantics and the rules for mixed rates: ``docs/featurizers.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import _validate as _v
from .align import expected_lengths
from .interface import AbsFeaturizer, num_layer_of
from .models import length_mask

__all__ = ["WeightedSumFeaturizer", "align_frames", "weighted_sum"]

_ZERO_LOGIT = -1.0e4
"""Logit standing for a probability of exactly zero (``exp(-1e4)`` underflows to 0)."""


def rate_factor(rate: int, target_rate: int, *, what: str = "layer") -> tuple[str, int]:
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
        "selected layer's rate (e.g. the smallest rate)")


def check_lengths(counts: torch.Tensor, rates: Sequence[int], names: Sequence, ids=None) -> None:
    """Refuse ``(num_layers, batch_size)`` frame counts that no one waveform length gives
    (``docs/featurizers.md``), naming the first such utterance (``ids[b]``, or its
    position in the batch) and its layers' counts."""
    r = torch.as_tensor(list(rates), dtype=torch.long, device=counts.device)[:, None]
    ok = ((counts - 1) * r).max(0).values < (counts * r).min(0).values
    if not bool(ok.all()):
        b = int(torch.nonzero(~ok)[0])
        mixed = len(set(rates)) > 1
        detail = ", ".join(f"layer {nm}: {int(n[b])}" + (f" at rate {r}" if mixed else "")
                           for nm, n, r in zip(names, counts, rates))
        who = f"{ids[b]!r}" if ids is not None else f"{b} in the batch"
        raise ValueError(
            f"hidden states of utterance {who} have different lengths ({detail}); "
            "no waveform length gives these frame counts. A weighted sum needs frame-aligned "
            "layers: check the upstream's all_hs_len (s3viz.check_upstream) or select layers "
            "of one rate")


def sum_geometry(sizes: dict, rates: dict, target_rate) -> int:
    """The target rate of a weighted sum of layers ``{name: hidden size}`` and ``{name:
    rate}``: ``target_rate``, or their one rate; layers of several sizes are refused."""
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the layers have different hidden sizes {sizes}; a weighted sum needs "
                         "equal hidden sizes: select layers of one size")
    if target_rate is None:
        if len(set(rates.values())) > 1:
            raise ValueError(
                f"the layers have different downsample rates {rates}; pass target_rate=... to "
                f"align them (e.g. target_rate={min(rates.values())}, the finest) or select "
                "layers of one rate")
        target_rate = next(iter(rates.values()))
    return _v.integer(target_rate, "target_rate")


def aligned_lengths(lengths: torch.Tensor, rate: int, target_rate: int, what: str = "layer"
                    ) -> torch.Tensor:
    """Frame counts at ``rate`` brought to ``target_rate``, as :func:`align_frames` does."""
    mode, f = rate_factor(rate, target_rate, what=what)
    return expected_lengths(lengths, f, "ceil") if mode == "average" else lengths * f


def align_frames(hs: torch.Tensor, hs_len: torch.Tensor, rate: int, target_rate: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hs, hs_len)`` of one hidden state brought from downsample rate ``rate`` to
    ``target_rate``: frames of a coarser layer are repeated, frames of a finer layer
    averaged in groups (padding never enters an average; ``docs/featurizers.md``)."""
    mode, f = rate_factor(rate, target_rate)
    hs_len = hs_len.to(device=hs.device, dtype=torch.long)
    if mode != "average":
        return (hs.repeat_interleave(f, dim=1) if f > 1 else hs), hs_len * f
    batch, seq_len, hidden = hs.shape
    pad = (-seq_len) % f
    valid = length_mask(hs_len, seq_len).to(hs.dtype)
    x = hs * valid[..., None]
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        valid = F.pad(valid, (0, pad))
    groups = (seq_len + pad) // f
    total = x.view(batch, groups, f, hidden).sum(dim=2)
    count = valid.view(batch, groups, f).sum(dim=2).clamp(min=1.0)
    return total / count[..., None], aligned_lengths(hs_len, rate, target_rate)


def weighted_sum(all_hs: Sequence[torch.Tensor], all_hs_len: Sequence[torch.Tensor],
                 weights: torch.Tensor, *, rates: Sequence[int] | None = None,
                 target_rate: int | None = None, normalize: bool = False,
                 layer_names: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of hidden states (the layers to sum, already selected), with length
    checks (a ValueError when no one waveform gives their lengths) and rate alignment.

    Args:
        rates: downsample rate of each hidden state; needed only when they differ.
        layer_names: names used in error messages (default ``0..num_layers-1``).

    Returns:
        ``(hs, hs_len)``: ``(batch_size, seq_len, hidden_size)`` with zeros after
        each utterance's length, and ``(batch_size,)`` long.
    """
    n = len(all_hs)
    if n == 0 or len(all_hs_len) != n:
        raise ValueError(f"all_hs and all_hs_len must be non-empty lists of equal length, got "
                         f"{n} and {len(all_hs_len)}")
    names = list(range(n)) if layer_names is None else list(layer_names)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},) (one per hidden state), got "
                         f"{tuple(weights.shape)}")
    rates = [1] * n if rates is None else [int(r) for r in rates]
    if len(rates) != n:
        raise ValueError(f"rates must have {n} entries (one per hidden state), got {len(rates)}")
    target_rate = sum_geometry({nm: int(h.shape[-1]) for nm, h in zip(names, all_hs)},
                                dict(zip(names, rates)), target_rate)
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
        rate_factor(r, target_rate, what=f"layer {nm}")
        counts.append(h_len.to(all_hs[0].device))
        h, h_len = align_frames(h, h_len, r, target_rate)
        aligned.append(h)
        lens.append(h_len.to(all_hs[0].device))
    check_lengths(torch.stack(counts), rates, names)
    hs_len = torch.stack(lens).min(0).values  # at target_rate
    seq_len = int(hs_len.max()) if hs_len.numel() else 0
    w = weights.to(device=aligned[0].device, dtype=aligned[0].dtype)
    out = None
    for wi, h in zip(w, aligned):  # each aligned layer has at least seq_len frames
        out = wi * h[:, :seq_len] if out is None else out + wi * h[:, :seq_len]
    mask = length_mask(hs_len, seq_len)
    return out * mask[..., None].to(out.dtype), hs_len


def as_vector(values, n: int, name: str, index, *, nonnegative: bool = False) -> torch.Tensor:
    """A float64 ``(n,)`` tensor from a sequence / array / tensor, or a Series / dict keyed
    by the layers ``index``; ``nonnegative``: also refuse negative or infinite values."""
    if isinstance(values, dict):
        values = pd.Series(values, dtype=object)
    if isinstance(values, pd.Series):
        if set(values.index) != set(index) or len(values) != len(index):
            missing = [i for i in index if i not in set(values.index)]
            extra = [i for i in values.index if i not in set(index)]
            raise ValueError(f"{name} is indexed by {list(values.index)}, expected the layers "
                             f"{list(index)} (missing {missing}, unexpected {extra})")
        values = values.reindex(list(index)).tolist()
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
    if nonnegative and ((t < 0).any() or torch.isinf(t).any()):
        raise ValueError(f"{name} must be finite and non-negative, got {t.tolist()}")
    return t


class WeightedSumFeaturizer(AbsFeaturizer):
    """Softmax-weighted sum of an upstream's hidden states (s3prl's ``Featurizer``).

    ``upstream`` (or anything with ``hidden_sizes``, ``downsample_rates`` and
    ``num_layer``/``num_layers``, e.g. a :class:`s3viz.LayerStore`) is only read for its
    sizes; ``layer_selections`` (None: all) are sorted, as in s3prl; ``target_rate`` is
    needed only when they have different rates (``docs/featurizers.md``). The parameter
    ``weights`` holds one logit per selected layer (zeros at start). :meth:`forward` takes
    *all* the upstream's hidden states and picks the selected ones, like s3prl's.
    """

    def __init__(self, upstream, layer_selections: Sequence[int] | None = None,
                 normalize: bool = False, target_rate: int | None = None):
        super().__init__()
        num_layer = num_layer_of(upstream)
        try:
            hidden_sizes = [int(h) for h in upstream.hidden_sizes]
            rates = [int(r) for r in upstream.downsample_rates]
        except (AttributeError, NotImplementedError, TypeError) as e:
            raise TypeError(f"upstream ({type(upstream).__name__}) needs 'hidden_sizes' and "
                            "'downsample_rates' lists (s3prl interface), e.g. an s3viz upstream "
                            "or LayerStore") from e
        if len(hidden_sizes) != num_layer or len(rates) != num_layer:
            raise ValueError(f"upstream has num_layer={num_layer} but {len(hidden_sizes)} "
                             f"hidden_sizes and {len(rates)} downsample_rates")
        selections = sorted(_v.stored_layers(num_layer, layer_selections, "layer_selections"))
        target_rate = sum_geometry({i: hidden_sizes[i] for i in selections},
                                   {i: rates[i] for i in selections}, target_rate)
        for i in selections:
            rate_factor(rates[i], target_rate, what=f"layer {i}")
        self._num_layer = num_layer
        self._rates = rates
        self._hidden_sizes = hidden_sizes
        self._output_size = hidden_sizes[selections[0]]
        self._downsample_rate = target_rate
        self.normalize = bool(normalize)
        self.layer_selections = selections
        self.weights = nn.Parameter(torch.zeros(len(selections)))

    @property
    def output_size(self) -> int:
        """Hidden size of the weighted sum."""
        return self._output_size

    @property
    def downsample_rate(self) -> int:
        """Downsample rate of the weighted sum (``target_rate``)."""
        return self._downsample_rate

    def forward(self, all_hs: list[torch.FloatTensor], all_hs_len: list[torch.LongTensor]
                ) -> tuple[torch.FloatTensor, torch.LongTensor]:
        """Weighted sum of the selected ones of all ``num_layer`` hidden states:
        ``(batch_size, seq_len, output_size)`` (zeros after each length) and its lengths."""
        if not isinstance(all_hs, (list, tuple)) or not isinstance(all_hs_len, (list, tuple)):
            raise TypeError("all_hs and all_hs_len must be lists of tensors (one per hidden state)")
        if len(all_hs) != self._num_layer or len(all_hs_len) != self._num_layer:
            raise ValueError(
                f"expected {self._num_layer} hidden states and lengths (all of the upstream's; "
                f"the featurizer selects {self.layer_selections}), got {len(all_hs)} and "
                f"{len(all_hs_len)}")
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
        check_lengths(counts, self._rates, range(self._num_layer))
        sel = self.layer_selections
        return weighted_sum([all_hs[i] for i in sel], [all_hs_len[i] for i in sel],
                            F.softmax(self.weights, dim=-1), rates=[self._rates[i] for i in sel],
                            target_rate=self._downsample_rate, normalize=self.normalize,
                            layer_names=sel)

    @property
    def layer_weights(self) -> pd.Series:
        """Softmax weights (probabilities summing to 1), indexed by layer."""
        with torch.no_grad():
            p = F.softmax(self.weights.detach().double(), dim=-1).cpu().numpy()
        return pd.Series(p, index=pd.Index(self.layer_selections, name="layer"), name="weight")

    def set_weights(self, probs=None, logits=None, *, atol: float = 1e-4) -> WeightedSumFeaturizer:
        """Set the weights from probabilities or logits (exactly one of them); returns self.

        Args:
            probs: ``(num_selected,)`` non-negative numbers summing to 1 (within
                ``atol``): a sequence, array, tensor, dict or Series keyed by layer.
                Zeros give a weight of exactly 0 (a logit of ``-1e4``).
            logits: ``(num_selected,)`` finite logits (softmax is applied).
        """
        if (probs is None) == (logits is None):
            raise ValueError("set_weights needs exactly one of probs=... or logits=...")
        n, index = len(self.layer_selections), self.layer_selections
        if probs is not None:
            p = as_vector(probs, n, "probs", index, nonnegative=True)
            if abs(float(p.sum()) - 1.0) > atol:
                raise ValueError(f"probs must sum to 1 (within {atol}), got sum {float(p.sum()):.6g}; "
                                 "pass probs / probs.sum() or give logits=... instead")
            new = torch.log(p / p.sum())
            # exact zeros get a finite logit so low that softmax gives exactly 0 in float32/64
            new = (new - new.max()).clamp(min=_ZERO_LOGIT)
        else:
            new = as_vector(logits, n, "logits", index)
            if torch.isinf(new).any():
                raise ValueError(f"logits must be finite, got {new.tolist()}; give probs=... "
                                 "with zeros for a weight of exactly 0")
        with torch.no_grad():
            self.weights.copy_(new.to(self.weights.dtype))
        return self

    def extra_repr(self) -> str:
        return (f"layer_selections={self.layer_selections}, normalize={self.normalize}, "
                f"output_size={self.output_size}, downsample_rate={self.downsample_rate}")

