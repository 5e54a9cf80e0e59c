"""The layer-weight widget in a real browser: JupyterLab + headless Chromium (Debian's package).

Starts JupyterLab on a temporary folder holding a small notebook, opens it in
headless Chromium driven by the PyPI ``playwright`` package (``executable_path``
points at ``/usr/bin/chromium``; ``playwright install`` is never used), runs all
cells, moves a layer control and checks that the displayed weights and score
change. A screenshot is kept under ``build/test-artifacts/``. Skipped only
where Chromium is absent. Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("S3VIZ_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "build" / "test-artifacts"
JUPYTER = Path(sys.executable).with_name("jupyter")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Chromium at {CHROMIUM}"),
]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]

SETUP_CELL = '''\
import numpy as np, pandas as pd, torch
from s3viz.store import LayerStore
from s3viz.widgets._weights import layer_weight_explorer

rng = np.random.default_rng(0)
emb = rng.normal(size=(5, 16)) * 2
hs, phones, rows = [], [], []
for i in range(16):
    n = int(rng.integers(20, 40))
    cuts = np.sort(rng.choice(np.arange(1, n), size=n // 4, replace=False))
    starts, ends = np.r_[0, cuts], np.r_[cuts, n]
    lab = rng.integers(5, size=len(starts))
    frame_lab = np.repeat(lab, ends - starts)
    layers = [torch.tensor(rng.normal(size=(n, 16)) + (emb[frame_lab] if l == 3 else 0),
                           dtype=torch.float32) for l in range(6)]
    hs.append(layers)
    phones.append(pd.DataFrame({"phone": [f"p{v}" for v in lab], "word": "w",
                                "start": starts * 320, "end": ends * 320}))
    rows.append({"id": f"u{i}", "speaker": f"s{i % 4}"})
store = LayerStore.from_tensors(hs, downsample_rates=[320] * 6, labels=pd.DataFrame(rows),
                                phones=phones)'''

WIDGET_CELL = '''\
explorer = layer_weight_explorer(store, "phone", device="cpu")
explorer'''


PROJECTION_CELL = '''\
from s3viz.widgets import layer_projection_explorer
projector = layer_projection_explorer(store, "phone", max_points=300, device="cpu")
projector'''


ATTENTION_CELL = '''\
import s3viz
from s3viz.data import synthetic_corpus
attention = s3viz.widgets.attention_explorer(s3viz.upstreams.tiny(), synthetic_corpus(3, seed=0))
attention'''


def _notebook(path: Path, widget_cell: str = WIDGET_CELL) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# s3viz browser test"),
                nbformat.v4.new_code_cell(SETUP_CELL), nbformat.v4.new_code_cell(widget_cell)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, path)


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (kernels live in their own sessions)."""
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the server already gone
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for child in children:
        with contextlib.suppress(Exception):  # exited meanwhile
            if child.is_running():
                child.kill()


@pytest.fixture()
def lab(tmp_path, free_port):
    """A JupyterLab server on a temporary folder with the notebook; yields its base URL."""
    work = tmp_path / "lab"
    work.mkdir()
    _notebook(work / "weights.ipynb")
    _notebook(work / "projection.ipynb", PROJECTION_CELL)
    _notebook(work / "attention.ipynb", ATTENTION_CELL)
    port = free_port()
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
        env[var] = str(tmp_path / sub)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # no "get notified about Jupyter news?" prompt (it would also try the network)
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    cmd = [str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           "--ServerApp.token=", "--ServerApp.password=", f"--ServerApp.root_dir={work}",
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(tmp_path / "jupyter.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_http(f"http://127.0.0.1:{port}/api/status", proc, timeout=60)
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(proc)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "jupyter.log", ARTIFACTS / "browser_jupyter.log")


def _texts(page, selector: str):
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def _press(page, handle, key: str, times: int, until_js: str) -> None:
    """Focus a slider ``handle``, press ``key`` ``times`` times, wait until ``until_js`` holds."""
    handle.focus()
    for _ in range(times):
        page.keyboard.press(key)
    page.wait_for_function(until_js, timeout=20_000)


@contextlib.contextmanager
def _ran_notebook(lab, name: str, shot: Path, widget_class: str):
    """Open notebook ``name`` in Chromium, run all its cells, wait for the widget of
    ``widget_class``; yield (page, widget) and take a screenshot at the end."""
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{lab}/lab/tree/{name}?reset", wait_until="domcontentloaded")
                status = page.locator("#jp-main-statusbar")
                status.get_by_text(re.compile(r"\bIdle\b")).first.wait_for()
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_text("Run All Cells", exact=True).click()
                widget = page.locator(f".{widget_class}")
                widget.wait_for(state="visible", timeout=75_000)
                widget.scroll_into_view_if_needed()
                yield page, widget
            finally:
                page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_widget_moves_in_jupyterlab(lab):
    shot = ARTIFACTS / "browser_layer_weights.png"
    with _ran_notebook(lab, "weights.ipynb", shot, "s3viz-layer-weight-explorer") as (page, widget):
        score = page.locator(".s3viz-score-value")
        score.wait_for()
        before_weights = _texts(page, ".s3viz-layer-weight")
        before_score = score.inner_text()
        assert len(before_weights) == 6
        assert before_weights == ["0.17"] * 6, before_weights

        # move layer 3 (the informative one) to 0 through its slider's readout box
        readout = widget.locator(".s3viz-layer-slider").nth(3).locator(".widget-readout")
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type("0")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.querySelectorAll('.s3viz-layer-weight')[3]"
            ".innerText.trim() === '0.00'", timeout=20_000)
        page.wait_for_function(
            "(old) => document.querySelector('.s3viz-score-value').innerText !== old",
            arg=before_score, timeout=20_000)
        after_weights = _texts(page, ".s3viz-layer-weight")
        after_score = score.inner_text()
        assert after_weights == ["0.20", "0.20", "0.20", "0.00", "0.20", "0.20"]
        acc_before = float(re.search(r"accuracy ([\d.]+)", before_score).group(1))
        acc_after = float(re.search(r"accuracy ([\d.]+)", after_score).group(1))
        assert acc_after < acc_before  # the layer that carried the phones is gone

        # and with the keyboard on another slider's handle
        # wait for the presses' effect on both readouts: the kernel updates them in
        # several round trips, and the first (layer 0 at 0.19) leaves the others at 0.20
        _press(page, widget.locator(".s3viz-layer-slider").nth(0).locator(".noUi-handle"),
               "ArrowDown", 50, "() => { const w = document.querySelectorAll("
               "'.s3viz-layer-weight'); return parseFloat(w[0].innerText) < 0.20 "
               "&& parseFloat(w[1].innerText) > 0.20; }")
        moved = _texts(page, ".s3viz-layer-weight")
        assert float(moved[0]) < 0.20 and float(moved[1]) > 0.20
        widget.scroll_into_view_if_needed()


