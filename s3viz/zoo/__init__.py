"""Small models that ship with s3viz, so analyses have learned layers offline.

- :func:`tiny`: a wav2vec2/HuBERT-shaped upstream (5 hidden states, 320 samples
  per frame) trained self-supervised on the embedded synthetic corpus by
  ``python -m s3viz.zoo.train_tiny``; ``tiny(pretrained=False)`` is the same
  architecture with random weights. See ``s3viz/zoo/MODEL_CARD.md``.
"""

from __future__ import annotations

from .tiny import TinyConfig, TinyUpstream, tiny

__all__ = ["TinyConfig", "TinyUpstream", "tiny"]
