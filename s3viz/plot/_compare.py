"""Figures of frame-level vs utterance-level model outputs."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ._common import new_axes, random_title

__all__ = ["frame_vs_utterance", "utterance_outputs"]


def frame_vs_utterance(df: pd.DataFrame, ax=None):
    """Per utterance of a :func:`s3viz.compare_frame_utterance` table: the cosine of the
    pooled frame outputs and the utterance output against the number of frames.

    Dots where the two argmaxes agree, red crosses where not; the title adds the CPU-vs-GPU
    figures when the table has them, and "random weights" when its attrs say so.
    """
    need = {"num_frames", "cosine", "argmax_agree"}
    if not isinstance(df, pd.DataFrame) or not need <= set(df.columns):
        raise ValueError(
            f"df must be the DataFrame of s3viz.compare_frame_utterance (columns {sorted(need)})")
    ax = new_axes(ax, figsize=(7.6, 3.6))
    agree = df["argmax_agree"].to_numpy(dtype=bool)
    x = df["num_frames"].to_numpy()
    y = df["cosine"].to_numpy(dtype=float)
    ax.scatter(x[agree], y[agree], s=18, color="tab:blue", label="argmax agrees")
    ax.scatter(x[~agree], y[~agree], s=24, marker="x", color="tab:red", label="argmax differs")
    ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    lo = float(np.nanmin(y)) if y.size else 0.0
    ax.set(xlabel="frames in utterance", ylabel="cosine(pooled frames, utterance)",
           ylim=(min(lo - 0.05, 0.9), 1.02))
    title = (f"cosine mean {np.nanmean(y):.3f}, argmax agreement {agree.mean():.0%}"
             if y.size else "")
    gpu_col = "cpu_gpu_frame_max_abs_diff"
    if gpu_col in df.columns and df[gpu_col].notna().any():
        title += (f"\nCPU vs GPU max |diff| {df['cpu_gpu_frame_max_abs_diff'].max():.1e}; "
                  f"{df['cpu_ms'].sum():.0f} ms CPU, {df['gpu_ms'].sum():.0f} ms GPU")
    ax.set_title(random_title(title, df), fontsize="medium")
    # beside the plot, never over a point (the few red crosses are what a reader looks for)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, alpha=0.3)
    return ax


def _np(a) -> np.ndarray:
    return np.asarray(a.detach().float().cpu().numpy() if hasattr(a, "detach") else a,
                      dtype=np.float64)


def utterance_outputs(frame_out, utterance_out, ax=None, *, frame_len: Optional[int] = None,
                      labels: Optional[Sequence[str]] = None, show_mean: bool = True,
                      colorbar: bool = True):
    """One utterance: frame-level outputs over time, with the utterance-level output beside them.

    Args:
        frame_out: ``(seq_len, output_size)`` frame-level outputs of one utterance.
        utterance_out: ``(output_size,)`` utterance-level output of the same utterance.
        frame_len: valid frames (default all); padded frames are not drawn.
        labels: names of the output dimensions (e.g. classes).
        show_mean: also draw the mean of the valid frame outputs as a column.

    Returns the Axes: a heat map of outputs (rows) over frames (columns), white dots at each
    column's argmax.
    """
    f = _np(frame_out)
    u = _np(utterance_out).reshape(-1)
    if f.ndim != 2:
        raise ValueError(f"frame_out must be (seq_len, output_size), got shape {f.shape}")
    if f.shape[1] != u.size:
        raise ValueError(f"frame_out has output_size {f.shape[1]} but utterance_out has "
                         f"{u.size}; pass one utterance of each (e.g. y[i, :y_len[i]] and u[i])")
    if frame_len is not None:
        f = f[: int(frame_len)]
    if f.shape[0] == 0:
        raise ValueError("frame_out has no valid frames")
    if labels is not None and len(labels) != u.size:
        raise ValueError(f"labels has {len(labels)} names for {u.size} outputs")
    ax = new_axes(ax, figsize=(8, 3.6))
    T, D = f.shape
    cols = [f.mean(axis=0)] if show_mean else []
    cols.append(u)
    allv = np.concatenate([f.ravel()] + [c.ravel() for c in cols])
    vmin, vmax = float(np.min(allv)), float(np.max(allv))
    if vmin == vmax:
        vmin, vmax = vmin - 1, vmax + 1
    extent = (-0.5, T - 0.5, -0.5, D - 0.5)
    im = ax.imshow(f.T, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                   extent=extent, interpolation="nearest")
    ax.plot(np.arange(T), f.argmax(axis=1), ".", color="white", markersize=3)
    gap, width = max(1.0, T * 0.03), max(2.0, T * 0.06)
    names = (["mean of frames"] if show_mean else []) + ["utterance"]
    centres = []
    x0 = T - 0.5 + gap
    for c in cols:
        ax.imshow(c[:, None], origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                  extent=(x0, x0 + width, -0.5, D - 0.5), interpolation="nearest")
        ax.plot([x0 + width / 2], [int(np.argmax(c))], "o", color="white", markersize=4)
        centres.append(x0 + width / 2)
        x0 += width + gap / 2
    ax.set_xlim(-0.5, x0)
    ticks = [t for t in ax.get_xticks() if 0 <= t <= T - 1]
    ax.set_xticks(list(ticks) + centres, [f"{int(t)}" for t in ticks] + names, fontsize="small")
    for lab in ax.get_xticklabels()[len(ticks):]:
        lab.set_rotation(30)
        lab.set_horizontalalignment("right")
    if labels is not None:
        ax.set_yticks(range(D), [str(s) for s in labels], fontsize="small")
    ax.set(ylabel="output", xlabel="frame")
    ax.set_title("frame-level outputs over time | pooled and utterance-level outputs",
                 fontsize="medium")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return ax
