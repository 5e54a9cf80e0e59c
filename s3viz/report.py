"""Execute notebooks headless and gather them into a static HTML report.

``python -m s3viz.report notebooks/*.ipynb --out build/report`` runs each notebook in a
fresh kernel and writes ``<name>.html``, its figures as PNGs and an ``index.html`` that
opens offline (widgets become their PNG snapshots or text): ``docs/reports.md``.
"""

from __future__ import annotations

import argparse
import base64
import html
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from ._fs import OwnedFolder, check_name, collision_key

__all__ = ["NotebookResult", "run_notebook", "build_report", "write_index"]

_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@dataclass
class NotebookResult:
    """Outcome of one executed notebook.

    Attributes:
        name: the notebook's file name without its suffix.
        html: the page written, ``<name>.html``.
        figures: the PNG files its outputs were written to, in order.
        seconds: how long it ran.
        error: the last line of the error that stopped it; None when it ran through.
        title: its first markdown heading, as plain text.
    """

    name: str
    html: Optional[Path]
    figures: List[Path]
    seconds: float
    error: Optional[str] = None
    title: str = ""


def _title(nb) -> str:
    """The first markdown heading as plain text: no backticks, emphasis or link targets."""
    heading = next((line.lstrip("#") for cell in nb.cells if cell.cell_type == "markdown"
                    for line in cell.source.splitlines() if line.startswith("#")), "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[`*]|(?<!\w)_|_(?!\w)", "", text).strip()


_REMOTE = re.compile(r"<script\b[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>|"
                     r"<link\b[^>]*\bhref=[\"']https?://[^>]*>", re.I)
_MATH = re.compile(r"\$[^$\s][^$]*\$|\\\(|\\\[")


def _offline(page: str, nb) -> str:
    """The page without the scripts nbconvert fetches from a CDN (require.js, MathJax), unless
    it needs them: widget state no snapshot replaced, or TeX in a markdown cell."""
    if "widgets" in nb.metadata or any(c.cell_type == "markdown" and _MATH.search(c.source)
                                       for c in nb.cells):
        return page
    return _REMOTE.sub("", page)


_FIGURE_NAME = re.compile(r"fig\d{2,}\.png")  # what run_notebook writes (and removes) there


def _check_pages(notebooks: Sequence[Path]) -> None:
    """Refuse, before anything runs, notebooks whose pages would overwrite each other or
    ``index.html`` (as a file system folding case and Unicode normalisation would), or
    whose names are too long for the files they make."""
    seen = {collision_key("index"): "the report's own index.html"}
    for nb in notebooks:
        stem = Path(nb).stem
        check_name(stem, f"notebook {str(nb)!r}", room=len("_figures"))
        key = collision_key(stem)
        if key in seen:
            raise ValueError(
                f"notebook {str(nb)!r} would be written to {stem}.html, which is "
                f"{seen[key]}; rename the notebook (or run it into another --out)")
        seen[key] = f"the page of notebook {str(nb)!r}"