def test_projection_explorer_moves_in_jupyterlab(lab):
    """Move the layer slider of the projection explorer: the picture and the score change
    (layer 3 of the store carries the phones, so its probe scores best)."""
    shot = ARTIFACTS / "browser_projection.png"
    with _ran_notebook(lab, "projection.ipynb", shot,
                       "s3viz-layer-projection-explorer") as (page, widget):
        image = widget.locator(".s3viz-projection-image")
        before_src = image.get_attribute("src")
        before_info = widget.locator(".s3viz-projection-info").inner_text()
        assert "layer 0" in before_info and "accuracy" in before_info
        _press(page, widget.locator(".s3viz-projection-slider .noUi-handle"), "ArrowRight", 3,
               "() => document.querySelector('.s3viz-projection-info')"
               ".innerText.trim().startsWith('layer 3')")
        page.wait_for_function(
            "(old) => document.querySelector('.s3viz-projection-image img, "
            ".s3viz-projection-image').getAttribute('src') !== old",
            arg=before_src, timeout=20_000)
        after_info = widget.locator(".s3viz-projection-info").inner_text()
        assert "the best layer" in after_info, after_info
        acc = [float(re.search(r"accuracy ([\d.]+)", t).group(1))
               for t in (before_info, after_info)]
        assert acc[1] > acc[0]


def test_attention_explorer_redraws_in_jupyterlab(lab):
    """Move the head slider, then pick another utterance: the map and its numbers change."""
    shot = ARTIFACTS / "browser_attention.png"
    with _ran_notebook(lab, "attention.ipynb", shot, "s3viz-attention-explorer") as (page, widget):
        image = widget.locator(".s3viz-attention-image")
        info = widget.locator(".s3viz-attention-info")
        before_src = image.get_attribute("src")
        assert "utt0000" in info.inner_text() and "layer 1, head 0" in info.inner_text()
        _press(page, widget.locator(".s3viz-attention-head .noUi-handle"), "ArrowRight", 2,
               "() => document.querySelector('.s3viz-attention-info')"
               ".innerText.includes('head 2')")
        page.wait_for_function(
            "(old) => document.querySelector('.s3viz-attention-image').getAttribute('src') "
            "!== old", arg=before_src, timeout=20_000)
        moved_src = image.get_attribute("src")
        widget.locator(".s3viz-attention-utterance select").select_option("utt0002")
        page.wait_for_function(
            "() => document.querySelector('.s3viz-attention-info').innerText"
            ".includes('utt0002')", timeout=30_000)
        page.wait_for_function(
            "(old) => document.querySelector('.s3viz-attention-image').getAttribute('src') "
            "!== old", arg=moved_src, timeout=20_000)
        assert "layer 1, head 2" in info.inner_text()


def test_report_pages_request_nothing_off_the_file_system(tmp_path):
    """The report (make demo's, here of the two widget notebooks) opens offline: every
    request the index and each notebook page make is a file:// or data: URL."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from s3viz.report import build_report

    src = tmp_path / "nbs"
    src.mkdir()
    _notebook(src / "weights.ipynb")
    _notebook(src / "projection.ipynb", PROJECTION_CELL)
    out = tmp_path / "report"
    results = build_report(sorted(src.glob("*.ipynb")), out, timeout=300)
    assert all(r.error is None for r in results), [r.error for r in results]
    pages = [out / "index.html"] + [r.html for r in results]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for path in pages:
                page = browser.new_page()
                requests = []
                page.on("request", lambda req, seen=requests: seen.append(req.url))
                page.goto(path.as_uri(), wait_until="networkidle")
                page.wait_for_timeout(500)  # late module scripts (nbconvert's mermaid loader)
                remote = [u for u in requests if not u.startswith(("file://", "data:"))]
                assert not remote, (path.name, remote)
                assert len(requests) >= 1
                if path.name != "index.html":  # the widget snapshots are on the page
                    assert page.locator("figure.s3viz-widget-snapshot img").count() == 1
                page.close()
        finally:
            browser.close()
