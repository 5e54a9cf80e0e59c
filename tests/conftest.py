"""Shared, read-only fixtures. Models and corpora are built once per session.

- ``tiny_upstream``: the tiny upstream with random weights
  (``get_upstream("tiny", pretrained=False)``; its ``weights`` says so);
- ``small_corpus``: 12 synthetic utterances of 8 speakers, with phone alignments;
- ``tiny_store``: ``extract(tiny_upstream, small_corpus)`` in memory;
- ``one_thread``: torch on one intra-op thread for a module (``pytestmark =
  pytest.mark.usefixtures("one_thread")``);
- ``free_port``: ``free_port()`` gives a free local TCP port.

Session fixtures are shared by every test that asks: use them, never change them
(a test that trains, moves or edits a model or store builds its own).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from hypothesis import settings

# Property tests: `make test` runs the same examples every time (derandomized), so a
# run's result depends on the code alone; S3VIZ_HYPOTHESIS=explore searches afresh
# with ten times the examples (docs/testing.md), to look for new failing cases.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000, print_blob=True)
settings.load_profile(os.environ.get("S3VIZ_HYPOTHESIS", "repeatable"))

# Tests never touch the network, and corpora they synthesize go to a private cache.
os.environ.setdefault("S3VIZ_CACHE", os.path.join(os.path.dirname(__file__), "..", "build", "test-cache"))
# Names mean pretrained weights, downloaded on first use: offline, a model that is not
# cached fails at once instead of downloading (tests build random weights with
# pretrained=False; tests/test_hub.py clears this in the subprocesses it starts).
os.environ.setdefault("S3VIZ_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_upstream():
    from s3viz.upstreams import get_upstream

    return get_upstream("tiny", pretrained=False)


@pytest.fixture(scope="session")
def small_corpus():
    from s3viz.data import synthetic_corpus

    return synthetic_corpus(n_utterances=12, seed=0)


@pytest.fixture(scope="session")
def tiny_store(tiny_upstream, small_corpus):
    import s3viz

    return s3viz.extract(tiny_upstream, small_corpus, batch_size=4, device="cpu", progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: torch's intra-op threads on tiny tensors fight other processes
    (measured 20x slower under load). Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a free local TCP port (a function, so module fixtures can ask too)."""
    return _free_port