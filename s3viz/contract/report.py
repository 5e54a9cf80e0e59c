"""The contract report: a DataFrame of ``check, layer, status, value, detail`` rows.

:class:`ContractReport` (``ok``, ``failed``, ``raise_for_violations``, an HTML view that
groups a check's rows over layers), :class:`ContractViolation`, and ``_Rows``, the
collector every checker writes into.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np
import pandas as pd

from .._validate import layer_range

STATUSES = ("ok", "warn", "fail")
"""The values of a report's ``status`` column, from best to worst."""

_COLUMNS = ["check", "layer", "status", "value", "detail"]
_STATUS_STYLE = {"ok": ("#155724", "#d4edda"), "warn": ("#856404", "#fff3cd"),
                 "fail": ("#721c24", "#f8d7da")}


class ContractViolation(AssertionError):
    """Raised by :meth:`ContractReport.raise_for_violations`, listing every failed row (an
    ``AssertionError``: a failed assertion about the object); ``.report`` holds those rows."""

    def __init__(self, message: str, report: ContractReport):
        super().__init__(message)
        self.report = report


class ContractReport(pd.DataFrame):
    """The result of a contract check: a DataFrame (subclass) with one row per check (and layer).

    Columns: ``check``, ``layer`` (nullable int: the hidden state of per-layer checks),
    ``status`` (``ok``/``warn``/``fail``), ``value`` (what the check measured, NaN when
    none) and ``detail`` (what was seen and, for a failure, the fix); ``docs/contract.md``.
    Slices stay reports with their ``title``. ``str()``: a summary line such as
    ``check_upstream(HubertUpstream): 14 ok, 2 warn, 0 fail`` and the rows not ok; in
    Jupyter an HTML table with coloured statuses.
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
        df = pd.DataFrame(rows, columns=_COLUMNS).astype(
            {"layer": "Int64", "value": "float64", "check": str, "status": str, "detail": str})
        return cls(df, title=title)

    def _status(self) -> pd.Series:
        if "status" not in self.columns:
            raise AttributeError("this ContractReport has no 'status' column (it is a column "
                                 "subset); use the full report returned by the check function")
        return self["status"]

    @property
    def ok(self) -> bool:
        """True when no row has status ``fail`` (warnings are allowed)."""
        return not bool((self._status() == "fail").any())

    failures = property(lambda self: self[self._status() == "fail"],
                        doc="The rows with status ``fail``.")
    warnings = property(lambda self: self[self._status() == "warn"],
                        doc="The rows with status ``warn``.")

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
        bad = self[self._status().isin(["fail", "warn"] if warnings else ["fail"])]
        if len(bad):
            lines = [f"{self.summary()}; violations:"]
            lines += [f"  - {r.check}{_layers_text([] if pd.isna(r.layer) else [r.layer])}: "
                      f"{r.detail}" for r in bad.itertuples(index=False)]
            raise ContractViolation("\n".join(lines), bad)
        return self

    def _is_full(self) -> bool:
        return all(c in self.columns for c in _COLUMNS)

    def __repr__(self) -> str:
        if not self._is_full():
            return pd.DataFrame.__repr__(self)
        lines = [self.summary()] + [f"  {status.upper():4s}  {check}{_layers_text(layers)}: "
                                    f"{detail}" for status, check, layers, detail in self._grouped()]
        ok = self[self["status"] == "ok"]
        if len(ok):
            lines.append("  ok: " + ", ".join(name if n == 1 else f"{name} x{n}" for name, n in
                                              ok.groupby("check", sort=False).size().items()))
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
        badges = " ".join(_badge(s, f"{c[s]} {s}", "1px 6px;border-radius:3px") for s in STATUSES)
        head = "".join(f'<th style="text-align:left">{h}</th>' for h in _COLUMNS)
        body = []
        for r in self.itertuples(index=False):
            fg, bg = _STATUS_STYLE.get(r.status, ("inherit", "transparent"))
            layer = "" if pd.isna(r.layer) else str(int(r.layer))
            value = "" if pd.isna(r.value) else f"{r.value:.3g}"
            weight = "normal" if r.status == "ok" else "bold"
            body.append(f'<tr><td style="text-align:left">{html.escape(str(r.check))}</td>'
                        f'<td>{layer}</td><td style="color:{fg};background:{bg};font-weight:'
                        f'{weight}">{html.escape(str(r.status))}</td><td>{value}</td>'
                        '<td style="text-align:left;white-space:pre-wrap">'
                        f"{html.escape(str(r.detail))}</td></tr>")
        title = html.escape(self.title or "contract check")
        items = "".join(f"<li>{_badge(st, st, '0 4px')} <b>{html.escape(check)}</b>"
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


def _badge(status: str, text: str, padding: str) -> str:
    fg, bg = _STATUS_STYLE[status]
    return f'<span style="color:{fg};background:{bg};padding:{padding}">{text}</span>'


def _layers_text(layers: list) -> str:
    """`` [layer 3]``, `` [layers 0-4]`` or `` [layers 1, 3]``; empty for no layer."""
    return f" [{layer_range(layers, ', ')}]" if layers else ""


class _Rows:
    """Collects report rows; ``guard`` turns an unexpected error into a fail row."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, check, status, detail, layer=None, value=None):
        assert status in STATUSES, status
        self.rows.append({"check": check, "layer": layer, "status": status,
                          "value": np.nan if value is None else float(value), "detail": detail})

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


def _exc(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:300] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
