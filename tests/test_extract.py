"""s3viz.extract and LayerStore: round trips, fingerprints, resume after SIGKILL, corruption.

Everything here runs a tiny deterministic toy upstream (3 layers, mixed rates
160/320, ceil lengths) on a few noise utterances, so the file takes seconds.
Running this file as a script is the child process of the SIGKILL test.
"""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from s3viz.data._corpus import Corpus, Utterance
from s3viz.extraction import (
    CacheCorruptionError,
    LayerStore,
    _padding,
    bucket_plan,
    extract,
)
from s3viz.interface import AbsUpstream

RTOL, ATOL = 1e-5, 1e-6
PROBE = 1  # a cached extraction runs the upstream once on its behaviour probe input


class ToyUpstream(AbsUpstream):
    """3 hidden states: rate 160 (hidden 8), rate 320 (hidden 6), rate 320 (hidden 6).

    Frame ``i`` of layer 0 is a linear map of samples ``[160 i, 160 i + 160)``;
    layer 1 maps pairs of layer-0 frames; layer 2 is a residual block on layer 1.
    Frames past each utterance's length are zeroed, so results do not depend on
    batch padding. Lengths follow the ``ceil`` convention.
    """

    # instrumentation, not part of what it computes: left out of the cache fingerprint
    s3viz_fingerprint_ignore = ("calls", "seen_training", "delay")

    def __init__(self, seed: int = 0, delay: float = 0.0):
        super().__init__()
        self.proj0 = nn.Linear(160, 8)
        self.proj1 = nn.Linear(16, 6)
        self.proj2 = nn.Linear(6, 6)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.delay = delay
        self.calls = 0
        self.seen_training = []
        self.name = "toy"

    @property
    def num_layer(self):
        return 3

    @property
    def hidden_sizes(self):
        return [8, 6, 6]

    @property
    def downsample_rates(self):
        return [160, 320, 320]

    @property
    def receptive_fields(self):
        return [160, 320, 320]

    def forward(self, wavs, wavs_len):
        self.calls += 1
        self.seen_training.append(self.training)
        if self.delay:
            time.sleep(self.delay)
        if wavs.dim() == 3:
            wavs = wavs.squeeze(-1)
        batch, seq_len = wavs.shape
        t0 = -(-seq_len // 160)
        x0 = nn.functional.pad(wavs, (0, t0 * 160 - seq_len)).reshape(batch, t0, 160)
        len0 = (wavs_len - 1) // 160 + 1
        h0 = self.proj0(x0) * (torch.arange(t0, device=wavs.device) < len0[:, None])[..., None]
        t1 = -(-t0 // 2)
        x1 = nn.functional.pad(h0, (0, 0, 0, 2 * t1 - t0)).reshape(batch, t1, 16)
        len1 = (wavs_len - 1) // 320 + 1
        mask1 = (torch.arange(t1, device=wavs.device) < len1[:, None])[..., None]
        h1 = torch.tanh(self.proj1(x1)) * mask1
        h2 = (torch.tanh(self.proj2(h1)) + h1) * mask1
        return [h0, h1, h2], [len0, len1, len1.clone()]


def make_corpus(n: int = 10, seed: int = 0, min_len: int = 700, max_len: int = 9000) -> Corpus:
    rng = np.random.default_rng(seed)
    utts = []
    for i in range(n):
        length = int(rng.integers(min_len, max_len))
        wav = (rng.standard_normal(length) * 0.1).astype(np.float32)
        bounds = [0, *sorted(rng.choice(np.arange(1, length), size=3, replace=False).tolist()), length]
        phones = pd.DataFrame({
            "phone": ["a", "b", "c", "d"], "word": ["w1", "w1", "w2", "w2"],
            "start": bounds[:-1], "end": bounds[1:],
        })
        utts.append(Utterance(id=f"u{i:02d}", wav=wav, text=f"text {i}", speaker=f"s{i % 3}",
                              phones=phones, labels={"group": i % 2}))
    return Corpus(utts, name="toy")


def reference(upstream, corpus):
    """The upstream run on each utterance alone: ``ref[i][l]`` is ``(T_il, H_l)``."""
    out = []
    with torch.no_grad():
        for u in corpus:
            wav = torch.from_numpy(u.wav)[None, :, None]
            all_hs, all_hs_len = upstream(wav, torch.tensor([u.num_samples]))
            out.append([hs[0, : int(n[0])] for hs, n in zip(all_hs, all_hs_len, strict=True)])
    return out


def extract_quiet(upstream, corpus, **kw):
    kw.setdefault("progress", False)
    return extract(upstream, corpus, **kw)


def all_frames(store):
    return [store.utterance(i) for i in range(len(store))]


def assert_same_bytes(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        for s in range(a.num_layer):
            x, y = a.utterance(i)[s], b.utterance(i)[s]
            assert x.shape == y.shape
            assert torch.equal(x, y), (i, s)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def ref(corpus):
    return reference(ToyUpstream(), corpus)


# ----------------------------------------------------------------------------- round trip


def test_round_trip_memory_disk_and_open(corpus, ref, tmp_path):
    up = ToyUpstream()
    mem = extract_quiet(up, corpus, batch_size=3)
    disk = extract_quiet(up, corpus, batch_size=3, cache_dir=tmp_path)
    assert mem.path is None and disk.path.parent == tmp_path
    for store in (mem, disk):
        assert len(store) == len(corpus) and store.num_layer == store.num_layers == 3
        assert store.hidden_sizes == [8, 6, 6] and store.downsample_rates == [160, 320, 320]
        assert store.receptive_fields == [160, 320, 320] and store.layer_ids == [0, 1, 2]
        assert store.ids == corpus.ids and store.name == "toy"
        pd.testing.assert_frame_equal(store.labels, corpus.labels)
        for i in range(len(corpus)):
            got = store.utterance(i)
            for s in range(3):
                assert got[s].dtype == torch.float32
                torch.testing.assert_close(got[s], ref[i][s], rtol=RTOL, atol=ATOL)
        for s in range(3):
            np.testing.assert_array_equal(store.lengths(s), [r[s].shape[0] for r in ref])
    assert mem.fingerprint == disk.fingerprint
    assert_same_bytes(mem, disk)
    reopened = LayerStore.open(tmp_path)  # the cache_dir holding one extraction
    assert_same_bytes(mem, reopened)
    pd.testing.assert_frame_equal(reopened.labels, corpus.labels)
    for got, want in zip(reopened.phones, (u.phones for u in corpus), strict=True):
        pd.testing.assert_frame_equal(got, want)
    assert reopened.fingerprint == mem.fingerprint and reopened.layer_ids == [0, 1, 2]
    assert "toy" in repr(reopened) and "on disk" in repr(reopened) and "in memory" in repr(mem)


def test_iter_chunks_covers_every_utterance_once(corpus, ref, tmp_path):
    for store in (extract_quiet(ToyUpstream(), corpus, batch_size=4),
                  extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)):
        seen = []
        for pos, frames, lens in store.iter_chunks(dtype=torch.float64):
            assert lens.shape == (len(pos), store.num_layer)
            for s, f in enumerate(frames):
                assert f.dtype == torch.float64
                for part, i in zip(torch.split(f, lens[:, s].tolist()), pos, strict=True):
                    torch.testing.assert_close(part.float(), ref[i][s], rtol=RTOL, atol=ATOL)
            seen += pos.tolist()
        assert sorted(seen) == list(range(len(corpus)))


def test_layer_iter_layer_pooled_match_naive(corpus, ref, tmp_path):
    for store in (extract_quiet(ToyUpstream(), corpus, batch_size=4),
                  extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)):
        for s in range(3):
            frames, idx = store.layer(s)
            want = torch.cat([r[s] for r in ref])
            torch.testing.assert_close(frames, want, rtol=RTOL, atol=ATOL)
            np.testing.assert_array_equal(
                idx.numpy(), np.repeat(np.arange(len(ref)), [r[s].shape[0] for r in ref]))
            sel = [7, 2, 5]  # frames follow the order asked; utt_index holds positions
            f_sel, i_sel = store.layer(s, utterances=sel, dtype=torch.float64)
            assert f_sel.dtype == torch.float64
            torch.testing.assert_close(f_sel.float(), torch.cat([ref[i][s] for i in sel]),
                                       rtol=RTOL, atol=ATOL)
            assert i_sel.unique_consecutive().tolist() == sel
            pieces = list(store.iter_layer(s, chunk_frames=20))
            assert len(pieces) > 1
            assert all(p[0].shape[0] <= max(20, max(store.lengths(s))) for p in pieces)
            assert torch.equal(torch.cat([p[0] for p in pieces]), frames)
            assert torch.equal(torch.cat([p[1] for p in pieces]), idx)
            pooled = store.pooled(s, utterances=sel)
            torch.testing.assert_close(pooled, torch.stack([ref[i][s].mean(0) for i in sel]),
                                       rtol=RTOL, atol=ATOL)
            mask = np.zeros(len(store), dtype=bool)
            mask[[2, 5]] = True
            assert store.layer(s, utterances=mask)[1].unique().tolist() == [2, 5]
        # frames are ordinary tensors (not inference tensors): autograd works on them
        w = torch.randn(8, 2, requires_grad=True)
        (store.layer(0)[0] @ w).sum().backward()
        assert w.grad is not None


def test_modes_restored_inputs_on_upstream_device(corpus):
    up = ToyUpstream()
    up.train()
    up.proj1.eval()
    extract_quiet(up, corpus, batch_size=5)
    assert up.seen_training and not any(up.seen_training)  # eval during extraction
    assert up.training and up.proj0.training and not up.proj1.training  # flags restored
    assert all(p.device.type == "cpu" for p in up.parameters())
    extract_quiet(up, corpus[:2], device="cpu")
    assert up.training


# ----------------------------------------------------------------------------- batching


def test_bucket_plan_deterministic_and_limits():
    rng = np.random.default_rng(1)
    lens = rng.integers(1_600, 160_000, size=200)
    plan = bucket_plan(lens, batch_size=8, max_batch_seconds=30)
    assert plan == bucket_plan(lens.copy(), batch_size=8, max_batch_seconds=30)
    assert sorted(i for b in plan for i in b) == list(range(200))
    for b in plan:
        assert len(b) <= 8
        assert len(b) == 1 or len(b) * lens[b].max() <= 30 * 16000
    firsts = [lens[b[0]] for b in plan]
    assert firsts == sorted(firsts, reverse=True)  # longest batch first (OOM shows early)
    real, padded_sorted = _padding(plan, lens)
    _, padded_unsorted = _padding(bucket_plan(lens, 8, None, sort=False), lens)
    _, padded_sorted_same = _padding(bucket_plan(lens, 8, None), lens)
    assert real == lens.sum()
    assert padded_sorted_same < 0.8 * padded_unsorted
    assert padded_sorted_same / real < 1.1
    # an utterance longer than max_batch_seconds gets its own batch
    assert bucket_plan([16000 * 100, 10, 10], max_batch_seconds=10) == [[0], [1, 2]]


def test_bucketing_reduces_padding_seen_by_upstream(corpus):
    seen = []

    class Spy(ToyUpstream):
        def forward(self, wavs, wavs_len):
            seen.append((wavs.shape[0] * wavs.shape[1], int(wavs_len.sum())))
            return super().forward(wavs, wavs_len)

    extract_quiet(Spy(), corpus, batch_size=3)
    padded, real = map(sum, zip(*seen, strict=True))
    unsorted = _padding(bucket_plan([u.num_samples for u in corpus], 3, None, sort=False),
                        [u.num_samples for u in corpus])
    assert real == sum(u.num_samples for u in corpus)
    assert padded < unsorted[1]


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_changes_and_no_stale_reuse(corpus, tmp_path):
    base = extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)
    again_up = ToyUpstream()
    again = extract_quiet(again_up, corpus, batch_size=4, cache_dir=tmp_path)
    # reused: only the behaviour probe ran (s3viz.extraction.behaviour_probe)
    assert again.path == base.path and again_up.calls == PROBE
    assert_same_bytes(base, again)

    changed = ToyUpstream()
    with torch.no_grad():
        changed.proj2.weight[0, 0] += 1.0
    store = extract_quiet(changed, corpus, batch_size=4, cache_dir=tmp_path)
    assert store.path != base.path and changed.calls > 0
    assert not torch.equal(store.utterance(0)[2], base.utterance(0)[2])
    torch.testing.assert_close(store.utterance(0)[2], reference(changed, corpus[:1])[0][2],
                               rtol=RTOL, atol=ATOL)

    utts = list(corpus)
    wav = utts[3].wav.copy()
    wav[100] += 0.5
    utts[3] = Utterance(id=utts[3].id, wav=wav, text=utts[3].text, speaker=utts[3].speaker,
                        phones=utts[3].phones, labels=utts[3].labels)
    other = extract_quiet(ToyUpstream(), Corpus(utts), batch_size=4, cache_dir=tmp_path)
    assert other.path not in (base.path, store.path)
    assert not torch.equal(other.utterance(3)[0], base.utterance(3)[0])

    half = extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path,
                         store_dtype=torch.float16)
    sub = extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path, upstream_layers=[1])
    folders = {base.path, store.path, other.path, half.path, sub.path}
    assert len(folders) == 5
    assert len({s.fingerprint for s in (base, store, other, half, sub)}) == 5
    with pytest.raises(ValueError, match="holds 5 extractions"):
        LayerStore.open(tmp_path)
    assert LayerStore.open(half.path).store_dtype == torch.float16
    # a different batch size does not change content: the finished cache is reused
    up = ToyUpstream()
    assert extract_quiet(up, corpus, batch_size=2, cache_dir=tmp_path).path == base.path
    assert up.calls == PROBE


