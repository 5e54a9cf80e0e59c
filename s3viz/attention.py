"""Self-attention of an upstream's transformer layers against the phone and word tiers.

:class:`AttentionMaps` holds the maps of one utterance (``s3viz.plot.attention_map``
draws them with the tiers; ``s3viz.widgets.attention_explorer`` browses them).
Which upstreams, what each statistic means and how padding is treated:
``docs/attention.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from . import _validate as _v
from ._device import eval_session, resolve_device
from .align import conv_lengths, layer_geometry
from .align import frame_labels as _frame_labels
from .audio import batch_wavs
from .store import utterance_selection
from .upstreams._attention import attention_modules, capture_attention
from .upstreams._hub import weights_of

__all__ = ["AttentionMaps", "STATISTICS", "attention_maps", "attention_stats", "segments_of"]

STATISTICS = ("entropy", "distance_ms", "diagonal", "silence", "same_phone", "same_word",
              "outside")
"""The columns of :func:`attention_stats` that describe a head (``docs/attention.md``)."""


@dataclass(eq=False)
class AttentionMaps:
    """The attention maps of one utterance (``s3viz.attention_maps`` makes them).

    Attributes:
        utterance_id: the utterance's id.
        maps: ``(len(layers), len(heads), T, T)`` float32 on the CPU: row ``i`` is how
            query frame ``i`` spreads its attention over the key frames ``0..T-1`` of the
            utterance (``T`` its frames).
        outside: ``(len(layers), len(heads), T)`` float32: the attention each query puts
            on keys past the utterance's frames (Whisper's encoder attends to its whole
            30 s window; 0 for models that mask padding). ``maps`` rows sum to
            ``1 - outside``.
        layers: the transformer layer of each map, numbered as the hidden states are
            (layer ``k``'s attention computes hidden state ``k``; 1 is the first).
        heads: the head index of each map (0-based).
        rate: samples per frame (16 kHz).
        receptive_field_samples: samples behind each frame (frame ``k``'s centre is at
            ``k * rate + receptive_field_samples / 2``, as ``docs/alignment.md``).
        phones: the utterance's alignment table (``phone, word, start, end`` in
            samples) or None.
        model: the upstream's name.
    """

    utterance_id: str
    maps: torch.Tensor
    outside: torch.Tensor
    layers: List[int]
    heads: List[int]
    rate: int
    receptive_field_samples: int
    phones: Optional[pd.DataFrame] = None
    model: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.maps.shape[-1])

    def frame_labels(self, column: str = "phone") -> np.ndarray:
        """``(T,)`` label of each frame in the alignment's ``column`` (``"phone"`` or
        ``"word"``; ``""`` where no segment covers the frame's centre, or no alignment)."""
        if self.phones is None:
            return np.full(self.num_frames, "", dtype=object)
        return _frame_labels(self.phones, self.num_frames, self.rate, column=column,
                             receptive_field_samples=self.receptive_field_samples)

    def frame_segments(self) -> tuple:
        """``(silence, phone, word)`` per frame: silence (bool) and the index of the phone
        and word segment holding the frame's centre (-1: none), as
        :func:`s3viz.attention_stats` reads them (two neighbouring segments of one label
        stay two)."""
        return segments_of(self.phones, self.num_frames, self.rate,
                           self.receptive_field_samples)

    def map(self, layer: int, head: int) -> torch.Tensor:
        """The ``(T, T)`` map of one head.

        Args:
            layer: a transformer layer in :attr:`layers`.
            head: a head index in :attr:`heads`.
        """
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not in these maps (layers {self.layers})")
        if head not in self.heads:
            raise ValueError(f"head {head} is not in these maps (heads {self.heads})")
        return self.maps[self.layers.index(layer), self.heads.index(head)]


# --------------------------------------------------------------------------- running


