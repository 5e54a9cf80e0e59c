"""Scale: a streamed run with every streaming measure over hours of synthetic audio.

Runs ``torchrun --nproc_per_node=P -m s3viz.run --upstream tiny --measures probe cka
units`` (gloo on the CPU, no figures) on synthetic corpora of several sizes (default 1,
3 and 10 hours), each size in a fresh process group, with 1 and 2 ranks. The corpus
is never held in memory as waveforms: eSpeak NG speaks it in chunks of
``CHUNK`` utterances (:func:`s3viz.data.synthetic_corpus`, one seed per chunk), each
chunk's audio is written once as 16-bit WAV files into a cache folder under
``--workdir``, and each size is a folder of hard links to the first utterances up to
its duration, with a labels CSV and a segment-table alignments CSV, which the run
reads lazily (``--folder``: :func:`s3viz.data.load_folder` with ``lazy=True``, each
rank reading only its shard's audio).

Reported per size and number of ranks: wall time of the command, in-run time (slowest
rank, ``rank-<k>.json``), and per rank the resident memory once corpus and model are
loaded (``setup_rss_mb``), the peak after that (``analysis_peak_rss_mb``) and their
difference (what the analysis adds). The baseline is the smallest size in the same
run: the script prints, for each number of ranks, the time ratio largest / smallest
(linear = the ratio of the durations) and the peak-memory ratio (flat = 1), for the
whole peak and for the part the analysis adds.

Usage: ``python benchmarks/bench_scale.py [--quick] [--hours 1 3 10] [--ranks 1 2]
[--threads N] [--units-max-frames N] [--workdir DIR]``; ``--quick`` runs 0.25, 0.75 and 2.5 minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
CHUNK = 250
"""Utterances eSpeak speaks per chunk (about 8 minutes; one chunk in memory at a time)."""
BATCH_SECONDS = 60.0
LABELS = ("sentence_type", "gender", "voice")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class AudioCache:
    """Synthetic utterances written to ``folder/audio/cNNN/uttXXXX.wav`` chunk by chunk.

    ``index.json`` records, per written utterance, its file, duration, speaker, text,
    labels and phone table (start/end in samples), so a later run extends the cache
    instead of speaking it again.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.index_path = folder / "index.json"
        self.rows = json.loads(self.index_path.read_text()) if self.index_path.exists() else []

    def seconds(self) -> float:
        return sum(r["num_samples"] for r in self.rows) / SAMPLE_RATE

    def extend_to(self, seconds: float) -> None:
        import soundfile as sf

        from s3viz.data import synthetic_corpus

        while self.seconds() < seconds:
            chunk = len(self.rows) // CHUNK
            corpus = synthetic_corpus(CHUNK, seed=1000 + chunk, cache=False)
            out = self.folder / "audio" / f"c{chunk:03d}"
            out.mkdir(parents=True, exist_ok=True)
            for u in corpus:
                path = out / f"{u.id}.wav"
                sf.write(path, u.wav, SAMPLE_RATE, subtype="PCM_16")
                ph = u.phones
                self.rows.append({
                    "file": str(path.relative_to(self.folder)), "num_samples": u.num_samples,
                    "speaker": u.speaker, "text": u.text,
                    "labels": {k: str(u.labels[k]) for k in LABELS},
                    "phones": [ph["phone"].tolist(), ph["word"].tolist(),
                               ph["start"].astype(int).tolist(), ph["end"].astype(int).tolist(),
                               ph["word_index"].astype(int).tolist()]})
            del corpus
            self.index_path.write_text(json.dumps(self.rows))

    def build(self, seconds: float, dest: Path) -> dict:
        """A folder ``dest/audio`` of hard links to the first utterances that reach
        ``seconds``, with ``dest/labels.csv`` and ``dest/alignments.csv``."""
        self.extend_to(seconds)
        rows, total = [], 0
        for r in self.rows:
            if total >= seconds * SAMPLE_RATE:
                break
            rows.append(r)
            total += r["num_samples"]
        audio = dest / "audio"
        audio.mkdir(parents=True)
        with open(dest / "labels.csv", "w", newline="") as fl, \
                open(dest / "alignments.csv", "w", newline="") as fa:
            lab, ali = csv.writer(fl), csv.writer(fa)
            lab.writerow(["file", "speaker", "text", *LABELS])
            ali.writerow(["file", "start", "end", "phone", "word", "word_index"])
            for r in rows:
                rel = r["file"].replace("audio/", "", 1)  # cNNN/uttXXXX.wav below dest/audio
                (audio / rel).parent.mkdir(exist_ok=True)
                os.link(self.folder / r["file"], audio / rel)
                lab.writerow([rel, r["speaker"], r["text"], *(r["labels"][k] for k in LABELS)])
                for p, w, s, e, wi in zip(*r["phones"]):
                    ali.writerow([rel, repr(s / SAMPLE_RATE), repr(e / SAMPLE_RATE), p, w, wi])
        return {"utterances": len(rows), "hours": total / SAMPLE_RATE / 3600}


