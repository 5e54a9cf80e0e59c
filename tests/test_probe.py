"""Per-layer probes (s3viz.probe) on small synthetic LayerStores.

Stores are built with LayerStore.from_tensors: 40 utterances x 50 frames,
8 speakers, phone segments of 5 frames (rate 320) from 8 phone classes.
References: scikit-learn (Ridge, RidgeClassifier, LogisticRegression) on the
same standardised features and the same folds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from s3viz.store import LayerStore
from s3viz.probe import (LogisticOptions, ProbeStats, RidgeOptions, control_labels, probe_folds,
                         probe_layers)

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.preprocessing import StandardScaler

N_UTT, N_FRAMES, SEG, RATE = 40, 50, 5, 320
PHONES = list("abcdefgh")


def _alignment(seg_labels, words=None):
    k = len(seg_labels)
    return pd.DataFrame({
        "phone": seg_labels,
        "word": words if words is not None else [f"w{j // 2}" for j in range(k)],
        "start": np.arange(k) * SEG * RATE,
        "end": np.arange(1, k + 1) * SEG * RATE,
    })


def make_store(seed=0, n_utt=N_UTT, extra_layers=True):
    """Layers: 0 one-hot of the phone + small noise; 1 pure noise; 2 a noisy random
    projection of the phone (informative, not separable); 3 like 2 with another
    hidden size (24)."""
    rng = np.random.default_rng(seed)
    proj16 = rng.standard_normal((len(PHONES), 16))
    proj24 = rng.standard_normal((len(PHONES), 24))
    hs, phones, rows = [], [], []
    for i in range(n_utt):
        seg = rng.integers(len(PHONES), size=N_FRAMES // SEG)
        lab = np.repeat(seg, SEG)
        layers = [
            np.eye(16)[lab] + 0.1 * rng.standard_normal((N_FRAMES, 16)),
            rng.standard_normal((N_FRAMES, 16)),
        ]
        if extra_layers:
            layers += [
                proj16[lab] + 2.0 * rng.standard_normal((N_FRAMES, 16)) + 3.0,
                proj24[lab] + 2.5 * rng.standard_normal((N_FRAMES, 24)),
            ]
        hs.append([torch.tensor(x, dtype=torch.float32) for x in layers])
        phones.append(_alignment([PHONES[s] for s in seg]))
        rows.append({"id": f"u{i:02d}", "speaker": f"s{i % 8}", "text": f"sentence {i % 10}",
                     "sentence_id": f"c{i % 4}", "gender": "f" if i % 8 < 4 else "m"})
    return LayerStore.from_tensors(hs, downsample_rates=[RATE] * len(hs[0]),
                                   labels=pd.DataFrame(rows), phones=phones)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store():
    return make_store()


@pytest.fixture(scope="module")
def ridge_df(store):
    return probe_layers(store, "phone", method="ridge", control=True, device="cpu")


@pytest.fixture(scope="module")
def logistic_df(store):
    return probe_layers(store, "phone", method="logistic", control=True, device="cpu")


def _frames(store, layer):
    x, utt = store.layer(layer)
    lab = store.frame_labels(layer, column="phone")
    keep = lab != ""
    return x.numpy()[keep], lab[keep].astype(str), utt.numpy()[keep]


# --------------------------------------------------------------------------- output


def test_columns_and_rows(ridge_df, store):
    cols = ["target", "method", "level", "layer", "upstream_layer", "accuracy", "accuracy_std",
            "macro_f1", "chance", "n_classes", "n_train", "n_test", "lambda",
            "control_accuracy", "selectivity", "split_by"]
    assert list(ridge_df.columns) == cols
    assert (ridge_df["split_by"] == "speaker").all() and ridge_df.attrs["split_by"] == "speaker"
    assert list(ridge_df["layer"]) == list(range(store.num_layer))
    assert (ridge_df["level"] == "frame").all() and (ridge_df["n_classes"] == 8).all()
    # every labelled frame is tested once; n_train + n_test = all frames per fold
    assert (ridge_df["n_test"] * 5 == N_UTT * N_FRAMES).all()
    assert (ridge_df["n_train"] + ridge_df["n_test"] == N_UTT * N_FRAMES).all()
    for c in ("accuracy", "macro_f1", "chance", "control_accuracy"):
        assert ridge_df[c].between(0, 1).all()
    np.testing.assert_allclose(ridge_df["selectivity"],
                               ridge_df["accuracy"] - ridge_df["control_accuracy"])


@pytest.mark.parametrize("which", ["ridge", "logistic"])
def test_label_layer_near_perfect_noise_near_chance(which, ridge_df, logistic_df):
    df = ridge_df if which == "ridge" else logistic_df
    label, noise = df.iloc[0], df.iloc[1]
    assert label["accuracy"] >= 0.98 and label["macro_f1"] >= 0.98
    assert abs(noise["accuracy"] - noise["chance"]) <= 0.06
    assert noise["accuracy"] < 0.25
    # the informative-but-noisy layers land in between
    assert noise["accuracy"] + 0.15 < df.iloc[2]["accuracy"] < label["accuracy"]
    # control task: the one-hot layer is selective, the noise layer is not
    assert label["selectivity"] > 0.5
    assert abs(noise["selectivity"]) < 0.1


def test_chance_is_majority_class_of_training_folds(store, ridge_df):
    folds = probe_folds(store, folds=5, split_by="speaker", seed=0,
                        utterance_weights=np.full(N_UTT, N_FRAMES))
    _, lab, utt = _frames(store, 0)
    fold_of_frame = folds.set_index("utterance")["fold"].to_numpy()[utt]
    hits = 0
    for k in range(5):
        train = pd.Series(lab[fold_of_frame != k]).value_counts()
        majority = train.index[train.to_numpy() == train.max()].sort_values()[0]
        hits += int((lab[fold_of_frame == k] == majority).sum())
    assert ridge_df["chance"].iloc[0] == pytest.approx(hits / len(lab), abs=2e-3)


# --------------------------------------------------------------------------- vs scikit-learn


def test_probe_stats_solve_matches_sklearn_ridge():
    """ProbeStats.solve(lam) == sklearn Ridge(alpha=lam * n) on standardised features."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 10)) * rng.uniform(0.1, 10, 10) + rng.uniform(-50, 50, 10)
    y = rng.integers(4, size=300)
    lam = 0.3
    st = ProbeStats.from_data(torch.tensor(x), torch.tensor(y), num_targets=4)
    w, b = st.solve(lam)
    scaler = StandardScaler().fit(x)
    ref = Ridge(alpha=lam * len(x)).fit(scaler.transform(x), np.eye(4)[y])
    w_ref = ref.coef_.T / scaler.scale_[:, None]
    b_ref = ref.intercept_ - scaler.mean_ @ w_ref
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("layer", [2, 3])
def test_ridge_probe_matches_sklearn_ridge_classifier(store, layer):
    """Fixed penalty: same folds, StandardScaler + RidgeClassifier(alpha=lam * n_train)
    predicts the same labels (accuracy equal within 1e-3, ties aside)."""
    lam = 0.05
    df = probe_layers(store, "phone", layers=[layer], method=RidgeOptions(lambdas=[lam]),
                      device="cpu")
    x, lab, utt = _frames(store, layer)
    folds = probe_folds(store, folds=5, split_by="speaker", seed=0,
                        utterance_weights=np.full(N_UTT, N_FRAMES))
    fold_of_frame = folds.set_index("utterance")["fold"].to_numpy()[utt]
    correct = 0
    for k in range(5):
        tr, te = fold_of_frame != k, fold_of_frame == k
        scaler = StandardScaler().fit(x[tr])
        clf = RidgeClassifier(alpha=lam * tr.sum()).fit(scaler.transform(x[tr]), lab[tr])
        correct += int((clf.predict(scaler.transform(x[te])) == lab[te]).sum())
    assert df["accuracy"].iloc[0] == pytest.approx(correct / len(lab), abs=1e-3)


