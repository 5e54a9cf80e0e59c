"""Checks shared by the checkers: declared sizes, output shapes, the type and bounds of
lengths, finite values, frame counts against the conventions of :mod:`s3viz.align`, and
determinism; each writes rows into a ``_Rows``.
"""

from __future__ import annotations

import torch

from ..align import WAV2VEC2_CONV_LAYERS, expected_lengths, receptive_field
from .report import _exc, _Rows
from .session import _NOISY_EVAL, _as_lengths, _call, _graded_row, _int_status


def _read(obj, name):
    """(value, error) of a property; error is None, 'missing' or the exception text."""
    try:
        return getattr(obj, name), None
    except NotImplementedError:
        return None, "missing"
    except AttributeError as e:
        return None, "missing" if name in str(e) or not str(e) else _exc(e)
    except Exception as e:  # noqa: BLE001 - a property that raises is reported, not propagated
        return None, _exc(e)


def _unreadable(err: str) -> str:
    return "is missing" if err == "missing" else f"raised {err}"


def _positive_int_property(obj, arg: str, name: str, meaning: str, rows: _Rows, *,
                           read=None) -> int | None:
    """The row of a property that must be a positive int (``read``: its ``_read``, if done)."""
    value, err = _read(obj, name) if read is None else read
    if err is not None:
        rows.add(name, "fail", f"{arg}.{name} {_unreadable(err)}; add a property returning "
                 f"{meaning} (positive int)")
        return None
    status, why = _int_status(value)
    if status == "fail":
        rows.add(name, "fail", f"{arg}.{name} {why}; it must be a positive int: {meaning}")
        return None
    rows.add(name, status, f"{arg}.{name} = {int(value)}" + (f" ({why})" if why else ""))
    return int(value)


def _check_shape(rows, check, h, batch, size, size_name, layer=None, *, time=True) -> bool:
    """``(batch_size, seq_len, size)`` floating (``time=False``: ``(batch_size, size)``);
    returns True when usable as ``(B, T, H)``."""
    axes = f"(batch_size, seq_len, {size_name})" if time else f"(batch_size, {size_name})"
    shape, dims = tuple(h.shape), 3 if time else 2
    problems = []
    if h.dim() != dims:
        problems.append(f"has {h.dim()} dims {shape}, expected 3 {axes}" if time
                        else f"has {h.dim()} dims, expected 2 {axes}")
    else:
        if h.shape[0] != batch:
            problems.append(f"batch axis is {h.shape[0]}, expected batch_size={batch}")
        if size is not None and h.shape[-1] != size:
            problems.append(f"last axis is {h.shape[-1]} but {size_name} = {size}")
    if not h.is_floating_point():
        problems.append(f"dtype {h.dtype} is not floating point")
    seen = f"shape {shape}, {h.dtype}" if time else f"shape {shape}"
    if problems:
        rows.add(check, "fail", f"{seen}: " + "; ".join(problems), layer)
    elif size is None:
        rows.add(check, "warn", f"{seen}; {size_name} unknown"
                 + (", so the last axis was not compared" if time else ""), layer)
    else:
        rows.add(check, "ok", f"shape {shape} = {axes}, {h.dtype}", layer)
    return h.dim() == 3 and h.shape[0] == batch


def _check_lengths_type(rows, raw, batch, name, layer=None):
    if not isinstance(raw, torch.Tensor):
        rows.add("lengths_type", "fail", f"{name} is {type(raw).__name__}; return a "
                 f"torch.LongTensor of shape (batch_size,) = ({batch},)", layer)
        return
    fix = []
    if raw.dtype != torch.long:
        fix.append(f"dtype {raw.dtype}, needs torch.long (.long())")
    if tuple(raw.shape) != (batch,):
        fix.append(f"shape {tuple(raw.shape)}, needs (batch_size,) = ({batch},)")
    if fix:
        rows.add("lengths_type", "fail", f"{name}: " + "; ".join(fix), layer)
    else:
        rows.add("lengths_type", "ok", f"{name}: LongTensor ({batch},)", layer)


def _check_lengths_bound(rows, n: torch.Tensor | None, h: torch.Tensor, name: str, layer=None):
    if n is None or h.dim() < 2:
        rows.add("lengths_bound", "warn",
                 f"not assessed: {name} cannot be read as (batch_size,) integers", layer)
        return
    seq_len, top = h.shape[1], int(n.max())
    problems = []
    if int(n.min()) < 0:
        problems.append(f"negative length {int(n.min())}")
    if top > seq_len:
        problems.append(f"longest {top} > seq_len {seq_len} of the returned tensor")
    elif top < seq_len:
        problems.append(f"longest {top} < seq_len {seq_len}: trailing frames no utterance "
                        "covers (trim the padding to max(lengths))")
    if problems:
        rows.add("lengths_bound", "fail", f"{name} {n.tolist()}: " + "; ".join(problems), layer,
                 top - seq_len)
    else:
        rows.add("lengths_bound", "ok", f"{name} {n.tolist()}, max = seq_len = {seq_len}", layer, 0)


