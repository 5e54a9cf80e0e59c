"""The public API's names (docs/api.md): one meaning per argument name, no old names.

- every argument of a public function or method (of every public module's
  ``__all__``, the modules found by walking the package) is defined in
  docs/api.md's glossary, or, when one public function or class alone takes
  it, in the ``Args:`` section of that callable's docstring;
- old spellings are refused, never mapped (s3viz 0.x keeps no compatibility layer);
- multi-part results are named tuples that unpack and name their parts.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import pytest

import s3viz

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _public_modules():
    """``s3viz`` and every module under it whose dotted name has no ``_`` part."""
    yield s3viz
    for info in pkgutil.walk_packages(s3viz.__path__, "s3viz."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            yield importlib.import_module(info.name)


def _exports(modules):
    """``(name, object)`` for each entry of each module's ``__all__`` (``plot.f``
    for ``s3viz.plot.f``). A module without ``__all__`` is an implementation module
    whose public names reach users through its package's ``__all__``."""
    for m in modules:
        prefix = m.__name__.removeprefix("s3viz").lstrip(".")
        for n in getattr(m, "__all__", ()):
            yield (f"{prefix}.{n}" if prefix else n), getattr(m, n)


_SECTION = re.compile(r"^(\s*)(Args|Attributes):\s*$")
_ENTRY = re.compile(r"^([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?:\([^)]*\))?:(?:\s|$)")


def _args_documented(doc: str | None, sections=("Args",)) -> set[str]:
    """The names a Google-style docstring defines: each line ``name:`` or
    ``name, other:`` (a type in parentheses may follow) one step in under
    ``Args:`` (or another of ``sections``)."""
    names: set[str] = set()
    section_indent = entry_indent = None
    for line in inspect.cleandoc(doc or "").splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if section_indent is not None and indent <= section_indent:
            section_indent = None  # the section ended
        if section_indent is None:
            m = _SECTION.match(line)
            if m and m.group(2) in sections:
                section_indent, entry_indent = indent, None
            continue
        if entry_indent is None:
            entry_indent = indent
        if indent == entry_indent and (m := _ENTRY.match(line.strip())):
            names.update(n.strip() for n in m.group(1).split(","))
    return names


class _Use(NamedTuple):
    where: str  # "probe_layers", "LayerStore.layer", "plot.probe_curves"
    owner: int  # id() of the public function or class
    function: object
    documented: set  # the names its docstring's Args: define


def _uses(exports) -> dict[str, list[_Use]]:
    """Argument name -> every public callable (function, constructor, method) taking it.

    A class's constructor is documented by the class's ``Args:`` (or, for a dataclass,
    ``Attributes:``) or by ``__init__``'s; a method by its own docstring. A class and
    its methods are one owner."""
    uses = defaultdict(list)
    for name, obj in exports:
        if inspect.isclass(obj):
            members = [(name, obj.__init__, _args_documented(obj.__doc__, ("Args", "Attributes"))
                        | _args_documented(obj.__init__.__doc__))]
            for attr, f in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(f, (classmethod, staticmethod)):
                    f = f.__func__
                if callable(f):
                    members.append((f"{name}.{attr}", f, _args_documented(f.__doc__)))
        elif callable(obj):
            members = [(name, obj, _args_documented(obj.__doc__))]
        else:
            continue
        for where, f, documented in members:
            try:
                params = inspect.signature(f).parameters.values()
            except (TypeError, ValueError):
                continue
            for p in params:
                if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL,
                                                                    p.VAR_KEYWORD):
                    uses[p.name].append(_Use(where, id(obj), f, documented))
    return uses


def _arguments() -> dict[str, list[str]]:
    """Argument name -> where it is taken (every public spelling of each callable)."""
    return {n: [u.where for u in us] for n, us in _uses(_exports(_public_modules())).items()}


