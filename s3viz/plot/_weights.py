"""Figures of featurizer layer weights; :func:`weights_table` gives their numbers as one table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import layer_label, new_axes, random_title, with_weights
from ._probe import annotate_cells

__all__ = ["layer_weights", "layer_weights_heatmap", "weights_and_probe", "weights_table", "weight_history"]


def as_weights(weights) -> pd.Series:
    """A Series of weights indexed by layer, from a Series, featurizer, dict or sequence."""
    if hasattr(weights, "layer_weights") and not isinstance(weights, (pd.Series, pd.DataFrame)):
        weights = weights.layer_weights
    if isinstance(weights, pd.DataFrame):
        if len(weights) != 1:
            raise ValueError(f"weights is a DataFrame with {len(weights)} rows; plot one checkpoint"
                             " (df.loc[name]) or use layer_weights_heatmap(df) for several")
        weights = weights.iloc[0]
    if isinstance(weights, dict):
        weights = pd.Series(weights)
    if not isinstance(weights, pd.Series):
        try:
            arr = np.asarray(weights, dtype=float).reshape(-1)
        except (TypeError, ValueError) as e:
            raise TypeError(
                "weights must be a Series indexed by layer (e.g. featurizer.layer_weights or "
                f"load_featurizer_weights(path)), got {type(weights).__name__}"
            ) from e
        weights = pd.Series(arr, index=pd.RangeIndex(len(arr), name="layer"), name="weight")
    if len(weights) == 0:
        raise ValueError("weights is empty")
    if np.isnan(weights.to_numpy(dtype=float)).all():
        raise ValueError("weights are all NaN")
    return weights.dropna()


def weights_table(weights, probe_df: pd.DataFrame | None = None,
                  metric: str = "accuracy") -> pd.DataFrame:
    """Tidy table ``layer, weight, uniform`` (+ the probe ``metric`` per layer of ``probe_df``,
    a :func:`s3viz.probe_layers` table; several methods/targets: ``metric[method/target]``)."""
    w = as_weights(weights)
    out = pd.DataFrame({"layer": [int(i) for i in w.index], "weight": w.to_numpy(dtype=float)})
    out["uniform"] = 1.0 / len(w)
    if probe_df is not None:
        for name, curve in _probe_curves(w, probe_df, metric):
            col = metric if name is None else f"{metric}[{name}]"
            out[col] = out["layer"].map(curve)
    return out


def layer_weights(weights, ax=None, *, baseline: bool = True, color: str | None = None,
                  label: str | None = None, title: str | None = None):
    """Bar chart of layer weights (probabilities) with a dashed uniform ``1/L`` baseline.

    ``weights``: a Series indexed by layer (``featurizer.layer_weights``,
    :func:`s3viz.load_featurizer_weights`), a featurizer, or a sequence. The title says
    "random weights" when ``weights.attrs["weights"]`` does.
    """
    w = as_weights(weights)
    ax = new_axes(ax)
    layers = [int(i) for i in w.index]
    x = np.arange(len(layers))
    ax.bar(x, w.to_numpy(dtype=float), color=color or "C0", label=label or "weight")
    if baseline:
        ax.axhline(1.0 / len(layers), color="0.3", linestyle="--", linewidth=1,
                   label=f"uniform 1/{len(layers)}")
    ax.set_xticks(x, [layer_label(i) for i in layers])
    top = float(np.nanmax(w.to_numpy(dtype=float)))
    ax.set(xlabel="layer", ylabel="weight (probability)",
           ylim=(0, max(top, 1.0 / len(layers)) * 1.15))
    title = title if title is not None else (str(w.name) if w.name not in (None, "weight")
                                             else "layer weights")
    ax.set_title(random_title(title, w))
    ax.legend(loc="best", fontsize="small")
    return ax


def layer_weights_heatmap(df: pd.DataFrame, ax=None, *, annotate: bool | None = None,
                          cmap: str = "viridis", title: str | None = None):
    """Heatmap of layer weights: rows are checkpoints or tasks (``df`` of row by layer, e.g.
    ``load_featurizer_weights([...])``; a Series is one row), columns are layers.
    ``annotate`` defaults to at most 20 x 30 cells."""
    if isinstance(df, pd.Series):
        df = df.to_frame().T
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise ValueError("df must be a non-empty DataFrame of checkpoint/task by layer, e.g. "
                         "load_featurizer_weights([path1, path2])")
    values = df.to_numpy(dtype=float)
    ax = new_axes(ax, figsize=(max(6.4, 0.5 * df.shape[1] + 2), max(2.4, 0.4 * df.shape[0] + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0,
                   vmax=max(float(np.nanmax(values)), 1e-12))
    ax.figure.colorbar(im, ax=ax, label="weight (probability)")
    ax.set_xticks(np.arange(df.shape[1]), [layer_label(c) if isinstance(c, (int, np.integer))
                                           and not isinstance(c, bool) else str(c)
                                           for c in df.columns])
    ax.set_yticks(np.arange(df.shape[0]), [str(i) for i in df.index])
    ax.set_xlabel("layer")
    if annotate is None:
        annotate = df.shape[0] <= 20 and df.shape[1] <= 30
    if annotate:
        vmax = np.nanmax(values)
        annotate_cells(ax, values, lambda v: v < 0.6 * vmax, finite_only=True)
    ax.set_title(title or "layer weights")
    return ax


def _probe_curves(w: pd.Series, probe_df: pd.DataFrame, metric: str):
    """``(name, Series layer -> metric)`` per method/target of a probe table, at the weights'
    layers; refused when the weights have a layer the probe lacks (another model's)."""
    if not isinstance(probe_df, pd.DataFrame) or "layer" not in probe_df.columns:
        raise ValueError("probe_df must be a DataFrame with a 'layer' column "
                         "(s3viz.probe_layers(...))")
    if metric not in probe_df.columns:
        raise KeyError(f"probe_df has no column {metric!r}; columns: {list(probe_df.columns)}")
    keys = [k for k in ("method", "target") if k in probe_df.columns
            and probe_df[k].nunique() > 1]
    curves = [("/".join(str(n) for n in (name if isinstance(name, tuple) else (name,))),
               g.groupby("layer")[metric].mean()) for name, g in probe_df.groupby(keys)] \
        if keys else [(None, probe_df.groupby("layer")[metric].mean())]
    layers = [int(i) for i in w.index]
    for name, curve in curves:
        got = {int(i) for i in curve.index}
        lacking = [i for i in layers if i not in got]
        if lacking:
            raise ValueError(
                f"the weights are indexed by layers {layers} but the probe "
                f"{'(' + str(name) + ') ' if name else ''}has no layers {lacking} (it has "
                f"{sorted(got)}): weights and probe come from different models; give the "
                "weights and the probes of one store")
        yield name, curve[[int(i) in set(layers) for i in curve.index]]


def weights_and_probe(weights, probe_df: pd.DataFrame, ax=None, *, metric: str = "accuracy",
                      title: str | None = None):
    """Layer weights as bars and the per-layer probe ``metric`` of ``probe_df`` as a line.

    Returns the Axes of the bars; the twin Axes of the probe curve is ``ax.probe_ax`` (its
    label says "(random weights)" when ``probe_df.attrs["weights"]`` does). The numbers:
    :func:`weights_table` ``(weights, probe_df)``.
    """
    w = as_weights(weights)
    ax = layer_weights(w, ax=ax, title=title or f"layer weights and probe {metric}")
    pos = {int(layer): i for i, layer in enumerate(w.index)}
    twin = ax.twinx()
    for k, (name, curve) in enumerate(_probe_curves(w, probe_df, metric)):
        twin.plot([pos[int(i)] for i in curve.index], curve.to_numpy(dtype=float), marker="o",
                  color=f"C{k + 1}", label=with_weights(
                      f"probe {metric}" + (f" ({name})" if name else ""), probe_df))
    twin.set_ylabel(f"probe {metric}")
    if metric in ("accuracy", "macro_f1"):
        twin.set_ylim(0, 1.05)
    handles, labels = (a + b for a, b in zip(ax.get_legend_handles_labels(),
                                             twin.get_legend_handles_labels()))
    ax.legend(handles, labels, loc="best", fontsize="small")
    ax.probe_ax = twin
    return ax


def weight_history(history: pd.DataFrame, ax=None, *, title: str | None = None):
    """The layer weights during training: one line per layer along one colour map, from
    step 0, the uniform ``1 / L`` dashed.

    Args:
        history: the history DataFrame of :func:`s3viz.train_featurizer`.
    """
    import matplotlib

    if not isinstance(history, pd.DataFrame) or "step" not in history.columns:
        raise TypeError("history must be the DataFrame of s3viz.train_featurizer")
    cols = [c for c in history.columns if str(c).startswith("weight_")]
    if not cols or history.empty:
        raise ValueError("history has no weight_<layer> columns or no rows")
    ax = new_axes(ax, figsize=(8, 3.4))
    cmap = matplotlib.colormaps["viridis"]
    for i, c in enumerate(cols):
        ax.plot(history["step"], history[c], color=cmap(i / max(1, len(cols) - 1)), lw=1.4,
                label=f"layer {c[len('weight_'):]}")
    ax.axhline(1 / len(cols), color="0.3", ls="--", lw=1, label=f"uniform 1/{len(cols)}")
    ax.set(xlabel="training step", ylabel="weight (probability)")
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(cols) > 7 else 1, loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False)
    if title is not None:
        ax.set_title(title)
    return ax
