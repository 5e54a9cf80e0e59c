"""The package's layout rules (issue: one concept per room).

- no module over 900 lines (the tiny model's training script aside);
- every module has a docstring of at most 10 lines: what it holds and where to
  read more; essays (the maths, the file layouts, the conventions) live in docs/;
- no private name imported from another module, except between modules of one
  subpackage (``s3viz.probe.*``, ``s3viz.contract.*`` ...); private *modules*
  (``s3viz._cache``, ``s3viz._validate`` ...) are shared code and may be imported;
- the public API and the documented imports keep working after the splits.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import s3viz

ROOT = Path(s3viz.__file__).parent
MAX_LINES = 900
LONG_ALLOWED = {"zoo/train_tiny.py"}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, path.relative_to(ROOT).as_posix()


def test_no_module_over_the_line_limit():
    long = {rel: n for path, rel in _modules()
            if (n := len(path.read_text().splitlines())) > MAX_LINES and rel not in LONG_ALLOWED}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


MAX_DOC_LINES = 10


def test_module_docstrings_are_short_and_point_to_docs():
    bad = {}
    for path, rel in _modules():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc or len(doc.splitlines()) > MAX_DOC_LINES:
            bad[rel] = len(doc.splitlines()) if doc else 0
    assert not bad, (f"module docstrings missing or over {MAX_DOC_LINES} lines (move the "
                     f"explanation to docs/): {bad}")
    # the docs a docstring points to exist
    docs = Path(__file__).resolve().parents[1] / "docs"
    for path, rel in _modules():
        for name in re.findall(r"docs/([a-z_]+\.md)", path.read_text()):
            assert (docs / name).exists(), f"{rel} points to docs/{name}, which is missing"


def _package_of(rel: str) -> tuple[str, ...]:
    parts = tuple(Path(rel).with_suffix("").parts)
    return parts[:-1]  # s3viz/probe/ridge.py -> ("probe",); s3viz/store.py -> ()


def _private_imports(path: Path, rel: str):
    pkg = _package_of(rel)
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
        target = base + (tuple(node.module.split(".")) if node.module else ())
        for alias in node.names:
            name = alias.name
            if not name.startswith("_") or name.startswith("__"):
                continue
            if (ROOT.joinpath(*target, name).is_dir()
                    or ROOT.joinpath(*target, name + ".py").exists()):
                continue  # a private module, not a private name
            target_pkg = target if ROOT.joinpath(*target).is_dir() else target[:-1]
            if target_pkg == pkg and pkg:
                continue  # inside one subpackage
            yield f"{rel}: from {'.' * node.level}{node.module or ''} import {name}"


def test_no_private_name_imported_across_modules():
    found = [line for path, rel in _modules() for line in _private_imports(path, rel)]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_layout_checks_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .extract import _secret\nfrom .probe import ridge\n")
    assert list(_private_imports(bad, "bad.py")) == ["bad.py: from .extract import _secret"]


@pytest.mark.parametrize("name", s3viz.__all__)
def test_every_public_name_resolves(name):
    assert getattr(s3viz, name) is not None


@pytest.mark.parametrize("module, names", [
    ("s3viz.extraction", ["extract", "LayerStore", "CacheCorruptionError", "NonFiniteError",
                          "DEFAULT_MAX_BATCH_SECONDS"]),
    ("s3viz.store", ["LayerStore", "CacheCorruptionError", "NonFiniteError"]),
    ("s3viz.probe", ["probe_layers", "ProbeStats", "probe_folds", "control_labels", "LAMBDAS",
                     "LEVELS", "METHODS", "SPLITS"]),
    ("s3viz.contract", ["check_upstream", "check_featurizer", "check_frame_model",
                        "check_utterance_model", "ContractReport", "ContractViolation",
                        "STATUSES"]),
    ("s3viz.featurizers", ["WeightedSumFeaturizer", "align_frames", "weighted_sum"]),
    ("s3viz.featurizer_training", ["train_featurizer"]),
    ("s3viz.probe.weighted", ["WeightedScorer"]),
])
def test_documented_imports(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is not None, (module, name)
    # one object under every name it is reachable by
    for name in set(names) & set(s3viz.__all__):
        assert getattr(mod, name) is getattr(s3viz, name), (module, name)


def test_the_extraction_module_has_one_path():
    """s3viz.extract is the function; the module is s3viz.extraction, with no stand-in."""
    import importlib

    assert s3viz.extract is s3viz.extraction.extract
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("s3viz.extract")
