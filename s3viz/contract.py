"""Contract checks: run an object on generated inputs and report every violation.

Four functions, one per seed interface of :mod:`s3viz.interface`:

- :func:`check_upstream` (``AbsUpstream``: waveforms -> every hidden state),
- :func:`check_featurizer` (``AbsFeaturizer``: hidden states -> one hidden state),
- :func:`check_frame_model` (``AbsFrameModel``: keeps the time axis),
- :func:`check_utterance_model` (``AbsUtteranceModel``: pools time away).

Each returns a :class:`ContractReport`, a pandas DataFrame with one row per
check (and per layer where a check is per layer)::

    check           layer  status  value  detail
    lengths_rate        0  warn     -2.0  all_hs_len[0] [36, 49, 12] vs ceil(L/320) = ...

``status`` is ``ok``, ``warn`` (allowed but worth knowing) or ``fail`` (breaks
the contract). ``value`` holds the number a check measured, when there is one
(frames of length deviation, max abs difference), so the report can be plotted.
``report.ok`` is True when nothing failed; ``report.raise_for_violations()``
raises :class:`ContractViolation` listing every failed row.

Objects are checked by their attributes only: nothing needs to subclass the
``Abs*`` classes (s3prl's ``S3PRLUpstream`` works, and its ``num_layers``
spelling is accepted with a ``warn`` row). A broken object never crashes a
check: an exception inside its ``forward`` becomes a ``fail`` row with the
exception text. Only bad *calls* raise (an argument that is not a model with a
``forward``, negative ``wav_lengths`` ...), with an error naming the argument.

How the checks run
------------------
- Inputs are random noise (seeded, ``seed=0``): waveforms ``N(0, 0.1^2)`` of
  ``wav_lengths`` samples, zero-padded into ``(batch_size, seq_len, 1)``, or
  frames ``N(0, 1)`` of ``x_lengths`` frames for the downstream models. The
  default lengths are short and unsorted (the longest is in the middle) so a
  base-size model checks in seconds on a CPU.
- The object runs in eval mode under ``torch.no_grad()`` (not
  ``inference_mode``: tensors a model caches during the check must stay usable
  for training afterwards). The training flag of every submodule is restored
  afterwards, and the global RNG state is forked, so checking does not change
  the user's model or random stream.
- ``device=None`` runs where the object's parameters (or buffers) already are;
  an object with neither runs on CUDA when available, else the CPU. With an
  explicit ``device`` the generated inputs go there; the object is moved only
  with ``move=True`` (and moved back afterwards); otherwise an object that
  lives elsewhere is a :class:`ValueError` naming ``move``. Inputs take the
  dtype of the object's first floating parameter (float32 when it has none).
- Tolerances. Frame counts: ``tolerance`` frames (default 2) of deviation from
  ``ceil(L / rate)`` are a ``warn``, more is a ``fail`` (torchaudio's wav2vec2
  family gives ``(L - 400) // 320 + 1``, 1 or 2 frames fewer). Values: two
  tensors agree when ``max|a - b| <= atol + rtol * max|a|`` over the valid frames
  of a layer (``rtol`` is relative to the layer's scale, not elementwise);
  up to 10 times that is a ``warn`` (float noise from kernel choice), more is a
  ``fail``. ``atol = rtol = None`` pick defaults by dtype and device:

  ==========================================  ======  ======
  inputs                                      atol    rtol
  ==========================================  ======  ======
  float32 / float64 on CPU                    1e-4    1e-4
  float32 on CUDA with TF32 allowed (default) 1e-3    1e-3
  float16                                     1e-2    1e-2
  bfloat16                                    5e-2    5e-2
  ==========================================  ======  ======

  Measured on CPU, float32: HuBERT base (random weights, s3viz's torchaudio
  adapter) gives batched-vs-alone differences of at most 6e-6 at a layer scale
  of about 4 (about 1e-6 relative; the default tolerance there is about 5e-4),
  while a padding leak (GroupNorm over the padded waveform) gives about 1.
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn

from .align import WAV2VEC2_CONV_LAYERS, expected_lengths, receptive_field

__all__ = [
    "STATUSES",
    "ContractReport",
    "ContractViolation",
    "check_featurizer",
    "check_frame_model",
    "check_upstream",
    "check_utterance_model",
]

STATUSES = ("ok", "warn", "fail")
"""The values of a report's ``status`` column, from best to worst."""

_COLUMNS = ["check", "layer", "status", "value", "detail"]
_DEFAULT_WAV_LENGTHS = (11850, 16000, 4003)
_DEFAULT_X_LENGTHS = (37, 50, 12)
_WARN_FACTOR = 10.0  # differences up to this many tolerances are a warn, not a fail
_GARBAGE_SCALE = 1e3  # padded frames hold N(0, 1e3^2) in padding-invariance checks
_STATUS_STYLE = {
    "ok": ("#155724", "#d4edda"),
    "warn": ("#856404", "#fff3cd"),
    "fail": ("#721c24", "#f8d7da"),
}


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


class ContractViolation(AssertionError):
    """Raised by :meth:`ContractReport.raise_for_violations`; lists every failed row.

    A subclass of ``AssertionError``, so a notebook cell or test that calls
    ``report.raise_for_violations()`` reads as a failed assertion about the
    object. ``.report`` holds the offending rows as a :class:`ContractReport`.
    """

    def __init__(self, message: str, report: ContractReport):
        super().__init__(message)
        self.report = report


