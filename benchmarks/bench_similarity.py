"""Benchmark: the CKA matrix of s3viz.layer_similarity against a naive per-pair
Gram-matrix implementation, and the peak memory of the ridge probe and of CKA
at N and 4N frames.

1. Speed and agreement: all layer pairs of the same frames, s3viz (feature-space
   linear CKA from one streamed pass of cross-covariances) against the textbook
   Gram form computed pair by pair (``K = X X^T``, ``L = Y Y^T``, both centred,
   ``<Kc, Lc> / (||Kc|| ||Lc||)``, float64). Target: same values within 1e-4,
   s3viz at least 10x faster. --quick times the naive form on 8 of the pairs and
   extrapolates to all pairs (said so in the output).
2. Memory: extra peak resident memory (the kernel's high-water mark, reset
   before each call, minus the resident memory before it: the store itself is
   not counted) of ``probe_layers(method="ridge")`` and ``layer_similarity`` on
   Gaussian stores of 5 layers x 768 with N = 3000 and 4N frames, CKA streamed
   in chunks of 1024 frames, the probe in the measure engine's batches. Target:
   nearly constant.

Run: .venv/bin/python benchmarks/bench_similarity.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import itertools
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_probe import gaussian_store, real_store

from s3viz import similarity
from s3viz.probe import probe_layers
from s3viz.similarity import layer_similarity


def memory_store(n_utt: int, num_layer: int, frames: int = 75, hidden: int = 768,
                 classes: int = 50):
    """A cheap Gaussian store (class means + noise) for the memory measurements."""
    import pandas as pd

    from s3viz.store import LayerStore

    g = torch.Generator().manual_seed(0)
    means = torch.randn(classes, hidden, generator=g)
    hs, phones, rows = [], [], []
    for i in range(n_utt):
        seg = torch.randint(classes, (frames // 5,), generator=g)
        lab = seg.repeat_interleave(5)
        hs.append([0.3 * means[lab] + torch.randn(frames, hidden, generator=g)
                   for _ in range(num_layer)])
        k = len(seg)
        phones.append(pd.DataFrame({"phone": [f"p{int(s)}" for s in seg], "word": ["w"] * k,
                                    "start": np.arange(k) * 1600,
                                    "end": np.arange(1, k + 1) * 1600}))
        rows.append({"id": f"m{i:04d}", "speaker": f"spk{i % 8}"})
    return LayerStore.from_tensors(hs, downsample_rates=[320] * num_layer,
                                   labels=pd.DataFrame(rows), phones=phones)


def naive_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA from two n x n Gram matrices (Kornblith et al.'s reference form)."""
    x, y = x.double(), y.double()

    def centred_gram(z):
        k = z @ z.T
        return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()

    kc, lc = centred_gram(x), centred_gram(y)
    return float((kc * lc).sum() / (kc.norm() * lc.norm()))


def _status():
    with open("/proc/self/status") as f:
        d = dict(line.split(":", 1) for line in f)
    return int(d["VmRSS"].split()[0]) * 1024, int(d["VmHWM"].split()[0]) * 1024


