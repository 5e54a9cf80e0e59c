"""Linear CKA between layers (s3viz.similarity) against naive Gram-matrix formulas."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from s3viz.store import LayerStore
from s3viz import similarity
from s3viz.similarity import (CCAOptions, CKAOptions, cca_naive, cka_naive, hsic_unbiased,
                              layer_similarity)

N_UTT, N_FRAMES = 30, 20


pytestmark = pytest.mark.usefixtures("one_thread")


def _layers(seed=0, n_utt=N_UTT, n_frames=N_FRAMES):
    """Per utterance: a (large-offset) base layer, a noisy linear map of it, another
    hidden size, and noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(10, 14, generator=g, dtype=torch.float64)
    out = []
    for _ in range(n_utt):
        a = torch.randn(n_frames, 10, generator=g, dtype=torch.float64) * 2 + 100.0
        b = a @ mix + 3 * torch.randn(n_frames, 14, generator=g, dtype=torch.float64)
        c = torch.tanh(a[:, :6] - 100) + 0.5 * torch.randn(n_frames, 6, generator=g,
                                                           dtype=torch.float64)
        d = torch.randn(n_frames, 10, generator=g, dtype=torch.float64)
        out.append([a.float(), b.float(), c.float(), d.float()])
    return out


@pytest.fixture(scope="module")
def store():
    labels = pd.DataFrame({"id": [f"u{i}" for i in range(N_UTT)]})
    return LayerStore.from_tensors(_layers(), downsample_rates=[320] * 4, labels=labels)


@pytest.fixture(scope="module")
def frames(store):
    return [store.layer(layer)[0] for layer in range(store.num_layer)]


@pytest.fixture(scope="module")
def cka(store):
    return layer_similarity(store, device="cpu")


def test_matches_naive_gram_formula(cka, frames):
    ref = np.array([[cka_naive(x, y) for y in frames] for x in frames])
    np.testing.assert_allclose(cka.to_numpy(), ref, atol=1e-4, rtol=0)
    assert cka.index.name == "layer" and list(cka.columns) == [0, 1, 2, 3]
    assert cka.attrs["num_frames"] == N_UTT * N_FRAMES
    # sanity of the data: related layers are similar, the noise layer is not
    assert cka.loc[0, 1] > 0.5 and cka.loc[0, 3] < 0.05


def test_float64_products_match_naive_to_the_last_digits(store, frames):
    df = layer_similarity(store, layers=[0, 2],
                          method=CKAOptions(batch_frames=101, dtype=torch.float64),
                          device="cpu")
    ref = np.array([[cka_naive(frames[i], frames[j]) for j in (0, 2)] for i in (0, 2)])
    np.testing.assert_allclose(df.to_numpy(), ref, atol=1e-9, rtol=0)


def test_self_similarity_is_one_and_symmetric(cka):
    np.testing.assert_allclose(np.diag(cka.to_numpy()), 1.0, atol=1e-10)
    np.testing.assert_allclose(cka.to_numpy(), cka.to_numpy().T, atol=1e-12)


def test_naive_reference_is_itself_right(frames):
    """cka_naive == the feature-space form ||Y^T X||^2 / (||X^T X|| ||Y^T Y||)."""
    x, y = frames[0].double(), frames[2].double()
    x, y = x - x.mean(0), y - y.mean(0)
    feat = (y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())
    assert cka_naive(frames[0], frames[2]) == pytest.approx(float(feat), abs=1e-10)


