"""Shared, read-only fixtures. Models and corpora are built once per session."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never touch the network, and corpora they synthesize go to a private cache.
os.environ.setdefault("S3VIZ_CACHE", os.path.join(os.path.dirname(__file__), "..", "build", "test-cache"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
