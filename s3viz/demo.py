"""The main job (``make demo``): analyse the embedded corpus and write a report.

``python -m s3viz.demo --out build/report`` synthesizes the embedded speech
corpus; checks and extracts the shipped tiny model, the same architecture with
random weights, and the spectral baseline; probes every layer for phones
(frame level) and speakers (utterance level), measures ABX phone
discriminability and the PNMI of k-means units per layer; learns SUPERB-style layer
weights on the tiny model; compares its layers with CKA; sweeps frame-count
conventions. Each table is written as CSV and each figure as PNG under
``<out>/analysis/``; then every notebook in ``notebooks/`` is executed into
HTML beside them, and ``<out>/index.html`` links everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List

__all__ = ["run_analysis", "main"]


def _save(fig_or_ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = getattr(fig_or_ax, "figure", fig_or_ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_analysis(out_dir: Path, *, n_utterances: int = 48, seed: int = 0, device=None
                 ) -> List[Path]:
    """Run the main analysis into ``out_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import s3viz
    from s3viz import plot
    from s3viz.data import synthetic_corpus
    from s3viz.upstreams import get_upstream

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    corpus = synthetic_corpus(n_utterances, seed=seed)
    log(f"corpus: {corpus}")
    corpus.labels.to_csv(out_dir / "corpus.csv", index=False)
    written.append(out_dir / "corpus.csv")

    upstreams = {
        "tiny (trained)": get_upstream("tiny"),
        "tiny (random weights)": get_upstream("tiny_random"),
        "spectral baseline": get_upstream("spectral"),
    }
    probes = []
    stores = {}
    for label, upstream in upstreams.items():
        key = label.split(" (")[0].replace(" baseline", "") + ("_random" if "random" in label else "")
        report = s3viz.check_upstream(upstream)
        report.to_csv(out_dir / f"contract_{key}.csv", index=False)
        written.append(out_dir / f"contract_{key}.csv")
        log(f"{label}: {report.summary()}")
        store = s3viz.extract(upstream, corpus, device=device, progress=False)
        stores[label] = store
        for target in ("phone", "speaker"):
            split_by = "utterance" if target == "speaker" else "speaker"
            df = s3viz.probe_layers(store, target, split_by=split_by, device=device, seed=seed)
            probes.append(df.assign(method=label))
        log(f"{label}: extracted and probed ({time.perf_counter() - t0:.0f} s so far)")

    import pandas as pd

    probe_df = pd.concat(probes, ignore_index=True)
    probe_df.to_csv(out_dir / "probes.csv", index=False)
    written.append(out_dir / "probes.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (target, sub) in zip(axes, probe_df.groupby("target", sort=False)):
        plot.probe_curve(sub, ax=ax)
        ax.set_title(f"{target} probe by layer")
    written.append(_save(fig, out_dir / "probes.png"))

    # the measures papers report besides probes: ABX and k-means unit quality
    abx_df = pd.concat([s3viz.abx_layers(st, speaker="within", context="any", device=device)
                        .assign(model=label) for label, st in stores.items()], ignore_index=True)
    units_df = pd.concat([s3viz.unit_quality(st, k=50, device=device, seed=seed)
                          .assign(model=label) for label, st in stores.items()],
                         ignore_index=True)
    abx_df.to_csv(out_dir / "abx.csv", index=False)
    units_df.to_csv(out_dir / "unit_quality.csv", index=False)
    written += [out_dir / "abx.csv", out_dir / "unit_quality.csv"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    plot.abx_curve(abx_df, ax=axes[0], label_by="model",
                   title="ABX error by layer (within speaker)")
    plot.unit_quality(units_df, ax=axes[1], measures=("pnmi",), label_by="model",
                      title="PNMI of 50 k-means units by layer")
    written.append(_save(fig, out_dir / "abx_units.png"))
    log(f"ABX and unit quality done ({time.perf_counter() - t0:.0f} s so far)")

    tiny_store = stores["tiny (trained)"]
    featurizer, history = s3viz.train_featurizer(tiny_store, "phone", device=device, seed=seed)
    weights = featurizer.layer_weights
    plot.weights_table(weights, probe_df[probe_df.method == "tiny (trained)"]).to_csv(
        out_dir / "layer_weights_tiny.csv")
    history.to_csv(out_dir / "featurizer_history_tiny.csv", index=False)
    written += [out_dir / "layer_weights_tiny.csv", out_dir / "featurizer_history_tiny.csv"]
    ax = plot.weights_and_probe(weights, probe_df[(probe_df.method == "tiny (trained)")
                                                  & (probe_df.target == "phone")])
    ax.set_title("tiny: learned layer weights (bars) and phone probe (line)")
    written.append(_save(ax, out_dir / "layer_weights_tiny.png"))

    cka = s3viz.layer_similarity(tiny_store, device=device, seed=seed)
    cka.to_csv(out_dir / "cka_tiny.csv")
    written.append(out_dir / "cka_tiny.csv")
    written.append(_save(plot.similarity(cka), out_dir / "cka_tiny.png"))

    lengths = s3viz.length_report(upstreams["tiny (trained)"], wav_lengths=range(400, 4000, 37))
    lengths.to_csv(out_dir / "length_report_tiny.csv", index=False)
    written.append(out_dir / "length_report_tiny.csv")
    written.append(_save(plot.length_alignment(lengths), out_dir / "length_report_tiny.png"))
    log(lengths.attrs.get("summary", ""))
    used = device or ("cuda" if torch.cuda.is_available() else "cpu")
    log(f"analysis done in {time.perf_counter() - t0:.0f} s on {used}")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="s3viz main analysis and notebook report")
    parser.add_argument("--out", type=Path, default=Path("build/report"))
    parser.add_argument("--n-utterances", type=int, default=48)
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"),
                        help="folder whose *.ipynb are executed into the report")
    parser.add_argument("--no-notebooks", action="store_true")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per notebook cell")
    args = parser.parse_args(argv)

    from s3viz.report import build_report, write_index

    analysis = run_analysis(args.out / "analysis", n_utterances=args.n_utterances)
    notebooks = [] if args.no_notebooks else sorted(args.notebooks.glob("*.ipynb"))
    if notebooks:
        results = build_report(notebooks, args.out, timeout=args.timeout, extra=analysis)
    else:
        results = []
        write_index(args.out, results, analysis)
    print(f"s3viz report: {(args.out / 'index.html').resolve()}")
    failed = [r.name for r in results if r.error]
    if failed:
        print(f"notebooks that failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
