"""Nothing outside s3viz's own folders is written, followed or deleted (s3viz._fs).

Properties over random relative paths and planted symbolic links, the attacks that
destroyed files before (export labels that spell paths, colliding export ids, a
``.lock`` link, a ``chunks/`` link with an unreadable plan), and a scan of the
source that keeps every write of s3viz behind :class:`s3viz._fs.OwnedFolder`.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3viz
from s3viz._fs import OwnedFolder, UnsafePathError

PKG = Path(s3viz.__file__).parent


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` (links not followed) with its content digest."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


@pytest.fixture
def victim(tmp_path):
    """A folder that is not s3viz's, with a file and a sub-folder holding files."""
    v = tmp_path / "victim"
    (v / "sub").mkdir(parents=True)
    (v / "precious.txt").write_text("keep me")
    (v / "sub" / "a.pt").write_bytes(b"not s3viz's")
    (v / "sub" / "c00000_l000.pt").write_bytes(b"looks like a chunk")
    return v


# --------------------------------------------------------------------------- properties

names = st.sampled_from(["a", "b", "..", ".", "", "c.txt", "x\\y", "/", "//", "..."])
rel_paths = st.lists(names, min_size=1, max_size=5).map("/".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rel=rel_paths, absolute=st.booleans())
def test_every_write_stays_inside_the_folder(tmp_path, victim, rel, absolute):
    root = tmp_path / "owned"
    before = snapshot(victim)
    target = (str(victim) + "/" + rel) if absolute else rel
    folder = OwnedFolder(root)
    for op in (lambda: folder.write_bytes(target, b"x"), lambda: folder.mkdir(target),
               lambda: folder.unlink(target), lambda: folder.sub(target)):
        try:
            op()
        except (UnsafePathError, OSError):
            pass
    assert snapshot(victim) == before
    for p in snapshot(tmp_path):  # everything that exists is in owned/ or the victim's
        assert p.startswith(str(root)) or p.startswith(str(victim)) or p == str(root)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(link_at=st.sampled_from(["x", "d", "d/x", "d/e", "d/e/x", ".lock", "chunks"]),
       points_to=st.sampled_from(["precious.txt", "sub", "sub/a.pt", "."]),
       op=st.sampled_from(["write", "unlink", "lock", "listdir", "read", "sub", "mkdir",
                           "regular_file"]),
       rel=st.sampled_from(["x", "d/x", "d/e/x", ".lock", "chunks/c00000_l000.pt", "d",
                            "chunks"]))
def test_no_planted_link_is_followed(tmp_path_factory, link_at, points_to, op, rel):
    base = tmp_path_factory.mktemp("links")
    victim = base / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    (victim / "sub" / "a.pt").write_bytes(b"not s3viz's")
    (victim / "sub" / "c00000_l000.pt").write_bytes(b"looks like a chunk")
    root = base / "owned"
    (root / Path(link_at).parent).mkdir(parents=True, exist_ok=True)
    os.symlink(victim / points_to, root / link_at)
    before = snapshot(victim)
    folder = OwnedFolder(root)
    got = None
    try:
        if op == "write":
            folder.write_bytes(rel, b"overwritten")
        elif op == "unlink":
            folder.unlink(rel)
        elif op == "lock":
            with folder.lock(rel):
                pass
        elif op == "listdir":
            got = folder.listdir(rel)
        elif op == "read":
            got = folder.read_bytes(rel)
        elif op == "sub":
            folder.sub(rel).write_bytes("y", b"y")
        elif op == "mkdir":
            folder.mkdir(rel + "/new")
        else:
            got = folder.regular_file(rel)
    except (UnsafePathError, OSError):
        pass
    assert snapshot(victim) == before, (link_at, points_to, op, rel)
    # nothing of the victim's was read through the link either
    if isinstance(got, bytes):
        assert got not in (b"keep me", b"not s3viz's", b"looks like a chunk")
    if isinstance(got, list):
        assert "precious.txt" not in got and "a.pt" not in got
    if isinstance(got, Path):
        assert not got.resolve().is_relative_to(victim.resolve())


def test_writes_are_atomic_and_leave_no_temporary(tmp_path):
    folder = OwnedFolder(tmp_path / "o")
    folder.write_text("a/b.txt", "one")
    with pytest.raises(RuntimeError):
        with folder.open_write("a/b.txt") as f:
            f.write(b"half")
            raise RuntimeError("cut short")
    assert (tmp_path / "o" / "a" / "b.txt").read_text() == "one"
    assert folder.listdir("a") == ["b.txt"]


def test_a_folder_where_a_file_goes_is_named(tmp_path):
    folder = OwnedFolder(tmp_path / "o")
    folder.mkdir("chunks/c00000.json")
    with pytest.raises(IsADirectoryError, match="c00000.json"):
        folder.unlink("chunks/c00000.json")
    with pytest.raises(IsADirectoryError, match="c00000.json"):
        folder.write_text("chunks/c00000.json", "{}")


