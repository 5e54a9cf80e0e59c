"""s3viz._device: device resolution and the eval session every runner shares.

A model's own training flags (per submodule) and device must survive any s3viz
call that runs it; before the shared session, ``length_report`` restored with
``train(was)``, which gave every submodule the top-level flag.
"""

from __future__ import annotations

import pytest
import torch
from _contract_toys import ToyUpstream

import s3viz
from s3viz._device import eval_session, module_device, resolve_device


def _mixed_flags():
    up = ToyUpstream()
    up.train()
    up.mix.eval()  # a frozen submodule inside a model that is training
    return up


def _flags(module):
    return {name: m.training for name, m in module.named_modules()}


def test_eval_session_restores_every_flag_and_the_device():
    up = _mixed_flags()
    before = _flags(up)
    with eval_session(up, torch.device("cpu"), move=True):
        assert not any(m.training for m in up.modules())
    assert _flags(up) == before
    with pytest.raises(RuntimeError, match="inside"), eval_session(up):
        raise RuntimeError("inside")  # an error in the block restores too
    assert _flags(up) == before
    assert module_device(up) == torch.device("cpu")


def test_eval_session_leaves_plain_callables_alone():
    with eval_session(len):
        pass
    assert module_device(len) is None


@pytest.mark.parametrize("run", ["length_report", "extract", "check_num_frames"])
def test_runs_keep_submodule_flags(run):
    up = _mixed_flags()
    before = _flags(up)
    if run == "length_report":
        s3viz.length_report(up, [4000, 9000], device="cpu")
    elif run == "check_num_frames":
        from s3viz import teach

        assert teach.check_num_frames(13, up, wav_len=4000)  # ceil(4000 / 320)
    else:
        from s3viz.data import synthetic_corpus

        s3viz.extract(up, synthetic_corpus(2, seed=0), device="cpu", progress=False)
    assert _flags(up) == before


def test_compare_keeps_submodule_flags_of_models_and_featurizer():
    from s3viz.models import FrameLevelLinear, MeanPoolingLinear

    torch.manual_seed(0)
    frame = FrameLevelLinear(8, 3, hidden_size=4)  # ToyUpstream: hidden 8
    utt = MeanPoolingLinear.from_frame_model(frame)
    featurizer = s3viz.WeightedSumFeaturizer(ToyUpstream())
    store = s3viz.LayerStore.from_tensors(
        [[torch.randn(n, 8), torch.randn(n, 8)] for n in (5, 7, 4)], downsample_rates=[320, 320])
    for m in (frame, utt, featurizer):
        m.train()
        next(iter(m.children()), m).eval()  # a frozen part inside a model that is training
    before = [_flags(m) for m in (frame, utt, featurizer)]
    s3viz.compare_frame_utterance(frame, utt, store, featurizer=featurizer, device="cpu",
                                  cpu_vs_gpu=False)
    assert [_flags(m) for m in (frame, utt, featurizer)] == before


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None, ToyUpstream()) == torch.device("cpu")  # its own device
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu0")
