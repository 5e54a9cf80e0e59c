"""Probes, featurizer scores and similarity do not move when features are shifted or scaled.

Issue 17, class 4: a 1e6 offset used to take a layer's ridge probe from 0.10 to 0.06
(uncentred sums of squares), features scaled by 1e20 or 1e-30 gave a CKA of NaN
(float32 products overflowing or vanishing), and constant (dead) features of a shifted
layer were blown up to unit variance. Every measure below is offset- and
scale-invariant in exact arithmetic, so each must give the untouched store's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _sharding import ThreadSum, run_threads
from hypothesis import given, settings
from hypothesis import strategies as hst

import s3viz
from s3viz._numerics import Moments, column_median, pow2_factor, safe_scale
from s3viz.measures import LayerCKA, RidgeProbe
from s3viz.data import synthetic_corpus
from s3viz.store import LayerStore
from s3viz.probe import ProbeStats
from s3viz.similarity import CrossProducts
from s3viz.upstreams import get_upstream

N_UTT = 24
LAYERS = (0, 2)


@pytest.fixture(scope="module")
def frames():
    corpus = synthetic_corpus(N_UTT, seed=0)
    st = s3viz.extract(get_upstream("tiny", pretrained=False), corpus, progress=False)
    hh = [[st.utterance(i)[layer].double() for layer in LAYERS] for i in range(N_UTT)]
    return st, hh


def _store(frames, f):
    st, hh = frames
    return LayerStore.from_tensors(
        [[f(x) for x in row] for row in hh], ids=st.ids, labels=st.labels, phones=st.phones,
        downsample_rates=[st.downsample_rates[layer] for layer in LAYERS])


def _dead(x):  # five constant features, as a layer with dead units has
    return torch.cat([x, torch.full((x.shape[0], 5), 3.3, dtype=x.dtype)], 1)


TRANSFORMS = {
    "offset 1e6": lambda x: x + 1e6,
    "scale 1e20": lambda x: x * 1e20,
    "scale 1e-30": lambda x: x * 1e-30,
    "dead features": _dead,
    "dead features + 1e6": lambda x: _dead(x) + 1e6,
}


def _measures(store):
    out = {}
    ridge = s3viz.probe_layers(store, "phone", device="cpu")
    out["ridge phone"] = ridge["accuracy"].to_numpy()
    spk = s3viz.probe_layers(store, "speaker", split_by="utterance", device="cpu")  # dual
    out["ridge speaker"] = spk["accuracy"].to_numpy()
    logit = s3viz.probe_layers(store, "phone", method=s3viz.LogisticOptions(max_epochs=3),
                               device="cpu")
    out["logistic phone"] = logit["accuracy"].to_numpy()
    out["cka"] = s3viz.layer_similarity(store, device="cpu").to_numpy()
    out["cca"] = s3viz.layer_similarity(store, method="cca", device="cpu").to_numpy()
    out["cka minibatch"] = s3viz.layer_similarity(store, method=s3viz.CKAOptions("minibatch", 256),
                                                  device="cpu").to_numpy()
    scorer = s3viz.WeightedScorer(store, "phone", dims=None, device="cpu")
    out["weighted sum"] = np.array([scorer.score(torch.tensor([0.3, 0.7]))])
    return out


@pytest.fixture(scope="module")
def base(frames):
    return _measures(_store(frames, lambda x: x))


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_measures_do_not_see_offsets_scales_or_dead_features(frames, base, name):
    got = _measures(_store(frames, TRANSFORMS[name]))
    for key, want in base.items():
        assert np.isfinite(got[key]).all(), (name, key, got[key])
        tol = 1e-6 if key.startswith(("cka", "cca")) else 1e-9
        np.testing.assert_allclose(got[key], want, atol=tol, err_msg=f"{name}: {key}")


def test_a_float64_store_is_read_in_float64(frames):
    """Read in float32, a feature of 1e6 keeps steps of 1/16 only: nothing could undo that."""
    store = _store(frames, lambda x: x + 1e6)
    assert store.store_dtype == torch.float64
    x, _ = store.layer(0, dtype=torch.float64)
    torch.testing.assert_close(x - 1e6, torch.cat([row[0] for row in frames[1]]), rtol=0,
                               atol=1e-9)
    assert store.pooled(0, dtype=torch.float64).dtype == torch.float64


# --------------------------------------------------------------------------- ProbeStats


def _data(offset, n=600, h=5, seed=3):
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.standard_normal((n, h)))
    y = torch.tensor(rng.integers(3, size=n))
    return x, x + offset, y


def test_probe_stats_fit_is_offset_invariant():
    x, xo, y = _data(1e7)
    w0, b0 = ProbeStats.from_data(x, y).solve(1e-3)
    w1, b1 = ProbeStats.from_data(xo, y).solve(1e-3)
    torch.testing.assert_close(w1, w0, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(xo @ w1 + b1, x @ w0 + b0, rtol=0, atol=1e-6)


def test_probe_stats_parts_with_their_own_shifts_add_up():
    _, xo, y = _data(1e7)
    whole = ProbeStats.from_data(xo, y, num_targets=3)
    parts = [ProbeStats.from_data(xo[i:i + 150], y[i:i + 150], num_targets=3)
             for i in range(0, 600, 150)]
    assert len({tuple(p.shift.tolist()) for p in parts}) == 4
    merged = sum(parts)
    for lam in (1e-3, 1.0):
        for got, want in zip(merged.solve(lam), whole.solve(lam)):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)


def test_probe_stats_reduced_over_shards_equals_whole():
    _, xo, y = _data(1e7)
    whole = ProbeStats.from_data(xo, y, num_targets=3)
    summer = ThreadSum(2)
    cut = [slice(0, 200), slice(200, 600)]

    def work(r):
        part = ProbeStats.from_data(xo[cut[r]] * 1.0, y[cut[r]], num_targets=3)
        return part.reduced(summer.reducer(r))

    out, errors = run_threads(2, work)
    assert errors == [None, None], errors
    torch.testing.assert_close(out[0].shift, out[1].shift, rtol=0, atol=0)  # the same everywhere
    for st in out:
        for got, want in zip(st.solve(1e-2), whole.solve(1e-2)):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)


def test_probe_stats_dev_mse_with_dev_stats_of_another_shift():
    _, xo, y = _data(1e6)
    train = ProbeStats.from_data(xo[:400], y[:400], num_targets=3)
    dev = ProbeStats.from_data(xo[400:], y[400:], num_targets=3)
    _, x0, _ = _data(0.0)
    train0 = ProbeStats.from_data(x0[:400], y[:400], num_targets=3)
    dev0 = ProbeStats.from_data(x0[400:], y[400:], num_targets=3)
    torch.testing.assert_close(train.dev_mse(dev, [1e-3, 1.0]), train0.dev_mse(dev0, [1e-3, 1.0]),
                               rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- moments, CKA sums


def test_moments_offset_and_shards():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((1000, 4)) * [1, 2, 3, 0] + 1e9)
    m = Moments((4,))
    for i in range(0, 1000, 128):
        m.update(x[i:i + 128])
    centred = (x - x.mean(0)).numpy()
    np.testing.assert_allclose(m.var.numpy(), centred.var(0), rtol=1e-9, atol=1e-12)
    assert float(m.var[3]) == 0.0  # the constant feature exactly
    summer = ThreadSum(2)

    def work(r):
        part = Moments((4,)).update(x[:300] if r == 0 else x[300:] * 1.0)
        return part.reduced(summer.reducer(r))

    out, errors = run_threads(2, work)
    assert errors == [None, None], errors
    for got in out:
        np.testing.assert_allclose(got.var.numpy(), centred.var(0), rtol=1e-9, atol=1e-12)
        assert got.n == 1000


def test_safe_scale_judges_each_feature_by_itself_and_keeps_small_layers():
    # no feature is dead for being small beside the others (exact in float64): only 0 is
    std = torch.tensor([1e-30, 2e-30, 0.0, 1e-45], dtype=torch.float64)
    assert safe_scale(std).tolist() == [1e-30, 2e-30, 1.0, 1e-45]
    # rounding noise of a constant 1e6 feature is not a feature
    assert safe_scale(torch.tensor([1.0, 1e-10]), mean=torch.tensor([0.0, 1e6])).tolist() == [
        1.0, 1.0]
    assert pow2_factor(torch.full((3, 2), 1e20)) == 2.0 ** -round(np.log2(1e20))
    assert pow2_factor(torch.zeros(3, 2)) == 1.0


def test_sharded_cka_with_shards_of_different_scale():
    """Shards fix their own powers of two (here 2^0 and 2^-10): the reduction brings them
    to common ones exactly, so two shards give the single process's CKA."""
    rng = np.random.default_rng(7)
    a = torch.tensor(rng.standard_normal((400, 6)))
    b = a @ torch.tensor(rng.standard_normal((6, 3))) + 0.3 * torch.tensor(
        rng.standard_normal((400, 3)))
    a[200:] *= 1024.0
    b[200:] *= 1024.0

    def cka(h):
        return h[(0, 1)] / np.sqrt(h[(0, 0)] * h[(1, 1)])

    pairs = [(0, 0), (0, 1), (1, 1)]
    single = CrossProducts(pairs, "cpu", torch.float32)
    single.add([a, b])
    want = cka(single.hsic()[0])
    summer = ThreadSum(2)

    def work(r):
        acc = CrossProducts(pairs, "cpu", torch.float32)
        rows = slice(0, 200) if r == 0 else slice(200, 400)
        acc.add([a[rows], b[rows]])
        return acc.factor[0], cka(acc.hsic(reduce=summer.reducer(r), sizes=[6, 3])[0])

    out, errors = run_threads(2, work)
    assert errors == [None, None], errors
    assert out[0][0] != out[1][0]
    for _, got in out:
        assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name, reference", [("offset 1e6", None), ("scale 1e20", None),
                                             ("scale 1e-30", None),
                                             ("dead features + 1e6", "dead features")])