def test_a_file_given_as_the_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        OwnedFolder(tmp_path / "f", "--out")


# --------------------------------------------------------------------------- exports


def _aligned(n=2, **labels):
    from s3viz.data import synthetic_corpus

    corpus = synthetic_corpus(n, seed=0)
    for u in corpus:
        u.labels.update(labels)
    return corpus


@pytest.mark.parametrize("label", [
    {"dialect": "../../../escaped"}, {"split": "/tmp/escaped"}, {"dialect": "a/b"},
    {"split": ".."}, {"dialect": ""}, {"split": "x\\..\\..\\y"}])
def test_timit_export_refuses_labels_that_spell_paths(tmp_path, victim, label):
    before = snapshot(victim)
    out = tmp_path / "deep" / "er" / "export"
    with pytest.raises(UnsafePathError, match="cannot be a file or folder name"):
        s3viz.data.export_corpus(_aligned(**label), out, layout="timit")
    assert snapshot(victim) == before
    assert not out.exists()  # refused before anything was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


@pytest.mark.parametrize("layout", ["mfa", "timit"])
@pytest.mark.parametrize("ids", [("x/y", "x_y"), ("Ab", "aB"), ("caf\u00e9", "cafe\u0301")])
def test_export_refuses_two_utterances_that_map_to_one_file(tmp_path, layout, ids):
    corpus = _aligned(2)
    for u, new in zip(corpus, ids):
        u.id = new
        u.speaker = "s1"
        u.labels["gender"] = "f"  # one speaker folder in both layouts
    with pytest.raises(ValueError, match="would both be written") as e:
        s3viz.data.export_corpus(corpus, tmp_path / "e", layout=layout)
    assert repr(ids[0]) in str(e.value) and repr(ids[1]) in str(e.value)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("layout", ["mfa", "timit"])
@pytest.mark.parametrize("new_id", ["\u00e9" * 120, "b" * 250, "\u65e5" * 84, "b" * 252],
                         ids=["e-acute-x120", "b-x250", "cjk-x84", "b-x252"])
def test_export_checks_every_file_name_in_bytes_before_writing(tmp_path, layout, new_id):
    """A name that fits only without its suffix is refused before any file is written;
    one that fits is written whole (the temporary name beside it fits too)."""
    from s3viz.data.formats import _SUFFIXES

    corpus = _aligned(2)
    corpus[1].id = new_id
    longest = max(len(s.encode()) for s in _SUFFIXES[layout])
    if len(new_id.encode()) + longest > 255:
        with pytest.raises(UnsafePathError, match="utterance id.*less") as e:
            s3viz.data.export_corpus(corpus, tmp_path / "e", layout=layout)
        assert new_id in str(e.value)
        assert not (tmp_path / "e").exists()
    else:
        s3viz.data.export_corpus(corpus, tmp_path / "e", layout=layout)
        written = [p for p in (tmp_path / "e").rglob("*") if p.is_file()]
        assert {p.name[len(new_id):] for p in written if p.name.startswith(new_id)} == set(
            _SUFFIXES[layout])
        assert not [p for p in written if ".tmp-" in p.name]
    # the layouts write no suffix the plan does not check
    suffixes = {p.suffix for p in (tmp_path / "e").rglob("*") if p.is_file()
                and p.name != "labels.csv"} if (tmp_path / "e").exists() else set()
    assert suffixes <= set(_SUFFIXES[layout])


def test_a_255_byte_name_is_written_through_a_temporary_name_that_fits(tmp_path):
    folder = OwnedFolder(tmp_path / "o")
    for name in ("x" * 255, "\u00e9" * 127 + "x", "\u65e5" * 85):
        assert len(name.encode()) == 255
        folder.write_text(name, "whole")
        assert (tmp_path / "o" / name).read_text() == "whole"
    with pytest.raises(UnsafePathError, match="over 246 bytes: 255 less 9"):
        from s3viz._fs import check_name

        check_name("x" * 247, "id", room=9)


@pytest.mark.parametrize("name", ["speaker", "text", "file", "id", "num_samples"])
def test_mfa_export_refuses_a_label_that_clashes_with_a_column(tmp_path, name):
    corpus = _aligned(3)
    corpus[1].labels[name] = "from the label"
    with pytest.raises(ValueError, match=rf"\['{name}'\].*rename") as e:
        s3viz.data.export_corpus(corpus, tmp_path / "e", layout="mfa")
    assert repr(corpus[1].id) in str(e.value)
    assert not (tmp_path / "e").exists()
    for u in corpus:  # renamed as the message says, every value reads back as it went in
        if name in u.labels:
            u.labels[f"label_{name}"] = u.labels.pop(name)
    s3viz.data.export_corpus(corpus, tmp_path / "e", layout="mfa")
    back = s3viz.data.load_folder(tmp_path / "e" / "corpus", tmp_path / "e" / "labels.csv")
    got = {u.text: (u.speaker, u.labels.get(f"label_{name}")) for u in back}
    want = {u.text: (u.speaker, u.labels.get(f"label_{name}")) for u in corpus}
    assert got == want and "from the label" in {v for _, v in got.values()}