class _Run:
    """One upstream's attention over batches: which utterances each captured call holds."""

    def __init__(self, upstream, layers, device):
        from .upstreams._transformers import TransformersUpstream, WhisperEncoderUpstream

        self.upstream = upstream
        self.num_layers = len(attention_modules(upstream))  # refuses what s3viz cannot read
        self.layers = _layer_list(layers, self.num_layers)
        self.device = resolve_device(device, upstream)
        self.rate, self.field, conv = layer_geometry(upstream, 0)
        self.whisper = isinstance(upstream, WhisperEncoderUpstream)
        self.conv = conv
        # a Hugging Face model without an attention mask runs one forward per length
        self.per_length = (isinstance(upstream, TransformersUpstream)
                           and not upstream.uses_attention_mask)
        if conv is None and not self.whisper:
            raise TypeError(f"{upstream.name!r}: s3viz cannot predict its frame counts "
                            "(no conv_layers), which attention statistics need")

    def frames(self, wavs_len: torch.Tensor) -> np.ndarray:
        if self.whisper:
            return self.upstream.frames(wavs_len).numpy().astype(np.int64)
        return conv_lengths(wavs_len, self.conv).numpy().astype(np.int64)

    def run(self, utts, on_call) -> None:
        """Run the utterances ``utts`` (a batch); ``on_call(layer, probs, items, frames)``
        gets each captured layer: ``items`` the batch positions of ``probs``' rows."""
        ids = [u.id for u in utts]
        wavs, wavs_len = batch_wavs([u.wav for u in utts], allow_silence=True, ids=ids)
        frames = self.frames(wavs_len)
        short = [ids[i] for i in np.flatnonzero(frames < 1)]
        if short:
            raise ValueError(f"utterance(s) {short[:5]} are too short for one frame of "
                             f"{self.upstream.name!r}; leave them out (utterances=)")
        lens = wavs_len.tolist()
        groups = ([[b for b, m in enumerate(lens) if m == n] for n in sorted(set(lens))]
                  if self.per_length else [list(range(len(utts)))])
        calls = {layer: 0 for layer in range(1, self.num_layers + 1)}

        def sink(layer, probs):
            g = calls[layer]
            calls[layer] += 1
            if layer in self.layers:
                on_call(layer, probs, groups[g], frames)

        with torch.inference_mode(), capture_attention(self.upstream, sink):
            _, all_len = self.upstream(wavs.to(self.device), wavs_len.to(self.device))
        got = np.asarray(all_len[-1].cpu(), dtype=np.int64)
        if not np.array_equal(got, frames):
            raise RuntimeError(f"{self.upstream.name!r} returned {got.tolist()} frames for "
                               f"{ids}, but its geometry predicts {frames.tolist()}")
        if any(c != len(groups) for c in calls.values()):
            raise RuntimeError(f"{self.upstream.name!r}: expected each of its "
                               f"{self.num_layers} attention layers to run {len(groups)} "
                               f"time(s) per batch, counted {calls}")


def _layer_list(layers, n: int) -> List[int]:
    """Transformer layers ``1..n`` to read (None: all), checked."""
    if layers is None:
        return list(range(1, n + 1))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    out = [_v.integer(x, "layers", minimum=1) for x in layers]
    bad = [x for x in out if x > n]
    if bad or not out or len(set(out)) != len(out):
        raise ValueError(f"layers must be distinct transformer layers in 1..{n} (layer k's "
                         f"attention computes hidden state k), got {list(layers)}")
    return out


def _head_list(heads, n: int) -> List[int]:
    if heads is None:
        return list(range(n))
    if isinstance(heads, (int, np.integer)) and not isinstance(heads, bool):
        heads = [heads]
    out = [_v.integer(x, "heads", minimum=0) for x in heads]
    if not out or len(set(out)) != len(out) or max(out) >= n:
        raise ValueError(f"heads must be distinct head indices in 0..{n - 1}, got {list(heads)}")
    return out


