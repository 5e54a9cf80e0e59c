"""Sharded extraction and analysis: ``python -m s3viz.run`` (one process) or ``torchrun``.

Each rank streams its shard of the corpus through the ``--measures`` (one driver,
:func:`s3viz.stream.stream_analysis`) with their state all-reduced over ranks, so every rank
gets the single-process tables while holding a batch of frames at a time. Usage, outputs
and memory: ``docs/streaming.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import warnings
from pathlib import Path

import torch

from ._device import resolve_device
from ._fs import FolderBusyError, OwnedFolder
from .measures import MEASURES

__all__ = ["main", "parse_args", "run"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m s3viz.run", description=__doc__.split("\n")[0],
                                epilog="Flags, outputs and memory: docs/streaming.md")
    p.add_argument("--upstream", default="tiny",
                   help="tiny (default, offline), spectral, a pretrained model name "
                        "(docs/upstreams.md), hf:<repository id>, or a save_pretrained folder")
    p.add_argument("--random-weights", action="store_true",
                   help="the same architecture with random weights (seed 0), the control for "
                        "what training added (not for spectral)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", default=None, help="synthetic:N (default synthetic:24)")
    src.add_argument("--folder", default=None, help="folder of audio files (s3viz.data.load_folder)")
    p.add_argument("--labels", default=None, help="labels CSV for --folder")
    p.add_argument("--pattern", action="append", default=None,
                   help="for --folder: glob of the audio files (repeatable; default: all)")
    p.add_argument("--alignments", default=None,
                   help="for --folder: a folder of TextGrids, 'sibling', or a CSV/TSV of segments")
    p.add_argument("--alignment-pattern", action="append", default=None, metavar="PATTERN",
                   help="for --alignments: each file's TextGrid relative to it, with {parent}, "
                        "{stem}, {name} (repeatable: tried in order)")
    p.add_argument("--phone-tier", default=None,
                   help="TextGrid phone tier, or comma-separated candidates (default: by name)")
    p.add_argument("--word-tier", default=None,
                   help="TextGrid word tier, or candidates separated by commas (default: by name)")
    p.add_argument("--silence", default=None,
                   help="the aligner's silence marks, separated by commas ('#,sil,<p:>')")
    p.add_argument("--no-strict", dest="strict", action="store_false",
                   help="for --folder: leave out (and list) every file that does not fit")
    p.add_argument("--phone-map", default=None, choices=["timit39"],
                   help="fold the phone labels (timit39: TIMIT's 61 labels to 39)")
    p.add_argument("--measures", nargs="+", default=["probe"], choices=sorted(MEASURES),
                   help="what to compute over every layer (default: probe; docs/measures.md)")
    p.add_argument("--targets", nargs="*", default=["phone"], help="probe targets")
    p.add_argument("--methods", nargs="+", default=["ridge"], choices=["ridge", "logistic"],
                   help="probe methods; logistic (L-BFGS) needs --store-frames")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--split-by", default="auto", choices=["auto", "speaker", "utterance"],
                   help="auto (default): by speaker when the labels allow it, else by utterance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cka-level", default=None, choices=["frame", "utterance"],
                   help="default: frame when the layers share one frame rate, else utterance")
    p.add_argument("--units-k", type=int, nargs="+", default=None, metavar="K",
                   help="for --measures units: k-means clusters (default 100; a row each)")
    p.add_argument("--units-max-frames", type=int, default=None, metavar="N",
                   help="for --measures units: frames k-means is fitted on (default 50000)")
    p.add_argument("--abx-on", default=None, metavar="LABEL",
                   help="for --measures abx: what A and X share and B does not: phone, word, "
                        "speaker, context or a labels column (default: phone)")
    p.add_argument("--abx-by", default=None, metavar="LABELS",
                   help="for --measures abx: comma-separated labels A, B and X share (default: "
                        "speaker, unless the speaker is --abx-on or --abx-across; '' for none)")
    p.add_argument("--abx-across", default=None, metavar="LABELS",
                   help="for --measures abx: comma-separated labels X differs in from A and B")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="upstream layers to use")
    p.add_argument("--batch-size", type=int, default=None, help="utterances per batch at most")
    p.add_argument("--max-batch-seconds", type=float, default=60.0,
                   help="padded audio seconds per batch at most (bounds the memory per batch)")
    p.add_argument("--store-frames", default=None, metavar="DIR",
                   help="keep each rank's frames on disk under DIR/rank-<k> (a LayerStore)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (each rank takes cuda:<local rank>; default: cuda if any)")
    p.add_argument("--out", required=True, help="output folder (written by rank 0)")
    p.add_argument("--no-figures", action="store_true")
    args = p.parse_args(argv)

    def flag(name):
        return "--" + name.replace("_", "-")

    aligning = [f for f in ("alignments", "alignment_pattern", "phone_tier", "word_tier",
                            "phone_map", "silence") if getattr(args, f) is not None]
    foldered = [f for f in ("labels", "pattern") if getattr(args, f)] + aligning
    if foldered and not args.folder:
        p.error(f"{flag(foldered[0])} needs --folder")
    if aligning and args.alignments is None:
        p.error(f"{flag(aligning[0])} needs --alignments")
    for m in ("probe", "segments"):
        if m in args.measures and not args.targets:
            p.error(f"--measures {m} needs --targets (the labels to probe)")
    for name in ("out", "store_frames"):  # now, not after the run
        value = getattr(args, name)
        if value is not None and (path := Path(value).expanduser()).exists() and not path.is_dir():
            p.error(f"{flag(name)} {value!r} is a file; give a folder (created when missing)")
    if args.folder is not None and not Path(args.folder).expanduser().is_dir():
        p.error(f"--folder {args.folder!r} is not a folder of audio files")
    for name, measure, default in (("units_k", "units", [100]), ("cka_level", "cka", None),
                                   ("units_max_frames", "units", 50000),
                                   ("abx_on", "abx", "phone"), ("abx_by", "abx", None),
                                   ("abx_across", "abx", None)):
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif measure not in args.measures:
            p.error(f"{flag(name)} needs --measures {measure}")
    if args.random_weights and args.upstream.strip().lower() == "spectral":
        p.error("--random-weights: spectral has no learned weights, so it has no random-weights "
                "control (it is itself the baseline); leave --random-weights out")
    if args.methods != ["ridge"] and "probe" not in args.measures:
        p.error("--methods chooses the probes: it needs --measures probe")
    if "logistic" in args.methods and not args.store_frames:
        p.error("--methods logistic needs --store-frames DIR: a logistic probe takes many "
                "passes over the frames, so each rank keeps its shard's frames on disk")
    return args


def _labels_arg(value):
    """``--abx-by``/``--abx-across``: None (not given), or the comma-separated labels."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _corpus(args):
    from . import data

    if args.folder:
        # lazy: each rank reads only its shard's audio (the small alignment tables now)
        def tiers(value):
            return None if value is None else [t.strip() for t in value.split(",") if t.strip()]

        corpus = data.load_folder(
            args.folder, labels_csv=args.labels, pattern=args.pattern, lazy=True,
            alignments=args.alignments, alignment_pattern=args.alignment_pattern,
            phone_tier=tiers(args.phone_tier), word_tier=tiers(args.word_tier),
            phone_map=args.phone_map, silence=args.silence, strict=args.strict)
        skipped = getattr(corpus, "skipped", None)
        if skipped is not None and len(skipped):
            print(f"s3viz.run: --no-strict left out {len(skipped)} file(s):\n"
                  + skipped.to_string(index=False), file=sys.stderr)
        return corpus
    spec = args.corpus or "synthetic:24"
    name, _, n = spec.partition(":")
    if name != "synthetic" or not n.isdigit() or int(n) < 1:
        raise ValueError(f"--corpus must be synthetic:N with N >= 1, got {spec!r}")
    return data.synthetic_corpus(n_utterances=int(n), seed=args.seed)


