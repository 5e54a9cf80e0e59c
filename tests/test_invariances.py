"""Every measure keeps the invariances its definition has, in floating point, and refuses
degenerate layers (issue: "invariances that the maths promises").

ABX (angular) and k-means units are scale-invariant, but a layer times 1e-30 gave ABX
0.5 and PNMI 0.0; float64 times 1e-300 broke ridge, CKA and CCA; a constant layer gave
CCA 0.0 and CKA NaN without a word. Now every measure reads a layer through the one
guard of ``s3viz._numerics`` (a power-of-two scale, centring where the measure is
offset-invariant, degenerate layers -> NaN and one DegenerateLayerWarning).
Which invariance each measure has: ``docs/measures.md``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3viz
from s3viz._numerics import DegenerateLayerWarning
from s3viz.store import LayerStore

RATE = 160
PHONES = ("a", "e", "i", "o")
SEG = 5          # frames per phone segment
N_SEG = 8        # segments per utterance
N_UTT = 12
SPEAKERS = ("s0", "s1", "s2")
SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _corpus(seed: int = 0):
    """Two layers whose frames cluster by phone (so ABX and PNMI are far from chance) and
    whose pooled vectors differ by speaker; float64, about unit scale."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(len(PHONES), 6, generator=g, dtype=torch.float64) * 2
    spk = torch.randn(len(SPEAKERS), 6, generator=g, dtype=torch.float64) * 3
    rot = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    frames, phones, speakers = [], [], []
    for u in range(N_UTT):
        s = u % len(SPEAKERS)
        labels = [PHONES[int(v)] for v in torch.randint(len(PHONES), (N_SEG,), generator=g)]
        x0 = torch.cat([means[PHONES.index(p)].expand(SEG, 6) for p in labels])
        x0 = x0 + spk[s] + 0.5 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x1 = torch.tanh(x0 @ rot) + 0.2 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        frames.append([x0, x1])
        phones.append(pd.DataFrame({"phone": labels, "word": ["w"] * N_SEG,
                                    "start": [k * SEG * RATE for k in range(N_SEG)],
                                    "end": [(k + 1) * SEG * RATE for k in range(N_SEG)]}))
        speakers.append(SPEAKERS[s])
    labels = pd.DataFrame({"id": [f"u{u}" for u in range(N_UTT)], "speaker": speakers,
                           "num_samples": [N_SEG * SEG * RATE] * N_UTT})
    return frames, labels, phones


BASE = _corpus()


def _store(f=lambda x, u, l: x, dtype=torch.float64, order=None, base=BASE):
    frames, labels, phones = base
    order = list(range(N_UTT)) if order is None else list(order)
    return LayerStore.from_tensors(
        [[f(frames[u][l], u, l).to(dtype) for l in range(2)] for u in order],
        labels=labels.iloc[order].reset_index(drop=True), phones=[phones[u] for u in order],
        downsample_rates=[RATE, RATE])


def _sim(**kw):
    return lambda s: s3viz.layer_similarity(s, device="cpu", **kw).to_numpy().ravel()


MEASURES = {
    "abx cosine": lambda s: s3viz.abx_layers(s, device="cpu")["abx_error"].to_numpy(),
    "abx euclidean": lambda s: s3viz.abx_layers(s, distance="euclidean",
                                                device="cpu")["abx_error"].to_numpy(),
    "pnmi": lambda s: s3viz.unit_quality(s, k=4, device="cpu")["pnmi"].to_numpy(),
    "ridge frame": lambda s: s3viz.probe_layers(s, "phone", device="cpu",
                                                folds=3)["accuracy"].to_numpy(),
    "ridge utterance": lambda s: s3viz.probe_layers(s, "speaker", split_by="utterance", folds=3,
                                                    device="cpu")["accuracy"].to_numpy(),
    "logistic frame": lambda s: s3viz.probe_layers(
        s, "phone", method=s3viz.LogisticOptions(dev_fraction=0, max_epochs=4), folds=3,
        device="cpu")["accuracy"].to_numpy(),
    "logistic segment": lambda s: s3viz.probe_layers(s, "phone", method="logistic", folds=3,
                                                     level="segment",
                                                     device="cpu")["accuracy"].to_numpy(),
    "cka": _sim(),
    "cca": _sim(method="cca"),
    "cka minibatch": _sim(method=s3viz.CKAOptions("minibatch", 64)),
    "cka utterance": _sim(level="utterance"),
}
OFFSET_INVARIANT = ("abx euclidean", "pnmi", "ridge frame", "ridge utterance", "logistic frame",
                    "logistic segment", "cka", "cca", "cka minibatch", "cka utterance")
