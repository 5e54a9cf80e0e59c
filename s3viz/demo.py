"""The main job (``make demo``): analyse the embedded corpus and write a report.

``python -m s3viz.demo --out build/report`` analyses the shipped tiny model, its
random-weights control and the spectral baseline offline, writes the tables (CSV) and
figures (PNG), executes every notebook and writes ``index.html``: ``docs/reports.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import List, Union

from ._fs import OwnedFolder, UnsafePathError

__all__ = ["run_analysis", "main", "MIN_UTTERANCES"]


CAPTIONS = {
    "probes.png": "Linear probes by layer: phones (frame level, folds by speaker) and speakers "
                  "(utterance level, folds by utterance) for the trained tiny model, its "
                  "twin with random weights and the spectral baseline; dashed: chance, band: "
                  "spread over folds.",
    "abx_units.png": "Left: ABX phone error within speaker (0.5 is chance, lower is better; star: "
                     "best layer). Right: phone-normalised mutual information of 50 k-means "
                     "units per layer (higher is better).",
    "layer_weights_tiny.png": "Layer weights the SUPERB-style weighted sum learned on the tiny "
                              "model for phones (bars), beside each layer's own phone probe.",
    "cka_tiny.png": "Linear CKA between the tiny model's layers (1: the same representation "
                    "up to rotation and scale).",
    "length_report_tiny.png": "Frames per layer against waveform length for the tiny model, "
                              "and where the frame-count conventions disagree with it.",
}
"""Figures of the main analysis shown on the report's front page, with their captions."""

_PROBES = (("phone", "speaker"), ("speaker", "utterance"))  # (target, split_by)


def best_vs_runner_up(df) -> str:
    """A sentence saying whether the best layer of probe table ``df`` (one target, made
    with ``bootstrap=``) beats the runner-up at the 5 % level: the paired bootstrap of
    :func:`s3viz.compare_scores` over the same speakers ("" with fewer than 2 scored layers)."""
    import s3viz

    ok = df[df["accuracy"].notna()].sort_values("accuracy", ascending=False, kind="stable")
    if len(ok) < 2:
        return ""
    best, runner = ok.iloc[0], ok.iloc[1]
    c = s3viz.compare_scores(df, layers=(best["layer"], runner["layer"])).iloc[0]
    verdict = "beats" if c["p_value"] < 0.05 else "does not beat"
    return (f" It {verdict} the runner-up, layer {int(runner['upstream_layer'])}, at the 5 % "
            f"level (difference {c['difference']:+.3f}, 95 % interval "
            f"[{c['difference_lo']:+.3f}, {c['difference_hi']:+.3f}], paired bootstrap over "
            f"{c['unit']}s, p = {c['p_value']:.3f}).")


def _findings(probe_df, weights, abx_df, units_df, lengths, models=None,
              tests=None) -> List[str]:
    """The report's front-page sentences, read off the analysis tables; ``models`` (label
    -> the weights text of its store) first says which weights each model has; ``tests``
    ((target, model) -> :func:`best_vs_runner_up`'s sentence)."""
    out = [f"Weights, {label}: {text}." for label, text in (models or {}).items()]
    for (target, model), part in probe_df.groupby(["target", "method"], sort=False):
        if part["accuracy"].isna().all():  # refused at every layer (a degenerate layer warns)
            why = (" (it normalises each utterance, so its mean-pooled vectors are rounding "
                   "noise)" if model.startswith("spectral") else "")
            out.append(f"{target} probe, {model}: refused at every layer, no accuracy: the "
                       f"layers vary only at rounding level{why}.")
            continue
        best = part.loc[part["accuracy"].idxmax()]
        margin = best["accuracy"] - best["chance"]
        noise = 2 * float(best.get("accuracy_std", 0.0) or 0.0)
        verdict = ("within two fold-to-fold standard deviations of chance" if margin <= noise
                   else f"{margin:.2f} above chance")
        out.append(f"{target} probe, {model}: best layer {int(best['upstream_layer'])} "
                   f"(accuracy {best['accuracy']:.3f}, chance {best['chance']:.3f}; {verdict})."
                   + (tests or {}).get((target, model), ""))
    for model, part in abx_df.groupby("model", sort=False):
        best = part.loc[part["abx_error"].idxmin()]
        out.append(f"ABX within speaker, {model}: lowest error {100 * best['abx_error']:.1f} % "
                   f"at layer {int(best['upstream_layer'])} (50 % is chance).")
    for model, part in units_df.groupby("model", sort=False):
        best = part.loc[part["pnmi"].idxmax()]
        out.append(f"PNMI of 50 k-means units, {model}: highest {best['pnmi']:.3f} at layer "
                   f"{int(best['upstream_layer'])}.")
    top = weights.sort_values(ascending=False).head(2)
    out.append("Learned layer weights of the tiny model (phones): the largest are "
               + " and ".join(f"layer {int(k)} ({v:.2f})" for k, v in top.items())
               + f", against {1 / len(weights):.2f} for uniform weights.")
    out.append("Frame counts: " + lengths.attrs.get("summary", "").strip())
    return out


