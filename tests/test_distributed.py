"""Sharded runs (s3viz.distributed, s3viz.run): 2 gloo processes give the single-process results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from s3viz.distributed import Sharding, all_reduce_sum, dist_info, shard_indices

N_UTT = 12
UPSTREAM = "tiny"  # 5 layers of 192, all at rate 320: frame-level CKA works


def _upstream():
    """The upstream the runs below use: ``--upstream tiny --random-weights``."""
    from s3viz.upstreams import get_upstream

    return get_upstream(UPSTREAM, pretrained=False)


UNITS_ARGS = {"units_k": [4, 6], "units_max_frames": 300}


def _args(out, store_dir=None, **kw):
    """``python -m s3viz.run``'s arguments for the runs below, as its own parser reads
    them (so every flag has the CLI's default), then ``kw`` set on top."""
    from s3viz.run import parse_args

    argv = ["--upstream", UPSTREAM, "--random-weights", "--corpus", f"synthetic:{N_UTT}",
            "--targets", "phone", "speaker", "--folds", "3", "--split-by", "speaker",
            "--seed", "0", "--measures", "probe", "cka", "--cka-level", "frame",
            "--batch-size", "4",
            "--device", "cpu", "--out", str(out)]
    if store_dir is not None:
        argv += ["--store-frames", str(store_dir)]
    ns = parse_args(argv)
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def _worker(rank: int, world: int, port: int, out: str, store_dir: str):
    import torch.distributed as dist

    from s3viz.run import run

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        res = run(_args(out, store_dir, methods=["ridge", "logistic"],
                        measures=["probe", "cka", "units"], **UNITS_ARGS))
        # every rank gets the merged tables
        for name in ("probe", "cka", "units"):
            res[name].to_pickle(Path(out) / f"{name}-rank{rank}.pkl")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process API on the whole corpus (the reference)."""
    import s3viz
    from s3viz.data import synthetic_corpus

    corpus = synthetic_corpus(n_utterances=N_UTT, seed=0)
    store = s3viz.extract(_upstream(), corpus, batch_size=4, device="cpu",
                          progress=False)
    probes = pd.concat([
        s3viz.probe_layers(store, "phone", folds=3, split_by="speaker", device="cpu"),
        s3viz.probe_layers(store, "speaker", folds=3, split_by="utterance", device="cpu"),
    ], ignore_index=True)
    lkw = dict(method=s3viz.LogisticOptions(dev_fraction=0), folds=3, device="cpu")
    logistic = pd.concat([
        s3viz.probe_layers(store, "phone", split_by="speaker", **lkw),
        s3viz.probe_layers(store, "speaker", split_by="utterance", **lkw),
    ], ignore_index=True)
    cka = s3viz.layer_similarity(store, device="cpu", method=s3viz.CKAOptions(dtype=torch.float64))
    units = s3viz.unit_quality(store, k=UNITS_ARGS["units_k"], seed=0, device="cpu",
                               max_frames=UNITS_ARGS["units_max_frames"])
    return {"corpus": corpus, "store": store, "probes": probes, "cka": cka,
            "logistic": logistic, "units": units}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, free_port):
    out = tmp_path_factory.mktemp("dist-out")
    store_dir = tmp_path_factory.mktemp("dist-frames")
    mp.spawn(_worker, args=(2, free_port(), str(out), str(store_dir)), nprocs=2, join=True)
    return out, store_dir


# ---------------------------------------------------------------------------
# shard_indices, all_reduce_sum
# ---------------------------------------------------------------------------


def test_shard_indices_partition_and_determinism():
    ids = [f"utt{i:03d}" for i in range(50)]
    for world in (1, 2, 3, 7):
        parts = [shard_indices(ids, r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(50))
        assert all(p == sorted(p) for p in parts)
    # by id, not by position: shuffling the corpus keeps each id on its rank
    perm = np.random.default_rng(0).permutation(50)
    shuffled = [ids[i] for i in perm]
    for r in range(3):
        a = {ids[i] for i in shard_indices(ids, r, 3)}
        b = {shuffled[i] for i in shard_indices(shuffled, r, 3)}
        assert a == b
    for world in (2, 3, 7):  # balanced: sizes differ by at most one
        sizes = [len(shard_indices(ids, r, world)) for r in range(world)]
        assert max(sizes) - min(sizes) <= 1


def test_shard_indices_weights_balance_load():
    rng = np.random.default_rng(1)
    ids = [f"utt{i:03d}" for i in range(101)]
    w = rng.integers(16000, 16000 * 15, size=101)
    for world in (2, 3, 5):
        parts = [shard_indices(ids, r, world, utterance_weights=w) for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(101))
        loads = [int(w[p].sum()) for p in parts]
        assert max(loads) - min(loads) <= int(w.max())  # within one utterance of each other
    # still by id: shuffling ids together with their weights keeps the assignment
    perm = rng.permutation(101)
    a = {ids[i] for i in shard_indices(ids, 1, 3, utterance_weights=w)}
    b = {ids[j] for j in perm[shard_indices([ids[j] for j in perm], 1, 3,
                                            utterance_weights=w[perm])]}
    assert a == b
    with pytest.raises(ValueError, match="utterance_weights"):
        shard_indices(ids, 0, 2, utterance_weights=w[:5])
    with pytest.raises(ValueError, match="utterance_weights"):
        shard_indices(ids, 0, 2, utterance_weights=-w)


@pytest.mark.parametrize("rank, world, dup", [(2, 2, False), (-1, 2, False), (0, 0, False),
                                              (0, 2, True)])
def test_shard_indices_bad_input(rank, world, dup):
    ids = ["a", "a"] if dup else ["a", "b"]
    with pytest.raises(ValueError, match="rank|world_size|unique"):
        shard_indices(ids, rank, world)


def test_all_reduce_identity_without_group():
    t = torch.arange(4.0)
    assert all_reduce_sum(t) is t
    assert dist_info() == (0, 1, False)


@pytest.mark.slow
def test_sharded_args_need_both(single):
    import s3viz

    with pytest.raises(ValueError, match="reference"):
        s3viz.probe_layers(single["store"], "phone", sharding=Sharding(reduce=all_reduce_sum))


@pytest.mark.slow
def test_one_process_run_equals_api(single, tmp_path):
    """world_size 1 through s3viz.run: the same tables as the API."""
    from s3viz.run import run

    res = run(_args(tmp_path, no_figures=True))
    pd.testing.assert_frame_equal(res["probe"], single["probes"],
                                  check_exact=False, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res["cka"].to_numpy(), single["cka"].to_numpy(), rtol=1e-9,
                               atol=1e-12)
    # the CLI's default split is "auto", as the API's: the same tables here (8 speakers
    # for 3 folds: phones by speaker; the speaker target by utterance)
    from s3viz.run import parse_args

    assert parse_args(["--out", str(tmp_path)]).split_by == "auto"
    auto = run(_args(tmp_path / "auto", no_figures=True, split_by="auto",
                     measures=["probe"]))
    pd.testing.assert_frame_equal(auto["probe"], single["probes"],
                                  check_exact=False, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# two gloo processes
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_probes_equal_single(single, sharded):
    out, _ = sharded
    ref = single["probes"]
    for rank in (0, 1):
        got = pd.read_pickle(out / f"probe-rank{rank}.pkl")
        ridge = got[got["method"] == "ridge"].reset_index(drop=True)
        assert list(ridge["split_by"]) == ["speaker"] * 5 + ["utterance"] * 5
        pd.testing.assert_frame_equal(ridge, ref, check_exact=False,
                                      rtol=1e-6, atol=1e-9)
        # logistic probes trained across both ranks (L-BFGS, gradients all-reduced): the
        # single-process optimum up to the order of float sums
        lg = got[got["method"] == "logistic"].reset_index(drop=True)
        want = single["logistic"]
        pd.testing.assert_frame_equal(lg[["target", "layer", "n_train", "n_test"]],
                                      want[["target", "layer", "n_train", "n_test"]])
        np.testing.assert_allclose(lg["accuracy"], want["accuracy"], atol=0.005)
    csv = pd.read_csv(out / "probes.csv")
    np.testing.assert_allclose(csv["accuracy"][:10], ref["accuracy"], rtol=1e-6)
    assert (out / "probe_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_two_processes_cka_equal_single(single, sharded):
    out, _ = sharded
    ref = single["cka"].to_numpy()
    for rank in (0, 1):
        got = pd.read_pickle(out / f"cka-rank{rank}.pkl")
        assert got.attrs["num_frames"] == single["cka"].attrs["num_frames"]
        np.testing.assert_allclose(got.to_numpy(), ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(pd.read_csv(out / "cka.csv", index_col=0).to_numpy(), ref,
                               rtol=1e-6)
    assert (out / "cka.png").stat().st_size > 0


@pytest.mark.slow
def test_two_processes_units_equal_single(single, sharded):
    """k-means on the fit sample gathered from both ranks, contingency tables summed:
    the single-process unit_quality table on every rank."""
    out, _ = sharded
    for rank in (0, 1):
        got = pd.read_pickle(out / f"units-rank{rank}.pkl")
        pd.testing.assert_frame_equal(got, single["units"], check_exact=False, rtol=1e-6,
                                      atol=1e-9)
    csv = pd.read_csv(out / "units.csv")
    np.testing.assert_allclose(csv["pnmi"], single["units"]["pnmi"], rtol=1e-6)
    assert (out / "units.png").stat().st_size > 0


@pytest.mark.slow
def test_two_processes_stored_frames_equal_single(single, sharded):
    from s3viz import LayerStore

    _, store_dir = sharded
    full = single["store"]
    pos = {u: i for i, u in enumerate(full.ids)}
    seen = []
    for rank in (0, 1):
        part = LayerStore.open(Path(store_dir) / f"rank-{rank}")
        weights = [u.num_samples for u in single["corpus"]]
        assert [pos[u] for u in part.ids] == shard_indices(full.ids, rank, 2, utterance_weights=weights)
        for j, u in enumerate(part.ids):
            for a, b in zip(part.utterance(j), full.utterance(pos[u]), strict=True):
                # float32 frames; the shard's batches (padding) and thread count differ
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        seen += part.ids
    assert sorted(seen) == sorted(full.ids)


@pytest.mark.slow
def test_run_on_a_folder_reads_lazily(single, tmp_path):
    """--folder: the corpus is loaded lazily (headers only) and gives the API's tables."""
    import soundfile as sf

    import s3viz
    from s3viz.data import FileUtterance, load_folder
    from s3viz.run import _corpus, run

    root = tmp_path / "wavs"
    rows = []
    for u in single["corpus"]:
        f = root / f"{u.id}.wav"
        f.parent.mkdir(parents=True, exist_ok=True)
        sf.write(f, u.wav, 16000, subtype="FLOAT")
        rows.append({"file": f"{u.id}.wav", "speaker": u.speaker})
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    args = _args(tmp_path / "out", folder=str(root), labels=str(csv), corpus=None,
                 targets=["speaker"], no_figures=True)
    assert all(isinstance(u, FileUtterance) for u in _corpus(args))
    res = run(args)
    store = s3viz.extract(_upstream(), load_folder(root, csv),
                          batch_size=4, device="cpu", progress=False)
    want = s3viz.probe_layers(store, "speaker", folds=3, split_by="utterance", device="cpu")
    pd.testing.assert_frame_equal(res["probe"], want,
                                  check_exact=False, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        res["cka"].to_numpy(),
        s3viz.layer_similarity(store, device="cpu", method=s3viz.CKAOptions(dtype=torch.float64)).to_numpy(),
        rtol=1e-9, atol=1e-12)


def test_more_processes_than_utterances_stops_every_rank(monkeypatch, tmp_path):
    """Every rank raises the same error before any collective call (none is left waiting)."""
    import s3viz.distributed
    from s3viz.run import run

    monkeypatch.setattr(s3viz.distributed, "dist_info", lambda: (3, 20, True))
    with pytest.raises(ValueError, match="fewer processes"):
        run(_args(tmp_path))


def _sharded_logistic(single, shards, targets, **kw):
    """Logistic probes (dev_fraction=0) of the whole store, and of two shard stores whose
    gradients are summed between threads standing in for ranks: ``(want, [shard tables])``."""
    import s3viz
    from _sharding import ThreadSum, run_threads

    corpus, full = single["corpus"], single["store"]
    kw = dict(method=s3viz.LogisticOptions(dev_fraction=0, **kw), folds=3, device="cpu")

    def probes(store, **extra):
        return pd.concat([s3viz.probe_layers(store, t, split_by=split, **kw, **extra)
                          for t, split in targets], ignore_index=True)

    up = _upstream()
    stores = [s3viz.extract(up, corpus[s], batch_size=4, device="cpu", progress=False)
              for s in shards]
    summer = ThreadSum(2)

    def work(r):
        red = summer.reducer(r)
        return probes(stores[r], sharding=Sharding.of(corpus, stores[r], shards[r], reduce=red))

    out, errors = run_threads(2, work)
    assert errors == [None, None], errors
    return probes(full), out


@pytest.mark.slow
def test_sharded_logistic_probe_equals_single(single):
    """dev_fraction=0: each shard's L-BFGS gradients are summed with reduce, so two shards
    (threads standing in for ranks) train the classifiers of the whole corpus."""
    shards = [shard_indices(single["corpus"].ids, r, 2) for r in range(2)]
    want, out = _sharded_logistic(single, shards,
                                  [("phone", "speaker"), ("speaker", "utterance")])
    cols = ["target", "layer", "n_train", "n_test", "n_classes", "chance"]
    for r in range(2):
        pd.testing.assert_frame_equal(out[r][cols], want[cols])
        # the same optimum up to the order of float sums: at most a frame or two differ
        np.testing.assert_allclose(out[r]["accuracy"], want["accuracy"], atol=0.005)


@pytest.mark.slow
def test_sharded_logistic_needs_dev_fraction_zero(single):
    import s3viz

    with pytest.raises(ValueError, match="dev_fraction=0"):
        s3viz.probe_layers(single["store"], "phone", method="logistic",
                           sharding=Sharding(single["store"], all_reduce_sum))


@pytest.mark.parametrize("argv, match", [
    (["--methods", "logistic"], "needs --store-frames"),
    (["--targets", "--no-figures"], "--measures probe needs --targets"),
])
def test_parse_args_refuses_impossible_runs(argv, match, capsys, tmp_path):
    from s3viz.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv + ["--out", str(tmp_path)])
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_sharded_logistic_groups_layers_alike_on_unequal_shards(single):
    """The layers trained together are chosen from the frames of all shards, so shards
    of different sizes make the same collective calls (they used to disagree)."""
    full = single["store"]
    n_total = int((full.frame_labels(0) != "").sum())
    mem = int(n_total * full.hidden_sizes[0] * 4 * 1.5)  # one layer at a time in total
    shards = [list(range(0, 3)), list(range(3, N_UTT))]  # 1:3 sizes
    want, out = _sharded_logistic(single, shards, [("phone", "speaker")], max_memory=mem)
    for r in range(2):
        np.testing.assert_allclose(out[r]["accuracy"], want["accuracy"], atol=0.005)


def test_device_argument(monkeypatch):
    from s3viz.run import _init

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="all 2 ranks on one GPU"):
        _init("cuda:0")
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        _init("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            _init("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _init("cpu")[2] == torch.device("cpu")