def test_logistic_probe_close_to_sklearn(store, logistic_df):
    """Same folds, StandardScaler + LogisticRegression(C=1): accuracy within 3 points
    (the batched probe holds out a dev split for early stopping, sklearn does not)."""
    x_by_layer = {}
    for layer in (2, 3):
        x, lab, utt = _frames(store, layer)
        x_by_layer[layer] = x
    folds = probe_folds(store, folds=5, split_by="speaker", seed=0,
                        utterance_weights=np.full(N_UTT, N_FRAMES))
    fold_of_frame = folds.set_index("utterance")["fold"].to_numpy()[utt]
    for layer in (2, 3):
        x = x_by_layer[layer]
        correct = 0
        for k in range(5):
            tr, te = fold_of_frame != k, fold_of_frame == k
            scaler = StandardScaler().fit(x[tr])
            clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x[tr]), lab[tr])
            correct += int((clf.predict(scaler.transform(x[te])) == lab[te]).sum())
        ours = logistic_df.set_index("layer").loc[layer, "accuracy"]
        assert ours == pytest.approx(correct / len(lab), abs=0.03), layer


def test_logistic_without_early_stopping_is_sklearns_optimum(store):
    """dev_fraction=0: full-batch L-BFGS to the C=1 optimum on the whole training part,
    the solution scikit-learn converges to: the same accuracy within half a point."""
    ours = probe_layers(store, "phone", method=LogisticOptions(dev_fraction=0), layers=[2, 3],
                        folds=5, device="cpu").set_index("layer")["accuracy"]
    folds = probe_folds(store, folds=5, split_by="speaker", seed=0,
                        utterance_weights=np.full(N_UTT, N_FRAMES))
    for layer in (2, 3):
        x, lab, utt = _frames(store, layer)
        fold_of_frame = folds.set_index("utterance")["fold"].to_numpy()[utt]
        correct = 0
        for k in range(5):
            tr, te = fold_of_frame != k, fold_of_frame == k
            scaler = StandardScaler().fit(x[tr])
            clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-6).fit(
                scaler.transform(x[tr]), lab[tr])
            correct += int((clf.predict(scaler.transform(x[te])) == lab[te]).sum())
        assert ours.loc[layer] == pytest.approx(correct / len(lab), abs=0.005), layer


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, True, "0.1"])
def test_bad_dev_fraction(store, bad):
    with pytest.raises(ValueError, match="dev_fraction"):
        probe_layers(store, "phone", method=LogisticOptions(dev_fraction=bad), device="cpu")


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("split_by", ["speaker", "utterance"])
def test_folds_never_share_a_group(store, split_by):
    folds = probe_folds(store, folds=5, split_by=split_by, seed=3)
    assert sorted(folds["utterance"]) == list(range(N_UTT))
    assert set(folds["fold"]) == set(range(5))
    per_group = folds.groupby("group")["fold"].nunique()
    assert (per_group == 1).all()
    if split_by == "speaker":
        spk = store.labels["speaker"].to_numpy()[folds["utterance"]]
        assert (folds["group"].to_numpy() == spk).all()
    sizes = folds.groupby("fold").size()
    assert sizes.max() - sizes.min() <= (5 if split_by == "speaker" else 1)


