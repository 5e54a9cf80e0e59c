"""The "Adding a measure" example of docs/measures.md, run as the docs show it.

The snippet is read out of the docs and executed, so the docs' code is the code
tested: stored, streamed and on two thread shards it gives one table, and that
table is the mean frame norm computed directly from the store.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _sharding import ThreadSum, run_threads

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "measures.md"


def _example_class():
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Adding a measure\n", 1)
    assert len(section) == 2, "docs/measures.md lost its '## Adding a measure' section"
    blocks = re.findall(r"```python\n(.*?)```", section[1], re.S)
    assert len(blocks) == 1, f"expected one python block in the section, got {len(blocks)}"
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["MeanFrameNorm"]


def test_the_docs_example_measure_is_stored_streamed_and_sharded_alike(
        tiny_upstream, small_corpus, tiny_store):
    from s3viz.distributed import shard_indices
    from s3viz.measures import StoreSource, run_measures
    from s3viz.stream import stream_analysis

    cls = _example_class()
    stored = run_measures([cls()], StoreSource(tiny_store))["frame_norm"]
    streamed = stream_analysis(tiny_upstream, small_corpus, [cls()], batch_size=4,
                               device="cpu")["frame_norm"]
    shards = [shard_indices(small_corpus.ids, r, 2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(len(small_corpus)))
    assert all(shards)  # two real shards, each with utterances
    summer = ThreadSum(2)

    def work(r):
        return stream_analysis(tiny_upstream, small_corpus, [cls()], shard=shards[r],
                               reduce=summer.reducer(r), batch_size=4,
                               device="cpu")["frame_norm"]

    sharded, errors = run_threads(2, work)
    assert errors == [None, None], errors

    # directly from the store: every frame of every layer, in float64
    want = []
    for s in range(tiny_store.num_layer):
        x, _ = tiny_store.layer(s, dtype=torch.float64)
        want.append((s, tiny_store.layer_ids[s], float(x.norm(dim=1).mean()), x.shape[0]))
    direct = pd.DataFrame(want, columns=["layer", "upstream_layer", "mean_norm", "n_frames"])
    assert len(direct) == tiny_store.num_layer > 1
    assert (direct["mean_norm"] > 0).all()

    for name, got in [("stored", stored), ("streamed", streamed), ("rank 0", sharded[0]),
                      ("rank 1", sharded[1])]:
        assert list(got.columns) == list(direct.columns), name
        np.testing.assert_array_equal(got["layer"], direct["layer"], err_msg=name)
        np.testing.assert_array_equal(got["upstream_layer"], direct["upstream_layer"],
                                      err_msg=name)
        np.testing.assert_array_equal(got["n_frames"], direct["n_frames"], err_msg=name)
        # float sums in another order; a shard's frames come from other float32 batches
        np.testing.assert_allclose(got["mean_norm"], direct["mean_norm"], rtol=1e-6,
                                   err_msg=name)
    # each shard alone sees fewer frames: the sum over ranks is what makes them equal
    alone = stream_analysis(tiny_upstream, small_corpus[shards[0]], [cls()], batch_size=4,
                            device="cpu")["frame_norm"]
    assert (alone["n_frames"] < direct["n_frames"]).all()