PERMUTATION_INVARIANT = ("abx cosine", "abx euclidean", "cka", "cca", "cka utterance")
"""k-means draws its seeds and the probes their folds by utterance position: a permuted
corpus is another draw (docs/measures.md)."""
# discrete measures move by one triplet / frame when float32 rounding flips a near tie
TOL = {"abx cosine": 0.01, "abx euclidean": 0.01, "pnmi": 0.02, "ridge frame": 0.02,
       "ridge utterance": 0.0, "logistic frame": 0.02, "logistic segment": 0.02, "cka": 1e-6, "cca": 1e-6, "cka minibatch": 1e-6,
       "cka utterance": 1e-6}
TOL32 = {k: max(v, 1e-4) for k, v in TOL.items()}


def _run(name, store):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateLayerWarning)
        return MEASURES[name](store)


_REF: dict = {}


def _ref(name, dtype):
    if (name, dtype) not in _REF:
        _REF[(name, dtype)] = _run(name, _store(dtype=dtype))
    return _REF[(name, dtype)]


def test_the_reference_is_far_from_chance():
    assert (_ref("abx cosine", torch.float64) < 0.2).all()
    assert (_ref("pnmi", torch.float64) > 0.2).all()
    assert (_ref("cka", torch.float64) < 0.999).any()


@pytest.mark.parametrize("name", list(MEASURES))
@SETTINGS
@given(k=st.integers(-99, 99))
def test_scale_invariance_float32(name, k):
    """float32 frames times 2**k (about 1e-30 .. 1e30): exact data, so the very same result.

    (Times 10**e the float32 frames themselves are rounded differently, which may
    legitimately flip a near tie of a discrete measure; float64 covers 10**e below.)"""
    got = _run(name, _store(lambda x, u, l: x.float() * 2.0 ** k, torch.float32))
    assert np.isfinite(got).all(), (k, got)
    np.testing.assert_allclose(got, _ref(name, torch.float32), atol=1e-9, rtol=0,
                               err_msg=f"x * 2**{k}")


@pytest.mark.parametrize("name", list(MEASURES))
@SETTINGS
@given(e=st.integers(-300, 300), mant=st.sampled_from([1.0, 3.7, 0.15]))
def test_scale_invariance_float64(name, e, mant):
    factor = mant * 10.0 ** e
    got = _run(name, _store(lambda x, u, l: x * factor))
    assert np.isfinite(got).all(), (factor, got)
    np.testing.assert_allclose(got, _ref(name, torch.float64), atol=TOL[name], rtol=0,
                               err_msg=f"x * {factor:g}")


@pytest.mark.parametrize("name", OFFSET_INVARIANT)
@SETTINGS
@given(data=st.data())
def test_offset_invariance(name, data):
    """float64: offsets up to 1e6 times the spread (with a scale of 1e-200 .. 1e200)."""
    e = data.draw(st.integers(-200, 200), label="exponent")
    off = data.draw(st.floats(-1e6, 1e6, allow_nan=False), label="offset")
    shift = torch.linspace(-1, 1, 6, dtype=torch.float64) * off
    got = _run(name, _store(lambda x, u, l: (x + shift) * 10.0 ** e))
    np.testing.assert_allclose(got, _ref(name, torch.float64), atol=TOL[name], rtol=0,
                               err_msg=f"(x + {off:g}) * 1e{e}")


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
@settings(max_examples=8, deadline=None)
@given(perm=st.permutations(range(N_UTT)))
def test_permutation_invariance(name, perm):
    got = _run(name, _store(order=perm))
    np.testing.assert_allclose(got, _ref(name, torch.float64), atol=TOL[name], rtol=0)