def _init(device_arg):
    """Initialise the process group from the torchrun environment; return (rank, world, device)."""
    import torch.distributed as dist

    from .distributed import env_world

    rank, world, local = env_world()
    bad = f"--device must be cpu, cuda or cuda:N, got {device_arg!r}"
    try:
        asked = None if device_arg is None else torch.device(device_arg)
    except RuntimeError as e:
        raise ValueError(bad) from e
    if asked is not None and asked.type not in ("cpu", "cuda"):
        raise ValueError(bad)
    if asked is not None and asked.type == "cuda" and asked.index is not None and world > 1:
        raise ValueError(f"--device {device_arg} would put all {world} ranks on one GPU "
                         "(nccl refuses that); give --device cuda and each rank takes "
                         "cuda:<local rank>")
    try:
        device = resolve_device(asked)
    except ValueError as e:
        raise ValueError(f"--device {device_arg}: {e}") from e
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local}")  # each rank its own GPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def run(args) -> dict:
    """Stream this rank's shard through ``args.measures``; rank 0 writes ``args.out``.

    Works inside an initialised process group (any backend) or without one (one process).
    Returns on every rank the merged table of each measure by its ``--measures`` name, this
    rank's LayerStore (``"store"``: None unless ``--store-frames``) and its utterance
    positions (``"shard"``).

    Args:
        args: the parsed command line (:func:`parse_args`).
    """
    import numpy as np

    from .distributed import all_reduce_sum, dist_info, shard_indices
    from .measures import ABX, LayerCKA, RidgeProbe, SegmentProbe, UnitQuality
    from .stream import stream_analysis
    from .upstreams import get_upstream, weights_of

    rank, world, _ = dist_info()
    device = resolve_device(args.device or None)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{torch.cuda.current_device()}")
    t0 = time.perf_counter()
    corpus = _corpus(args)
    upstream = get_upstream(args.upstream, pretrained=not args.random_weights)
    rates = list(upstream.downsample_rates)
    if args.layers:  # refused before any extraction, with the range that exists
        bad = [i for i in args.layers if not -len(rates) <= i < len(rates)]
        if bad:
            raise ValueError(f"--layers {' '.join(map(str, bad))}: {args.upstream} has "
                             f"{len(rates)} hidden states (0..{len(rates) - 1}, or negative "
                             "from the end)")
    cka_level = _cka_level(args, rates)
    setup_rss = _status_mb("VmRSS")  # corpus and model loaded: the analysis adds the rest
    _reset_peak_rss()
    # balanced by audio length (extraction time), deterministic by utterance id
    if len(corpus) < world:  # every rank sees this, so all stop (none waits in all_reduce)
        raise ValueError(f"{len(corpus)} utterances for {world} processes: some would get no "
                         "utterance; use fewer processes or a larger corpus")
    shard = shard_indices(corpus.ids, rank, world,
                          utterance_weights=np.array([u.num_samples for u in corpus]))
    cache = None
    if args.store_frames:
        cache = OwnedFolder(args.store_frames, "--store-frames").sub(f"rank-{rank}").folder
    # speaker identity cannot be split by speaker ("auto" knows; an explicit "speaker" is
    # meant for the other targets, and the log says so)
    splits = {t: ("utterance" if t == "speaker" and args.split_by == "speaker"
                  else args.split_by) for t in args.targets}
    if "speaker" in args.targets and args.split_by == "speaker" and rank == 0:
        print("s3viz.run: --split-by speaker applies to the other targets; the speaker target "
              "is split by utterance (a test speaker must occur in training)", file=sys.stderr)
    names = list(args.measures)
    methods = list(args.methods) if "probe" in names else []
    if "probe" in names or "segments" in names:  # refused now, not after extraction
        from .stream import check_targets

        levels = check_targets(corpus, args.targets, splits, args.folds, args.seed)
        labels = [t for t in args.targets if levels[t] == "utterance"]
        if "segments" in names and labels:
            raise ValueError(f"--measures segments: {labels} are utterance labels, not columns "
                             "of the alignments (segments are phones or words); probe them "
                             "with --measures probe")
    probing = dict(folds=args.folds, split_by=splits, seed=args.seed)
    build = {"probe": lambda: RidgeProbe(args.targets, **probing),
             "segments": lambda: SegmentProbe(args.targets, **probing),
             "cka": lambda: LayerCKA(cka_level),
             "units": lambda: UnitQuality(args.units_k, max_frames=args.units_max_frames,
                                          seed=args.seed),
             "abx": lambda: ABX(on=args.abx_on, by=_labels_arg(args.abx_by),
                                across=_labels_arg(args.abx_across), seed=args.seed)}
    measures = [build[n]() for n in _OUTPUTS
                if n in names and (n != "probe" or "ridge" in methods)]
    if rank == 0:  # every check passed: the earlier run's results go only now
        _clear_results(args.out)
    batching = dict(batch_size=args.batch_size, max_batch_seconds=args.max_batch_seconds)
    if measures:
        res = stream_analysis(upstream, corpus, measures, upstream_layers=args.layers,
                              shard=shard, reduce=all_reduce_sum, device=device,
                              cache_dir=cache, **batching)
        tables, store, passes = dict(res.tables), res.store, res.passes
    else:  # logistic only: the shard's frames go to disk once
        from .extraction import extract

        store = extract(upstream, corpus[shard], upstream_layers=args.layers, device=device,
                        cache_dir=cache, progress=False, **batching)
        tables, passes = {}, 0
    if "logistic" in methods:
        import pandas as pd

        from .distributed import Sharding
        from .probe import LogisticOptions, probe_layers

        sharding = Sharding.of(corpus, store, shard, reduce=all_reduce_sum)
        probes = pd.concat([tables.get("probe")] + [
            probe_layers(store, t, method=LogisticOptions(dev_fraction=0), folds=args.folds,
                         split_by=splits[t], seed=args.seed, device=device, sharding=sharding)
            for t in args.targets], ignore_index=True)
        probes.attrs["weights"] = weights_of(upstream)  # concat keeps only equal attrs
        tables["probe"] = probes
    t_total = time.perf_counter() - t0
    OwnedFolder(args.out, "--out").write_text(f"rank-{rank}.json", json.dumps({
        "rank": rank, "utterances": len(shard),
        "audio_seconds": float(sum(corpus[i].num_samples for i in shard)) / 16000.0,
        "upstream_passes": passes, "total_seconds": t_total,
        "setup_rss_mb": setup_rss, "analysis_peak_rss_mb": _status_mb("VmHWM"),
        "peak_rss_mb": _peak_rss_mb()}, indent=2))
    if rank == 0:
        _write(args, tables, {
            "world_size": world, "utterances": len(corpus), "upstream": args.upstream,
            "weights": weights_of(upstream), "measures": names,
            "upstream_passes_rank0": passes, "total_seconds_rank0": t_total,
            "store_frames": str(args.store_frames) if args.store_frames else None,
            "cka_level": tables["cka"].attrs.get("level") if "cka" in tables else None,
        })
    return dict(tables, store=store, shard=shard)


