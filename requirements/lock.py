"""Write and check requirements/lock.txt, the exact package set `make test` passed with.

    python requirements/lock.py write requirements/lock.txt   # `make lock`: freeze this venv
    python requirements/lock.py check requirements/lock.txt   # `make setup`: venv == lock?

``write`` freezes the running interpreter's environment (``pip freeze --all``,
so pip, setuptools and wheel are locked too; the editable s3viz itself is left
out) under a header that names the Python and platform it was resolved on, and
refuses a torch/torchaudio pair that is not in ``s3viz._deps.KNOWN_GOOD_PAIRS``.
``check`` compares the installed versions with the lock and exits 1 when a
locked package is installed at another version or (on the lock's own Python
and platform) is missing, so a venv that drifted from the lock (a package
upgraded by hand, a constraint pip could not honour) is caught before the
tests run on it. Packages installed beside the lock are not reported.

pip's own ``freeze`` and metadata are used rather than a lock tool (pip-tools,
uv) so that a fresh machine needs nothing but the Python it has.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path

HEADER = """\
# The exact package set `make test` passed with: make installs through it
# (pip install -c requirements/lock.txt -e '.[EXTRAS]'), and so does environment.yml.
# Regenerate with `make lock` (a fresh resolution under requirements/pins.txt),
# then run `make test` before committing the new lock.
# python: {python}
# platform: {platform}
"""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path) -> dict:
    """``{canonical name: version}`` from ``name==version`` lines (comments skipped)."""
    pins = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            raise SystemExit(f"{path}:{n}: expected an exact 'name==version' line, got {line!r}")
        pins[canonical(m.group(1))] = m.group(2)
    return pins


def lock_python(path) -> tuple:
    """``(major.minor, platform)`` of the Python the lock was resolved on (its header)."""
    text = Path(path).read_text()
    py = re.search(r"^# python: (\d+\.\d+)", text, re.M)
    plat = re.search(r"^# platform: (.+)$", text, re.M)
    if not (py and plat):
        raise SystemExit(f"{path}: the header lacks '# python:' or '# platform:'; run `make lock`")
    return py.group(1), plat.group(1).strip()


def this_platform() -> str:
    return f"{sys.platform} {platform.machine()}"


def installed() -> dict:
    """``{canonical name: version}`` of the distributions this interpreter imports: the first
    one on sys.path for each name, as ``importlib.metadata.version`` picks (setuptools puts its
    vendored packaging / platformdirs dist-infos on sys.path once imported; they come later)."""
    found: dict = {}
    for d in importlib.metadata.distributions():
        name = d.metadata["Name"]
        if name:
            found.setdefault(canonical(name), d.version)
    return found


def write(path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from s3viz._deps import KNOWN_GOOD_PAIRS

    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    lines = sorted((ln.strip() for ln in frozen if ln.strip() and not ln.startswith("#")),
                   key=lambda ln: canonical(ln.split("==")[0]))
    bad = [ln for ln in lines if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==\S+", ln)]
    if bad:
        raise SystemExit(f"pip freeze gave lines that are not exact pins: {bad}")
    pins = {canonical(ln.split("==")[0]): ln.split("==")[1] for ln in lines}
    pair = (pins.get("torch", "").split("+")[0], pins.get("torchaudio", "").split("+")[0])
    if pair not in KNOWN_GOOD_PAIRS:
        raise SystemExit(f"the resolution picked torch {pair[0]} + torchaudio {pair[1]}, which is "
                         f"not a known-good pair {KNOWN_GOOD_PAIRS}; pin one in "
                         "requirements/pins.txt (and add a measured pair to s3viz/_deps.py)")
    header = HEADER.format(python=platform.python_version(),
                           platform=this_platform())
    Path(path).write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {path}: {len(lines)} packages, torch {pair[0]} + torchaudio {pair[1]}")


def check(path) -> int:
    pins, have = read_lock(path), installed()
    (want_py, want_plat), py = lock_python(path), "%d.%d" % sys.version_info[:2]
    problems = [f"{name}: locked {version}, installed {have.get(name, '(none)')}"
                for name, version in sorted(pins.items())
                if name in have and have[name] != version]
    missing = sorted(set(pins) - set(have))
    if py != want_py:
        print(f"warning: the lock was resolved on Python {want_py}, this is Python {py}; "
              f"run `make PYTHON=python{want_py} ...` or `make lock`", file=sys.stderr)
    elif want_plat != this_platform():
        print(f"note: the lock was resolved on {want_plat}, this is {this_platform()}: "
              "only the locked packages installed here were compared", file=sys.stderr)
    elif missing:
        # On the lock's own Python and platform every locked package is part of the set.
        problems += [f"{name}: locked {pins[name]}, not installed" for name in missing]
    if problems:
        print(f"{path}: the venv does not match the lock:\n  " + "\n  ".join(problems)
              + "\nremove .venv and run `make setup` again, or `make lock` to re-resolve",
              file=sys.stderr)
        return 1
    print(f"venv matches {path} ({len(pins)} packages)")
    return 0


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    if args[0] == "write":
        write(args[1])
        return 0
    return check(args[1])


if __name__ == "__main__":
    sys.exit(main())
