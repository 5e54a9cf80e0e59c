"""One entry point from a name (as typed in a notebook's parameters cell) to an upstream."""

from __future__ import annotations

from typing import Union

__all__ = ["get_upstream", "UPSTREAM_NAMES"]

UPSTREAM_NAMES = ("tiny", "tiny_random", "spectral")
"""Names besides torchaudio's (``s3viz.upstreams.TORCHAUDIO_MODELS``)."""


def get_upstream(name_or_object: Union[str, object], *, pretrained: bool = False, **kwargs):
    """Return an upstream for a name, or wrap an object that follows the interface.

    Args:
        name_or_object: ``"tiny"`` (the shipped model trained on the embedded
            corpus), ``"tiny_random"`` (same architecture, random weights),
            ``"spectral"`` (log-mel / MFCC baseline), a torchaudio name such as
            ``"hubert_base"`` (see ``TORCHAUDIO_MODELS``), ``"hf:<name or folder>"``
            (a Hugging Face checkpoint from the local HF cache, never downloaded),
            a folder saved with ``save_pretrained``, or an upstream object: an
            s3prl ``S3PRLUpstream`` is wrapped by :func:`from_s3prl`, a
            transformers model (``HubertModel``, ``WhisperModel``, ...) by
            :func:`from_transformers`.
        pretrained: torchaudio names and Hugging Face names/folders: load the
            pretrained weights from the local cache or folder (fails offline with
            what to download); False (the default) builds the architecture with
            random weights from a fixed seed.
        **kwargs: passed to the factory (e.g. ``upstream_layers=``,
            ``normalize_waveform=`` for transformers models).
    """
    import os

    from . import _s3prl, _spectral, _torchaudio, _transformers

    if not isinstance(name_or_object, str) and not isinstance(name_or_object, os.PathLike):
        obj = name_or_object
        if _transformers.is_transformers_model(obj):
            return _transformers.from_transformers(obj, **kwargs)
        if hasattr(obj, "num_layer"):
            return obj
        if hasattr(obj, "num_layers"):  # s3prl's spelling: wrap to expose num_layer
            return _s3prl.from_s3prl(obj)
        raise TypeError(
            f"expected an upstream name or an upstream object, got {type(obj).__name__}; "
            f"names: {UPSTREAM_NAMES + tuple(_torchaudio.TORCHAUDIO_MODELS)}"
        )
    name = os.fspath(name_or_object).strip()
    if name.startswith("hf:"):
        if not name[3:].strip():
            raise ValueError("'hf:' needs a model name or folder, e.g. 'hf:facebook/hubert-base-ls960'")
        return _transformers.load_transformers(name[3:].strip(), pretrained=pretrained, **kwargs)
    if name in ("tiny", "tiny_random"):
        from ..zoo import tiny

        return tiny(pretrained=(name == "tiny"), **kwargs)
    if name == "spectral":
        return _spectral.spectral_upstream(**kwargs)
    if name in _torchaudio.TORCHAUDIO_MODELS:
        return _torchaudio.torchaudio_upstream(name, pretrained=pretrained, **kwargs)
    # a folder is tried after the built-in names, so a folder called "tiny" cannot shadow them
    if os.path.isdir(os.path.expanduser(name)):
        if not os.path.isfile(os.path.join(os.path.expanduser(name), "config.json")):
            raise ValueError(f"{name!r} is a folder without config.json; an upstream folder is "
                             "one saved with a transformers model's save_pretrained")
        return _transformers.load_transformers(name, pretrained=pretrained, **kwargs)
    raise ValueError(
        f"unknown upstream {name!r}; use one of {UPSTREAM_NAMES}, a torchaudio name "
        f"{tuple(_torchaudio.TORCHAUDIO_MODELS)}, 'hf:<name>' for a Hugging Face checkpoint, "
        "a save_pretrained folder, or pass an upstream object"
    )
