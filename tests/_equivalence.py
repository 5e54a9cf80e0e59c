"""One reference, every path: "stored = streamed = sharded" for every measure.

s3viz computes each measure's table several ways. :func:`tables` runs the paths
asked for on one upstream and corpus; :func:`assert_equivalent` compares each
with the reference path, ``"stored"`` (as torchmetrics' MetricTester runs every
implementation against one reference):

- ``stored``: ``extract`` in memory, then the public functions ``probe_layers``,
  ``layer_similarity``, ``unit_quality`` and ``abx_layers``;
- ``stored_disk``: the same on ``extract(cache_dir=)``, reopened with ``LayerStore.open``;
- ``streamed``: ``stream_analysis``, no frame kept;
- ``streamed_cached``: ``stream_analysis(cache_dir=)`` (extracts once, reads back);
- ``sharded_streamed``: ``stream_analysis`` on two shards (threads standing in for
  ranks, their state summed);
- ``sharded_stored``: each shard extracts its own store; ``run_measures`` on a
  ``StoreSource`` of it, state summed;
- ``sharded_public``: each shard's store through the public functions' sharding
  arguments (``probe_layers(sharding=)``, ``layer_similarity(sharding=)``).

A measure of the engine (``s3viz.measures``) is added to :data:`MEASURES` with the
public function that computes it from a store; every path then checks it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from _sharding import ThreadSum, run_threads

PATHS = ("stored", "stored_disk", "streamed", "streamed_cached", "sharded_streamed",
         "sharded_stored", "sharded_public")

UNITS = dict(k=[3, 5], max_frames=200, seed=0)
ABX_KW = dict(max_items=2, seed=0)  # the seeded item draw is on every path too


def _measures(target, split_by, folds, cka_level):
    from s3viz.measures import ABX, LayerCKA, RidgeProbe, UnitQuality

    return [RidgeProbe(target, folds=folds, split_by=split_by), LayerCKA(cka_level),
            UnitQuality(**UNITS), ABX(**ABX_KW)]


def _public(store, target, split_by, folds, cka_level, sharding=None) -> dict:
    """The tables from the public functions on a store (or one shard's store)."""
    import s3viz

    out = {"probe": s3viz.probe_layers(store, target, folds=folds, split_by=split_by,
                                       device="cpu", sharding=sharding),
           "cka": s3viz.layer_similarity(store, level=cka_level, device="cpu",
                                         method=s3viz.CKAOptions(dtype=torch.float64),
                                         sharding=sharding)}
    if sharding is None:  # unit_quality's and abx_layers' sharded form is the engine's
        out["units"] = s3viz.unit_quality(store, device="cpu", **UNITS)
        out["abx"] = s3viz.abx_layers(store, device="cpu", **ABX_KW)
    return out


def _shards(corpus):
    from s3viz.distributed import shard_indices

    weights = [u.num_samples for u in corpus]
    return [shard_indices(corpus.ids, r, 2, utterance_weights=weights) for r in range(2)]


def tables(upstream, corpus, target, *, tmp_path, split_by: str = "auto", folds: int = 3,
           cka_level: str = "frame", batch_size: int = 4, paths=PATHS) -> dict[str, dict]:
    """``{path: {measure name: table}}``: the ridge probes of ``target`` (one name or a
    list), the CKA, the unit quality and the ABX, by every path."""
    import s3viz
    from s3viz.distributed import Sharding
    from s3viz.measures import StoreSource, run_measures
    from s3viz.measures._engine import CorpusMeta
    from s3viz.stream import stream_analysis

    ex = dict(batch_size=batch_size, device="cpu", progress=False)
    measures = _measures(target, split_by, folds, cka_level)
    st = dict(batch_size=batch_size, device="cpu")
    kw = (target, split_by, folds, cka_level)
    out = {}
    for path in paths:
        if path == "stored":
            out[path] = _public(s3viz.extract(upstream, corpus, **ex), *kw)
        elif path == "stored_disk":
            first = s3viz.extract(upstream, corpus, cache_dir=tmp_path / "disk", **ex)
            out[path] = _public(s3viz.LayerStore.open(first.path), *kw)
        elif path == "streamed":
            out[path] = stream_analysis(upstream, corpus, measures, **st).tables
        elif path == "streamed_cached":
            res = stream_analysis(upstream, corpus, measures, cache_dir=tmp_path / "stream",
                                  **st)
            assert res.passes == 0 and res.store.path is not None
            out[path] = res.tables
        elif path in ("sharded_streamed", "sharded_stored", "sharded_public"):
            shards, summer = _shards(corpus), ThreadSum(2)
            assert sorted(shards[0] + shards[1]) == list(range(len(corpus)))

            def work(r, path=path, shards=shards, summer=summer):
                reduce = summer.reducer(r)
                if path == "sharded_streamed":
                    res = stream_analysis(upstream, corpus, measures, shard=shards[r],
                                          reduce=reduce, **st)
                    assert res.shard == shards[r]
                    return res.tables
                store = s3viz.extract(upstream, corpus[shards[r]], **ex)
                if path == "sharded_stored":
                    source = StoreSource(store, CorpusMeta(corpus), shards[r])
                    return run_measures(measures, source, reduce=reduce)
                return _public(store, *kw,
                               sharding=Sharding.of(corpus, store, shards[r], reduce=reduce))

            got, errors = run_threads(2, work)
            assert errors == [None, None], errors
            # every rank gets the whole corpus's tables
            assert_equivalent({"rank 0": got[0], "rank 1": got[1]}, reference="rank 0")
            out[path] = got[0]
        else:
            raise ValueError(f"unknown path {path!r}; paths are {PATHS}")
    return out


def assert_equivalent(results: dict[str, dict], reference: str = "stored",
                      rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Every path's tables equal the reference's: same rows, columns and attrs that matter.

    Probe, unit and ABX tables are compared whole (accuracies, F1, chance, counts,
    the chosen lambda and the split; purities, PNMI and inertia; ABX errors and
    item, cell and triplet counts); CKA matrices to ``rtol``/``atol`` (float sums
    in another order), with the same frame count and level. Every measure the
    reference has must be there (only ``sharded_public`` lacks the units and ABX).
    """
    ref = results[reference]
    for name, got in results.items():
        if name == reference:
            continue
        try:
            # sharded_public has no units or ABX table (they shard through the engine)
            assert set(got) == set(ref) or set(got) ^ set(ref) == {"units", "abx"}, sorted(got)
            pd.testing.assert_frame_equal(got["probe"], ref["probe"], check_exact=False,
                                          rtol=rtol, atol=atol)
            assert got["probe"].attrs["split_by"] == ref["probe"].attrs["split_by"]
            assert got["probe"].attrs["folds"] == ref["probe"].attrs["folds"]
            np.testing.assert_allclose(got["cka"].to_numpy(), ref["cka"].to_numpy(),
                                       rtol=rtol, atol=atol)
            assert list(got["cka"].index) == list(ref["cka"].index)
            for key in ("num_frames", "level", "upstream_layers"):
                assert got["cka"].attrs[key] == ref["cka"].attrs[key], key
            for key in ("units", "abx"):
                if key in got and key in ref:
                    pd.testing.assert_frame_equal(got[key], ref[key], check_exact=False,
                                                  rtol=rtol, atol=atol)
            for table in got.values():
                assert table.attrs["weights"] == ref["probe"].attrs["weights"]
        except AssertionError as e:
            raise AssertionError(f"path {name!r} differs from {reference!r}: {e}") from e