def test_invariances_against_other_store(store, cka):
    """Orthogonal transform, isotropic scaling and a shift of a layer leave CKA unchanged;
    a non-isotropic scaling changes it."""
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(14, 14, generator=g, dtype=torch.float64))
    scale = torch.linspace(0.1, 10, 14, dtype=torch.float64)
    hs = []
    for i in range(len(store)):
        a, b, _c, _d = [t.double() for t in store.utterance(i)]
        hs.append([(b @ q * 3.7 + 5.0).float(), (b * scale).float(), a.float()])
    other = LayerStore.from_tensors(hs, downsample_rates=[320] * 3, ids=store.ids)
    cross = layer_similarity(store, other, device="cpu")
    assert cross.shape == (4, 3) and cross.columns.name == "other_layer"
    np.testing.assert_allclose(cross[0].to_numpy(), cka[1].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(cross[2].to_numpy(), cka[0].to_numpy(), atol=1e-5)
    assert cross.loc[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert abs(cross.loc[0, 1] - cka.loc[0, 1]) > 0.01
    # and against the naive formula on the transformed frames
    y = other.layer(1)[0]
    for layer in range(4):
        assert cross.loc[layer, 1] == pytest.approx(cka_naive(store.layer(layer)[0], y),
                                                    abs=1e-4)


def test_layer_subsets_and_small_chunks(store, cka):
    sub = layer_similarity(store, layers=[3, 1], other_layers=[0, 2],
                           method=CKAOptions(batch_frames=37),
                           device="cpu")
    assert list(sub.index) == [3, 1] and list(sub.columns) == [0, 2]
    np.testing.assert_allclose(sub.to_numpy(), cka.loc[[3, 1], [0, 2]].to_numpy(), atol=1e-6)


def test_utterance_level_matches_naive(store):
    df = layer_similarity(store, level="utterance", device="cpu")
    pooled = [store.pooled(layer) for layer in range(4)]
    ref = np.array([[cka_naive(x, y) for y in pooled] for x in pooled])
    np.testing.assert_allclose(df.to_numpy(), ref, atol=1e-4)
    assert df.attrs["num_frames"] == N_UTT


def test_max_frames_subsample(store, cka):
    a = layer_similarity(store, max_frames=300, seed=1, device="cpu")
    b = layer_similarity(store, max_frames=300, seed=1, device="cpu")
    c = layer_similarity(store, max_frames=300, seed=2, device="cpu")
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    assert a.attrs["num_frames"] == 300
    np.testing.assert_allclose(a.to_numpy(), cka.to_numpy(), atol=0.1)


def _hsic_u_statistic(k, l_):
    """Song et al.'s unbiased HSIC by its definition: average over ordered 4-tuples of
    distinct indices of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
        count += 1
    return total / count


def test_unbiased_hsic_matches_definition():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = x @ torch.randn(3, 2, generator=g, dtype=torch.float64) + torch.randn(
        8, 2, generator=g, dtype=torch.float64)
    k, l_ = (x @ x.T).numpy(), (y @ y.T).numpy()
    assert hsic_unbiased(x @ x.T, y @ y.T) == pytest.approx(_hsic_u_statistic(k, l_), rel=1e-9)


def test_minibatch_estimator(store, frames, cka):
    n = N_UTT * N_FRAMES
    # one minibatch holding every frame: exactly the unbiased-HSIC CKA of all frames
    one = layer_similarity(store, method=CKAOptions("minibatch", n), device="cpu")
    grams = [(x.double() - x.double().mean(0)) @ (x.double() - x.double().mean(0)).T
             for x in frames]
    ref = np.array([[hsic_unbiased(a, b) / np.sqrt(hsic_unbiased(a, a) * hsic_unbiased(b, b))
                     for b in grams] for a in grams])
    np.testing.assert_allclose(one.to_numpy(), ref, atol=1e-4)
    # small minibatches: close to the exact CKA, self-similarity exactly 1
    mb = layer_similarity(store, method=CKAOptions("minibatch", 100), device="cpu")
    np.testing.assert_allclose(np.diag(mb.to_numpy()), 1.0, atol=1e-9)
    np.testing.assert_allclose(mb.to_numpy(), cka.to_numpy(), atol=0.1)
    assert mb.attrs["estimator"] == "minibatch" and mb.attrs["num_frames"] == n


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(store, cka):
    gpu = layer_similarity(store, device="cuda")
    np.testing.assert_allclose(gpu.to_numpy(), cka.to_numpy(), atol=1e-6)


@pytest.mark.parametrize("keep", [0.99, 0.9, 1.0])
def test_svcca_matches_naive_frames(store, frames, keep):
    """method='cca' from the streamed covariances == SVCCA computed on the frames."""
    df = layer_similarity(store, method=CCAOptions(keep_variance=keep, dtype=torch.float64),
                          device="cpu")
    ref = np.array([[cca_naive(x, y, keep) for y in frames] for x in frames])
    np.testing.assert_allclose(df.to_numpy(), ref, atol=1e-6)
    assert df.attrs["method"] == "cca" and df.attrs["keep_variance"] == keep
    np.testing.assert_allclose(np.diag(df.to_numpy()), 1.0, atol=1e-6)


def test_svcca_invariant_to_invertible_maps_cka_is_not(store):
    """Plain CCA (keep_variance=1) ignores any invertible linear map of a layer, where CKA
    changes under a non-isotropic scaling; an unrelated noise layer stays low."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(14, 14, generator=g, dtype=torch.float64) + 4 * torch.eye(14)
    hs = []
    for i in range(len(store)):
        _a, b, _c, d = [t.double() for t in store.utterance(i)]
        hs.append([b.float(), (b @ m + 2.0).float(), d.float()])
    other = LayerStore.from_tensors(hs, downsample_rates=[320] * 3, ids=store.ids)
    cca = layer_similarity(other, method=CCAOptions(keep_variance=1.0, dtype=torch.float64),
                           device="cpu")
    cka = layer_similarity(other, device="cpu", method=CKAOptions(dtype=torch.float64))
    assert cca.loc[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert cka.loc[0, 1] < 0.99
    assert cca.loc[0, 2] < 0.35


def test_svcca_bad_inputs(store):
    with pytest.raises(TypeError, match="estimator"):  # SVCCA is exact: no estimator
        CCAOptions(estimator="minibatch")
    for bad in (0, 1.5, -0.2, True, "all"):
        with pytest.raises(ValueError, match="keep_variance"):
            layer_similarity(store, method=CCAOptions(keep_variance=bad))


def test_bad_inputs(store):
    mixed = LayerStore.from_tensors(
        [[torch.randn(20, 4), torch.randn(10, 4)] for _ in range(5)],
        downsample_rates=[320, 640])
    with pytest.raises(ValueError, match=r"downsample rate 640 vs 320.*level='utterance'"):
        layer_similarity(mixed)
    assert layer_similarity(mixed, level="utterance").shape == (2, 2)
    assert layer_similarity(mixed, layers=[1]).iloc[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same utterances in the same order"):
        layer_similarity(store, mixed)
    fewer = LayerStore.from_tensors([[t[:-1] for t in store.utterance(i)]
                                     for i in range(len(store))],
                                    downsample_rates=[320] * 4, ids=store.ids)
    with pytest.raises(ValueError, match="layer 0 of `other` has a different number of frames"):
        layer_similarity(store, fewer)
    with pytest.raises(ValueError, match="method must be one of"):
        layer_similarity(store, method="svcca")
    with pytest.raises(ValueError, match="estimator must be one of"):
        layer_similarity(store, method=CKAOptions(estimator="gram"))
    with pytest.raises(IndexError, match=r"layers must hold stored layer indices in \[0, 4\)"):
        layer_similarity(store, layers=[4])
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        layer_similarity(store, method=CKAOptions(dtype=torch.float16))
    with pytest.raises(ValueError, match="batch_frames must be >= 4"):
        layer_similarity(store, method=CKAOptions("minibatch", 2))


def _float64_store(seed=5, n_utt=12):
    """Float64 frames (read in float64) of varied lengths, offsets and widths."""
    g = torch.Generator().manual_seed(seed)
    hs = []
    for _ in range(n_utt):
        t = int(torch.randint(3, 40, (1,), generator=g))
        a = torch.randn(t, 7, generator=g, dtype=torch.float64) * 3 + 50.0
        hs.append([a, a @ torch.randn(7, 5, generator=g, dtype=torch.float64)
                   + torch.randn(t, 5, generator=g, dtype=torch.float64),
                   torch.randn(t, 9, generator=g, dtype=torch.float64) * 1e-3])
    return LayerStore.from_tensors(hs, downsample_rates=[320] * 3)


@pytest.mark.parametrize("block", [1, 7, 50, 10_000])
def test_block_size_does_not_change_the_result(block):
    """Float64 products: any block (one utterance at a time, or all) gives the same table to
    1e-12 relative, as do the (float32) default blocks to float32 rounding."""
    st = _float64_store()
    ref = layer_similarity(st, method=CKAOptions(batch_frames=10_000, dtype=torch.float64),
                           device="cpu")
    got = layer_similarity(st, method=CKAOptions(batch_frames=block, dtype=torch.float64),
                           device="cpu")
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-12, atol=0)
    f32 = layer_similarity(st, method=CKAOptions(batch_frames=block), device="cpu")
    np.testing.assert_allclose(f32.to_numpy(), ref.to_numpy(), rtol=1e-6, atol=0)


def test_block_frames_from_the_memory_budget(store, monkeypatch):
    """The default block: BLOCK_BYTES over (itemsize x the summed widths + BLOCK_COPY_BYTES x
    the widest), at least MIN_BLOCK_FRAMES; and the products never see a larger block."""
    hubert = [768] * 13
    assert similarity._block_frames(hubert) == (128 << 20) // (4 * 9984 + 48 * 768) == 1747
    assert similarity._block_frames(hubert, torch.float64) == (128 << 20) // (8 * 9984
                                                                              + 48 * 768)
    assert similarity._block_frames(hubert, budget=1) == similarity.MIN_BLOCK_FRAMES
    seen = []
    add = similarity.CrossProducts.add

    def spy(self, feats):
        feats = list(feats)
        seen.append(feats[0].shape[0])
        add(self, feats)

    monkeypatch.setattr(similarity.CrossProducts, "add", spy)
    monkeypatch.setattr(similarity, "BLOCK_BYTES", 90 * (4 * 40 + 48 * 14))
    monkeypatch.setattr(similarity, "MIN_BLOCK_FRAMES", 16)
    assert similarity._block_frames([10, 14, 6, 10]) == 90
    df = layer_similarity(store, device="cpu")
    assert max(seen) <= 90 and sum(seen) == N_UTT * N_FRAMES == df.attrs["num_frames"]
    seen.clear()
    layer_similarity(store, method=CKAOptions(batch_frames=45), device="cpu")
    assert seen == [40] * (N_UTT // 2)  # whole utterances of 20 frames


def test_exact_path_accuracy_against_float64(store, frames):
    """The default float32 products of centred blocks, summed in float64, against the
    float64 feature-space CKA of all frames at once; float64 products to the last digits."""
    xs = [f.double() - f.double().mean(0) for f in frames]
    ref = np.array([[float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))
                     for y in xs] for x in xs])
    got = layer_similarity(store, device="cpu").to_numpy()
    assert np.abs(got - ref).max() < 5e-7  # 1.8e-7 (and plain float32 3.1e-7) on this store
    got = layer_similarity(store, method=CKAOptions(batch_frames=77, dtype=torch.float64),
                           device="cpu").to_numpy()
    assert np.abs(got - ref).max() < 1e-12
