"""Benchmark: s3viz's logistic probe against scikit-learn's LogisticRegression, same model.

Same features, same grouped folds (s3viz.probe.probe_folds), one run: the
logistic probe without early stopping (``LogisticOptions(dev_fraction=0)``:
full-batch L-BFGS to the penalised optimum scikit-learn's ``StandardScaler +
LogisticRegression()`` reaches, all layers batched) against scikit-learn fitted
per layer and fold: seconds per fit and accuracy (target within 0.5 point).
The ridge probe's comparison with scikit-learn's ridge models is in
``bench_peers.py`` (a logistic regression is a different model).

Features: a random-weight HuBERT base (torchaudio architecture) run over the
embedded synthetic corpus (phone targets, speaker-grouped folds), extracted once
and cached under --cache; without s3viz.data / s3viz.upstreams, Gaussian
class-structured features (13 layers x 768, 50 classes).

--quick fits 2 layers and fold 0 only. --sk-max-iter is scikit-learn's iteration
limit (3000 by default, so that both sides reach the same optimum; the output
says how many fits converged).

Run: .venv/bin/python benchmarks/bench_probe.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

from s3viz.store import LayerStore
from s3viz.probe import LogisticOptions, probe_folds, probe_layers


def gaussian_store(n_utt=240, frames=75, num_layer=13, hidden=768, classes=50, seed=0,
                   rate=320):
    """Class-structured Gaussian frames with phone-like alignments; the class signal
    rises then falls over layers (like phones in a speech model)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, hidden)).astype(np.float32)
    signal = np.sin(np.linspace(0.2, np.pi - 0.2, num_layer)) * 0.35
    mix = [np.linalg.qr(rng.standard_normal((hidden, hidden)))[0].astype(np.float32)
           for _ in range(num_layer)]
    hs, phones, rows = [], [], []
    for i in range(n_utt):
        seg = rng.integers(classes, size=frames // 5)
        lab = np.repeat(seg, 5)
        noise = rng.standard_normal((frames, hidden)).astype(np.float32)
        hs.append([torch.from_numpy((signal[l] * means[lab] + noise) @ mix[l])
                   for l in range(num_layer)])
        phones.append(pd.DataFrame({"phone": [f"p{s}" for s in seg],
                                    "word": [f"w{j // 3}" for j in range(len(seg))],
                                    "start": np.arange(len(seg)) * 5 * rate,
                                    "end": np.arange(1, len(seg) + 1) * 5 * rate}))
        rows.append({"id": f"g{i:04d}", "speaker": f"spk{i % 8}"})
    return LayerStore.from_tensors(hs, downsample_rates=[rate] * num_layer,
                                   labels=pd.DataFrame(rows), phones=phones)


def real_store(n_utt: int, cache: str, device=None):
    """Random-weight HuBERT base on the synthetic corpus, cached on disk (or None);
    extracted on ``device`` (None: the CPU)."""
    try:
        import s3viz
        from s3viz.data import synthetic_corpus
        from s3viz.upstreams import torchaudio_upstream
    except ImportError as e:
        print(f"(s3viz.data / s3viz.upstreams unavailable: {e}; using Gaussian features)")
        return None, "gaussian"
    corpus = synthetic_corpus(n_utt, seed=0, cache_dir=cache)
    up = torchaudio_upstream("hubert_base", pretrained=False)
    t = time.perf_counter()
    store = s3viz.extract(up, corpus, cache_dir=cache, progress=False, device=device)
    took = time.perf_counter() - t
    if took > 5:
        print(f"(extracted {len(corpus)} utterances in {took:.0f} s; cached in {cache})")
    return store, f"random-weight hubert_base on {n_utt} synthesized utterances"


def sklearn_probe(store, layers, folds_df, fold_ids, target="phone", max_iter=100):
    """StandardScaler + LogisticRegression(max_iter=...) per layer and fold: accuracy per
    (layer, fold), seconds per fit and how many fits converged."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    fold_of_utt = folds_df.set_index("utterance")["fold"]
    acc, fit_times, converged = {}, [], 0
    for layer in layers:
        x, utt = store.layer(layer)
        lab = store.frame_labels(layer, column=target)
        keep = lab != ""
        x, lab, utt = x.numpy()[keep], lab[keep].astype(str), utt.numpy()[keep]
        fold = fold_of_utt.reindex(utt).to_numpy()
        for k in fold_ids:
            tr, te = fold != k, fold == k
            scaler = StandardScaler().fit(x[tr])
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(max_iter=max_iter).fit(scaler.transform(x[tr]), lab[tr])
            fit_times.append(time.perf_counter() - t)
            converged += int(np.max(clf.n_iter_) < max_iter)
            acc[(layer, k)] = float((clf.predict(scaler.transform(x[te])) == lab[te]).mean())
    return acc, float(np.mean(fit_times)), converged


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="scikit-learn on 2 layers and fold 0 only, time extrapolated")
    ap.add_argument("--utterances", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads for both sides (default 1: fair and "
                         "stable on a shared machine)")
    ap.add_argument("--cache", default=os.environ.get("S3VIZ_BENCH_CACHE",
                                                      "/tmp/s3viz_bench_cache"))
    ap.add_argument("--gaussian", action="store_true", help="Gaussian features, no upstream")
    ap.add_argument("--sk-max-iter", type=int, default=3000,
                    help="scikit-learn's iteration limit (its default, 100, stops "
                         "before the optimum, which would compare different models)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here")
    store, what = ((None, "gaussian") if args.gaussian
                   else real_store(args.utterances, args.cache, device=args.device))
    if store is None:
        store = gaussian_store()
        what = "Gaussian class-structured features"
    L = store.num_layer
    folds = 5
    lab0 = store.frame_labels(0)
    n_lab = int((lab0 != "").sum())
    print(f"features: {what}: {L} layers x {store.hidden_sizes[0]} dims, {n_lab} labelled "
          f"frames, {len(set(lab0) - {''})} phone classes, {folds} speaker-grouped folds, "
          f"device {args.device}, {args.threads} thread(s)")

    sk_layers = [L // 2, L - 1] if args.quick else list(range(L))
    t = time.perf_counter()
    lbfgs = probe_layers(store, "phone", method=LogisticOptions(dev_fraction=0), folds=folds,
                         layers=sk_layers, device=args.device)
    t_lbfgs = (time.perf_counter() - t) / (len(sk_layers) * folds)
    print(f"s3viz logistic probe without early stopping (dev_fraction=0, L-BFGS to the "
          f"optimum), layers {sk_layers} x {folds} folds: {t_lbfgs:.1f} s per layer and fold")

    folds_df = probe_folds(store, folds=folds, split_by="speaker", seed=0)
    fold_ids = [0] if args.quick else list(range(folds))
    acc, per_fit, converged = sklearn_probe(store, sk_layers, folds_df, fold_ids,
                                            max_iter=args.sk_max_iter)
    print(f"scikit-learn LogisticRegression(max_iter={args.sk_max_iter}): {per_fit:.1f} s per "
          f"fit on layers {sk_layers} x folds {fold_ids}; {converged} of "
          f"{len(sk_layers) * len(fold_ids)} fits converged")

    fa = lbfgs.attrs["fold_accuracy"]
    diffs = [100 * (np.mean([fa[("phone", "logistic", layer)][k] for k in fold_ids])
                    - np.mean([acc[(layer, k)] for k in fold_ids])) for layer in sk_layers]
    print(f"\nRESULT logistic (same penalised optimum): {per_fit / t_lbfgs:.2f}x scikit-learn's "
          f"speed per fit; accuracy differences {[round(d, 2) for d in diffs]} points "
          f"(target <= 0.5; only meaningful where scikit-learn converged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
