"""Old names of the public API, kept for one release with a DeprecationWarning.

:func:`renamed_args` maps old keyword names to new ones; :class:`KeyedResult`
lets a function that returned a dict return a named tuple, the dict's keys
still readable. The names and what they mean: ``docs/api.md``.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Callable

__all__ = ["PREFIX", "UNTIL", "renamed_args", "deprecated", "KeyedResult", "caller_stacklevel"]

UNTIL = "0.2"
"""The release that drops the old names."""

PREFIX = "s3viz deprecation: "
"""How every s3viz DeprecationWarning begins, so one filter can select them all
(``PYTHONWARNINGS="error:s3viz deprecation:DeprecationWarning"``, as ``make test`` does)."""

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel() -> int:
    """``stacklevel`` that makes a warning raised by the caller point at the first frame outside s3viz.

    A fixed stacklevel is wrong as soon as a helper or decorator sits between
    the user's call and the warning; this counts the frames instead.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def deprecated(message: str) -> None:
    """Warn (DeprecationWarning, at the user's line) that ``message``, naming the release that drops it."""
    warnings.warn(f"{PREFIX}{message} (the old form goes in {UNTIL})", DeprecationWarning,
                  stacklevel=caller_stacklevel())


def renamed_args(**old_to_new: str) -> Callable:
    """Decorate a function so that ``old=`` keywords still work, as ``new=``, with a warning.

    Passing both names is a TypeError: which one was meant cannot be guessed.
    The signature (``inspect.signature``, ``help``) shows the new names only.
    """
    def decorate(fn):
        name = fn.__qualname__.rsplit("<locals>.", 1)[-1].replace(".__init__", "")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{name}() got {new}= and its old name {old}=; pass {new}= "
                                    f"only")
                deprecated(f"{name}({old}=...) is now {name}({new}=...)")
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__renamed_args__ = dict(old_to_new)
        return wrapper
    return decorate


class KeyedResult:
    """Mixin for a NamedTuple that replaced a dict: ``result["name"]`` still reads a field.

    Indexing by position stays a tuple's; indexing by a field name, ``get``,
    ``keys`` and ``"name" in result`` warn and answer as the dict did.
    Iterating yields the values (a tuple's), no longer the keys. Use it as
    ``class Result(KeyedResult, _ResultFields)`` over a plain NamedTuple
    ``_ResultFields``, with ``__slots__ = ()``.
    """

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(f"{type(self).__name__} has fields {self._fields}, not {key!r}")
            deprecated(f"result[{key!r}] is now result.{key}")
            return getattr(self, key)
        return tuple.__getitem__(self, key)

    def keys(self):
        deprecated("result.keys() (the result was a dict) is now result._fields")
        return self._fields

    def get(self, key, default=None):
        deprecated(f"result.get({key!r}) (the result was a dict) is now result.{key}")
        return getattr(self, key) if key in self._fields else default

    def __contains__(self, item):
        # `"probes" in result` asked the dict for a key; a tuple would compare values
        if isinstance(item, str):
            deprecated(f"{item!r} in result (the result was a dict) is now "
                       f"{item!r} in result._fields")
            return item in self._fields
        return any(item is v for v in self)

