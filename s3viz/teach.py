"""Checkers for classroom exercises: right or not, and a hint that does not give the answer away.

Each checker computes the right answer from the student's objects (the upstream, the store,
a probe table) and returns a :class:`Feedback`, truthy when correct: ``docs/reports.md``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from functools import partial
from numbers import Number
from typing import Optional

import numpy as np
import torch

from ._device import eval_session, module_device
from .align import expected_lengths
from .interface import SAMPLE_RATE, num_layer_of

__all__ = ["Feedback", "check_num_layer", "check_num_frames", "check_frame_rate_ms",
           "check_best_layer", "check_pooled", "check_weights"]


@dataclass(frozen=True)
class Feedback:
    """Result of a check: ``correct`` and a message (a hint when wrong)."""

    correct: bool
    message: str
    exercise: str = ""

    def __bool__(self) -> bool:
        return self.correct

    def __str__(self) -> str:
        mark = "correct" if self.correct else "not yet"
        head = f"[{self.exercise}] " if self.exercise else ""
        return f"{head}{mark}: {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.correct else "#9a6700"
        mark = "&#10004; correct" if self.correct else "&#10008; not yet"
        head = f"<b>{html.escape(self.exercise)}</b> " if self.exercise else ""
        return (f"<div style='border-left:4px solid {color};padding:4px 8px'>{head}"
                f"<span style='color:{color}'>{mark}</span>: {html.escape(self.message)}</div>")


def _number(answer) -> Optional[float]:
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if isinstance(answer, np.generic):
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, Number):
        return None
    value = float(answer)
    return value if math.isfinite(value) else None


def _exercise(ex: str):
    """``(yes, no)``: a right and a wrong :class:`Feedback` of exercise ``ex`` from a message."""
    return partial(Feedback, True, exercise=ex), partial(Feedback, False, exercise=ex)


def _refusal(no, answer, number: bool = True) -> Feedback | None:
    """The feedback when ``answer`` is still the placeholder or (``number``) not a number."""
    if answer is None or answer is Ellipsis:  # say so, not what a wrong answer is
        return no("not answered yet: replace the None in the exercise cell with your answer and "
                  "run the cell again.")
    if number and _number(answer) is None:
        return no(f"the answer should be a number, got {type(answer).__name__} {answer!r}")
    return None


def _array(answer, dtype):
    return np.asarray(answer.detach().cpu() if isinstance(answer, torch.Tensor) else answer,
                      dtype=dtype)


def check_num_layer(answer, upstream) -> Feedback:
    """How many hidden states does ``upstream`` return?"""
    yes, no = _exercise("number of hidden states")
    if (refused := _refusal(no, answer)) is not None:
        return refused
    value, right = _number(answer), num_layer_of(upstream)
    if value == right:
        return yes("forward() returns one hidden state per entry of all_hs.")
    if value == right - 1:
        return no("close: did you count only the transformer layers? Layer 0, the output of the "
                  "convolutional front end, is a hidden state too.")
    if value > right:
        return no("too many: count the entries of all_hs, or read upstream.num_layer.")
    return no("too few: len(all_hs) after one forward pass tells you.")


def check_num_frames(answer, upstream, wav_len: int, layer: int = -1) -> Feedback:
    """How many frames does ``layer`` of ``upstream`` give for ``wav_len`` samples (what the
    upstream itself returns in ``all_hs_len``)?"""
    yes, no = _exercise(f"frames for {wav_len} samples")
    if (refused := _refusal(no, answer)) is not None:
        return refused
    value = _number(answer)
    wav_len = int(wav_len)
    if wav_len <= 0:
        raise ValueError(f"wav_len must be a positive number of samples, got {wav_len}")
    wavs = torch.zeros(1, wav_len, 1, device=module_device(upstream))
    with eval_session(upstream), torch.inference_mode():
        _, all_hs_len = upstream(wavs, torch.tensor([wav_len], device=wavs.device))
    right = int(all_hs_len[layer][0])
    rate = int(upstream.downsample_rates[layer])
    if value == right:
        return yes("that is what the upstream returns.")
    used = [c for c in ("ceil", "round", "floor")
            if int(expected_lengths([wav_len], rate, c)[0]) == value]
    if used:
        return no(f"that matches the '{used[0]}' convention with rate {rate}, but this model's "
                  "convolutions need a full window (the receptive field) before the first "
                  "frame. Look at upstream.receptive_fields.")
    if abs(value - right) <= 2:
        return no("off by a frame or two: check how the first window is counted.")
    if abs(value - wav_len / SAMPLE_RATE * 1000) < 1:
        return no("that looks like milliseconds, not frames: divide by the downsample rate in "
                  "samples.")
    return no(f"far off: each frame advances by downsample_rates[{layer}] samples.")


def check_frame_rate_ms(answer, upstream, layer: int = -1) -> Feedback:
    """How many milliseconds apart are consecutive frames of ``layer``?"""
    yes, no = _exercise("frame shift in ms")
    if (refused := _refusal(no, answer)) is not None:
        return refused
    value = _number(answer)
    rate = int(upstream.downsample_rates[layer])
    right = rate / SAMPLE_RATE * 1000
    if abs(value - right) < 1e-6:
        return yes(f"{rate} samples at {SAMPLE_RATE} Hz.")
    if abs(value - rate) < 1e-6:
        return no("that is in samples; convert to milliseconds with the sample rate.")
    if abs(value - right / 1000) < 1e-9:
        return no("that is in seconds; the question asks for milliseconds.")
    return no("divide the downsample rate (samples per frame) by the sample rate.")


def check_best_layer(answer, probe_df, *, metric: str = "accuracy", target: Optional[str] = None,
                     tolerance: float = 0.0) -> Feedback:
    """Which layer scores best in ``probe_df`` (from :func:`s3viz.probe_layers`)? Any layer
    within ``tolerance`` of the best counts, and the feedback names them all (a tie)."""
    yes, no = _exercise("best layer")
    df = probe_df if target is None else probe_df[probe_df["target"] == target]
    if metric not in df.columns or "layer" not in df.columns:
        raise ValueError(f"probe_df needs columns 'layer' and {metric!r}, has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"probe_df has no rows for target {target!r}")
    scores = df.groupby("layer")[metric].mean()
    value = _number(answer)
    if (refused := _refusal(no, answer, number=False)) is not None:
        return refused
    if value is None or value not in scores.index:
        return no(f"answer with a layer index between {scores.index.min()} and "
                  f"{scores.index.max()}.")
    best, score = scores.max(), scores[int(value)]
    if score >= best - tolerance:
        ties = [int(i) for i in scores.index if scores[i] >= best - tolerance]
        msg = f"layer {int(value)} scores {score:.3f}."
        if len(ties) > 1:  # say so: a student should not read a tie as a ranking
            msg += (f" The best scores {best:.3f}, and every layer within {tolerance:.3f} of "
                    f"it ({', '.join(map(str, ties))}) counts: differences that small are "
                    "probe noise, so these layers tie.")
        return yes(msg)
    direction = "later" if scores.idxmax() > value else "earlier"
    return no(f"layer {int(value)} scores {score:.3f}; a {direction} layer does better. Read the "
              "peak of the curve, not its end.")


def check_pooled(answer, store, utterance: int, layer: int, *, atol: float = 1e-4) -> Feedback:
    """Mean-pool the valid frames of ``utterance`` at ``layer``: a ``(hidden_size,)`` tensor.

    Args:
        utterance: the utterance's position in ``store``.
    """
    yes, no = _exercise("mean pooling")
    if (refused := _refusal(no, answer, number=False)) is not None:
        return refused
    frames = store.utterance(int(utterance))[int(layer)].float()
    right = frames.mean(dim=0)
    try:
        got = torch.as_tensor(_array(answer, None), dtype=torch.float32)
    except (TypeError, ValueError):
        return no(f"answer with a tensor, got {type(answer).__name__}.")
    if got.shape != right.shape:
        if got.ndim == 2 and got.shape[-1] == right.shape[0]:
            return no(f"shape {tuple(got.shape)}: you still have a time axis; average over it.")
        return no(f"shape {tuple(got.shape)} but one vector of hidden_size {right.shape[0]} is "
                  "expected.")
    if torch.allclose(got, right, atol=atol, rtol=1e-4):
        return yes("the average of the valid frames.")
    n = frames.shape[0]
    if torch.allclose(got, right * n, atol=atol * n, rtol=1e-4):
        return no(f"that is the sum over the {n} frames, not their mean: use .mean(dim=0) (or "
                  "divide by the number of frames).")
    if torch.allclose(got, frames.mean(dim=1).mean() * torch.ones_like(right), atol=atol):
        return no("you averaged over the hidden dimensions too: average over the time axis "
                  "only (dim=0).")
    return no("right shape, wrong values: average that utterance's frames at that layer over "
              "the time axis, its valid frames only (the padding frames of a batch must not "
              "count).")


def check_weights(answer, num_layer: int) -> Feedback:
    """Are ``answer`` valid featurizer weights (a probability vector)?

    Args:
        num_layer: how many layers the weights must cover.
    """
    yes, no = _exercise("layer weights")
    if (refused := _refusal(no, answer, number=False)) is not None:
        return refused
    try:
        w = _array(answer, np.float64).ravel()
    except (TypeError, ValueError):
        return no(f"answer with a list or tensor of numbers, got {type(answer).__name__}.")
    if w.size != int(num_layer):
        return no(f"{w.size} weights for {num_layer} hidden states: one per layer.")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        return no("weights are probabilities: none may be negative. Did you forget the softmax?")
    if abs(w.sum() - 1) > 1e-4:
        return no(f"they sum to {w.sum():.3f}; probabilities sum to 1.")
    return yes("a probability vector over the layers.")
