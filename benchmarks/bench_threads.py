"""torch's default threads against one thread, on a quiet and on a loaded CPU.

A shared classroom server is a loaded machine: a kernel that starts one torch
thread per core then competes with every other student's kernel. This script
times the same small analyses (a ridge phone probe, CKA, a featurizer
score) with torch's default thread count and with one thread, first with the
CPU quiet, then with ``--load`` busy processes running beside them, and prints
the ratios. It is what :func:`s3viz.classroom_threads` decides from.

    .venv/bin/python benchmarks/bench_threads.py [--quick] [--load 6]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _busy(stop):
    x = 0
    while not stop.is_set():
        for i in range(100000):
            x += i * i


def _work(threads: int, store) -> float:
    import torch

    import s3viz

    torch.set_num_threads(threads)
    t = time.perf_counter()
    s3viz.probe_layers(store, "phone", device="cpu", folds=3)
    s3viz.layer_similarity(store, device="cpu")
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 utterances, one repeat")
    ap.add_argument("--load", type=int, default=6, help="busy processes for the loaded runs")
    a = ap.parse_args(argv)
    import torch

    import s3viz
    from s3viz.data import synthetic_corpus
    from s3viz.upstreams import get_upstream

    default = torch.get_num_threads()
    store = s3viz.extract(get_upstream("tiny", pretrained=False),
                          synthetic_corpus(8 if a.quick else 24), progress=False)
    reps = 1 if a.quick else 3
    _work(1, store)  # warm up
    res = {}
    for label, load in (("quiet", 0), (f"load {a.load}", a.load)):
        stop = mp.Event()
        procs = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(load)]
        for p in procs:
            p.start()
        time.sleep(1.0 if load else 0.0)
        try:
            for threads in (default, 1):
                res[(label, threads)] = min(_work(threads, store) for _ in range(reps))
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=5)
        print(f"{label:>8} (load average {os.getloadavg()[0]:.1f}): "
              f"{default} threads {res[(label, default)]:.2f} s, "
              f"1 thread {res[(label, 1)]:.2f} s")
    quiet = res[("quiet", default)] / res[("quiet", 1)]
    loaded = res[(f"load {a.load}", default)] / res[(f"load {a.load}", 1)]
    print(f"RESULT threads: default ({default}) / one thread = {quiet:.2f}x quiet, "
          f"{loaded:.2f}x under load {a.load} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
