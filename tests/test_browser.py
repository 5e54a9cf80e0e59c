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
import socket
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
from s3viz.extract import LayerStore
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


def _notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# s3viz browser test: layer weights"),
                nbformat.v4.new_code_cell(SETUP_CELL), nbformat.v4.new_code_cell(WIDGET_CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def lab(tmp_path):
    """A JupyterLab server on a temporary folder with the notebook; yields its base URL."""
    work = tmp_path / "lab"
    work.mkdir()
    _notebook(work / "weights.ipynb")
    port = _free_port()
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


def test_widget_moves_in_jupyterlab(lab):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_layer_weights.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            try:
                page.goto(f"{lab}/lab/tree/weights.ipynb?reset", wait_until="domcontentloaded")
                status = page.locator("#jp-main-statusbar")
                status.get_by_text(re.compile(r"\bIdle\b")).first.wait_for()

                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_text("Run All Cells", exact=True).click()

                widget = page.locator(".s3viz-layer-weight-explorer")
                widget.wait_for(state="visible", timeout=75_000)
                widget.scroll_into_view_if_needed()
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
                handle = widget.locator(".s3viz-layer-slider").nth(0).locator(".noUi-handle")
                handle.focus()
                for _ in range(50):
                    page.keyboard.press("ArrowDown")
                page.wait_for_function(
                    "() => document.querySelectorAll('.s3viz-layer-weight')[0]"
                    ".innerText.trim() !== '0.20'", timeout=20_000)
                moved = _texts(page, ".s3viz-layer-weight")
                assert float(moved[0]) < 0.20 and float(moved[1]) > 0.20
                widget.scroll_into_view_if_needed()
            finally:
                page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
