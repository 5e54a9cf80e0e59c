"""abx_layers against fastabx's numbers and against a brute force over all triplets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

import _abx_case
from s3viz.abx import abx_layers
from s3viz.measures.abx import dtw_costs
from s3viz.segments import pool_segments, segment_table

# fastabx 0.9.0 (zerospeech_abx, max_size_group=None, max_x_across=None, frequency=50) on
# Python 3.12.1 with torch 2.11.0, on the items of _abx_case (see its docstring for how)
FASTABX = {
    (0, "within", "any", "angular"): 0.05357166560133919,
    (0, "within", "any", "euclidean"): 0.02711468234580631,
    (0, "within", "within", "angular"): 0.0332561731338501,
    (0, "within", "within", "euclidean"): 0.01847993830839793,
    (0, "across", "any", "angular"): 0.0860583587588432,
    (0, "across", "any", "euclidean"): 0.08794841643733282,
    (0, "across", "within", "angular"): 0.09516846504993737,
    (0, "across", "within", "euclidean"): 0.0910680303350091,
    (1, "within", "any", "angular"): 0.061234500511394195,
    (1, "within", "any", "euclidean"): 0.02711468234580631,
    (1, "within", "within", "angular"): 0.05354938004165888,
    (1, "within", "within", "euclidean"): 0.01847993830839793,
    (1, "across", "any", "angular"): 0.14125411672284827,
    (1, "across", "any", "euclidean"): 0.20492853069057068,
    (1, "across", "within", "angular"): 0.15732574462890625,
    (1, "across", "within", "euclidean"): 0.18839827924966812,
}


# fastabx 0.9.0's Task and Score.collapse (levels: the by labels from the last, then the
# across labels) on the same items (_abx_case.TASKS; write, then score, as above)
FASTABX_TASKS = {
    (0, 'speaker', ('phone',), (), 'angular'): 0.12623250484466553,
    (0, 'speaker', ('phone',), (), 'euclidean'): 0.11231578141450882,
    (0, 'speaker', (), (), 'angular'): 0.3376874029636383,
    (0, 'speaker', (), (), 'euclidean'): 0.3645833134651184,
    (0, 'word', ('speaker',), (), 'angular'): 0.472222238779068,
    (0, 'word', ('speaker',), (), 'euclidean'): 0.4766865074634552,
    (0, 'phone', ('word',), ('speaker',), 'angular'): 0.06157407537102699,
    (0, 'phone', ('word',), ('speaker',), 'euclidean'): 0.07615740597248077,
    (0, 'speaker', ('phone', 'context'), (), 'angular'): 0.07878858596086502,
    (0, 'speaker', ('phone', 'context'), (), 'euclidean'): 0.05957562103867531,
    (1, 'speaker', ('phone',), (), 'angular'): 0.009054645895957947,
    (1, 'speaker', ('phone',), (), 'euclidean'): 0.0027591735124588013,
    (1, 'speaker', (), (), 'angular'): 0.11264645308256149,
    (1, 'speaker', (), (), 'euclidean'): 0.14116433262825012,
    (1, 'word', ('speaker',), (), 'angular'): 0.47552910447120667,
    (1, 'word', ('speaker',), (), 'euclidean'): 0.4766865074634552,
    (1, 'phone', ('word',), ('speaker',), 'angular'): 0.10729166865348816,
    (1, 'phone', ('word',), ('speaker',), 'euclidean'): 0.15000000596046448,
    (1, 'speaker', ('phone', 'context'), (), 'angular'): 0.005925925448536873,
    (1, 'speaker', ('phone', 'context'), (), 'euclidean'): 0.0008333325386047363,
}


@pytest.mark.parametrize("on, by, across", _abx_case.TASKS)
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_any_label_equals_fastabx_task(store, on, by, across, distance):
    """Speaker ABX by phone and pooled, word ABX, phone ABX by word across speakers, speaker
    ABX by phone and context: fastabx's numbers."""
    res = abx_layers(store, on=on, by=list(by), across=list(across) or None,
                     distance=distance, device="cpu", max_items=None)
    dist = "angular" if distance == "cosine" else distance
    for layer in (0, 1):
        want = FASTABX_TASKS[(layer, on, by, across, dist)]
        assert res["abx_error"].iat[layer] == pytest.approx(want, abs=1e-6)
    assert (res["on"] == on).all() and (res["by"] == "+".join(by)).all()


