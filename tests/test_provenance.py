"""Which weights a result came from travels with it: the store, its cache, every measure
table (``df.attrs["weights"]``), the plots' legends and titles, ``python -m s3viz.run``'s
``run.json`` and the demo's findings say "random weights" where they are."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import s3viz  # noqa: E402
from s3viz import plot  # noqa: E402
from s3viz.store import LayerStore  # noqa: E402
from s3viz.upstreams import get_upstream, is_random_weights  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # 8 utterances: a few phones occur in one utterance only (said, and beside the point)
              pytest.mark.filterwarnings("ignore::s3viz.probe.UnseenClassWarning")]

SHIPPED = "pretrained: the shipped tiny model (s3viz/zoo/tiny.pt)"
RANDOM = "random weights (seed 0)"


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def corpus():
    from s3viz.data import synthetic_corpus

    return synthetic_corpus(n_utterances=8, seed=0, speakers=4)


@pytest.fixture(scope="module")
def stores(corpus):
    """The tiny model's store with its shipped weights, and with random weights."""
    out = {}
    for key, pretrained in (("pretrained", True), ("random", False)):
        up = get_upstream("tiny", pretrained=pretrained)
        out[key] = s3viz.extract(up, corpus, device="cpu", progress=False)
    return out


def test_a_store_says_which_weights_it_came_from(stores):
    assert stores["pretrained"].weights == SHIPPED
    assert stores["random"].weights == RANDOM
    assert is_random_weights(stores["random"].weights)
    assert not is_random_weights(stores["pretrained"].weights)
    assert repr(stores["random"]).endswith(f"; weights: {RANDOM})")
    assert f"weights: {SHIPPED}" in repr(stores["pretrained"])


def test_from_tensors_weights_are_as_given_unless_said(stores):
    hs = [stores["random"].utterance(i) for i in range(2)]
    rates = stores["random"].downsample_rates
    assert LayerStore.from_tensors(hs, downsample_rates=rates).weights == "as given"
    said = LayerStore.from_tensors(hs, downsample_rates=rates, weights_source=RANDOM)
    assert said.weights == RANDOM
    with pytest.raises(TypeError, match="weights_source"):
        LayerStore.from_tensors(hs, downsample_rates=rates, weights_source="")


def test_a_disk_cache_keeps_the_weights_and_reuse_takes_the_current_text(corpus, tmp_path):
    def upstream(text=None):
        up = get_upstream("tiny", pretrained=False)
        # the text alone, not the weights, differs below: the fingerprint leaves it out here
        up.s3viz_fingerprint_ignore = ("weights",)
        if text is not None:
            up.weights = text
        return up

    first = s3viz.extract(upstream(), corpus, cache_dir=tmp_path, progress=False)
    assert first.weights == RANDOM
    assert json.loads((first.path / "manifest.json").read_text())["weights"] == RANDOM
    assert LayerStore.open(first.path).weights == RANDOM
    assert LayerStore.open(tmp_path).weights == RANDOM
    chunks = {p.name: p.stat().st_mtime_ns for p in (first.path / "chunks").iterdir()}

    renamed = "random weights (seed 0, the second upstream's text)"
    again = s3viz.extract(upstream(renamed), corpus, cache_dir=tmp_path, progress=False)
    assert again.path == first.path  # reused, not extracted again
    assert {p.name: p.stat().st_mtime_ns for p in (again.path / "chunks").iterdir()} == chunks
    assert again.weights == renamed
    assert LayerStore.open(again.path).weights == renamed  # the manifest follows
    assert torch.equal(again.layer(1)[0], first.layer(1)[0])


def test_a_cache_written_without_the_record_says_so(corpus, tmp_path):
    from s3viz._cache import sealed
    from s3viz.store import NOT_RECORDED

    store = s3viz.extract(get_upstream("tiny", pretrained=False), corpus, cache_dir=tmp_path,
                          progress=False)
    path = store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["weights"], manifest["manifest_sha256"]
    path.write_text(json.dumps(sealed(manifest, "manifest_sha256")))
    assert LayerStore.open(store.path).weights == NOT_RECORDED


