"""Reading and resampling audio: s3viz.audio against what a researcher writes otherwise.

Baseline (measured in the same run): ``soundfile.read`` of the whole file, then
``torchaudio.functional.resample`` of the whole signal to 16 kHz. s3viz reads in
one forward pass and resamples with libsoxr as a stream (``s3viz.audio``).

1. A long 48 kHz stereo file: peak resident memory and time of each.
2. An odd rate (22,254 Hz, as a phone recorder may write): torchaudio sizes its
   kernel by the rates' greatest common divisor (here 2), so 0.2 s costs seconds
   and gigabytes; s3viz's cost follows the audio.
3. Linearity: s3viz's time per second of audio at the odd rate, 10 s against 100 s.

Each measurement runs in a fresh subprocess and reports its peak resident memory
(``ru_maxrss``) above the interpreter with its imports done; outputs are compared
sample by sample away from the edges.

    .venv/bin/python benchmarks/bench_load_audio.py [--minutes 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np
import soundfile as sf
import torch, torchaudio.functional as AF
import s3viz.audio as A
path, method, out = sys.argv[1:4]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if method == "s3viz":
    wav = A.load_audio(path)
else:  # what a researcher writes: read it all, average the channels, resample it all
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wav = AF.resample(torch.from_numpy(data.mean(1)), rate, 16000).numpy()
    del data
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(out, wav)
print(json.dumps({"peak_mb": (peak - base) / 1024, "seconds": sec}))
"""


def _write(path: str, seconds: float, rate: int, channels: int) -> None:
    import numpy as np
    import soundfile as sf

    block = rate * 60
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, subtype="PCM_16") as f:
        left, done = int(rate * seconds), 0
        while left > 0:
            n = min(block, left)
            t = (done + np.arange(n)) / rate
            tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None]
            f.write((tone + 0.05 * rng.standard_normal((n, channels))).astype(np.float32))
            left -= n
            done += n


def _run(path, method, tmp):
    import numpy as np

    out = os.path.join(tmp, f"{method}-{os.path.basename(path)}.npy")
    p = subprocess.run([sys.executable, "-c", CHILD, path, method, out],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1]), np.load(out)


def _compare(name, tmp, path, audio_seconds):
    import numpy as np

    res, wavs = {}, {}
    for method in ("baseline", "s3viz"):
        res[method], wavs[method] = _run(path, method, tmp)
        print(f"  {method:>8}: peak {res[method]['peak_mb']:8.1f} MB above the interpreter, "
              f"{res[method]['seconds']:.2f} s")
    edge = 320  # 20 ms at 16 kHz: both resamplers' edges differ by design
    a, b = wavs["baseline"], wavs["s3viz"]
    n = min(len(a), len(b))
    diff = float(np.abs(a[edge:n - edge] - b[edge:n - edge]).max()) if n > 2 * edge else 0.0
    mem = res["baseline"]["peak_mb"] / max(res["s3viz"]["peak_mb"], 1.0)
    speed = res["baseline"]["seconds"] / max(res["s3viz"]["seconds"], 1e-9)
    print(f"RESULT {name}: {mem:.1f}x less peak memory, {speed:.1f}x faster than "
          f"soundfile + torchaudio.functional.resample ({audio_seconds:g} s of audio; "
          f"lengths {len(b)} vs {len(a)}; max |difference| away from the edges {diff:.1e})")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="the long 48 kHz file")
    ap.add_argument("--quick", action="store_true", help="5 minutes")
    args = ap.parse_args(argv)
    minutes = 5.0 if args.quick else args.minutes
    with tempfile.TemporaryDirectory() as tmp:
        long = os.path.join(tmp, "long.wav")
        t = time.perf_counter()
        _write(long, 60 * minutes, 48000, 2)
        print(f"1. {minutes:g} min of 48 kHz stereo PCM_16 ({os.path.getsize(long) / 2**20:.0f} "
              f"MB, written in {time.perf_counter() - t:.0f} s)")
        _compare("long 48 kHz file", tmp, long, 60 * minutes)

        odd = os.path.join(tmp, "odd.wav")
        _write(odd, 0.2, 22254, 1)
        print("2. 0.2 s at 22,254 Hz")
        _compare("odd rate 22254 Hz", tmp, odd, 0.2)

        print("3. s3viz at 22,254 Hz, 10 s and 100 s")
        per = []
        for seconds in (10, 100):
            path = os.path.join(tmp, f"odd{seconds}.wav")
            _write(path, seconds, 22254, 1)
            r, _ = _run(path, "s3viz", tmp)
            per.append(r["seconds"] / seconds)
            print(f"  {seconds:>4} s: {r['seconds']:.3f} s, peak {r['peak_mb']:.1f} MB")
        print(f"RESULT linearity: {per[1] / per[0]:.2f}x the time per audio second at 100 s "
              "as at 10 s (1.0 is linear)")


if __name__ == "__main__":
    main()
