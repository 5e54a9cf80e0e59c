"""Learned layer weights are never paired with another model's layers by position."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from s3viz import plot
from s3viz.checkpoints import load_featurizer_weights
from s3viz.widgets._weights import _as_series

W13 = pd.Series(np.full(13, 1 / 13), index=pd.Index(range(13), name="layer"), name="weight")
PROBE5 = pd.DataFrame({"layer": range(5), "upstream_layer": range(5),
                       "accuracy": np.linspace(0.2, 0.6, 5), "target": "phone",
                       "method": "ridge"})


def test_weights_of_a_13_layer_model_are_refused_on_a_5_layer_store():
    with pytest.raises(ValueError, match=r"not in the store \[5, 6, 7, 8, 9, 10, 11, 12\]"):
        _as_series(W13, list(range(5)), "learned")


@pytest.mark.parametrize("draw", [plot.weights_table, plot.weights_and_probe])
def test_weights_and_a_probe_of_another_model_are_refused(draw):
    with pytest.raises(ValueError, match=r"has no layers \[5, 6, 7"):
        draw(W13, PROBE5)


def test_weights_of_a_layer_selection_show_the_probe_at_those_layers():
    w = pd.Series([0.5, 0.5], index=pd.Index([1, 3], name="layer"))
    table = plot.weights_table(w, PROBE5)
    assert table["layer"].tolist() == [1, 3]
    assert table.filter(like="accuracy").iloc[:, 0].tolist() == pytest.approx([0.3, 0.5])


def test_a_dict_of_several_weight_tensors_is_named_not_misread():
    with pytest.raises(ValueError, match="cannot tell one state dict from several"):
        load_featurizer_weights({"a": torch.randn(13), "b": torch.randn(5)})
    both = load_featurizer_weights([torch.zeros(13), torch.zeros(5)])
    assert both.shape == (2, 13) and both.iloc[1, 5:].isna().all()
