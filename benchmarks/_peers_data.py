"""The frames every section of ``bench_peers.py`` measures on, built once and cached.

A random-weight HuBERT base (torchaudio's architecture, seeded) over ``n``
synthesized utterances (``s3viz.data.synthetic_corpus``: 8 speakers, phone
alignments), extracted into a disk :class:`~s3viz.store.LayerStore` under the cache
folder (``S3VIZ_BENCH_CACHE``); a later call with the same ``n`` reopens it. Sections read the frames
(``store.layer(i)``), the per-frame phones (``store.frame_labels(i)``), the
speakers (``store.labels``) and the phone items (``s3viz.segment_table``) from it,
so s3viz and each peer see the same numbers.

    .venv/bin/python benchmarks/_peers_data.py 120 480   # build (about 5x real time)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

DEFAULT_CACHE = Path(os.environ.get("S3VIZ_BENCH_CACHE", Path.home() / ".cache" / "s3viz-bench"))


def store(n_utt: int, cache: str | os.PathLike | None = None):
    """The cached store of ``n_utt`` utterances (built on first use, on the CPU)."""
    import s3viz
    from s3viz.data import synthetic_corpus
    from s3viz.upstreams import torchaudio_upstream

    root = Path(cache or DEFAULT_CACHE)
    corpus = synthetic_corpus(n_utt, seed=0, cache_dir=root)
    torch.manual_seed(0)
    up = torchaudio_upstream("hubert_base", pretrained=False)
    # a finished extraction under the same fingerprint is reused (docs/cache.md)
    return s3viz.extract(up, corpus, cache_dir=root, progress=False, device="cpu")

def describe(st) -> str:
    """One line: utterances, frames, layers, hidden size, phone classes, speakers."""
    lab = st.frame_labels(0)
    return (f"{len(st)} utterances, {int(st.layer(0)[0].shape[0])} frames x "
            f"{st.num_layer} layers x {st.hidden_sizes[0]} dims, "
            f"{len(set(lab[lab != '']))} phone classes, "
            f"{st.labels['speaker'].nunique()} speakers")


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [120, 480]:
        s = store(n)
        print(n, describe(s), flush=True)