# each measure's table, figure and its title in --out, in the order a run builds them
_OUTPUTS = {"probe": ("probes.csv", "probe_curve.png", "probes by layer"),
            "segments": ("segments.csv", "segment_curve.png", "segment probes"),
            "cka": ("cka.csv", "cka.png", "layer similarity"),
            "units": ("units.csv", "units.png", "units by layer"),
            "abx": ("abx.csv", "abx.png", "ABX by layer")}
RESULT_FILES = tuple(f for csv, png, _ in _OUTPUTS.values() for f in (csv, png)) + ("run.json",)
"""What a run writes into ``--out`` besides ``rank-<k>.json``."""


def _clear_results(out_arg) -> None:
    """Remove the files an earlier run wrote into ``--out`` (listed in its ``run.json``, and
    only names a run writes), so the folder never mixes two runs; the rest is the user's."""
    out = OwnedFolder(out_arg, "--out")
    try:
        earlier = json.loads(out.read_bytes("run.json")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return  # no earlier run of s3viz here (or not one it can read): nothing to remove
    for name in earlier:
        if isinstance(name, str) and (name in RESULT_FILES or re.fullmatch(r"rank-\d+\.json",
                                                                            name)):
            out.unlink(name)


def _cka_level(args, rates) -> str | None:
    """The CKA level: frame when the chosen layers share a frame rate (frames of different
    rates cannot be paired), else utterance; an explicit frame level there is refused."""
    if "cka" not in args.measures:
        return args.cka_level or "frame"  # unused without --measures cka
    picked = sorted({rates[i] for i in (args.layers if args.layers else range(len(rates)))})
    if len(picked) == 1:
        return args.cka_level or "frame"
    if args.cka_level == "frame":
        raise ValueError(f"--cka-level frame: the chosen layers have different frame rates "
                         f"(downsample rates {picked}), so their frames cannot be paired; pick "
                         "layers of one rate with --layers, or use --cka-level utterance")
    if args.cka_level is None:
        print(f"s3viz.run: CKA at utterance level (the layers' downsample rates differ: "
              f"{picked})", file=sys.stderr)
    return "utterance"


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss: KiB on Linux)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2 ** 20