MIN_UTTERANCES = 16
"""The fewest utterances the demo's probes take: the speaker probe (folds by utterance)
needs every one of the 8 built-in speakers twice."""


def check_n_utterances(n_utterances) -> int:
    """``n_utterances`` as an int of at least :data:`MIN_UTTERANCES`, else refused."""
    if isinstance(n_utterances, bool) or not isinstance(n_utterances, int):
        raise TypeError(f"n_utterances must be an int, got {n_utterances!r}")
    if n_utterances < MIN_UTTERANCES:
        raise ValueError(
            f"--n-utterances {n_utterances} is too few for the demo's probes: it needs at "
            f"least {MIN_UTTERANCES} (two per built-in speaker, so every speaker the speaker "
            f"probe tests is also in its training folds); pass --n-utterances "
            f"{MIN_UTTERANCES} or more")
    return n_utterances


def run_analysis(out_dir: Union[OwnedFolder, str, os.PathLike], *, n_utterances: int = 48,
                 seed: int = 0, device=None) -> List[Path]:
    """Run the main analysis into ``out_dir`` (an :class:`~s3viz._fs.OwnedFolder`, as ``main``'s
    ``<out>/analysis``, or a folder path the user names); the files written. Too few utterances,
    or probe targets and folds the corpus cannot give, are refused before anything is made."""
    n_utterances = check_n_utterances(n_utterances)
    if not isinstance(out_dir, OwnedFolder):
        out_dir = OwnedFolder(out_dir, "--out")
    return _run(out_dir, n_utterances, seed, device)


