"""Phone and word segments of a store's alignments, as frame spans of each layer.

The unit of segment-level probes, ABX items and the projection explorer's colours. A
segment owns the frames whose centre lies in it (as :func:`s3viz.align.frame_labels`
labels them); one shorter than a frame may own none and is dropped (``docs/measures.md``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ._numerics import read_dtype
from ._labels import label_str, label_strings
from .interface import SAMPLE_RATE
from .store import check_utterances

__all__ = ["SILENCE", "segment_table", "pool_segments", "segment_store"]

SILENCE = ("sil", "")
"""Labels that are not segments of speech (the alignments' silence rule)."""

_COLUMNS = ["utt", "id", "label", "prev", "next", "start", "end", "frame_start", "frame_end",
            "row_start", "row_end"]


def _runs(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """``label, start, end`` of each segment of ``column`` (rows, or runs of equal rows)."""
    t = table.sort_values("start", kind="stable")
    lab = label_strings(t[column].tolist()).tolist()  # missing (None/NaN/NA) -> ""
    starts, ends = t["start"].to_numpy(np.int64), t["end"].to_numpy(np.int64)
    if column == "phone":  # with the word each phone is in ("" outside words)
        word = (label_strings(t["word"].tolist()).tolist() if "word" in t.columns
                else [""] * len(lab))
        return pd.DataFrame({"label": lab, "start": starts, "end": ends, "word": word})
    # a run of equal words is one word unless the alignment numbers its words: then "I I
    # think" (word_index 0, 1, 2) stays three segments
    index = (t["word_index"].to_numpy() if column == "word" and "word_index" in t.columns
             else np.zeros(len(t), dtype=np.int64))
    out = []
    for i, v in enumerate(lab):
        if out and v == out[-1][0] and v != "" and starts[i] == out[-1][2] \
                and index[i] == index[i - 1]:
            out[-1][2] = ends[i]
        else:
            out.append([v, starts[i], ends[i]])
    return pd.DataFrame(out, columns=["label", "start", "end"])


def segment_table(store, layer: int, column: str = "phone", *, utterances=None,
                  skip: Sequence[str] = SILENCE) -> pd.DataFrame:
    """Every segment of ``column`` in the store's alignments with its frames in ``layer``.

    Args:
        store: a :class:`~s3viz.store.LayerStore` with phone alignments.
        layer: the stored layer whose frames are counted.
        column: ``"phone"`` (one segment per row) or another column of the
            alignment tables, e.g. ``"word"`` (runs of equal rows; of equal
            ``word_index`` too where the table has it, as tables read from
            alignments do, so two words spelt alike in a row stay two).
        utterances: utterance positions (default all aligned ones; an
            utterance without alignment is an error when named here).
        skip: labels that are not segments (default silence); their segments
            still give the ``prev``/``next`` context of their neighbours.

    Returns:
        One row per segment: ``utt`` (position), ``id``, ``label``, ``prev`` and
        ``next`` (labels of the neighbouring segments, ``"<s>"``/``"</s>"`` at
        the ends), ``start``/``end`` (samples), ``frame_start``/``frame_end``
        (the utterance's frames of ``layer``, end exclusive) and
        ``row_start``/``row_end`` (the same in ``store.layer(layer)`` over all
        utterances), ``word`` (phone segments: the word each is in, ``""`` outside words)
        and ``speaker`` when ``store.labels`` has it. ``attrs``:
        ``"dropped"``, the segments left out for owning no frame.
    """
    s = store._layer_index(layer) if hasattr(store, "_layer_index") else int(layer)
    phones = store.phones
    n = len(store)
    if utterances is None:
        sel = [i for i in range(n) if phones[i] is not None]
        if not sel:
            raise ValueError("the store has no phone alignments: segments need a corpus with "
                             "alignments (e.g. load_folder(..., alignments=...))")
    else:
        sel = check_utterances(utterances, n).tolist()  # positions or a boolean mask
        missing = [store.ids[u] for u in sel if phones[u] is None]
        if missing:
            raise ValueError(f"{len(missing)} of the utterances have no alignment (e.g. "
                             f"{missing[:5]}); select aligned ones")
    lengths = np.asarray(store.lengths(s))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rate, rf, ids = store.downsample_rates[s], store.receptive_fields[s], store.ids
    speaker = store.labels["speaker"].to_numpy() if "speaker" in store.labels.columns else None
    rows, words, dropped = [], [], 0
    skip = set(skip)
    for u in sel:
        table = phones[u]
        if column not in table.columns:
            raise KeyError(f"the alignment of {ids[u]!r} has no column {column!r}: "
                           f"{list(table.columns)}; segments come from an alignment tier "
                           f"(or 'duration'), while acoustic tracks (e.g. 'f0') and other "
                           f"frame-level values are probed with level='frame'")
        seg = _runs(table, column)
        lab = seg["label"].tolist()
        prev, nxt = ["<s>"] + lab[:-1], lab[1:] + ["</s>"]
        # frame k belongs to the segment holding its centre: k * rate + rf / 2 in [start, end)
        first, stop = (np.clip(np.ceil((seg[c].to_numpy() - rf / 2.0) / rate).astype(np.int64),
                               0, lengths[u]) for c in ("start", "end"))
        for j, v in enumerate(lab):
            if v in skip:
                continue
            if stop[j] <= first[j]:
                dropped += 1
                continue
            rows.append((u, ids[u], v, prev[j], nxt[j], int(seg["start"].iat[j]),
                         int(seg["end"].iat[j]), int(first[j]), int(stop[j]),
                         int(offsets[u] + first[j]), int(offsets[u] + stop[j])))
            if column == "phone":
                words.append(seg["word"].iat[j])
    out = pd.DataFrame(rows, columns=_COLUMNS)
    if column == "phone":
        out["word"] = words
    if speaker is not None:
        # one spelling per speaker (7 and 7.0 are one); a missing speaker is "" (refused
        # where speakers are used: a speaker split, ABX's speaker conditions)
        out["speaker"] = [label_str(speaker[u]) for u in out["utt"]]
    out.attrs.update(dropped=dropped, layer=s, column=column)
    return out


def pool_segments(store, layer: int, table: pd.DataFrame, *, chunk: int = 256) -> torch.Tensor:
    """Mean over its frames of each segment of ``table`` (:func:`segment_table`).

    Args:
        chunk: utterances whose frames are read at once; the result does not depend on it.

    Returns:
        ``(len(table), hidden_size)`` in the store's precision
        (:func:`s3viz._numerics.read_dtype`), averaged in float64.
    """
    s = store._layer_index(layer)
    dt = read_dtype(store)
    out = torch.zeros(len(table), store.hidden_sizes[s], dtype=dt)
    utts = table["utt"].to_numpy()
    order = np.unique(utts)
    by_utt = {u: np.flatnonzero(utts == u) for u in order}
    f0, f1 = table["frame_start"].to_numpy(), table["frame_end"].to_numpy()
    for a in range(0, len(order), chunk):
        part = order[a:a + chunk].tolist()
        frames, _ = store.layer(s, utterances=part, dtype=dt)
        offs = np.concatenate([[0], np.cumsum(np.asarray(store.lengths(s))[part])])
        for k, u in enumerate(part):
            for r in by_utt[u]:
                out[r] = frames[offs[k] + f0[r]: offs[k] + f1[r]].double().mean(0).to(dt)
    return out


def frames_precision(dtype: torch.dtype, exact) -> torch.dtype:
    """The dtype whose rounding frames produced in ``dtype`` carry: the narrowest of
    ``exact`` (the dtypes that hold every value, :attr:`s3viz._numerics.Profile.exact`)
    where it is narrower."""
    return exact[0] if exact and torch.finfo(exact[0]).eps > torch.finfo(dtype).eps else dtype


def common_segments(tables: Sequence[pd.DataFrame], column: str):
    """The segments of ``column`` that have frames in every layer, as examples.

    Args:
        tables: :func:`segment_table` of each layer (one store, or its metadata).

    Returns:
        ``(kept, labels, dropped)``: each layer's table of the common segments (in
        one order), their labels (``id`` ``"<utterance id>:<start>"``, ``utterance``,
        ``column``, ``context`` ``prev|label|next``, ``duration`` in seconds,
        ``speaker`` when known) and how
        many segments were left out (no frame in the first layer, or in another).
    """
    keys = [set(zip(t["utt"], t["start"])) for t in tables]
    common = set.intersection(*keys)
    kept = [t[[k in common for k in zip(t["utt"], t["start"])]].reset_index(drop=True)
            for t in tables]
    if not len(kept[0]):
        raise ValueError(f"no {column!r} segment has frames in every probed layer")
    t0 = kept[0]
    ids = [f"{u}:{s}" for u, s in zip(t0["id"], t0["start"])]
    labels = pd.DataFrame({"id": ids, "utterance": t0["id"].tolist(), column: t0["label"].tolist(),
                           "context": (t0["prev"] + "|" + t0["label"] + "|" + t0["next"]).tolist(),
                           "duration": (t0["end"] - t0["start"]).to_numpy() / SAMPLE_RATE})
    if "speaker" in t0.columns:
        labels["speaker"] = t0["speaker"].tolist()
    return kept, labels, tables[0].attrs["dropped"] + len(tables[0]) - len(t0)


def segment_store(store, column: str, layers: Sequence[int], *, utterances=None):
    """A store whose "utterances" are the segments of ``column`` with frames in every one
    of ``layers``, one frame each, their mean (stored layer ``layers[i]`` becomes layer
    ``i``): the examples ``probe_layers(level="segment")`` probes with methods other than
    ridge. ``labels`` as :func:`common_segments` gives them; ``_group_ids`` (the segments'
    utterances) keeps an utterance's segments in one fold under ``split_by="utterance"``;
    ``_precision`` (per layer) is that of the frames they average, the rounding their guard
    judges them by; ``_dropped``: the segments left out."""
    from ._numerics import profile_layer
    from .store import LayerStore
    from .upstreams._hub import weights_of

    layers = [int(v) for v in layers]
    tables = [segment_table(store, layer, column, utterances=utterances) for layer in layers]
    kept, labels, dropped = common_segments(tables, column)
    pooled = [pool_segments(store, v, t) for v, t in zip(layers, kept)]
    out = LayerStore.from_tensors([[p[j:j + 1] for p in pooled] for j in range(len(labels))],
                                  downsample_rates=[store.downsample_rates[v] for v in layers],
                                  labels=labels, weights_source=weights_of(store))
    out._group_ids = labels["utterance"].tolist()
    out._precision = [frames_precision(store.store_dtype, profile_layer(store, v).exact)
                      for v in layers]
    out._dropped = dropped
    return out
