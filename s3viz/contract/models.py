"""``check_frame_model`` and ``check_utterance_model``: downstream models on frames.

A frame-level model keeps the time axis (one output per valid frame, padding
invariant); an utterance-level model pools it away (one output per utterance).
Both run on seeded ``N(0, 1)`` frames with garbage in the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .checks import (
    _check_finite,
    _check_output,
    _positive_int_property,
    _run_pair,
    _setup_row,
)
from .report import ContractReport, _exc, _Rows
from .session import (
    _DEFAULT_X_LENGTHS,
    _GARBAGE_SCALE,
    _as_lengths,
    _call,
    _check_run_args,
    _grade,
    _max_abs,
    _max_diff,
    _name,
    _noise,
    _quiet_rng,
    _require_forward,
    _Session,
)

__all__ = ["check_frame_model", "check_utterance_model"]


# ---------------------------------------------------------------------------
# check_frame_model / check_utterance_model


# ---------------------------------------------------------------------------


def _model_inputs(lengths, input_size, seed, s: _Session):
    x, x_len = _noise(lengths, seed, input_size, 1.0)
    g = torch.Generator().manual_seed(seed + 1)
    garbage = x.clone()
    for i, n in enumerate(lengths):
        pad = garbage.shape[1] - n
        if pad:
            garbage[i, n:] = torch.randn(pad, input_size, generator=g) * _GARBAGE_SCALE
    return x.to(s.device, s.dtype), garbage.to(s.device, s.dtype), x_len.to(s.device)


def _model_prelude(model, lengths, s, seed, rows):
    _setup_row(
        rows, s, f"batch of {len(lengths)} noise sequences (N(0, 1) frames), x_len", lengths, seed
    )
    s.eval_row(rows)
    in_size = _positive_int_property(model, "model", "input_size", "the feature size of x", rows)
    out_size = _positive_int_property(
        model, "model", "output_size", "the feature size of the output", rows
    )
    return in_size, out_size


def _validate_model_call(model, arg, interface, returns, x_lengths, atol, rtol, seed, device):
    _require_forward(
        model,
        arg,
        interface,
        f"forward(x (batch_size, seq_len, input_size), x_len (batch_size,)) -> {returns}",
    )
    return _check_run_args(x_lengths, "x_lengths", _DEFAULT_X_LENGTHS, atol=atol, rtol=rtol,
                           seed=seed, device=device)


_FRAME_CHECKS = (
    "output_shape",
    "lengths_type",
    "lengths_bound",
    "output_lengths",
    "finite",
    "determinism",
    "padding_invariance",
)


def check_frame_model(
    model,
    *,
    device=None,
    x_lengths: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    move: bool = False,
) -> ContractReport:
    """Check that ``model`` follows s3prl's ``AbsFrameModel`` contract.

    Runs ``model(x, x_len)`` on seeded noise ``x`` ``(batch_size, seq_len, input_size)``
    with ``x_len`` ``(batch_size,)``; again on the same batch; with the padded
    frames full of large noise (``N(0, 1000^2)``); and on each sequence alone.

    Checks: ``setup``, ``eval_mode``; ``input_size``, ``output_size`` (positive
    ints); ``forward`` (returns ``(y, y_len)``); ``output_shape``
    (``(batch_size, seq_len', output_size)`` floating); ``lengths_type``;
    ``lengths_bound`` (``max(y_len) == seq_len'``); ``output_lengths``
    (``y_len == x_len`` when the time axis keeps its length: ok; a model that
    changes the time resolution: warn, its lengths are shown); ``finite``;
    ``determinism``; ``padding_invariance`` (valid outputs equal with zero and
    with garbage padding, and alone vs in the batch; ``value`` = max abs diff).

    Args:
        model: the frame model (``nn.Module`` or attribute-only object).
        x_lengths: frames per sequence (default ``(37, 50, 12)``).
        device, atol, rtol, seed, move: as in :func:`check_upstream`.

    Returns:
        :class:`ContractReport` titled ``check_frame_model(<class name>)``.
    """
    return _run_model_check(
        model, "AbsFrameModel", "(y (batch_size, seq_len, output_size), y_len (batch_size,))",
        _run_frame_model_checks, "check_frame_model", x_lengths, atol, rtol, seed, device, move)


def _run_model_check(model, interface, signature, checker, title, x_lengths, atol, rtol, seed,
                     device, move) -> ContractReport:
    """Validate the call, then run ``checker(model, session, lengths, seed, rows)``."""
    lengths, dev = _validate_model_call(model, "model", interface, signature, x_lengths, atol,
                                        rtol, seed, device)
    rows = _Rows()
    s = _Session(model, "model", dev, move, atol, rtol)
    with s, _quiet_rng(seed, [s.device]):
        checker(model, s, lengths, seed, rows)
    return rows.report(f"{title}({_name(model)})")


def _run_frame_model_checks(model, s, lengths, seed, rows):
    batch = len(lengths)
    in_size, out_size = _model_prelude(model, lengths, s, seed, rows)
    if in_size is None:
        rows.skip(("forward",) + _FRAME_CHECKS, "input_size unusable, so no input can be built")
        return
    x, garbage, x_len = _model_inputs(lengths, in_size, seed, s)
    res = _run_pair(model, x, x_len, "y")
    if isinstance(res, str):
        rows.add("forward", "fail", f"forward(x {tuple(x.shape)}, x_len ({batch},)) {res}")
        rows.skip(_FRAME_CHECKS, "forward failed")
        return
    y, y_len_raw = res
    rows.add("forward", "ok", f"forward(x {tuple(x.shape)}, x_len ({batch},)) returned (y, y_len)")
    y_len = _check_output(rows, y, y_len_raw, batch, out_size, "output_size", "y_len")
    x_len_cpu = x_len.cpu()
    with rows.guard("output_lengths"):
        if y_len is None or y.dim() < 2:
            rows.add("output_lengths", "warn", "not assessed: y_len or y unusable")
        elif y.shape[1] == x.shape[1]:
            if torch.equal(y_len, x_len_cpu):
                rows.add("output_lengths", "ok", f"y_len == x_len = {x_len_cpu.tolist()}", value=0)
            else:
                dev = y_len - x_len_cpu
                rows.add(
                    "output_lengths",
                    "fail",
                    f"y_len {y_len.tolist()} != x_len {x_len_cpu.tolist()} "
                    "although seq_len is unchanged "
                    f"({y.shape[1]}): return the input lengths for a frame-wise model",
                    value=int(dev[dev.abs().argmax()]),
                )
        else:
            rows.add(
                "output_lengths",
                "warn",
                f"the model changes the time axis ({x.shape[1]} -> {y.shape[1]} frames): y_len "
                f"{y_len.tolist()} for x_len {x_len_cpu.tolist()} (not compared to a rate)",
            )
    valid = None
    if y_len is not None and y.dim() >= 2:
        valid = y_len.clamp(0, y.shape[1])
    with rows.guard("finite"):
        _check_finite(rows, y, valid)
    scale = _max_abs(y)

    def frames(out, i, k):
        return out[i, :k]

    def rerun(inp, inp_len, b):
        r = _run_pair(model, inp, inp_len, "y")
        if isinstance(r, str):
            return r
        n = _as_lengths(r[1], b)
        if n is None or r[0].dim() < 2 or r[0].shape[0] != b:
            return "returned unusable (y, y_len)"
        return r[0], n.clamp(0, r[0].shape[1])

    if valid is None:
        rows.skip(("determinism", "padding_invariance"), "y or y_len unusable")
        return
    _compare_reruns(rows, s, scale, (y, valid), rerun, x, garbage, x_len, lengths, frames)


def _compare_reruns(rows, s, scale, base, rerun, x, garbage, x_len, lengths, frames):
    """determinism and padding_invariance rows for frame and utterance models.

    ``base``: (output, valid lengths or None); ``frames(out, i, k)`` picks the
    comparable values of item ``i`` (``k`` valid frames; None for utterance outputs).
    """
    out, valid = base
    tol = s.tol(scale)

    def diff_items(other, other_valid, pairs):
        worst = 0.0
        for i, j in pairs:
            k = None
            if valid is not None:
                k = min(int(valid[i]), int(other_valid[j]))
            worst = max(worst, _max_diff(frames(out, i, k), frames(other, j, k)))
        return worst

    batch = len(lengths)
    deterministic = True
    with rows.guard("determinism"):
        r = rerun(x, x_len, batch)
        if isinstance(r, str):
            rows.add("determinism", "fail", f"the second call {r}")
            deterministic = False
        else:
            if valid is not None and not torch.equal(valid, r[1]):
                rows.add(
                    "determinism",
                    "fail",
                    f"lengths differ between two calls: {valid.tolist()} vs {r[1].tolist()}",
                )
                deterministic = False
            else:
                d = diff_items(r[0], r[1], [(i, i) for i in range(batch)])
                status = _grade(d, tol)
                deterministic = status == "ok"
                rows.add(
                    "determinism",
                    status,
                    f"two calls on the same batch: max abs diff {d:.3g} "
                    f"(tolerance {tol:.3g})"
                    + ("" if status == "ok" else "; dropout or noise active in eval mode?"),
                    value=d,
                )
    with rows.guard("padding_invariance"):
        if not deterministic:
            rows.add(
                "padding_invariance",
                "warn",
                "not assessed: the model is not deterministic (see determinism)",
            )
            return
        parts, worst = [], 0.0
        r = rerun(garbage, x_len, batch)
        if isinstance(r, str):
            rows.add(
                "padding_invariance", "fail", f"with garbage in the padded frames, forward {r}"
            )
            return
        d = diff_items(r[0], r[1], [(i, i) for i in range(batch)])
        parts.append(f"garbage (N(0, {_GARBAGE_SCALE:g}^2)) vs zeros in padded frames: {d:.3g}")
        worst = max(worst, d)
        d_alone = 0.0
        for i, n in enumerate(lengths):
            r = rerun(x[i : i + 1, :n], x_len[i : i + 1], 1)
            if isinstance(r, str):
                rows.add("padding_invariance", "fail", f"sequence {i} alone (batch_size 1) {r}")
                return
            d_alone = max(d_alone, diff_items(r[0], r[1], [(i, 0)]))
        parts.append(f"alone vs in the batch: {d_alone:.3g}")
        worst = max(worst, d_alone)
        status = _grade(worst, tol)
        text = "max abs diff of valid outputs, " + "; ".join(parts) + f" (tolerance {tol:.3g})"
        if status == "fail":
            text += (
                "; padded frames leak into valid outputs: mask them with x_len (e.g. a mean or "
                "normalisation over the whole padded time axis)"
            )
        elif status == "warn":
            text += "; small, possibly float noise: raise atol/rtol if expected"
        rows.add("padding_invariance", status, text, value=worst)


_UTTERANCE_CHECKS = ("output_shape", "finite", "determinism", "padding_invariance")


def check_utterance_model(
    model,
    *,
    device=None,
    x_lengths: Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    move: bool = False,
) -> ContractReport:
    """Check that ``model`` follows s3prl's ``AbsUtteranceModel`` contract.

    Runs ``model(x, x_len)`` as :func:`check_frame_model` does and expects one
    ``(batch_size, output_size)`` tensor.

    Checks: ``setup``, ``eval_mode``; ``input_size``, ``output_size``;
    ``forward`` (returns a tensor); ``output_shape`` (``(batch_size, output_size)``
    floating); ``finite``; ``determinism``; ``padding_invariance`` (outputs
    equal with zero and garbage padding and alone vs in the batch: a pooling that
    ignores ``x_len`` fails here).

    Args:
        model: the utterance model (``nn.Module`` or attribute-only object).
        x_lengths: frames per sequence (default ``(37, 50, 12)``).
        device, atol, rtol, seed, move: as in :func:`check_upstream`.

    Returns:
        :class:`ContractReport` titled ``check_utterance_model(<class name>)``.
    """
    return _run_model_check(
        model, "AbsUtteranceModel", "(batch_size, output_size)", _run_utterance_model_checks,
        "check_utterance_model", x_lengths, atol, rtol, seed, device, move)


def _run_utterance_model_checks(model, s, lengths, seed, rows):
    batch = len(lengths)
    in_size, out_size = _model_prelude(model, lengths, s, seed, rows)
    if in_size is None:
        rows.skip(("forward",) + _UTTERANCE_CHECKS, "input_size unusable, so no input can be built")
        return
    x, garbage, x_len = _model_inputs(lengths, in_size, seed, s)

    def rerun(inp, inp_len, b):
        try:
            r = _call(model, inp, inp_len)
        except Exception as e:  # noqa: BLE001 - the object's own error becomes a fail row
            return f"raised {_exc(e)}"
        if not isinstance(r, torch.Tensor):
            return f"returned {type(r).__name__}, not a tensor"
        if r.dim() < 1 or r.shape[0] != b:
            return f"returned shape {tuple(r.shape)}, expected batch_size {b} first"
        return r, None

    try:
        out = _call(model, x, x_len)
    except Exception as e:  # noqa: BLE001 - the object's own error becomes a fail row
        out = e
    if not isinstance(out, torch.Tensor):
        what = (
            f"raised {_exc(out)}"
            if isinstance(out, Exception)
            else f"returned {type(out).__name__}; must return one (batch_size, output_size) tensor "
            "(no lengths: the time axis is pooled away)"
        )
        rows.add("forward", "fail", f"forward(x {tuple(x.shape)}, x_len ({batch},)) {what}")
        rows.skip(_UTTERANCE_CHECKS, "forward failed")
        return
    rows.add("forward", "ok", f"forward(x {tuple(x.shape)}, x_len ({batch},)) returned a tensor")
    with rows.guard("output_shape"):
        problems = []
        if out.dim() != 2:
            problems.append(f"has {out.dim()} dims, expected 2 (batch_size, output_size)")
        else:
            if out.shape[0] != batch:
                problems.append(f"batch axis is {out.shape[0]}, expected batch_size={batch}")
            if out_size is not None and out.shape[1] != out_size:
                problems.append(f"last axis is {out.shape[1]} but output_size = {out_size}")
        if not out.is_floating_point():
            problems.append(f"dtype {out.dtype} is not floating point")
        if problems:
            rows.add("output_shape", "fail", f"shape {tuple(out.shape)}: " + "; ".join(problems))
        elif out_size is None:
            rows.add("output_shape", "warn", f"shape {tuple(out.shape)}; output_size unknown")
        else:
            rows.add(
                "output_shape",
                "ok",
                f"shape {tuple(out.shape)} = (batch_size, output_size), {out.dtype}",
            )
    with rows.guard("finite"):
        _check_finite(rows, out, None)
    if out.dim() < 1 or out.shape[0] != batch:
        rows.skip(("determinism", "padding_invariance"), "output has no batch axis")
        return

    def frames(o, i, k):
        return o[i]

    _compare_reruns(rows, s, _max_abs(out), (out, None), rerun, x, garbage, x_len, lengths, frames)
