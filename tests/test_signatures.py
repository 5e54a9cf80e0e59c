"""Narrow signatures (issue 28): options that belong to one method live in one object.

Every public function, public class (its ``__init__``) and public method defined in a
public module of s3viz takes at most 14 parameters (``self``/``cls`` not counted),
:func:`s3viz.probe_layers` at most 14
(issue 28's 12 plus the bootstrap's two, named by issue 29).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import s3viz

LIMIT = 14
# probe_layers: issue 28's 12, plus issue 29's bootstrap= and confidence= (named there)
LIMITS = {"s3viz.probe.layers.probe_layers": 14}


def _public_modules():
    yield s3viz
    for info in pkgutil.walk_packages(s3viz.__path__, "s3viz."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue
        yield importlib.import_module(info.name)


def _count(fn) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, C extensions
        return None
    return sum(1 for name in sig.parameters if name not in ("self", "cls"))


def _callables():
    """``(qualified name, callable)`` of every public function and class defined in a
    public module of s3viz, and of each class's ``__init__`` and public methods."""
    seen = set()
    for mod in _public_modules():
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            qual = f"{mod.__name__}.{name}"
            if qual in seen:
                continue
            seen.add(qual)
            if inspect.isfunction(obj):
                yield qual, obj
            elif inspect.isclass(obj):
                if "__init__" in vars(obj):
                    yield qual, vars(obj)["__init__"]
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if inspect.isfunction(member):
                        yield f"{qual}.{attr}", member


def test_the_walk_sees_the_library():
    names = dict(_callables())
    # the walk reaches nested packages, classes' __init__ and classmethods
    for qual in ("s3viz.probe.layers.probe_layers", "s3viz.similarity.layer_similarity",
                 "s3viz.store.LayerStore", "s3viz.store.LayerStore.from_tensors",
                 "s3viz.distributed.Sharding.of", "s3viz.zoo.train_tiny.train"):
        assert qual in names, qual
    assert len(names) > 150


def test_no_public_callable_takes_more_than_14_parameters():
    offenders = []
    for qual, fn in _callables():
        n = _count(fn)
        if n is None:
            continue
        if n > LIMITS.get(qual, LIMIT):
            offenders.append(f"{qual}: {n} parameters (at most {LIMITS.get(qual, LIMIT)})")
    assert not offenders, "too many parameters:\n" + "\n".join(sorted(offenders))