def conditions(speaker: str, context: str) -> dict:
    """ZeroSpeech's speaker and context modes as by and across (fastabx's zerospeech_abx)."""
    ctx = ["context"] if context == "within" else []
    if speaker == "within":
        return {"by": ["speaker", *ctx]}
    return {"by": ctx, "across": "speaker"}


@pytest.fixture(scope="module")
def store():
    return _abx_case.store()


@pytest.mark.parametrize("speaker, context", [("within", "any"), ("within", "within"),
                                              ("across", "any"), ("across", "within")])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_abx_equals_fastabx(store, speaker, context, distance):
    res = abx_layers(store, **conditions(speaker, context), distance=distance, device="cpu",
                     max_items=None)
    assert list(res["layer"]) == [0, 1]
    for layer in (0, 1):
        want = FASTABX[(layer, speaker, context, "angular" if distance == "cosine" else distance)]
        # fastabx keeps cell scores in float32
        assert res["abx_error"].iat[layer] == pytest.approx(want, abs=1e-6)
    assert (res["n_items"] == len(segment_table(store, 0))).all()
    assert (res["n_triplets"] > 0).all()


# --------------------------------------------------------------------------- brute force


def _dtw_ref(d: np.ndarray) -> float:
    """DTW cost / path length, the path traced back preferring diagonal, left, up."""
    n, m = d.shape
    c = np.zeros((n, m), dtype=np.float32)
    c[0, 0] = d[0, 0]
    for i in range(1, n):
        c[i, 0] = c[i - 1, 0] + d[i, 0]
    for j in range(1, m):
        c[0, j] = c[0, j - 1] + d[0, j]
    for i in range(1, n):
        for j in range(1, m):
            c[i, j] = d[i, j] + min(c[i - 1, j], c[i - 1, j - 1], c[i, j - 1])
    i, j, steps = n - 1, m - 1, 1
    while i > 0 and j > 0:
        if c[i - 1, j - 1] <= c[i, j - 1] and c[i - 1, j - 1] <= c[i - 1, j]:
            i, j = i - 1, j - 1
        elif c[i, j - 1] <= c[i - 1, j]:
            j -= 1
        else:
            i -= 1
        steps += 1
    steps += i + j
    return float(c[n - 1, m - 1] / steps)


def _frame_dist(a: np.ndarray, b: np.ndarray, distance: str) -> np.ndarray:
    if distance == "euclidean":
        return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).astype(np.float32)
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (np.arccos(np.clip(na @ nb.T, -1, 1)) / math.pi).astype(np.float32)


def _abx_brute_force(store, layer, speaker, context, distance):
    """Every triplet of every cell, enumerated from the definitions; ZeroSpeech's average."""
    tab = segment_table(store, layer)
    x, _ = store.layer(layer)
    feats = [x[r.row_start:r.row_end].double().numpy() for r in tab.itertuples()]
    lab, spk = tab["label"].tolist(), tab["speaker"].tolist()
    ctx = (tab["prev"] + "|" + tab["next"]).tolist() if context == "within" else [""] * len(tab)
    n = len(tab)
    dist = np.array([[_dtw_ref(_frame_dist(feats[i], feats[j], distance)) for j in range(n)]
                     for i in range(n)])
    cells: dict = {}
    for a, b, xx in itertools.product(range(n), repeat=3):
        if lab[a] != lab[xx] or lab[b] == lab[a] or ctx[a] != ctx[b] or ctx[a] != ctx[xx]:
            continue
        if spk[a] != spk[b]:
            continue
        if speaker == "within" and (spk[xx] != spk[a] or xx == a):
            continue
        if speaker == "across" and spk[xx] == spk[a]:
            continue
        key = (lab[a], lab[b], ctx[a], spk[a], spk[xx])
        dax, dbx = dist[xx, a], dist[xx, b]
        cells.setdefault(key, []).append(1.0 if dax < dbx else 0.5 if dax == dbx else 0.0)
    if speaker == "within":  # a cell needs two tokens of A
        count = pd.Series(list(zip(lab, ctx, spk))).value_counts()
        cells = {k: v for k, v in cells.items() if count[(k[0], k[2], k[3])] >= 2}
    df = pd.DataFrame([(*k, 1 - np.mean(v)) for k, v in cells.items()],
                      columns=["p", "q", "ctx", "s", "sx", "err"])
    by_s = df.groupby(["p", "q", "s"])["err"].mean()
    return float(by_s.groupby(level=["p", "q"]).mean().mean()), len(df)


