"""Non-finite hidden states are refused where they enter s3viz, naming the utterance and layer.

One NaN in one frame silently changes a layer's probe accuracy and makes its CKA NaN, so a
LayerStore never holds one: extract (and so stream_analysis and the sharded run, which share
its batch runner), LayerStore.from_tensors and compare_frame_utterance refuse them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import s3viz
from s3viz.data import synthetic_corpus
from s3viz.measures import RidgeProbe
from s3viz.store import LayerStore, NonFiniteError
from s3viz.interface import AbsUpstream
from s3viz.upstreams import get_upstream


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(6, seed=0)


class Poisoned(AbsUpstream):
    """The random-weight tiny upstream, with ``value`` written into one frame of one
    layer of one utterance (recognised by its length)."""

    def __init__(self, length, layer=2, value=float("nan")):
        super().__init__()
        self.inner = get_upstream("tiny", pretrained=False)
        self.length, self.layer, self.value = length, layer, value

    num_layer = property(lambda self: self.inner.num_layer)
    hidden_sizes = property(lambda self: self.inner.hidden_sizes)
    downsample_rates = property(lambda self: self.inner.downsample_rates)

    def forward(self, wavs, wavs_len):
        all_hs, all_len = self.inner(wavs, wavs_len)
        all_hs = [h.clone() for h in all_hs]
        for b, n in enumerate(torch.as_tensor(wavs_len).tolist()):
            if n == self.length:
                all_hs[self.layer][b, 3, 5] = self.value
        return all_hs, all_len


def test_from_tensors_refuses_a_nan_and_names_it(corpus):
    store = s3viz.extract(get_upstream("tiny", pretrained=False), corpus, progress=False)
    hh = [[store.utterance(i)[layer] for layer in (0, 2)] for i in range(len(corpus))]
    hh[3][1] = hh[3][1].clone()
    hh[3][1][5, 7] = float("nan")
    with pytest.raises(NonFiniteError, match=r"hidden_states\[3\]\[1\] \(utterance 3 \('utt0003'\), "
                                             r"layer 1\) has NaN/inf \(the first at frame 5\)"):
        LayerStore.from_tensors(hh, downsample_rates=[320, 320], ids=store.ids)
    hh[3][1][5, 7] = float("inf")
    with pytest.raises(NonFiniteError, match="refuses non-finite hidden states"):
        LayerStore.from_tensors(hh, downsample_rates=[320, 320])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_extract_refuses_and_names_utterance_and_layer(corpus, value, tmp_path):
    target = corpus[2]
    up = Poisoned(target.num_samples, layer=2, value=value)
    with pytest.raises(NonFiniteError, match=rf"hidden state 2 of utterance '{target.id}' has "
                                             r"NaN/inf in 1 of its \d+ frames \(the first at "
                                             r"frame 3\)"):
        s3viz.extract(up, corpus, progress=False)
    with pytest.raises(NonFiniteError):  # the disk path refuses before writing the chunk
        s3viz.extract(up, corpus, progress=False, cache_dir=tmp_path)
    with pytest.raises(NonFiniteError):  # and a rerun does not take the partial cache as done
        s3viz.extract(up, corpus, progress=False, cache_dir=tmp_path)


def test_float16_overflow_on_the_way_into_the_store_is_refused(corpus):
    up = Poisoned(corpus[1].num_samples, layer=0, value=1e6)  # fine in float32, inf in float16
    assert torch.isfinite(s3viz.extract(up, corpus, progress=False).layer(0)[0]).all()
    with pytest.raises(NonFiniteError, match=f"utterance '{corpus[1].id}'"):
        s3viz.extract(up, corpus, progress=False, store_dtype=torch.float16)


def test_streamed_analysis_refuses_too(corpus):
    up = Poisoned(corpus[4].num_samples, layer=1)
    with pytest.raises(NonFiniteError, match=f"hidden state 1 of utterance '{corpus[4].id}'"):
        s3viz.stream_analysis(up, corpus, [RidgeProbe("phone", folds=2, split_by="utterance")])


def test_compare_refuses_nan_in_valid_frames_not_in_padding():
    from s3viz.models import FrameLevelLinear, MeanPoolingLinear

    torch.manual_seed(0)
    hs = torch.randn(3, 10, 8)
    lens = torch.tensor([10, 6, 4])
    frame, utt = FrameLevelLinear(8, 4), MeanPoolingLinear(8, 4)
    hs[1, 8] = float("nan")  # padding of utterance 1: ignored
    df = s3viz.compare_frame_utterance(frame, utt, (hs, lens), device="cpu", cpu_vs_gpu=False)
    assert np.isfinite(df["cosine"]).all()
    hs[2, 1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="the hidden states of utterance '2' hold NaN/inf"):
        s3viz.compare_frame_utterance(frame, utt, (hs, lens), device="cpu", cpu_vs_gpu=False)
