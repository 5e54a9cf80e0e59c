"""Does the shipped tiny model clear issue 8's bar? Held-out probes, one run.

On held-out utterances (voices and sentences never used in training:
``s3viz.zoo.train_tiny.held_out_corpus``), ridge probes of every layer of

- the shipped tiny model (``s3viz.zoo.tiny(pretrained=True)``),
- the same architecture with random weights (``tiny(pretrained=False)``),
- the spectral baseline (``s3viz.upstreams.spectral_upstream()``),

for phones (frame level, one fold per held-out speaker) and speakers (utterance
level, mean-pooled, 5 folds by utterance). Prints each model's best layer and
the differences in accuracy points; the bar is tiny - random >= 10 and
tiny - spectral >= 10 for phones.

    python benchmarks/bench_tiny_probe.py [--quick] [--weights PATH] [--csv OUT]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="60 held-out utterances instead of 120")
    p.add_argument("--utterances", type=int, default=None)
    p.add_argument("--weights", type=Path, default=None,
                   help="evaluate this weights file instead of the shipped one")
    p.add_argument("--csv", type=Path, default=None, help="write the per-layer table here")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    import pandas as pd

    from s3viz.upstreams import spectral_upstream
    from s3viz.zoo import tiny
    from s3viz.zoo.train_tiny import bar_check, held_out_corpus, probe_comparison

    n = args.utterances or (60 if args.quick else 120)
    t0 = time.time()
    corpus = held_out_corpus(n)
    t_data = time.time() - t0
    trained = tiny(pretrained=True) if args.weights is None else tiny(checkpoint=args.weights)
    models = {"tiny": trained, "random": tiny(pretrained=False, config=trained.config),
              "spectral": spectral_upstream()}
    t1 = time.time()
    results = probe_comparison(models, corpus, device=args.device)
    t_probe = time.time() - t1
    if args.csv:
        results.to_csv(args.csv, index=False)

    pd.set_option("display.width", 160)
    print(f"held-out corpus: {len(corpus)} utterances, {len({u.speaker for u in corpus})} "
          f"speakers ({t_data:.1f}s); extraction + probes of 3 models {t_probe:.1f}s")
    table = results.pivot_table(index=["target", "layer"], columns="model", values="accuracy")
    print((100 * table).round(1).to_string())
    bar = bar_check(results)
    print()
    print(bar.round(1).to_string(index=False))
    phone = bar[bar["target"] == "phone"].iloc[0]
    print(f"\nphone: tiny - random = {phone['vs_random']:+.1f} points, "
          f"tiny - spectral = {phone['vs_baseline']:+.1f} points -> bar (>= 10) "
          f"{'MET' if phone['bar_met'] else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
