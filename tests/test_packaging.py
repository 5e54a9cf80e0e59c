"""Packaging: the two dependency lists agree, the public API resolves, notebooks are clean."""

from __future__ import annotations

import json
import os
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


LOCK = ROOT / "requirements" / "lock.txt"


def _lock_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_s3viz_lock", ROOT / "requirements" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _environment_pip_lines() -> list:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    items, in_pip = [], False
    for line in lines:
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip:
            if not stripped.startswith("- "):
                break
            items.append(stripped[2:].strip())
    assert items, "environment.yml has no pip section"
    return items


def _makefile_extras() -> str:
    m = re.search(r"^EXTRAS\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert m, "the Makefile defines no EXTRAS"
    return m.group(1)


def test_every_pyproject_dependency_is_locked():
    locked = _lock_tool().read_lock(LOCK)
    names = {n.replace("_", "-").replace(".", "-") for n in _pyproject_requirements()}
    missing = sorted(n for n in names if n not in locked)
    assert not missing, f"{LOCK.name} lacks {missing}: run `make lock`, then `make test`"


def test_locked_versions_satisfy_pyproject_ranges():
    from packaging.requirements import Requirement

    locked = _lock_tool().read_lock(LOCK)
    for name, spec in _pyproject_requirements().items():
        req = Requirement(spec)
        version = locked[name.replace("_", "-").replace(".", "-")]
        assert req.specifier.contains(version, prereleases=True), (
            f"the lock's {name}=={version} is outside pyproject's {spec}")


def test_locked_torch_pair_is_a_known_good_one():
    from s3viz._deps import KNOWN_GOOD_PAIRS

    locked = _lock_tool().read_lock(LOCK)
    pair = (locked["torch"], locked["torchaudio"])
    assert pair in KNOWN_GOOD_PAIRS, f"lock pins torch {pair[0]} + torchaudio {pair[1]}"
    assert pair == KNOWN_GOOD_PAIRS[0], "the tested pair comes first in KNOWN_GOOD_PAIRS"
    pins = _lock_tool().read_lock(ROOT / "requirements" / "pins.txt")
    assert (pins["torch"], pins["torchaudio"]) == pair, "pins.txt and the lock disagree"


def test_lock_header_names_python_and_platform():
    py, plat = _lock_tool().lock_python(LOCK)
    assert re.fullmatch(r"3\.\d+", py) and plat
    assert f"python={py}" in (ROOT / "environment.yml").read_text(), (
        "environment.yml's python= differs from the Python the lock was resolved on")


def test_environment_yml_installs_through_the_lock():
    items = _environment_pip_lines()
    assert items == ["-c requirements/lock.txt", f"-e .[{_makefile_extras()}]"], items


def test_makefile_installs_through_the_lock():
    text = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --no-cache-dir -c $(LOCK) -e '.[$(EXTRAS)]'" in text
    assert "requirements/lock.py check $(LOCK)" in text
    assert re.search(r"^\$\(STAMP\): pyproject.toml \$\(LOCK\)", text, re.M), (
        "the venv must be reinstalled when the lock changes")
    extras = set(_makefile_extras().split(","))
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras == set(meta["optional-dependencies"]), "make installs every extra"


def test_readme_lists_the_known_good_pairs():
    from s3viz._deps import KNOWN_GOOD_PAIRS

    readme = (ROOT / "README.md").read_text()
    for torch_v, audio_v in KNOWN_GOOD_PAIRS:
        assert re.search(rf"\|\s*{re.escape(torch_v)}[^|]*\|\s*{re.escape(audio_v)}\s*\|", readme), (
            f"README's table of known-good pairs lacks torch {torch_v} + torchaudio {audio_v}")


@pytest.mark.skipif(not os.environ.get("S3VIZ_LOCKED"), reason="only in make's venv")
def test_running_venv_matches_the_lock():
    """Under `make test` the venv holds exactly the locked versions (lock.py check)."""
    assert _lock_tool().check(LOCK) == 0


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
