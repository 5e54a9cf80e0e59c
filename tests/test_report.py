"""s3viz.report: notebooks executed into an HTML report that opens offline."""

from __future__ import annotations

import base64

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


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A title\n\ntext")]
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
    ]
    out = tmp_path_factory.mktemp("report")
    return build_report(nbs, out, timeout=120), out, nbs


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
