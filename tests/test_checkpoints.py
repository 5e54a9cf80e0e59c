"""load_featurizer_weights on checkpoints written here in s3prl's layouts, and its safety."""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np
import pandas as pd
import pytest
import torch

from s3viz.checkpoints import UnsafeCheckpointError, load_featurizer_weights
from s3viz.featurizers import WeightedSumFeaturizer


def _runner_checkpoint(logits: torch.Tensor, step: int = 20000, args=None) -> dict:
    """A checkpoint as s3prl's downstream runner saves it (``save_states`` in runner.py)."""
    downstream = torch.nn.Sequential(torch.nn.Linear(768, 256), torch.nn.ReLU(),
                                     torch.nn.Linear(256, 41))
    featurizer_weights = torch.nn.Parameter(logits.clone())
    params = [featurizer_weights, *downstream.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    downstream(torch.randn(2, 768)).sum().backward()
    featurizer_weights.grad = torch.randn_like(featurizer_weights)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / 1000))
    if args is None:
        args = argparse.Namespace(
            mode="train", upstream="hubert", upstream_feature_selection="hidden_states",
            upstream_layer_selection=None, upstream_feature_normalize=False,
            upstream_model_config=None, upstream_ckpt=None, upstream_refresh=False,
            upstream_trainable=False, downstream="ctc", expdir="result/downstream/asr_hubert",
            config="downstream/ctc/libriphone.yaml", device="cuda", seed=1337, init_ckpt=None,
            auto_resume=False, override=None, verbose=False, past_exp=None,
        )
    return {
        "Featurizer": {"weights": logits.clone()},  # the learned logits
        "Downstream": downstream.state_dict(),
        "Optimizer": optimizer.state_dict(),
        "Scheduler": scheduler.state_dict(),
        "Step": step,
        "Epoch": 3,
        "Args": args,
        "Config": {"runner": {"total_steps": 100000, "gradient_clipping": 1.0, "log_step": 100},
                   "optimizer": {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": 1.0e-4},
                   "downstream_expert": {"corpus": {"batch_size": 32}, "text": {"mode": "word"}}},
    }


@pytest.fixture()
def logits():
    return torch.linspace(-1.0, 2.0, 13) ** 2


def _softmax(x: torch.Tensor) -> np.ndarray:
    return torch.softmax(x.double(), 0).numpy()


def test_s3prl_runner_checkpoint(tmp_path, logits):
    path = tmp_path / "dev-best.ckpt"
    torch.save(_runner_checkpoint(logits), path)
    w = load_featurizer_weights(path)
    assert isinstance(w, pd.Series) and w.name == "dev-best.ckpt"
    assert list(w.index) == list(range(13)) and w.index.name == "layer"
    np.testing.assert_allclose(w.to_numpy(), _softmax(logits), rtol=1e-6)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w.attrs["step"] == 20000 and w.attrs["key"] == "Featurizer.weights"
    # str paths and the legacy (non-zip) format too
    legacy = tmp_path / "legacy.ckpt"
    torch.save(_runner_checkpoint(logits), legacy, _use_new_zipfile_serialization=False)
    np.testing.assert_allclose(load_featurizer_weights(str(legacy)).to_numpy(), _softmax(logits),
                               rtol=1e-6)


def test_round_trip_with_weighted_sum_featurizer(tmp_path):
    class Sizes:
        num_layer, hidden_sizes, downsample_rates = 5, [16] * 5, [320] * 5

    feat = WeightedSumFeaturizer(Sizes())
    feat.set_weights(probs=[0.1, 0.4, 0.2, 0.2, 0.1])
    torch.save({"Featurizer": feat.state_dict(), "Step": 7}, tmp_path / "states-7.ckpt")
    w = load_featurizer_weights(tmp_path / "states-7.ckpt")
    np.testing.assert_allclose(w.to_numpy(), feat.layer_weights.to_numpy(), rtol=1e-6)
    feat2 = WeightedSumFeaturizer(Sizes())
    feat2.load_state_dict(torch.load(tmp_path / "states-7.ckpt", weights_only=True)["Featurizer"])
    np.testing.assert_allclose(feat2.layer_weights.to_numpy(), w.to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("layout,key", [
    ({"featurizer.weights": None, "downstream.proj.weight": torch.zeros(3, 3)},
     "featurizer.weights"),
    ({"model": {"upstream.x": torch.zeros(2), "featurizer.weights": None}},
     "model.featurizer.weights"),
    ({"state_dict": {"model.featurizer.weights": None, "model.head.weight": torch.zeros(2, 2)},
      "epoch": 3}, "state_dict.model.featurizer.weights"),
])
def test_plain_and_nested_state_dicts(tmp_path, logits, layout, key):
    def fill(d):
        return {k: (fill(v) if isinstance(v, dict) else (logits if v is None else v))
                for k, v in d.items()}

    torch.save(fill(layout), tmp_path / "model.pt")
    w = load_featurizer_weights(tmp_path / "model.pt")
    assert w.attrs["key"] == key
    np.testing.assert_allclose(w.to_numpy(), _softmax(logits), rtol=1e-6)


def test_bare_tensor_and_in_memory_objects(tmp_path, logits):
    torch.save(logits, tmp_path / "weights.pt")
    np.testing.assert_allclose(load_featurizer_weights(tmp_path / "weights.pt").to_numpy(),
                               _softmax(logits), rtol=1e-6)
    np.testing.assert_allclose(load_featurizer_weights(logits).to_numpy(), _softmax(logits),
                               rtol=1e-6)
    np.testing.assert_allclose(
        load_featurizer_weights({"Featurizer": {"weights": logits}}).to_numpy(),
        _softmax(logits), rtol=1e-6)


def test_several_checkpoints_give_a_dataframe(tmp_path, logits):
    (tmp_path / "asr").mkdir()
    (tmp_path / "sid").mkdir()
    torch.save(_runner_checkpoint(logits, step=100), tmp_path / "asr" / "dev-best.ckpt")
    torch.save(_runner_checkpoint(-logits, step=200), tmp_path / "sid" / "dev-best.ckpt")
    torch.save(logits[:5], tmp_path / "short.pt")
    df = load_featurizer_weights([tmp_path / "asr" / "dev-best.ckpt",
                                  tmp_path / "sid" / "dev-best.ckpt"])
    assert list(df.index) == ["asr/dev-best.ckpt", "sid/dev-best.ckpt"]  # stems collide
    assert df.index.name == "checkpoint" and list(df.columns) == list(range(13))
    np.testing.assert_allclose(df.to_numpy(), np.stack([_softmax(logits), _softmax(-logits)]),
                               rtol=1e-6)
    assert df.attrs["step"] == {"asr/dev-best.ckpt": 100, "sid/dev-best.ckpt": 200}
    named = load_featurizer_weights({"ASR": tmp_path / "asr" / "dev-best.ckpt",
                                     "short": tmp_path / "short.pt"})
    assert list(named.index) == ["ASR", "short"]
    assert named.loc["short"].isna().sum() == 8  # fewer layers: NaN
    np.testing.assert_allclose(named.loc["short"].dropna().to_numpy(), _softmax(logits[:5]),
                               rtol=1e-6)


def test_key_and_error_messages(tmp_path, logits):
    both = {"a.featurizer.weights": logits, "b.featurizer.weights": logits[:4]}
    torch.save(both, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="several candidate"):
        load_featurizer_weights(tmp_path / "two.pt")
    w = load_featurizer_weights(tmp_path / "two.pt", key="b.featurizer.weights")
    assert len(w) == 4
    with pytest.raises(KeyError, match="no key"):
        load_featurizer_weights(tmp_path / "two.pt", key="c.featurizer.weights")
    single = _runner_checkpoint(logits)
    single["Featurizer"] = {}  # trained on one layer: s3prl's Featurizer has no weights then
    single["Args"].upstream_layer_selection = 12
    torch.save(single, tmp_path / "single.ckpt")
    with pytest.raises(ValueError, match=r"single layer \(upstream_layer_selection=12\)"):
        load_featurizer_weights(tmp_path / "single.ckpt")
    torch.save({"Downstream": {"w": torch.zeros(2, 2)}}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match="no featurizer weights found"):
        load_featurizer_weights(tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError):
        load_featurizer_weights(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="1-D"):
        load_featurizer_weights(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="empty"):
        load_featurizer_weights([])


class _SystemPayload:
    """Unpickling this calls ``os.system`` (a classic malicious checkpoint)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _WritePayload:
    """Unpickling this writes a file through ``pathlib.Path.write_text``."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("payload", [_SystemPayload, _WritePayload])
def test_code_executing_checkpoint_is_refused_and_nothing_runs(tmp_path, logits, payload):
    marker = tmp_path / "payload-ran"
    evil = _runner_checkpoint(logits)
    evil["Args"] = payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(evil, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="refused to load.*nothing in the file was "
                                                    "executed"):
        load_featurizer_weights(path)
    with pytest.raises(UnsafeCheckpointError):
        load_featurizer_weights([path])
    assert not marker.exists()  # the payload did not run
    # the payload is live: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_trusted_types_allow_plain_data_types(tmp_path, logits):
    ckpt = _runner_checkpoint(logits)
    ckpt["Args"].expdir = pathlib.PosixPath("result/downstream/x")  # a non-default type
    torch.save(ckpt, tmp_path / "path.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="PosixPath"):
        load_featurizer_weights(tmp_path / "path.ckpt")
    w = load_featurizer_weights(tmp_path / "path.ckpt", trusted_types=[pathlib.PosixPath])
    np.testing.assert_allclose(w.to_numpy(), _softmax(logits), rtol=1e-6)
