"""``python -m s3viz.run`` refuses bad arguments before the run and never mixes two runs."""

from __future__ import annotations

import json
import re

import pytest

from s3viz.run import RESULT_FILES, main, parse_args, run

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["--corpus", "synthetic:12", "--targets", "gender", "--folds", "2",
        "--split-by", "utterance", "--no-figures", "--device", "cpu"]
TINY = ["--upstream", "tiny", "--random-weights"]  # the tiny architecture, random weights


def test_out_that_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path / "f")])
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "mine"


def _fails(argv, capsys) -> str:
    """Run the command; it must exit with status 2 and an error without a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "python -m s3viz.run: error:" in err and "Traceback" not in err
    return err


def test_layers_out_of_range_are_refused_before_any_extraction(tmp_path, monkeypatch, capsys):
    import s3viz.stream

    def never(*a, **k):  # pragma: no cover - reached only when the check is missing
        raise AssertionError("extraction started before --layers was checked")

    monkeypatch.setattr(s3viz.stream, "stream_analysis", never)
    err = _fails(BASE + TINY + ["--layers", "0", "99",
                         "--out", str(tmp_path)], capsys)
    assert "--layers 99: tiny has 5 hidden states" in err


def test_frame_cka_over_layers_of_different_rates_is_refused(tmp_path, capsys):
    err = _fails(BASE + ["--upstream", "spectral", "--measures", "cka", "--cka-level", "frame",
                         "--layers", "0", "2", "--out", str(tmp_path)], capsys)
    assert "--cka-level frame: the chosen layers have different frame rates" in err


@pytest.mark.parametrize("argv, advice", [
    (["--folds", "50"], "lower --folds to at most 12"),
    (["--targets", "speaker", "--split-by", "speaker"], "out with --pattern"),
])
def test_errors_give_advice_in_flags_that_can_help(tmp_path, capsys, argv, advice):
    """The library's advice (folds=, split_by='utterance') reaches a CLI user as flags,
    and only advice that can help: a fold error under an utterance split does not
    suggest an utterance split."""
    cut = [a for a in BASE if a not in ("--folds", "2", "--split-by", "utterance")]
    err = _fails(cut + TINY + ["--out", str(tmp_path)] + argv
                 + (["--split-by", "utterance"] if "--split-by" not in argv else []), capsys)
    assert advice in err
    assert "split_by=" not in err and "folds=" not in err and "utterances=" not in err
    if "--folds" in argv:
        assert "--split-by utterance" not in err


def test_the_default_cka_level_says_when_it_is_utterance(tmp_path, capsys):
    args = parse_args(BASE + ["--upstream", "spectral", "--measures", "cka", "--targets",
                              "--layers", "0", "2", "--out", str(tmp_path)])
    res = run(args)
    assert res["cka"].attrs["level"] == "utterance"
    assert "CKA at utterance level" in capsys.readouterr().err
    assert json.loads((tmp_path / "run.json").read_text())["cka_level"] == "utterance"


def test_a_reused_out_folder_holds_only_the_new_run(tmp_path):
    out = tmp_path / "out"
    run(parse_args(BASE + TINY + ["--measures", "probe", "cka", "--out", str(out)]))
    assert (out / "cka.csv").exists()
    (out / "rank-notes.json").write_text("{}")  # the user's own files, named like ours
    (out / "rank-7.json").write_text("{}")
    (out / "notes.txt").write_text("the user's own file")
    run(parse_args(BASE + TINY + ["--out", str(out)]))
    assert not (out / "cka.csv").exists()  # the earlier run's, listed in its run.json
    assert (out / "probes.csv").exists() and (out / "notes.txt").read_text().startswith("the")
    assert (out / "rank-notes.json").exists() and (out / "rank-7.json").exists()
    assert set(p.name for p in out.iterdir()) <= set(RESULT_FILES) | {
        "rank-0.json", "notes.txt", "rank-notes.json", "rank-7.json"}


def test_a_refused_run_removes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    run(parse_args(BASE + TINY + ["--out", str(out)]))
    before = sorted(p.name for p in out.iterdir())
    _fails(BASE + TINY + ["--targets", "phoen", "--out", str(out)],
           capsys)
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("argv, message", [
    (["--store-frames", "FILE"], "--store-frames .* is a file"),
    (["--corpus", None, "--folder", "FILE"], "--folder .* is not a folder"),
    (["--cka-level", "frame"], "--cka-level needs --measures cka"),
    # spectral learns nothing, so it has no random-weights control (TINY asks for one)
    (["--upstream", "spectral"], r"--random-weights.*spectral|spectral.*--random-weights"),
    # names mean pretrained weights: the old opt-in flag is gone
    (["--pretrained"], "unrecognized arguments: --pretrained"),
])
def test_arguments_that_cannot_work_are_refused_when_read(tmp_path, capsys, argv, message):
    (tmp_path / "f").write_text("mine")
    argv = [str(tmp_path / "f") if a == "FILE" else a for a in argv]
    base = list(BASE)
    if None in argv:  # --folder replaces --corpus
        i = base.index("--corpus")
        del base[i:i + 2]
        argv = [a for a in argv if a not in ("--corpus", None)]
    with pytest.raises(SystemExit):
        parse_args(base + TINY + ["--out", str(tmp_path / "o")] + argv)
    err = capsys.readouterr().err
    assert re.search(message, err.split("error:", 1)[1])  # the message, not the usage line
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [
    (["--targets", "nosuch"], "unknown target 'nosuch'"),
    (["--folds", "50"], "lower --folds"),
])
def test_logistic_runs_refuse_bad_targets_before_extracting(tmp_path, capsys, argv, message):
    """The logistic-only path extracts to --store-frames first; its target and fold
    errors must come before that, as the ridge path's do."""
    store = tmp_path / "frames"
    err = _fails(BASE + TINY + ["--methods", "logistic",
                         "--store-frames", str(store), "--out", str(tmp_path / "o")] + argv,
                 capsys)
    assert message in err
    assert not list(store.rglob("*.pt"))  # nothing was extracted


