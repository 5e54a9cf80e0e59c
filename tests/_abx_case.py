"""A small, fixed ABX case: a LayerStore of made-up frames with phone alignments.

Deterministic on every machine (numpy's PCG64): 3 speakers x 4 utterances, phones
from a 4-phone inventory, sometimes between silences, 1 to 6 frames each at 320 samples per
frame, frames = phone mean + speaker offset + noise (so the ABX error is neither 0
nor chance). Two layers: the frames, and the frames with the phone signal halved.

fastabx's scores of the same items (the constants of tests/test_abx.py) come from

    .venv/bin/python tests/_abx_case.py write DIR       # item files and .pt features
    VENV312/bin/python tests/_abx_case.py score DIR     # Python >= 3.12, fastabx installed

(``VENV312``: ``make bench-peers`` makes ``build/peers-venv312`` with fastabx 0.9.0.)
"""

from __future__ import annotations

import numpy as np
import torch

RATE = 320
PHONES = ["a", "i", "s", "t"]
SPEAKERS = ["spkA", "spkB", "spkC"]


def case():
    """``(hidden_states, phones, labels)`` for ``LayerStore.from_tensors`` (2 layers, dim 6)."""
    import pandas as pd

    rng = np.random.default_rng(20261201)
    means = rng.standard_normal((len(PHONES), 6)) * 1.2
    hidden, tables, ids, spks = [], [], [], []
    for spk in SPEAKERS:
        offset = rng.standard_normal(6) * 0.8
        for u in range(4):
            frames, rows, t = [], [], 0
            for k in range(7):
                gap = int(rng.integers(0, 3))  # silence frames before the phone (often none)
                if gap:
                    rows.append(("sil", "", t * RATE, (t + gap) * RATE))
                    frames.append(rng.standard_normal((gap, 6)) * 0.3)
                    t += gap
                p = int(rng.integers(len(PHONES)))
                n = int(rng.integers(1, 7))
                rows.append((PHONES[p], f"w{k}", t * RATE, (t + n) * RATE))
                frames.append(means[p] + offset + rng.standard_normal((n, 6)) * 0.9)
                t += n
            rows.append(("sil", "", t * RATE, (t + 1) * RATE))
            frames.append(rng.standard_normal((1, 6)) * 0.3)
            x = torch.tensor(np.concatenate(frames), dtype=torch.float32)
            half = x.clone()
            hidden.append([x, half * 0.5 + 0.5 * torch.tensor(offset, dtype=torch.float32)])
            tables.append(pd.DataFrame(rows, columns=["phone", "word", "start", "end"]))
            ids.append(f"{spk}_u{u}")
            spks.append(spk)
    labels = pd.DataFrame({"id": ids, "speaker": spks})
    return hidden, tables, labels


def store():
    from s3viz.store import LayerStore

    hidden, tables, labels = case()
    return LayerStore.from_tensors(hidden, downsample_rates=[RATE, RATE], labels=labels,
                                   phones=tables)


def write_fastabx_inputs(folder, layer: int) -> str:
    """The item file (frames at 50 Hz, centred onsets) and one .pt per utterance of ``layer``."""
    import os

    from s3viz.segments import segment_table

    st = store()
    table = segment_table(st, layer)
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for r in table.itertuples():
        # fastabx takes frames ceil(on * 50 - 1/2) .. floor(off * 50 - 1/2): exactly ours
        on = (r.frame_start + 0.5) / 50
        off = (r.frame_end - 0.5) / 50
        lines.append(f"{r.id} {on:.2f} {off:.2f} {r.label} {r.prev} {r.next} {r.speaker}")
    feats = os.path.join(folder, f"layer{layer}")
    os.makedirs(feats, exist_ok=True)
    for i, uid in enumerate(st.ids):
        torch.save(st.utterance(i)[layer].clone(), os.path.join(feats, f"{uid}.pt"))
    item = os.path.join(folder, f"layer{layer}.item")
    with open(item, "w") as f:
        f.write("\n".join(lines) + "\n")
    return item


def score_with_fastabx(folder) -> None:
    """Print fastabx's scores of the items written by :func:`write_fastabx_inputs`."""
    from fastabx import zerospeech_abx

    for layer in (0, 1):
        item = f"{folder}/layer{layer}.item"
        for spk in ("within", "across"):
            for ctx in ("any", "within"):
                for dist in ("angular", "euclidean"):
                    kw = {"max_x_across": None} if spk == "across" else {}
                    v = zerospeech_abx(item, f"{folder}/layer{layer}", max_size_group=None,
                                       speaker=spk, context=ctx, distance=dist, frequency=50,
                                       **kw)
                    print(f"    ({layer}, {spk!r}, {ctx!r}, {dist!r}): {v!r},")


# (on, by, across) asked of fastabx's Task beyond zerospeech_abx's four (tests/test_abx.py)
TASKS = [("speaker", ("phone",), ()), ("speaker", (), ()), ("word", ("speaker",), ()),
         ("phone", ("word",), ("speaker",)), ("speaker", ("phone", "context"), ())]


def write_task_items(folder) -> None:
    """Phone and word item files with every label (``phone``, ``word``, ``speaker``,
    ``context``) for fastabx's ``Task``; features as :func:`write_fastabx_inputs`."""
    import os

    from s3viz.segments import segment_table

    st = store()
    for tier in ("phone", "word"):
        table = segment_table(st, 0, tier)
        lines = ["#file onset offset phone word speaker context"]
        for r in table.itertuples():
            on, off = (r.frame_start + 0.5) / 50, (r.frame_end - 0.5) / 50
            word = r.word if tier == "phone" else r.label
            phone = r.label if tier == "phone" else "-"
            lines.append(f"{r.id} {on:.2f} {off:.2f} {phone} {word} {r.speaker} "
                         f"{r.prev}|{r.next}")
        with open(os.path.join(folder, f"task_{tier}.item"), "w") as f:
            f.write("\n".join(lines) + "\n")


def score_tasks_with_fastabx(folder) -> None:
    """Print fastabx's scores of :data:`TASKS` (levels: the by labels from the last, then
    the across labels, s3viz's collapse)."""
    from fastabx import Dataset, Score, Task

    for layer in (0, 1):
        for on, by, across in TASKS:
            tier = next((n for n in (on, *by, *across) if n in ("phone", "word")), "phone")
            for dist in ("angular", "euclidean"):
                ds = Dataset.from_item(f"{folder}/task_{tier}.item", f"{folder}/layer{layer}", 50)
                task = Task(ds, on=on, by=list(by) or None, across=list(across) or None)
                levels = [n for n in reversed(by)] + ([tuple(across)] if across else [])
                v = Score(task, dist).collapse(levels=levels or None)
                print(f"    ({layer}, {on!r}, {by!r}, {across!r}, {dist!r}): {v!r},")


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "write":  # in s3viz's venv
        for layer in (0, 1):
            write_fastabx_inputs(sys.argv[2], layer)
        write_task_items(sys.argv[2])
    else:  # "score", in a Python >= 3.12 venv with fastabx
        score_with_fastabx(sys.argv[2])
        score_tasks_with_fastabx(sys.argv[2])