def peak_extra_bytes(fn):
    """Peak resident memory above the current one while ``fn`` runs (Linux).

    Free heap pages are first given back to the OS (``malloc_trim``), or the call
    would reuse them without growing the resident set and look free of charge.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark
        f.write("5")
    before, _ = _status()
    fn()
    _, peak = _status()
    return peak - before


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--frames", type=int, default=None,
                    help="frames compared (default 3000 with --quick, else 5000)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--utterances", type=int, default=60)
    ap.add_argument("--cache", default=os.environ.get("S3VIZ_BENCH_CACHE",
                                                      "/tmp/s3viz_bench_cache"))
    ap.add_argument("--gaussian", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--device", default="cpu",
                    help="where s3viz's CKA runs (cuda: also timed against s3viz on the CPU)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here")
    torch.set_num_threads(args.threads)
    want = args.frames or (3000 if args.quick else 5000)
    if not args.no_speed:
        speed(args, want)
    if not args.no_memory:
        memory()
    return 0


def speed(args, want):

    store, what = ((None, "") if args.gaussian
                   else real_store(args.utterances, args.cache, device=args.device))
    if store is None:
        store, what = gaussian_store(n_utt=80), "Gaussian class-structured features"
    lengths = np.asarray(store.lengths(0))
    k = int(np.searchsorted(np.cumsum(lengths), want)) + 1
    utts = list(range(min(k, len(store))))
    n = int(lengths[utts].sum())
    L = store.num_layer
    print(f"features: {what}: {L} layers x {store.hidden_sizes[0]} dims, the {n} frames of "
          f"the first {len(utts)} utterances; {args.threads} thread(s), {args.device}")

    if args.device != "cpu":
        layer_similarity(store, utterances=utts[:2], device=args.device)  # CUDA start-up
    t = time.perf_counter()
    ours = layer_similarity(store, utterances=utts, device=args.device)
    t_ours = time.perf_counter() - t
    print(f"s3viz layer_similarity (feature-space CKA, all {L}x{L}) on {args.device}: "
          f"{t_ours:.2f} s")
    if args.device != "cpu":
        t = time.perf_counter()
        on_cpu = layer_similarity(store, utterances=utts, device="cpu")
        t_cpu = time.perf_counter() - t
        gap = float(np.abs(on_cpu.to_numpy() - ours.to_numpy()).max())
        print(f"RESULT CKA {args.device} vs cpu: {t_cpu / t_ours:.1f}x faster ({t_cpu:.2f} s on "
              f"the CPU); max |difference| {gap:.2e} (target <= 1e-4)")

    frames = [store.layer(layer, utterances=utts)[0] for layer in range(L)]
    pairs = list(itertools.combinations(range(L), 2))
    timed = pairs[:: max(1, len(pairs) // 8)][:8] if args.quick else pairs
    t = time.perf_counter()
    ref = {p: naive_cka(frames[p[0]], frames[p[1]]) for p in timed}
    per_pair = (time.perf_counter() - t) / len(timed)
    t_naive = per_pair * len(pairs)
    how = (f"{len(timed)} pairs timed ({per_pair:.2f} s each), extrapolated to {len(pairs)}"
           if args.quick else f"all {len(pairs)} pairs")
    print(f"naive per-pair Gram CKA: {t_naive:.1f} s ({how})")
    err = max(abs(ours.iloc[i, j] - v) for (i, j), v in ref.items())
    print(f"\nRESULT CKA: {t_naive / t_ours:.1f}x faster than the naive per-pair Gram form "
          f"(target >= 10x); max |difference| {err:.2e} over {len(ref)} pairs (target <= 1e-4)")



def memory():
    chunk, layers = 1024, 5
    print(f"\npeak extra memory (resident, above the store itself), {layers} layers x 768, "
          f"CKA in chunks of {chunk} frames, the ridge probe in the engine's batches:")
    base = 40
    results = {}
    similarity.CHUNK_FRAMES = chunk  # frames read at once
    for mult in (1, 4):
        st = memory_store(base * mult, layers)
        nf = int(np.asarray(st.lengths(0)).sum())
        ridge = peak_extra_bytes(functools.partial(
            probe_layers, st, "phone", method="ridge", device="cpu"))
        cka = peak_extra_bytes(functools.partial(layer_similarity, st, device="cpu"))
        results[mult] = (ridge, cka)
        print(f"  {nf:6d} frames ({nf * layers * 768 * 4 / 2**20:.0f} MiB store): ridge probe "
              f"{ridge / 2**20:.0f} MiB, CKA {cka / 2**20:.0f} MiB")
        del st
    r1, c1 = results[1]
    r4, c4 = results[4]
    print(f"RESULT memory 4N/N: ridge probe {r4 / r1:.2f}x, CKA {c4 / c1:.2f}x "
          "(target: nearly constant, ~1x)")


if __name__ == "__main__":
    sys.exit(main())
