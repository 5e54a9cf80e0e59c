"""Every file s3viz writes or deletes goes through an :class:`OwnedFolder`.

Below the folder a user names nothing is followed: each step is opened relative to its
parent's descriptor with ``O_NOFOLLOW``, so a link planted inside is refused, never written
through; files are renamed into place from a temporary name. Rules: ``docs/refusals.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import unicodedata
from pathlib import Path, PurePosixPath

# Written by hand: pathlib, shutil and tempfile all follow links inside a folder, and no
# well-kept library offers "write only inside this folder, through no link"; the
# primitive is POSIX's *at() calls (os.open(..., dir_fd=)), which Python exposes.
_DIR_FD = all(f in os.supports_dir_fd for f in (os.open, os.mkdir, os.unlink, os.replace))
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafePathError(ValueError):
    """A path would leave the folder s3viz owns, or pass through a symbolic link inside it."""


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock (an extraction into the same cache)."""


NAME_MAX = 255
"""Bytes in one file name on the common file systems (ext4, APFS, NTFS in UTF-16 units)."""


def check_name(name, what: str = "name", *, room: int = 0) -> str:
    """``name`` as one file or folder name: refused when it is empty, ``.``/``..``, holds a
    path separator or a NUL, or is longer than 255 bytes less ``room`` (the bytes of a
    suffix such as ``.TextGrid`` that will be added to it)."""
    text = str(name)
    limit = NAME_MAX - room
    if (not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or len(os.fsencode(text)) > limit):
        raise UnsafePathError(
            f"{what} {name!r} cannot be a file or folder name (empty, '.', '..', a path "
            f"separator, NUL, or over {limit} bytes"
            + (f": {NAME_MAX} less {room} for the suffix added to it" if room else "")
            + f"; it has {len(os.fsencode(text))}); change it first")
    return text


def collision_key(rel: str) -> str:
    """The form under which two names are one file on common file systems (macOS and
    Windows fold case; macOS stores names decomposed): NFC, then case-folded."""
    return unicodedata.normalize("NFC", rel).casefold()


