"""ABX against fastabx 0.9.0: within speaker, any context, cosine (fastabx's "angular").

Both sides score the phone items of ``store(n)`` (``s3viz.segment_table``) in
layers 0, 6 and 12 with every item kept (fastabx: ``max_size_group=None``,
``max_x_across=None``, ``frequency=50``). s3viz runs ``abx_layers`` on the
store; fastabx runs ``zerospeech_abx`` per layer on what it documents as its
input: one ``.pt`` of frames per utterance and an item file whose onsets are
the frames' centres (``tests/_abx_case.py``'s mapping, so it takes exactly the
frames s3viz takes). fastabx needs Python 3.12 and s3viz 3.11, so those files
are written, untimed, by the s3viz interpreter (``python abx.py prepare N``,
which the fastabx case starts itself when they are missing) into the bench cache.
Both sides' timings include reading the frames from disk. ``agree``: per layer
the largest |abx_error difference|.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NAME = "abx"
LAYERS = (0, 6, 12)
TASK = "abx within/any/cosine, layers 0,6,12"
FASTABX_PYTHON = os.environ.get("S3VIZ_PEERS312", "/tmp/peers312/bin/python")


def _folder(n: int) -> Path:
    from_env = os.environ.get("S3VIZ_BENCH_CACHE", Path.home() / ".cache" / "s3viz-bench")
    return Path(from_env) / f"fastabx-inputs-{n}"


def cases(sizes):
    out = []
    for n in sizes:
        out.append({"task": TASK, "size": n, "side": "s3viz"})
        # fastabx at the larger sizes takes many times s3viz's time: run once there
        out.append({"task": TASK, "size": n, "side": "fastabx", "python": FASTABX_PYTHON,
                    "prepare_python": sys.executable, "once": n > min(sizes)})
    return out


def prepare(n: int) -> Path:
    """Write fastabx's inputs for ``store(n)`` (s3viz's interpreter): item file + .pt files."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import _peers_data
    import torch

    from s3viz.segments import segment_table

    st = _peers_data.store(n)
    folder = _folder(n)
    table = segment_table(st, LAYERS[0])
    for layer in LAYERS[1:]:  # one frame rate: every layer has the same items
        other = segment_table(st, layer)
        assert other[["id", "frame_start", "frame_end"]].equals(
            table[["id", "frame_start", "frame_end"]])
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for r in table.itertuples():
        # fastabx takes frames ceil(on * 50 - 1/2) .. floor(off * 50 - 1/2): exactly ours
        lines.append(f"{r.id} {(r.frame_start + 0.5) / 50:.2f} {(r.frame_end - 0.5) / 50:.2f} "
                     f"{r.label} {r.prev} {r.next} {r.speaker}")
    for layer in LAYERS:
        feats = folder / f"layer{layer}"
        feats.mkdir(parents=True, exist_ok=True)
        for i, uid in enumerate(st.ids):
            torch.save(st.utterance(i)[layer].float().clone(), feats / f"{uid}.pt")
    (folder / "phones.item").write_text("\n".join(lines) + "\n")
    (folder / "done").write_text("ok\n")
    return folder


def run(case: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _run import measured

    n, out = case["size"], {}
    if case["side"] == "s3viz":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import _peers_data

        import s3viz

        st = _peers_data.store(n)
        with measured(out):
            res = s3viz.abx_layers(st, layers=list(LAYERS), device="cpu", max_items=None)
        out["abx_error"] = [float(v) for v in res["abx_error"]]
        return out
    folder = _folder(n)
    if not (folder / "done").exists():
        subprocess.run([case["prepare_python"], __file__, "prepare", str(n)], check=True)
    from fastabx import zerospeech_abx

    with measured(out):
        errs = [zerospeech_abx(folder / "phones.item", folder / f"layer{layer}",
                               max_size_group=None, speaker="within", context="any",
                               distance="angular", frequency=50, progress=False)
                for layer in LAYERS]
    out["abx_error"] = [float(v) for v in errs]
    return out


def agree(results) -> dict:
    ref = {c["size"]: r["abx_error"] for c, r in results if c["side"] == "s3viz"}
    out = {}
    for c, r in results:
        if c["side"] != "s3viz" and c["size"] in ref:
            out[f"{c['task']} n={c['size']} {c['side']}"] = {
                "max_abs_error_diff": max(abs(a - b) for a, b in zip(ref[c["size"]],
                                                                      r["abx_error"])),
                "per_layer": {f"layer{k}": abs(a - b) for k, a, b in
                              zip(LAYERS, ref[c["size"]], r["abx_error"])}}
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["prepare"]:
    print(prepare(int(sys.argv[2])))