def segments_of(table, num_frames: int, rate: int, receptive_field_samples: int) -> tuple:
    """Per frame of ``num_frames``: silence (bool), phone segment and word segment (-1: none) of an
    alignment ``table`` (None: none); a word segment is a run of rows of one word
    (``word_index`` when given), outside silence and gaps."""
    n, field = num_frames, receptive_field_samples
    if table is None or not len(table):
        return np.zeros(n, bool), np.full(n, -1), np.full(n, -1)
    phone = table["phone"].astype(str).to_numpy()
    word = table["word"].fillna("").astype(str).to_numpy() if "word" in table else \
        np.full(len(table), "")
    # a word segment is a run of rows of one word (its word_index when given), outside silence
    key = table["word_index"].to_numpy() if "word_index" in table else word
    in_word = (word != "") & (phone != "sil")
    new = np.r_[True, (key[1:] != key[:-1]) | ~in_word[:-1] | (
        table["start"].to_numpy()[1:] != table["end"].to_numpy()[:-1])]
    word_seg = np.where(in_word, np.cumsum(new) - 1, -1)
    t = table.assign(_phone_seg=np.arange(len(table)), _word_seg=word_seg)
    lab = lambda col: _frame_labels(t, n, rate, column=col, fill=-1,  # noqa: E731
                                    receptive_field_samples=field).astype(np.int64)
    ph, wd = lab("_phone_seg"), lab("_word_seg")
    sil = np.where(ph >= 0, phone[np.maximum(ph, 0)] == "sil", False)
    return sil, ph, wd


class _Sums:
    """Per (layer, head) sums of the row statistics (float64)."""

    NAMES = ("entropy", "entropy_rows", "distance", "diagonal", "silence", "same_phone",
             "phone_rows", "same_word", "word_rows", "outside", "rows")

    def __init__(self, layers: int, heads: int):
        self.v = {k: np.zeros((layers, heads)) for k in self.NAMES}

    def add(self, li: int, p: torch.Tensor, n: int, keys: int, seg) -> None:
        """``p (heads, n, K)``: one utterance's ``n`` query rows; ``keys`` the keys each row
        could attend to (``n``, or Whisper's window)."""
        p = p.double()
        sil, ph, wd = (torch.as_tensor(a) for a in seg)
        k = p.shape[-1]
        i, j = torch.arange(n)[:, None], torch.arange(k)[None, :]
        dist = (i - j).abs().double()
        s = self.v
        add = lambda name, x: s[name].__setitem__(li, s[name][li] + x.numpy())  # noqa: E731
        if keys > 1:
            h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
            add("entropy", h.sum(-1) / np.log(keys))
            s["entropy_rows"][li] += n
        add("distance", (p * dist).sum((-1, -2)))
        add("diagonal", (p * (dist <= 1)).sum((-1, -2)))
        inside = p[..., :n]
        add("outside", p[..., n:].sum((-1, -2)))
        add("silence", (inside * sil.double()).sum((-1, -2)))
        for name, rows, seg_ in (("same_phone", "phone_rows", ph), ("same_word", "word_rows", wd)):
            ok = seg_ >= 0
            same = ((seg_[:, None] == seg_[None, :]) & ok[:, None]).double()
            add(name, (inside * same).sum((-1, -2)))
            s[rows][li] += int(ok.sum())
        s["rows"][li] += n

    def table(self, layers, heads, rate: int) -> pd.DataFrame:
        s = self.v
        with np.errstate(invalid="ignore", divide="ignore"):
            cols = {"entropy": s["entropy"] / s["entropy_rows"],
                    "distance_ms": s["distance"] / s["rows"] * rate / 16.0,
                    "diagonal": s["diagonal"] / s["rows"], "silence": s["silence"] / s["rows"],
                    "same_phone": s["same_phone"] / s["phone_rows"],
                    "same_word": s["same_word"] / s["word_rows"],
                    "outside": s["outside"] / s["rows"]}
        rows = []
        for li, layer in enumerate(layers):
            for hi, head in enumerate(heads):
                rows.append({"layer": layer, "head": head,
                             **{c: float(v[li, hi]) for c, v in cols.items()},
                             "n_frames": int(s["rows"][li, hi]),
                             "n_phone_frames": int(s["phone_rows"][li, hi]),
                             "n_word_frames": int(s["word_rows"][li, hi])})
        return pd.DataFrame(rows)


