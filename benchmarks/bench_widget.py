"""Layer-weight widget: time per slider move against the 200 ms target and a naive recompute.

A synthetic LayerStore of realistic size (13 layers x 768 dims, ~20k frames
from 200 utterances, 40 phone classes, 8 speakers; each layer carries the
phone identity at a different signal-to-noise ratio) feeds
``s3viz.widgets.layer_weight_explorer``. We time

- the one-off construction (``WeightedScorer``: basis, cached blocks);
- one slider move of the widget (``slider.value = v``: the trait
  notification, the score from cached statistics, the bar / label updates),
  median and 95th percentile over random moves, against the 200 ms target;
- the naive recompute of the same move: gather every layer's frames,
  standardise, form the 768-dim weighted sum and fit the ridge probe from
  scratch (``ProbeStats`` over fit / dev frames, penalty by dev MSE, predict
  the test frames) - what a widget without cached statistics would do;

and print the ratio naive / cached. ``--quick`` uses ~5k frames.

Run: ``.venv/bin/python benchmarks/bench_widget.py [--quick] [--threads 1]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch


def synthetic_store(n_utt: int, num_layers: int = 13, hidden: int = 768, frames: int = 100,
                    n_phones: int = 40, n_speakers: int = 8, rate: int = 320, seed: int = 0,
                    signal: float = 0.15):
    """A LayerStore whose layers carry phone identity with layer-dependent strength."""
    from s3viz.store import LayerStore

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    emb = signal * torch.randn(n_phones, hidden, generator=g)
    # signal strength peaks in the middle layers, as phone information does in HuBERT
    strength = np.exp(-0.5 * ((np.arange(num_layers) - 0.6 * num_layers) / 2.5) ** 2)
    hs, phones, rows = [], [], []
    for i in range(n_utt):
        t = int(rng.integers(frames // 2, frames * 3 // 2))
        durations = rng.integers(2, 8, size=t)
        starts = np.concatenate([[0], np.cumsum(durations)])
        starts = starts[starts < t]
        ends = np.append(starts[1:], t)
        lab = rng.integers(n_phones, size=len(starts))
        per_frame = np.repeat(lab, ends - starts)
        shared = torch.randn(t, hidden, generator=g)
        layers = []
        for l_ in range(num_layers):
            x = 0.6 * shared + torch.randn(t, hidden, generator=g)
            x += float(strength[l_]) * emb[torch.from_numpy(per_frame)]
            layers.append(x)
        hs.append(layers)
        phones.append(pd.DataFrame({"phone": [f"p{v}" for v in lab], "word": "w",
                                    "start": starts * rate, "end": ends * rate}))
        rows.append({"id": f"u{i:04d}", "speaker": f"s{i % n_speakers}"})
    return LayerStore.from_tensors(hs, downsample_rates=[rate] * num_layers,
                                   labels=pd.DataFrame(rows), phones=phones)


def naive_score(store, scorer, weights) -> float:
    """Score ``weights`` from the frames, without cached statistics (full hidden size)."""
    from s3viz.probe import LAMBDAS, ProbeStats

    data = scorer.data
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()

    def weighted(utts):
        x = None
        for j in range(len(data.layers)):
            xj = data.features(j, utts) * float(w[j])
            x = xj if x is None else x + xj
        y = torch.from_numpy(data.labels(utts))
        keep = y >= 0
        return x[keep].double(), y[keep]

    c = len(data.classes)
    fit = ProbeStats.from_data(*weighted(data.fit_utts), num_targets=c)
    dev = ProbeStats.from_data(*weighted(data.dev_utts), num_targets=c)
    lam = LAMBDAS[int(torch.argmin(fit.dev_mse(dev, LAMBDAS).sum(1)))]
    weight, bias = (fit + dev).solve(lam)
    x, y = weighted(data.test_utts)
    return float(((x @ weight + bias).argmax(1) == y).double().mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~5k frames instead of ~20k")
    parser.add_argument("--moves", type=int, default=30)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for this run (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    print(f"torch threads: {torch.get_num_threads()}, load average: "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    from s3viz.widgets._weights import layer_weight_explorer

    n_utt = 50 if args.quick else 200
    t0 = time.perf_counter()
    store = synthetic_store(n_utt)
    frames = int(store.lengths(0).sum())
    print(f"store: {store.num_layer} layers x {store.hidden_sizes[0]} dims, {frames} frames, "
          f"{len(store)} utterances ({time.perf_counter() - t0:.1f} s to synthesize)")

    t0 = time.perf_counter()
    widget = layer_weight_explorer(store, "phone", dims=args.dims, device="cpu")
    build = time.perf_counter() - t0
    sc = widget.scorer
    print(f"construction (scorer + {store.num_layer} single-layer scores + widget): {build:.2f} s "
          f"[dims={sc.dims}, train {sc.n_train} / test {sc.n_test} frames]")

    rng = np.random.default_rng(1)
    times, update_ms = [], []
    for _ in range(args.moves):
        slider = widget.sliders[int(rng.integers(len(widget.sliders)))]
        value = float(np.round(rng.uniform(0.0, 1.0), 2))
        if value == slider.value:
            value = round(1.0 - value, 2) or 0.5
        t = time.perf_counter()
        slider.value = value
        times.append((time.perf_counter() - t) * 1000.0)
        update_ms.append(widget.last_update_ms)
    times = np.asarray(times)
    med, p95 = float(np.median(times)), float(np.percentile(times, 95))
    print(f"widget move: median {med:.1f} ms, p95 {p95:.1f} ms, max {times.max():.1f} ms over "
          f"{args.moves} moves (target 200 ms: {'OK' if p95 < 200 else 'MISSED'})")

    weights = widget.weights.to_numpy()
    naive = []
    for _ in range(2):
        t = time.perf_counter()
        acc_naive = naive_score(store, sc, weights)
        naive.append(time.perf_counter() - t)
    naive_ms = 1000.0 * float(np.median(naive))
    print(f"naive recompute from frames ({store.hidden_sizes[0]} dims): {naive_ms:.0f} ms per move")
    print(f"ratio naive / cached (median): {naive_ms / med:.0f}x")
    print(f"accuracy at the last weights: cached ({sc.dims}-dim basis) {widget.score:.3f}, "
          f"naive (full {store.hidden_sizes[0]} dims) {acc_naive:.3f}")


if __name__ == "__main__":
    main()