# ----------------------------------------------------------------------------- resume


def _records(cache: Path):
    return sorted(cache.glob("*/chunks/c?????.json"))


@pytest.mark.slow
def test_resume_after_sigkill_is_identical(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    n, bs = 16, 2  # 8 chunks
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(killed), str(n), str(bs), "0.25"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while len(_records(killed)) < 2:
            if child.poll() is not None:
                pytest.fail(f"child exited early: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child wrote no chunk in 120 s")
            time.sleep(0.02)
        child.kill()  # SIGKILL: no cleanup handlers run
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -9
    folder = next(killed.iterdir())
    done = len(_records(killed))
    assert 2 <= done < n // bs and not (folder / "manifest.json").exists()
    with pytest.raises(ValueError, match="not finished"):
        LayerStore.open(folder)
    # debris of a write in flight: a temp file and a chunk file without its record
    (folder / "chunks" / "c00007_l000.pt.tmp-12345").write_bytes(b"partial")
    (folder / "chunks" / "c00007_l001.pt").write_bytes(b"garbage of an unrecorded chunk")

    corpus = make_corpus(n)
    up = ToyUpstream()
    resumed = extract_quiet(up, corpus, batch_size=bs, cache_dir=killed)
    assert up.calls == n // bs - done + PROBE  # only the missing chunks ran
    assert not list(folder.rglob("*.tmp-*"))
    uninterrupted = extract_quiet(ToyUpstream(), corpus, batch_size=bs, cache_dir=clean)
    assert resumed.path.name == uninterrupted.path.name
    assert_same_bytes(resumed, uninterrupted)
    for f in sorted((folder / "chunks").glob("*.pt")):
        a = torch.load(f, weights_only=True)
        b = torch.load(uninterrupted.path / "chunks" / f.name, weights_only=True)
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert_same_bytes(LayerStore.open(folder), uninterrupted)


# ----------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_chunk_detected_and_reextracted(corpus, tmp_path, damage):
    good = extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)
    target = good.path / "chunks" / "c00001_l002.pt"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        data[-200] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        target.unlink()
    reader = LayerStore.open(good.path)
    reader.layer(0)  # other layers are fine
    with pytest.raises(CacheCorruptionError, match=r"c00001_l002\.pt.*Re-run s3viz\.extract"):
        reader.layer(2)
    with pytest.raises(CacheCorruptionError, match="c00001_l002"):
        reader.utterance(reader._plan[1][0])
    # the store returned by extract also verifies before its first load
    fresh_ref = extract_quiet(ToyUpstream(), corpus, batch_size=4)
    up = ToyUpstream()
    with pytest.warns(UserWarning, match="re-extracted"):
        repaired = extract_quiet(up, corpus, batch_size=4, cache_dir=tmp_path)
    assert up.calls == 1 + PROBE and repaired.path == good.path
    assert_same_bytes(repaired, fresh_ref)
    assert_same_bytes(LayerStore.open(good.path), fresh_ref)