def _status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB (Linux; else None)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def _reset_peak_rss() -> None:
    """Restart the peak count (VmHWM) from now, so it is the analysis's (Linux >= 4.0)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _write(args, tables: dict, meta: dict) -> None:
    out = OwnedFolder(args.out, "--out")
    made = [n for n in _OUTPUTS if n in tables]
    files = [_OUTPUTS[n][0] for n in made] + ([] if args.no_figures
                                              else [_OUTPUTS[n][1] for n in made])
    meta = dict(meta, files=files + ["run.json"]
                + [f"rank-{k}.json" for k in range(meta["world_size"])])
    for name, df in tables.items():  # the weights travel with the rows, beyond run.json
        table = df if name == "cka" else df.assign(weights=meta["weights"])
        out.write_with(_OUTPUTS[name][0], lambda f, t=table, n=name: t.to_csv(
            f, index=n == "cka"), text=True)
    out.write_text("run.json", json.dumps(meta, indent=2))
    if args.no_figures:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plot
    from .upstreams import is_random_weights

    model = meta["upstream"] + (", random weights" if is_random_weights(meta["weights"]) else "")
    draw = {"cka": plot.similarity, "units": plot.unit_quality, "abx": plot.abx_curve}
    for key, df in tables.items():
        ax = draw.get(key, plot.probe_curve)(df, title=f"{model}: {_OUTPUTS[key][2]}")
        out.write_with(_OUTPUTS[key][1], lambda f, ax=ax: ax.figure.savefig(
            f, dpi=120, bbox_inches="tight", format="png"))
        plt.close(ax.figure)


FLAGS = {"split_by": "--split-by", "folds": "--folds", "upstream_layers": "--layers",
         "layers": "--layers", "cka_level": "--cka-level", "batch_size": "--batch-size",
         "max_batch_seconds": "--max-batch-seconds", "target": "--targets",
         "targets": "--targets", "methods": "--methods", "method": "--methods",
         "labels_csv": "--labels", "alignments": "--alignments",
         "alignment_pattern": "--alignment-pattern", "phone_tier": "--phone-tier",
         "word_tier": "--word-tier", "silence": "--silence", "seed": "--seed",
         "cache_dir": "--store-frames", "measures": "--measures", "strict": "--no-strict",
         "store_frames": "--store-frames", "on": "--abx-on", "by": "--abx-by",
         "across": "--abx-across",
         "utterances": "--pattern"}  # the CLI chooses utterances by the files it loads
"""The library's argument names as this command's flags, for the advice in its errors."""


def as_cli_advice(message: str) -> str:
    """``message`` with the library's ``name=value`` (or `` `name` ``) spelled as this
    command's flags, so that its advice can be followed here (``split_by='utterance'``
    becomes ``--split-by utterance``)."""
    def flag_of(name, value):
        if value is None:
            return FLAGS[name]
        if value.startswith("["):  # a list: the flag takes its items one after another
            return f"{FLAGS[name]} " + " ".join(v.strip(" '\"") for v in value[1:-1].split(","))
        return f"{FLAGS[name]} {value.strip(chr(39) + chr(34))}"

    names = "|".join(sorted(FLAGS, key=len, reverse=True))
    value = r"(\[[^\]]*\]|'[^']*'|\"[^\"]*\"|[\w.\-]+)"
    # `name`, `name=` and name=value are arguments; a bare name is prose, left alone
    return re.sub(rf"`({names})=?`|\b({names})={value}",
                  lambda m: flag_of(m.group(1) or m.group(2), m.group(3)), message)


def main(argv=None) -> int:
    import torch.distributed as dist

    args = parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"python -m s3viz.run: {category.__name__}: {as_cli_advice(str(message))}",
              file=sys.stderr)

    try:
        _, _, device = _init(args.device)
        args.device = str(device)
        with warnings.catch_warnings():
            warnings.showwarning = show  # the library's advice, as this command's flags
            run(args)
    except (ValueError, KeyError, OSError, FolderBusyError) as e:  # the user's input or files
        # (an OSError names its file: a folder where a file goes, a permission): no traceback
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"python -m s3viz.run: error: {as_cli_advice(str(text))}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
