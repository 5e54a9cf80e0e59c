"""Self-attention of an upstream's transformer layers against the phone and word tiers.

:class:`AttentionMaps` holds the maps of one utterance (``s3viz.plot.attention_map``
draws them with the tiers; ``s3viz.widgets.attention_explorer`` browses them).
Which upstreams, what each statistic means and how padding is treated:
``docs/attention.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import pandas as pd
import torch

from .align import frame_labels as _frame_labels

__all__ = ["AttentionMaps"]


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
