"""Which weights a name means, how they arrive (a torchaudio bundle's file through
torch.hub's checkpoint folder, a Hugging Face repository through huggingface_hub's
cache), and the ``weights`` text every upstream carries. The names, caches and offline
rules: ``docs/upstreams.md``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple
from urllib.parse import urlparse

__all__ = ["PRETRAINED_MODELS", "ALIASES", "Pretrained", "offline", "resolve_name",
           "torchaudio_base_url", "torch_hub_checkpoints", "hf_cache_dir", "RANDOM_WEIGHTS",
           "AS_GIVEN", "weights_of", "is_random_weights"]

OFFLINE_VARS = ("S3VIZ_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Environment variables that make every load cache-only (huggingface_hub's spelling of
true: ``1``, ``ON``, ``YES``, ``TRUE``)."""

TORCHAUDIO_URL_VAR = "S3VIZ_TORCHAUDIO_URL"
"""Base URL of torchaudio's weight files (a mirror; the tests' loopback server)."""

TORCHAUDIO_URL = "https://download.pytorch.org/torchaudio/models/"

RANDOM_WEIGHTS = "random weights"
"""How an upstream's ``weights`` starts when it has random weights (``pretrained=False``)."""

AS_GIVEN = "as given"
"""The ``weights`` of an upstream or store s3viz did not build (an object made elsewhere,
``LayerStore.from_tensors``): where its weights came from is not known here."""


def weights_of(upstream) -> str:
    """Where an upstream's weights came from: its ``weights`` text (``"pretrained: ..."``,
    ``"random weights (seed 0)"`` ...: ``docs/upstreams.md``), else ``"as given"``."""
    value = getattr(upstream, "weights", None)
    if isinstance(value, str) and value.strip():
        return value
    inner = getattr(upstream, "upstream", None)  # an adapter around someone's object
    if inner is not None and inner is not upstream:
        return weights_of(inner)
    return AS_GIVEN


def is_random_weights(weights) -> bool:
    """True when a ``weights`` text (of an upstream, a store, a table) says random weights."""
    return isinstance(weights, str) and weights.startswith(RANDOM_WEIGHTS)


@dataclass(frozen=True)
class Pretrained:
    """A name's weights: ``source`` ``"torchaudio"`` (``ref`` a ``torchaudio.pipelines``
    bundle) or ``"hf"`` (``ref`` a Hugging Face repository id); ``about`` says what they are."""

    source: str
    ref: str
    about: str


_TA, _HF = partial(Pretrained, "torchaudio"), partial(Pretrained, "hf")

PRETRAINED_MODELS = {
    "wav2vec2_base": _TA("WAV2VEC2_BASE", "wav2vec 2.0 Base, LibriSpeech 960 h"),
    "wav2vec2_large": _TA("WAV2VEC2_LARGE", "wav2vec 2.0 Large, LibriSpeech 960 h"),
    "wav2vec2_large_lv60k": _TA("WAV2VEC2_LARGE_LV60K", "wav2vec 2.0 Large, Libri-Light 60k h"),
    "wav2vec2_xlsr53": _TA("WAV2VEC2_XLSR53", "XLSR-53, 56k h in 53 languages"),
    "xls_r_300m": _TA("WAV2VEC2_XLSR_300M", "XLS-R 300M, 436k h in 128 languages"),
    "xls_r_1b": _TA("WAV2VEC2_XLSR_1B", "XLS-R 1B, 436k h in 128 languages"),
    "xls_r_2b": _TA("WAV2VEC2_XLSR_2B", "XLS-R 2B, 436k h in 128 languages"),
    "hubert_base": _TA("HUBERT_BASE", "HuBERT Base, LibriSpeech 960 h"),
    "hubert_large": _TA("HUBERT_LARGE", "HuBERT Large, Libri-Light 60k h"),
    "hubert_xlarge": _TA("HUBERT_XLARGE", "HuBERT X-Large, Libri-Light 60k h"),
    "wavlm_base": _TA("WAVLM_BASE", "WavLM Base, LibriSpeech 960 h"),
    "wavlm_base_plus": _TA("WAVLM_BASE_PLUS",
                           "WavLM Base+, 94k h (Libri-Light, GigaSpeech, VoxPopuli)"),
    "wavlm_large": _TA("WAVLM_LARGE", "WavLM Large, 94k h (Libri-Light, GigaSpeech, VoxPopuli)"),
    "distilhubert": _HF("ntu-spml/distilhubert",
                        "DistilHuBERT: 2 layers distilled from HuBERT Base"),
    "data2vec": _HF("facebook/data2vec-audio-base", "data2vec Audio Base, LibriSpeech 960 h"),
    "wav2vec2_large_robust": _HF("facebook/wav2vec2-large-robust", "wav2vec 2.0 Large, "
                                 "Libri-Light, CommonVoice, Switchboard and Fisher"),
    "wav2vec2_large_voxpopuli_100k": _HF("facebook/wav2vec2-large-100k-voxpopuli",
                                         "wav2vec 2.0 Large, VoxPopuli 100k h"),
}
"""s3viz name -> where its pretrained weights come from (``docs/upstreams.md`` lists
each with its checkpoint and download size)."""