def run_notebook(path: Path, out_dir: Path, *, timeout: int = 600, kernel_name: str = "python3"
                 ) -> NotebookResult:
    """Execute ``path`` into ``out_dir``; an error in a cell is recorded, not raised.

    Writes ``<stem>.html`` and ``<stem>_figures/figNN.png`` (removing the ``figNN.png`` an
    earlier run left there); a notebook named ``index`` is refused.

    Args:
        kernel_name: the Jupyter kernel that runs it.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {str(path)!r} does not exist")
    _check_pages([path])
    out = OwnedFolder(out_dir, "the report folder")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as e:  # keep the partial notebook: the report shows where it broke
        error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    seconds = time.perf_counter() - start

    fig_dir = f"{path.stem}_figures"
    if out.kind(fig_dir) is not None:  # a link there is refused by listdir, not followed
        for old in out.listdir(fig_dir):
            if _FIGURE_NAME.fullmatch(old):
                out.unlink(f"{fig_dir}/{old}")
    figures = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                figures.append(out.write_bytes(
                    f"{fig_dir}/fig{len(figures) + 1:02d}.png", base64.b64decode(png)))

    _static_widgets(nb)
    title = _title(nb)
    if title:
        nb.metadata["title"] = title  # the page's <title>, without markdown
    body, _ = HTMLExporter().from_notebook_node(nb)
    html_path = out.write_text(f"{path.stem}.html", _offline(body, nb))
    return NotebookResult(path.stem, html_path, figures, seconds, error, title)


def _static_widgets(nb) -> None:
    """Replace widget views by their PNG snapshot, else the text of their stored state (labels,
    HTML, progress bars); drop the widget state when no view is left (docs/reports.md)."""
    state = nb.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    left = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if _WIDGET_VIEW not in data:
                continue
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            png = data.get("image/png")
            if png:
                png = "".join(png.split()) if isinstance(png, str) else base64.b64encode(
                    png).decode()
                rendered = (
                    f'<figure class="s3viz-widget-snapshot" style="margin:0">'
                    f'<img src="data:image/png;base64,{png}" alt="{html.escape(text)}">'
                    "<figcaption style='font-size:12px;color:#555'>Snapshot of an interactive "
                    "widget; run the notebook in Jupyter to use it.</figcaption></figure>")
            else:
                view = data[_WIDGET_VIEW]
                text = _widget_text(state, view.get("model_id", "") if isinstance(view, dict)
                                    else "")
                if not text:
                    left += 1
                    continue
                rendered = f"<pre class='s3viz-widget-text'>{html.escape(text)}</pre>"
            output["data"] = {"text/html": rendered, "text/plain": text}
    if left == 0 and "widgets" in nb.metadata:
        del nb.metadata["widgets"]


def _widget_text(state: dict, model_id: str, depth: int = 0) -> str:
    """Text of a stored widget (boxes joined, HTML stripped, progress bars drawn); "" if unknown."""
    entry = state.get(model_id)
    if not isinstance(entry, dict) or depth > 20:
        return ""
    name, st = entry.get("model_name", ""), entry.get("state", {})
    if name in ("HBoxModel", "VBoxModel", "BoxModel", "GridBoxModel"):
        parts = [_widget_text(state, str(c).replace("IPY_MODEL_", ""), depth + 1)
                 for c in st.get("children", [])]
        parts = [p for p in parts if p]
        return (" " if name == "HBoxModel" else "\n").join(parts)
    if name in ("HTMLModel", "LabelModel", "HTMLMathModel", "TextModel"):
        raw = html.unescape(re.sub(r"<[^>]+>", "", str(st.get("value", ""))))
        return " ".join(raw.split())
    if name in ("FloatProgressModel", "IntProgressModel"):
        lo, hi, v = (float(st.get(k, d)) for k, d in (("min", 0), ("max", 100), ("value", 0)))
        frac = 0.0 if hi <= lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)
        return "|" + "#" * round(20 * frac) + " " * (20 - round(20 * frac)) + "|"
    return ""


def write_index(out_dir: Path, results: Sequence[NotebookResult], extra: Iterable[Path] = (),
                *, findings: Sequence[str] = (), figures: Sequence[tuple] = ()) -> Path:
    """Write ``out_dir/index.html``: the ``findings`` (plain sentences), the ``figures``
    (``(png_path, caption)`` pairs) inline, then every notebook (with its figures) and every
    ``extra`` file."""
    out = OwnedFolder(out_dir, "the report folder")

    def rel(p) -> str:
        return Path(p).resolve().relative_to(out.folder).as_posix()

    rows = []
    for r in results:
        status = "ok" if r.error is None else f"FAILED: {html.escape(r.error)}"
        figs = " ".join(f'<a href="{rel(f)}">{f.stem}</a>' for f in r.figures)
        rows.append(f"<tr><td><a href='{r.html.name}'>{html.escape(r.name)}</a></td>"
                    f"<td>{html.escape(r.title)}</td><td>{r.seconds:.1f} s</td><td>{status}</td>"
                    f"<td>{figs}</td></tr>")
    extras = "".join(f"<li><a href='{rel(p)}'>{html.escape(rel(p))}</a></li>"
                     for p in sorted(extra))
    found = ("<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in findings)
             + "</ul>") if findings else ""
    shown = "".join(f"<figure><img src='{rel(p)}' alt='{html.escape(cap, quote=True)}' "
                    f"style='max-width:100%'><figcaption>{html.escape(cap)}</figcaption></figure>"
                    for p, cap in figures)
    return out.write_text(
        "index.html", "<!doctype html><meta charset='utf-8'><title>s3viz report</title>"
        "<style>body{font-family:sans-serif;max-width:64em;margin:2em auto;line-height:1.45}"
        "td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}"
        "figure{margin:1.5em 0}figcaption{color:#444;font-size:.92em}</style>"
        "<h1>s3viz report</h1>" + found
        + (("<h2>Main figures</h2>" + shown) if shown else "")
        + "<h2>Notebooks</h2><table><tr><th>notebook</th><th>title</th><th>time</th>"
        "<th>status</th><th>figures</th></tr>" + "".join(rows) + "</table>"
        + ("<h2>Tables and figures of the main analysis</h2><ul>" + extras + "</ul>"
           if extras else ""))


def build_report(notebooks: Sequence[Path], out_dir: Path, *, timeout: int = 600,
                 extra: Iterable[Path] = (), findings: Sequence[str] = (),
                 figures: Sequence[tuple] = ()) -> List[NotebookResult]:
    """Execute every notebook into ``out_dir`` and write the index (see :func:`write_index`).

    Args:
        notebooks: the ``.ipynb`` files to run, in the index's order.
    """
    out_dir = Path(out_dir)
    _check_pages(notebooks)
    results = []
    for nb in notebooks:
        print(f"running {nb} ...", file=sys.stderr, flush=True)
        r = run_notebook(Path(nb), out_dir, timeout=timeout)
        print(f"  {r.seconds:.1f} s, {len(r.figures)} figures"
              + ("" if r.error is None else f", FAILED: {r.error}"), file=sys.stderr, flush=True)
        results.append(r)
    write_index(out_dir, results, extra, findings=findings, figures=figures)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("build/report"))
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    results = build_report(args.notebooks, args.out, timeout=args.timeout)
    print(f"report: {(args.out / 'index.html').resolve()}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