class ContractReport(pd.DataFrame):
    """The result of a contract check: a DataFrame with one row per check (and layer).

    Columns: ``check`` (str), ``layer`` (nullable int: the hidden state for
    per-layer checks, ``<NA>`` otherwise), ``status`` (``ok``/``warn``/``fail``),
    ``value`` (float the check measured, NaN when none) and ``detail`` (str:
    what was seen and, for a failure, how to fix it).

    It *is* a DataFrame (a subclass, not a wrapper): filter, group, plot and
    ``to_csv`` it like any other, and slices stay reports (``_constructor``)
    that keep their ``title`` (``_metadata``). On top of that:

    - :attr:`ok`: no row failed; :attr:`failures` / :attr:`warnings`: those rows;
    - :meth:`raise_for_violations`: raise :class:`ContractViolation` if any failed;
    - ``str()`` / ``repr()``: a summary line such as
      ``check_upstream(HubertUpstream): 14 ok, 2 warn, 0 fail`` followed by the
      rows that are not ok; in Jupyter, an HTML table with coloured statuses.
    """

    _metadata = ["title"]  # noqa: RUF012 - pandas reads this list to propagate attributes
    title: str | None = None

    def __init__(self, data=None, *args, title: str | None = None, **kwargs):
        if data is None and not args and "columns" not in kwargs:
            kwargs["columns"] = _COLUMNS
        super().__init__(data, *args, **kwargs)
        if title is not None:
            self.title = title

    @property
    def _constructor(self):
        return ContractReport

    @classmethod
    def _from_rows(cls, rows: list[dict], title: str) -> ContractReport:
        df = pd.DataFrame(rows, columns=_COLUMNS)
        df["layer"] = df["layer"].astype("Int64")
        df["value"] = df["value"].astype("float64")
        df["check"] = df["check"].astype(str)
        df["status"] = df["status"].astype(str)
        df["detail"] = df["detail"].astype(str)
        return cls(df, title=title)

    # -- queries -------------------------------------------------------------

    def _status(self) -> pd.Series:
        if "status" not in self.columns:
            raise AttributeError(
                "this ContractReport has no 'status' column (it is a column subset); "
                "use the full report returned by the check function"
            )
        return self["status"]

    @property
    def ok(self) -> bool:
        """True when no row has status ``fail`` (warnings are allowed)."""
        return not bool((self._status() == "fail").any())

    @property
    def failures(self) -> ContractReport:
        """The rows with status ``fail``."""
        return self[self._status() == "fail"]

    @property
    def warnings(self) -> ContractReport:
        """The rows with status ``warn``."""
        return self[self._status() == "warn"]

    def counts(self) -> dict:
        """``{"ok": n_ok, "warn": n_warn, "fail": n_fail}``."""
        status = self._status()
        return {s: int((status == s).sum()) for s in STATUSES}

    def summary(self) -> str:
        """One line: ``<title>: N ok, N warn, N fail``."""
        c = self.counts()
        return f"{self.title or 'contract check'}: {c['ok']} ok, {c['warn']} warn, {c['fail']} fail"

    def raise_for_violations(self, *, warnings: bool = False) -> ContractReport:
        """Raise :class:`ContractViolation` listing every failed row; return self otherwise.

        Args:
            warnings: also treat ``warn`` rows as violations (strict mode).
        """
        status = self._status()
        bad = self[status.isin(["fail", "warn"] if warnings else ["fail"])]
        if len(bad):
            lines = [f"{self.summary()}; violations:"]
            lines += [f"  - {_row_text(r)}" for r in bad.itertuples(index=False)]
            raise ContractViolation("\n".join(lines), bad)
        return self

    # -- display -------------------------------------------------------------

    def _is_full(self) -> bool:
        return all(c in self.columns for c in _COLUMNS)

    def __repr__(self) -> str:
        if not self._is_full():
            return pd.DataFrame.__repr__(self)
        lines = [self.summary()]
        for status, check, layers, detail in self._grouped():
            where = _layers_text(layers)
            lines.append(f"  {status.upper():4s}  {check}{where}: {detail}")
        ok = self[self["status"] == "ok"]
        if len(ok):
            names = []
            for name, n in ok.groupby("check", sort=False).size().items():
                names.append(name if n == 1 else f"{name} x{n}")
            lines.append("  ok: " + ", ".join(names))
        return "\n".join(lines)

    __str__ = __repr__

    def _grouped(self):
        """(status, check, layers, detail) of the fail rows, then the warn rows; rows of one
        check with the same status in consecutive layers are one entry (their first detail,
        with how many layers it stands for)."""
        out = []
        for status in ("fail", "warn"):
            part = self[self["status"] == status]
            for check, rows in part.groupby("check", sort=False):
                layers = [int(v) for v in rows["layer"].dropna()]
                detail = str(rows["detail"].iloc[0])
                if len(rows) > 1:
                    detail += f" (the first of {len(rows)} rows)"
                out.append((status, check, layers, detail))
        return out

    def _repr_html_(self) -> str:
        if not self._is_full():
            return pd.DataFrame._repr_html_(self)
        c = self.counts()
        badges = " ".join(
            f'<span style="color:{_STATUS_STYLE[s][0]};background:{_STATUS_STYLE[s][1]};'
            f'padding:1px 6px;border-radius:3px">{c[s]} {s}</span>'
            for s in STATUSES
        )
        head = "".join(f'<th style="text-align:left">{h}</th>' for h in _COLUMNS)
        body = []
        for r in self.itertuples(index=False):
            fg, bg = _STATUS_STYLE.get(r.status, ("inherit", "transparent"))
            layer = "" if pd.isna(r.layer) else str(int(r.layer))
            value = "" if pd.isna(r.value) else f"{r.value:.3g}"
            weight = "normal" if r.status == "ok" else "bold"
            body.append(
                "<tr>"
                f'<td style="text-align:left">{html.escape(str(r.check))}</td>'
                f"<td>{layer}</td>"
                f'<td style="color:{fg};background:{bg};font-weight:{weight}">'
                f"{html.escape(str(r.status))}</td>"
                f"<td>{value}</td>"
                '<td style="text-align:left;white-space:pre-wrap">'
                f"{html.escape(str(r.detail))}</td>"
                "</tr>"
            )
        title = html.escape(self.title or "contract check")
        items = "".join(
            f'<li><span style="color:{_STATUS_STYLE[st][0]};background:{_STATUS_STYLE[st][1]};'
            f'padding:0 4px">{st}</span> <b>{html.escape(check)}</b>'
            f"{html.escape(_layers_text(layers))}: {html.escape(detail)}</li>"
            for st, check, layers, detail in self._grouped())
        ok_names = ", ".join(html.escape(str(v)) for v in
                             self.loc[self["status"] == "ok", "check"].drop_duplicates())
        compact = (f"<ul style='margin:.3em 0'>{items}</ul>" if items else "")
        compact += f"<p style='margin:.3em 0'>ok: {ok_names}</p>" if ok_names else ""
        return (
            f'<div class="s3viz-contract-report"><p><b>{title}</b>: {badges}</p>{compact}'
            f"<details><summary>all {len(self)} rows</summary>"
            f'<table class="dataframe"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></details></div>"
        )


def _layers_text(layers: list) -> str:
    """`` [layer 3]``, `` [layers 0-4]`` or `` [layers 1, 3]``; empty for no layer."""
    if not layers:
        return ""
    if len(layers) == 1:
        return f" [layer {layers[0]}]"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f" [layers {layers[0]}-{layers[-1]}]"
    return " [layers " + ", ".join(str(v) for v in layers) + "]"


def _row_text(r) -> str:
    layer = "" if pd.isna(r.layer) else f" [layer {int(r.layer)}]"
    return f"{r.check}{layer}: {r.detail}"