@pytest.mark.parametrize("name", list(MEASURES))
def test_float16_float32_float64_stores_agree(name):
    """Frames exactly representable in float16, stored in each dtype: one result."""
    def to16(x, u, l):
        return x.to(torch.float16).to(torch.float64)
    got = {dt: _run(name, _store(to16, dt)) for dt in (torch.float16, torch.float32,
                                                       torch.float64)}
    tol = TOL32[name]
    np.testing.assert_allclose(got[torch.float16], got[torch.float64], atol=tol, rtol=0)
    np.testing.assert_allclose(got[torch.float32], got[torch.float64], atol=tol, rtol=0)


def _degenerate_layer(kind, value, dtype):
    def f(x, u, l):
        if l != 1:
            return x
        if kind == "zero":
            return torch.zeros_like(x)
        if kind == "constant":
            return torch.full_like(x, value)
        # rounding-level variation around a constant (one ulp of the dtype)
        eps = torch.finfo(dtype).eps
        return value * (1 + eps * torch.randint(0, 2, x.shape, dtype=x.dtype))
    return f


def _layer_values(name, values):
    """Per-layer results: similarity tables as (rows, cols)."""
    if name.startswith(("cka", "cca")):
        return values.reshape(2, 2)
    return values


@pytest.mark.parametrize("name", list(MEASURES))
@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(["zero", "constant", "rounding"]),
       e=st.integers(-30, 30), dtype=st.sampled_from([torch.float16, torch.float32,
                                                        torch.float64]))
