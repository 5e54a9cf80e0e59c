"""s3viz.report: notebooks executed into an HTML report that opens offline."""

from __future__ import annotations

import base64
import re

import nbformat
import pytest

from s3viz.report import build_report, main

# a 2x2 PNG, standing in for a widget's own snapshot
_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAFklEQVR4nGP8z8DwnwEJMDIyYkgAALCOBP7qs/5N"
    "AAAAAElFTkSuQmCC"
)

_SNAPSHOT_WIDGET = f'''
import ipywidgets as W

class Snap(W.HTML):
    """A widget that, like the s3viz explorers, carries a PNG snapshot of itself."""

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        data = dict(data[0] if isinstance(data, tuple) else data)
        data["image/png"] = "{_PNG}"
        data["text/plain"] = "Snap(weights=...)"
        return data

Snap("<b>live</b>")
'''

_FIGURE = '''
%matplotlib inline
import matplotlib.pyplot as plt
plt.plot([0, 1], [1, 0])
plt.show()
'''


def _notebook(path, *cells, title="# A title\n\ntext"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(title)]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    src = tmp_path_factory.mktemp("nbs")
    nbs = [
        _notebook(src / "a_snapshot.ipynb", _FIGURE, _SNAPSHOT_WIDGET),
        _notebook(src / "b_plain_widget.ipynb", "import ipywidgets as W\nW.IntSlider(3)"),
        _notebook(src / "c_broken.ipynb", "x = 1", "1 / 0", "print('never')"),
        _notebook(src / "d_progress.ipynb",
                  "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='work'):\n    pass"),
        _notebook(src / "e_math.ipynb", "1", title="# The `probe_layers` **title**\n\n$x^2$"),
    ]
    out = tmp_path_factory.mktemp("report")
    fig = out / "main.png"
    fig.write_bytes(base64.b64decode(_PNG))
    return build_report(nbs, out, timeout=120, findings=["phone probe: best layer 3 <b>"],
                        figures=[(fig, "The main figure & its caption")]), out, nbs


def test_figures_titles_and_index(report):
    results, out, _ = report
    a = results[0]
    assert a.error is None and a.title == "A title"
    # the matplotlib figure and the widget's snapshot
    assert [f.name for f in a.figures] == ["fig01.png", "fig02.png"]
    assert a.figures[1].read_bytes() == base64.b64decode(_PNG)
    index = (out / "index.html").read_text()
    for r in results:
        assert f"href='{r.html.name}'" in index
    assert "a_snapshot_figures/fig01.png" in index


def test_snapshot_widgets_make_an_offline_page(report):
    results, _, _ = report
    page = results[0].html.read_text()
    assert f'src="data:image/png;base64,{_PNG}"' in page and "<img" in page
    assert "Snapshot of an interactive widget" in page
    # no widget state, so no widget manager fetched from a CDN
    assert "widget-state+json" not in page
    assert "unpkg.com" not in page and "jsdelivr" not in page


def test_widget_without_snapshot_keeps_its_state(report):
    results, _, _ = report
    page = results[1].html.read_text()
    assert "application/vnd.jupyter.widget-state+json" in page
    assert "application/vnd.jupyter.widget-view+json" in page


def test_progress_bars_become_text(report):
    """tqdm's notebook bars (ipywidgets) are drawn as text from the stored widget state,
    at their final value, so the page needs no widget JavaScript."""
    results, _, _ = report
    page = results[3].html.read_text()
    assert results[3].error is None
    assert "work: 100%" in page and "|####################|" in page and "3/3" in page
    assert "widget-state+json" not in page and "unpkg.com" not in page


def test_failing_cell_is_recorded_not_raised(report):
    results, out, nbs = report
    c = results[2]
    assert c.error is not None and "ZeroDivisionError" in c.error
    assert c.html.exists()  # the partial notebook shows where it broke
    assert "FAILED" in (out / "index.html").read_text()
    # the source notebooks are never modified
    assert all(not cell.get("outputs") for cell in nbformat.read(nbs[2], 4).cells
               if cell.cell_type == "code")


def test_main_exit_status_and_missing_notebook(report, tmp_path, capsys):
    _, _, nbs = report
    assert main([str(nbs[0]), "--out", str(tmp_path / "ok")]) == 0
    assert main([str(nbs[2]), "--out", str(tmp_path / "bad")]) == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main([str(tmp_path / "nope.ipynb"), "--out", str(tmp_path / "x")])
    assert "report:" in capsys.readouterr().out


