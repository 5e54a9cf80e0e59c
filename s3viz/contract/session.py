"""How a check runs: :func:`_run_checks`, the frame of every checker (argument validation,
the eval/move/restore ``_Session``, the forked RNG), seeded inputs, calls, differences and
grades (the tolerances: ``docs/contract.md``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import nn

from .._device import eval_session, resolve_device
from .report import ContractReport, _exc, _Rows

_DEFAULT_WAV_LENGTHS = (11850, 16000, 4003)
_DEFAULT_X_LENGTHS = (37, 50, 12)
_WARN_FACTOR = 10.0  # differences up to this many tolerances are a warn, not a fail
_GARBAGE_SCALE = 1e3  # padded frames hold N(0, 1e3^2) in padding-invariance checks
_UPSTREAM_SIGNATURE = (
    "forward(wavs (batch_size, seq_len, 1), wavs_len (batch_size,)) -> (all_hs, all_hs_len)")


def _check_lengths_arg(lengths, arg: str, default, minimum: int = 1) -> tuple[int, ...]:
    if lengths is None:
        return tuple(default)
    eg = f"e.g. {arg}={tuple(default)}"
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"{arg} must be a 1-D sequence of ints, got a tensor "
                            f"{tuple(lengths.shape)} of dtype {lengths.dtype}; {eg}")
        lengths = lengths.tolist()
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, (Sequence, np.ndarray)):
        raise TypeError(f"{arg} must be a sequence of ints (one per utterance), {eg}; "
                        f"got {type(lengths).__name__}")
    out = []
    for i, n in enumerate(lengths):
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{arg}[{i}] must be an int, got {n!r} ({type(n).__name__}); {eg}")
        if n < minimum:
            raise ValueError(f"{arg}[{i}] must be >= {minimum}, got {int(n)}; {eg}")
        out.append(int(n))
    if not out:
        raise ValueError(f"{arg} must hold at least one length, {eg}")
    return tuple(out)


def _run_checks(title: str, objs, lengths, arg: str, default, body, *, seed, device, move,
                atol, rtol, tolerance=None) -> ContractReport:
    """The frame of every checker: validates the arguments and ``objs`` (``(arg, obj,
    interface, signature)``, the checked one first), runs ``body(rows, lengths, *sessions)``
    in a :class:`_Session` per object under :func:`_quiet_rng`; the report."""
    for a, obj, interface, signature in objs:
        if not callable(getattr(obj, "forward", None)) or isinstance(obj, (str, bytes, torch.Tensor)):
            raise TypeError(
                f"{a} must be a torch.nn.Module (or any object with a callable 'forward') "
                f"following the s3prl {interface} interface, {signature}; got "
                f"{type(obj).__name__}. Pass the model object itself, not its output or a "
                "function.")
    lengths = _check_lengths_arg(lengths, arg, default)
    for name, value, what in (("tolerance", tolerance, "int"), ("atol", atol, "number"),
                              ("rtol", rtol, "number"), ("seed", seed, "int")):
        kind = numbers.Integral if what == "int" else numbers.Real
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)
                                  or not value >= 0):
            raise ValueError(f"{name} must be a non-negative {what}, got {value!r}")
    device = None if device is None else resolve_device(device)
    rows = _Rows()
    sessions = [_Session(obj, a, device, move, atol, rtol) for a, obj, _, _ in objs]
    with ExitStack() as stack:
        for s in sessions:
            stack.enter_context(s)
        stack.enter_context(_quiet_rng(seed, [s.device for s in sessions]))
        body(rows, lengths, *sessions)
    return rows.report(f"{title}({_name(objs[0][1])})")


def _name(obj) -> str:
    cls = type(obj).__name__
    name = getattr(obj, "name", None)
    return f"{cls} {name!r}" if isinstance(name, str) and name and name != cls else cls


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type or a.type != "cuda":
        return a.type == b.type
    return ((torch.cuda.current_device() if a.index is None else a.index)
            == (torch.cuda.current_device() if b.index is None else b.index))


class _Session:
    """Where and how one object runs: device, dtype, tolerances, eval mode."""

    def __init__(self, obj, arg: str, device: torch.device | None, move: bool, atol, rtol):
        tensors = (list(obj.parameters()) + list(obj.buffers())
                   if isinstance(obj, nn.Module) else [])
        devices = {(t.device.type, t.device.index) for t in tensors}
        here = torch.device(*next(iter(devices))) if len(devices) == 1 else None
        self.move_back = None
        if device is None:
            if len(devices) > 1:
                raise ValueError(f"{arg} has parameters on several devices {sorted(devices)}; "
                                 "pass device=... for the inputs")
            device = here if here is not None else resolve_device(None)
        elif devices and (here is None or not _same_device(here, device)):
            if not move:
                where = "several devices" if here is None else str(here)
                raise ValueError(
                    f"{arg}'s parameters are on {where} but device={str(device)!r}; pass move=True "
                    "to move it there for the check (it is moved back afterwards), or device=None "
                    "to check it where it is")
            if here is None:
                raise ValueError(f"{arg} has parameters on several devices; move=True cannot "
                                 "move it back")
            self.move_back = here
        self.obj, self.device = obj, device
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        self.dtype = floating[0] if floating else torch.float32
        tf32 = device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32
                                          or torch.backends.cudnn.allow_tf32)
        # the default atol and rtol, by dtype (docs/contract.md's table)
        tol = {torch.bfloat16: 5e-2, torch.float16: 1e-2}.get(self.dtype, 1e-3 if tf32 else 1e-4)
        self.atol = tol if atol is None else float(atol)
        self.rtol = tol if rtol is None else float(rtol)
        self.module = eval_session(obj, device, move=self.move_back is not None)

    def __enter__(self):
        self.module.__enter__()  # an nn.Module: eval mode (and moved), restored on exit
        self.eval_note = None if isinstance(self.obj, nn.Module) else _plain_eval(self.obj)
        return self

    def __exit__(self, *exc):
        return self.module.__exit__(*exc)

    def tol(self, scale: float) -> float:
        return self.atol + self.rtol * scale

    def setup_rows(self, rows: _Rows, what: str, lengths, seed: int):
        """The ``setup`` row (the inputs used) and the ``eval_mode`` row."""
        note = ("" if len(set(lengths)) >= 2 else
                "; all lengths are equal, so padding is not exercised (pass lengths that differ)")
        rows.add("setup", "warn" if note else "ok",
                 f"{what} {list(lengths)}, seed {seed}, on {self.device} {self.dtype}; value "
                 f"tolerance atol={self.atol:g} + rtol={self.rtol:g} x max|value| of the "
                 f"layer{note}")
        if self.eval_note is None:
            rows.add("eval_mode", "ok", "ran in eval mode under torch.no_grad(); training flags "
                     "restored afterwards")
        else:
            rows.add("eval_mode", "warn", self.eval_note)


def _plain_eval(obj) -> str:
    """Call ``eval()`` of an object that is not an ``nn.Module``; the ``eval_mode`` note."""
    if not callable(getattr(obj, "eval", None)):
        return "not a torch.nn.Module and has no eval(): ran as is (dropout may be active)"
    try:
        obj.eval()
    except Exception as e:  # noqa: BLE001 - an attribute-only object: report, do not crash
        return f"not a torch.nn.Module and its eval() raised {_exc(e)}; ran as is"
    return "not a torch.nn.Module; called its eval() (its training flag is not restored)"


@contextmanager
def _quiet_rng(seed: int, devices: Sequence[torch.device]):
    """Fork the global RNG (so checking does not advance the user's stream) and seed it."""
    cuda = sorted({d.index if d.index is not None else torch.cuda.current_device()
                   for d in devices if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for i in cuda:
            with torch.cuda.device(i):
                torch.cuda.manual_seed(seed)
        with torch.no_grad():
            yield


def _call(obj, *args):
    """``(output, None)``, or ``(None, the exception's text)`` when the object raises."""
    fn = obj if callable(obj) else obj.forward
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001 - the object's own error becomes a fail row
        return None, _exc(e)


def _noise(lengths, seed: int, dim: int | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded noise ``(B, max_len, dim)`` (``dim=None``: ``(B, max_len, 1)``) and lengths."""
    g = torch.Generator().manual_seed(seed)
    width = 1 if dim is None else dim
    x = torch.zeros(len(lengths), max(lengths), width)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, width, generator=g) * scale
    return x, torch.tensor(lengths, dtype=torch.long)


def _as_lengths(raw, batch: int) -> torch.Tensor | None:
    """Lengths as a CPU long ``(batch,)`` tensor, or None when they cannot be read."""
    try:
        t = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(raw)
        t = t.detach().to("cpu")
        if t.numel() != batch or t.is_complex() or t.dtype == torch.bool:
            return None
        t = t.reshape(batch)
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                return None
            t = t.round()
        return t.long()
    except (TypeError, ValueError, RuntimeError):
        return None


def _parse_upstream_output(out) -> str | None:
    """Why ``out`` is not ``(all_hs, all_hs_len)`` (two lists of tensors), or None."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return (f"returned {type(out).__name__}"
                f"{' of length ' + str(len(out)) if isinstance(out, (tuple, list)) else ''}; "
                "must return a tuple (all_hs, all_hs_len) of two lists of tensors")
    all_hs, all_hs_len = out
    if not isinstance(all_hs, (tuple, list)) or not isinstance(all_hs_len, (tuple, list)):
        return (f"returned ({type(all_hs).__name__}, {type(all_hs_len).__name__}); "
                "all_hs and all_hs_len must be lists (one entry per hidden state)")
    bad = [i for i, h in enumerate(all_hs) if not isinstance(h, torch.Tensor)]
    if bad:
        return f"all_hs[{bad[0]}] is {type(all_hs[bad[0]]).__name__}, not a tensor"
    if not all_hs:
        return "returned no hidden states (all_hs is empty)"
    if any(isinstance(t, torch.Tensor) and t.is_meta for t in list(all_hs) + list(all_hs_len)):
        return ("returned tensors on the meta device, which hold no values (a model "
                "built under torch.device('meta') or never given its weights): "
                "materialise it first, e.g. model.to_empty(device='cpu') then "
                "load_state_dict(...)")
    return None


class _UpOut:
    """One upstream call: ``error`` (None when it returned two lists) or the lists."""

    def __init__(self, upstream, wavs, wavs_len):
        out, error = _call(upstream, wavs, wavs_len)
        self.error = error or _parse_upstream_output(out)
        ok = self.error is None
        self.all_hs = list(out[0]) if ok else []
        self.all_hs_len = list(out[1]) if ok else []
        self.count = len(self.all_hs)

    def lengths(self, layer: int, batch: int) -> torch.Tensor | None:
        if layer >= len(self.all_hs_len):
            return None
        return _as_lengths(self.all_hs_len[layer], batch)

    def valid(self, layer: int, batch: int) -> torch.Tensor | None:
        """Lengths clamped to ``[0, seq_len]`` (usable for slicing), or None."""
        n = self.lengths(layer, batch)
        h = self.all_hs[layer]
        if n is None or h.dim() < 2 or h.shape[0] != batch:
            return None
        return n.clamp(0, h.shape[1])


def _max_abs(x: torch.Tensor) -> float:
    """Largest finite absolute value (0 when there is none)."""
    x = x.detach()
    if x.numel() == 0:
        return 0.0
    if not x.is_floating_point():
        x = x.double()
    return float(torch.nan_to_num(x.abs(), nan=0.0, posinf=0.0).max())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference; positions where both hold the same non-finite value are equal."""
    a, b = a.detach(), b.detach()
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0 or torch.equal(a, b):
        return 0.0
    if a.device != b.device:
        b = b.to(a.device)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return float(torch.nan_to_num(_abs_diff(a.to(dtype), b.to(dtype)), nan=math.inf).max())


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a - b|``, 0 where both hold the same non-finite value."""
    d = (a - b).abs()
    return torch.where((a == b) | (torch.isnan(a) & torch.isnan(b)), torch.zeros_like(d), d)


def _over_valid(fn, n: torch.Tensor | None, *xs: torch.Tensor) -> float:
    """The largest ``fn(*xs)`` over each item's ``n`` valid frames (all frames for None)."""
    if n is None or xs[0].dim() < 2:
        return fn(*xs)
    return max((fn(*(x[i, :k] for x in xs)) for i, k in enumerate(n.tolist())), default=0.0)


_FLOAT_NOISE = "; small, possibly float noise: raise atol/rtol if expected"
_NOISY_EVAL = "; dropout or noise active in eval mode?"


def _graded_row(rows: _Rows, check: str, diff: float, tol: float, text: str, layer=None, *,
                warn: str = _FLOAT_NOISE, fail: str = "", after: str = "") -> str:
    """A row ``ok`` up to ``tol``, ``warn`` up to ``_WARN_FACTOR`` times it, else ``fail``:
    ``text``, the ``warn`` or ``fail`` note, then ``after``; returns the status."""
    status = "ok" if diff <= tol else "warn" if diff <= _WARN_FACTOR * tol else "fail"
    rows.add(check, status, text + {"ok": "", "warn": warn, "fail": fail}[status] + after, layer,
             diff)
    return status


def _int_status(value) -> tuple[str, str]:
    """('ok'|'warn'|'fail', reason) for a value that must be a positive int."""
    if isinstance(value, (bool, np.bool_)):
        return "fail", f"is a bool ({value!r})"
    if isinstance(value, int):
        return ("ok", "") if value > 0 else ("fail", f"is {value}, not positive")
    if isinstance(value, np.integer):
        if value > 0:
            return "warn", f"is {type(value).__name__} {int(value)}; return a Python int"
        return "fail", f"is {int(value)}, not positive"
    return "fail", f"is {value!r} ({type(value).__name__}), not an int"
