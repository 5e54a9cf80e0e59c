"""The public API's names (docs/api.md): one meaning per argument name, no old names.

- every argument of a public function or method (of ``s3viz`` and every public
  module's ``__all__``) is defined in docs/api.md, or is listed below as
  belonging to one function only;
- old spellings are refused, never mapped (s3viz 0.x keeps no compatibility layer);
- multi-part results are named tuples that unpack and name their parts.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import s3viz

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"

# Arguments that belong to one public function each, defined in its docstring.
ONE_FUNCTION = {
    "apply", "verbose",  # notebook_threads
    "backend", "plan", "lengths", "geometry", "fingerprint",
    "i",  # LayerStore's constructor and LayerStore.utterance
    "count", "sum_x", "sum_xx", "sum_y", "sum_xy", "sum_yy", "shift", "dev", "group",
    "groups", "num_groups", "num_targets", "targets",  # ProbeStats
    "tables", "passes",  # StreamResult
    "counts",  # units.measures_from_counts
    "cpu_vs_gpu",  # compare_frame_utterance
    "pca_frames",  # WeightedScorer
    "key",  # load_featurizer_weights
    "logits", "probs",  # WeightedSumFeaturizer.set_weights
    "warnings",  # ContractReport.raise_for_violations
    "rate_or_upstream",  # frame_timeline
    "fill",  # align.frame_labels
    "return_cells",  # abx_layers
    "skip",  # segment_table
    "chunk", "table",  # segments.pool_segments
    "sel", "strata", "num_classes", "types",  # probe: resolve_split, probe_folds, control_labels
    "layer_names",  # featurizers.weighted_sum
    "activation", "dropout",  # models.FrameLevelMLP
    "max_len",  # models.length_mask
    "scores",  # models.masked_softmax_pool
    "dct", "fbank",  # upstreams.spectral_hidden_states
    "name_or_object",  # upstreams.get_upstream
    "n",  # data.make_sentences
    "units",  # units.unit_measures
    "l_",  # similarity.hsic_unbiased (the second Gram matrix)
    "rank", "world_size", "t", "num_utterances", "shard_lengths",
    "num_layer", "utterance",  # teach.check_weights, teach.check_pooled
    # s3viz.plot
    "baseline", "by", "conventions", "frame_len", "frame_out", "history",
    "receptive_field", "show_control", "show_mean", "spectrogram", "timelines", "utt",
    "utterance_out", "window",
    # s3viz.widgets
    "color_by", "max_points", "probe",  # layer_projection_explorer
    "learned", "scorer", "train_kwargs",  # layer_weight_explorer
    "corpus_or_store", "window_s",  # alignment_explorer
}


# the public modules scanned besides ``s3viz`` itself (each one's ``__all__``)
MODULES = ("widgets", "plot", "data", "upstreams", "align", "audio", "models", "teach",
           "segments", "distributed", "probe", "featurizers", "contract", "store",
           "extraction", "stream", "measures", "similarity", "abx", "units", "compare",
           "checkpoints")


def _public_callables():
    """Every public function, class and method of ``s3viz`` and its public modules."""
    public = [(n, getattr(s3viz, n)) for n in s3viz.__all__]
    for mod in MODULES:
        m = importlib.import_module(f"s3viz.{mod}")
        public += [(f"{mod}.{n}", getattr(m, n)) for n in m.__all__]
    for name, obj in public:
        if inspect.isclass(obj):
            yield name, obj.__init__
            for attr, f in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(f, (classmethod, staticmethod)):
                    f = f.__func__
                if callable(f):
                    yield f"{name}.{attr}", f
        elif callable(obj):
            yield name, obj


def _arguments() -> dict[str, list[str]]:
    uses = defaultdict(list)
    for where, f in _public_callables():
        try:
            params = inspect.signature(f).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL,
                                                                p.VAR_KEYWORD):
                uses[p.name].append(where)
    return uses


def _documented() -> set[str]:
    names = set()
    for line in API_DOC.read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_][a-z0-9_]*)`", line.split("|")[1]))
    return names


def test_every_argument_name_has_one_documented_meaning():
    uses, documented = _arguments(), _documented()
    undefined = {n: w for n, w in uses.items() if n not in documented and n not in ONE_FUNCTION}
    assert not undefined, (f"define these in docs/api.md (or, if one function owns the name, "
                           f"add it to ONE_FUNCTION): {undefined}")
    # a name kept for one function must stay there: a second user needs a shared meaning
    def owner(where):  # "LayerStore.layer" -> "LayerStore"; "plot.f" -> "f"
        parts = where.split(".")
        return parts[1] if parts[0] in MODULES else parts[0]

    owners = {n: {owner(w) for w in uses.get(n, [])} for n in ONE_FUNCTION}
    shared = {n: o for n, o in owners.items() if len(o) > 1 and n not in documented}
    assert not shared, f"used by more than one public name: document them in docs/api.md: {shared}"
    assert not ONE_FUNCTION & documented, ONE_FUNCTION & documented
    stale = sorted(n for n in ONE_FUNCTION if n not in uses)
    assert not stale, f"ONE_FUNCTION lists names no public function takes: {stale}"


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