@pytest.mark.parametrize("speaker, context, distance", [
    ("within", "any", "cosine"), ("across", "within", "euclidean"),
])
def test_abx_equals_brute_force_over_all_triplets(store, speaker, context, distance):
    want, n_cells = _abx_brute_force(store, 1, speaker, context, distance)
    got = abx_layers(store, **conditions(speaker, context), distance=distance, layers=[1],
                     device="cpu", max_items=None)
    assert got["abx_error"].iat[0] == pytest.approx(want, abs=1e-6)
    assert got["n_cells"].iat[0] == n_cells


def test_dtw_costs_match_the_reference_with_padding():
    rng = np.random.default_rng(0)
    lens1, lens2 = np.array([1, 4, 7, 2]), np.array([3, 1, 6])
    a = [rng.random((k, 3)).astype(np.float32) for k in lens1]
    b = [rng.random((k, 3)).astype(np.float32) for k in lens2]
    d = torch.full((7, 6, 4, 3), 99.0)
    for i, j in itertools.product(range(4), range(3)):
        d[: lens1[i], : lens2[j], i, j] = torch.from_numpy(_frame_dist(a[i], b[j], "euclidean"))
    got = dtw_costs(d, torch.tensor(lens1), torch.tensor(lens2))
    for i, j in itertools.product(range(4), range(3)):
        assert float(got[i, j]) == pytest.approx(
            _dtw_ref(_frame_dist(a[i], b[j], "euclidean")), rel=1e-6)


def test_cells_average_to_the_error(store):
    res, cells = abx_layers(store, device="cpu", return_cells=True)
    for layer in (0, 1):
        part = cells[cells["layer"] == layer]
        by_spk = part.groupby(["phone", "phone_b", "speaker"])["error"].mean()
        assert by_spk.groupby(level=["phone", "phone_b"]).mean().mean() == pytest.approx(
            res["abx_error"].iat[layer])
        assert part["triplets"].sum() == res["n_triplets"].iat[layer]
    import pandas as pd

    pd.concat([res, res])  # plain tables: nothing in attrs that pandas cannot merge


def test_small_blocks_give_the_same_matrix(store):
    """max_block bounds the frame distances held at once; any block size, one answer."""
    from s3viz.measures import ABX, StoreSource, run_measures

    big = abx_layers(store, layers=[0], device="cpu")
    small = run_measures([ABX(max_block=7)], StoreSource(store, layers=[0]))["abx"]
    assert small["abx_error"].iat[0] == pytest.approx(big["abx_error"].iat[0], abs=1e-7)


def test_max_items_draws_a_bounded_seeded_sample(store):
    full = abx_layers(store, layers=[0], device="cpu", max_items=None)
    a = abx_layers(store, layers=[0], device="cpu", max_items=2, seed=1)
    b = abx_layers(store, layers=[0], device="cpu", max_items=2, seed=1)
    c = abx_layers(store, layers=[0], device="cpu", max_items=2, seed=2)
    assert a["n_items"].iat[0] < full["n_items"].iat[0]
    groups = segment_table(store, 0).groupby(["label", "speaker"]).size()
    assert a["n_items"].iat[0] == int(np.minimum(groups, 2).sum())
    pd.testing.assert_frame_equal(a, b)
    assert c["abx_error"].iat[0] != a["abx_error"].iat[0]


# --------------------------------------------------------------------------- segments


def test_segments_are_the_frames_frame_labels_gives_them(store):
    tab = segment_table(store, 0)
    flat = store.frame_labels(0)
    assert not tab["label"].isin(["sil", ""]).any()
    for r in tab.itertuples():
        assert (flat[r.row_start:r.row_end] == r.label).all()
    # and every labelled non-silence frame is in exactly one segment
    owned = np.zeros(len(flat), dtype=int)
    for r in tab.itertuples():
        owned[r.row_start:r.row_end] += 1
    np.testing.assert_array_equal(owned, (~np.isin(flat, ["sil", ""])).astype(int))
    pooled = pool_segments(store, 0, tab)
    x, _ = store.layer(0)
    r = tab.iloc[5]
    torch.testing.assert_close(pooled[5], x[r.row_start:r.row_end].mean(0))


