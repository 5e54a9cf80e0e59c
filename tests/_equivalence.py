"""One reference, every path: "streamed = stored = sharded" for the ridge probes and CKA.

s3viz computes the same probe and CKA tables five ways. :func:`tables` runs the
ones asked for on one upstream and corpus; :func:`assert_equivalent` compares
each with the reference path, ``"stored"`` (as torchmetrics' MetricTester runs
every implementation against one reference):

- ``stored``: ``extract`` in memory, then ``probe_layers`` and ``layer_similarity``;
- ``stored_disk``: ``extract(cache_dir=)``, reopened with ``LayerStore.open``;
- ``streamed``: ``stream_analysis``, no frame kept;
- ``streamed_cached``: ``stream_analysis(cache_dir=)`` (extracts once, reads back);
- ``sharded_streamed``: ``stream_analysis`` on two shards (threads standing in for
  ranks, their statistics summed);
- ``sharded_stored``: each shard extracts its own store; ``probe_layers(sharding=)`` and
  ``layer_similarity(sharding=)`` on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from _sharding import ThreadSum, run_threads

PATHS = ("stored", "stored_disk", "streamed", "streamed_cached", "sharded_streamed",
         "sharded_stored")


@dataclass
class Tables:
    probes: pd.DataFrame
    cka: pd.DataFrame


def _stored(store, target, split_by, folds, cka_level, sharding=None) -> Tables:
    import s3viz

    probes = s3viz.probe_layers(store, target, folds=folds, split_by=split_by, device="cpu",
                                sharding=sharding)
    cka = s3viz.layer_similarity(store, level=cka_level, device="cpu", dtype=torch.float64,
                                 sharding=sharding)
    return Tables(probes, cka)


def _shards(corpus):
    from s3viz.distributed import shard_indices

    weights = [u.num_samples for u in corpus]
    return [shard_indices(corpus.ids, r, 2, utterance_weights=weights) for r in range(2)]


def tables(upstream, corpus, target, *, tmp_path, split_by: str = "auto", folds: int = 3,
           cka_level: str = "frame", batch_size: int = 4, paths=PATHS) -> dict[str, Tables]:
    """The ridge probe table of ``target`` (one name or a list) and the CKA, by every path."""
    import s3viz
    from s3viz.distributed import Sharding
    from s3viz.stream import stream_analysis

    ex = dict(batch_size=batch_size, device="cpu", progress=False)
    st = dict(target=target, folds=folds, split_by=split_by, cka=True,
              cka_level=cka_level, batch_size=batch_size, device="cpu")
    out = {}
    for path in paths:
        if path == "stored":
            out[path] = _stored(s3viz.extract(upstream, corpus, **ex), target, split_by, folds,
                                cka_level)
        elif path == "stored_disk":
            first = s3viz.extract(upstream, corpus, cache_dir=tmp_path / "disk", **ex)
            out[path] = _stored(s3viz.LayerStore.open(first.path), target, split_by, folds,
                                cka_level)
        elif path == "streamed":
            res = stream_analysis(upstream, corpus, **st)
            out[path] = Tables(res.probes, res.cka)
        elif path == "streamed_cached":
            res = stream_analysis(upstream, corpus, cache_dir=tmp_path / "stream", **st)
            assert res.passes == 0 and res.store.path is not None
            out[path] = Tables(res.probes, res.cka)
        elif path in ("sharded_streamed", "sharded_stored"):
            shards, summer = _shards(corpus), ThreadSum(2)
            assert sorted(shards[0] + shards[1]) == list(range(len(corpus)))

            def work(r, path=path, shards=shards, summer=summer):
                reduce = summer.reducer(r)
                if path == "sharded_streamed":
                    res = stream_analysis(upstream, corpus, shard=shards[r], reduce=reduce, **st)
                    assert res.shard == shards[r]
                    return Tables(res.probes, res.cka)
                store = s3viz.extract(upstream, corpus[shards[r]], **ex)
                return _stored(store, target, split_by, folds, cka_level,
                               sharding=Sharding.of(corpus, store, shards[r], reduce=reduce))

            got, errors = run_threads(2, work)
            assert errors == [None, None], errors
            # every rank gets the whole corpus's tables
            assert_equivalent({"rank 0": got[0], "rank 1": got[1]}, reference="rank 0")
            out[path] = got[0]
        else:
            raise ValueError(f"unknown path {path!r}; paths are {PATHS}")
    return out


def assert_equivalent(results: dict[str, Tables], reference: str = "stored",
                      rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Every path's tables equal the reference's: same rows, columns and attrs that matter.

    Probe tables are compared whole (accuracies, F1, chance, counts, the chosen
    lambda and the split); CKA matrices to ``rtol``/``atol`` (float sums in another
    order), with the same frame count and level.
    """
    ref = results[reference]
    for name, got in results.items():
        if name == reference:
            continue
        try:
            pd.testing.assert_frame_equal(got.probes, ref.probes, check_exact=False, rtol=rtol,
                                          atol=atol)
            assert got.probes.attrs["split_by"] == ref.probes.attrs["split_by"]
            assert got.probes.attrs["folds"] == ref.probes.attrs["folds"]
            np.testing.assert_allclose(got.cka.to_numpy(), ref.cka.to_numpy(), rtol=rtol,
                                       atol=atol)
            assert list(got.cka.index) == list(ref.cka.index)
            for key in ("num_frames", "level", "upstream_layers"):
                assert got.cka.attrs[key] == ref.cka.attrs[key], key
        except AssertionError as e:
            raise AssertionError(f"path {name!r} differs from {reference!r}: {e}") from e