def test_export_into_a_folder_with_a_planted_link_writes_nothing_through_it(tmp_path, victim):
    corpus = _aligned(2)
    out = tmp_path / "e"
    out.mkdir()
    os.symlink(victim / "sub", out / "corpus")
    before = snapshot(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        s3viz.data.export_corpus(corpus, out, overwrite=True)
    assert snapshot(victim) == before


# --------------------------------------------------------------------------- the cache


def _extract(corpus, cache):
    from s3viz.upstreams import get_upstream

    return s3viz.extract(get_upstream("tiny_random"), corpus, progress=False, cache_dir=cache)


def test_a_lock_link_is_not_followed_or_truncated(tmp_path, victim):
    corpus = _aligned(2)
    store = _extract(corpus, tmp_path / "cache")
    (store.path / ".lock").unlink()
    os.symlink(victim / "precious.txt", store.path / ".lock")
    before = snapshot(victim)
    with pytest.raises(UnsafePathError, match=r"\.lock"):
        _extract(corpus, tmp_path / "cache")
    assert snapshot(victim) == before


def test_a_chunks_link_with_an_unreadable_plan_deletes_nothing(tmp_path, victim):
    corpus = _aligned(2)
    store = _extract(corpus, tmp_path / "cache")
    root = store.path
    for p in (root / "chunks").iterdir():
        p.unlink()
    (root / "chunks").rmdir()
    os.symlink(victim / "sub", root / "chunks")
    (root / "plan.json").write_text("{not json")
    before = snapshot(victim)
    with pytest.raises(UnsafePathError, match="chunks"):
        _extract(corpus, tmp_path / "cache")
    assert snapshot(victim) == before
    with pytest.raises(UnsafePathError):
        s3viz.LayerStore.open(root).layer(0)  # reading through the link is refused too


def test_a_folder_inside_chunks_is_named_not_raw(tmp_path):
    corpus = _aligned(2)
    store = _extract(corpus, tmp_path / "cache")
    (store.path / "plan.json").write_text("{not json")
    (store.path / "chunks" / "stray").mkdir()
    with pytest.raises(IsADirectoryError, match="stray.*s3viz does not delete folders"):
        _extract(corpus, tmp_path / "cache")


def test_a_linked_extraction_folder_is_refused(tmp_path, victim):
    corpus = _aligned(2)
    store = _extract(corpus, tmp_path / "cache")
    name = store.path.name
    import shutil

    shutil.rmtree(store.path)
    os.symlink(victim / "sub", tmp_path / "cache" / name)
    before = snapshot(victim)
    with pytest.raises(UnsafePathError, match=name):
        _extract(corpus, tmp_path / "cache")
    assert snapshot(victim) == before


def test_the_extraction_still_reuses_and_repairs_its_cache(tmp_path):
    corpus = _aligned(3)
    first = _extract(corpus, tmp_path / "cache")
    (first.path / "plan.json").write_text("{not json")
    again = _extract(corpus, tmp_path / "cache")
    assert np.array_equal(first.layer(1)[0].numpy(), again.layer(1)[0].numpy())
    assert not [p for p in first.path.rglob("*") if ".tmp-" in p.name]


# --------------------------------------------------------------------------- the source


OS_CALLS = {"rmtree", "move", "copy", "copy2", "copyfile", "copytree", "remove", "rename",
            "replace", "unlink", "rmdir", "removedirs", "makedirs", "mkdir", "symlink",
            "mkstemp", "mkdtemp", "NamedTemporaryFile", "open", "truncate"}
PATH_METHODS = {"write_text", "write_bytes", "mkdir", "unlink", "rmdir", "touch", "symlink_to",
                "hardlink_to"}
OWNED_NAMES = {"out", "folder", "root_dir", "chunk_dir", "where", "owned", "OwnedFolder"}
"""Names the package gives its OwnedFolder objects: their methods are the sanctioned ones."""
TARGET_CALLS = {"to_csv": 0, "savefig": 0, "to_json": 0, "to_parquet": 0}
# Reviewed exceptions, each with its reason.
ALLOWED = {
    ("run.py", "open"): "writes '5' to /proc/self/clear_refs: resets this process's own "
                        "peak-memory counter, no file",
}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            owner = None
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                owner = f.value.id
            elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Call)
                  and getattr(f.value.func, "id", None) == "OwnedFolder"):
                owner = "OwnedFolder"  # OwnedFolder(...).write_text(...)
            yield node, name, owner


