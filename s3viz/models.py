"""Frame-level and utterance-level models with the semantics of s3prl's ``s3prl.nn``, pooling
a whole padded batch at once, and the public pooling functions they call (:func:`masked_mean`
...): each takes ``x`` ``(batch_size, seq_len, hidden_size)`` float (padded frames arbitrary,
never read) and ``x_len`` ``(batch_size,)`` long valid frames, each in ``[1, seq_len]``.
How, and why it is exact: ``docs/models.md``.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .interface import AbsFrameModel, AbsUtteranceModel

__all__ = ["length_mask", "masked_mean", "masked_mean_std", "masked_max", "masked_softmax_pool",
           "FrameLevelLinear", "FrameLevelMLP", "MeanPooling", "StatisticsPooling",
           "AttentivePooling", "MeanPoolingLinear"]


# --------------------------------------------------------------------------- plain functions


def _check_x(x, x_len, *, pooling: bool, input_size: Optional[int] = None,
             who: str = "x") -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} must be a (batch_size, seq_len, hidden_size) tensor, got "
                         f"{shape}; add a batch axis with x.unsqueeze(0) for one utterance")
    if not x.is_floating_point():
        raise TypeError(f"{who} must be a float tensor, got {x.dtype}; use x.float()")
    if input_size is not None and x.shape[-1] != input_size:
        raise ValueError(f"{who} has hidden_size {x.shape[-1]} but the model's input_size is "
                         f"{input_size}")
    if not isinstance(x_len, torch.Tensor):
        x_len = torch.as_tensor(x_len)
    if x_len.dim() != 1 or x_len.shape[0] != x.shape[0]:
        raise ValueError(f"x_len must be (batch_size,) = ({x.shape[0]},) valid frames per row, "
                         f"got shape {tuple(x_len.shape)}")
    if x_len.is_floating_point() or x_len.dtype == torch.bool:
        raise TypeError(f"x_len must be an integer tensor, got {x_len.dtype}; use x_len.long()")
    if x_len.numel():
        # checked where x_len lives (usually the CPU: no device synchronisation)
        lo, hi = int(x_len.min()), int(x_len.max())
        if hi > x.shape[1]:
            raise ValueError(f"x_len has a length {hi} longer than seq_len {x.shape[1]}; "
                             "lengths count the valid frames of each padded row")
        if lo < (1 if pooling else 0):
            raise ValueError(f"x_len has a length {lo}; pooling needs at least one valid frame "
                             "per utterance" if pooling else f"x_len must be non-negative, got {lo}")
    return x, x_len.to(device=x.device, dtype=torch.long)


def length_mask(x_len: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(batch_size, max_len)`` bool mask, True on the first ``x_len[b]`` frames of row ``b``.

    Args:
        max_len: padded length ``seq_len``.
    """
    return torch.arange(int(max_len), device=x_len.device)[None, :] < x_len[:, None]


def _segments(x_len: torch.Tensor, seq_len: int):
    """``(mask, rows, offsets)``: the valid frames' indices in ``x.reshape(-1, hidden_size)``,
    utterance by utterance, and where each utterance's rows start."""
    mask = length_mask(x_len, seq_len)
    rows = mask.reshape(-1).nonzero().squeeze(1)
    offsets = torch.cumsum(x_len, 0) - x_len
    return mask, rows, offsets


def _segment_reduce(x, rows, offsets, *, mean: bool = False, weights=None) -> torch.Tensor:
    """Sum (or mean, or ``weights``-weighted sum) of the valid frames of each utterance: one
    ``embedding_bag`` reading only the valid rows (``docs/models.md``)."""
    table = x.reshape(-1, x.shape[-1])
    return F.embedding_bag(rows, table, offsets, mode="mean" if mean else "sum",
                           per_sample_weights=weights)


