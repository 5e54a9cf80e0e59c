"""Upstream adapters: every one an s3prl ``AbsUpstream``.

- :func:`torchaudio_upstream` / :class:`TorchaudioUpstream`: wav2vec 2.0, HuBERT
  and WavLM from torchaudio (random weights offline, or local pretrained weights);
- :func:`spectral_upstream` / :class:`SpectralUpstream`: a non-learned log-mel /
  MFCC baseline at several downsample rates;
- :func:`from_s3prl` / :class:`S3PRLUpstreamAdapter`: wraps s3prl's
  ``S3PRLUpstream`` (or anything spelling ``num_layers``) without importing s3prl;
- :func:`from_transformers` / :class:`TransformersUpstream` and :func:`from_whisper` /
  :class:`WhisperEncoderUpstream`: Hugging Face wav2vec2, HuBERT, WavLM,
  Data2VecAudio, Wav2Vec2Conformer and Whisper-encoder models (transformers is
  imported only then);
- :func:`get_upstream`: any of the above (and the shipped tiny model) by name.

Names are imported lazily, so ``import s3viz.upstreams`` does not import torchaudio.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TORCHAUDIO_MODELS": "_torchaudio",
    "TorchaudioUpstream": "_torchaudio",
    "torchaudio_upstream": "_torchaudio",
    "wav2vec2_hidden_states": "_torchaudio",
    "bundle_checkpoint": "_torchaudio",
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
    "tiny": "_tiny",
    "TinyUpstream": "_tiny",
    "UPSTREAM_NAMES": "_resolve",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