ALIASES = {
    "hubert": "hubert_base",
    "hubert_large_ll60k": "hubert_large",
    "hubert_xlarge_ll60k": "hubert_xlarge",
    "wav2vec2": "wav2vec2_base",
    "wav2vec2_base_960": "wav2vec2_base",
    "wav2vec2_large_960": "wav2vec2_large",
    "wav2vec2_large_ll60k": "wav2vec2_large_lv60k",
    "wav2vec2_large_lv60": "wav2vec2_large_lv60k",
    "wav2vec2_large_lv60_cv_swbd_fsh": "wav2vec2_large_robust",
    "xlsr_53": "wav2vec2_xlsr53",
    "wavlm": "wavlm_base_plus",
    "distilhubert_base": "distilhubert",
    "data2vec_base_960": "data2vec",
}
"""The names s3prl's ``S3PRLUpstream`` uses for the same checkpoints -> s3viz's name."""


def resolve_name(name: str) -> Optional[str]:
    """The s3viz name for ``name`` (itself, or what an s3prl alias means), or None."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    return key if key in PRETRAINED_MODELS else None


def offline() -> Optional[str]:
    """The variable of :data:`OFFLINE_VARS` that makes loading cache-only now, or None."""
    return next((var for var in OFFLINE_VARS if (os.environ.get(var) or "").strip().upper()
                 in {"1", "ON", "YES", "TRUE"}), None)


def torchaudio_base_url() -> str:
    """``S3VIZ_TORCHAUDIO_URL`` (checked: an http(s) URL), else torchaudio's own."""
    value = os.environ.get(TORCHAUDIO_URL_VAR)
    if value is None or not value.strip():
        return TORCHAUDIO_URL
    parsed = urlparse(value.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{TORCHAUDIO_URL_VAR}={value!r} is not an http(s) URL; set it to the "
                         "base URL of a mirror of torchaudio's weight files (e.g. "
                         f"{TORCHAUDIO_URL}), or unset it")
    return value.strip().rstrip("/") + "/"


def hf_cache_dir() -> str:
    """huggingface_hub's cache folder, as huggingface_hub itself reads it."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def torch_hub_checkpoints() -> str:
    """torch.hub's checkpoint folder: ``<torch.hub.get_dir()>/checkpoints``."""
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def fetch_torchaudio(name: str, bundle_name: str, filename: str) -> Tuple[str, bool]:
    """``(path, downloaded_now)`` of a torchaudio weight file, downloaded into torch.hub's
    checkpoint folder when missing (``docs/upstreams.md``)."""
    import torch

    folder = torch_hub_checkpoints()
    path = os.path.join(folder, filename)
    if os.path.isfile(path):
        return path, False
    if os.path.lexists(path):  # a folder, or a link to one or to nothing: not downloaded into
        raise FileExistsError(
            f"{name}: {path} is there but is not a weight file (a folder or a link); s3viz "
            "downloads only to a free name and follows no link there. Move it away, or put "
            "the weight file itself there")
    url = torchaudio_base_url() + filename
    var = offline()
    if var is not None:
        raise FileNotFoundError(
            f"{name}: the pretrained weights (torchaudio.pipelines.{bundle_name}, {filename}) "
            f"are not in torch.hub's checkpoint folder {folder} and {var} is set, so nothing "
            f"is downloaded. Fetch the file where there is a network ({url}) and put it at "
            f"{path} (the same TORCH_HOME), unset {var} to download it now, or pass "
            "pretrained=False for the random-weights control")
    from .._fs import OwnedFolder

    OwnedFolder(folder, "torch.hub's checkpoint folder", create=True)  # made when missing
    print(f"{name}: downloading the pretrained weights {url} to {path} (once; later "
          "calls read the file)", file=sys.stderr, flush=True)
    try:
        # torch.hub's own download: progress bar on stderr, a .partial file renamed
        # into place only when complete
        torch.hub.download_url_to_file(url, path, progress=True)
    except Exception as err:  # urllib, http.client and socket errors come in many types
        raise OSError(
            f"{name}: downloading {url} failed ({type(err).__name__}: {err}); nothing was "
            f"kept in {folder}. Check the network (or {TORCHAUDIO_URL_VAR}), or fetch the file "
            f"elsewhere and put it at {path}") from err
    return path, True