@pytest.fixture(scope="module")
def measures(stores):
    """Every measure table s3viz computes from one store, per store."""
    out = {}
    for key, store in stores.items():
        out[key] = {
            "probe_layers": s3viz.probe_layers(store, "phone", folds=2, split_by="utterance",
                                               device="cpu"),
            "segment probe": s3viz.probe_layers(store, "phone", level="segment", folds=2,
                                                split_by="utterance", device="cpu"),
            "abx_layers": s3viz.abx_layers(store, device="cpu"),
            "abx cells": s3viz.abx_layers(store, device="cpu",
                                          return_cells=True).cells,
            "unit_quality": s3viz.unit_quality(store, k=8, device="cpu"),
            "layer_similarity": s3viz.layer_similarity(store, device="cpu"),
        }
    return out


@pytest.mark.parametrize("key", ["pretrained", "random"])
def test_every_measure_table_carries_the_store_weights(stores, measures, key):
    store = stores[key]
    for name, df in measures[key].items():
        assert df.attrs.get("weights") == store.weights, name
    pair = s3viz.layer_similarity(store, stores["pretrained"], device="cpu")
    assert pair.attrs["weights"] == store.weights
    assert pair.attrs["other_weights"] == SHIPPED


def test_sharded_probes_and_stream_tables_carry_the_weights(stores, corpus, tmp_path):
    from s3viz.distributed import Sharding
    from s3viz.measures import RidgeProbe, UnitQuality
    from s3viz.stream import stream_analysis

    store = stores["random"]
    sharding = Sharding.of(corpus, store, list(range(len(corpus))), reduce=lambda t: t)
    assert sharding.reference.weights == RANDOM
    sharded = s3viz.probe_layers(store, "phone", folds=2, split_by="utterance", device="cpu",
                                 sharding=sharding)
    assert sharded.attrs["weights"] == RANDOM
    up = get_upstream("tiny", pretrained=False)
    for cache_dir in (None, tmp_path):
        res = stream_analysis(up, corpus, [RidgeProbe("phone", folds=2, split_by="utterance"),
                                           "cka", UnitQuality(k=4, max_frames=200)],
                              device="cpu", cache_dir=cache_dir)
        assert all(t.attrs["weights"] == RANDOM for t in res.tables.values())
        assert sorted(res.tables) == ["cka", "probe", "units"]
    assert res.store.weights == RANDOM


def test_compare_frame_utterance_on_a_store_carries_its_weights(stores):
    from s3viz.models import FrameLevelLinear, MeanPoolingLinear

    store = stores["random"]
    frame_model = FrameLevelLinear(store.hidden_sizes[1], 3)
    df = s3viz.compare_frame_utterance(frame_model, MeanPoolingLinear.from_frame_model(
        frame_model), store, layer=1, device="cpu", cpu_vs_gpu=False)
    assert df.attrs["weights"] == RANDOM
    ax = plot.frame_vs_utterance(df)
    assert ax.get_title().endswith("(random weights)")
    df.attrs["weights"] = SHIPPED
    assert "random weights" not in plot.frame_vs_utterance(df).get_title()


def _texts(ax) -> str:
    """Every label a reader sees: legend entries, title, colorbar label."""
    legend = ax.get_legend()
    parts = [ax.get_title()] + ([t.get_text() for t in legend.get_texts()] if legend else [])
    parts += [a.get_ylabel() for a in ax.figure.axes]
    return "\n".join(parts)


@pytest.mark.parametrize("key", ["pretrained", "random"])
def test_plots_say_random_weights_where_they_are(measures, key):
    m = measures[key]
    featurizer_weights = pd.Series([0.1, 0.2, 0.3, 0.2, 0.2], index=range(5), name="weight")
    axes = {
        "probe_curve": plot.probe_curve(m["probe_layers"]),
        "probe_curve (segments)": plot.probe_curve(m["segment probe"]),
        "abx_curve": plot.abx_curve(m["abx_layers"]),
        "unit_quality": plot.unit_quality(m["unit_quality"]),
        "similarity": plot.similarity(m["layer_similarity"], title="tiny"),
        "weights_and_probe": plot.weights_and_probe(featurizer_weights, m["probe_layers"]),
    }
    for name, ax in axes.items():
        text = _texts(ax)
        assert ("random weights" in text) == (key == "random"), (name, text)
    if key == "random":
        legend = [t.get_text() for t in axes["probe_curve"].get_legend().get_texts()]
        assert "phone / ridge (random weights)" in legend
        assert axes["similarity"].get_title() == "tiny (random weights)"


