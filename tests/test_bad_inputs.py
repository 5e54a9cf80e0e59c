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
    return s3viz.extract(get_upstream("tiny_random"), corpus, progress=False)


def _probe(store, **kw):
    return s3viz.probe_layers(store, kw.pop("target", "phone"), folds=2, split_by="utterance",
                              **kw)


def _logistic(store, **kw):
    return s3viz.probe_layers(store, "phone", method="logistic", folds=2, split_by="utterance",
                              layers=[0], max_epochs=kw.pop("max_epochs", 1), **kw)


def _train(store, **kw):
    return s3viz.train_featurizer(store, "phone", steps=kw.pop("steps", 2), **kw)


def _similarity(store, **kw):
    return s3viz.layer_similarity(store, **kw)


def _stream(store, **kw):
    return s3viz.stream_analysis(get_upstream("tiny_random"), synthetic_corpus(8, seed=0),
                                 folds=2, split_by="utterance", **kw)


# (entry point, bad keyword arguments, the argument the message must name)
NUMERIC = [
    (_probe, {"lambdas": [math.inf]}, "lambdas[0]"),
    (_probe, {"lambdas": [float("nan")]}, "lambdas[0]"),
    (_probe, {"lambdas": [-1.0]}, "lambdas[0]"),
    (_probe, {"lambdas": []}, "lambdas"),
    (_probe, {"lambdas": "1e-3"}, "lambdas"),
    (_probe, {"chunk_frames": 0}, "chunk_frames"),
    (_probe, {"seed": -1}, "seed"),
    (_probe, {"target": None}, "target"),
    (_logistic, {"lr": float("nan")}, "lr"),
    (_logistic, {"lr": 0}, "lr"),
    (_logistic, {"lr": -1}, "lr"),
    (_logistic, {"weight_decay": float("nan")}, "weight_decay"),
    (_logistic, {"weight_decay": -0.1}, "weight_decay"),
    (_logistic, {"batch_size": 0}, "batch_size"),
    (_logistic, {"max_epochs": 0}, "max_epochs"),
    (_logistic, {"patience": 2.5}, "patience"),
    (_logistic, {"max_memory": 0}, "max_memory"),
    (_train, {"lr": float("nan")}, "lr"),
    (_train, {"lr": math.inf}, "lr"),
    (_train, {"steps": 0}, "steps"),
    (_train, {"dev_fraction": 1.0}, "dev_fraction"),
    (_train, {"eval_every": 0}, "eval_every"),
    (_similarity, {"chunk_frames": 0}, "chunk_frames"),
    (_similarity, {"max_frames": 2}, "max_frames"),
    (_similarity, {"estimator": "minibatch", "batch_size": 0}, "batch_size"),
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
    df = _probe(store, lambdas=[1e-3, 1.0], chunk_frames=512)
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
