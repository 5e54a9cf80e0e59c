"""Vectorised poolings (s3viz.models) against s3prl-style per-utterance loops.

Batch 64 x 500 frames x 768 dims, lengths drawn uniformly in [125, 500]. For
each pooling: the largest difference to the loop (must be <= 1e-5) and the
speed ratio loop / vectorised (> 1: s3viz is faster), on the CPU and, when
CUDA is present, on the GPU. The naive mask-multiply mean is shown as the
baseline the issue warns about, and a batched matmul of the mask with the
frames (the issue's suggestion; s3viz uses an embedding_bag over the valid
rows, which never reads the padding). Timings are the minimum over interleaved
repeats (wall clock, and process CPU time, which is steadier on a shared
machine; use --threads 1 there: OpenMP threads that wait on each other make
many small operations, like the loops', very slow under contention).

    .venv/bin/python benchmarks/bench_pooling.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from s3viz.models import (
    AttentivePooling,
    MeanPooling,
    MeanPoolingLinear,
    StatisticsPooling,
    _loop_attentive,
    _loop_mean,
    _loop_statistics,
    length_mask,
)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device):
    """``(wall seconds, process CPU seconds)`` of one call."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def _naive_mask_multiply(x, x_len):
    mask = length_mask(x_len, x.shape[1])
    return (x * mask[..., None]).sum(1) / x_len[:, None]


def _mask_bmm(x, x_len):
    w = length_mask(x_len, x.shape[1]).to(x.dtype) / x_len[:, None].to(x.dtype)
    return torch.bmm(w.unsqueeze(1), x).squeeze(1)


def run(device, batch, frames, dims, repeats, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, dims, generator=g)
    x_len = torch.randint(frames // 4, frames + 1, (batch,), generator=g)
    x_len[0] = frames
    torch.manual_seed(seed)
    att = AttentivePooling(dims)
    mpl = MeanPoolingLinear(dims, 32)
    x, x_len = x.to(device), x_len.to(device)
    att.to(device)
    mpl.to(device)
    mean_m, stat_m = MeanPooling(dims), StatisticsPooling(dims)
    cases = [
        ("MeanPooling", lambda: mean_m(x, x_len), lambda: _loop_mean(x, x_len)),
        ("StatisticsPooling", lambda: stat_m(x, x_len), lambda: _loop_statistics(x, x_len)),
        ("AttentivePooling", lambda: att(x, x_len), lambda: _loop_attentive(att, x, x_len)),
        ("MeanPoolingLinear", lambda: mpl(x, x_len),
         lambda: mpl.final_proj(_loop_mean(mpl.hidden_layers(x), x_len))),
        ("baseline: mask-multiply mean", lambda: _naive_mask_multiply(x, x_len),
         lambda: _loop_mean(x, x_len)),
        ("baseline: mask-bmm mean", lambda: _mask_bmm(x, x_len), lambda: _loop_mean(x, x_len)),
    ]
    rows = []
    with torch.inference_mode():
        for name, vec, loop in cases:
            diff = float((vec() - loop()).abs().max())  # also warms both up
            best = {"vec": [float("inf")] * 2, "loop": [float("inf")] * 2}
            for _ in range(repeats):  # interleaved, so both see the same machine load
                for key, fn in (("vec", vec), ("loop", loop)):
                    best[key] = [min(a, b) for a, b in zip(best[key], _time(fn, device))]
            rows.append((name, diff, *best["loop"], *best["vec"]))
    cpu_note = "CPU time: process time, all threads" if device.type == "cpu" else ""
    print(f"\n== {device} (batch {batch}, {frames} frames, {dims} dims, lengths "
          f"{int(x_len.min())}-{int(x_len.max())}, {torch.get_num_threads()} CPU threads)")
    head = (f"{'pooling':29s} {'max|diff|':>9s} {'<=1e-5':>6s} {'loop ms':>8s} {'s3viz ms':>8s} "
            f"{'ratio':>7s}")
    if cpu_note:
        head += f" {'loop cpu':>8s} {'s3viz cpu':>9s} {'ratio':>7s}"
    print(head)
    for name, diff, wl, cl, wv, cv in rows:
        line = (f"{name:29s} {diff:9.1e} {diff <= 1e-5!s:>6s} {wl * 1e3:8.1f} {wv * 1e3:8.1f} "
                f"{wl / wv:6.2f}x")
        if cpu_note:
            line += f" {cl * 1e3:8.1f} {cv * 1e3:9.1f} {cl / cv:6.2f}x"
        print(line)
    print("ratio = loop time / s3viz time (> 1: s3viz faster). " + cpu_note)
    return rows


def accuracy_offset(dims=768, frames=500, batch=16):
    """Standard deviation of features with mean 1e4 and std 1, float32, against float64."""
    g = torch.Generator().manual_seed(1)
    x = (1e4 + torch.randn(batch, frames, dims, generator=g, dtype=torch.float64)).float()
    x_len = torch.randint(2, frames + 1, (batch,), generator=g)
    ref = _loop_statistics(x.double(), x_len)[:, dims:]
    with torch.inference_mode():
        std = StatisticsPooling(dims)(x, x_len)[:, dims:].double()
        mask = length_mask(x_len, frames).float()
        n = x_len[:, None].float()
        s1 = torch.einsum("bt,bth->bh", mask, x)
        s2 = torch.einsum("bt,bth->bh", mask, x * x)
        one_pass = ((s2 - s1 * s1 / n) / (n - 1)).clamp(min=0).sqrt().double()

    def rel(a):
        return float(((a - ref).abs() / ref).max())
    print(f"\n== accuracy, mean 1e4 / std 1 features (float32): max relative error of std: "
          f"s3viz two-pass {rel(std):.1e}, one-pass sum of squares {rel(one_pass):.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="one device only (default: the CPU, then CUDA when present)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    repeats = 2 if args.quick else 5
    if args.device in (None, "cpu"):
        rows = run(torch.device("cpu"), 64, 500, 768, repeats)
        _result("cpu", rows, target="never slower than the loop")
    if args.device == "cuda" or (args.device is None and torch.cuda.is_available()):
        rows = run(torch.device("cuda"), 64, 500, 768, repeats * 4)
        print(f"GPU: {torch.cuda.get_device_name(0)}")
        _result("cuda", rows, target=">= 10x the loop")
    elif args.device is None:
        print("\nno CUDA: GPU run skipped")
    accuracy_offset()


def _result(device, rows, target):
    """One RESULT line: the smallest loop / s3viz wall ratio of the s3viz poolings."""
    ours = [(name, wl / wv, diff) for name, diff, wl, _cl, wv, _cv in rows
            if not name.startswith("baseline")]
    worst = min(ours, key=lambda r: r[1])
    print(f"RESULT pooling {device}: s3viz vs the per-utterance loop, worst "
          f"{worst[1]:.1f}x ({worst[0]}), target {target}; max |diff| "
          f"{max(r[2] for r in ours):.1e}")


if __name__ == "__main__":
    main()
