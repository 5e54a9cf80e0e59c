"""Bad inputs against every public entry point they apply to (issue 17's classes).

Each case calls a public function with one bad argument and expects a ValueError or
TypeError whose message names that argument, never a quietly wrong number or an error
from deep inside. A new public function inherits the checks by adding its rows here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import s3viz
from s3viz.data import synthetic_corpus
from s3viz.upstreams import get_upstream


@pytest.fixture(scope="module")
def store():
    corpus = synthetic_corpus(8, seed=0)
    return s3viz.extract(get_upstream("tiny", pretrained=False), corpus, progress=False)


def _probe(store, **kw):
    if "lambdas" in kw:
        kw["method"] = s3viz.RidgeOptions(lambdas=kw.pop("lambdas"))
    return s3viz.probe_layers(store, kw.pop("target", "phone"), folds=2, split_by="utterance",
                              **kw)


def _logistic(store, **kw):
    opts = s3viz.LogisticOptions(max_epochs=kw.pop("max_epochs", 1), **kw)
    return s3viz.probe_layers(store, "phone", method=opts, folds=2, split_by="utterance",
                              layers=[0])


def _train(store, **kw):
    return s3viz.train_featurizer(store, "phone",
                                  options=s3viz.TrainOptions(steps=kw.pop("steps", 2), **kw))


def _similarity(store, **kw):
    return s3viz.layer_similarity(store, **kw)


def _cka_options(store, **kw):
    return s3viz.layer_similarity(store, method=s3viz.CKAOptions(**kw))


def _stream(store, **kw):
    from s3viz.measures import RidgeProbe

    probe = RidgeProbe("phone", folds=2, split_by="utterance", **kw)  # refused here
    return s3viz.stream_analysis(get_upstream("tiny", pretrained=False),
                                 synthetic_corpus(8, seed=0), [probe])


# (entry point, bad keyword arguments, the argument the message must name)
NUMERIC = [
    (_probe, {"lambdas": [math.inf]}, "lambdas[0]"),
    (_probe, {"lambdas": [float("nan")]}, "lambdas[0]"),
    (_probe, {"lambdas": [-1.0]}, "lambdas[0]"),
    (_probe, {"lambdas": []}, "lambdas"),
    (_probe, {"lambdas": "1e-3"}, "lambdas"),
    (_probe, {"seed": -1}, "seed"),
    (_probe, {"target": None}, "target"),
    (_logistic, {"lr": float("nan")}, "lr"),
    (_logistic, {"lr": 0}, "lr"),
    (_logistic, {"lr": -1}, "lr"),
    (_logistic, {"weight_decay": float("nan")}, "weight_decay"),
    (_logistic, {"weight_decay": -0.1}, "weight_decay"),
    (_logistic, {"batch_frames": 0}, "batch_frames"),
    (_logistic, {"max_epochs": 0}, "max_epochs"),
    (_logistic, {"patience": 2.5}, "patience"),
    (_logistic, {"max_memory": 0}, "max_memory"),
    (_train, {"lr": float("nan")}, "lr"),
    (_train, {"lr": math.inf}, "lr"),
    (_train, {"steps": 0}, "steps"),
    (_train, {"dev_fraction": 1.0}, "dev_fraction"),
    (_train, {"eval_every": 0}, "eval_every"),
    (_similarity, {"max_frames": 2}, "max_frames"),
    (_cka_options, {"estimator": "minibatch", "batch_frames": 0}, "batch_frames"),
    (_stream, {"lambdas": [math.inf]}, "lambdas[0]"),
    (_stream, {"lambdas": []}, "lambdas"),
]


@pytest.mark.parametrize("call,kwargs,name", NUMERIC,
                         ids=[f"{c.__name__[1:]}-{'-'.join(map(str, k.items()))}"
                              for c, k, _ in NUMERIC])
def test_bad_numeric_argument_is_named(store, call, kwargs, name):
    with pytest.raises((ValueError, TypeError)) as info:
        call(store, **kwargs)
    assert name in str(info.value), str(info.value)


def test_good_values_still_work(store):
    df = _probe(store, lambdas=[1e-3, 1.0])
    assert df["accuracy"].between(0, 1).all() and np.isfinite(df["accuracy"]).all()


# --------------------------------------------------------------------------- data loading


def _wav(path, seconds=0.5, stereo=None):
    import soundfile as sf

    rng = np.random.default_rng(0)
    mono = (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    data = mono if stereo is None else np.stack([mono, stereo * mono], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, 16000, subtype="FLOAT")


def test_csv_with_an_empty_id_is_refused_not_called_nan(tmp_path):
    from s3viz.data import load_folder

    _wav(tmp_path / "a" / "x.wav")
    _wav(tmp_path / "a" / "y.wav")
    (tmp_path / "labels.csv").write_text("file,id,speaker\nx.wav,first,s1\ny.wav,,s2\n")
    with pytest.raises(ValueError, match=r"empty 'id' \(CSV lines \[3\]\)"):
        load_folder(tmp_path / "a", tmp_path / "labels.csv")


def test_na_like_labels_stay_labels(tmp_path):
    from s3viz.data import load_folder

    for name in ("a", "b", "c", "d"):
        _wav(tmp_path / "w" / f"{name}.wav")
    (tmp_path / "labels.csv").write_text(
        "file,speaker,group\na.wav,NA,None\nb.wav,null,n/a\nc.wav,nan,x\nd.wav,,\n")
    c = load_folder(tmp_path / "w", tmp_path / "labels.csv")
    assert [u.speaker for u in c] == ["NA", "null", "nan", ""]
    assert [u.labels["group"] for u in c] == ["None", "n/a", "x", None]


def test_empty_csv_names_the_file(tmp_path):
    from s3viz.data import load_folder

    _wav(tmp_path / "w" / "a.wav")
    (tmp_path / "labels.csv").write_text("")
    with pytest.raises(ValueError, match="labels.csv' is empty; it needs a header"):
        load_folder(tmp_path / "w", tmp_path / "labels.csv")


def test_symlinked_subfolders_are_followed(tmp_path):
    from s3viz.data import load_folder

    _wav(tmp_path / "elsewhere" / "b.wav")
    _wav(tmp_path / "w" / "a.wav")
    (tmp_path / "w" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "w" / "loop").symlink_to(tmp_path / "w", target_is_directory=True)
    assert [u.id for u in load_folder(tmp_path / "w")] == ["a", "linked/b"]


def test_anti_phase_stereo_is_not_accepted_as_speech(tmp_path):
    from s3viz.audio import load_audio

    _wav(tmp_path / "anti.wav", stereo=-1.0)
    with pytest.raises(ValueError, match="channels cancel out"):
        load_audio(tmp_path / "anti.wav")
    assert not load_audio(tmp_path / "anti.wav", allow_silence=True).any()
    _wav(tmp_path / "fine.wav", stereo=0.5)
    assert load_audio(tmp_path / "fine.wav").any()


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize("kind,match", [
    ("text", r"is not a PyTorch checkpoint that torch.load can read \(KeyError"),
    ("empty", r"is not a PyTorch checkpoint .*\(the file is empty\)"),
    ("random", r"is not a PyTorch checkpoint .*\(Unsupported operand"),
    ("folder", r"is a folder; give the checkpoint file in it"),
    ("2-D", r"'Featurizer' -> 'weights' has shape \(3, 4\)"),
])
def test_load_featurizer_weights_says_what_the_file_is(tmp_path, kind, match):
    import torch

    path = tmp_path / "x.ckpt"
    if kind == "text":
        path.write_text("hello world\nnot a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "folder":
        path.mkdir()
    else:
        torch.save({"Featurizer": {"weights": torch.zeros(3, 4)}}, path)
    with pytest.raises((ValueError, IsADirectoryError), match=match):
        s3viz.load_featurizer_weights(path)


def test_open_refuses_another_tools_manifest(tmp_path):
    from s3viz.store import LayerStore

    (tmp_path / "manifest.json").write_text('{"name": "not s3viz", "version": 3}')
    with pytest.raises(ValueError, match="is not an s3viz extraction manifest"):
        LayerStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="not a JSON object"):
        LayerStore.open(tmp_path)


def test_manifest_cannot_point_outside_the_cache(tmp_path):
    import json

    from s3viz.store import CacheCorruptionError, LayerStore

    s3viz.extract(get_upstream("tiny", pretrained=False), synthetic_corpus(4, seed=0),
                  progress=False, cache_dir=tmp_path)
    root = next(p.parent for p in tmp_path.glob("*/manifest.json"))
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"x")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["chunks"][0]["files"][0]["name"] = str(outside)
    # re-sealed, as a forged manifest would be (the seal catches edits, not forgeries)
    import importlib

    manifest = importlib.import_module("s3viz._cache").sealed(manifest, "manifest_sha256")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptionError, match="not a file of this cache's chunks/ folder"):
        LayerStore.open(root).layer(0)


def test_check_upstream_reports_meta_tensors_instead_of_raising():
    import torch

    from s3viz.interface import AbsUpstream

    class Meta(AbsUpstream):
        num_layer, hidden_sizes, downsample_rates = 1, [4], [320]

        def forward(self, wavs, wavs_len):
            n = (wavs_len - 1) // 320 + 1
            return [torch.zeros(wavs.shape[0], int(n.max()), 4, device="meta")], [n.to("meta")]

    report = s3viz.check_upstream(Meta())
    row = report[report["check"] == "forward"]
    assert (row["status"] == "fail").all() and "meta device" in row["detail"].iloc[0]


def test_finished_cache_on_read_only_storage_opens_without_a_lock(tmp_path, monkeypatch):
    import contextlib
    import importlib

    ex = importlib.import_module("s3viz.extraction")  # the module (s3viz.extract is the function)

    corpus = synthetic_corpus(4, seed=0)
    up = get_upstream("tiny", pretrained=False)
    first = s3viz.extract(up, corpus, progress=False, cache_dir=tmp_path)

    @contextlib.contextmanager
    def read_only(root):
        raise PermissionError(13, "Read-only file system", str(root.path(".lock")))
        yield

    monkeypatch.setattr(ex, "folder_lock", read_only)
    again = s3viz.extract(up, corpus, progress=False, cache_dir=tmp_path)
    assert np.array_equal(again.layer(1)[0].numpy(), first.layer(1)[0].numpy())
    with pytest.raises(OSError, match="holds no finished extraction of this upstream and corpus"):
        s3viz.extract(up, synthetic_corpus(5, seed=0), progress=False, cache_dir=tmp_path)


# --------------------------------------------------------------------------- stale caches


def test_audio_edited_in_place_is_not_served_from_the_old_cache(tmp_path):
    corpus = synthetic_corpus(4, seed=0)
    up = get_upstream("tiny", pretrained=False)
    before = s3viz.extract(up, corpus, progress=False, cache_dir=tmp_path).layer(0)[0].clone()
    corpus[0].wav[:] += 0.05 * np.random.default_rng(0).standard_normal(corpus[0].num_samples)
    after = s3viz.extract(up, corpus, progress=False, cache_dir=tmp_path).layer(0)[0]
    assert not np.allclose(before.numpy(), after.numpy())
    assert len(list(tmp_path.glob("*/manifest.json"))) == 2


def test_a_lazy_file_replaced_by_one_of_the_same_length_is_noticed(tmp_path):
    import os

    from s3viz.data import load_folder

    _wav(tmp_path / "w" / "a.wav")
    first = load_folder(tmp_path / "w", lazy=True).fingerprint()
    assert load_folder(tmp_path / "w", lazy=True).fingerprint() == first  # stable
    import soundfile as sf

    sf.write(tmp_path / "w" / "a.wav", np.full(8000, 0.1, np.float32), 16000, subtype="FLOAT")
    os.utime(tmp_path / "w" / "a.wav", ns=(1, 10**18))  # a modification time surely new
    corpus = load_folder(tmp_path / "w", lazy=True)
    assert corpus.fingerprint() != first


def test_upstream_fingerprint_sees_code_and_plain_attributes():
    import importlib

    import torch

    ex = importlib.import_module("s3viz.extraction")

    def make(scale_in_forward):
        class Scaled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(2, 2)
                self.scale = 1

            if scale_in_forward:
                def forward(self, x):
                    return self.lin(x) * self.scale
            else:
                def forward(self, x):
                    return self.lin(x) + self.scale
        torch.manual_seed(0)
        return Scaled()

    a, b = make(True), make(False)
    assert ex.upstream_fingerprint(a) == ex.upstream_fingerprint(make(True))
    assert ex.upstream_fingerprint(a) != ex.upstream_fingerprint(b), "forward changed"
    c = make(True)
    c.scale = 5
    assert ex.upstream_fingerprint(a) != ex.upstream_fingerprint(c), "attribute changed"


# --------------------------------------------------------------------------- cache metadata


@pytest.fixture
def cache(tmp_path):
    corpus = synthetic_corpus(6, seed=0)
    up = get_upstream("tiny", pretrained=False)
    store = s3viz.extract(up, corpus, progress=False, cache_dir=tmp_path, batch_size=3)
    root = next(p.parent for p in tmp_path.glob("*/manifest.json"))
    return {"corpus": corpus, "up": up, "store": store, "root": root, "dir": tmp_path}


def _edit_json(path, fn):
    import json

    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("what", ["manifest-length", "labels-speaker", "phones", "labels-gone"])
def test_edited_metadata_is_refused_on_open_and_repaired_by_extract(cache, what):
    from s3viz.store import CacheCorruptionError, LayerStore

    root = cache["root"]
    if what == "manifest-length":  # would shift every later utterance of the chunk
        _edit_json(root / "manifest.json",
                   lambda m: m["chunks"][0]["lengths"][0].__setitem__(0, 1))
    elif what == "labels-speaker":
        # labels.json is {"columns": [...], "data": [[row], ...]}
        _edit_json(root / "labels.json", lambda d: d["data"][0].__setitem__(
            d["columns"].index("speaker"), "someone else"))
    elif what == "phones":
        _edit_json(root / "phones.json", lambda d: d.__setitem__(0, None))
    else:
        (root / "labels.json").unlink()
    with pytest.raises(CacheCorruptionError, match="repair"):
        LayerStore.open(root)
    repaired = s3viz.extract(cache["up"], cache["corpus"], progress=False,
                             cache_dir=cache["dir"], batch_size=3)
    reopened = LayerStore.open(root)
    assert list(reopened.labels["speaker"]) == [u.speaker for u in cache["corpus"]]
    assert np.array_equal(reopened.lengths(0), cache["store"].lengths(0))
    assert np.array_equal(repaired.layer(0)[0].numpy(), cache["store"].layer(0)[0].numpy())


def test_an_edited_chunk_record_is_re_extracted_not_trusted(cache):
    root = cache["root"]
    (root / "manifest.json").unlink()  # an unfinished extraction: records are read to resume
    record = next((root / "chunks").glob("c*.json"))
    _edit_json(record, lambda r: (r["lengths"][0].__setitem__(0, r["lengths"][0][0] - 1),
                                  r["lengths"][1].__setitem__(0, r["lengths"][1][0] + 1)))
    with pytest.warns(UserWarning, match="changed after it was written"):
        again = s3viz.extract(cache["up"], cache["corpus"], progress=False,
                              cache_dir=cache["dir"], batch_size=3)
    assert np.array_equal(again.lengths(0), cache["store"].lengths(0))