def test_train_featurizer_standardises_any_offset_and_scale(frames, name, reference):
    """Its train statistics are shifted moments (they were E[x^2] - E[x]^2 with an absolute
    floor of 1e-8 that left every feature of a 1e-30 layer unstandardised)."""
    ref = TRANSFORMS[reference] if reference else (lambda x: x)
    opts = s3viz.TrainOptions(steps=40)
    _, want = s3viz.train_featurizer(_store(frames, ref), "phone", options=opts, device="cpu")
    _, got = s3viz.train_featurizer(_store(frames, TRANSFORMS[name]), "phone", options=opts,
                                    device="cpu")
    cols = ["loss", "dev_accuracy", "weight_0", "weight_1"]
    np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(), rtol=1e-5, atol=1e-6)


class _Scaled(torch.nn.Module):
    """The random-weight tiny upstream, every hidden state times ``factor`` (a power of
    two: exact)."""

    def __init__(self, factor):
        super().__init__()
        self.inner, self.factor = get_upstream("tiny", pretrained=False), factor

    num_layer = property(lambda self: self.inner.num_layer)
    hidden_sizes = property(lambda self: self.inner.hidden_sizes)
    downsample_rates = property(lambda self: self.inner.downsample_rates)

    def forward(self, wavs, wavs_len):
        hs, lens = self.inner(wavs, wavs_len)
        return [h * self.factor for h in hs], lens


