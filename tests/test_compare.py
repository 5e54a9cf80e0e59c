"""Frame-level vs utterance-level comparison, on tensors and on a LayerStore."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import s3viz  # noqa: E402
from s3viz.compare import compare_frame_utterance, pool_frames  # noqa: E402
from s3viz.models import (  # noqa: E402
    AttentivePooling,
    FrameLevelLinear,
    FrameLevelMLP,
    MeanPoolingLinear,
    _loop_mean,
)

H, C = 12, 5
CUDA = torch.cuda.is_available()


def _data(seed=0, B=9, T=30):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, H, generator=g)
    hs_len = torch.randint(1, T + 1, (B,), generator=g)
    hs_len[0] = T
    return hs, hs_len


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    frame = FrameLevelLinear(H, C, hidden_size=8)
    return frame, MeanPoolingLinear.from_frame_model(frame), MeanPoolingLinear(H, C, hidden_size=8)


def _naive(frame, utt, hs, hs_len):
    """Per utterance, by hand: pooled frame outputs vs the utterance output."""
    with torch.no_grad():
        y, y_len = frame(hs, hs_len)
        u = utt(hs, hs_len)
    rows = []
    for i, n in enumerate(y_len):
        p = y[i, : int(n)].mean(0)
        cos = float(p @ u[i] / (p.norm() * u[i].norm()))
        rows.append((cos, float((p - u[i]).norm()), int(p.argmax()), int(u[i].argmax())))
    return pd.DataFrame(rows, columns=["cosine", "l2", "argmax_frame", "argmax_utterance"])


def test_exact_case_cosine_one_and_full_agreement(models):
    frame, exact, _ = models
    hs, hs_len = _data()
    df = compare_frame_utterance(frame, exact, (hs, hs_len), batch_size=4)
    assert len(df) == len(hs) and df["utterance"].tolist() == list(range(len(hs)))
    assert df["num_frames"].tolist() == hs_len.tolist()
    np.testing.assert_allclose(df["cosine"], 1.0, atol=1e-5)
    np.testing.assert_allclose(df["l2"], 0.0, atol=1e-5)
    assert df["argmax_agree"].all()
    assert "cosine mean 1.0000" in df.attrs["summary"]


def test_non_exact_case_matches_a_naive_reference(models):
    frame, _, other = models
    hs, hs_len = _data(seed=1)
    df = compare_frame_utterance(frame, other, (hs, hs_len), batch_size=3)
    ref = _naive(frame, other, hs, hs_len)
    np.testing.assert_allclose(df["cosine"], ref["cosine"], atol=1e-5)
    np.testing.assert_allclose(df["l2"], ref["l2"], atol=1e-5, rtol=1e-5)
    assert df["argmax_frame"].tolist() == ref["argmax_frame"].tolist()
    assert df["argmax_utterance"].tolist() == ref["argmax_utterance"].tolist()
    assert (df["argmax_agree"] == (ref["argmax_frame"] == ref["argmax_utterance"])).all()
    assert df["cosine"].max() < 0.999 and not df["argmax_agree"].all()


def test_attentive_utterance_model_and_pooling_choices():
    torch.manual_seed(0)
    frame = FrameLevelMLP(H, H, hidden_sizes=(16,))
    hs, hs_len = _data(seed=2)
    df_att = compare_frame_utterance(frame, AttentivePooling(H), (hs, hs_len))
    assert df_att["cosine"].between(-1, 1).all()
    df_max = compare_frame_utterance(frame, AttentivePooling(H), (hs, hs_len), pooling="max")
    with torch.no_grad():
        y, y_len = frame(hs, hs_len)
        ref_max = torch.stack([y[i, : int(n)].amax(0) for i, n in enumerate(y_len)])
    assert df_max["argmax_frame"].tolist() == ref_max.argmax(-1).tolist()
    # a callable pooling: the last valid frame
    last = compare_frame_utterance(frame, AttentivePooling(H), (hs, hs_len),
                                   pooling=lambda y, n: y[torch.arange(len(n)), n - 1])
    last_frame = y[torch.arange(len(y_len)), y_len - 1]
    assert last["argmax_frame"].tolist() == last_frame.argmax(-1).tolist()


def test_pool_frames_mean_is_the_loop():
    hs, hs_len = _data(seed=3)
    torch.testing.assert_close(pool_frames(hs, hs_len), _loop_mean(hs, hs_len),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        pool_frames(hs, hs_len, "median")


def _store(hs, hs_len, seed=0):
    from s3viz.store import LayerStore

    g = torch.Generator().manual_seed(seed)
    per_utt = []
    for h, n in zip(hs, hs_len):
        n = int(n)
        per_utt.append([h[:n] * 0.5 + torch.randn(n, H, generator=g), h[:n].clone()])
    ids = [f"utt{i}" for i in range(len(hs))]
    return LayerStore.from_tensors(per_utt, downsample_rates=[320, 320], ids=ids)


def test_layer_store_with_a_layer_choice_equals_tensors(models):
    frame, _, other = models
    hs, hs_len = _data(seed=4)
    store = _store(hs, hs_len)
    df_store = compare_frame_utterance(frame, other, store, layer=1, batch_size=4)
    df_tensors = compare_frame_utterance(frame, other, (hs, hs_len))
    assert df_store["id"].tolist() == store.ids
    cols = ["num_frames", "cosine", "l2", "argmax_frame", "argmax_utterance"]
    pd.testing.assert_frame_equal(df_store[cols], df_tensors[cols], atol=1e-5, rtol=1e-5)


def test_layer_store_with_a_featurizer(models):
    from s3viz.featurizers import WeightedSumFeaturizer

    frame, _, other = models
    hs, hs_len = _data(seed=5)
    store = _store(hs, hs_len)
    feat = WeightedSumFeaturizer(store)
    feat.set_weights(probs=[0.0, 1.0])  # all weight on layer 1: the original hs
    feat.train()
    df = compare_frame_utterance(frame, other, store, featurizer=feat)
    assert feat.training, "featurizer's mode restored"
    ref = compare_frame_utterance(frame, other, (hs, hs_len))
    np.testing.assert_allclose(df["cosine"], ref["cosine"], atol=1e-4)


def test_models_are_not_moved_and_modes_restored(models):
    frame, exact, _ = models
    frame.train()
    exact.eval()
    hs, hs_len = _data()
    compare_frame_utterance(frame, exact, (hs, hs_len), device="cpu")
    assert frame.training and not exact.training
    assert next(frame.parameters()).device.type == "cpu"


@pytest.mark.skipif(CUDA, reason="checks the no-CUDA columns")
def test_without_cuda_gpu_columns_are_nan_with_a_note(models):
    frame, exact, _ = models
    df = compare_frame_utterance(frame, exact, _data())
    for col in ("cpu_gpu_frame_max_abs_diff", "cpu_gpu_utterance_max_abs_diff", "gpu_ms"):
        assert df[col].isna().all()
    assert (df["cpu_ms"] >= 0).all()
    assert df.attrs["note"].startswith("no CUDA") and df.attrs["gpu"] is None
    assert df.attrs["device"] == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        compare_frame_utterance(frame, exact, _data(), cpu_vs_gpu=True)
    with pytest.raises(ValueError, match="CUDA"):
        compare_frame_utterance(frame, exact, _data(), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cpu_vs_gpu_columns(models):
    frame, _, other = models
    hs, hs_len = _data(seed=6, B=20)
    df = compare_frame_utterance(frame, other, (hs, hs_len), batch_size=8)
    assert df.attrs["device"].startswith("cuda") and df.attrs["gpu"]
    assert (df["cpu_gpu_frame_max_abs_diff"] < 1e-4).all()
    assert (df["cpu_gpu_utterance_max_abs_diff"] < 1e-4).all()
    assert df["cpu_ms"].notna().all() and df["gpu_ms"].notna().all()
    ref = _naive(frame, other, hs, hs_len)
    np.testing.assert_allclose(df["cosine"], ref["cosine"], atol=1e-4)
    assert next(frame.parameters()).device.type == "cpu", "user's model not moved"
    cpu = compare_frame_utterance(frame, other, (hs, hs_len), device="cpu")
    assert cpu["gpu_ms"].notna().all(), "the GPU is the second device"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"data": "nope"}, TypeError, "LayerStore"),
        ({"data": (torch.zeros(3, H), torch.tensor([1, 1, 1]))}, ValueError, "batch_size, seq_len"),
        ({"data": (torch.zeros(3, 4, H), torch.tensor([1, 1]))}, ValueError, "hs_len"),
        ({"layer": 0}, ValueError, "LayerStore"),
        ({"pooling": "median"}, ValueError, "pooling"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"utterance_model": MeanPoolingLinear(H, C + 1)}, ValueError, "output_size"),
        ({"frame_model": 3}, TypeError, "callable"),
    ],
)
def test_bad_input(models, kwargs, exc, match):
    frame, exact, _ = models
    args = {"frame_model": frame, "utterance_model": exact, "data": _data(), **kwargs}
    with pytest.raises(exc, match=match):
        compare_frame_utterance(args.pop("frame_model"), args.pop("utterance_model"),
                                args.pop("data"), **args)


def test_store_needs_a_layer_choice(models):
    frame, exact, _ = models
    store = _store(*_data())
    with pytest.raises(ValueError, match="layer="):
        compare_frame_utterance(frame, exact, store)
    with pytest.raises(ValueError, match="either"):
        compare_frame_utterance(frame, exact, store, layer=0, featurizer=lambda a, b: (a[0], b[0]))
    with pytest.raises(IndexError, match="layer"):
        compare_frame_utterance(frame, exact, store, layer=2)


def test_public_export():
    assert s3viz.compare_frame_utterance is compare_frame_utterance


# --------------------------------------------------------------------------- plots


def test_frame_vs_utterance_plot(models):
    import matplotlib.pyplot as plt

    from s3viz import plot

    frame, _, other = models
    df = compare_frame_utterance(frame, other, _data(seed=7))
    ax = plot.frame_vs_utterance(df)
    agree, differ = ax.collections[:2]
    assert len(agree.get_offsets()) == int(df["argmax_agree"].sum())
    assert len(differ.get_offsets()) == int((~df["argmax_agree"]).sum())
    assert "argmax agreement" in ax.get_title()
    with pytest.raises(ValueError, match="compare_frame_utterance"):
        plot.frame_vs_utterance(pd.DataFrame({"x": [1]}))
    plt.close("all")


def test_utterance_outputs_plot(models):
    import matplotlib.pyplot as plt

    from s3viz import plot

    frame, exact, _ = models
    hs, hs_len = _data(seed=8)
    with torch.no_grad():
        y, y_len = frame(hs, hs_len)
        u = exact(hs, hs_len)
    i = 3
    ax = plot.utterance_outputs(y[i], u[i], frame_len=int(y_len[i]), labels=list("abcde"))
    heat, mean_col, utt_col = ax.images
    assert heat.get_array().shape == (C, int(y_len[i]))
    np.testing.assert_allclose(np.asarray(mean_col.get_array()).ravel(),
                               y[i, : int(y_len[i])].mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(utt_col.get_array()).ravel(), u[i].numpy(), atol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == list("abcde")
    ax2 = plot.utterance_outputs(y[i].numpy(), u[i].numpy(), show_mean=False, colorbar=False)
    assert len(ax2.images) == 2
    with pytest.raises(ValueError, match="output_size"):
        plot.utterance_outputs(y[i], u[i][:3])
    with pytest.raises(ValueError, match="seq_len, output_size"):
        plot.utterance_outputs(y, u[i])
    plt.close("all")
