"""docs/refusals.md names, for every class s3viz refuses, the tests that hold it: each
named test must exist, so the table cannot point at a test that was renamed away."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _named_tests():
    """(file, test name) for every `tests/x.py::name` and following `::name` in a row."""
    for line in (ROOT / "docs" / "refusals.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        current = None
        for ref in re.findall(r"`(tests/[\w/]+\.py)?(?:::([\w\[\]\-|.]+))?`", line):
            path, name = ref
            if path:
                current = path
            if name and current:
                yield current, name.split("[")[0]
            elif path:
                yield path, None


def test_every_test_the_refusals_table_names_exists():
    refs = list(_named_tests())
    assert len(refs) > 40  # the table is not empty
    missing = []
    for path, name in refs:
        source = ROOT / path
        if not source.exists():
            missing.append(path)
        elif name and not re.search(rf"^def {re.escape(name)}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/refusals.md names tests that do not exist: {missing}"