def masked_mean(x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    """``(batch_size, hidden_size)`` mean over the valid frames of each row (s3prl
    ``MeanPooling``)."""
    x, x_len = _check_x(x, x_len, pooling=True)
    return _masked_mean(x, x_len)


def _masked_mean(x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    _, rows, offsets = _segments(x_len, x.shape[1])
    return _segment_reduce(x, rows, offsets, mean=True)


_CPU_BLOCK_BYTES = 8 << 20
"""Size of the row blocks that CPU code keeps its temporaries to (cache and allocator friendly)."""


def _time_block(x: torch.Tensor) -> int:
    if x.device.type != "cpu":
        return max(1, x.shape[1])
    # keep each (batch_size, block, hidden_size) temporary cache sized
    per_frame = max(1, x.shape[0] * x.shape[2] * x.element_size())
    return int(min(max(4, (_CPU_BLOCK_BYTES // 2) // per_frame), max(1, x.shape[1])))


def _centred_sums(x, mean, m, block: int, sanitize_mask=None):
    """``(sum_t m_t d_t, sum_t m_t d_t**2)`` with ``d = x - mean``, in time blocks."""
    grad = torch.is_grad_enabled() and (x.requires_grad or mean.requires_grad)
    s1 = x.new_zeros(x.shape[0], 1, x.shape[2])
    s2 = x.new_zeros(x.shape[0], 1, x.shape[2])
    for t0 in range(0, x.shape[1], block):
        d = x[:, t0 : t0 + block] - mean[:, None, :]
        if sanitize_mask is not None:
            d = d.masked_fill(~sanitize_mask[:, t0 : t0 + block, None], 0.0)
        mb = m[:, :, t0 : t0 + block]
        s1 = torch.baddbmm(s1, mb, d)
        d = d.square() if grad else d.square_()
        s2 = torch.baddbmm(s2, mb, d)
    return s1.squeeze(1), s2.squeeze(1)


def masked_mean_std(
    x: torch.Tensor, x_len: torch.Tensor, *, correction: int = 1
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)``, each ``(batch_size, hidden_size)``, over the valid frames of each row,
    two-pass (``docs/models.md``): ``std`` is ``sqrt(sum((x - mean) ** 2) / (n - correction))``
    (1: ``torch.std``'s and s3prl's), 0 for rows of ``n <= correction`` frames."""
    x, x_len = _check_x(x, x_len, pooling=True)
    if isinstance(correction, bool) or not isinstance(correction, int) or correction < 0:
        raise ValueError(f"correction must be a non-negative int, got {correction!r}")
    return _masked_mean_std(x, x_len, correction)


def _masked_mean_std(x, x_len, correction: int):
    mask, rows, offsets = _segments(x_len, x.shape[1])
    mean = _segment_reduce(x, rows, offsets, mean=True)
    m = mask.to(x.dtype).unsqueeze(1)  # (batch_size, 1, seq_len): 0 on padded frames
    block = _time_block(x)
    s1, s2 = _centred_sums(x, mean, m, block)
    if not bool(torch.isfinite(s2).all()) and bool(torch.isfinite(mean).all()):
        # padded NaN/inf (0 * nan = nan in the matmul): zero them and redo, only then
        s1, s2 = _centred_sums(x, mean, m, block, sanitize_mask=mask)
    # corrected two-pass (Chan, Golub & LeVeque 1983): the residual mean of the
    # deviations fixes the rounding error of the first-pass mean.
    n = x_len.to(x.dtype)[:, None]
    delta = s1 / n
    mean = mean + delta
    ss = s2 - s1 * delta
    dof = (x_len - correction).to(x.dtype)[:, None]
    var = torch.where(dof > 0, ss / dof.clamp(min=1), torch.zeros_like(ss))
    return mean, var.clamp(min=0).sqrt()


def masked_max(x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    """``(batch_size, hidden_size)`` maximum over the valid frames of each row."""
    x, x_len = _check_x(x, x_len, pooling=True)
    mask = length_mask(x_len, x.shape[1])
    return x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)


def masked_softmax_pool(x: torch.Tensor, x_len: torch.Tensor, scores: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention pooling: softmax of ``scores`` over the valid frames, then the weighted sum:
    ``(pooled, weights)``, the weights zero on padded frames.

    Args:
        scores: ``(batch_size, seq_len)`` attention logits (padded ones ignored).
    """
    x, x_len = _check_x(x, x_len, pooling=True)
    if not isinstance(scores, torch.Tensor) or scores.shape != x.shape[:2]:
        raise ValueError(
            f"scores must be a (batch_size, seq_len) = {tuple(x.shape[:2])} tensor, got "
            f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    return _masked_softmax_pool(x, x_len, scores)


def _masked_softmax_pool(x, x_len, scores, segments=None):
    mask, rows, offsets = _segments(x_len, x.shape[1]) if segments is None else segments
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
    w_valid = weights.reshape(-1).index_select(0, rows).to(x.dtype)
    return _segment_reduce(x, rows, offsets, weights=w_valid), weights


# --------------------------------------------------------------------------- modules


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class _Sized:
    """``input_size`` and ``output_size``, fixed when the module is built."""

    input_size = property(lambda self: self._input_size)
    output_size = property(lambda self: self._output_size)

    def _set_sizes(self, input_size, output_size) -> None:
        self._input_size = _positive_int(input_size, "input_size")
        self._output_size = _positive_int(output_size, "output_size")


def _linear_stack(module, hidden_sizes, name: str, activation=None, dropout=0.0) -> None:
    """``module.hidden_layers`` (``Linear -> activation -> dropout`` per hidden size) and
    ``module.final_proj``, between its ``input_size`` and ``output_size``."""
    layers, size = [], module.input_size
    for h in hidden_sizes:
        layers.append(nn.Linear(size, _positive_int(h, name)))
        if activation is not None:
            layers.append(getattr(nn, activation)())
        if dropout:
            layers.append(nn.Dropout(float(dropout)))
        size = h
    module.hidden_layers = nn.Sequential(*layers)
    module.final_proj = nn.Linear(size, module.output_size)


class FrameLevelMLP(_Sized, AbsFrameModel):
    """Per-frame MLP: ``Linear -> activation -> dropout`` per hidden size (``()``: one
    linear layer), then a projection; ``x_len`` comes back unchanged.

    Args:
        activation: a ``torch.nn`` class name (``"ReLU"`` ...) or None (s3prl's default).
    """

    def __init__(self, input_size: int, output_size: int, hidden_sizes: Sequence[int] = (256,),
                 activation: Optional[str] = "ReLU", dropout: float = 0.0):
        super().__init__()
        self._set_sizes(input_size, output_size)
        if activation is not None and not (
                isinstance(getattr(nn, str(activation), None), type)
                and issubclass(getattr(nn, activation), nn.Module)):
            raise ValueError(f"activation must name a torch.nn module class such as 'ReLU' or be "
                             f"None, got {activation!r}")
        _linear_stack(self, hidden_sizes, "hidden_sizes[i]", activation, dropout)

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x, checked = _check_x(x, x_len, pooling=False, input_size=self._input_size)
        return self.final_proj(self.hidden_layers(x)), (
            x_len if isinstance(x_len, torch.Tensor) else checked)


class FrameLevelLinear(FrameLevelMLP):
    """s3prl's SUPERB frame-level linear probe: ``Linear(input, hidden) -> Linear(hidden,
    output)``, no activation; ``hidden_size=None`` gives one ``Linear``."""

    def __init__(self, input_size: int, output_size: int, hidden_size: Optional[int] = 256):
        super().__init__(input_size, output_size, activation=None,
                         hidden_sizes=() if hidden_size is None else (hidden_size,))


class _Pooling(_Sized, AbsUtteranceModel):
    """Pooling: ``forward(x, x_len)`` -> ``(batch_size, output_size)``, at least one valid
    frame per utterance."""

    def __init__(self, input_size: int, output_size: Optional[int] = None):
        super().__init__()
        self._set_sizes(input_size, input_size if output_size is None else output_size)


class MeanPooling(_Pooling):
    """Mean over valid frames (s3prl ``MeanPooling`` / ``TemporalAveragePooling``)."""

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
        x, x_len = _check_x(x, x_len, pooling=True, input_size=self._input_size)
        return _masked_mean(x, x_len)


class StatisticsPooling(_Pooling):
    """``[mean, std]`` over valid frames (``2 * input_size`` features; ``correction`` 1, as
    ``torch.std``, or 0): s3prl's ``TemporalStatisticsPooling``."""

    def __init__(self, input_size: int, correction: int = 1):
        super().__init__(input_size, 2 * _positive_int(input_size, "input_size"))
        self.correction = int(correction)

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
        x, x_len = _check_x(x, x_len, pooling=True, input_size=self._input_size)
        mean, std = _masked_mean_std(x, x_len, self.correction)
        return torch.cat((mean, std), dim=-1)


class AttentivePooling(_Pooling):
    """Self-attentive pooling (s3prl ``SelfAttentivePooling``): ``sum_t w_t x_t`` with
    ``w = softmax_t(tanh(W x_t + b) @ a)`` over the valid frames (scored packed, so padding
    is never read); ``W`` has ``hidden_size`` outputs (default ``input_size``). ``a`` starts
    ``normal(0, 1 / sqrt(hidden_size))`` (s3prl's starts as uninitialised memory)."""

    def __init__(self, input_size: int, hidden_size: Optional[int] = None):
        super().__init__(input_size)
        hidden = (self._input_size if hidden_size is None
                  else _positive_int(hidden_size, "hidden_size"))
        self.sap_linear = nn.Linear(self._input_size, hidden)
        self.attention = nn.Parameter(torch.randn(hidden, 1) / hidden**0.5)

    def attention_weights(self, x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
        """``(batch_size, seq_len)`` attention weights (zero on padded frames)."""
        return self._pool(x, x_len)[1]

    def _pool(self, x, x_len):
        x, x_len = _check_x(x, x_len, pooling=True, input_size=self._input_size)
        segments = _segments(x_len, x.shape[1])
        mask, rows, _ = segments
        table = x.reshape(-1, x.shape[-1])
        # scores of the valid frames only (padded frames never enter the linear layer), in
        # row blocks on the CPU so that temporaries stay cache- and allocator-friendly
        block = rows.numel() if x.device.type != "cpu" else max(
            16, _CPU_BLOCK_BYTES // (4 * max(self._input_size, self.sap_linear.out_features)))
        if torch.is_grad_enabled() or type(self.sap_linear) is not nn.Linear:
            s = torch.cat([
                (torch.tanh(self.sap_linear(table.index_select(0, rows[r0 : r0 + block])))
                 @ self.attention).squeeze(-1)
                for r0 in range(0, rows.numel(), block)])
        else:  # inference: reuse two buffers, no allocation per block
            w, b, a = self.sap_linear.weight, self.sap_linear.bias, self.attention.squeeze(-1)
            s = x.new_empty(rows.numel(), dtype=w.dtype)
            xb = x.new_empty(min(block, rows.numel()), x.shape[-1])
            hb = x.new_empty(min(block, rows.numel()), w.shape[0], dtype=w.dtype)
            for r0 in range(0, rows.numel(), block):
                r = rows[r0 : r0 + block]
                xs, hs = xb[: r.numel()], hb[: r.numel()]
                torch.index_select(table, 0, r, out=xs)
                torch.addmm(b, xs, w.t(), out=hs)
                hs.tanh_()
                torch.mv(hs, a, out=s[r0 : r0 + r.numel()])
        scores = torch.full(mask.shape, float("-inf"), device=x.device, dtype=s.dtype)
        scores = scores.masked_scatter(mask, s)
        return _masked_softmax_pool(x, x_len, scores, segments)

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
        return self._pool(x, x_len)[0]


class MeanPoolingLinear(_Pooling):
    """s3prl's SUPERB utterance-level linear probe: ``Linear -> MeanPooling -> Linear``
    (``hidden_size=None``: one ``Linear``). Both are linear, so :meth:`forward` pools first
    and projects the pooled vector: the same result at a fraction of the cost."""

    def __init__(self, input_size: int, output_size: int, hidden_size: Optional[int] = 256):
        super().__init__(input_size, output_size)
        _linear_stack(self, () if hidden_size is None else (hidden_size,), "hidden_size")

    @classmethod
    def from_frame_model(cls, frame_model: FrameLevelMLP) -> "MeanPoolingLinear":
        """An utterance model equal to the mean pooling of a linear ``frame_model``'s outputs
        (a :class:`FrameLevelLinear`, or an MLP without activation or dropout), weights copied."""
        if not isinstance(frame_model, FrameLevelMLP):
            raise TypeError("frame_model must be a FrameLevelLinear/FrameLevelMLP, got "
                            f"{type(frame_model).__name__}")
        linears = [m for m in frame_model.hidden_layers if isinstance(m, nn.Linear)]
        if len(linears) != len(frame_model.hidden_layers) or len(linears) > 1:
            raise ValueError(
                "frame_model must be linear with at most one hidden layer (no activation or "
                "dropout), e.g. FrameLevelLinear, for its mean pooling to be a MeanPoolingLinear")
        hidden = linears[0].out_features if linears else None
        model = cls(frame_model.input_size, frame_model.output_size, hidden_size=hidden)
        if linears:
            model.hidden_layers[0].load_state_dict(copy.deepcopy(linears[0].state_dict()))
        model.final_proj.load_state_dict(copy.deepcopy(frame_model.final_proj.state_dict()))
        ref = next(frame_model.parameters())
        return model.to(device=ref.device, dtype=ref.dtype)

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
        x, x_len = _check_x(x, x_len, pooling=True, input_size=self._input_size)
        return self.final_proj(self.hidden_layers(_masked_mean(x, x_len)))


# --------------------------------------------------------------------------- s3prl-style references


def _loop_mean(x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    """s3prl ``MeanPooling``: one ``torch.mean`` per utterance (the reference; slow)."""
    return torch.stack([torch.mean(xi[: int(n)], dim=0) for xi, n in zip(x, x_len)])


def _loop_statistics(x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    """s3prl ``TemporalStatisticsPooling``: ``cat(mean, std)`` per utterance."""
    return torch.stack(
        [torch.cat((torch.mean(xi[: int(n)], dim=0), torch.std(xi[: int(n)], dim=0)), dim=-1)
         for xi, n in zip(x, x_len)]
    )


def _loop_attentive(model: AttentivePooling, x: torch.Tensor, x_len: torch.Tensor) -> torch.Tensor:
    """s3prl ``SelfAttentivePooling.forward`` with ``model``'s parameters."""
    out = []
    for xi, n in zip(x, x_len):
        xi = xi[: int(n)].unsqueeze(0)
        h = torch.tanh(model.sap_linear(xi))
        w = torch.matmul(h, model.attention).squeeze(dim=2)
        w = torch.softmax(w, dim=1).view(xi.size(0), xi.size(1), 1)
        out.append(torch.sum(xi * w, dim=1).squeeze(0))
    return torch.stack(out)