def _target(node, pos):
    return node.args[pos] if len(node.args) > pos else None


def test_every_write_of_the_package_goes_through_owned_folder():
    """A scan of s3viz's source: file writes, deletes and folder creation are calls of
    OwnedFolder (s3viz/_fs.py); libraries that write (to_csv, savefig, torch.save,
    soundfile.write, np.save/savez) get a file object from it, never a path."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel == "_fs.py":
            continue
        for node, name, owner in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{rel}:{node.lineno} {owner + '.' if owner else ''}{name}"
            if (rel, name) in ALLOWED:
                continue
            if owner in ("os", "shutil", "tempfile") and name in OS_CALLS:
                bad.append(where)
            elif name in PATH_METHODS and owner not in OWNED_NAMES:
                bad.append(where)
            elif name == "open" and owner in (None, "io", "builtins"):
                mode = _target(node, 1) or next(
                    (k.value for k in node.keywords if k.arg == "mode"), None)
                if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                    bad.append(where)
            elif ((name in TARGET_CALLS and _target(node, TARGET_CALLS[name]) is not None
                   and not isinstance(_target(node, TARGET_CALLS[name]), ast.Name))
                  or (owner == "torch" and name == "save"
                      and not isinstance(_target(node, 1), ast.Name))
                  or (owner in ("np", "numpy") and name in ("save", "savez", "savez_compressed",
                                                            "savetxt")
                      and not isinstance(_target(node, 0), ast.Name))
                  or (owner in ("sf", "soundfile") and name == "write"
                      and not isinstance(_target(node, 0), ast.Name))):
                bad.append(where + " (writes to a path expression)")
    assert not bad, ("write through s3viz._fs.OwnedFolder (these write, create or delete "
                     "by path):\n" + "\n".join(bad))


# --------------------------------------------------------------------------- synthetic cache


def test_the_synthetic_cache_writes_through_no_link_below_the_named_folder(tmp_path, victim,
                                                                           monkeypatch):
    """$S3VIZ_CACHE is the user's; its ``synthetic/`` is s3viz's and is not followed."""
    (tmp_path / "cache").mkdir()
    os.symlink(victim, tmp_path / "cache" / "synthetic")
    monkeypatch.setenv("S3VIZ_CACHE", str(tmp_path / "cache"))
    before = snapshot(victim)
    with pytest.raises(UnsafePathError, match="synthetic"):
        s3viz.data.synthetic_corpus(2, seed=0)
    assert snapshot(victim) == before


@pytest.mark.parametrize("where", ["named", "default"])
def test_the_synthetic_cache_serves_no_file_through_a_link(tmp_path, victim, monkeypatch, where):
    monkeypatch.setenv("S3VIZ_CACHE", str(tmp_path / "env"))
    cache_dir = tmp_path / "named" if where == "named" else None
    s3viz.data.synthetic_corpus(2, seed=0, cache_dir=cache_dir)
    folder = tmp_path / "named" if where == "named" else tmp_path / "env" / "synthetic"
    (cached,) = folder.glob("synthetic-*.npz")
    os.replace(cached, victim / "valid.npz")  # a valid cache file, elsewhere
    os.symlink(victim / "valid.npz", cached)
    before = snapshot(victim)
    with pytest.raises(UnsafePathError, match=cached.name):
        s3viz.data.synthetic_corpus(2, seed=0, cache_dir=cache_dir)
    assert snapshot(victim) == before


# --------------------------------------------------------------------------- reopening


def test_reopening_a_cache_dir_follows_no_planted_link(tmp_path):
    """A link planted in the cache_dir given to LayerStore.open is not an extraction of it."""
    store = _extract(_aligned(2), tmp_path / "A")
    (tmp_path / "B").mkdir()
    os.symlink(store.path, tmp_path / "B" / "planted")
    with pytest.raises(FileNotFoundError, match="planted"):
        s3viz.LayerStore.open(tmp_path / "B")
    # a real folder whose manifest.json is a link is left out too
    (tmp_path / "B" / "real").mkdir()
    os.symlink(store.path / "manifest.json", tmp_path / "B" / "real" / "manifest.json")
    with pytest.raises(FileNotFoundError, match="real/manifest.json"):
        s3viz.LayerStore.open(tmp_path / "B")
    # beside a real extraction, the link is not counted as a second one
    os.symlink(store.path, tmp_path / "A" / "planted")
    assert s3viz.LayerStore.open(tmp_path / "A").path == store.path
    assert s3viz.LayerStore.open(tmp_path / "B" / "planted").num_layer == store.num_layer  # named
