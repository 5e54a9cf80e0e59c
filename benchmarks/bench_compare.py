"""compare_frame_utterance on the GPU against the CPU (when CUDA is present).

A frame-level MLP (768 -> 256 -> 32) and a mean-pooling linear utterance
model (768 -> 256 -> 32) on 256 utterances of up to 500 frames x 768 dims.
Prints the CPU time, and with CUDA the GPU time, the ratio and the largest
CPU-vs-GPU output difference; without CUDA it prints 'no CUDA: skipped'.

    .venv/bin/python benchmarks/bench_compare.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from s3viz.compare import compare_frame_utterance
from s3viz.models import FrameLevelMLP, MeanPoolingLinear


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 utterances instead of 256")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="cuda: the GPU comparison is required (an error without CUDA)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    n = 64 if args.quick else 256
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(n, 500, 768, generator=g)
    hs_len = torch.randint(125, 501, (n,), generator=g)
    torch.manual_seed(0)
    frame = FrameLevelMLP(768, 32, hidden_sizes=(256,))
    utt = MeanPoolingLinear(768, 32, hidden_size=256)

    t0 = time.perf_counter()
    df = compare_frame_utterance(frame, utt, (hs, hs_len), device="cpu", batch_size=32,
                                 cpu_vs_gpu=False)
    wall = time.perf_counter() - t0
    print(f"{n} utterances, batch 32, {torch.get_num_threads()} CPU threads")
    print(f"CPU: models {df['cpu_ms'].sum():.0f} ms (compare_frame_utterance total "
          f"{wall * 1e3:.0f} ms); cosine mean {df['cosine'].mean():.3f}")
    if args.device == "cpu" or not torch.cuda.is_available():
        print("GPU vs CPU: no CUDA: skipped" if args.device is None else "GPU vs CPU: --device cpu")
        return
    t0 = time.perf_counter()
    df = compare_frame_utterance(frame, utt, (hs, hs_len), device="cuda", batch_size=32)
    wall = time.perf_counter() - t0
    cpu, gpu = df["cpu_ms"].sum(), df["gpu_ms"].sum()
    print(f"GPU ({df.attrs['gpu']}): models {gpu:.1f} ms vs CPU {cpu:.0f} ms: "
          f"{cpu / gpu:.1f}x faster (both devices in one call: {wall * 1e3:.0f} ms)")
    print(f"CPU vs GPU max |diff|: frame outputs {df['cpu_gpu_frame_max_abs_diff'].max():.2e}, "
          f"utterance outputs {df['cpu_gpu_utterance_max_abs_diff'].max():.2e}")
    print(f"RESULT compare: GPU {cpu / gpu:.1f}x faster than the CPU on the models; max "
          f"|CPU - GPU| {max(df['cpu_gpu_frame_max_abs_diff'].max(), df['cpu_gpu_utterance_max_abs_diff'].max()):.1e}")


if __name__ == "__main__":
    main()
