"""Packaging: the two dependency lists agree, the public API resolves, notebooks are clean."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import s3viz

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; 3.10 skips the TOML checks

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs += extra
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment_pip_requirements() -> dict:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    reqs, in_pip = [], False
    for line in lines:
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip:
            if not stripped.startswith("- "):
                break
            item = stripped[2:].strip()
            if not item.startswith("-e"):
                reqs.append(item)
    assert reqs, "environment.yml has no pip section"
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    py = _pyproject_requirements()
    env = _environment_pip_requirements()
    assert sorted(py) == sorted(env), (
        f"only in pyproject: {sorted(set(py) - set(env))}; "
        f"only in environment.yml: {sorted(set(env) - set(py))}"
    )
    assert py == env, "version pins differ between pyproject.toml and environment.yml"
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_torch_pins():
    py = _pyproject_requirements()
    assert py["torch"] == "torch==2.11.*"
    assert py["torchaudio"] == "torchaudio==2.11.*"


@pytest.mark.parametrize("name", s3viz.__all__)
def test_public_name_resolves(name):
    assert getattr(s3viz, name) is not None


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute"):
        s3viz.does_not_exist  # noqa: B018


def test_plot_and_widget_exports_resolve():
    import s3viz.plot
    import s3viz.widgets

    for mod in (s3viz.plot, s3viz.widgets):
        for name in mod.__all__:
            assert callable(getattr(mod, name)), f"{mod.__name__}.{name}"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    nb = json.loads(path.read_text())
    dirty = [
        i for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"
    if (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5):  # cell ids are required from 4.5
        no_id = [i for i, c in enumerate(nb["cells"]) if not c.get("id")]
        assert not no_id, f"{path.name}: cells {no_id} have no id (nbformat 4.5 needs one)"
        ids = [c["id"] for c in nb["cells"]]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"


def test_quickstart_has_a_parameters_cell_first():
    nb = json.loads((ROOT / "notebooks" / "00_quickstart.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the quickstart has no code cell"
    first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), "tag the first cell 'parameters'"
    source = "".join(first["source"])
    for name in ("UPSTREAM", "AUDIO_FOLDER"):
        assert f"{name} =" in source, f"the parameters cell does not set {name}"


def test_notebooks_are_discovered_by_glob_and_documented():
    readme = (ROOT / "README.md").read_text()
    assert len(NOTEBOOKS) >= 7
    for path in NOTEBOOKS:
        assert f"`{path.stem}`" in readme, f"README's notebook list misses {path.stem}"


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmark_imports_resolve(path):
    """Every name a benchmark imports from s3viz exists (also inside functions, which a
    plain import of the script would not reach): a renamed helper must not break them."""
    import ast
    import importlib

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("s3viz"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), (
                    f"{path.name}:{node.lineno} imports {alias.name} from {node.module}, "
                    "which has no such name")