@pytest.mark.slow
def test_stream_analysis_does_not_see_the_scale():
    """The streamed probes and CKA (batch statistics summed as they come) under 2^60 and
    2^-90: float32 CKA products of 2^60 features overflowed."""
    corpus = synthetic_corpus(10, seed=1)
    kw = dict(measures=[RidgeProbe("phone", folds=2, split_by="utterance"), LayerCKA()],
              batch_size=4, device="cpu")
    base = s3viz.stream_analysis(_Scaled(1.0), corpus, **kw)
    for factor in (2.0 ** 60, 2.0 ** -90):
        got = s3viz.stream_analysis(_Scaled(factor), corpus, **kw)
        np.testing.assert_allclose(got["probe"]["accuracy"], base["probe"]["accuracy"],
                                   atol=1e-9)
        np.testing.assert_allclose(got["cka"].to_numpy(), base["cka"].to_numpy(), atol=1e-6)


def test_cka_scale_is_fixed_by_the_first_block_that_varies():
    """A first block of one frame (or constant frames) has no spread to pick a power of two
    from; the next block's 1e20 features must not overflow float32 products."""
    rng = np.random.default_rng(9)
    a = torch.tensor(rng.standard_normal((300, 4))) * 1e20
    b = a @ torch.tensor(rng.standard_normal((4, 3)))
    acc = CrossProducts([(0, 0), (0, 1), (1, 1)], "cpu", torch.float32)
    acc.add([a[:1], b[:1]])
    acc.add([a[1:], b[1:]])
    h = acc.hsic()[0]
    ref = CrossProducts([(0, 0), (0, 1), (1, 1)], "cpu", torch.float32)
    ref.add([a / 1e20, b / 1e20])
    r = ref.hsic()[0]
    assert np.isfinite(list(h.values())).all()
    assert h[(0, 1)] / np.sqrt(h[(0, 0)] * h[(1, 1)]) == pytest.approx(
        r[(0, 1)] / np.sqrt(r[(0, 0)] * r[(1, 1)]), rel=1e-5)