class OwnedFolder:
    """A folder that s3viz writes into.

    Args:
        root: the folder (created with its parents when missing). It may itself be a
            link (the user chose it); nothing below it is followed.
        what: how errors name it (``"cache_dir"``, ``"--out"``, ...).
    """

    def __init__(self, root, what: str = "folder", *, create: bool = True):
        if not isinstance(root, (str, os.PathLike)) or not str(os.fspath(root)).strip():
            raise TypeError(f"{what} must be a folder path, got {root!r}")
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{what} {str(path)!r} is a file, not a folder; "
                                     "give a folder path")
        if create:
            path.mkdir(parents=True, exist_ok=True)
        self.root = path.resolve()
        self.what = what
        self._base: tuple[str, ...] = ()  # a sub-folder's place below root (see sub)

    def __repr__(self) -> str:
        return f"OwnedFolder({str(self.folder)!r})"

    def parts(self, rel) -> tuple[str, ...]:
        """``rel`` as checked name parts below the root (refuses absolute paths and ``..``)."""
        text = os.fspath(rel) if isinstance(rel, os.PathLike) else str(rel)
        if "\0" in text or "\\" in text:
            raise UnsafePathError(f"{text!r} (in {self.what} {str(self.folder)!r}) holds a NUL "
                                  "or a backslash; s3viz writes no such name")
        pure = PurePosixPath(text)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise UnsafePathError(
                f"{text!r} would leave {self.what} {str(self.folder)!r}; s3viz writes only "
                "inside the folder it was given")
        return self._base + tuple(p for p in pure.parts if p != ".")

    @property
    def folder(self) -> Path:
        """This folder's absolute path."""
        return self.root.joinpath(*self._base)

    def path(self, rel="") -> Path:
        """The absolute path of ``rel`` (checked; for reading and for messages)."""
        return self.root.joinpath(*self.parts(rel)) if str(rel) else self.folder

    def sub(self, rel, what: str | None = None) -> OwnedFolder:
        """The folder ``rel`` inside this one (created), owned the same way: every later
        step is still walked from the user's folder, so a link put in its place later is
        refused too."""
        parts = self.parts(rel)
        self.mkdir(rel)
        child = object.__new__(OwnedFolder)
        child.root, child.what, child._base = self.root, what or self.what, parts
        return child

    def _refuse_link(self, at: Path, err: OSError | None = None):
        raise UnsafePathError(
            f"{str(at)!r} inside {self.what} {str(self.root)!r} is a symbolic link or not a "
            "folder; s3viz never follows links inside the folders it writes. Remove it (and "
            "check what created it), then run again") from err

    @contextlib.contextmanager
    def _dir(self, parts, create: bool):  # the folder ``parts``, open, no link followed
        if not _DIR_FD:  # pragma: no cover - Windows: lstat each step (racy, but no links)
            at = self.root
            for p in parts:
                at = at / p
                if at.is_symlink() or (at.exists() and not at.is_dir()):
                    self._refuse_link(at)
                if create:
                    at.mkdir(exist_ok=True)
            yield str(at)
            return
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            at = self.root
            for p in parts:
                at = at / p
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(p, 0o777, dir_fd=fd)
                try:
                    nfd = os.open(p, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        self._refuse_link(at, e)
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    def _split(self, rel):
        parts = self.parts(rel)
        return parts[:-1], parts[-1]

    @contextlib.contextmanager
    def open_write(self, rel, *, exclusive: bool = False):
        """A binary file for ``rel``, written to an exclusive temporary name beside it and
        renamed over ``rel`` when the block ends (a link at ``rel`` is replaced, its target
        never touched). ``exclusive``: refuse when ``rel`` already exists."""
        folder, name = self._split(rel)
        with self._dir(folder, create=True) as dfd:
            st = _lstat(dfd, name)
            if exclusive and st is not None:
                raise FileExistsError(f"{str(self.path(rel))!r} exists already; s3viz does not "
                                      "overwrite it")
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(f"{str(self.path(rel))!r} is a folder where s3viz "
                                        "writes a file; move it away")
            tmp, fd = self._temp(dfd, name)
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                if _DIR_FD:
                    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                else:  # pragma: no cover
                    os.replace(os.path.join(dfd, tmp), os.path.join(dfd, name))
            except BaseException:  # the temporary file goes, whatever stopped the write
                with contextlib.suppress(OSError):
                    _unlink(dfd, tmp)
                raise

    def write_bytes(self, rel, data) -> Path:
        return self.write_with(rel, lambda f: f.write(data))

    def write_text(self, rel, text: str, encoding: str = "utf-8") -> Path:
        return self.write_bytes(rel, text.encode(encoding))

    def write_with(self, rel, writer, *, text: bool = False) -> Path:
        """Call ``writer(file)`` on a file object for ``rel`` (for libraries that write to a
        file object: ``DataFrame.to_csv``, ``Figure.savefig``, ``soundfile.write``,
        ``torch.save``); ``text`` gives it a UTF-8 text file."""
        with self.open_write(rel) as f:
            if text:
                t = io.TextIOWrapper(f, encoding="utf-8", newline="")
                writer(t)
                t.flush()
                t.detach()
            else:
                writer(f)
        return self.path(rel)

    def mkdir(self, rel) -> Path:
        with self._dir(self.parts(rel), create=True):
            pass
        return self.path(rel)

    def _stat(self, rel):  # rel's own lstat; None when missing (a link on the way: refused)
        folder, name = self._split(rel)
        try:
            with self._dir(folder, create=False) as dfd:
                return _lstat(dfd, name)
        except FileNotFoundError:
            return None

    def exists(self, rel) -> bool:
        return self._stat(rel) is not None

    def kind(self, rel) -> str | None:
        """What ``rel`` is, without following it: ``"file"``, ``"folder"``, ``"link"`` or
        ``"other"``; None when it is missing (a link on the way there is refused)."""
        st = self._stat(rel)
        if st is None:
            return None
        m = st.st_mode
        return ("link" if stat.S_ISLNK(m) else "folder" if stat.S_ISDIR(m)
                else "file" if stat.S_ISREG(m) else "other")

    def regular_file(self, rel) -> Path | None:
        """The path of the regular file ``rel``, None when it is missing; refused when it or
        a folder on the way is a link (for readers that need a path, e.g. memory maps)."""
        st = self._stat(rel)
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode):
            self._refuse_link(self.path(rel))
        return self.path(rel)

    def _open_file(self, rel, flags: int, create: bool) -> int:
        """A descriptor of the regular file ``rel``, never through a link (a link or anything
        but a regular file is refused; a folder is an ``IsADirectoryError``)."""
        folder, name = self._split(rel)
        with self._dir(folder, create=create) as dfd:
            try:
                fd = _open(dfd, name, flags | _NOFOLLOW | _CLOEXEC)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    self._refuse_link(self.path(rel), e)
                raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR),
                                        str(self.path(rel)))
            raise UnsafePathError(f"{str(self.path(rel))!r} is not a regular file")
        return fd

    def read_bytes(self, rel) -> bytes:
        """The bytes of the regular file ``rel`` (a link there is refused, not followed)."""
        with os.fdopen(self._open_file(rel, os.O_RDONLY, create=False), "rb") as f:
            return f.read()

    def listdir(self, rel="") -> list[str]:
        """Names in the folder ``rel`` (refused when it is a link)."""
        parts = self.parts(rel) if str(rel) else self._base
        with self._dir(parts, create=False) as dfd:
            return sorted(os.listdir(dfd))

    def unlink(self, rel, missing_ok: bool = True) -> None:
        """Delete the file ``rel``; a link there is removed itself (its target is never
        touched); a folder there is refused with its name."""
        folder, name = self._split(rel)
        try:
            with self._dir(folder, create=False) as dfd:
                st = _lstat(dfd, name)
                if st is None:
                    raise FileNotFoundError(str(self.path(rel)))
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(
                        f"{str(self.path(rel))!r} is a folder inside {self.what} "
                        f"{str(self.folder)!r} where s3viz keeps only files; s3viz does not "
                        "delete folders: move it away, then run again")
                _unlink(dfd, name)
        except FileNotFoundError:
            if not missing_ok:
                raise

    @contextlib.contextmanager
    def lock(self, rel=".lock", busy: str = "another process is using it"):
        """An exclusive advisory lock on the file ``rel`` (created, never truncated or linked)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fd = self._open_file(rel, os.O_RDWR | os.O_CREAT, create=True)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise FolderBusyError(f"{busy} ({str(self.folder)!r} is locked)") from e
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _temp(self, dfd, name):
        # fits NAME_MAX whatever ``name`` is: a prefix of at most 64 bytes cut at a character
        # boundary, then a digest of the whole name so that two long names do not share it
        head = os.fsencode(name)[:64].decode("utf-8", "ignore")
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        for i in range(100):
            tmp = f".{head}.{digest}.tmp-{os.getpid()}-{i}"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
                return tmp, _open(dfd, tmp, flags)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temporary name beside {name!r} in {str(self.folder)!r}")


# primitives: ``name`` in the folder ``dfd`` (a descriptor; a path without *at() calls)
def _at(dfd, name):
    return (name, {"dir_fd": dfd}) if _DIR_FD else (os.path.join(dfd, name), {})


def _open(dfd, name, flags, mode=0o644):
    path, kw = _at(dfd, name)
    return os.open(path, flags, mode, **kw)


def _lstat(dfd, name):
    path, kw = _at(dfd, name)
    try:
        return os.stat(path, follow_symlinks=False, **kw)
    except FileNotFoundError:
        return None


def _unlink(dfd, name):
    path, kw = _at(dfd, name)
    os.unlink(path, **kw)