def test_a_degenerate_layer_gives_nan_and_one_warning(name, kind, e, dtype):
    value = 1.7 * 10.0 ** (e if dtype != torch.float16 else max(-4, min(4, e)))
    store = _store(_degenerate_layer(kind, value, dtype), dtype)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = _layer_values(name, MEASURES[name](store))
    ours = [w for w in rec if issubclass(w.category, DegenerateLayerWarning)]
    assert len(ours) == 1, [str(w.message) for w in rec]
    assert "stored layer 1" in str(ours[0].message) and "stored layer 0" not in str(
        ours[0].message)
    if got.ndim == 2:  # similarity: row and column of layer 1 are NaN, (0, 0) is not
        assert np.isnan(got[1]).all() and np.isnan(got[:, 1]).all() and np.isfinite(got[0, 0])
    else:
        assert np.isnan(got[1]) and np.isfinite(got[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f32-in-f64"])
def test_pooled_vectors_of_rounding_noise_are_degenerate(dtype):
    """A layer normalised per utterance (the spectral baseline's): its mean-pooled vectors
    are float32 rounding (~1e-7 of the frames), yet probes found "signal" in them. Stored
    as float64, the frames still carry float32's precision only."""
    def per_utterance(x, u, l):
        x = x.float()
        return (x - x.mean(0)) / x.std(0) if l == 1 else x

    store = _store(per_utterance, dtype)
    pooled = store.pooled(1)
    assert 0 < float(pooled.abs().max()) < 1e-5  # rounding noise, not zero
    for name in ("cka utterance", "ridge utterance"):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            got = _layer_values(name, MEASURES[name](store))
        ours = [w for w in rec if issubclass(w.category, DegenerateLayerWarning)]
        assert len(ours) == 1 and "rounding" in str(ours[0].message), name
        first = got[0, 0] if got.ndim == 2 else got[0]
        assert np.isnan(got[1]).all() and np.isfinite(first), name
    # the frames themselves are fine
    assert np.isfinite(_run("cka", store)).all()


# --------------------------------------------------------------------------- other=


def test_other_store_of_another_corpus_with_the_same_ids_is_refused():
    a = _store()
    frames, labels, phones = _corpus(seed=1)  # other audio (alignments), same ids
    b = _store(base=(frames, labels, phones))
    with pytest.raises(ValueError, match="not the same corpus") as err:
        s3viz.layer_similarity(a, b, device="cpu", level="utterance")
    assert str(err.value).count("from_tensors") == 2  # names both stores


def test_other_store_with_other_durations_is_refused():
    """No alignments, no labels beyond ids: the frames' durations still tell corpora apart."""
    def cut(x, u, l):
        return x[: SEG * (2 + u % 5)]
    frames, labels, _ = BASE
    a = LayerStore.from_tensors([[x for x in row] for row in frames], ids=list(labels["id"]),
                                downsample_rates=[RATE, RATE])
    b = LayerStore.from_tensors([[cut(x, u, 0) for x in row] for u, row in enumerate(frames)],
                                ids=list(labels["id"]), downsample_rates=[RATE, RATE])
    with pytest.raises(ValueError, match="lasts about"):
        s3viz.layer_similarity(a, b, device="cpu", level="utterance")


def test_other_store_of_the_same_corpus_is_compared():
    other = _store(lambda x, u, l: torch.tanh(x) * 3)  # another "upstream", same corpus
    out = s3viz.layer_similarity(_store(), other, device="cpu")
    assert np.isfinite(out.to_numpy()).all()


def test_other_in_memory_store_of_another_corpus_is_refused_by_its_fingerprint(tiny_upstream):
    """Same ids, same durations, no labels or alignments left to compare: the corpus
    fingerprint each extraction keeps still tells the two corpora apart."""
    from s3viz.data import Corpus, Utterance, synthetic_corpus

    base = synthetic_corpus(4, seed=0)
    same_shape = Corpus([Utterance(id=u.id, wav=u.wav[::-1].copy()) for u in base])
    plain = Corpus([Utterance(id=u.id, wav=u.wav) for u in base])
    a = s3viz.extract(tiny_upstream, plain, progress=False)
    b = s3viz.extract(tiny_upstream, same_shape, progress=False)
    assert a.corpus_fingerprint and a.corpus_fingerprint != b.corpus_fingerprint
    with pytest.raises(ValueError, match="corpus fingerprints differ"):
        s3viz.layer_similarity(a, other=b, device="cpu")


# --------------------------------------------------------------------------- far frames


def _far_frame(value, utt=4, frame=7):
    """Layer 1 with one frame set to ``value`` in every feature (the rest untouched)."""
    def f(x, u, l):
        if l == 1 and u == utt:
            x = x.clone()
            x[frame] = value
        return x
    return f


FIT_MOVES = ("ridge frame",)
"""A least-squares fit standardised by the moments: the far frame moves it in exact arithmetic
until 1e5."""
FAR_MEASURES = ("abx cosine", "abx euclidean", "pnmi", "ridge frame", "logistic frame")
_FAR_REF: dict = {}


@pytest.mark.parametrize("name", FAR_MEASURES)
@settings(max_examples=5, deadline=None)
@given(e=st.integers(5, 300), sign=st.sampled_from([1.0, -1.0]))
def test_one_far_frame_gives_the_right_number_or_nan_and_one_warning(name, e, sign):
    """One frame of 480 at 1e5 .. 1e300 (the others about 1): the result is the one
    exact arithmetic gives (that of a frame at 1e4, where every measure still resolves
    the typical frames; 1e5 for the ridge probe, a least-squares fit that the far frame
    moves until 1e5 in exact arithmetic too), or NaN with one warning naming the layer and the frame. Before,
    a mean and spread dominated by the far frame left the others at ``-c +- 1e-14``:
    at 1e15 euclidean ABX 0.5 (0.0048), PNMI 0.002 (0.33), ridge 0.24 (0.42)."""
    if name not in _FAR_REF:
        _FAR_REF[name] = _run(name, _store(_far_frame(1e5 if name in FIT_MOVES else 1e4)))
    ref = _FAR_REF[name]
    assert np.isfinite(ref).all()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = MEASURES[name](_store(_far_frame(sign * 10.0 ** e)))
    ours = [str(w.message) for w in rec if issubclass(w.category, DegenerateLayerWarning)]
    np.testing.assert_allclose(got[0], ref[0], atol=TOL[name], rtol=0)
    if np.isnan(got[1]):
        assert len(ours) == 1 and "stored layer 1" in ours[0], ours
        assert "utterance 'u4', frame 7" in ours[0] and "stored layer 0" not in ours[0], ours
    else:
        assert not ours, ours
        np.testing.assert_allclose(got[1], ref[1], atol=TOL[name], rtol=0, err_msg=f"1e{e}")


def test_a_far_frame_is_refused_only_where_the_arithmetic_fails():
    """At 1e15: euclidean ABX (float32 distances from the far frame) and the ridge probe
    (float64 X^T X) cannot resolve the typical frames and refuse; k-means (each frame's
    nearest centroid) and the angle (unit rows) still can, and give their number."""
    store = _store(_far_frame(1e15))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        got = {n: MEASURES[n](store)[1] for n in FAR_MEASURES}
    assert np.isnan(got["abx euclidean"]) and np.isnan(got["ridge frame"])
    assert np.isfinite(got["pnmi"]) and np.isfinite(got["abx cosine"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_abx_of_frames_pointing_one_way_is_degenerate(dtype):
    """Every frame of layer 1 a positive multiple of one vector (norms varying 1 .. 100):
    the angles the cosine ABX sees are rounding, and it gave 0.5002 without a word. The
    guard now profiles the unit rows themselves: NaN and one warning; the euclidean
    distance still sees the norms and measures them."""
    v = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)

    def one_way(x, u, l):
        return x if l == 0 else (1 + 99 * torch.sigmoid(x[:, :1])) * v

    store = _store(one_way, dtype)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = MEASURES["abx cosine"](store)
    ours = [str(w.message) for w in rec if issubclass(w.category, DegenerateLayerWarning)]
    assert np.isnan(got[1]) and np.isfinite(got[0])
    assert len(ours) == 1 and "stored layer 1" in ours[0] and "rounding" in ours[0], ours
    assert np.isfinite(_run("abx euclidean", store)).all()


# --------------------------------------------------------------------------- weighted sums


@pytest.mark.parametrize("kind", ["constant", "rounding"])
def test_a_degenerate_layer_of_a_weighted_sum_reads_as_zeros_with_one_warning(kind):
    """WeightedScorer / train_featurizer mix layers: each is guarded before the mix. A
    constant or rounding-level layer (which gave a score of its own without a word) reads
    as zeros, its single-layer score is NaN, and one warning names it."""
    store = _store(_degenerate_layer(kind, 1.7, torch.float32), torch.float32)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sc = s3viz.WeightedScorer(store, "phone", dims=None, device="cpu")
    ours = [str(w.message) for w in rec if issubclass(w.category, DegenerateLayerWarning)]
    assert len(ours) == 1 and "stored layer 1" in ours[0] and "stored layer 0" not in ours[0]
    scores = sc.layer_scores().to_numpy()
    assert np.isfinite(scores[0]) and np.isnan(scores[1])
    assert sc.score([0.5, 0.5]) == pytest.approx(scores[0])  # layer 1 adds nothing


@settings(max_examples=6, deadline=None)
@given(e=st.integers(-300, 300))
def test_weighted_scorer_is_scale_invariant_per_layer(e):
    """Each layer is standardised by its guard in float64: layer 1 times 1e-300 .. 1e300
    (float64 store) scores as layer 1 itself, alone and in a mix."""
    def ref_scores(store):
        sc = s3viz.WeightedScorer(store, "phone", dims=None, device="cpu")
        return [sc.score([1.0, 0.0]), sc.score([0.0, 1.0]), sc.score([0.3, 0.7])]
    if "weighted" not in _REF:
        _REF["weighted"] = ref_scores(_store())
    got = ref_scores(_store(lambda x, u, l: x * 10.0 ** e if l == 1 else x))
    np.testing.assert_allclose(got, _REF["weighted"], atol=0.02, rtol=0, err_msg=f"1e{e}")


# --------------------------------------------------------------------------- per feature


def _mixed_store(f, dtype=torch.float64, seed=0):
    """One layer: 6 phone-informative features times ``f`` beside 6 unit-noise ones."""
    frames, labels, phones = BASE
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(N_UTT):
        x = frames[u][0]
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        rows.append([torch.cat([x * f, noise], 1).to(dtype)])
    return LayerStore.from_tensors(rows, labels=labels, phones=phones, downsample_rates=[RATE])


def _probe(store, method):
    if method == "logistic":
        method = s3viz.LogisticOptions(dev_fraction=0, max_epochs=4)
    return s3viz.probe_layers(store, "phone", method=method, folds=3, split_by="utterance",
                              device="cpu")["accuracy"].to_numpy()


@pytest.mark.parametrize("method", ["ridge", "logistic"])
@settings(max_examples=8, deadline=None)
@given(e=st.integers(-300, 300))
def test_probes_standardise_each_feature_whatever_its_scale_beside_the_others(method, e):
    """Half the features times 1e-300 .. 1e300 (float64: every value exact): the probes
    standardise per feature, so the accuracy stays. A feature below 1e-8 (logistic) or
    1e-10 (ridge) of the layer's largest was "dead" before: ridge 0.75 -> 0.16 at 1e-12,
    logistic 0.84 -> 0.15 at 1e-9, no warning. Now each feature is scaled by a power of
    two of its own in the guard and judged dead only against its own rounding."""
    key = ("mixed", method)
    if key not in _REF:
        _REF[key] = _run_probe(_mixed_store(1.0), method)
    got = _run_probe(_mixed_store(10.0 ** e), method)
    assert _REF[key][0] > 0.5
    np.testing.assert_allclose(got, _REF[key], atol=0.02, rtol=0, err_msg=f"1e{e}")


def _run_probe(store, method):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateLayerWarning)
        return _probe(store, method)


@pytest.mark.parametrize("method", ["ridge", "logistic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_feature_of_rounding_noise_stays_dead(method, dtype):
    """A constant feature of 1e6 plus one-ulp rounding noise (of the store's precision)
    beside the informative ones: dead (read as the constant it is), so the probe gives
    what it gives with the feature exactly constant."""
    eps = torch.finfo(dtype).eps
    g = torch.Generator().manual_seed(3)

    def add(noisy):
        def f(x, u, l):
            c = torch.full((x.shape[0], 1), 1e6, dtype=torch.float64)
            if noisy:
                c = c * (1 + eps * torch.randint(0, 2, c.shape, generator=g, dtype=c.dtype))
            return torch.cat([x, c], 1)
        return f

    got = _run_probe(_store(add(True), dtype), method)
    want = _run_probe(_store(add(False), dtype), method)
    np.testing.assert_allclose(got, want, atol=0.02, rtol=0)


# --------------------------------------------------------------------------- unit inertia


def test_unit_inertia_is_a_share_of_the_variance_about_the_mean():
    """70% of the frames near 0, 30% near 10 (noise 0.1), k=2: the inertia is the
    within-unit mean square over the variance about the mean (it was over the mean
    square about the median: 0.000309 against 0.000455)."""
    frames, labels, phones = BASE
    g = torch.Generator().manual_seed(1)
    rows, all_x = [], []
    for u in range(N_UTT):
        n = frames[u][0].shape[0]
        far = (torch.rand(n, generator=g) < 0.3).to(torch.float64)[:, None]
        x = 10.0 * far + 0.1 * torch.randn(n, 3, generator=g, dtype=torch.float64)
        rows.append([x])
        all_x.append(x)
    store = LayerStore.from_tensors(rows, labels=labels, phones=phones,
                                    downsample_rates=[RATE])
    out = s3viz.unit_quality(store, k=2, max_frames=None, device="cpu")
    x = torch.cat(all_x).numpy()
    near = x[:, 0] > 5
    within = sum(((x[m] - x[m].mean(0)) ** 2).sum() for m in (near, ~near)) / len(x)
    variance = ((x - x.mean(0)) ** 2).sum() / len(x)
    assert float(out["inertia"].iloc[0]) == pytest.approx(within / variance, rel=1e-4)


# --------------------------------------------------------------------------- typical rows


def _rounding_layer_with_rows(rows, value=0.0):
    """Layer 1 float32 ``1 + {-3..3} * 2**-23`` per value (rounding noise about 1), with
    the frames ``rows`` (utterance, frame) set to ``value``."""
    def f(x, u, l):
        if l != 1:
            return x
        g = torch.Generator().manual_seed(100 + u)
        y = 1 + torch.randint(-3, 4, x.shape, generator=g).to(torch.float64) * 2.0 ** -23
        for uu, k in rows:
            if uu == u:
                y[k] = value
        return y
    return f


@pytest.mark.parametrize("name", ["abx cosine", "pnmi", "cka", "ridge frame"])
@settings(max_examples=4, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, N_UTT - 1), st.integers(0, SEG * N_SEG - 1)),
                     min_size=1, max_size=5, unique=True),
       value=st.sampled_from([0.0, -1.0, 7.5]))
def test_a_layer_whose_typical_rows_are_rounding_noise_is_degenerate(name, rows, value):
    """Five frames of ~1000 set to 0 made the rounding-noise layer "measurable" (PNMI 0.0113,
    purity 0.216, cosine ABX 0.499, no warning): the spread was a mean's, dominated by the
    five frames. Degeneracy is judged on the typical rows now: NaN, one warning naming
    the farthest row."""
    store = _store(_rounding_layer_with_rows(rows, value), torch.float32)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = _layer_values(name, MEASURES[name](store))
    ours = [str(w.message) for w in rec if issubclass(w.category, DegenerateLayerWarning)]
    assert len(ours) == 1 and "stored layer 1" in ours[0] and "rounding" in ours[0], ours
    if got.ndim == 2:
        assert np.isnan(got[1]).all() and np.isfinite(got[0, 0])
    else:
        assert np.isnan(got[1]) and np.isfinite(got[0])
    if name in ("abx cosine", "pnmi"):  # rows named (the farthest of the few that differ)
        assert "utterance 'u" in ours[0], ours


@pytest.mark.parametrize("name", ["abx euclidean", "pnmi", "cka", "ridge frame",
                                  "logistic frame"])
@pytest.mark.parametrize("kind", ["large constant feature", "integers near 1000"])
def test_real_variation_beside_a_large_constant_or_in_integers_is_measured(name, kind):
    """Not degenerate: a float32 layer with one constant feature of 1e8 beside features that
    vary (the old test compared a mean spread with the uncentred RMS: refused), and
    integer-valued features of 1000 + {-3..3} in a float64 store (all float16-exact, so
    judged at float16 rounding before: refused; integers are exact, their steps are not
    rounding). Offset-invariant measures give what they give without the constant."""
    if kind == "large constant feature":
        def f(x, u, l):
            return torch.cat([x, torch.full((x.shape[0], 1), 1e8, dtype=x.dtype)], 1)
        store, dtype = _store(f, torch.float32), torch.float32
    else:
        def f(x, u, l):
            return 1000.0 + torch.clamp(torch.round(x), -3, 3)
        store, dtype = _store(f), torch.float64
    got = _run(name, store)  # DegenerateLayerWarning is an error here
    assert np.isfinite(got).all(), got
    if kind == "large constant feature" and name in ("abx euclidean", "pnmi", "cka"):
        np.testing.assert_allclose(got, _ref(name, dtype), atol=TOL32[name], rtol=0)