def _forward_output(rows, obj, x, x_len, name, call, skip, batch, size, ok_call=None):
    """The forward, output_shape, lengths_type and lengths_bound rows of a call expecting
    ``(name, name_len)``: ``(out, lengths as a tensor or None)``, or None when the call
    failed (``skip`` then not assessed; ``ok_call``: the call as the ok row names it)."""
    res = _run_pair(obj, x, x_len, name)
    if isinstance(res, str):
        rows.add("forward", "fail", f"{call} {res}")
        rows.skip(skip, "forward failed")
        return None
    out, raw_len = res
    rows.add("forward", "ok", f"{ok_call or call} returned ({name}, {name}_len)")
    with rows.guard("output_shape"):
        _check_shape(rows, "output_shape", out, batch, size, "output_size")
    with rows.guard("lengths_type"):
        _check_lengths_type(rows, raw_len, batch, f"{name}_len")
    n = _as_lengths(raw_len, batch)
    with rows.guard("lengths_bound"):
        _check_lengths_bound(rows, n, out, f"{name}_len")
    return out, n


def _check_finite(rows, h: torch.Tensor, n: torch.Tensor | None, layer=None):
    bad = ~torch.isfinite(h.detach())
    total = int(bad.sum())
    if not total:
        rows.add("finite", "ok", "no NaN/Inf", layer, 0)
    elif n is None or h.dim() < 2:
        rows.add("finite", "fail", f"{total} NaN/Inf values", layer, total)
    else:
        mask = torch.arange(h.shape[1], device=h.device)[None, :] < n.to(h.device)[:, None]
        in_valid = int((bad & mask.reshape(mask.shape + (1,) * (h.dim() - 2))).sum())
        if in_valid:
            rows.add("finite", "fail", f"{in_valid} NaN/Inf values in valid frames", layer,
                     in_valid)
        else:
            rows.add("finite", "warn", f"{total} NaN/Inf values, all in padded frames; fill "
                     "padding with zeros (a masked sum by multiplication would turn them into "
                     "NaN)", layer, total)


def _conventions_matching(n, wavs_len, rate: int, conv_layers) -> list[str]:
    names = [c for c in ("ceil", "floor", "round")
             if torch.equal(expected_lengths(wavs_len, rate, c), n)]
    layers = conv_layers if conv_layers is not None else (
        WAV2VEC2_CONV_LAYERS if rate == 320 else None)
    if layers is not None:
        try:
            if receptive_field(layers)[1] == rate and torch.equal(
                    expected_lengths(wavs_len, rate, "conv", conv_layers=layers), n):
                names.append("conv")
        except (TypeError, ValueError):
            pass
    return names


def _check_rate(rows, check, n, wavs_len, rate, tolerance, name, layer=None, conv_layers=None,
                reference: tuple[torch.Tensor, str] | None = None):
    """Deviation of ``n`` from ``reference`` (default ``ceil(L/rate)``): ok 0, warn <= tolerance."""
    if reference is None:
        exp, what = expected_lengths(wavs_len, rate, "ceil"), f"ceil(L/{rate})"
    else:
        exp, what = reference
    dev = n - exp
    worst = int(dev[dev.abs().argmax()])
    text = (f"{name} {n.tolist()} vs {what} = {exp.tolist()} for L = {wavs_len.tolist()}: "
            f"deviation {dev.tolist()} frames")
    if reference is None:
        match = _conventions_matching(n, wavs_len, rate, conv_layers)
        if match and "ceil" not in match:
            names = " / ".join(repr(m) for m in match)
            text += f" (matches the {names} convention of s3viz.align exactly)"
    if worst == 0:
        rows.add(check, "ok", text, layer, 0)
    elif abs(worst) <= tolerance:
        rows.add(check, "warn", text + f"; within tolerance={tolerance}", layer, worst)
    else:
        rows.add(check, "fail", text + f"; more than tolerance={tolerance}: the declared rate "
                 f"{rate} does not match the frames returned", layer, worst)


def _determinism_row(rows, diff: float, tol: float, layer=None) -> bool:
    """The ``determinism`` row of two calls on the same batch; True when they agree."""
    return _graded_row(rows, "determinism", diff, tol, f"two calls on the same batch: max abs "
                       f"diff {diff:.3g} (tolerance {tol:.3g})", layer, warn=_NOISY_EVAL,
                       fail=_NOISY_EVAL) == "ok"


def _run_pair(obj, x, x_len, name):
    """Call ``obj(x, x_len)`` expecting ``(tensor, lengths)``; an error string otherwise."""
    out, error = _call(obj, x, x_len)
    if error is not None:
        return f"raised {error}"
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return (f"returned {type(out).__name__}; must return a tuple ({name}, {name}_len): "
                f"a (batch_size, seq_len, output_size) tensor and (batch_size,) lengths")
    if not isinstance(out[0], torch.Tensor):
        return f"returned {name} of type {type(out[0]).__name__}, not a tensor"
    return out[0], out[1]
