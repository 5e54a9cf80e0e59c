"""Frame- and utterance-level models against s3prl-style per-utterance loops."""

from __future__ import annotations

import pytest
import torch

from s3viz.models import (
    AttentivePooling,
    FrameLevelLinear,
    FrameLevelMLP,
    MeanPooling,
    MeanPoolingLinear,
    StatisticsPooling,
    _loop_attentive,
    _loop_mean,
    _loop_statistics,
    length_mask,
    masked_max,
    masked_mean,
    masked_mean_std,
    masked_softmax_pool,
)

ATOL, RTOL = 1e-5, 1e-5
H = 24


def _batch(seed=0, B=7, T=40, h=H, min_len=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, h, generator=g, dtype=dtype)
    x_len = torch.randint(min_len, T + 1, (B,), generator=g)
    x_len[0] = T
    x_len[1] = min_len
    return x, x_len


def _with_padding(x, x_len, value):
    y = x.clone()
    y[~length_mask(x_len, x.shape[1])] = value
    return y


# --------------------------------------------------------------------------- against the loops


def test_mean_pooling_matches_loop():
    x, x_len = _batch(min_len=1)
    torch.testing.assert_close(MeanPooling(H)(x, x_len), _loop_mean(x, x_len), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(masked_mean(x, x_len), _loop_mean(x, x_len), atol=ATOL, rtol=RTOL)


def test_statistics_pooling_matches_loop():
    x, x_len = _batch()
    out = StatisticsPooling(H)(x, x_len)
    assert out.shape == (x.shape[0], 2 * H)
    torch.testing.assert_close(out, _loop_statistics(x, x_len), atol=ATOL, rtol=RTOL)


def test_statistics_pooling_population_std_and_single_frames():
    x, x_len = _batch(min_len=1)
    _, std = masked_mean_std(x, x_len, correction=0)
    ref = torch.stack([x[i, : int(n)].std(0, correction=0) for i, n in enumerate(x_len)])
    torch.testing.assert_close(std, ref, atol=ATOL, rtol=RTOL)
    # one frame: unbiased std is undefined (torch.std gives NaN); s3viz gives 0
    _, std1 = masked_mean_std(x, x_len, correction=1)
    assert x_len[1] == 1 and torch.equal(std1[1], torch.zeros(H))
    assert torch.isfinite(std1).all()


def test_statistics_pooling_is_accurate_with_a_large_mean():
    """Mean 1e4, std 1: one-pass E[x^2] - mean^2 in float32 loses everything; two-pass does not."""
    g = torch.Generator().manual_seed(1)
    x = (1e4 + torch.randn(6, 300, H, generator=g, dtype=torch.float64)).float()
    x_len = torch.tensor([300, 299, 150, 64, 7, 2])
    ref = _loop_statistics(x.double(), x_len)  # float64 reference on the same float32 values
    out = StatisticsPooling(H)(x, x_len).double()
    torch.testing.assert_close(out[:, H:], ref[:, H:], rtol=1e-4, atol=0.0)
    torch.testing.assert_close(out[:, :H], ref[:, :H], rtol=1e-7, atol=2e-3)  # float32 of 1e4
    # the naive one-pass formula on the same data is far off, so this test can tell them apart
    m = length_mask(x_len, 300).float()
    n = x_len[:, None].float()
    s1 = torch.einsum("bt,bth->bh", m, x)
    s2 = torch.einsum("bt,bth->bh", m, x * x)
    naive = ((s2 - s1 * s1 / n) / (n - 1)).clamp(min=0).sqrt()
    assert ((naive.double() - ref[:, H:]).abs() / ref[:, H:]).max() > 1e-2


def test_attentive_pooling_matches_loop():
    torch.manual_seed(0)
    model = AttentivePooling(H)
    x, x_len = _batch(min_len=1)
    with torch.no_grad():
        out = model(x, x_len)
        ref = _loop_attentive(model, x, x_len)
        weights = model.attention_weights(x, x_len)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    mask = length_mask(x_len, x.shape[1])
    assert torch.equal(weights[~mask], torch.zeros(int((~mask).sum())))
    torch.testing.assert_close(weights.sum(1), torch.ones(x.shape[0]))


@pytest.mark.parametrize("block_bytes", [16 * 4 * H, 37 * 4 * H])
def test_poolings_in_small_cpu_blocks_match_loops(monkeypatch, block_bytes):
    """The CPU row/time blocks (normally a few MiB) give the same numbers when there are many."""
    import s3viz.models as models

    monkeypatch.setattr(models, "_CPU_BLOCK_BYTES", block_bytes)
    torch.manual_seed(0)
    att = AttentivePooling(H)
    x, x_len = _batch(seed=9, B=5, T=70)
    x = _with_padding(x, x_len, float("nan"))
    with torch.no_grad():
        torch.testing.assert_close(att(x, x_len), _loop_attentive(att, x, x_len),
                                   atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(StatisticsPooling(H)(x, x_len), _loop_statistics(x, x_len),
                                   atol=ATOL, rtol=RTOL)
    assert models._time_block(x) < x.shape[1]


def test_softmax_pool_uniform_scores_is_the_mean():
    x, x_len = _batch(min_len=1)
    pooled, _ = masked_softmax_pool(x, x_len, torch.zeros(x.shape[:2]))
    torch.testing.assert_close(pooled, _loop_mean(x, x_len), atol=ATOL, rtol=RTOL)


def test_masked_max_matches_loop():
    x, x_len = _batch(min_len=1)
    ref = torch.stack([x[i, : int(n)].amax(0) for i, n in enumerate(x_len)])
    assert torch.equal(masked_max(_with_padding(x, x_len, 1e9), x_len), ref)


def test_frame_level_linear_is_s3prl_two_linears():
    torch.manual_seed(0)
    model = FrameLevelLinear(H, 5, hidden_size=16)
    x, x_len = _batch()
    y, y_len = model(x, x_len)
    assert y.shape == (x.shape[0], x.shape[1], 5) and y_len is x_len
    lin1, lin2 = model.hidden_layers[0], model.final_proj
    torch.testing.assert_close(y, x @ lin1.weight.T @ lin2.weight.T + lin1.bias @ lin2.weight.T
                               + lin2.bias, atol=ATOL, rtol=RTOL)
    assert len(FrameLevelLinear(H, 5, hidden_size=None).hidden_layers) == 0


def test_frame_level_mlp_structure():
    model = FrameLevelMLP(H, 3, hidden_sizes=(8, 6), activation="GELU", dropout=0.1)
    kinds = [type(m).__name__ for m in model.hidden_layers]
    assert kinds == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout"]
    assert (model.input_size, model.output_size) == (H, 3)
    model.eval()
    x, x_len = _batch()
    y, _ = model(x, x_len)
    ref = model.final_proj(model.hidden_layers(x))
    assert torch.equal(y, ref)


def test_mean_pooling_linear_matches_s3prl_order():
    """s3prl: Linear -> MeanPooling -> Linear per utterance; s3viz pools first (linear: equal)."""
    torch.manual_seed(0)
    model = MeanPoolingLinear(H, 4, hidden_size=10)
    x, x_len = _batch(min_len=1)
    with torch.no_grad():
        out = model(x, x_len)
        ref = model.final_proj(_loop_mean(model.hidden_layers(x), x_len))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_mean_pooling_linear_from_frame_model_is_exactly_pooled_frames():
    torch.manual_seed(0)
    frame = FrameLevelLinear(H, 6, hidden_size=12)
    utt = MeanPoolingLinear.from_frame_model(frame)
    x, x_len = _batch(min_len=1)
    with torch.no_grad():
        y, y_len = frame(x, x_len)
        torch.testing.assert_close(utt(x, x_len), _loop_mean(y, y_len), atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="linear"):
        MeanPoolingLinear.from_frame_model(FrameLevelMLP(H, 6))
    with pytest.raises(TypeError, match="FrameLevelLinear"):
        MeanPoolingLinear.from_frame_model(MeanPooling(H))


def test_float64_inputs():
    x, x_len = _batch(dtype=torch.float64)
    out = StatisticsPooling(H)(x, x_len)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _loop_statistics(x, x_len), atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------- padding invariance


def _utterance_models():
    torch.manual_seed(0)
    return [MeanPooling(H), StatisticsPooling(H), AttentivePooling(H), MeanPoolingLinear(H, 5)]


@pytest.mark.parametrize("garbage", [0.0, 1e30, -7.0, float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("model", _utterance_models(), ids=lambda m: type(m).__name__)
def test_padding_invariance(model, garbage):
    x, x_len = _batch(seed=3)
    with torch.no_grad():
        clean = model(_with_padding(x, x_len, 0.0), x_len)
        dirty = model(_with_padding(x, x_len, garbage), x_len)
        # and each utterance alone, without any padding
        alone = torch.cat([model(x[i : i + 1, : int(n)], x_len[i : i + 1])
                           for i, n in enumerate(x_len)])
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(dirty, clean, atol=0.0, rtol=0.0)
    torch.testing.assert_close(clean, alone, atol=ATOL, rtol=RTOL)


def test_frame_models_valid_outputs_ignore_padding():
    torch.manual_seed(0)
    model = FrameLevelMLP(H, 4)
    x, x_len = _batch(seed=4)
    mask = length_mask(x_len, x.shape[1])
    with torch.no_grad():
        a, _ = model(_with_padding(x, x_len, 0.0), x_len)
        b, _ = model(_with_padding(x, x_len, float("nan")), x_len)
    assert torch.equal(a[mask], b[mask])


def test_gradients_are_finite_and_zero_on_padding():
    torch.manual_seed(0)
    x, x_len = _batch(seed=5)
    mask = length_mask(x_len, x.shape[1])
    for model in (StatisticsPooling(H), AttentivePooling(H), MeanPooling(H)):
        xr = x.clone().requires_grad_(True)
        model(xr, x_len).square().sum().backward()
        assert torch.isfinite(xr.grad).all()
        assert torch.equal(xr.grad[~mask], torch.zeros_like(xr.grad[~mask]))
        assert xr.grad[mask].abs().sum() > 0


@pytest.mark.parametrize("garbage", [3e38, float("nan")])
def test_attention_parameter_gradients_ignore_padding(garbage):
    torch.manual_seed(0)
    model = AttentivePooling(H)
    x, x_len = _batch(seed=7)
    grads = []
    for value in (0.0, garbage):
        model.zero_grad()
        model(_with_padding(x, x_len, value), x_len).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for clean, dirty in zip(*grads):
        assert torch.isfinite(dirty).all()
        torch.testing.assert_close(dirty, clean, atol=0.0, rtol=0.0)


# --------------------------------------------------------------------------- contracts


def test_contract_checks_pass():
    from s3viz.contract import check_frame_model, check_utterance_model

    torch.manual_seed(0)
    for model in (FrameLevelLinear(H, 5), FrameLevelMLP(H, 5, hidden_sizes=(8,))):
        report = check_frame_model(model)
        assert report.ok, report.failures()
    for model in _utterance_models():
        report = check_utterance_model(model)
        assert report.ok, report.failures()
        assert report.counts().get("warn", 0) == 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "x, x_len, exc, match",
    [
        (torch.zeros(3, H), torch.tensor([1, 1, 1]), ValueError, "unsqueeze"),
        (torch.zeros(2, 5, H), torch.tensor([5]), ValueError, r"\(batch_size,\)"),
        (torch.zeros(2, 5, H), torch.tensor([5, 6]), ValueError, "longer than seq_len"),
        (torch.zeros(2, 5, H), torch.tensor([5, 0]), ValueError, "at least one valid frame"),
        (torch.zeros(2, 5, H), torch.tensor([5.0, 1.0]), TypeError, "integer"),
        (torch.zeros(2, 5, H, dtype=torch.long), torch.tensor([5, 1]), TypeError, "float"),
        (torch.zeros(2, 5, H + 1), torch.tensor([5, 1]), ValueError, "input_size"),
    ],
)
def test_bad_input_is_named(x, x_len, exc, match):
    with pytest.raises(exc, match=match):
        StatisticsPooling(H)(x, x_len)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="activation"):
        FrameLevelMLP(H, 2, activation="relu_please")
    with pytest.raises(ValueError, match="input_size"):
        MeanPooling(0)
    with pytest.raises(ValueError, match="correction"):
        masked_mean_std(torch.zeros(1, 2, 3), torch.tensor([2]), correction=-1)
    with pytest.raises(ValueError, match="scores"):
        masked_softmax_pool(torch.zeros(1, 2, 3), torch.tensor([2]), torch.zeros(2, 2))


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", _utterance_models(), ids=lambda m: type(m).__name__)
def test_gpu_matches_cpu_and_loops(model):
    x, x_len = _batch(seed=6, B=16, T=120)
    xg = _with_padding(x, x_len, float("nan")).cuda()
    with torch.no_grad():
        cpu = model(x, x_len)
        gpu = model.cuda()(xg, x_len.cuda()).cpu()
        model.cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
    if isinstance(model, MeanPooling):
        torch.testing.assert_close(gpu, _loop_mean(x, x_len), atol=1e-4, rtol=1e-4)