def test_index_states_findings_and_shows_the_main_figures(report):
    _, out, _ = report
    index = (out / "index.html").read_text()
    assert "<h2>Findings</h2>" in index and "phone probe: best layer 3 &lt;b&gt;" in index
    assert "<img src='main.png'" in index and "The main figure &amp; its caption" in index
    assert index.index("Findings") < index.index("Main figures") < index.index("Notebooks")


def test_pages_fetch_nothing_from_a_cdn_unless_they_need_it(report):
    results, _, _ = report
    for r in (results[0], results[3]):  # snapshot widget, progress bars: no widget state left
        page = r.html.read_text()
        # (nbconvert's mermaid loader stays: it imports nothing without a diagram, and the
        # browser test checks that the page requests nothing off the file system)
        assert not re.search(r"<script[^>]*src=.https?://", page)
        assert "require.min.js" not in page and "mathjax/2.7.7" not in page
    # a live widget without a snapshot needs its renderer, TeX needs MathJax: kept
    assert "require.min.js" in results[1].html.read_text()
    assert "mathjax/2.7.7" in results[4].html.read_text()


def test_titles_are_plain_text(report):
    results, out, _ = report
    e = results[4]
    assert e.title == "The probe_layers title"
    assert "<title>The probe_layers title</title>" in e.html.read_text()
    assert "`" not in (out / "index.html").read_text().split("<h2>Notebooks")[1]


def test_demo_findings_read_off_the_tables():
    import pandas as pd

    from s3viz.demo import _findings

    probe = pd.DataFrame([
        {"target": "phone", "method": "tiny", "layer": k, "upstream_layer": k,
         "accuracy": a, "accuracy_std": 0.01, "chance": 0.1} for k, a in enumerate([0.3, 0.5, 0.4])
    ] + [{"target": "phone", "method": "random", "layer": k, "upstream_layer": k,
          "accuracy": 0.11, "accuracy_std": 0.02, "chance": 0.1} for k in range(3)])
    abx = pd.DataFrame({"model": "tiny", "layer": [0, 1], "upstream_layer": [0, 1],
                        "abx_error": [0.2, 0.1]})
    units = pd.DataFrame({"model": "tiny", "layer": [0, 1], "upstream_layer": [0, 1],
                          "pnmi": [0.3, 0.2]})
    weights = pd.Series([0.2, 0.5, 0.3], index=[0, 1, 2])
    lengths = pd.DataFrame()
    lengths.attrs["summary"] = "layers 0-2 follow 'conv' exactly."
    text = _findings(probe, weights, abx, units, lengths)
    assert "phone probe, tiny: best layer 1 (accuracy 0.500, chance 0.100; 0.40 above chance)." in text
    assert any("random: best layer" in t and "within two fold-to-fold standard deviations" in t
               for t in text)
    assert "ABX within speaker, tiny: lowest error 10.0 % at layer 1 (50 % is chance)." in text
    assert "PNMI of 50 k-means units, tiny: highest 0.300 at layer 0." in text
    assert any("layer 1 (0.50) and layer 2 (0.30), against 0.33" in t for t in text)
    assert text[-1] == "Frame counts: layers 0-2 follow 'conv' exactly."


def test_demo_says_whether_the_best_layer_beats_the_runner_up():
    """The finding's paired test: a layer that encodes the class beats pure noise; two
    copies of one layer do not beat each other (difference 0, p = 1)."""
    import numpy as np
    import pandas as pd
    import torch

    import s3viz
    from s3viz.demo import best_vs_runner_up
    from s3viz.store import LayerStore

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 6)) * 3
    hs, rows = [], []
    for i in range(48):
        c = i % 3
        info = torch.tensor(emb[c] + rng.normal(size=(4, 6)), dtype=torch.float32)
        hs.append([info, torch.tensor(rng.normal(size=(4, 6)), dtype=torch.float32), info])
        rows.append({"id": f"u{i}", "speaker": f"s{i % 8}", "cls": f"c{c}"})
    store = LayerStore.from_tensors(hs, downsample_rates=[320] * 3, labels=pd.DataFrame(rows))
    res = s3viz.probe_layers(store, "cls", split_by="speaker", folds=4, bootstrap=500,
                             device="cpu")
    text = best_vs_runner_up(res)  # layers 0 and 2 are one layer: neither beats the other
    assert "does not beat the runner-up, layer 2" in text and "p = 1.000" in text
    text = best_vs_runner_up(res[res["layer"] != 2])
    assert " It beats the runner-up, layer 1, at the 5 % level" in text
    assert "paired bootstrap over speakers" in text