def test_word_segments_are_runs_of_rows(store):
    words = segment_table(store, 0, "word")
    assert words["label"].str.startswith("w").all()
    phones = segment_table(store, 0)
    assert len(words) == len(phones)  # each made-up word is one phone here
    assert (words["frame_end"] > words["frame_start"]).all()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kw, exc, match", [
    ({"by": "both"}, ValueError, "unknown label 'both'"),
    ({"by": ["speaker", "speaker"]}, ValueError, "by names a label twice"),
    ({"across": "speaker", "by": "speaker"}, ValueError, "'speaker' is in both by and across"),
    ({"on": "speaker", "by": "speaker"}, ValueError, "'speaker' is in both on and by"),
    ({"on": "word", "by": "phone"}, ValueError, "word segments, which have no single 'phone'"),
    ({"by": 3}, TypeError, "by must be a label name"),
    ({"distance": "kl"}, ValueError, "distance must be one of"),
    ({"max_items": 1}, ValueError, "max_items must be >= 2"),
    ({"max_items": (10, 0)}, ValueError, "X groups"),
    ({"on": "stress"}, ValueError, "unknown label 'stress'"),
    ({"bootstrap": 100, "on": "speaker", "by": "phone"}, ValueError, "needs 'speaker' among"),
    ({"layers": [5]}, IndexError, "layer"),
])
def test_abx_bad_arguments(store, kw, exc, match):
    with pytest.raises(exc, match=match):
        abx_layers(store, device="cpu", **kw)


def test_abx_needs_speakers_and_alignments():
    from s3viz.store import LayerStore

    hidden, tables, labels = _abx_case.case()
    no_spk = LayerStore.from_tensors(hidden, downsample_rates=[320, 320], phones=tables)
    with pytest.raises(ValueError, match="needs a 'speaker' column"):
        abx_layers(no_spk, device="cpu")
    no_align = LayerStore.from_tensors(hidden, downsample_rates=[320, 320], labels=labels)
    with pytest.raises(ValueError, match="no phone alignments"):
        abx_layers(no_align, device="cpu")
    one_spk = LayerStore.from_tensors(hidden[:1], downsample_rates=[320, 320],
                                      labels=labels.iloc[:1], phones=tables[:1])
    with pytest.raises(ValueError, match="an X of another speaker"):
        abx_layers(one_spk, across="speaker", device="cpu")


# --------------------------------------------------------------------------- any label


def test_utterances_restrict_the_items_to_those_utterances(store):
    """``utterances=`` is the ABX of a store holding only those utterances."""
    from s3viz.store import LayerStore

    hidden, tables, labels = _abx_case.case()
    keep = [0, 2, 3, 5, 6, 9, 10, 11]
    sub = LayerStore.from_tensors([hidden[i] for i in keep], downsample_rates=[320, 320],
                                  labels=labels.iloc[keep].reset_index(drop=True),
                                  phones=[tables[i] for i in keep])
    for kw in ({}, {"across": "speaker"}, {"on": "speaker", "by": "phone"}):
        got = abx_layers(store, utterances=keep, device="cpu", max_items=None, **kw)
        want = abx_layers(sub, device="cpu", max_items=None, **kw)
        pd.testing.assert_frame_equal(got, want)
        assert got["n_items"].iat[0] < abx_layers(store, device="cpu", max_items=None,
                                                  **kw)["n_items"].iat[0]


def test_max_x_across_keeps_that_many_x_speakers_per_cell(store):
    _, cells = abx_layers(store, across="speaker", device="cpu", max_items=(None, 1),
                          return_cells=True, layers=[0])
    per_cell = cells.groupby(["phone", "phone_b", "speaker"])["speaker_x"].nunique()
    assert (per_cell == 1).all()
    _, full = abx_layers(store, across="speaker", device="cpu", max_items=None,
                         return_cells=True, layers=[0])
    assert full.groupby(["phone", "phone_b", "speaker"])["speaker_x"].nunique().max() == 2
    again = abx_layers(store, across="speaker", device="cpu", max_items=(None, 1), layers=[0])
    assert again["n_cells"].iat[0] == len(cells)  # seeded: the same draw


def test_progress_bar_counts_the_cells(store, capsys):
    res = abx_layers(store, device="cpu", progress=True, layers=[0])
    err = capsys.readouterr().err
    assert "ABX cells" in err and f"{res['n_cells'].iat[0]}/{res['n_cells'].iat[0]}" in err


def test_speaker_abx_cells_name_the_speakers(store):
    res, cells = abx_layers(store, on="speaker", by="phone", device="cpu", return_cells=True)
    assert {"speaker", "speaker_b", "phone", "triplets", "error"} <= set(cells.columns)
    assert (cells["speaker"] != cells["speaker_b"]).all()
    assert (res["on"] == "speaker").all() and (res["by"] == "phone").all()
