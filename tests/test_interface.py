"""The seed interfaces match s3prl's names, properties and signatures."""

from __future__ import annotations

import inspect

import pytest
import torch

import s3viz
from s3viz.interface import (
    AbsFeaturizer,
    AbsFrameModel,
    AbsUpstream,
    AbsUtteranceModel,
    num_layer_of,
)

SEED = {
    AbsUpstream: (["num_layer", "hidden_sizes", "downsample_rates"], ["wavs", "wavs_len"]),
    AbsFeaturizer: (["output_size", "downsample_rate"], ["all_hs", "all_hs_len"]),
    AbsFrameModel: (["input_size", "output_size"], ["x", "x_len"]),
    AbsUtteranceModel: (["input_size", "output_size"], ["x", "x_len"]),
}


@pytest.mark.parametrize("cls", list(SEED), ids=lambda c: c.__name__)
def test_seed_contract(cls):
    props, args = SEED[cls]
    assert issubclass(cls, torch.nn.Module)
    assert getattr(s3viz, cls.__name__) is cls
    for p in props:
        assert isinstance(inspect.getattr_static(cls, p), property), p
    params = list(inspect.signature(cls.forward).parameters)
    assert params == ["self"] + args
    assert cls.forward.__doc__ and "batch_size" in cls.forward.__doc__


def test_abstract_members_raise():
    up = AbsUpstream()
    with pytest.raises(NotImplementedError):
        up.num_layer  # noqa: B018
    with pytest.raises(NotImplementedError):
        up(torch.zeros(1, 10, 1), torch.tensor([10]))


class _Up(AbsUpstream):
    @property
    def num_layer(self):
        return 3


class _S3prlLike:
    num_layers = 5


def test_num_layer_aliases():
    assert _Up().num_layers == 3
    assert num_layer_of(_Up()) == 3
    assert num_layer_of(_S3prlLike()) == 5


@pytest.mark.parametrize("bad", [object(), type("B", (), {"num_layer": "3"})(),
                                 type("Z", (), {"num_layer": 0})(),
                                 type("T", (), {"num_layer": True})()])
def test_num_layer_errors_name_the_fix(bad):
    with pytest.raises(TypeError, match="num_layer"):
        num_layer_of(bad)


def test_device_none_means_cuda_when_available_and_bad_devices_are_named():
    from s3viz._device import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu0")