def _identity_store(per_speaker: bool, seed=0):
    """Features encode the utterance (or speaker) identity; the frame label is a random
    class constant within the utterance (or speaker). Only a leaky split scores high."""
    rng = np.random.default_rng(seed)
    codes = rng.standard_normal((N_UTT, 32)) * 3
    spk_codes = rng.standard_normal((8, 32)) * 3
    cls_of = rng.integers(4, size=N_UTT)
    spk_cls = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    hs, phones, rows = [], [], []
    for i in range(N_UTT):
        code = spk_codes[i % 8] if per_speaker else codes[i]
        c = spk_cls[i % 8] if per_speaker else cls_of[i]
        x = code + 0.3 * rng.standard_normal((N_FRAMES, 32))
        hs.append([torch.tensor(x, dtype=torch.float32)])
        phones.append(_alignment([f"k{c}"] * (N_FRAMES // SEG)))
        rows.append({"id": f"u{i:02d}", "speaker": f"s{i % 8}"})
    return LayerStore.from_tensors(hs, downsample_rates=[RATE], labels=pd.DataFrame(rows),
                                   phones=phones)


@pytest.mark.parametrize("per_speaker", [False, True])
def test_no_leak_utterance_or_speaker_identity(per_speaker):
    st = _identity_store(per_speaker)
    split_by = "speaker" if per_speaker else "utterance"
    df = probe_layers(st, "phone", split_by=split_by, device="cpu")
    # a leaky split (frames of one utterance/speaker on both sides) would score ~100%:
    x, lab, _utt = _frames(st, 0)
    perm = np.random.default_rng(0).permutation(len(lab))
    tr, te = perm[: len(lab) * 4 // 5], perm[len(lab) * 4 // 5:]
    leaky = RidgeClassifier(alpha=1.0).fit(x[tr], lab[tr]).score(x[te], lab[te])
    assert leaky > 0.95
    assert df["accuracy"].iloc[0] < df["chance"].iloc[0] + 0.2
    if per_speaker:  # split by utterance leaks speakers: high again
        leak = probe_layers(st, "phone", split_by="utterance", device="cpu")
        assert leak["accuracy"].iloc[0] > 0.95


# --------------------------------------------------------------------------- ProbeStats


def test_probe_stats_shards_add_up():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.standard_normal((500, 6)) + 4)
    y = torch.tensor(rng.integers(3, size=500))
    g = torch.tensor(rng.integers(4, size=500))
    whole = ProbeStats.from_data(x, y, g, num_groups=4, num_targets=3)
    a = ProbeStats.from_data(x[:170], y[:170], g[:170], num_groups=4, num_targets=3)
    b = ProbeStats.from_data(x[170:], y[170:], g[170:], num_groups=4, num_targets=3)
    for merged in (a + b, sum([a, b])):
        merged = merged.rebased(whole.shift)  # each part took its own first rows' mean
        for f in ProbeStats._FIELDS:
            torch.testing.assert_close(getattr(merged, f), getattr(whole, f), rtol=1e-12,
                                       atol=1e-9)
    # groups: total = sum of groups, without(k) = the other groups, solve is unaffected
    torch.testing.assert_close(whole.total().sum_xx[0], whole.sum_xx.sum(0))
    torch.testing.assert_close(whole.without([1]).sum_xy[0],
                               whole.sum_xy.sum(0) - whole.sum_xy[1])
    w1, b1 = whole.solve(0.1)
    w2, b2 = ProbeStats.from_data(x, y, num_targets=3).solve(0.1)
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(b1, b2)
    # raw definitions: sums of x - shift, the shift the mean of the first rows added
    torch.testing.assert_close(whole.shift, x.mean(0))
    xs = x - whole.shift
    torch.testing.assert_close(whole.total().sum_xx[0], xs.T @ xs)
    torch.testing.assert_close(whole.total().sum_xy[0], xs.T @ torch.eye(3, dtype=x.dtype)[y])
    assert whole.dtype == torch.float64 and "examples=500" in repr(whole)


def test_probe_stats_bad_inputs():
    st = ProbeStats.zeros(2, 4, 3)
    with pytest.raises(ValueError, match="x must have shape"):
        st.update(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="group values"):
        st.update(torch.zeros(5, 4), torch.zeros(5, dtype=torch.long), torch.full((5,), 2))
    with pytest.raises(ValueError, match="class indices"):
        st.update(torch.zeros(5, 4), torch.full((5,), 3))
    with pytest.raises(ValueError, match="different shapes"):
        st + ProbeStats.zeros(3, 4, 3)


# --------------------------------------------------------------------------- options


def test_control_labels_are_a_function_of_type():
    types = np.array(["a", "b", "a", "c", "b", "a"] * 50)
    y = np.tile([0, 1, 2], 100)
    c1 = control_labels(types, y, 3, seed=5)
    assert all(len(set(c1[types == t])) == 1 for t in "abc")
    np.testing.assert_array_equal(c1, control_labels(types, y, 3, seed=5))
    many = control_labels(np.arange(6000), np.tile([0, 0, 0, 1], 1500), 2, seed=0)
    assert abs(many.mean() - 0.25) < 0.03  # drawn from the label distribution


def test_deterministic_and_seed_matters(store, ridge_df):
    again = probe_layers(store, "phone", method="ridge", control=True, device="cpu")
    pd.testing.assert_frame_equal(again, ridge_df)
    other = probe_layers(store, "phone", method="ridge", layers=[2], seed=1, device="cpu")
    assert other["accuracy"].iloc[0] != ridge_df["accuracy"].iloc[2]


def test_utterance_level_speaker_and_methods():
    rng = np.random.default_rng(4)
    spk = rng.standard_normal((8, 12)) * 2
    hs, rows = [], []
    for i in range(N_UTT):
        hs.append([torch.tensor(spk[i % 8] + rng.standard_normal((30, 12)), dtype=torch.float32),
                   torch.tensor(rng.standard_normal((30, 12)), dtype=torch.float32)])
        rows.append({"id": f"u{i}", "speaker": f"s{i % 8}", "text": f"t{i % 5}"})
    st = LayerStore.from_tensors(hs, downsample_rates=[320, 320], labels=pd.DataFrame(rows))
    df = probe_layers(st, "speaker", split_by="utterance", method=["ridge", "logistic"],
                      control=True, device="cpu")
    assert list(df["method"]) == ["ridge", "ridge", "logistic", "logistic"]
    assert (df["level"] == "utterance").all()
    assert (df["n_test"] == N_UTT // 5).all()
    top = df[df["layer"] == 0]
    assert (top["accuracy"] >= 0.95).all()
    assert (df[df["layer"] == 1]["accuracy"] <= 0.45).all()


def test_utterance_level_dual_ridge_matches_primal_and_sklearn():
    """With fewer utterances than dimensions the ridge probe is solved in the dual form:
    same weights (and chosen penalties) as the primal form from ProbeStats, and the same
    predictions as StandardScaler + RidgeClassifier(alpha=lam * n_train)."""
    from s3viz.probe.ridge import ridge_fit_folds, ridge_fit_folds_dual

    rng = np.random.default_rng(6)
    n, h, c = 30, 50, 3
    x = torch.tensor(rng.standard_normal((n, h)) + np.eye(c, h)[np.arange(n) % c] * 2 + 7)
    y = torch.tensor(np.arange(n) % c)
    g = torch.tensor(np.arange(n) % 5)
    yoh = torch.eye(c, dtype=torch.float64)[y]
    blocks = [slice(0, c)]
    stats = ProbeStats.from_data(x, y, g, num_groups=5, num_targets=c)
    lambdas = [1e-3, 1e-2, 0.1, 1.0, 10.0]
    primal = ridge_fit_folds(stats, 5, 1, blocks, lambdas)
    dual = ridge_fit_folds_dual(x, yoh, g, 5, 1, blocks, lambdas)
    for (w1, b1, l1), (w2, b2, l2) in zip(primal, dual):
        assert l1 == l2
        torch.testing.assert_close(w1, w2, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(b1, b2, rtol=1e-6, atol=1e-7)

    labels = pd.DataFrame({"id": [f"u{i}" for i in range(n)], "speaker": "",
                           "cls": [f"k{int(v)}" for v in y]})
    st = LayerStore.from_tensors([[x[i:i + 1].float().repeat(3, 1)] for i in range(n)],
                                 downsample_rates=[320], labels=labels)
    lam = 0.05
    df = probe_layers(st, "cls", split_by="utterance", method=RidgeOptions(lambdas=[lam]),
                      device="cpu")
    folds = probe_folds(st, split_by="utterance", utterance_weights=np.ones(n),
                        strata=labels["cls"].to_numpy())
    fold = folds.set_index("utterance")["fold"].to_numpy()
    xp, lab = st.pooled(0).double().numpy(), labels["cls"].to_numpy()
    correct = 0
    for k in range(5):
        tr, te = fold != k, fold == k
        scaler = StandardScaler().fit(xp[tr])
        clf = RidgeClassifier(alpha=lam * tr.sum()).fit(scaler.transform(xp[tr]), lab[tr])
        correct += int((clf.predict(scaler.transform(xp[te])) == lab[te]).sum())
    assert df["accuracy"].iloc[0] == pytest.approx(correct / n, abs=1e-9)


def test_fold_accuracies_in_attrs(ridge_df):
    for layer in range(4):
        fa = ridge_df.attrs["fold_accuracy"][("phone", "ridge", layer)]
        assert len(fa) == 5
        assert min(fa) <= ridge_df["accuracy"].iloc[layer] <= max(fa)
        assert np.std(fa) == pytest.approx(ridge_df["accuracy_std"].iloc[layer])


def test_mixed_rates_and_hidden_sizes():
    """A layer at half the frame rate gets its own frame labels; both methods run."""
    rng = np.random.default_rng(5)
    hs, phones, rows = [], [], []
    for i in range(24):
        seg = rng.integers(4, size=10)
        lab = np.repeat(seg, SEG)  # 50 frames at 320
        lab2 = seg[(np.arange(25) * 640 + 320) // (SEG * RATE)]  # 25 frames, centres 320 + 640 k
        hs.append([torch.tensor(np.eye(8)[lab] + 0.1 * rng.standard_normal((50, 8)),
                                dtype=torch.float32),
                   torch.tensor(np.eye(6)[lab2] + 0.1 * rng.standard_normal((25, 6)),
                                dtype=torch.float32)])
        phones.append(_alignment([PHONES[s] for s in seg]))
        rows.append({"id": f"u{i}", "speaker": f"s{i % 6}"})
    st = LayerStore.from_tensors(hs, downsample_rates=[320, 640], labels=pd.DataFrame(rows),
                                 phones=phones)
    df = probe_layers(st, "phone", method=["ridge", "logistic"], folds=3, device="cpu")
    assert (df["accuracy"] > 0.9).all()
    assert list(df["n_test"]) == [400, 200, 400, 200]
    two = probe_layers(st, "phone", folds=2, device="cpu")  # dev part inside the folds
    assert (two["accuracy"] > 0.9).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(store, ridge_df):
    gpu = probe_layers(store, "phone", method="ridge", control=True, device="cuda")
    pd.testing.assert_frame_equal(gpu, ridge_df, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- bad targets


def test_unknown_target_lists_available(store):
    with pytest.raises(KeyError, match=r"unknown target 'phoneme'.*'speaker'.*'phone'"):
        probe_layers(store, "phoneme")
    with pytest.raises(KeyError, match="unknown target 'speaker' for level='frame'"):
        probe_layers(store, "speaker", level="frame")


def test_single_class_target(store):
    with pytest.raises(ValueError, match="single class"):
        probe_layers(store, "gender", utterances=[0, 1, 2, 3, 8, 9, 10, 11, 16, 17],
                     split_by="speaker")


def test_missing_utterance_labels():
    st = make_store(extra_layers=False)
    labels = st.labels
    labels.loc[[3, 7], "sentence_id"] = [None, np.nan]
    bad = LayerStore.from_tensors([st.utterance(i) for i in range(len(st))],
                                  downsample_rates=st.downsample_rates, labels=labels,
                                  phones=st.phones)
    with pytest.raises(ValueError, match=r"missing.*2 utterance.*u03.*u07.*utterances="):
        probe_layers(bad, "sentence_id")
    ok = probe_layers(bad, "sentence_id", utterances=[i for i in range(N_UTT) if i not in (3, 7)])
    assert len(ok) == 2


def test_missing_alignments():
    st = make_store(extra_layers=False)
    phones = st.phones
    phones[5] = None
    bad = LayerStore.from_tensors([st.utterance(i) for i in range(len(st))],
                                  downsample_rates=st.downsample_rates, labels=st.labels,
                                  phones=phones)
    with pytest.raises(ValueError, match=r"alignments.*1 utterance.*u05.*utterances="):
        probe_layers(bad, "phone")


def test_speaker_target_with_speaker_split(store):
    with pytest.raises(ValueError, match="split_by='utterance'"):
        probe_layers(store, "speaker", split_by="speaker")
    labels = store.labels.assign(spk_copy=store.labels["speaker"].str.upper())
    st = LayerStore.from_tensors([store.utterance(i) for i in range(len(store))],
                                 downsample_rates=store.downsample_rates, labels=labels,
                                 phones=store.phones)
    with pytest.raises(ValueError, match="one-to-one.*split_by='utterance'"):
        probe_layers(st, "spk_copy", split_by="speaker")
    # the default, split_by="auto", splits these by utterance (no warning: nothing to fix)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = probe_layers(st, ["phone", "speaker", "spk_copy"], layers=[0])
    assert dict(zip(both["target"], both["split_by"])) == {
        "phone": "speaker", "speaker": "utterance", "spk_copy": "utterance"}
    assert both.attrs["split_by"] == {"phone": "speaker", "speaker": "utterance",
                                      "spk_copy": "utterance"}
    pd.testing.assert_frame_equal(
        both[both["target"] == "speaker"].reset_index(drop=True),
        probe_layers(st, "speaker", layers=[0], split_by="utterance"))


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="method must be one of"):
        probe_layers(store, "phone", method="svm")
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        probe_layers(store, "phone", folds=1)
    with pytest.raises(ValueError, match="only 8 distinct speakers.*folds=10"):
        probe_layers(store, "phone", folds=10, split_by="speaker")
    with pytest.warns(UserWarning, match=r"'auto' split 'phone' by utterance.*8 speaker\(s\) "
                                         r"for folds=10"):
        auto = probe_layers(store, "phone", folds=10, layers=[0])
    assert (auto["split_by"] == "utterance").all()
    with pytest.raises(IndexError, match=r"layers must hold stored layer indices in \[0, 4\)"):
        probe_layers(store, "phone", layers=[7])
    with pytest.raises(ValueError, match="split_by must be one of"):
        probe_layers(store, "phone", split_by="session")
    st = make_store(extra_layers=False)
    serial = LayerStore.from_tensors([st.utterance(i) for i in range(len(st))],
                                     downsample_rates=st.downsample_rates,
                                     labels=st.labels.assign(serial=[f"u{i}" for i in
                                                                     range(N_UTT)]),
                                     phones=st.phones)
    with pytest.raises(ValueError, match="has its own class"):  # (a column of ids)
        probe_layers(serial, "serial", split_by="utterance")
    nospk = LayerStore.from_tensors([st.utterance(i) for i in range(len(st))],
                                    downsample_rates=st.downsample_rates,
                                    labels=st.labels.assign(speaker=""), phones=st.phones)
    with pytest.raises(ValueError, match="no speaker.*split_by='utterance'"):
        probe_layers(nospk, "phone", split_by="speaker")
    with pytest.warns(UserWarning, match=f"{N_UTT} utterance\\(s\\) have no speaker"):
        assert (probe_layers(nospk, "phone", layers=[0])["split_by"] == "utterance").all()


def test_frame_folds_do_not_depend_on_the_probed_layers():
    """Frame-level folds balance each utterance's frames in stored layer 0 (as probe_folds),
    whichever layers are probed: layer 1 scores alike probed alone or beside layer 0, also
    when layer 0 has another rate and unevenly trimmed frames."""
    rng = np.random.default_rng(0)
    hs, phones, rows = [], [], []
    for i in range(24):
        t = int(rng.integers(10, 60)) * 2
        seg = rng.integers(6, size=t // 2)
        x1 = np.eye(6)[np.repeat(seg, 2)] + 0.5 * rng.standard_normal((t, 6))
        x0 = np.repeat(x1, 2, 0) + 0.1 * rng.standard_normal((2 * t, 6))
        x0 = x0[: 2 * t - int(rng.integers(0, 2 * t // 3))]
        hs.append([torch.tensor(x0, dtype=torch.float32), torch.tensor(x1, dtype=torch.float32)])
        starts = np.arange(len(seg)) * 2 * RATE
        phones.append(pd.DataFrame({"phone": [PHONES[s] for s in seg], "start": starts,
                                    "end": starts + 2 * RATE}))
        rows.append({"id": f"u{i}", "speaker": f"s{i % 6}"})
    st = LayerStore.from_tensors(hs, downsample_rates=[RATE // 2, RATE],
                                 labels=pd.DataFrame(rows), phones=phones)
    for kw in ({}, {"control": True}):
        alone = probe_layers(st, "phone", layers=[1], folds=4, device="cpu", **kw)
        both = probe_layers(st, "phone", layers=[0, 1], folds=4, device="cpu", **kw)
        assert alone.attrs["fold_accuracy"][("phone", "ridge", 1)] == \
            both.attrs["fold_accuracy"][("phone", "ridge", 1)]


def test_a_target_listed_twice_gets_its_rows_twice(store):
    """probe_layers takes a target list as given (the RidgeProbe measure it runs takes
    distinct targets): a repeated target is probed once and its rows repeated."""
    df = probe_layers(store, ["phone", "phone"], layers=[0], folds=3, device="cpu")
    assert list(df["target"]) == ["phone", "phone"]
    assert df.iloc[0].equals(df.iloc[1])