def run_once(nproc: int, corpus: Path, out: Path, *, units_max_frames: int,
             threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--standalone", "-m", "s3viz.run", "--upstream", "tiny",
           "--folder", str(corpus / "audio"), "--labels", str(corpus / "labels.csv"),
           "--alignments", str(corpus / "alignments.csv"),
           "--measures", "probe", "cka", "units", "--targets", "phone",
           "--units-max-frames", str(units_max_frames),
           "--no-figures", "--device", "cpu", "--max-batch-seconds", str(BATCH_SECONDS),
           "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads or max(1, (os.cpu_count() or 2) // nproc)),
               PYTHONPATH=str(ROOT), S3VIZ_OFFLINE="1")
    load_before = _load()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(nproc)]
    return {"cmd": cmd, "wall": wall, "in_run": max(r["total_seconds"] for r in ranks),
            "hours": sum(r["audio_seconds"] for r in ranks) / 3600,
            "setup": max(r["setup_rss_mb"] for r in ranks),
            "peak": max(r["analysis_peak_rss_mb"] for r in ranks),
            "added": max(r["analysis_peak_rss_mb"] - r["setup_rss_mb"] for r in ranks),
            "utts": [r["utterances"] for r in ranks], "passes": ranks[0]["upstream_passes"],
            "load": f"{load_before} -> {_load()}"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="0.25, 0.75 and 2.5 minutes of audio")
    p.add_argument("--hours", type=float, nargs="+", default=None,
                   help="corpus sizes in hours (default 1 3 10)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], choices=[1, 2, 3, 4])
    p.add_argument("--units-max-frames", type=int, default=50000,
                   help="the unit-quality sample (s3viz.run's default 50000)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per rank (default: cores // ranks)")
    p.add_argument("--workdir", default=None,
                   help="keeps the synthetic audio cache between runs (default: a temporary "
                        "folder, removed at the end)")
    a = p.parse_args(argv)
    if a.hours is None:
        a.hours = [0.25 / 60, 0.75 / 60, 2.5 / 60] if a.quick else [1.0, 3.0, 10.0]
    if any(h <= 0 for h in a.hours):
        p.error("--hours must be positive")
    a.hours = sorted(a.hours)
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    print(f"cpu cores: {os.cpu_count()}, load {_load()}, sizes (h): "
          f"{', '.join(f'{h:g}' for h in a.hours)}, ranks: {a.ranks}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir) if a.workdir else Path(tmp)
        cache = AudioCache(work / "cache")
        t0 = time.perf_counter()
        cache.extend_to(max(a.hours) * 3600)
        print(f"synthetic audio: {cache.seconds() / 3600:.2f} h in {len(cache.rows)} files "
              f"(written in {time.perf_counter() - t0:.0f} s)")
        runs = Path(tempfile.mkdtemp(dir=work, prefix="runs-"))
        results = {}
        for hours in a.hours:
            info = cache.build(hours * 3600, runs / f"corpus-{hours:g}h")
            for nproc in a.ranks:
                r = run_once(nproc, runs / f"corpus-{hours:g}h", runs / f"out-{hours:g}h-{nproc}",
                             units_max_frames=a.units_max_frames, threads=a.threads)
                results[hours, nproc] = r
                print(f"{info['hours']:7.3f} h ({info['utterances']} utt), {nproc} rank(s): "
                      f"wall {r['wall']:7.1f} s, in-run {r['in_run']:7.1f} s, passes "
                      f"{r['passes']}, setup {r['setup']:6.0f} MiB, peak {r['peak']:6.0f} MiB, "
                      f"added {r['added']:6.0f} MiB, utterances/rank {r['utts']}, "
                      f"load {r['load']}", flush=True)
        print("\n| hours | ranks | wall s | in-run s | setup MiB | peak MiB | added MiB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for (_hours, nproc), r in results.items():
            print(f"| {r['hours']:.3f} | {nproc} | {r['wall']:.1f} | {r['in_run']:.1f} | "
                  f"{r['setup']:.0f} | {r['peak']:.0f} | {r['added']:.0f} |")
        lo, hi = a.hours[0], a.hours[-1]
        if hi > lo:
            print(f"\nbaseline: the {lo:g} h run; ratios {hi:g} h / {lo:g} h "
                  f"(audio x{results[hi, a.ranks[0]]['hours'] / results[lo, a.ranks[0]]['hours']:.2f}:"
                  " time linear = that, memory flat = 1)")
            for nproc in a.ranks:
                s, b = results[lo, nproc], results[hi, nproc]
                print(f"{nproc} rank(s): wall x{b['wall'] / s['wall']:.2f}, in-run "
                      f"x{b['in_run'] / s['in_run']:.2f}, peak RSS x{b['peak'] / s['peak']:.2f}, "
                      f"setup RSS x{b['setup'] / s['setup']:.2f}, added by the analysis "
                      f"x{b['added'] / max(s['added'], 1e-9):.2f}")
        print("\ncommand per run:", " ".join(results[a.hours[0], a.ranks[0]]["cmd"][1:]))


if __name__ == "__main__":
    main()
