"""The public API's names (docs/api.md): one meaning per argument name, old names deprecated.

- every argument of a public function or method (of ``s3viz`` and every public
  module's ``__all__``) is defined in docs/api.md, or is listed below as
  belonging to one function only;
- each renamed argument still works under its old name, with a DeprecationWarning
  naming the new one, and gives the same result; passing both is refused;
- multi-part results are named tuples that still unpack (and, for the dict
  stream_analysis returned, still index by key, with a warning).
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import s3viz
from s3viz._compat import renamed_args

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"

# Arguments that belong to one public function each, defined in its docstring.
ONE_FUNCTION = {
    "apply", "verbose",  # notebook_threads
    "backend", "plan", "lengths", "layer_ids", "fingerprint",
    "i",  # LayerStore's constructor and LayerStore.utterance
    "count", "sum_x", "sum_xx", "sum_y", "sum_xy", "sum_yy", "shift", "dev", "group",
    "groups", "num_groups", "num_targets", "targets",  # ProbeStats
    "cka", "cka_level",  # stream_analysis
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
    "shard_store",  # distributed
    "num_layer", "utterance",  # teach.check_weights, teach.check_pooled
    # s3viz.plot
    "baseline", "by", "conventions", "frame_len", "frame_out", "history", "measures",
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
           "extraction", "stream", "similarity", "abx", "units", "compare", "checkpoints")


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


# --------------------------------------------------------------------------- renames


def test_renamed_args_warns_maps_and_refuses_both():
    @renamed_args(old="new")
    def f(*, new=0):
        return new

    assert list(inspect.signature(f).parameters) == ["new"]
    with pytest.warns(DeprecationWarning, match=r"^s3viz deprecation: f\(old=\.\.\.\) is now "
                                                r"f\(new=\.\.\.\) \(the old form goes in "
                                                r"0\.2\)$") as rec:
        assert f(old=3) == 3
    assert rec[0].filename == __file__  # the user's line, not s3viz's
    with pytest.raises(TypeError, match="got new= and its old name old=; pass new= only"):
        f(old=1, new=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(new=4) == 4


def test_old_argument_names_give_the_same_results(tiny_upstream, small_corpus, tiny_store):
    corpus = small_corpus[:4]
    cases = [
        ("extract", "layers", "upstream_layers",
         lambda **kw: s3viz.extract(tiny_upstream, corpus, progress=False, **kw), [1, -1],
         lambda st: [st.layer(i)[0] for i in range(st.num_layer)] + [st.layer_ids]),
        ("extract", "dtype", "amp_dtype",
         lambda **kw: s3viz.extract(tiny_upstream, corpus, progress=False, upstream_layers=[0],
                                    **kw), torch.bfloat16,
         lambda st: [st.layer(0)[0]]),
        ("stream_analysis", "targets", "target",
         lambda **kw: s3viz.stream_analysis(tiny_upstream, small_corpus, folds=2,
                                            upstream_layers=[1], device="cpu", **kw),
         ["phone"], lambda r: r.probes),
        ("stream_analysis", "layers", "upstream_layers",
         lambda **kw: s3viz.stream_analysis(tiny_upstream, small_corpus, folds=2, device="cpu",
                                            **kw), [2], lambda r: r.probes),
        ("probe_layers", "batch_size", "batch_frames",
         lambda **kw: s3viz.probe_layers(tiny_store, "phone", method="logistic", layers=[1],
                                         folds=2, device="cpu", max_epochs=1, **kw), 64,
         lambda df: df),
        ("layer_similarity", "batch_size", "batch_frames",
         lambda **kw: s3viz.layer_similarity(tiny_store, estimator="minibatch", device="cpu",
                                             **kw), 64, lambda df: df),
        ("LayerStore.iter_layer", "max_frames", "chunk_frames",
         lambda **kw: list(tiny_store.iter_layer(2, **kw)), 100,
         lambda pieces: [p for piece in pieces for p in piece] + [len(pieces)]),
    ]
    from s3viz.distributed import shard_indices
    from s3viz.probe import probe_folds
    from s3viz.zoo.tiny import WEIGHTS_PATH, tiny

    ids = [f"u{i}" for i in range(10)]
    cases += [
        ("tiny", "weights", "checkpoint", lambda **kw: tiny(**kw), WEIGHTS_PATH,
         lambda m: list(m.state_dict().values())),
        ("shard_indices", "weights", "utterance_weights",
         lambda **kw: shard_indices(ids, 1, 3, **kw), np.arange(10.0), lambda r: r),
        ("probe_folds", "weights", "utterance_weights",
         lambda **kw: probe_folds(tiny_store, folds=2, split_by="utterance", **kw),
         np.ones(len(tiny_store)), lambda df: df),
    ]
    for fn, old, new, call, value, parts in cases:
        want = parts(call(**{new: value}))
        with pytest.warns(DeprecationWarning, match=rf"{re.escape(fn)}\({old}=\.\.\.\) is now "
                                                    rf"{re.escape(fn)}\({new}=\.\.\.\)"):
            got = parts(call(**{old: value}))
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want)
        else:
            assert len(got) == len(want) >= 1, fn
            for g, w in zip(got, want):
                if isinstance(w, torch.Tensor):
                    assert torch.equal(g, w), fn
                else:
                    assert g == w, fn
        with pytest.raises(TypeError, match=f"got {new}= and its old name {old}="):
            call(**{old: value, new: value})


def test_old_transformers_argument_names():
    T = pytest.importorskip("transformers")
    from s3viz.upstreams import TransformersUpstream, from_transformers, get_upstream

    torch.manual_seed(0)
    model = T.HubertModel(T.HubertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8,) * 7, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)).eval()
    for make in (from_transformers, TransformersUpstream, get_upstream):
        name = "get_upstream" if make is get_upstream else make.__qualname__
        want = make(model, upstream_layers=[0, -1], normalize_waveform=True)
        with pytest.warns(DeprecationWarning) as rec:
            got = make(model, layers=[0, -1], normalize=True)
        assert {str(w.message).split(" (the old")[0] for w in rec} >= {
            f"s3viz deprecation: {'from_transformers' if make is get_upstream else name}"
            f"(layers=...) is now {'from_transformers' if make is get_upstream else name}"
            f"(upstream_layers=...)"}
        assert got.layer_ids == want.layer_ids == [0, 2] and got.normalize is want.normalize
        with pytest.raises(TypeError, match="got upstream_layers= and its old name layers="):
            make(model, layers=[0], upstream_layers=[0])


def test_split_by_none_is_auto_with_a_warning(tiny_store):
    want = s3viz.probe_layers(tiny_store, "phone", layers=[0], folds=2, device="cpu")
    assert (want["split_by"] == "speaker").all()
    with pytest.warns(DeprecationWarning, match="split_by=None is now split_by='auto'"):
        got = s3viz.probe_layers(tiny_store, "phone", layers=[0], folds=2, split_by=None,
                                 device="cpu")
    pd.testing.assert_frame_equal(got, want)
    with pytest.warns(DeprecationWarning, match="split_by=None"):
        _, history = s3viz.train_featurizer(tiny_store, "phone", steps=2, eval_every=1,
                                            split_by=None, device="cpu")
    assert history.attrs["split_by"] == "speaker"


# --------------------------------------------------------------------------- results


def test_stream_result_is_a_named_tuple_that_still_reads_keys(tiny_upstream, small_corpus):
    res = s3viz.stream_analysis(tiny_upstream, small_corpus, target="phone", folds=2,
                                upstream_layers=[0], device="cpu")
    assert isinstance(res, s3viz.stream.StreamResult) and res._fields == (
        "probes", "cka", "store", "passes", "shard")
    probes, cka, store, passes, shard = res
    assert probes is res.probes and cka is None and store is None and passes == 2
    assert shard == list(range(len(small_corpus))) and res[0] is res.probes
    with pytest.warns(DeprecationWarning, match=r"result\['probes'\] is now result\.probes"):
        assert res["probes"] is res.probes
    with pytest.warns(DeprecationWarning, match=r"result\.keys\(\)"):
        assert list(res.keys()) == list(res._fields)
    with pytest.raises(KeyError, match="has fields .*not 'probe'"):
        res["probe"]
    with pytest.warns(DeprecationWarning, match=r"' in result \(the result was a dict\)"):
        assert "cka" in res and "nope" not in res
    with pytest.warns(DeprecationWarning, match=r"result\.get\('\w+'\) \(the result"):
        assert res.get("passes") == 2 and res.get("nope", 7) == 7
    assert res.probes in res  # a tuple's membership, by identity


def test_multi_part_results_unpack_and_name_their_parts(tiny_store):
    fit = s3viz.train_featurizer(tiny_store, "phone", steps=2, eval_every=1, device="cpu")
    featurizer, history = fit
    assert featurizer is fit.featurizer and history is fit.history
    assert isinstance(featurizer, s3viz.WeightedSumFeaturizer)
    out = s3viz.abx_layers(tiny_store, layers=[0], max_items=40, return_cells=True)
    table, cells = out
    assert table is out.table and cells is out.cells
    assert list(table["layer"]) == [0] and np.isfinite(table["abx_error"]).all()
    assert len(cells) == table["n_cells"].sum()
