"""The cost of batch invariance for Hugging Face models (s3viz.upstreams.from_transformers).

A group-norm model (HF's default HubertConfig: HuBERT base, 12 x 768, random
weights) cannot take an attention mask, so the adapter runs one unpadded
forward per distinct length. Baseline: HF's own padded batch (one forward, no
mask), which is fast but changes the valid frames of the shorter utterances
(the script prints by how much). A layer-norm model (``feat_extract_norm="layer"``)
runs one masked forward; it is timed against the same padded batch.

Prints the wall time of each, the ratio adapter / padded batch, and the largest
difference between the padded batch and each utterance alone.

    .venv/bin/python benchmarks/bench_transformers.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _best(fn, device, reps):
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 utterances, 1 repeat")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers as T

    from s3viz.upstreams import from_transformers

    n, reps = (8, 1) if args.quick else (16, 3)
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(2 * 16000, 6 * 16000 + 1, (n,), generator=g)
    wavs = torch.randn(n, int(lens.max()), generator=g) * 0.1
    wavs = wavs * (torch.arange(wavs.shape[1])[None] < lens[:, None])
    wavs, lens = wavs.to(args.device), lens.to(args.device)
    audio = float(lens.sum()) / 16000
    print(f"{n} utterances of 2-6 s ({audio:.0f} s of audio) on {args.device}, "
          f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}")
    for norm in ("group", "layer"):
        _one(T, from_transformers, norm, wavs, lens, args.device, reps, audio)


def _one(T, from_transformers, norm, wavs, lens, device, reps, audio):
    config = T.HubertConfig(feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    torch.manual_seed(0)
    model = T.HubertModel(config).eval().to(device)
    up = from_transformers(model)
    n = len(lens)
    with torch.inference_mode():
        up(wavs, lens)  # warm-up
        t_pad = _best(lambda: model(wavs, output_hidden_states=True), device, reps)
        t_ours = _best(lambda: up(wavs, lens), device, reps)
        out = model(wavs, output_hidden_states=True).hidden_states[-1]
        hs, _ = up(wavs, lens)
        frames = model._get_feat_extract_output_lengths(lens)
        wrong = max(float((out[b, : int(frames[b])] - hs[-1][b, : int(frames[b])]).abs().max())
                    for b in range(n))
    how = "one masked forward" if up.uses_attention_mask else "one unpadded forward per length"
    print(f"  feat_extract_norm={norm}: s3viz ({how}) {t_ours:.2f} s, HF padded batch "
          f"(no mask) {t_pad:.2f} s; the padded batch is off by up to {wrong:.3g} on the "
          "valid frames of the last layer")
    print(f"RESULT transformers {norm} norm {device}: batch-invariant adapter "
          f"{t_ours / t_pad:.2f}x the time of HF's padded batch ({audio / t_ours:.1f}x real "
          f"time); padded batch error {wrong:.2g}")

if __name__ == "__main__":
    main()
