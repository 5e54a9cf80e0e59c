"""Benchmark s3viz.extract against baselines, in one run.

1. Overhead: ``extract`` (in memory, and on disk) against a bare loop that
   batches the same utterances with the same plan and calls the upstream under
   ``torch.inference_mode`` (target: at most 10 % slower).
2. Batching: the length-bucketed plan against corpus-order batches of the same
   size on utterances of varied length (padding and throughput ratio).
3. Memory: peak RSS growth of a disk-backed extraction at N and 4N utterances
   (target: nearly constant), with an in-memory extraction as a contrast.
   RSS is sampled every 5 ms in a fresh subprocess, from after the model is
   built and warmed up to the end of ``extract``; it covers torch's tensors.
   The children fix glibc's mmap threshold so that RSS follows live memory
   (see :func:`bench_memory`); "retained" is RSS after ``extract`` returns.
   A scale check repeats the disk case at 8x more utterances with a cheap
   stand-in upstream of a base model's output shape (13 x 768 at 320 samples),
   with both the fixed and glibc's default malloc settings.
   tracemalloc's peak is printed too: it sees Python and numpy allocations
   only (not torch tensors), i.e. the per-utterance bookkeeping.

The upstream is a random-weight HuBERT base (``s3viz.upstreams.torchaudio_upstream``)
on random-noise utterances (the content does not change the cost), on the CPU
unless CUDA is available. Timings take the minimum over repetitions (the
machine is shared), interleaving the contenders.

    .venv/bin/python benchmarks/bench_extract.py [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

import numpy as np
import torch

from s3viz._cache import upstream_fingerprint
from s3viz.audio import batch_wavs
from s3viz.data import Corpus, Utterance
from s3viz.extraction import DEFAULT_MAX_BATCH_SECONDS, _padding, bucket_plan, extract
from s3viz.interface import SAMPLE_RATE, AbsUpstream


def noise_corpus(lengths_s, seed=0, name="noise") -> Corpus:
    rng = np.random.default_rng(seed)
    return Corpus(
        [Utterance(id=f"n{i:04d}", wav=(rng.standard_normal(int(s * SAMPLE_RATE)) * 0.1).astype(np.float32))
         for i, s in enumerate(lengths_s)],
        name=name,
    )


class BaseShaped(AbsUpstream):
    """A cheap stand-in with a base model's output shape: 13 x (frames, 768) at 320 samples."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(320, 768)
        self.name = "base_shaped"

    num_layer = property(lambda self: 13)
    hidden_sizes = property(lambda self: [768] * 13)
    downsample_rates = property(lambda self: [320] * 13)

    def forward(self, wavs, wavs_len):
        w = wavs.reshape(wavs.shape[0], -1)
        frames = w.shape[1] // 320
        hs = self.proj(w[:, : frames * 320].reshape(w.shape[0], frames, 320))
        return [hs + k for k in range(13)], [wavs_len // 320] * 13


def make_upstream(device):
    from s3viz.upstreams import torchaudio_upstream

    return torchaudio_upstream("hubert_base", pretrained=False).to(device).eval()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class ForwardTimer:
    """Accumulates wall-clock seconds spent inside ``upstream.forward`` (forward hooks)."""

    def __init__(self, upstream, device):
        self.seconds, self._t, self.device = 0.0, 0.0, device
        upstream.register_forward_pre_hook(self._pre)
        upstream.register_forward_hook(self._post)

    def _pre(self, module, args):
        _sync(self.device)
        self._t = time.perf_counter()

    def _post(self, module, args, out):
        _sync(self.device)
        self.seconds += time.perf_counter() - self._t

    def reset(self):
        self.seconds = 0.0


def bare_loop(upstream, corpus, plan, device) -> float:
    """Seconds to batch and run every batch of ``plan``, keeping nothing."""
    t = time.perf_counter()
    with torch.inference_mode():
        for utts in plan:
            wavs, wavs_len = batch_wavs([corpus[i].wav for i in utts])
            upstream(wavs.to(device), wavs_len.to(device))
    _sync(device)
    return time.perf_counter() - t


def timed_extract(upstream, corpus, **kw) -> float:
    t = time.perf_counter()
    extract(upstream, corpus, progress=False, **kw)
    _sync(kw.get("device") or "cpu")
    return time.perf_counter() - t


# --------------------------------------------------------------------------- 1. overhead


def bench_overhead(upstream, device, n, reps):
    """Three views of the overhead, because the machine may be shared:

    - wall clock end to end, min over interleaved repetitions;
    - process CPU time end to end, min over repetitions (less sensitive to other
      processes taking the cores);
    - the work outside ``upstream.forward`` (batching, unpadding, storing, hashing),
      measured inside each run, relative to the bare loop's total: the most robust.
    """
    rng = np.random.default_rng(1)
    corpus = noise_corpus(rng.uniform(1.0, 2.5, n), seed=1)
    lens = [u.num_samples for u in corpus]
    plan = bucket_plan(lens, None, DEFAULT_MAX_BATCH_SECONDS)
    timer = ForwardTimer(upstream, device)
    bare_loop(upstream, corpus, plan[-1:], device)  # warm-up
    runs = {
        "bare loop": lambda: bare_loop(upstream, corpus, plan, device),
        "extract (memory)": lambda: timed_extract(upstream, corpus, device=device),
    }

    def disk():
        with tempfile.TemporaryDirectory() as tmp:
            return timed_extract(upstream, corpus, device=device, cache_dir=tmp)

    runs["extract (disk)"] = disk
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    outside = {k: [] for k in runs}
    for _ in range(reps):
        for k, run in runs.items():
            timer.reset()
            c = time.process_time()
            w = run()
            cpu[k].append(time.process_time() - c)
            wall[k].append(w)
            outside[k].append(w - timer.seconds)
    fp_times = []
    for _ in range(3):
        t = time.perf_counter()
        upstream_fingerprint(upstream)
        fp_times.append(time.perf_counter() - t)
    fp_time = statistics.median(fp_times)
    audio = sum(lens) / SAMPLE_RATE
    print(f"\n[1] overhead: {n} utterances, {audio:.1f} s of audio, {len(plan)} batch(es), {reps} reps")
    base_w, base_c = min(wall["bare loop"]), min(cpu["bare loop"])
    base_o = statistics.median(outside["bare loop"])
    result = {}
    for k in runs:
        extra = statistics.median(outside[k]) - base_o
        per_audio = extra - (fp_time if k != "bare loop" else 0.0)
        result[k] = {"wall": min(wall[k]) / base_w - 1, "cpu": min(cpu[k]) / base_c - 1,
                     "outside": extra / base_w, "outside_no_fp": per_audio / base_w}
        print(f"    {k:17s} wall min {min(wall[k]):6.2f} s ({min(wall[k]) / base_w - 1:+6.1%})  "
              f"cpu min {min(cpu[k]):6.2f} s ({min(cpu[k]) / base_c - 1:+6.1%})  "
              f"outside forward {statistics.median(outside[k]):5.2f} s")
        if k != "bare loop":
            print(f"    {'':17s} extra work outside forward {extra:+.2f} s = {extra / base_w:+.1%} of the "
                  f"bare loop; without the fixed fingerprint cost {per_audio:+.2f} s = "
                  f"{per_audio / base_w:+.1%}")
    speed = audio / base_w
    print(f"    fixed cost per call: fingerprinting the weights {fp_time:.2f} s (= {fp_time * speed:.1f} s "
          f"of audio at {speed:.2f} s of audio per second; below 10 % from "
          f"{10 * fp_time * speed:.0f} s of audio on)")
    return result


# --------------------------------------------------------------------------- 2. bucketing


def bench_bucketing(upstream, device, n, batch_size, reps):
    rng = np.random.default_rng(2)
    corpus = noise_corpus(np.exp(rng.uniform(np.log(0.5), np.log(6.0), n)), seed=2)
    lens = [u.num_samples for u in corpus]
    plans = {"bucketed": bucket_plan(lens, batch_size, None),
             "unsorted": bucket_plan(lens, batch_size, None, sort=False)}
    times = {k: [] for k in plans}
    for _ in range(reps):
        for k, plan in plans.items():
            times[k].append(bare_loop(upstream, corpus, plan, device))
    audio = sum(lens) / SAMPLE_RATE
    print(f"\n[2] batching: {n} utterances of 0.5-6 s ({audio:.1f} s of audio), batch_size={batch_size}")
    for k, plan in plans.items():
        real, padded = _padding(plan, lens)
        print(f"    {k:9s} {len(plan)} batches, padded audio {padded / real:5.2f}x the real audio, "
              f"{audio / min(times[k]):6.2f} s of audio per second")
    ratio = min(times["unsorted"]) / min(times["bucketed"])
    print(f"    throughput bucketed / unsorted: {ratio:.2f}x")
    return ratio


# --------------------------------------------------------------------------- 4. batch sizes


def bench_batch_sizes(upstream, device, sizes, n):
    """Throughput of ``extract`` (in memory) at each batch size on ``n`` utterances of 2-8 s;
    max_batch_seconds is lifted so that the batch size alone sets the batches."""
    rng = np.random.default_rng(4)
    corpus = noise_corpus(rng.uniform(2.0, 8.0, n), seed=4)
    audio = sum(u.num_samples for u in corpus) / SAMPLE_RATE
    timed_extract(upstream, corpus[:2],
                  batch_size=2, max_batch_seconds=None, device=device)  # warm-up (CUDA start)
    print(f"\n[4] batch sizes: {n} utterances of 2-8 s ({audio:.0f} s of audio) on {device}")
    speeds = {}
    for b in sizes:
        t = timed_extract(upstream, corpus, batch_size=b, max_batch_seconds=None, device=device)
        speeds[b] = audio / t
        print(f"    batch_size={b:3d}: {t:6.2f} s, {speeds[b]:7.1f} s of audio per second")
    print("RESULT extract " + device + ": " + ", ".join(
        f"batch {b}: {v:.0f}x real time" for b, v in speeds.items()))
    return speeds


# --------------------------------------------------------------------------- 3. memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(n: int, mode: str, device: str, stand_in: bool = False) -> dict:
    """Runs in a fresh process: RSS growth (peak and retained) and tracemalloc peak of one extraction."""
    upstream = BaseShaped().to(device) if stand_in else make_upstream(device)
    corpus = noise_corpus(0.5 + 0.1 * np.sin(np.arange(n)), seed=3)
    extract(upstream, noise_corpus([0.5] * 4, seed=4), progress=False, max_batch_seconds=2,
            device=device)  # warm-up with batches of the same size
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    with tempfile.TemporaryDirectory() as tmp:
        base = _rss_bytes()
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        tracemalloc.start()
        t = time.perf_counter()
        store = extract(upstream, corpus, progress=False, max_batch_seconds=2, device=device,
                        cache_dir=tmp if mode == "disk" else None)
        elapsed = time.perf_counter() - t
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stop.set()
        thread.join()
        end = _rss_bytes()
        return {"n": n, "mode": mode, "peak_growth": max(peak[0], end) - base,
                "retained": end - base, "tracemalloc_peak": py_peak,
                "frames_bytes": store.nbytes, "seconds": elapsed}


def bench_memory(device, n, n_big):
    """Peak and retained RSS growth at N and 4N (disk), and 4N in memory as a contrast.

    The children run with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 kB, so freed
    tensor buffers go back to the OS and RSS tracks live memory; with glibc's default
    (a threshold that grows to 32 MB) freed buffers of varied sizes stay in malloc's
    arenas and RSS creeps up for a while even though nothing is kept.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    results = []
    for mode, k in (("disk", n), ("disk", 4 * n), ("memory", 4 * n)):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(k), mode, "--device", device],
            capture_output=True, text=True, check=True, env=env,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\n[3] memory of one extraction (fresh process each, 0.5 s utterances, 2 s batches, "
          "MALLOC_MMAP_THRESHOLD_=131072)")
    mb = 1e6
    for r in results:
        print(f"    {r['mode']:6s} N={r['n']:3d}: peak RSS growth {r['peak_growth'] / mb:6.1f} MB, "
              f"retained after {r['retained'] / mb:6.1f} MB, tracemalloc peak "
              f"{r['tracemalloc_peak'] / mb:4.2f} MB, frames {r['frames_bytes'] / mb:5.1f} MB, "
              f"{r['seconds']:.1f} s")
    ratio = results[1]["peak_growth"] / max(results[0]["peak_growth"], 1)
    print(f"    disk: peak RSS growth at 4N / at N = {ratio:.2f}x while the frames grew "
          f"{results[1]['frames_bytes'] / results[0]['frames_bytes']:.1f}x; in memory the "
          f"frames stay resident ({results[2]['retained'] / mb:.1f} MB retained)")
    # many more utterances with a cheap stand-in of the same output shape
    big = []
    for k in (n_big, 8 * n_big):
        for env_k in (env, dict(os.environ)):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(k), "disk", "--device", device,
                 "--stand-in"], capture_output=True, text=True, check=True, env=env_k,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["malloc"] = "fixed" if env_k is env else "default"
            big.append(r)
    print("    scale check, stand-in upstream of base-model shape (13 x 768 at 320 samples), disk:")
    for r in big:
        print(f"    N={r['n']:4d} ({r['malloc']:7s} malloc): peak RSS growth {r['peak_growth'] / mb:6.1f} MB, "
              f"retained {r['retained'] / mb:5.1f} MB, frames written {r['frames_bytes'] / mb:6.1f} MB")
    return ratio


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory-child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--stand-in", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="also time extract at these batch sizes (e.g. 8 32 on a GPU)")
    p.add_argument("--only-batch-sizes", action="store_true",
                   help="skip the overhead, bucketing and memory parts")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here")
    if args.only_batch_sizes and not args.batch_sizes:
        p.error("--only-batch-sizes needs --batch-sizes")
    if args.memory_child:
        print(json.dumps(memory_child(int(args.memory_child[0]), args.memory_child[1], args.device,
                                      args.stand_in)))
        return
    t0 = time.perf_counter()
    print(f"bench_extract: random-weight hubert_base on {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}{' (quick)' if args.quick else ''}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    upstream = make_upstream(args.device)
    if args.batch_sizes:
        bench_batch_sizes(upstream, args.device, args.batch_sizes,
                          n=2 * max(args.batch_sizes) if args.quick else 4 * max(args.batch_sizes))
        if args.only_batch_sizes:
            return
    over = bench_overhead(upstream, args.device, n=4 if args.quick else 10, reps=2 if args.quick else 3)
    bucket = bench_bucketing(upstream, args.device, n=8 if args.quick else 10, batch_size=4,
                             reps=1 if args.quick else 2)
    del upstream
    mem = bench_memory(args.device, n=4 if args.quick else 6, n_big=25 if args.quick else 50)
    print("\nsummary:")
    for k in ("extract (memory)", "extract (disk)"):
        r = over[k]
        print(f"    {k} overhead vs bare loop (target <= +10%): wall {r['wall']:+.1%}, cpu "
              f"{r['cpu']:+.1%}, work outside forward {r['outside']:+.1%} "
              f"({r['outside_no_fp']:+.1%} without the fixed fingerprint)")
    print(f"    bucketed / unsorted throughput: {bucket:.2f}x")
    print(f"    disk-backed peak RSS growth 4N / N: {mem:.2f}x (target ~1)")
    print(f"    total benchmark time {time.perf_counter() - t0:.0f} s, load average now "
          f"{os.getloadavg()[0]:.1f} (timings on a shared machine: compare within this run)")


if __name__ == "__main__":
    main()
