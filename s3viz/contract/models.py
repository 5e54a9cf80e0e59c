"""``check_frame_model`` and ``check_utterance_model``: downstream models on noise frames.

A frame-level model keeps the time axis, an utterance-level model pools it away
(``docs/contract.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .checks import (_check_finite, _check_shape, _determinism_row, _forward_output,
                     _positive_int_property, _run_pair)
from .report import ContractReport
from .session import (_DEFAULT_X_LENGTHS, _GARBAGE_SCALE, _as_lengths, _call, _graded_row,
                      _max_abs, _max_diff, _noise, _run_checks)

__all__ = ["check_frame_model", "check_utterance_model"]

_FRAME_CHECKS = ("output_shape", "lengths_type", "lengths_bound", "output_lengths", "finite",
                 "determinism", "padding_invariance")
_UTTERANCE_CHECKS = ("output_shape", "finite", "determinism", "padding_invariance")


def check_frame_model(model, *, device=None, x_lengths: Sequence[int] | None = None,
                      atol: float | None = None, rtol: float | None = None, seed: int = 0,
                      move: bool = False) -> ContractReport:
    """Check that ``model`` follows s3prl's ``AbsFrameModel`` contract; a
    :class:`ContractReport` titled ``check_frame_model(<class name>)``.

    Runs ``model(x, x_len)`` on seeded noise frames of ``x_lengths`` (default
    ``(37, 50, 12)``): the batch, again, with garbage in the padded frames, and each
    sequence alone (``docs/contract.md``). The other arguments are :func:`check_upstream`'s.
    """
    return _model_check("check_frame_model", "AbsFrameModel",
                        "(y (batch_size, seq_len, output_size), y_len (batch_size,))",
                        _FRAME_CHECKS, _frame_model_checks, model, x_lengths, seed=seed,
                        device=device, move=move, atol=atol, rtol=rtol)


def check_utterance_model(model, *, device=None, x_lengths: Sequence[int] | None = None,
                          atol: float | None = None, rtol: float | None = None, seed: int = 0,
                          move: bool = False) -> ContractReport:
    """Check that ``model`` follows s3prl's ``AbsUtteranceModel`` contract.

    Runs ``model(x, x_len)`` as :func:`check_frame_model` does and expects one
    ``(batch_size, output_size)`` tensor (the checks: ``docs/contract.md``). The
    arguments are :func:`check_frame_model`'s; the report is titled
    ``check_utterance_model(<class name>)``.
    """
    return _model_check("check_utterance_model", "AbsUtteranceModel",
                        "(batch_size, output_size)", _UTTERANCE_CHECKS, _utterance_model_checks,
                        model, x_lengths, seed=seed, device=device, move=move, atol=atol,
                        rtol=rtol)


def _model_check(title, interface, returns, names, checks, model, x_lengths, *, seed,
                 **run) -> ContractReport:
    """Both model checkers: setup, ``input_size``, ``output_size``, the inputs (zeros and
    garbage in the padding), then ``checks`` from the forward call on."""
    def body(rows, lengths, s):
        s.setup_rows(rows, f"batch of {len(lengths)} noise sequences (N(0, 1) frames), x_len",
                     lengths, seed)
        in_size = _positive_int_property(model, "model", "input_size", "the feature size of x",
                                         rows)
        out_size = _positive_int_property(model, "model", "output_size",
                                          "the feature size of the output", rows)
        if in_size is None:
            rows.skip(("forward",) + names, "input_size unusable, so no input can be built")
            return
        x, x_len = _noise(lengths, seed, in_size, 1.0)
        g = torch.Generator().manual_seed(seed + 1)
        garbage = x.clone()
        for i, n in enumerate(lengths):
            if garbage.shape[1] > n:
                garbage[i, n:] = torch.randn(garbage.shape[1] - n, in_size,
                                             generator=g) * _GARBAGE_SCALE
        x, garbage = x.to(s.device, s.dtype), garbage.to(s.device, s.dtype)
        checks(rows, model, s, x, garbage, x_len.to(s.device), lengths, out_size)

    signature = f"forward(x (batch_size, seq_len, input_size), x_len (batch_size,)) -> {returns}"
    return _run_checks(title, [("model", model, interface, signature)], x_lengths, "x_lengths",
                       _DEFAULT_X_LENGTHS, body, seed=seed, **run)


def _frame_model_checks(rows, model, s, x, garbage, x_len, lengths, out_size):
    batch = len(lengths)
    call = f"forward(x {tuple(x.shape)}, x_len ({batch},))"
    res = _forward_output(rows, model, x, x_len, "y", call, _FRAME_CHECKS, batch, out_size)
    if res is None:
        return
    y, y_len = res
    x_len_cpu = x_len.cpu()
    with rows.guard("output_lengths"):
        if y_len is None or y.dim() < 2:
            rows.add("output_lengths", "warn", "not assessed: y_len or y unusable")
        elif y.shape[1] != x.shape[1]:
            rows.add("output_lengths", "warn", f"the model changes the time axis ({x.shape[1]} "
                     f"-> {y.shape[1]} frames): y_len {y_len.tolist()} for x_len "
                     f"{x_len_cpu.tolist()} (not compared to a rate)")
        elif torch.equal(y_len, x_len_cpu):
            rows.add("output_lengths", "ok", f"y_len == x_len = {x_len_cpu.tolist()}", value=0)
        else:
            dev = y_len - x_len_cpu
            rows.add("output_lengths", "fail", f"y_len {y_len.tolist()} != x_len "
                     f"{x_len_cpu.tolist()} although seq_len is unchanged ({y.shape[1]}): "
                     "return the input lengths for a frame-wise model",
                     value=int(dev[dev.abs().argmax()]))
    valid = y_len.clamp(0, y.shape[1]) if y_len is not None and y.dim() >= 2 else None
    with rows.guard("finite"):
        _check_finite(rows, y, valid)

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
    _compare_reruns(rows, s, y, valid, rerun, x, garbage, x_len, lengths)


def _utterance_model_checks(rows, model, s, x, garbage, x_len, lengths, out_size):
    batch = len(lengths)
    out, error = _call(model, x, x_len)
    if not isinstance(out, torch.Tensor):
        what = (f"raised {error}" if error is not None else
                f"returned {type(out).__name__}; must return one (batch_size, output_size) tensor "
                "(no lengths: the time axis is pooled away)")
        rows.add("forward", "fail", f"forward(x {tuple(x.shape)}, x_len ({batch},)) {what}")
        rows.skip(_UTTERANCE_CHECKS, "forward failed")
        return
    rows.add("forward", "ok", f"forward(x {tuple(x.shape)}, x_len ({batch},)) returned a tensor")
    with rows.guard("output_shape"):
        _check_shape(rows, "output_shape", out, batch, out_size, "output_size", time=False)
    with rows.guard("finite"):
        _check_finite(rows, out, None)
    if out.dim() < 1 or out.shape[0] != batch:
        rows.skip(("determinism", "padding_invariance"), "output has no batch axis")
        return

    def rerun(inp, inp_len, b):
        r, error = _call(model, inp, inp_len)
        if error is not None:
            return f"raised {error}"
        if not isinstance(r, torch.Tensor):
            return f"returned {type(r).__name__}, not a tensor"
        if r.dim() < 1 or r.shape[0] != b:
            return f"returned shape {tuple(r.shape)}, expected batch_size {b} first"
        return r, None

    _compare_reruns(rows, s, out, None, rerun, x, garbage, x_len, lengths)


def _compare_reruns(rows, s, out, valid, rerun, x, garbage, x_len, lengths):
    """The determinism and padding_invariance rows of both model checkers. ``valid``: the
    valid frames of each item of ``out`` (None: one output per item); ``rerun(x, x_len,
    batch_size)`` gives ``(output, valid)`` or an error text."""
    tol = s.tol(_max_abs(out))

    def diff_items(other, other_valid, pairs):
        worst = 0.0
        for i, j in pairs:
            if valid is None:
                worst = max(worst, _max_diff(out[i], other[j]))
            else:
                k = min(int(valid[i]), int(other_valid[j]))
                worst = max(worst, _max_diff(out[i, :k], other[j, :k]))
        return worst

    batch = len(lengths)
    deterministic = True  # unless a row below says otherwise
    with rows.guard("determinism"):
        r = rerun(x, x_len, batch)
        if isinstance(r, str):
            rows.add("determinism", "fail", f"the second call {r}")
            deterministic = False
        elif valid is not None and not torch.equal(valid, r[1]):
            rows.add("determinism", "fail", f"lengths differ between two calls: {valid.tolist()} "
                     f"vs {r[1].tolist()}")
            deterministic = False
        else:
            deterministic = _determinism_row(
                rows, diff_items(r[0], r[1], [(i, i) for i in range(batch)]), tol)
    with rows.guard("padding_invariance"):
        if not deterministic:
            rows.add("padding_invariance", "warn",
                     "not assessed: the model is not deterministic (see determinism)")
            return
        r = rerun(garbage, x_len, batch)
        if isinstance(r, str):
            rows.add("padding_invariance", "fail",
                     f"with garbage in the padded frames, forward {r}")
            return
        d = diff_items(r[0], r[1], [(i, i) for i in range(batch)])
        d_alone = 0.0
        for i, n in enumerate(lengths):
            r = rerun(x[i: i + 1, :n], x_len[i: i + 1], 1)
            if isinstance(r, str):
                rows.add("padding_invariance", "fail", f"sequence {i} alone (batch_size 1) {r}")
                return
            d_alone = max(d_alone, diff_items(r[0], r[1], [(i, 0)]))
        _graded_row(rows, "padding_invariance", max(d, d_alone), tol, "max abs diff of valid "
                    f"outputs, garbage (N(0, {_GARBAGE_SCALE:g}^2)) vs zeros in padded frames: "
                    f"{d:.3g}; alone vs in the batch: {d_alone:.3g} (tolerance {tol:.3g})",
                    fail="; padded frames leak into valid outputs: mask them with x_len (e.g. a "
                    "mean or normalisation over the whole padded time axis)")
