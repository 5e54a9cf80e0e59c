"""The attention views: the layer x head heatmap, one map with its tiers, the explorer."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import s3viz  # noqa: E402
from s3viz.attention import STATISTICS, AttentionMaps  # noqa: E402
from s3viz.data import synthetic_corpus  # noqa: E402
from s3viz.widgets._attention import head_summary  # noqa: E402


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(3, seed=0)


@pytest.fixture(scope="module")
def upstream():
    return s3viz.upstreams.tiny()


@pytest.fixture(scope="module")
def stats(upstream, corpus):
    return s3viz.attention_stats(upstream, corpus)


def test_heatmap_cells_are_the_table(stats):
    for column in STATISTICS:
        ax = s3viz.plot.attention_heads(stats, column)
        grid = stats.pivot(index="layer", columns="head", values=column).to_numpy()
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), grid)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3", "4"]
        assert column in ax.get_title()
    texts = [t.get_text() for t in s3viz.plot.attention_heads(stats, "distance_ms").texts]
    assert f"{stats['distance_ms'].iat[0]:.0f}" in texts


def test_heatmap_refusals(stats):
    with pytest.raises(ValueError, match="column must be one of"):
        s3viz.plot.attention_heads(stats, "accuracy")
    two = pd.concat([stats, stats.assign(model="other")])
    with pytest.raises(ValueError, match="several models"):
        s3viz.plot.attention_heads(two, "entropy")
    with pytest.raises(ValueError, match="several rows"):
        s3viz.plot.attention_heads(pd.concat([stats, stats]), "entropy")
    with pytest.raises(ValueError, match="lacks columns"):
        s3viz.plot.attention_heads(stats[["layer", "entropy"]], "entropy")


def test_map_draws_the_head_with_both_tiers(upstream, corpus):
    utt = corpus[0]
    maps = s3viz.attention_maps(upstream, utt, layers=[2], heads=[1, 3])
    ax = s3viz.plot.attention_map(maps, layer=2, head=3)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), maps.map(2, 3).numpy())
    texts = [t.get_text() for t in ax.texts]
    words = [w for w in utt.phones["word"].unique() if w]
    phones = [p for p in utt.phones["phone"].unique() if p != "sil"]
    for label in words + phones:  # along both axes: each label twice at least
        assert texts.count(label) >= 2, label
    assert "layer 2, head 3" in ax.get_title() and "past the audio" not in ax.get_title()
    with pytest.raises(ValueError, match="layer 1 is not in these maps"):
        s3viz.plot.attention_map(maps, layer=1)
    with pytest.raises(TypeError, match="AttentionMaps"):
        s3viz.plot.attention_map(maps.maps)


def _planted_maps(outside: float = 0.0) -> AttentionMaps:
    t = 10
    phones = pd.DataFrame({"phone": ["sil", "a", "b", "sil"], "word": ["", "w", "w", ""],
                           "start": [0, 3 * 320, 5 * 320, 8 * 320],
                           "end": [3 * 320, 5 * 320, 8 * 320, 3600]})
    m = torch.full((1, 1, t, t), (1 - outside) / t)
    return AttentionMaps("x", m, torch.full((1, 1, t), outside), [1], [0], 320, 400, phones, "m")


def test_head_summary_of_uniform_attention():
    s = head_summary(_planted_maps(), 1, 0)
    t = 10
    assert s["distance_ms"] == pytest.approx((t * t - 1) / (3 * t) * 20)
    assert s["diagonal"] == pytest.approx((3 * t - 2) / t / t)
    assert s["silence"] == pytest.approx(5 / t)  # frames 0-2 and 8-9
    assert s["same_phone"] == pytest.approx((9 + 4 + 9 + 4) / t / t)
    assert s["same_word"] == pytest.approx(5 / t)  # the word "w": frames 3-7
    assert s["outside"] == 0
    ax = s3viz.plot.attention_map(_planted_maps(outside=0.4))
    assert "40% of it past the audio" in ax.get_title()


def test_explorer_redraws_on_each_control(upstream, corpus):
    calls = []

    def maps_fn(up, utt):
        calls.append(utt.id)
        return s3viz.attention_maps(up, utt)

    from s3viz.widgets._attention import AttentionExplorer

    w = AttentionExplorer(upstream, corpus, maps_fn)
    assert calls == [corpus[0].id] and list(w.layer.options) == [1, 2, 3, 4]
    shown = w.image.value
    w.head.value = 2
    assert w.image.value != shown and "head 2" in w.info.value
    shown = w.image.value
    w.layer.value = 4
    assert w.image.value != shown and "layer 4" in w.info.value
    w.utterance.value = corpus[2].id
    assert calls == [corpus[0].id, corpus[2].id] and w.maps.utterance_id == corpus[2].id
    assert f"{w.maps.num_frames} frames" in w.info.value
    want = head_summary(w.maps, 4, 2)
    assert f"{want['same_phone']:.2f}" in w.info.value
    bundle = w._repr_mimebundle_()
    assert "image/png" in (bundle[0] if isinstance(bundle, tuple) else bundle)
    with pytest.raises(ValueError, match="empty"):
        s3viz.widgets.attention_explorer(upstream, [])
