"""s3viz.notebook_threads: the thread count the notebooks start with."""

from __future__ import annotations

import os

import pytest
import torch

import s3viz


@pytest.fixture(autouse=True)
def _restore():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_environment_wins(monkeypatch, capsys):
    monkeypatch.setenv("S3VIZ_THREADS", "3")
    assert s3viz.notebook_threads() == 3 and torch.get_num_threads() == 3
    assert "S3VIZ_THREADS" in capsys.readouterr().out
    monkeypatch.setenv("S3VIZ_THREADS", "zero")
    with pytest.raises(ValueError, match="positive whole number"):
        s3viz.notebook_threads()


@pytest.mark.parametrize("cores, load, default, want", [
    (2, 0.0, 2, 1), (4, 0.2, 4, 1),       # small machines: one thread
    (16, 9.0, 16, 1),                     # a busy shared server: one thread
    (16, 2.4, 16, 13), (32, 1.0, 8, 8),   # a quiet big machine: the idle cores, at most torch's
])
def test_rule(monkeypatch, cores, load, default, want):
    monkeypatch.delenv("S3VIZ_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(torch, "get_num_threads", lambda: default)
    assert s3viz.notebook_threads(apply=False, verbose=False) == want