def test_unverified_store_never_returns_corrupt_frames(corpus, tmp_path):
    store = extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)
    target = store.path / "chunks" / "c00000_l000.pt"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptionError, match="sha256"):
        store.layer(0)


def test_broken_record_is_reextracted(corpus, tmp_path):
    store = extract_quiet(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)
    (store.path / "chunks" / "c00000.json").write_text("{not json")
    up = ToyUpstream()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = extract_quiet(up, corpus, batch_size=4, cache_dir=tmp_path)
    assert up.calls == 1 + PROBE
    assert_same_bytes(again, store)


def test_failed_write_propagates_and_resumes(corpus, ref, tmp_path, monkeypatch):
    import s3viz.extraction as ex

    real = ex.write_chunk

    def failing(chunk_dir, c, *args):
        if c == 1:
            raise OSError("No space left on device (simulated)")
        return real(chunk_dir, c, *args)

    monkeypatch.setattr(ex, "write_chunk", failing)
    up = ToyUpstream()
    up.train()
    with pytest.raises(OSError, match="simulated"):
        extract_quiet(up, corpus, batch_size=3, cache_dir=tmp_path)
    assert up.training  # flags restored on failure too
    monkeypatch.setattr(ex, "write_chunk", real)
    again = ToyUpstream()
    store = extract_quiet(again, corpus, batch_size=3, cache_dir=tmp_path)
    assert 1 + PROBE <= again.calls < 4 + PROBE  # the chunks written before the failure are kept
    for i in range(len(corpus)):
        for s in range(3):
            torch.testing.assert_close(store.utterance(i)[s], ref[i][s], rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- frame labels


def test_frame_labels_hand_computed():
    phones = pd.DataFrame({"phone": ["a", "b"], "word": ["x", "x"], "start": [0, 300],
                           "end": [300, 1000]})
    # utterance of 1000 samples: 7 frames at rate 160, 4 at rate 320
    hs = [[torch.zeros(7, 2), torch.zeros(4, 3), torch.zeros(3, 3)],
          [torch.zeros(2, 2), torch.zeros(1, 3), torch.zeros(1, 3)]]
    store = LayerStore.from_tensors(hs, downsample_rates=[160, 320, 320], ids=["p", "q"],
                                    phones=[phones, None], receptive_fields=[160, 320, 400])
    # rate 160, centres 80, 240, 400, 560, 720, 880, 1040
    assert store.frame_labels(0).tolist() == ["a", "a", "b", "b", "b", "b", "", "", ""]
    # rate 320, centres 160, 480, 800, 1120
    assert store.frame_labels(1, utterances=[0]).tolist() == ["a", "b", "b", ""]
    # receptive field 400: centres 200, 520, 840
    assert store.frame_labels(2, utterances=[0]).tolist() == ["a", "b", "b"]
    assert store.frame_labels(2, column="word", utterances=[0]).tolist() == ["x", "x", "x"]
    assert len(store.frame_labels(1)) == len(store.layer(1)[0])
    with pytest.raises(ValueError, match="no alignment"):
        store.frame_labels(0, utterances=[1])
    with pytest.raises(KeyError, match="speaker"):
        store.frame_labels(0, column="speaker")


def test_frame_labels_from_extraction(corpus):
    store = extract_quiet(ToyUpstream(), corpus, batch_size=4)
    for s, rate in enumerate([160, 320, 320]):
        labels = store.frame_labels(s)
        frames, idx = store.layer(s)
        assert labels.shape == (frames.shape[0],)
        for i in (0, 4):
            lab = labels[idx.numpy() == i]
            centres = np.arange(len(lab)) * rate + rate / 2
            ph = corpus[i].phones
            want = ["" if c >= ph.end.iloc[-1] else
                    ph.phone.iloc[int(np.searchsorted(ph.start.to_numpy(), c, side="right")) - 1]
                    for c in centres]
            assert lab.tolist() == want


# ----------------------------------------------------------------------------- options


def test_float16_storage(corpus, tmp_path):
    full = extract_quiet(ToyUpstream(), corpus, batch_size=4)
    for cache in (None, tmp_path):
        half = extract_quiet(ToyUpstream(), corpus, batch_size=4, store_dtype=torch.float16,
                             cache_dir=cache)
        assert half.store_dtype == torch.float16 and half.nbytes * 2 == full.nbytes
        for i in range(len(corpus)):
            for a, b in zip(half.utterance(i), full.utterance(i), strict=True):
                assert a.dtype == torch.float32
                assert torch.equal(a, b.half().float())
        assert half.layer(1, dtype=torch.float16)[0].dtype == torch.float16


def test_layers_subset(corpus, ref):
    sub = extract_quiet(ToyUpstream(), corpus, batch_size=4, upstream_layers=[2, 0])
    assert sub.layer_ids == [2, 0] and sub.hidden_sizes == [6, 8]
    assert sub.downsample_rates == [320, 160] and sub.num_layer == 2
    for i in range(len(corpus)):
        got = sub.utterance(i)
        torch.testing.assert_close(got[0], ref[i][2], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(got[1], ref[i][0], rtol=RTOL, atol=ATOL)
    last = extract_quiet(ToyUpstream(), corpus[:3], upstream_layers=-1)
    assert last.layer_ids == [2]
    assert "upstream layers [2]" in repr(last)
    torch.testing.assert_close(last.layer(-1)[0], sub.layer(0, utterances=[0, 1, 2])[0])


def test_bfloat16_autocast_close_to_float32(corpus):
    full = extract_quiet(ToyUpstream(), corpus[:4])
    low = extract_quiet(ToyUpstream(), corpus[:4], amp_dtype=torch.bfloat16)
    assert low.fingerprint != full.fingerprint
    torch.testing.assert_close(low.layer(2)[0], full.layer(2)[0], rtol=0.05, atol=0.05)


def test_expected_size_printed(corpus, capsys, tmp_path):
    """To stdout: in a notebook stderr is drawn as a pink warning box."""
    store = extract(ToyUpstream(), corpus, batch_size=4)
    out = capsys.readouterr().out
    assert "s3viz.extract: toy, 10 utterances" in out and "x the audio" in out
    # the ceil-convention estimate equals the toy's real size
    kb = f"{store.nbytes / 1000:.1f} kB"
    assert kb in out
    extract(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)
    assert "on disk at" in capsys.readouterr().out
    extract(ToyUpstream(), corpus, batch_size=4, cache_dir=tmp_path)
    assert "(3/3 chunks already there)" in capsys.readouterr().out
    extract_quiet(ToyUpstream(), corpus, batch_size=4)
    assert capsys.readouterr().out == ""


def test_extract_stays_callable_after_importing_its_module():
    import s3viz
    import s3viz.extraction  # noqa: F401  (binds s3viz.extraction, not s3viz.extract)

    store = s3viz.extract(ToyUpstream(), make_corpus(2), progress=False)
    assert isinstance(store, s3viz.LayerStore) and len(store) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_model_moved_back(corpus, ref):
    up = ToyUpstream()
    store = extract_quiet(up, corpus, batch_size=4, device="cuda")
    assert all(p.device.type == "cpu" for p in up.parameters())
    for i in range(len(corpus)):
        for s in range(3):
            torch.testing.assert_close(store.utterance(i)[s], ref[i][s], rtol=1e-4, atol=1e-5)
    half = extract_quiet(up.cuda(), corpus, batch_size=4, amp_dtype=torch.float16)
    assert next(up.parameters()).device.type == "cuda"  # device=None: not moved
    torch.testing.assert_close(half.layer(2)[0], store.layer(2)[0], rtol=0.02, atol=0.02)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"upstream_layers": [3]}, IndexError, "upstream_layers"),
    ({"upstream_layers": [0, 0]}, ValueError, "duplicates"),
    ({"upstream_layers": []}, ValueError, "upstream_layers"),
    ({"upstream_layers": ["1"]}, TypeError, "upstream_layers"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.5}, ValueError, "batch_size"),
    ({"batch_size": True}, ValueError, "batch_size"),
    ({"max_batch_seconds": 0}, ValueError, "max_batch_seconds"),
    ({"max_batch_seconds": float("nan")}, ValueError, "max_batch_seconds"),
    ({"max_batch_seconds": None}, ValueError, "batch_size and max_batch_seconds"),
    ({"store_dtype": torch.int8}, ValueError, "store_dtype"),
    ({"amp_dtype": torch.int64}, ValueError, "amp_dtype"),
    ({"amp_dtype": "fp8"}, ValueError, "amp_dtype"),
    ({"device": "nonsense"}, ValueError, "device"),
    ({"progress": "yes"}, TypeError, "progress"),
    ({"cache_dir": 3}, TypeError, "cache_dir"),
    ({"cache_dir": ""}, ValueError, "empty path"),
])
def test_bad_arguments(corpus, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        extract_quiet(ToyUpstream(), corpus, **kwargs)


def test_bad_upstream_and_corpus(corpus):
    for bad in (object(), lambda w, n: None, "hubert_base"):
        with pytest.raises(TypeError, match="upstream must be a torch.nn.Module"):
            extract(bad, corpus)
    with pytest.raises(TypeError, match="num_layer"):
        extract(nn.Linear(2, 2), corpus)

    class WrongSizes(ToyUpstream):
        @property
        def hidden_sizes(self):
            return [8, 6]

    with pytest.raises(TypeError, match="hidden_sizes"):
        extract(WrongSizes(), corpus)

    class Lies(ToyUpstream):
        @property
        def hidden_sizes(self):
            return [8, 6, 7]

    with pytest.raises(ValueError, match="hidden state 2 has shape"):
        extract_quiet(Lies(), corpus)
    with pytest.raises(ValueError, match="corpus is empty"):
        extract(ToyUpstream(), Corpus([]))
    with pytest.raises(ValueError, match="corpus is empty"):
        extract(ToyUpstream(), [])
    with pytest.raises(TypeError, match="corpus"):
        extract(ToyUpstream(), "some/folder")
    with pytest.raises(TypeError, match="Utterance"):
        extract(ToyUpstream(), [np.zeros(100)])
    with pytest.raises(ValueError, match="without samples"):
        extract(ToyUpstream(), [Utterance(id="e", wav=np.zeros(0, np.float32))])
    nan = np.full(400, 0.1, np.float32)
    nan[7] = np.nan
    with pytest.raises(ValueError, match=r"utterance 'n1' contains 1 non-finite"):
        extract_quiet(ToyUpstream(), [Utterance(id="n0", wav=np.ones(500, np.float32) * 0.1),
                                      Utterance(id="n1", wav=nan)])
    # silence is data, and a plain list of utterances works
    assert len(extract_quiet(ToyUpstream(), [Utterance(id="z", wav=np.zeros(400, np.float32))])) == 1
    assert len(extract_quiet(ToyUpstream(), list(corpus)[:2])) == 2


def test_bad_store_arguments(corpus, tmp_path):
    store = extract_quiet(ToyUpstream(), corpus[:3])
    with pytest.raises(IndexError, match="layer 3 out of range"):
        store.layer(3)
    with pytest.raises(TypeError, match="layer"):
        store.lengths("1")
    with pytest.raises(IndexError, match="utterances"):
        store.layer(0, utterances=[5])
    with pytest.raises(IndexError, match="utterances"):
        store.layer(0, utterances=[-1])
    with pytest.raises(TypeError, match="utterances"):
        store.layer(0, utterances=2)
    with pytest.raises(IndexError, match="utterance 3"):
        store.utterance(3)
    with pytest.raises(ValueError, match="chunk_frames"):
        next(store.iter_layer(0, chunk_frames=0))
    with pytest.raises(FileNotFoundError, match="manifest"):
        LayerStore.open(tmp_path)


def test_from_tensors_validation_and_copy_semantics():
    hs = [[torch.ones(3, 2), torch.ones(2, 4)], [torch.zeros(5, 2), torch.zeros(3, 4)]]
    labels = pd.DataFrame({"id": ["a", "b"], "speaker": ["x", "y"]})
    store = LayerStore.from_tensors(hs, downsample_rates=[160, 320], labels=labels)
    assert store.ids == ["a", "b"] and store.hidden_sizes == [2, 4]
    assert store.receptive_fields == [160, 320] and store.phones == [None, None]
    np.testing.assert_array_equal(store.lengths(1), [2, 3])
    out = store.utterance(0)[0]
    out += 5  # a copy: the store does not change
    assert torch.equal(store.utterance(0)[0], torch.ones(3, 2))
    torch.testing.assert_close(store.pooled(0), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="layers but downsample_rates"):
        LayerStore.from_tensors(hs, downsample_rates=[160])
    with pytest.raises(ValueError, match="hidden sizes"):
        LayerStore.from_tensors([hs[0], [torch.ones(3, 3), torch.ones(2, 4)]],
                                downsample_rates=[160, 320])
    with pytest.raises(ValueError, match="empty"):
        LayerStore.from_tensors([], downsample_rates=[160])
    with pytest.raises(ValueError, match="'id' column"):
        LayerStore.from_tensors(hs, downsample_rates=[160, 320], labels=pd.DataFrame({"x": [1, 2]}))
    with pytest.raises(ValueError, match="float"):
        LayerStore.from_tensors([[torch.ones(3)], [torch.ones(3)]], downsample_rates=[160])


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    # child of test_resume_after_sigkill_is_identical: a slow extraction to be killed
    _cache, _n, _bs, _delay = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    extract(ToyUpstream(delay=_delay), make_corpus(_n), batch_size=_bs, cache_dir=_cache,
            progress=False)