def test_a_device_other_than_cpu_or_cuda_is_refused(tmp_path, capsys):
    err = _fails(BASE + TINY + ["--device", "meta",
                         "--out", str(tmp_path)], capsys)
    assert "--device must be cpu, cuda or cuda:N" in err


def test_library_warnings_reach_the_command_line_as_flags(tmp_path, capsys):
    cut = [a for a in BASE if a not in ("--split-by", "utterance")]
    assert main(cut + TINY + ["--targets", "speaker",
                       "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"python -m s3viz.run: \w*Warning:", err) and "split_by=" not in err


def test_every_measure_by_name_writes_its_table(tmp_path):
    """--measures probe segments cka units: one table and one figure each, the tables
    equal to the library's on the same corpus."""
    import pandas as pd

    import s3viz
    from s3viz.data import synthetic_corpus
    from s3viz.upstreams import get_upstream

    out = tmp_path / "out"
    figures = [a for a in BASE if a != "--no-figures"]
    res = run(parse_args(figures + TINY + ["--targets", "phone", "--measures", "probe", "segments",
                                        "cka", "units", "--units-k", "4", "--units-max-frames",
                                        "200", "--out", str(out)]))
    meta = json.loads((out / "run.json").read_text())
    assert meta["measures"] == ["probe", "segments", "cka", "units"]
    for name in ("probes", "segments", "cka", "units"):
        assert (out / f"{name}.csv").stat().st_size > 0
    for fig in ("probe_curve", "segment_curve", "cka", "units"):
        assert (out / f"{fig}.png").stat().st_size > 0
    store = s3viz.extract(get_upstream("tiny", pretrained=False), synthetic_corpus(12, seed=0),
                          device="cpu", progress=False)
    want = s3viz.probe_layers(store, "phone", level="segment", folds=2, split_by="utterance",
                              device="cpu")
    pd.testing.assert_frame_equal(res["segments"], want, check_exact=False, rtol=1e-6,
                                  atol=1e-9)
    units = s3viz.unit_quality(store, k=4, max_frames=200, device="cpu")
    pd.testing.assert_frame_equal(res["units"], units, check_exact=False, rtol=1e-6, atol=1e-9)


def test_segments_of_an_utterance_label_are_refused_before_extracting(tmp_path, capsys):
    store = tmp_path / "frames"
    err = _fails(BASE + TINY + ["--targets", "phone", "speaker", "--measures", "segments",
                                "--store-frames", str(store), "--out", str(tmp_path / "o")],
                 capsys)
    assert "--measures segments: ['speaker'] are utterance labels" in err
    assert not list(store.rglob("*.pt"))  # nothing was extracted


def test_measures_abx_writes_abx_layers_table(tmp_path):
    """``--measures abx`` streams the ABX measure; abx.csv is abx_layers of a store of the
    same upstream and corpus (default conditions, --abx-on phone)."""
    import pandas as pd

    import s3viz
    from s3viz.data import synthetic_corpus
    from s3viz.upstreams import get_upstream

    out = tmp_path / "out"
    argv = [a for a in BASE if a != "--no-figures"]
    res = run(parse_args(argv + TINY + ["--measures", "abx", "--abx-on", "phone",
                                        "--out", str(out)]))
    assert (out / "abx.png").stat().st_size > 0
    assert json.loads((out / "run.json").read_text())["measures"] == ["abx"]
    got = pd.read_csv(out / "abx.csv", keep_default_na=False)  # across: "" (none)
    store = s3viz.extract(get_upstream("tiny", pretrained=False),
                          synthetic_corpus(n_utterances=12, seed=0), device="cpu",
                          progress=False)
    want = s3viz.abx_layers(store, device="cpu")
    assert got["weights"].unique().tolist() == [want.attrs["weights"]]
    pd.testing.assert_frame_equal(got.drop(columns="weights"), want, check_exact=False,
                                  rtol=1e-6, atol=1e-9)
    pd.testing.assert_frame_equal(res["abx"], want, check_exact=False, rtol=1e-6, atol=1e-9)
    assert want["abx_error"].between(0, 1).all() and (want["n_cells"] > 0).all()


@pytest.mark.parametrize("flags, message", [
    (["--units-k", "5"], "--units-k needs --measures units"),
    (["--units-max-frames", "100"], "--units-max-frames needs --measures units"),
    (["--abx-on", "word"], "--abx-on needs --measures abx"),
    (["--abx-across", "speaker"], "--abx-across needs --measures abx"),
])
def test_measure_flags_without_their_measure_are_refused(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        parse_args(BASE + TINY + ["--out", str(tmp_path)] + flags)
    assert message in capsys.readouterr().err
