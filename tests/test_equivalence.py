"""Stored = streamed = sharded: every way s3viz computes the probes, CKA, units and ABX agrees.

The paths and the comparison live in ``_equivalence.py``; a new path is added there
and is then checked against the stored-frame reference for every case below.
"""

from __future__ import annotations

import pytest

from _contract_toys import ToyUpstream
from _equivalence import PATHS, assert_equivalent, tables

# 2 shared cores: torch's intra-op threads on the small ABX and k-means tensors fight
# other processes
pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_upstream_frame_level(tiny_upstream, small_corpus, tmp_path):
    """conv_layers predict the frame counts; frame-level CKA; split_by='auto' picks the
    speaker split for phones and the utterance split for the speaker target."""
    got = tables(tiny_upstream, small_corpus, ["phone", "speaker"], tmp_path=tmp_path)
    assert set(got) == set(PATHS)
    assert got["stored"]["probe"].attrs["split_by"] == {"phone": "speaker",
                                                      "speaker": "utterance"}
    assert_equivalent(got)


def test_toy_upstream_utterance_level(small_corpus, tmp_path):
    """No conv_layers (a counting pass first), a 640-sample layer, pooled CKA, and
    utterance-level speaker probes solved in the primal."""
    got = tables(ToyUpstream(mixed=True), small_corpus, ["phone", "speaker"], tmp_path=tmp_path,
                 cka_level="utterance", batch_size=3)
    assert sorted(got["stored"]["probe"]["layer"].unique()) == [0, 1, 2]
    assert_equivalent(got)


def test_the_tester_sees_a_difference(tiny_upstream, small_corpus, tmp_path):
    got = tables(tiny_upstream, small_corpus, "phone", tmp_path=tmp_path,
                 paths=("stored", "streamed"))
    got["streamed"]["probe"].loc[1, "accuracy"] += 1e-3
    with pytest.raises(AssertionError, match="path 'streamed' differs from 'stored'"):
        assert_equivalent(got)
    got["streamed"]["probe"].loc[1, "accuracy"] -= 1e-3
    got["streamed"]["cka"].iloc[0, 1] += 1e-4
    with pytest.raises(AssertionError, match="path 'streamed' differs"):
        assert_equivalent(got)
    got["streamed"]["cka"].iloc[0, 1] -= 1e-4
    got["streamed"]["units"].loc[0, "pnmi"] += 1e-4
    with pytest.raises(AssertionError, match="path 'streamed' differs"):
        assert_equivalent(got)
    got["streamed"]["units"].loc[0, "pnmi"] -= 1e-4
    got["streamed"]["abx"].loc[0, "abx_error"] += 1e-4
    with pytest.raises(AssertionError, match="path 'streamed' differs"):
        assert_equivalent(got)
