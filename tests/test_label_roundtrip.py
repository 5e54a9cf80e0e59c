"""Labels and alignments read back from a disk cache exactly as they went in."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import s3viz
from s3viz._cache import df_from_json, df_to_json

cells = st.one_of(st.floats(allow_nan=False, width=64), st.integers(-2**53, 2**53),
                  st.text(max_size=8), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(cells, min_size=1, max_size=6), st.sampled_from(["float", "text", "mixed"]))
def test_cells_round_trip_through_the_cache_json(values, kind):
    """Every value reads back equal (floats to the last bit, '01' stays '01'); a column of
    one kind, as label columns are, keeps its kind."""
    if kind == "float":
        values = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.5
                  for v in values]
    elif kind == "text":
        values = [str(v) for v in values]
    df = pd.DataFrame({"col": pd.Series(values, dtype=object)})
    back = df_from_json(json.loads(json.dumps(df_to_json(df))))
    for a, b in zip(df["col"], back["col"]):
        assert a == b, (a, b)
        if kind != "mixed":
            assert type(a) is type(b) or isinstance(b, (float, np.floating)), (a, b)


def test_float_labels_are_not_rounded_by_the_disk_cache(tmp_path):
    from s3viz.data import synthetic_corpus
    from s3viz.upstreams import get_upstream

    corpus = synthetic_corpus(3, seed=0)
    values = [0.30000000001, 0.30000000002, 1e-300]
    for u, v in zip(corpus, values):
        u.labels["f0_mean"] = v
        u.labels["code"] = "01" if v < 1e-200 else "1"
    store = s3viz.extract(get_upstream("tiny", pretrained=False), corpus, cache_dir=tmp_path,
                          progress=False)
    back = s3viz.LayerStore.open(store.path).labels
    assert back["f0_mean"].tolist() == values
    assert sorted(back["code"].tolist()) == ["01", "1", "1"]
    assert back["f0_mean"].nunique() == 3


@pytest.mark.parametrize("missing", [None, float("nan"), pd.NA])
def test_missing_values_read_back_missing(missing):
    df = pd.DataFrame({"a": pd.Series(["x", missing], dtype=object)})
    back = df_from_json(json.loads(json.dumps(df_to_json(df))))
    assert back["a"].iloc[0] == "x" and pd.isna(back["a"].iloc[1])


def test_label_strings_spell_every_value_as_label_str_does():
    """The per-frame fast path (a str is its own spelling) changes no spelling: equal
    values written differently keep their own, any iterable is read."""
    import datetime
    from decimal import Decimal
    from fractions import Fraction

    from s3viz._labels import label_str, label_strings

    values = ["a", "", "nan", np.str_("b"), 1, 1.0, True, np.int64(1), np.float32(1.0),
              np.bool_(True), -0.0, 0.0, float("nan"), float("nan"), None, pd.NA, pd.NaT,
              Decimal("1"), Decimal("1.0"), Decimal("-0"), Decimal("0"), (1, 2), (1.0, 2),
              (True, 2), frozenset([1]), frozenset([1.0]), complex(1, 0.0), complex(1, -0.0),
              Fraction(1, 2), [1, 2], np.datetime64("2020-01-01"),
              np.datetime64("2020-01-01T00:00"),
              pd.Timestamp("2020-01-01 01:00", tz="Europe/Paris"),
              pd.Timestamp("2020-01-01 00:00", tz="UTC"),
              datetime.date(2020, 1, 1)]
    want = [label_str(v) for v in values]
    assert list(label_strings(values)) == want
    assert list(label_strings(iter(values))) == want
    assert label_strings([]).shape == (0,)