class _Rows:
    """Collects report rows; ``guard`` turns an unexpected error into a fail row."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, check, status, detail, layer=None, value=None):
        assert status in STATUSES, status
        self.rows.append(
            {
                "check": check,
                "layer": layer,
                "status": status,
                "value": np.nan if value is None else float(value),
                "detail": detail,
            }
        )

    def skip(self, checks: Iterable[str], reason: str):
        for check in checks:
            self.add(check, "warn", f"not assessed: {reason}")

    @contextmanager
    def guard(self, check, layer=None):
        try:
            yield
        except Exception as e:  # noqa: BLE001 - a broken object must never crash the report
            self.add(check, "fail", f"could not evaluate this object's output: {_exc(e)}", layer)

    def report(self, title: str) -> ContractReport:
        return ContractReport._from_rows(self.rows, title)


# ---------------------------------------------------------------------------
# Argument validation (bad calls raise, naming the argument and the fix)
# ---------------------------------------------------------------------------


def _require_forward(obj, arg: str, interface: str, signature: str):
    forward = getattr(obj, "forward", None)
    if obj is None or not callable(forward) or isinstance(obj, (str, bytes, torch.Tensor)):
        raise TypeError(
            f"{arg} must be a torch.nn.Module (or any object with a callable 'forward') "
            f"following the s3prl {interface} interface, {signature}; got "
            f"{type(obj).__name__}. Pass the model object itself, not its output or a function."
        )


def _check_lengths_arg(lengths, arg: str, default, minimum: int = 1) -> tuple[int, ...]:
    if lengths is None:
        return tuple(default)
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(
                f"{arg} must be a 1-D sequence of ints, got a tensor {tuple(lengths.shape)} "
                f"of dtype {lengths.dtype}; e.g. {arg}={tuple(default)}"
            )
        lengths = lengths.tolist()
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, (Sequence, np.ndarray)):
        raise TypeError(
            f"{arg} must be a sequence of ints (one per utterance), "
            f"e.g. {arg}={tuple(default)}; got {type(lengths).__name__}"
        )
    out = []
    for i, n in enumerate(lengths):
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise TypeError(
                f"{arg}[{i}] must be an int, got {n!r} ({type(n).__name__}); "
                f"e.g. {arg}={tuple(default)}"
            )
        if n < minimum:
            raise ValueError(
                f"{arg}[{i}] must be >= {minimum}, got {int(n)}; e.g. {arg}={tuple(default)}"
            )
        out.append(int(n))
    if not out:
        raise ValueError(f"{arg} must hold at least one length, e.g. {arg}={tuple(default)}")
    return tuple(out)


def _check_nonneg(value, arg: str, kind=numbers.Real):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= 0:
        what = "int" if kind is numbers.Integral else "number"
        raise ValueError(f"{arg} must be a non-negative {what}, got {value!r}")
    return value


def _check_device_arg(device) -> torch.device | None:
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be None, 'cpu', 'cuda', 'cuda:N' or a torch.device; got {device!r} ({e})"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but CUDA is not available here; pass device=None or 'cpu'"
        )
    return dev


# ---------------------------------------------------------------------------
# Running an object safely
# ---------------------------------------------------------------------------


def _exc(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:300] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _name(obj) -> str:
    cls = type(obj).__name__
    name = getattr(obj, "name", None)
    return f"{cls} {name!r}" if isinstance(name, str) and name and name != cls else cls


def _tensors_of(obj) -> list[torch.Tensor]:
    if not isinstance(obj, nn.Module):
        return []
    return list(obj.parameters()) + list(obj.buffers())


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    ia = torch.cuda.current_device() if a.index is None else a.index
    ib = torch.cuda.current_device() if b.index is None else b.index
    return ia == ib


def _default_tolerances(dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    if dtype == torch.bfloat16:
        return 5e-2, 5e-2
    if dtype == torch.float16:
        return 1e-2, 1e-2
    if device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    ):
        return 1e-3, 1e-3
    return 1e-4, 1e-4


class _Session:
    """Where and how one object runs: device, dtype, tolerances, eval mode."""

    def __init__(self, obj, arg: str, device: torch.device | None, move: bool, atol, rtol):
        tensors = _tensors_of(obj)
        devices = {(t.device.type, t.device.index) for t in tensors}
        here = torch.device(*next(iter(devices))) if len(devices) == 1 else None
        self.move_back = None
        if device is None:
            if len(devices) > 1:
                raise ValueError(
                    f"{arg} has parameters on several devices {sorted(devices)}; "
                    "pass device=... for the inputs"
                )
            device = (
                here
                if here is not None
                else torch.device("cuda" if torch.cuda.is_available() else "cpu")
            )
        elif devices and (here is None or not _same_device(here, device)):
            if not move:
                where = "several devices" if here is None else str(here)
                raise ValueError(
                    f"{arg}'s parameters are on {where} but device={str(device)!r}; pass move=True "
                    f"to move it there for the check (it is moved back afterwards), or device=None "
                    f"to check it where it is"
                )
            if here is None:
                raise ValueError(
                    f"{arg} has parameters on several devices; move=True cannot move it back"
                )
            self.move_back = here
        self.obj = obj
        self.device = device
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        self.dtype = floating[0] if floating else torch.float32
        da, dr = _default_tolerances(self.dtype, device)
        self.atol = da if atol is None else float(atol)
        self.rtol = dr if rtol is None else float(rtol)
        self.flags = (
            [(m, m.training) for m in obj.modules()] if isinstance(obj, nn.Module) else None
        )

    def __enter__(self):
        if self.move_back is not None:
            self.obj.to(self.device)
        self.eval_note = None
        if self.flags is not None:
            self.obj.eval()
        elif callable(getattr(self.obj, "eval", None)):
            try:
                self.obj.eval()
                self.eval_note = (
                    "not a torch.nn.Module; called its eval() (its training flag is not restored)"
                )
            except Exception as e:  # noqa: BLE001 - an attribute-only object: report, do not crash
                self.eval_note = f"not a torch.nn.Module and its eval() raised {_exc(e)}; ran as is"
        else:
            self.eval_note = (
                "not a torch.nn.Module and has no eval(): ran as is (dropout may be active)"
            )
        return self

    def __exit__(self, *exc):
        if self.flags is not None:
            for module, flag in self.flags:
                module.training = flag
        if self.move_back is not None:
            self.obj.to(self.move_back)
        return False

    def tol(self, scale: float) -> float:
        return self.atol + self.rtol * scale

    def tol_text(self) -> str:
        return f"atol={self.atol:g} + rtol={self.rtol:g} x max|value| of the layer"

    def eval_row(self, rows: _Rows, check="eval_mode"):
        if self.eval_note is None:
            rows.add(
                check,
                "ok",
                "ran in eval mode under torch.no_grad(); training flags restored afterwards",
            )
        else:
            rows.add(check, "warn", self.eval_note)


@contextmanager
def _quiet_rng(seed: int, devices: Sequence[torch.device]):
    """Fork the global RNG (so checking does not advance the user's stream) and seed it."""
    cuda = sorted(
        {
            (d.index if d.index is not None else torch.cuda.current_device())
            for d in devices
            if d.type == "cuda"
        }
    )
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for i in cuda:
            with torch.cuda.device(i):
                torch.cuda.manual_seed(seed)
        with torch.no_grad():
            yield


def _call(obj, *args):
    fn = obj if callable(obj) else obj.forward
    return fn(*args)


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


class _UpOut:
    """Parsed output of one upstream call."""

    def __init__(self, out=None, error: str | None = None):
        self.error = error
        self.all_hs: list[torch.Tensor] = []
        self.all_hs_len: list = []
        if error is not None:
            return
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            self.error = (
                f"returned {type(out).__name__}"
                f"{' of length ' + str(len(out)) if isinstance(out, (tuple, list)) else ''}; "
                "must return a tuple (all_hs, all_hs_len) of two lists of tensors"
            )
            return
        all_hs, all_hs_len = out
        if not isinstance(all_hs, (tuple, list)) or not isinstance(all_hs_len, (tuple, list)):
            self.error = (
                f"returned ({type(all_hs).__name__}, {type(all_hs_len).__name__}); "
                "all_hs and all_hs_len must be lists (one entry per hidden state)"
            )
            return
        bad = [i for i, h in enumerate(all_hs) if not isinstance(h, torch.Tensor)]
        if bad:
            self.error = f"all_hs[{bad[0]}] is {type(all_hs[bad[0]]).__name__}, not a tensor"
            return
        if not all_hs:
            self.error = "returned no hidden states (all_hs is empty)"
            return
        meta = [i for i, t in enumerate(list(all_hs) + list(all_hs_len))
                if isinstance(t, torch.Tensor) and t.is_meta]
        if meta:
            self.error = ("returned tensors on the meta device, which hold no values (a model "
                          "built under torch.device('meta') or never given its weights): "
                          "materialise it first, e.g. model.to_empty(device='cpu') then "
                          "load_state_dict(...)")
            return
        self.all_hs = list(all_hs)
        self.all_hs_len = list(all_hs_len)

    @property
    def count(self) -> int:
        return len(self.all_hs)

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


def _run_upstream(upstream, wavs, wavs_len) -> _UpOut:
    try:
        out = _call(upstream, wavs, wavs_len)
    except Exception as e:  # noqa: BLE001 - the object's own error becomes a fail row
        return _UpOut(error=_exc(e))
    return _UpOut(out)


# ---------------------------------------------------------------------------
# Numeric helpers
# ---------------------------------------------------------------------------


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
    a, b = a.to(dtype), b.to(dtype)
    d = (a - b).abs()
    if torch.isfinite(d).all():
        return float(d.max())
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    d = torch.where(same, torch.zeros_like(d), d)
    return float(torch.nan_to_num(d, nan=math.inf).max())


def _valid_scale(h: torch.Tensor, n: torch.Tensor | None) -> float:
    """Largest finite |value| over the valid frames (all frames when lengths are unusable)."""
    if n is None or h.dim() < 2:
        return _max_abs(h)
    return max((_max_abs(h[i, :k]) for i, k in enumerate(n.tolist())), default=0.0)


def _grade(diff: float, tol: float) -> str:
    if diff <= tol:
        return "ok"
    if diff <= _WARN_FACTOR * tol:
        return "warn"
    return "fail"


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


def _positive_int_property(obj, arg: str, name: str, meaning: str, rows: _Rows) -> int | None:
    value, err = _read(obj, name)
    if err is not None:
        what = "is missing" if err == "missing" else f"raised {err}"
        rows.add(
            name, "fail", f"{arg}.{name} {what}; add a property returning {meaning} (positive int)"
        )
        return None
    status, why = _int_status(value)
    if status == "fail":
        rows.add(name, "fail", f"{arg}.{name} {why}; it must be a positive int: {meaning}")
        return None
    rows.add(name, status, f"{arg}.{name} = {int(value)}" + (f" ({why})" if why else ""))
    return int(value)


def _int_list_property(obj, arg: str, name: str, meaning: str, rows: _Rows):
    """Returns (list with None for bad entries, or None when not a list)."""
    value, err = _read(obj, name)
    if err is not None:
        what = "is missing" if err == "missing" else f"raised {err}"
        rows.add(
            name,
            "fail",
            f"{arg}.{name} {what}; add a property returning a list of {meaning}, "
            "one positive int per hidden state",
        )
        return None
    if not isinstance(value, (list, tuple)):
        rows.add(
            name,
            "fail",
            f"{arg}.{name} is {type(value).__name__}; it must be a list of {meaning}, "
            f"one positive int per hidden state (e.g. return [int(v) for v in ...])",
        )
        return None
    if not value:
        rows.add(name, "fail", f"{arg}.{name} is empty; it needs one entry per hidden state")
        return []
    out, worst, notes = [], "ok", []
    for i, v in enumerate(value):
        status, why = _int_status(v)
        if status != "ok":
            notes.append(f"[{i}] {why}")
            worst = "fail" if "fail" in (status, worst) else "warn"
        out.append(int(v) if status != "fail" else None)
    if worst == "ok":
        rows.add(name, "ok", f"{arg}.{name} = {list(out)}")
    else:
        fix = f"; each must be a positive int ({meaning})" if worst == "fail" else ""
        rows.add(name, worst, f"{arg}.{name} = {list(value)!r}: " + "; ".join(notes) + fix)
    return out


def _count_property(upstream, rows: _Rows) -> int | None:
    """Reads num_layer, or s3prl's num_layers spelling (a warn row)."""
    v1, e1 = _read(upstream, "num_layer")
    v2, e2 = _read(upstream, "num_layers")
    if e1 is None:
        status, why = _int_status(v1)
        if status == "fail":
            rows.add(
                "num_layer",
                "fail",
                f"upstream.num_layer {why}; it must be a positive int: "
                "the number of hidden states forward() returns",
            )
            return None
        if e2 is None and v2 != v1:
            rows.add(
                "num_layer",
                "fail",
                f"upstream.num_layer = {v1!r} but upstream.num_layers = {v2!r}; "
                "the alias must return the same number",
            )
            return int(v1)
        rows.add(
            "num_layer", status, f"upstream.num_layer = {int(v1)}" + (f" ({why})" if why else "")
        )
        return int(v1)
    if e2 is None:
        status, why = _int_status(v2)
        if status == "fail":
            rows.add(
                "num_layer",
                "fail",
                f"upstream has no num_layer and upstream.num_layers {why}; "
                "it must be a positive int",
            )
            return None
        rows.add(
            "num_layer",
            "warn",
            f"upstream has num_layers = {int(v2)} (s3prl S3PRLUpstream's spelling) "
            "but no num_layer "
            "(the s3prl AbsUpstream interface); accepted, but add a num_layer property"
            + (f"; {why}" if why else ""),
        )
        return int(v2)
    what = "raised " + e1 if e1 != "missing" else "is missing"
    rows.add(
        "num_layer",
        "fail",
        f"upstream.num_layer {what} and there is no num_layers either; add a "
        "num_layer property giving the number of hidden states",
    )
    return None


def _check_hidden(rows, check, h, batch, size, size_name, layer=None) -> bool:
    """(batch_size, seq_len, size) floating; returns True when usable as (B, T, H)."""
    problems = []
    if h.dim() != 3:
        problems.append(
            f"has {h.dim()} dims {tuple(h.shape)}, expected 3 (batch_size, seq_len, {size_name})"
        )
    else:
        if h.shape[0] != batch:
            problems.append(f"batch axis is {h.shape[0]}, expected batch_size={batch}")
        if size is not None and h.shape[2] != size:
            problems.append(f"last axis is {h.shape[2]} but {size_name} = {size}")
    if not h.is_floating_point():
        problems.append(f"dtype {h.dtype} is not floating point")
    shape = tuple(h.shape)
    if problems:
        rows.add(check, "fail", f"shape {shape}, {h.dtype}: " + "; ".join(problems), layer)
    elif size is None:
        rows.add(
            check,
            "warn",
            f"shape {shape}, {h.dtype}; {size_name} unknown, so the last axis was not compared",
            layer,
        )
    else:
        rows.add(
            check, "ok", f"shape {shape} = (batch_size, seq_len, {size_name}), {h.dtype}", layer
        )
    return h.dim() == 3 and h.shape[0] == batch


def _check_lengths_type(rows, raw, batch, name, layer=None):
    if not isinstance(raw, torch.Tensor):
        rows.add(
            "lengths_type",
            "fail",
            f"{name} is {type(raw).__name__}; return a torch.LongTensor of "
            f"shape (batch_size,) = ({batch},)",
            layer,
        )
    elif raw.dtype != torch.long or tuple(raw.shape) != (batch,):
        fix = []
        if raw.dtype != torch.long:
            fix.append(f"dtype {raw.dtype}, needs torch.long (.long())")
        if tuple(raw.shape) != (batch,):
            fix.append(f"shape {tuple(raw.shape)}, needs (batch_size,) = ({batch},)")
        rows.add("lengths_type", "fail", f"{name}: " + "; ".join(fix), layer)
    else:
        rows.add("lengths_type", "ok", f"{name}: LongTensor ({batch},)", layer)


def _check_lengths_bound(rows, n: torch.Tensor | None, h: torch.Tensor, name: str, layer=None):
    if n is None or h.dim() < 2:
        rows.add(
            "lengths_bound",
            "warn",
            f"not assessed: {name} cannot be read as (batch_size,) integers",
            layer,
        )
        return
    seq_len = h.shape[1]
    top = int(n.max())
    problems = []
    if int(n.min()) < 0:
        problems.append(f"negative length {int(n.min())}")
    if top > seq_len:
        problems.append(f"longest {top} > seq_len {seq_len} of the returned tensor")
    elif top < seq_len:
        problems.append(
            f"longest {top} < seq_len {seq_len}: trailing frames no utterance covers "
            "(trim the padding to max(lengths))"
        )
    if problems:
        rows.add(
            "lengths_bound",
            "fail",
            f"{name} {n.tolist()}: " + "; ".join(problems),
            layer,
            top - seq_len,
        )
    else:
        rows.add("lengths_bound", "ok", f"{name} {n.tolist()}, max = seq_len = {seq_len}", layer, 0)


def _check_finite(rows, h: torch.Tensor, n: torch.Tensor | None, layer=None):
    bad = ~torch.isfinite(h.detach())
    if not bad.any():
        rows.add("finite", "ok", "no NaN/Inf", layer, 0)
        return
    if n is not None and h.dim() >= 2:
        mask = torch.arange(h.shape[1], device=h.device)[None, :] < n.to(h.device)[:, None]
        while mask.dim() < h.dim():
            mask = mask.unsqueeze(-1)
        in_valid = int((bad & mask).sum())
        if in_valid == 0:
            rows.add(
                "finite",
                "warn",
                f"{int(bad.sum())} NaN/Inf values, all in padded frames; "
                "fill padding with zeros (a masked sum by multiplication "
                "would turn them into NaN)",
                layer,
                int(bad.sum()),
            )
            return
        rows.add("finite", "fail", f"{in_valid} NaN/Inf values in valid frames", layer, in_valid)
        return
    rows.add("finite", "fail", f"{int(bad.sum())} NaN/Inf values", layer, int(bad.sum()))


def _conventions_matching(
    n: torch.Tensor, wavs_len: torch.Tensor, rate: int, conv_layers
) -> list[str]:
    names = []
    for conv in ("ceil", "floor", "round"):
        if torch.equal(expected_lengths(wavs_len, rate, conv), n):
            names.append(conv)
    layers = (
        conv_layers if conv_layers is not None else (WAV2VEC2_CONV_LAYERS if rate == 320 else None)
    )
    if layers is not None:
        try:
            if receptive_field(layers)[1] == rate and torch.equal(
                expected_lengths(wavs_len, rate, "conv", conv_layers=layers), n
            ):
                names.append("conv")
        except (TypeError, ValueError):
            pass
    return names


def _check_rate(
    rows,
    check,
    n,
    wavs_len,
    rate,
    tolerance,
    name,
    layer=None,
    conv_layers=None,
    reference: tuple[torch.Tensor, str] | None = None,
):
    """Deviation of ``n`` from ``reference`` (default ``ceil(L/rate)``): ok 0, warn <= tolerance."""
    if reference is None:
        exp, what = expected_lengths(wavs_len, rate, "ceil"), f"ceil(L/{rate})"
    else:
        exp, what = reference
    dev = n - exp
    worst = int(dev[dev.abs().argmax()])
    text = (
        f"{name} {n.tolist()} vs {what} = {exp.tolist()} for L = {wavs_len.tolist()}: "
        f"deviation {dev.tolist()} frames"
    )
    if reference is None:
        match = _conventions_matching(n, wavs_len, rate, conv_layers)
        if match and "ceil" not in match:
            names = " / ".join(repr(m) for m in match)
            text += f" (matches the {names} convention of s3viz.align exactly)"
    if abs(worst) == 0:
        rows.add(check, "ok", text, layer, 0)
    elif abs(worst) <= tolerance:
        rows.add(check, "warn", text + f"; within tolerance={tolerance}", layer, worst)
    else:
        rows.add(
            check,
            "fail",
            text + f"; more than tolerance={tolerance}: the declared rate {rate} does "
            "not match the frames returned",
            layer,
            worst,
        )


# ---------------------------------------------------------------------------
# check_upstream
# ---------------------------------------------------------------------------

_UPSTREAM_LAYER_CHECKS = (
    "hidden_shape",
    "lengths_type",
    "lengths_bound",
    "lengths_rate",
    "finite",
    "determinism",
    "batch_invariance",
)


def check_upstream(
    upstream,
    *,
    device=None,
    wav_lengths: Sequence[int] | None = None,
    tolerance: int = 2,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    move: bool = False,
) -> ContractReport:
    """Check that ``upstream`` follows s3prl's ``AbsUpstream`` contract.

    Runs ``upstream(wavs, wavs_len)`` on a batch of seeded noise waveforms
    ``wavs`` ``(batch_size, seq_len, 1)`` with ``wavs_len`` ``(batch_size,)``,
    again on the same batch, on each waveform alone, and on the shortest waveform alone
    as ``(batch_size, seq_len)``.

    Checks (``check`` column; per layer where marked *):

    - ``setup``, ``eval_mode``: the inputs used; eval mode (``warn`` for
      objects that are not ``nn.Module``).
    - ``num_layer``: a positive int (``warn`` when only s3prl's ``num_layers``);
      ``hidden_sizes``, ``downsample_rates``: lists of positive ints.
    - ``forward``: runs on ``(batch_size, seq_len, 1)`` and returns
      ``(all_hs, all_hs_len)``; ``wavs_2d``: whether it also accepts
      ``(batch_size, seq_len)`` (ok/warn only; if only 2-D works, ``forward``
      fails and the other checks use 2-D).
    - ``layer_count``: ``num_layer == len(hidden_sizes) == len(downsample_rates)
      == len(all_hs) == len(all_hs_len)``; ``stable_layers``: the same number
      of hidden states in every call (layerdrop off in eval).
    - ``hidden_shape`` *: ``(batch_size, seq_len, hidden_sizes[i])`` floating.
    - ``lengths_type`` *: LongTensor ``(batch_size,)``; ``lengths_bound`` *:
      ``0 <= lengths <= seq_len`` and ``max(lengths) == seq_len``.
    - ``lengths_rate`` *: deviation in frames from ``ceil(L / downsample_rates[i])``
      (:func:`s3viz.align.expected_lengths`): 0 ok, ``<= tolerance`` warn, else fail;
      ``value`` is the largest deviation (negative: fewer frames).
    - ``finite`` *: no NaN/Inf in valid frames (``warn`` if only in padding).
    - ``determinism`` *: two calls give the same valid frames and lengths.
    - ``batch_invariance`` *: each utterance alone and padded inside the batch
      give the same lengths and valid frames; ``value`` is the max abs difference.
      A failure says which frames differ and the likely cause: only the last
      frames of shorter utterances (reported lengths that count windows over
      the padding, e.g. s3prl's ``(L - 1) // 320 + 1``), every frame (a
      normalisation or attention over the padded batch), or some of them.

    Args:
        upstream: the model (``nn.Module`` or any object with ``forward`` and the
            interface's properties). It is not moved unless ``move=True``.
        device: where inputs go; ``None``: where the upstream's parameters are.
        wav_lengths: waveform lengths in samples, one per utterance
            (default ``(11850, 16000, 4003)``: 1 s at most).
        tolerance: frames of deviation from ``ceil(L/rate)`` still a ``warn``.
        atol, rtol: value tolerances (see the module docstring; None: by dtype).
        seed: seed of the generated waveforms and of the (forked) global RNG.
        move: move the upstream to ``device`` for the check, and back afterwards.

    Returns:
        :class:`ContractReport` titled ``check_upstream(<class name>)``.

    Raises:
        TypeError / ValueError: for bad arguments (never for a broken upstream).
    """
    _require_forward(
        upstream,
        "upstream",
        "AbsUpstream",
        "forward(wavs (batch_size, seq_len, 1), wavs_len (batch_size,)) -> (all_hs, all_hs_len)",
    )
    lengths = _check_lengths_arg(wav_lengths, "wav_lengths", _DEFAULT_WAV_LENGTHS)
    _check_nonneg(tolerance, "tolerance", numbers.Integral)
    _check_nonneg(atol, "atol")
    _check_nonneg(rtol, "rtol")
    _check_nonneg(seed, "seed", numbers.Integral)
    dev = _check_device_arg(device)
    rows = _Rows()
    session = _Session(upstream, "upstream", dev, move, atol, rtol)
    with session, _quiet_rng(seed, [session.device]):
        _check_upstream(upstream, session, lengths, tolerance, seed, rows)
    return rows.report(f"check_upstream({_name(upstream)})")


def _setup_row(rows, session, what, lengths, seed):
    note = ""
    status = "ok"
    if len(set(lengths)) < 2:
        status = "warn"
        note = "; all lengths are equal, so padding is not exercised (pass lengths that differ)"
    rows.add(
        "setup",
        status,
        f"{what} {list(lengths)}, seed {seed}, on {session.device} {session.dtype}; "
        f"value tolerance {session.tol_text()}{note}",
    )


def _check_upstream(upstream, s: _Session, lengths, tolerance, seed, rows: _Rows):
    batch = len(lengths)
    _setup_row(rows, s, f"batch of {batch} noise waveforms, lengths", lengths, seed)
    s.eval_row(rows)
    num_layer = _count_property(upstream, rows)
    sizes = _int_list_property(upstream, "upstream", "hidden_sizes", "hidden sizes", rows)
    rates = _int_list_property(
        upstream,
        "upstream",
        "downsample_rates",
        "downsample rates (samples of 16 kHz audio per frame)",
        rows,
    )
    conv_layers, _ = _read(upstream, "conv_layers")

    wavs3, wavs_len_cpu = _noise(lengths, seed, None, 0.1)
    wavs3 = wavs3.to(s.device, s.dtype)
    wavs_len = wavs_len_cpu.to(s.device)
    out3 = _run_upstream(upstream, wavs3, wavs_len)
    # 2-D wavs: the whole batch only when 3-D failed (then it is the main call); else the
    # shortest utterance alone, compared with its 3-D single call below (one cheap extra call)
    short = min(range(batch), key=lambda i: lengths[i])
    if out3.error is None:
        out2 = _run_upstream(
            upstream, wavs3[short : short + 1, : lengths[short], 0], wavs_len[short : short + 1]
        )
    else:
        out2 = _run_upstream(upstream, wavs3[..., 0], wavs_len)

    shape3 = f"wavs {tuple(wavs3.shape)}"
    if out3.error is None:
        rows.add(
            "forward",
            "ok",
            f"forward({shape3}, wavs_len ({batch},)) returned {out3.count} hidden states",
        )
        main, form = out3, (lambda w: w)
    elif out2.error is None:
        rows.add(
            "forward",
            "fail",
            f"forward({shape3} = (batch_size, seq_len, 1)) failed: {out3.error}. It works with "
            "(batch_size, seq_len), but the interface passes (batch_size, seq_len, 1): add "
            "`if wavs.dim() == 3: wavs = wavs.squeeze(-1)`. "
            "The checks below used (batch_size, seq_len).",
        )
        main, form = out2, (lambda w: w[..., 0])
    else:
        rows.add("forward", "fail", f"forward({shape3}, wavs_len ({batch},)) failed: {out3.error}")
        main, form = None, None

    wavs_2d_at = len(rows.rows)  # the row is written once determinism is known
    if out3.error is None and out2.error is None:
        pass
    elif out3.error is None:
        rows.add(
            "wavs_2d",
            "warn",
            f"does not accept wavs (batch_size, seq_len): {out2.error}. Fine for the "
            "interface (s3viz always passes (batch_size, seq_len, 1)); "
            "accepting both is friendlier",
        )
    elif out2.error is None:
        rows.add("wavs_2d", "ok", "accepts wavs (batch_size, seq_len)")
    else:
        rows.add("wavs_2d", "warn", f"also fails with (batch_size, seq_len): {out2.error}")

    if main is None:
        rows.skip(("layer_count", "stable_layers") + _UPSTREAM_LAYER_CHECKS, "forward failed")
        return

    # sizes and counts agree
    counts = {
        "num_layer": num_layer,
        "len(hidden_sizes)": None if sizes is None else len(sizes),
        "len(downsample_rates)": None if rates is None else len(rates),
        "len(all_hs)": main.count,
        "len(all_hs_len)": len(main.all_hs_len),
    }
    known = {k: v for k, v in counts.items() if v is not None}
    unknown = [k for k, v in counts.items() if v is None]
    text = ", ".join(f"{k} = {v}" for k, v in known.items())
    if unknown:
        text += f" ({', '.join(unknown)} unusable, see above)"
    if len(set(known.values())) == 1:
        rows.add("layer_count", "ok", text, value=main.count)
    else:
        rows.add(
            "layer_count",
            "fail",
            text + ": these must all be equal (one entry per hidden state)",
            value=main.count,
        )

    # repeat call (determinism) and each utterance alone (batch invariance)
    rep = _run_upstream(upstream, form(wavs3), wavs_len)
    singles = []
    for i, n in enumerate(lengths):
        singles.append(_run_upstream(upstream, form(wavs3[i : i + 1, :n]), wavs_len[i : i + 1]))
    calls = [("batch", main), ("repeat", rep)] + [
        (f"utterance {i} alone", o) for i, o in enumerate(singles)
    ]
    if out3.error is None and out2.error is None:
        calls.append((f"utterance {short} alone as (batch_size, seq_len)", out2))
    seen = [(name, o.count) for name, o in calls if o.error is None]
    if len({c for _, c in seen}) <= 1:
        rows.add(
            "stable_layers",
            "ok",
            f"{main.count} hidden states in each of {len(seen)} calls",
            value=main.count,
        )
    else:
        rows.add(
            "stable_layers",
            "fail",
            "number of hidden states changes across calls in eval mode: "
            + ", ".join(f"{name}: {c}" for name, c in seen)
            + " (layerdrop or a data-dependent exit must be off in eval; "
            "weighted sums need a fixed count)",
            value=max(c for _, c in seen) - min(c for _, c in seen),
        )

    scales = []
    for layer, h in enumerate(main.all_hs):
        with rows.guard("hidden_shape", layer):
            size = sizes[layer] if sizes is not None and layer < len(sizes) else None
            _check_hidden(rows, "hidden_shape", h, batch, size, f"hidden_sizes[{layer}]", layer)
        scales.append(_valid_scale(h, main.valid(layer, batch)))
    for layer in range(main.count):
        with rows.guard("lengths_type", layer):
            if layer >= len(main.all_hs_len):
                rows.add(
                    "lengths_type",
                    "fail",
                    f"no all_hs_len[{layer}] (all_hs_len has {len(main.all_hs_len)} entries)",
                    layer,
                )
            else:
                _check_lengths_type(
                    rows, main.all_hs_len[layer], batch, f"all_hs_len[{layer}]", layer
                )
    for layer, h in enumerate(main.all_hs):
        with rows.guard("lengths_bound", layer):
            _check_lengths_bound(rows, main.lengths(layer, batch), h, f"all_hs_len[{layer}]", layer)
    for layer in range(main.count):
        with rows.guard("lengths_rate", layer):
            n = main.lengths(layer, batch)
            rate = rates[layer] if rates is not None and layer < len(rates) else None
            if rate is None:
                rows.add(
                    "lengths_rate",
                    "warn",
                    f"not assessed: downsample_rates[{layer}] unusable",
                    layer,
                )
            elif n is None:
                rows.add(
                    "lengths_rate", "warn", f"not assessed: all_hs_len[{layer}] unreadable", layer
                )
            else:
                _check_rate(
                    rows,
                    "lengths_rate",
                    n,
                    wavs_len_cpu,
                    rate,
                    tolerance,
                    f"all_hs_len[{layer}]",
                    layer,
                    conv_layers=conv_layers,
                )
    for layer, h in enumerate(main.all_hs):
        with rows.guard("finite", layer):
            _check_finite(rows, h, main.valid(layer, batch), layer)

    nondeterministic = set()
    for layer in range(main.count):
        with rows.guard("determinism", layer):
            tol = s.tol(scales[layer])
            if rep.error is not None:
                rows.add("determinism", "fail", f"the second call raised {rep.error}", layer)
                nondeterministic.add(layer)
                continue
            if rep.count != main.count:
                rows.add(
                    "determinism",
                    "warn",
                    "not assessed: the second call returned "
                    f"{rep.count} hidden states (see stable_layers)",
                    layer,
                )
                continue
            n1, n2 = main.valid(layer, batch), rep.valid(layer, batch)
            if n1 is None or n2 is None:
                rows.add("determinism", "warn", "not assessed: lengths unreadable", layer)
                continue
            if not torch.equal(n1, n2):
                rows.add(
                    "determinism",
                    "fail",
                    f"lengths differ between two calls: {n1.tolist()} vs {n2.tolist()}",
                    layer,
                )
                nondeterministic.add(layer)
                continue
            diff = max(
                _max_diff(main.all_hs[layer][i, :k], rep.all_hs[layer][i, :k])
                for i, k in enumerate(n1.tolist())
            )
            status = _grade(diff, tol)
            if status != "ok":
                nondeterministic.add(layer)
            rows.add(
                "determinism",
                status,
                f"two calls on the same batch: max abs diff {diff:.3g} (tolerance {tol:.3g})"
                + ("" if status == "ok" else "; dropout or noise active in eval mode?"),
                layer,
                diff,
            )

    if out3.error is None and out2.error is None:
        before = len(rows.rows)
        with rows.guard("wavs_2d"):
            _wavs_2d_row(rows, s, singles[short], out2, short, nondeterministic)
        rows.rows.insert(wavs_2d_at, rows.rows.pop(before))

    for layer in range(main.count):
        with rows.guard("batch_invariance", layer):
            _batch_invariance_layer(
                rows, s, main, singles, layer, batch, scales[layer], nondeterministic
            )


def _wavs_2d_row(rows, s, out3, out2, index, nondeterministic):
    """Utterance ``index`` alone: as (1, seq_len, 1) (``out3``) vs as (1, seq_len) (``out2``)."""
    what = f"utterance {index} alone as (1, seq_len) vs (1, seq_len, 1)"
    if out3.error is not None:
        rows.add(
            "wavs_2d",
            "ok",
            f"accepts wavs (batch_size, seq_len); not compared ({what}: the 3-D call "
            f"raised {out3.error})",
        )
        return
    if out2.count != out3.count:
        rows.add(
            "wavs_2d",
            "warn",
            f"accepts (batch_size, seq_len) but {what} returned {out2.count} hidden "
            f"states instead of {out3.count} (see stable_layers)",
        )
        return
    diff = _max_diff_outputs(out3, out2, 1)
    tol = s.tol(max(_max_abs(h) for h in out3.all_hs))
    if diff <= tol:
        rows.add(
            "wavs_2d",
            "ok",
            f"also accepts wavs (batch_size, seq_len), same hidden states "
            f"({what}: max abs diff {diff:.3g})",
            value=diff,
        )
    elif nondeterministic:
        rows.add(
            "wavs_2d",
            "ok",
            "also accepts wavs (batch_size, seq_len); hidden states not compared "
            "(not deterministic, see determinism)",
            value=diff,
        )
    else:
        rows.add(
            "wavs_2d",
            "warn",
            f"accepts (batch_size, seq_len) but returns different hidden states: "
            f"{what}: max abs diff {diff:.3g} (tolerance {tol:.3g})",
            value=diff,
        )


def _max_diff_outputs(a: _UpOut, b: _UpOut, batch: int) -> float | None:
    if a.count != b.count:
        return None
    worst = 0.0
    for layer in range(a.count):
        n = a.valid(layer, batch)
        if n is None:
            worst = max(worst, _max_diff(a.all_hs[layer], b.all_hs[layer]))
            continue
        for i, k in enumerate(n.tolist()):
            worst = max(worst, _max_diff(a.all_hs[layer][i, :k], b.all_hs[layer][i, :k]))
    return worst


def _frames_over(a: torch.Tensor, b: torch.Tensor, tol: float) -> list:
    """Indices of the frames (rows) of ``a`` and ``b`` that differ by more than ``tol``."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    d = (a - b).abs()
    d = torch.where((a == b) | (torch.isnan(a) & torch.isnan(b)), torch.zeros_like(d), d)
    d = d.reshape(a.shape[0], -1).amax(dim=1)
    return torch.nonzero(~(d <= tol)).squeeze(1).tolist()


def _batch_variance_cause(where) -> str:
    """Which frames padding changed, and the likely cause, from ``(utt, k, bad frames)``."""
    if not where:
        return "padding changes the valid frames"
    tails = [(i, k, bad) for i, k, bad in where
             if bad and bad == list(range(k - len(bad), k)) and len(bad) < k]
    most = [(i, k, bad) for i, k, bad in where if len(bad) >= 0.5 * k]
    shown = ", ".join(f"utterance {i}: {len(bad)} of {k}" for i, k, bad in where[:3])
    # length arithmetic (ceil vs the convolutions' floor) accounts for 1 or 2 frames
    if len(tails) == len(where) and max(len(b) for _, _, b in tails) <= 3:
        n = max(len(b) for _, _, b in tails)
        return (f"padding changes the valid frames: only the last {n} frame(s) of shorter "
                f"utterances differ ({shown}): the "
                "reported lengths count frames whose window reaches into the padding (e.g. "
                "(L - 1) // 320 + 1 where the convolutions give (L - 400) // 320 + 1); report "
                "the frames the convolutions make from the valid samples")
    if len(most) == len(where):
        every = all(len(bad) == k for _, k, bad in where)
        return (f"padding changes the valid frames: "
                f"{'every frame' if every else 'most frames'} of the padded utterances "
                f"{'changes' if every else 'change'} ({shown} frames differ): the "
                "padding enters a computation over the whole sequence: a normalisation over "
                "time (group norm in the first convolution of wav2vec2-base-like models), "
                "attention without a padding mask, or an old-style padding mask that the model "
                "was not trained with; mask padded samples/frames or run each utterance unpadded")
    return (f"padding changes the valid frames: some of them ({shown} frames differ): padding "
            "reaches valid frames through a convolution or attention over padded frames; zero "
            "padded frames before each such layer or run each utterance unpadded")


def _batch_invariance_layer(rows, s, main, singles, layer, batch, scale, nondeterministic):
    check = "batch_invariance"
    if layer in nondeterministic:
        rows.add(
            check, "warn", "not assessed: this layer is not deterministic (see determinism)", layer
        )
        return
    nb = main.valid(layer, batch)
    if nb is None:
        rows.add(check, "warn", "not assessed: batched lengths or shape unreadable", layer)
        return
    worst, length_issues, notes = 0.0, [], []
    tol = s.tol(scale)
    where = []  # (utterance, valid frames, indices of frames that differ past tol)
    for i, single in enumerate(singles):
        if single.error is not None:
            rows.add(
                check,
                "fail",
                f"utterance {i} alone (batch_size 1, no padding) raised {single.error}",
                layer,
            )
            return
        if single.count != main.count:
            notes.append(
                f"utterance {i} alone gave {single.count} hidden states (see stable_layers)"
            )
            continue
        raw_b = main.lengths(layer, batch)
        raw_a = single.lengths(layer, 1)
        na = single.valid(layer, 1)
        if raw_a is None or na is None:
            notes.append(f"utterance {i} alone: lengths unreadable")
            continue
        if int(raw_a[0]) != int(raw_b[i]):
            length_issues.append(
                f"utterance {i}: {int(raw_a[0])} frames alone vs {int(raw_b[i])} in the batch"
            )
        k = min(int(na[0]), int(nb[i]))
        d = _max_diff(single.all_hs[layer][0, :k], main.all_hs[layer][i, :k])
        worst = max(worst, d)
        if d > tol and math.isfinite(d):
            where.append((i, k, _frames_over(single.all_hs[layer][0, :k],
                                             main.all_hs[layer][i, :k], tol)))
    if length_issues:
        rows.add(
            check, "fail", "lengths depend on the batch: " + "; ".join(length_issues), layer, worst
        )
        return
    if notes and worst == 0.0:
        rows.add(check, "warn", "not assessed: " + "; ".join(notes), layer)
        return
    status = _grade(worst, tol)
    text = (
        f"each utterance alone vs padded in the batch: max abs diff {worst:.3g} over valid frames "
        f"(tolerance {tol:.3g})"
    )
    if status == "warn":
        text += "; small, possibly float noise: raise atol/rtol if expected"
    elif status == "fail":
        text += "; " + _batch_variance_cause(where)
    if notes:
        text += "; " + "; ".join(notes)
    rows.add(check, status, text, layer, worst)


# ---------------------------------------------------------------------------
# check_featurizer
# ---------------------------------------------------------------------------

_FEATURIZER_OUTPUT_CHECKS = (
    "output_shape",
    "lengths_type",
    "lengths_bound",
    "lengths_rate",
    "finite",
    "different_lengths",
)


def check_featurizer(
    featurizer,
    upstream,
    *,
    device=None,
    wav_lengths: Sequence[int] | None = None,
    tolerance: int = 2,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    move: bool = False,
) -> ContractReport:
    """Check that ``featurizer`` follows s3prl's ``AbsFeaturizer`` contract on an upstream's output.

    The upstream runs once on seeded noise waveforms (as in :func:`check_upstream`,
    whose own problems are not reported here); the featurizer then gets
    ``(all_hs, all_hs_len)``.

    Checks: ``setup``, ``eval_mode``; ``output_size``, ``downsample_rate``
    (positive ints); ``upstream`` (it ran); ``forward`` (returns ``(hs, hs_len)``);
    ``output_shape`` (``(batch_size, seq_len, output_size)`` floating);
    ``lengths_type`` (LongTensor ``(batch_size,)``); ``lengths_bound``
    (``max(hs_len) == seq_len``); ``lengths_rate`` (``hs_len`` equals the
    upstream's lengths of the layers whose rate is ``downsample_rate``, or
    ``ceil(L/downsample_rate)`` when no layer has it; ok 0, warn ``<= tolerance``
    frames, else fail); ``finite``; ``different_lengths``: each layer in turn is
    cut one frame shorter than the upstream returned it, and the featurizer must
    raise (a silent sum or truncation fails; a layer whose change does not alter
    the output is taken as unused).

    Args:
        featurizer: the featurizer (``nn.Module`` or attribute-only object).
        upstream: an upstream whose output the featurizer accepts.
        device, wav_lengths, tolerance, atol, rtol, seed, move: as in :func:`check_upstream`;
            with ``device=None`` each object runs where its parameters are and the
            hidden states are moved to the featurizer's device.

    Returns:
        :class:`ContractReport` titled ``check_featurizer(<class name>)``.
    """
    _require_forward(
        featurizer,
        "featurizer",
        "AbsFeaturizer",
        "forward(all_hs, all_hs_len) -> "
        "(hs (batch_size, seq_len, output_size), hs_len (batch_size,))",
    )
    _require_forward(
        upstream,
        "upstream",
        "AbsUpstream",
        "forward(wavs (batch_size, seq_len, 1), wavs_len (batch_size,)) -> (all_hs, all_hs_len)",
    )
    lengths = _check_lengths_arg(wav_lengths, "wav_lengths", _DEFAULT_WAV_LENGTHS)
    _check_nonneg(tolerance, "tolerance", numbers.Integral)
    _check_nonneg(atol, "atol")
    _check_nonneg(rtol, "rtol")
    _check_nonneg(seed, "seed", numbers.Integral)
    dev = _check_device_arg(device)
    rows = _Rows()
    fs = _Session(featurizer, "featurizer", dev, move, atol, rtol)
    us = _Session(upstream, "upstream", dev, move, atol, rtol)
    with fs, us, _quiet_rng(seed, [fs.device, us.device]):
        _check_featurizer(featurizer, upstream, fs, us, lengths, tolerance, seed, rows)
    return rows.report(f"check_featurizer({_name(featurizer)})")


def _check_featurizer(featurizer, upstream, s, us, lengths, tolerance, seed, rows):
    batch = len(lengths)
    _setup_row(
        rows, s, f"upstream {_name(upstream)} on {batch} noise waveforms, lengths", lengths, seed
    )
    s.eval_row(rows)
    out_size = _positive_int_property(
        featurizer, "featurizer", "output_size", "the hidden size of hs", rows
    )
    rate = _positive_int_property(
        featurizer, "featurizer", "downsample_rate", "samples of 16 kHz audio per frame of hs", rows
    )

    wavs, wavs_len_cpu = _noise(lengths, seed, None, 0.1)
    wavs = wavs.to(us.device, us.dtype)
    up = _run_upstream(upstream, wavs, wavs_len_cpu.to(us.device))
    if up.error is not None:
        up2 = _run_upstream(upstream, wavs[..., 0], wavs_len_cpu.to(us.device))
        up = up2 if up2.error is None else up
    lens = [up.lengths(i, batch) for i in range(up.count)]
    if up.error is not None or any(n is None for n in lens) or len(up.all_hs_len) != up.count:
        why = (
            up.error
            or "its all_hs_len cannot be read as one (batch_size,) integer tensor per layer"
        )
        rows.add(
            "upstream",
            "fail",
            f"upstream {_name(upstream)} did not give usable hidden states: {why}; "
            "run s3viz.check_upstream(upstream) first",
        )
        rows.skip(("forward",) + _FEATURIZER_OUTPUT_CHECKS, "no hidden states from the upstream")
        return
    rows.add(
        "upstream",
        "ok",
        f"upstream gave {up.count} hidden states, seq_len "
        f"{[h.shape[1] if h.dim() > 1 else None for h in up.all_hs]}",
    )
    all_hs = [h.to(s.device) for h in up.all_hs]
    all_hs_len = [n.to(s.device) for n in lens]

    res = _run_pair(featurizer, all_hs, all_hs_len, "hs")
    if isinstance(res, str):
        rows.add("forward", "fail", f"forward(all_hs, all_hs_len) {res}")
        rows.skip(_FEATURIZER_OUTPUT_CHECKS, "forward failed")
        return
    hs, hs_len = res
    rows.add(
        "forward", "ok", f"forward(all_hs ({up.count} layers), all_hs_len) returned (hs, hs_len)"
    )
    with rows.guard("output_shape"):
        _check_hidden(rows, "output_shape", hs, batch, out_size, "output_size")
    with rows.guard("lengths_type"):
        _check_lengths_type(rows, hs_len, batch, "hs_len")
    n = _as_lengths(hs_len, batch)
    with rows.guard("lengths_bound"):
        _check_lengths_bound(rows, n, hs, "hs_len")
    with rows.guard("lengths_rate"):
        if rate is None or n is None:
            rows.add("lengths_rate", "warn", "not assessed: downsample_rate or hs_len unusable")
        else:
            up_rates, _ = _read(upstream, "downsample_rates")
            match = []
            if isinstance(up_rates, (list, tuple)) and len(up_rates) == up.count:
                match = [i for i, r in enumerate(up_rates) if r == rate]
            if match:
                worst = max(match, key=lambda i: int((n - lens[i]).abs().max()))
                ref = lens[worst]
                _check_rate(
                    rows,
                    "lengths_rate",
                    n,
                    wavs_len_cpu,
                    rate,
                    tolerance,
                    "hs_len",
                    reference=(
                        ref,
                        f"upstream all_hs_len[{worst}] (layers {match} have rate {rate})",
                    ),
                )
            else:
                _check_rate(rows, "lengths_rate", n, wavs_len_cpu, rate, tolerance, "hs_len")
    with rows.guard("finite"):
        _check_finite(
            rows, hs, None if n is None else n.clamp(0, hs.shape[1] if hs.dim() > 1 else 0)
        )
    with rows.guard("different_lengths"):
        _check_different_lengths(rows, s, featurizer, all_hs, all_hs_len, hs)


def _run_pair(obj, x, x_len, name):
    """Call ``obj(x, x_len)`` expecting ``(tensor, lengths)``; an error string otherwise."""
    try:
        out = _call(obj, x, x_len)
    except Exception as e:  # noqa: BLE001 - the object's own error becomes a fail row
        return f"raised {_exc(e)}"
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return (
            f"returned {type(out).__name__}; must return a tuple ({name}, {name}_len): "
            f"a (batch_size, seq_len, output_size) tensor and (batch_size,) lengths"
        )
    if not isinstance(out[0], torch.Tensor):
        return f"returned {name} of type {type(out[0]).__name__}, not a tensor"
    return out[0], out[1]


def _check_different_lengths(rows, s, featurizer, all_hs, all_hs_len, hs):
    check = "different_lengths"
    if len(all_hs) < 2:
        rows.add(check, "warn", "not assessed: the upstream has a single hidden state")
        return

    # Only a layer with a sibling of the same frame counts is cut: a layer alone at its rate,
    # one frame shorter, can still be a consistent input (some waveform length gives it).
    def _has_sibling(i):
        return any(
            j != i and torch.equal(all_hs_len[j].cpu(), all_hs_len[i].cpu())
            for j in range(len(all_hs))
        )

    usable = [
        i for i, h in enumerate(all_hs) if h.dim() == 3 and h.shape[1] >= 2 and _has_sibling(i)
    ]
    if not usable:
        rows.add(check, "warn", "not assessed: no two hidden states share their frame counts")
        return
    raised, unused, silent = [], [], []
    first_error = None
    for i in usable:
        short = list(all_hs)
        short_len = list(all_hs_len)
        short[i] = all_hs[i][:, :-1]
        short_len[i] = all_hs_len[i].clamp(max=short[i].shape[1])
        res = _run_pair(featurizer, short, short_len, "hs")
        if isinstance(res, str):
            raised.append(i)
            first_error = first_error or res
        elif res[0].shape == hs.shape and _max_diff(res[0], hs) <= s.tol(_max_abs(hs)):
            unused.append(i)
        else:
            silent.append(i)
    if silent:
        rows.add(
            check,
            "fail",
            f"silently accepted all_hs with layer(s) {silent} one frame shorter than the upstream "
            "returned (no error, output changed): check that the layers' seq_len and all_hs_len "
            "agree and raise (s3prl's Featurizer dropped this assert)",
            value=len(silent),
        )
    elif raised:
        text = f"raised when layer(s) {raised} were one frame shorter ({first_error})"
        if unused:
            text += f"; layers {unused} do not affect the output (unused)"
        rows.add(check, "ok", text, value=0)
    else:
        rows.add(
            check,
            "warn",
            f"not assessed: no layer affects the output or none has 2+ frames (unused: {unused})",
        )


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
    lengths = _check_lengths_arg(x_lengths, "x_lengths", _DEFAULT_X_LENGTHS)
    _check_nonneg(atol, "atol")
    _check_nonneg(rtol, "rtol")
    _check_nonneg(seed, "seed", numbers.Integral)
    return lengths, _check_device_arg(device)


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
        _check_frame_model, "check_frame_model", x_lengths, atol, rtol, seed, device, move)


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


def _check_frame_model(model, s, lengths, seed, rows):
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
    with rows.guard("output_shape"):
        _check_hidden(rows, "output_shape", y, batch, out_size, "output_size")
    with rows.guard("lengths_type"):
        _check_lengths_type(rows, y_len_raw, batch, "y_len")
    y_len = _as_lengths(y_len_raw, batch)
    with rows.guard("lengths_bound"):
        _check_lengths_bound(rows, y_len, y, "y_len")
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
        model, "AbsUtteranceModel", "(batch_size, output_size)", _check_utterance_model,
        "check_utterance_model", x_lengths, atol, rtol, seed, device, move)


def _check_utterance_model(model, s, lengths, seed, rows):
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