def attention_stats(upstream, corpus, layers: Optional[Sequence[int]] = None, *,
                    utterances=None, batch_size: int = 8, device=None,
                    progress: bool = False) -> pd.DataFrame:
    """Where each head of each transformer layer attends, over a corpus (``docs/attention.md``).

    Args:
        upstream: a supported upstream (the torchaudio and Hugging Face adapters, Whisper's
            encoder, the tiny model); anything else is refused.
        corpus: a :class:`~s3viz.data.Corpus` (its phone and word alignments give the
            silence, same-phone and same-word columns).
        layers: transformer layers ``1..N`` (layer ``k``'s attention computes hidden
            state ``k``; None: all).
        utterances: corpus positions to use (None: all).
        batch_size: utterances per forward (longest first); the statistics do not depend
            on it (padding gets no attention and counts nowhere).
        device: where the upstream runs (None: where it is); it is not moved.
        progress: a progress bar over utterances.

    Returns:
        One row per layer and head: ``layer``, ``head``, ``entropy``, ``distance_ms``,
        ``diagonal``, ``silence``, ``same_phone``, ``same_word``, ``outside``,
        ``n_frames``, ``n_phone_frames``, ``n_word_frames``, ``n_utterances``, ``model``;
        ``attrs["weights"]`` says which weights.
    """
    from tqdm.auto import tqdm

    run = _Run(upstream, layers, device)
    batch_size = _v.integer(batch_size, "batch_size", minimum=1)
    sel = utterance_selection(utterances, len(corpus))
    utts = [corpus[int(i)] for i in sel]
    order = np.argsort([-u.num_samples for u in utts], kind="stable")
    sums, heads = None, None
    with eval_session(upstream), tqdm(total=len(utts), unit="utt", disable=not progress,
                                      desc=f"attention {upstream.name}") as bar:
        for b0 in range(0, len(utts), batch_size):
            batch = [utts[i] for i in order[b0:b0 + batch_size]]
            segs = {}

            def on_call(layer, probs, items, frames, batch=batch, segs=segs):
                nonlocal sums, heads
                if sums is None:
                    heads = probs.shape[1]
                    sums = _Sums(len(run.layers), heads)
                li = run.layers.index(layer)
                for row, b in enumerate(items):
                    n = int(frames[b])
                    if b not in segs:
                        segs[b] = segments_of(batch[b].phones, n, run.rate, run.field)
                    p = probs[row, :, :n].cpu()
                    keys = p.shape[-1] if run.whisper else n
                    sums.add(li, p, n, keys, segs[b])

            run.run(batch, on_call)
            bar.update(len(batch))
    out = sums.table(run.layers, list(range(heads)), run.rate)
    out["n_utterances"] = len(utts)
    out["model"] = getattr(upstream, "name", type(upstream).__name__)
    out.attrs["weights"] = weights_of(upstream)
    return out


def attention_maps(upstream, utterance, layers: Optional[Sequence[int]] = None,
                   heads: Optional[Sequence[int]] = None, *, device=None) -> AttentionMaps:
    """The attention maps of one utterance (``docs/attention.md``).

    Args:
        upstream: as for :func:`attention_stats`.
        utterance: an :class:`~s3viz.data.Utterance` (its alignment goes with the maps).
        layers: transformer layers ``1..N`` (None: all).
        heads: head indices (None: all).
        device: as for :func:`attention_stats`.
    """
    run = _Run(upstream, layers, device)
    if not hasattr(utterance, "wav") or not hasattr(utterance, "id"):
        raise TypeError(f"utterance must be an s3viz.data.Utterance (corpus[i]), got "
                        f"{type(utterance).__name__}")
    maps, outside, picked = {}, {}, {}

    def on_call(layer, probs, items, frames):
        n = int(frames[0])
        if "heads" not in picked:
            picked["heads"] = _head_list(heads, probs.shape[1])
        p = probs[0, picked["heads"], :n].float().cpu()
        maps[layer], outside[layer] = p[..., :n].clone(), p[..., n:].sum(-1)

    with eval_session(upstream):
        run.run([utterance], on_call)
    return AttentionMaps(
        utterance_id=str(utterance.id),
        maps=torch.stack([maps[k] for k in run.layers]),
        outside=torch.stack([outside[k] for k in run.layers]),
        layers=list(run.layers), heads=picked["heads"], rate=run.rate,
        receptive_field_samples=run.field, phones=getattr(utterance, "phones", None),
        model=getattr(upstream, "name", type(upstream).__name__))
