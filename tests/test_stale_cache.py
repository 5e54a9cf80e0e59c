"""A disk cache is reused only while the upstream behaves as it did when it was written.

Hashing weights and code cannot see every change of behaviour; each variant below
kept the fingerprint (or its memoised part) and used to be served the old frames.
The cache keeps the upstream's outputs on a fixed probe input and compares them
before reuse (``s3viz.extraction.behaviour_probe``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import s3viz
from s3viz.data import synthetic_corpus
from s3viz.extraction import PROBE_TOLERANCE, probe_difference

pytestmark = pytest.mark.usefixtures("one_thread")

GAIN = 1.0  # a module-level global the toy's forward reads


def frames(wavs, n_frames):
    """(batch, n_frames, 4) summaries of 160-sample windows."""
    x = wavs[:, : n_frames * 160, 0].reshape(wavs.shape[0], n_frames, 160)
    return torch.stack([x.mean(-1), x.std(-1), x.abs().max(-1).values, x[..., 0]], -1)


class Toy(nn.Module):
    name = "toy"

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.extra = {"bias": torch.zeros(4)}  # a tensor in a dict: not in the state dict
        self.table = np.ones(4, dtype=np.float32)  # a numpy attribute
        self.offset = torch.zeros(4)  # a plain tensor attribute, not a buffer

    num_layer = 2
    hidden_sizes = [4, 4]
    downsample_rates = [160, 160]

    def forward(self, wavs, wavs_len, scale=1.0):
        n = int(wavs.shape[1] // 160)
        h0 = frames(wavs, n) * GAIN * scale + self.offset + self.extra["bias"]
        h1 = self.proj(h0) * torch.as_tensor(self.table)
        lens = wavs_len // 160
        return [h0, h1], [lens, lens]


def _run(up, corpus, cache):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        store = s3viz.extract(up, corpus, cache_dir=cache, progress=False)
    stale = [w for w in seen if "behaves differently" in str(w.message)]
    return store.layer(1)[0].clone(), stale


def _change(kind, up):
    global GAIN
    if kind == "instance forward":
        old = up.forward
        up.forward = lambda w, n: ([h * 2 for h in old(w, n)[0]], old(w, n)[1])
    elif kind == "class method":
        old = Toy.forward
        Toy.forward = lambda self, w, n, scale=1.0: old(self, w, n, scale=3.0)
        return lambda: setattr(Toy, "forward", old)
    elif kind == "tensor attribute":
        up.offset += 1.0
    elif kind == "dict of tensors":
        up.extra["bias"] += 1.0
    elif kind == "numpy attribute":
        up.table[:] = 2.0
    elif kind == "global":
        GAIN = 2.0
        return lambda: globals().__setitem__("GAIN", 1.0)
    elif kind == "forward hook":
        handle = up.proj.register_forward_hook(lambda m, i, o: o + 1.0)
        return handle.remove
    elif kind == "default argument":
        defaults = Toy.forward.__defaults__
        Toy.forward.__defaults__ = (5.0,)
        return lambda: setattr(Toy.forward, "__defaults__", defaults)
    return lambda: None


KINDS = ["instance forward", "class method", "tensor attribute", "dict of tensors",
         "numpy attribute", "global", "forward hook", "default argument"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_behaviour_is_not_served_from_the_cache(tmp_path, kind):
    corpus = synthetic_corpus(3, seed=0)
    up = Toy()
    before, stale = _run(up, corpus, tmp_path)
    assert not stale
    undo = _change(kind, up)
    try:
        expected = s3viz.extract(up, corpus, progress=False).layer(1)[0]  # in memory: truth
        after, stale = _run(up, corpus, tmp_path)
    finally:
        undo()
    assert not torch.allclose(before, expected), "the change must change the frames"
    assert torch.allclose(after, expected), f"{kind}: the cache served the old frames"
    # caught by the fingerprint (a new folder) or by the behaviour probe (one warning)
    folders = len(list(tmp_path.glob("*/manifest.json")))
    assert (folders == 2 and not stale) or (folders == 1 and len(stale) == 1), (folders, stale)


def test_an_unchanged_upstream_reuses_its_cache_without_a_warning(tmp_path):
    corpus = synthetic_corpus(3, seed=0)
    up = Toy()
    first, _ = _run(up, corpus, tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("c*.pt")}
    again, stale = _run(up, corpus, tmp_path)
    assert not stale and torch.equal(first, again)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("c*.pt")} == mtimes  # not rewritten


def test_the_tolerance_depends_on_device_and_precision():
    a = {"frames": [torch.ones(3, 2)], "lengths": [[3]], "device": "cpu", "amp": False}
    b = dict(a, frames=[torch.ones(3, 2) * (1 + 1e-3)])
    assert probe_difference(a, b) == pytest.approx((1e-3, PROBE_TOLERANCE["same"]), rel=1e-3)
    assert probe_difference(a, dict(b, device="cuda"))[1] == PROBE_TOLERANCE["device"]
    assert probe_difference(a, dict(b, amp=True))[1] == PROBE_TOLERANCE["amp"]
    assert probe_difference(a, dict(b, lengths=[[2]]))[0] == float("inf")


def test_a_non_persistent_buffer_changes_the_fingerprint(tmp_path):
    """A position table kept out of the state dict (persistent=False), changed past the
    probe input's length: the probe cannot see it, the fingerprint must."""

    class Positional(Toy):
        def __init__(self):
            super().__init__()
            self.register_buffer("pos", torch.zeros(2000, 4), persistent=False)

        def forward(self, wavs, wavs_len, scale=1.0):
            hs, lens = super().forward(wavs, wavs_len, scale)
            return [h + self.pos[: h.shape[1]] for h in hs], lens

    corpus = synthetic_corpus(3, seed=0)
    up = Positional()
    _run(up, corpus, tmp_path)
    up.pos[120:] += 1.0  # frames past 1.2 s: beyond the probe input
    after, _ = _run(up, corpus, tmp_path)
    assert torch.allclose(after, s3viz.extract(up, corpus, progress=False).layer(1)[0])
    assert len(list(tmp_path.glob("*/manifest.json"))) == 2


def test_dates_in_labels_read_back_as_dates_not_numbers(tmp_path):
    corpus = synthetic_corpus(3, seed=0)
    for i, u in enumerate(corpus):
        u.labels["recorded"] = [np.datetime64("2020-01-02T00:00:00"), "unknown",
                                np.datetime64("2021-03-04T00:00:00")][i]
    store = s3viz.extract(Toy(), corpus, cache_dir=tmp_path, progress=False)
    back = s3viz.LayerStore.open(store.path).labels["recorded"].tolist()
    assert back == ["2020-01-02T00:00:00", "unknown", "2021-03-04T00:00:00"]