def test_labels_that_say_it_already_are_not_repeated_and_pairs_name_their_side(stores):
    df = s3viz.probe_layers(stores["random"], "speaker", folds=2, split_by="utterance",
                            device="cpu").assign(method="tiny (random weights)")
    legend = [t.get_text() for t in plot.probe_curve(df).get_legend().get_texts()]
    assert "speaker / tiny (random weights)" in legend
    assert not any(t.count("random weights") > 1 for t in legend)
    pair = s3viz.layer_similarity(stores["pretrained"], stores["random"], device="cpu")
    assert plot.similarity(pair).get_title() == "columns: random weights"
    both = s3viz.layer_similarity(stores["random"], stores["random"], device="cpu")
    assert plot.similarity(both, title="x").get_title() == "x (random weights)"
    w = pd.Series([0.5, 0.5], index=[0, 1])
    w.attrs["weights"] = RANDOM
    assert plot.layer_weights(w).get_title() == "layer weights (random weights)"


def _run(tmp_path, *extra):
    from s3viz.run import main

    out = tmp_path / "out"
    argv = ["--corpus", "synthetic:12", "--targets", "gender", "--folds", "2", "--split-by",
            "utterance", "--device", "cpu", "--measures", "probe", "cka", "--out", str(out),
            *extra]
    assert main(argv) == 0
    return out, json.loads((out / "run.json").read_text())


def test_run_json_records_the_weights_and_random_weights_runs(tmp_path):
    out, meta = _run(tmp_path, "--no-figures")
    assert meta["upstream"] == "tiny" and meta["weights"] == SHIPPED
    out, meta = _run(tmp_path, "--random-weights")
    assert meta["weights"] == RANDOM
    probes = pd.read_csv(out / "probes.csv")
    assert set(probes["target"]) == {"gender"}
    assert {"probe_curve.png", "cka.png"} <= set(meta["files"])


def test_run_figures_say_random_weights(tmp_path, monkeypatch):
    import s3viz.plot as plots

    titles = []
    for fn in ("probe_curve", "similarity"):
        real = getattr(plots, fn)

        def spy(df, *a, _real=real, **k):
            ax = _real(df, *a, **k)
            titles.append(_texts(ax))
            return ax

        monkeypatch.setattr(plots, fn, spy)
    _run(tmp_path, "--random-weights")
    assert len(titles) == 2
    assert all("tiny, random weights" in t for t in titles), titles
    titles.clear()
    _run(tmp_path)
    assert len(titles) == 2 and not any("random weights" in t for t in titles), titles


def test_random_weights_flag_is_refused_for_spectral(tmp_path, capsys):
    from s3viz.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--upstream", "spectral", "--random-weights", "--out", str(tmp_path)])
    assert "spectral has no learned weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--upstream", "tiny", "--pretrained", "--out", str(tmp_path)])
    assert parse_args(["--random-weights", "--out", str(tmp_path)]).random_weights


def test_demo_findings_state_each_models_weights():
    from s3viz.demo import _findings

    probe = pd.DataFrame([{"target": "phone", "method": m, "layer": 0, "upstream_layer": 0,
                           "accuracy": 0.5, "accuracy_std": 0.01, "chance": 0.1}
                          for m in ("tiny (trained)", "tiny (random weights)")])
    abx = pd.DataFrame({"model": ["tiny (random weights)"], "layer": [0], "upstream_layer": [0],
                        "abx_error": [0.4]})
    units = pd.DataFrame({"model": ["tiny (random weights)"], "layer": [0],
                          "upstream_layer": [0], "pnmi": [0.1]})
    lengths = pd.DataFrame()
    lengths.attrs["summary"] = "ok"
    text = _findings(probe, pd.Series([1.0], index=[0]), abx, units, lengths,
                     {"tiny (trained)": SHIPPED, "tiny (random weights)": RANDOM})
    assert text[:2] == [f"Weights, tiny (trained): {SHIPPED}.",
                        f"Weights, tiny (random weights): {RANDOM}."]
    assert any(t.startswith("ABX within speaker, tiny (random weights):") for t in text)

