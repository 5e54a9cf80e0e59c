"""benchmarks/bench_scale.py: its sizes, and the lazily read synthetic corpus it builds."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("_bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_sizes(bench):
    quick = bench.parse_args(["--quick"])
    assert quick.hours == pytest.approx([0.25 / 60, 0.75 / 60, 2.5 / 60])
    assert quick.ranks == [1, 2]
    assert bench.parse_args([]).hours == [1.0, 3.0, 10.0]
    assert bench.parse_args(["--hours", "3", "1", "--ranks", "2"]).hours == [1.0, 3.0]
    with pytest.raises(SystemExit):
        bench.parse_args(["--hours", "0"])


@pytest.mark.slow
def test_built_corpus_reads_back_lazily_with_its_alignments(bench, tmp_path, monkeypatch):
    from s3viz.data import FileUtterance, load_folder

    monkeypatch.setattr(bench, "CHUNK", 12)
    cache = bench.AudioCache(tmp_path / "cache")
    info = cache.build(30.0, tmp_path / "a")
    spoken = len(cache.rows)
    assert spoken >= info["utterances"] > 1
    durations = [r["num_samples"] / bench.SAMPLE_RATE for r in cache.rows[: info["utterances"]]]
    assert sum(durations) >= 30.0 > sum(durations[:-1])  # the first files up to 30 s

    corpus = load_folder(tmp_path / "a" / "audio", labels_csv=tmp_path / "a" / "labels.csv",
                         lazy=True, alignments=tmp_path / "a" / "alignments.csv")
    assert len(corpus) == info["utterances"]
    assert all(isinstance(u, FileUtterance) for u in corpus)
    by_id = {r["file"].replace("audio/", "", 1).removesuffix(".wav"): r for r in cache.rows}
    for u in corpus:
        row = by_id[u.id]
        phone, word, start, end, _ = row["phones"]
        assert u.num_samples == row["num_samples"]
        assert u.speaker == row["speaker"] and u.text == row["text"]
        assert u.labels["gender"] == row["labels"]["gender"]
        # the segment table's seconds come back as the synthesized sample boundaries
        assert u.phones["start"].tolist() == start and u.phones["end"].tolist() == end
        assert u.phones["phone"].tolist() == phone
    assert corpus[0].wav.shape == (corpus[0].num_samples,)

    # a second size reuses the cache (no new synthesis) through hard links
    cache2 = bench.AudioCache(tmp_path / "cache")
    assert len(cache2.rows) == spoken
    small = cache2.build(5.0, tmp_path / "b")
    assert len(cache2.rows) == spoken and small["utterances"] < info["utterances"]
    first = cache2.rows[0]["file"].replace("audio/", "", 1)
    assert os.path.samefile(tmp_path / "b" / "audio" / first,
                            tmp_path / "cache" / cache2.rows[0]["file"])