def test_renamed_layers_renames_degenerate_warnings_and_keeps_them_on_an_error():
    import warnings

    from s3viz._numerics import DegenerateLayerWarning, renamed_layers, warn_degenerate

    with pytest.warns(DegenerateLayerWarning, match=r"stored layer 7: it is constant"):
        with renamed_layers([5, 7]):
            warn_degenerate("probe_layers", {1: "it is constant"})
    with pytest.warns(UserWarning, match="seen before the error"), \
            pytest.raises(ValueError, match="inside"):
        with renamed_layers([0]):
            warnings.warn("seen before the error", UserWarning, stacklevel=2)
            raise ValueError("inside")


@settings(max_examples=80, deadline=None)
@given(hst.integers(1, 40), hst.integers(1, 6), hst.integers(0, 2 ** 16), hst.booleans())
def test_column_median_is_torchs_lower_median(rows, cols, seed, ties):
    """The profile's medians (numpy's partition) equal torch.median's: the lower middle
    value for an even count, ties and NaN (propagated) alike."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    if ties:
        x = x.round()
    assert torch.equal(column_median(x), x.median(0).values)
    x[rows // 2, 0] = float("nan")
    got, want = column_median(x), x.median(0).values
    assert torch.isnan(got[0]) and torch.isnan(want[0]) and torch.equal(got[1:], want[1:])


def test_farthest_row_is_found_beside_a_feature_of_1e300():
    """A feature near 1e-300 beside one near 1e300: the farthest row's deviation is
    taken in the values' own units, not after the power of two that brings 1e300 near
    1 (which flushes 5e-300 to 0 and made every row tie)."""
    from s3viz._numerics import tensor_guard

    x = torch.tensor([[1e300, 0.0], [1e300, 1e-300], [1e300, 5e-300], [1e300, 2e-300]],
                     dtype=torch.float64)
    reason = tensor_guard(x, torch.float64, centre=True, names=lambda i: f"row {i}").reason
    assert reason is not None and reason.endswith("the farthest row: row 2"), reason