def _run(out: OwnedFolder, n_utterances: int, seed: int, device) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import s3viz
    from s3viz import plot
    from s3viz._device import resolve_device
    from s3viz.data import synthetic_corpus
    from s3viz.stream import check_targets
    from s3viz.upstreams import get_upstream, is_random_weights, weights_of

    written: List[Path] = []
    log = partial(print, file=sys.stderr, flush=True)

    def csv(name: str, df, index: bool = False) -> None:
        written.append(out.write_with(name, lambda f: df.to_csv(f, index=index), text=True))

    def png(fig_or_ax, name: str) -> None:
        fig = getattr(fig_or_ax, "figure", fig_or_ax)
        fig.tight_layout()
        written.append(out.write_with(name, lambda f: fig.savefig(f, dpi=110, format="png")))
        plt.close(fig)

    t0 = time.perf_counter()
    corpus = synthetic_corpus(n_utterances, seed=seed)
    log(f"corpus: {corpus}")
    for target, split_by in _PROBES:  # refused here, not after three extractions
        check_targets(corpus, target, split_by=split_by, seed=seed)
    csv("corpus.csv", corpus.labels)

    upstreams = {  # offline: the shipped tiny model, its random twin and features
        "tiny (trained)": get_upstream("tiny"),
        "tiny (random weights)": get_upstream("tiny", pretrained=False),
        "spectral baseline": get_upstream("spectral"),
    }
    for label, upstream in upstreams.items():  # each label says what its weights are
        if is_random_weights(weights_of(upstream)) != ("random weights" in label):
            raise RuntimeError(f"the demo's label {label!r} misstates its weights: "
                               f"{weights_of(upstream)}")
    probes, stores, tests = [], {}, {}
    for label, upstream in upstreams.items():
        key = label.split(" (")[0].replace(" baseline", "") + ("_random" if "random" in label else "")
        report = s3viz.check_upstream(upstream)
        csv(f"contract_{key}.csv", report)
        log(f"{label}: {report.summary()}")
        store = s3viz.extract(upstream, corpus, device=device, progress=False)
        stores[label] = store
        for target, split_by in _PROBES:
            df = s3viz.probe_layers(store, target, split_by=split_by, device=device, seed=seed,
                                    bootstrap=1000)
            tests[(target, label)] = best_vs_runner_up(df)
            probes.append(df.assign(method=label))
        log(f"{label}: extracted and probed ({time.perf_counter() - t0:.0f} s so far)")

    import pandas as pd

    models = {label: st.weights for label, st in stores.items()}
    csv("models.csv", pd.DataFrame({"model": list(models),
                                    "upstream": [st.name for st in stores.values()],
                                    "weights": list(models.values())}))
    probe_df = pd.concat(probes, ignore_index=True)
    csv("probes.csv", probe_df)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (target, sub) in zip(axes, probe_df.groupby("target", sort=False)):
        plot.probe_curve(sub, ax=ax)
        ax.set_title(f"{target} probe by layer")
    png(fig, "probes.png")

    # the measures papers report besides probes: ABX and k-means unit quality
    abx_df = pd.concat([s3viz.abx_layers(st, device=device, progress=False)
                        .assign(model=label) for label, st in stores.items()], ignore_index=True)
    units_df = pd.concat([s3viz.unit_quality(st, k=50, device=device, seed=seed)
                          .assign(model=label) for label, st in stores.items()],
                         ignore_index=True)
    csv("abx.csv", abx_df)
    csv("unit_quality.csv", units_df)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    plot.abx_curve(abx_df, ax=axes[0], label_by="model",
                   title="ABX error by layer (within speaker)")
    plot.unit_quality(units_df, ax=axes[1], measures=("pnmi",), label_by="model",
                      title="PNMI of 50 k-means units by layer")
    png(fig, "abx_units.png")
    log(f"ABX and unit quality done ({time.perf_counter() - t0:.0f} s so far)")

    tiny_store = stores["tiny (trained)"]
    featurizer, history = s3viz.train_featurizer(tiny_store, "phone", device=device, seed=seed)
    weights = featurizer.layer_weights
    csv("layer_weights_tiny.csv",
        plot.weights_table(weights, probe_df[probe_df.method == "tiny (trained)"]), index=True)
    csv("featurizer_history_tiny.csv", history)
    ax = plot.weights_and_probe(weights, probe_df[(probe_df.method == "tiny (trained)")
                                                  & (probe_df.target == "phone")])
    ax.set_title("tiny: learned layer weights (bars) and phone probe (line)")
    png(ax, "layer_weights_tiny.png")

    cka = s3viz.layer_similarity(tiny_store, device=device, seed=seed)
    csv("cka_tiny.csv", cka, index=True)
    png(plot.similarity(cka), "cka_tiny.png")

    lengths = s3viz.length_report(upstreams["tiny (trained)"], wav_lengths=range(400, 4000, 37))
    csv("length_report_tiny.csv", lengths)
    png(plot.length_alignment(lengths), "length_report_tiny.png")
    log(lengths.attrs.get("summary", ""))
    findings = _findings(probe_df, weights, abx_df, units_df, lengths, models, tests)
    written.append(out.write_text("findings.txt", "\n".join(findings) + "\n"))
    log(f"analysis done in {time.perf_counter() - t0:.0f} s on {resolve_device(device)}")
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

    try:
        check_n_utterances(args.n_utterances)
    except ValueError as e:
        parser.error(str(e))
    from s3viz.report import build_report

    # --out is the user's; analysis/ is s3viz's, so a link there is refused, not followed
    try:
        adir = OwnedFolder(args.out, "--out").sub("analysis")
    except (UnsafePathError, NotADirectoryError) as e:
        parser.error(str(e))
    analysis = run_analysis(adir, n_utterances=args.n_utterances)
    findings = adir.read_bytes("findings.txt").decode("utf-8").splitlines()
    figures = [(adir.path(name), cap) for name, cap in CAPTIONS.items()
               if adir.kind(name) == "file"]
    notebooks = [] if args.no_notebooks else sorted(args.notebooks.glob("*.ipynb"))
    results = build_report(notebooks, args.out, timeout=args.timeout, extra=analysis,
                           findings=findings, figures=figures)  # no notebooks: the index alone
    print(f"s3viz report: {(args.out / 'index.html').resolve()}")
    failed = [r.name for r in results if r.error]
    if failed:
        print(f"notebooks that failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
