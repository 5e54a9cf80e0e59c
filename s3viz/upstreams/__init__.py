"""Upstream adapters, every one an s3prl ``AbsUpstream`` (torchaudio, Hugging Face, s3prl,
a log-mel / MFCC baseline), and :func:`get_upstream` for any of them by name (names mean
pretrained weights; ``weights_of`` says which an upstream has). Names are imported
lazily. What each returns: ``docs/upstreams.md``.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TORCHAUDIO_MODELS": "_torchaudio",
    "TorchaudioUpstream": "_torchaudio",
    "torchaudio_upstream": "_torchaudio",
    "wav2vec2_hidden_states": "_torchaudio",
    "bundle_checkpoint": "_torchaudio",
    "from_s3prl_checkpoint": "_torchaudio",
    "SpectralUpstream": "_spectral",
    "spectral_upstream": "_spectral",
    "spectral_hidden_states": "_spectral",
    "S3PRLUpstreamAdapter": "_s3prl",
    "from_s3prl": "_s3prl",
    "TRANSFORMERS_FAMILIES": "_transformers",
    "TransformersUpstream": "_transformers",
    "WhisperEncoderUpstream": "_transformers",
    "from_transformers": "_transformers",
    "from_whisper": "_transformers",
    "get_upstream": "_resolve",
    "tiny": ".zoo",
    "TinyUpstream": ".zoo",
    "UPSTREAM_NAMES": "_resolve",
    "PRETRAINED_MODELS": "_hub",
    "ALIASES": "_hub",
    "RANDOM_WEIGHTS": "_hub",
    "weights_of": "_hub",
    "is_random_weights": "_hub",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
