"""Peak memory of reading a long 48 kHz stereo file with s3viz.audio.load_audio.

Baseline: the whole-file path (``soundfile.read`` of every sample, then
``prepare_wav``: mono, then torchaudio's resampler on the whole signal), which
``load_audio`` took for every file before it read long files block by block.
Each method runs in a fresh subprocess and reports its peak resident memory
(``ru_maxrss``) above the interpreter with s3viz imported; the two results are
compared sample by sample.

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
import s3viz.audio as A
A.load_audio  # imports done before the baseline reading
A._resampler(48000, 16000)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, method, out = sys.argv[1:4]
t = time.perf_counter()
if method == "blocks":
    wav = A.load_audio(path)
else:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wav = A.prepare_wav(data, rate, channels_first=False)
    del data
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(out, wav)
print(json.dumps({"peak_mb": (peak - base) / 1024, "seconds": sec}))
"""


def _write(path: str, minutes: float) -> None:
    import numpy as np
    import soundfile as sf

    rate, block = 48000, 48000 * 60
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as f:
        left = int(rate * 60 * minutes)
        while left > 0:
            n = min(block, left)
            t = np.arange(n) / rate
            tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None]
            f.write((tone + 0.05 * rng.standard_normal((n, 2))).astype(np.float32))
            left -= n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="5 minutes")
    args = ap.parse_args(argv)
    minutes = 5.0 if args.quick else args.minutes
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.wav")
        t = time.perf_counter()
        _write(path, minutes)
        print(f"wrote {minutes:g} min of 48 kHz stereo PCM_16 "
              f"({os.path.getsize(path) / 2**20:.0f} MB) in {time.perf_counter() - t:.0f} s")
        res, wavs = {}, {}
        for method in ("whole", "blocks"):
            out = os.path.join(tmp, f"{method}.npy")
            p = subprocess.run([sys.executable, "-c", CHILD, path, method, out],
                               capture_output=True, text=True, check=True)
            res[method] = json.loads(p.stdout.strip().splitlines()[-1])
            wavs[method] = np.load(out)
            print(f"{method:>6}: peak {res[method]['peak_mb']:8.0f} MB above the interpreter, "
                  f"{res[method]['seconds']:.1f} s")
        diff = float(np.abs(wavs["whole"] - wavs["blocks"]).max())
        ratio = res["whole"]["peak_mb"] / max(res["blocks"]["peak_mb"], 1.0)
        print(f"RESULT load_audio: {ratio:.1f}x less peak memory block by block than whole-file "
              f"({res['blocks']['peak_mb']:.0f} vs {res['whole']['peak_mb']:.0f} MB for "
              f"{minutes:g} min of 48 kHz stereo); max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