def _documented() -> set[str]:
    names = set()
    for line in API_DOC.read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_][a-z0-9_]*)`", line.split("|")[1]))
    return names


def _problems(uses: dict[str, list[_Use]], glossary: set[str]):
    """(names several public functions or classes share that the glossary lacks,
    names of one owner that a callable taking them leaves out of its ``Args:``)."""
    unshared, undocumented = {}, {}
    for name, us in uses.items():
        if name in glossary:
            continue
        if len({u.owner for u in us}) > 1:
            unshared[name] = sorted({u.where for u in us})
        else:
            missing = {}
            for u in us:  # one entry per function, under its first public name
                if name not in u.documented:
                    missing.setdefault(id(u.function), u.where)
            if missing:
                undocumented[name] = sorted(missing.values())
    return unshared, undocumented


def test_every_argument_name_has_one_documented_meaning():
    unshared, undocumented = _problems(_uses(_exports(_public_modules())), _documented())
    assert not unshared, f"taken by several public functions: define them in docs/api.md: {unshared}"
    assert not undocumented, (f"taken by one public function (or class) only: define them in "
                              f"its docstring's Args: (or in docs/api.md): {undocumented}")


def test_the_check_reports_an_undocumented_or_unshared_name():
    def documented(store, frobnicate):
        """Made up.

        Args:
            store: a store.
            frobnicate, twiddle (int): defined.

        Returns:
            frobnicate: not an argument's definition.
        """

    def undocumented(store, zorble, quux):
        """Made up.

        Args:
            store: a store.

        Returns:
            zorble: a result, which does not define the argument.
        """

    class Made:
        """Made up.

        Args:
            quux: defined for the constructor.
        """

        def __init__(self, quux):
            pass

        def method(self, quux, only_here):
            """Takes ``quux`` and ``only_here``, with no Args: section."""

    fake = ModuleType("s3viz.made_up")
    fake.__all__ = ["documented", "undocumented", "Made"]
    fake.documented, fake.undocumented, fake.Made = documented, undocumented, Made
    unshared, missing = _problems(_uses(_exports([fake])), glossary={"store"})
    assert unshared == {"quux": ["made_up.Made", "made_up.Made.method", "made_up.undocumented"]}
    assert missing == {"zorble": ["made_up.undocumented"],
                       "only_here": ["made_up.Made.method"]}
    # a name shared by one class's constructor and method has one owner
    assert _problems(_uses([("Made", Made)]), glossary=set()) == (
        {}, {"quux": ["Made.method"], "only_here": ["Made.method"]})


def test_old_names_are_gone_from_signatures():
    uses = _arguments()
    for fn in ("extract", "stream_analysis"):
        assert "layers" not in uses or fn not in uses["layers"], fn
    assert "stream_analysis" not in uses.get("targets", [])
    assert "extract" not in uses.get("dtype", [])
    for fn in ("probe_layers", "layer_similarity"):
        assert fn not in uses["batch_size"]
    assert "LayerStore.iter_layer" not in uses["max_frames"]
    for where in ("upstreams.from_transformers", "upstreams.TransformersUpstream",
                  "upstreams.from_whisper", "upstreams.WhisperEncoderUpstream"):
        assert where not in uses["layers"] and where not in uses.get("normalize", []), where
    assert "upstreams.tiny" not in uses["weights"]
    assert {"distributed.shard_indices", "probe.probe_folds"} <= set(uses["utterance_weights"])


# --------------------------------------------------------------------------- no old names


def test_old_spellings_are_refused_not_mapped(tiny_upstream, small_corpus, tiny_store):
    """s3viz 0.x keeps no compatibility layer: an old argument name is an unknown
    keyword, split_by=None is not "auto", a stream result is read by field only."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'layers'"):
        s3viz.extract(tiny_upstream, small_corpus[:2], layers=[0], progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_size'"):
        s3viz.probe_layers(tiny_store, "phone", batch_size=10)
    with pytest.raises(ValueError, match=r"split_by must be one of .* got None"):
        s3viz.probe_layers(tiny_store, "phone", split_by=None)
    from s3viz.measures import RidgeProbe

    res = s3viz.stream_analysis(tiny_upstream, small_corpus,
                                [RidgeProbe("phone", folds=2, split_by="utterance")],
                                device="cpu")
    assert res["probe"] is res.tables["probe"] and list(res.tables) == ["probe"]
    assert res.passes == 2 and res.store is None
    with pytest.raises(KeyError):
        res["probes"]


def test_multi_part_results_unpack_and_name_their_parts(tiny_store):
    fit = s3viz.train_featurizer(tiny_store, "phone",
                                 options=s3viz.TrainOptions(steps=2, eval_every=1), device="cpu")
    featurizer, history = fit
    assert featurizer is fit.featurizer and history is fit.history
    assert isinstance(featurizer, s3viz.WeightedSumFeaturizer)
    out = s3viz.abx_layers(tiny_store, layers=[0], max_items=40, return_cells=True)
    table, cells = out
    assert table is out.table and cells is out.cells
    assert list(table["layer"]) == [0] and np.isfinite(table["abx_error"]).all()
    assert len(cells) == table["n_cells"].sum()
