"""A torchaudio that cannot load gives one clear ImportError, whichever s3viz path hits it."""

from __future__ import annotations

import ast
import importlib.abc
import sys
from pathlib import Path

import pytest

from s3viz import _deps

ROOT = Path(__file__).resolve().parents[1]
UNDEFINED = ("/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so: "
             "undefined symbol: torch_exception_get_what_without_backtrace")


class _FailingTorchaudio(importlib.abc.MetaPathFinder):
    """Make ``import torchaudio`` fail the way a torchaudio built for another torch does."""

    def __init__(self, error):
        self.error = error

    def find_spec(self, name, path=None, target=None):
        if name == "torchaudio":
            raise self.error
        return None


@pytest.fixture
def broken_torchaudio(monkeypatch):
    def install(error=None, torch_v="2.11.0", audio_v="2.11.1"):
        error = OSError(UNDEFINED) if error is None else error
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(sys, "meta_path", [_FailingTorchaudio(error)] + sys.meta_path)
        versions = {"torch": torch_v, "torchaudio": audio_v}
        monkeypatch.setattr(_deps, "installed_version", lambda dist: versions[dist])
    return install


def test_broken_pair_names_versions_pairs_and_fix(broken_torchaudio):
    broken_torchaudio()
    with pytest.raises(_deps.TorchaudioImportError) as info:
        _deps.torchaudio()
    msg = str(info.value)
    assert "torchaudio 2.11.1 does not load with torch 2.11.0" in msg
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in msg
    for torch_v, audio_v in _deps.KNOWN_GOOD_PAIRS:
        assert f"torch {torch_v} + torchaudio {audio_v}" in msg
    assert _deps.FIX_COMMAND in msg and "make setup" in msg
    assert len(msg.splitlines()) <= 5, "one short message, not a traceback"
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value.__context__, OSError), "the original error stays reachable"
    assert info.value.__suppress_context__, "but its traceback is not printed"


def test_root_cause_of_torchs_reraise_is_reported(broken_torchaudio):
    """torch.ops.load_library re-raises the linker's error as 'Could not load this library'."""
    try:
        try:
            raise OSError(UNDEFINED)
        except OSError as linker:
            raise OSError("Could not load this library: /x/libtorchaudio.so") from linker
    except OSError as err:
        broken_torchaudio(err)
    with pytest.raises(ImportError, match="undefined symbol: torch_exception_get_what"):
        _deps.torchaudio()


def test_cpu_torch_is_named_as_the_cause(broken_torchaudio):
    broken_torchaudio(OSError("libc10_cuda.so: cannot open shared object file: No such file"),
                      torch_v="2.11.0+cpu", audio_v="2.11.0")  # a "known" pair, but +cpu
    with pytest.raises(ImportError, match=r"\+cpu build of torch") as info:
        _deps.torchaudio()
    assert "libc10_cuda.so" in str(info.value)


def test_known_good_pair_that_fails_says_the_install_is_damaged(broken_torchaudio):
    broken_torchaudio(RuntimeError("operator torchaudio::forced_align does not exist"),
                      torch_v="2.11.0", audio_v="2.11.0")
    with pytest.raises(ImportError, match="damaged"):
        _deps.torchaudio()


def test_missing_torchaudio(broken_torchaudio):
    broken_torchaudio(ModuleNotFoundError("No module named 'torchaudio'"), audio_v=None)
    with pytest.raises(ImportError, match="torchaudio is not installed"):
        _deps.torchaudio()


def test_first_s3viz_call_that_needs_torchaudio_raises_the_clear_error(broken_torchaudio):
    # resampling uses soxr, not torchaudio; the spectral baseline's mel filters need it
    from s3viz.upstreams._spectral import _mel_filterbank

    broken_torchaudio()
    with pytest.raises(_deps.TorchaudioImportError, match="Pairs known to work"):
        _mel_filterbank(40)


def test_working_torchaudio_is_returned():
    module = _deps.torchaudio()
    assert module is sys.modules["torchaudio"]
    installed = (_deps._public(_deps.installed_version("torch")),
                 _deps._public(_deps.installed_version("torchaudio")))
    assert installed in _deps.KNOWN_GOOD_PAIRS, "the test environment runs a known-good pair"


def _torchaudio_imports(tree):
    """(function name, lineno, guarded?) for each torchaudio import in a module's functions."""
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        guarded_at = None
        for node in ast.walk(func):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "torchaudio"
                    and getattr(node.func.value, "id", None) == "_deps"):
                guarded_at = min(guarded_at or node.lineno, node.lineno)
        for node in ast.walk(func):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "torchaudio" or n.startswith("torchaudio.") for n in names):
                yield func.name, node.lineno, guarded_at is not None and guarded_at <= node.lineno


def test_every_torchaudio_import_in_s3viz_goes_through_deps():
    bad = []
    for path in sorted((ROOT / "s3viz").rglob("*.py")):
        if path.name == "_deps.py":
            continue
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in top:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if any((n or "").split(".")[0] == "torchaudio" for n in names):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} (module level)")
        bad += [f"{path.relative_to(ROOT)}:{line} in {name}()"
                for name, line, ok in _torchaudio_imports(tree) if not ok]
    assert not bad, "import torchaudio only after s3viz._deps.torchaudio(): " + ", ".join(bad)
