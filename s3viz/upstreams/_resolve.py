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
            ``"hubert_base"`` (see ``TORCHAUDIO_MODELS``), or an upstream object
            (an s3prl ``S3PRLUpstream`` is wrapped by :func:`from_s3prl`).
        pretrained: torchaudio names only: load the pretrained weights from the
            local torch hub cache (fails offline with what to download where).
        **kwargs: passed to the factory.
    """
    from . import _s3prl, _spectral, _torchaudio

    if not isinstance(name_or_object, str):
        obj = name_or_object
        if hasattr(obj, "num_layer"):
            return obj
        if hasattr(obj, "num_layers"):  # s3prl's spelling: wrap to expose num_layer
            return _s3prl.from_s3prl(obj)
        raise TypeError(
            f"expected an upstream name or an upstream object, got {type(obj).__name__}; "
            f"names: {UPSTREAM_NAMES + tuple(_torchaudio.TORCHAUDIO_MODELS)}"
        )
    name = name_or_object.strip()
    if name in ("tiny", "tiny_random"):
        from ..zoo import tiny

        return tiny(pretrained=(name == "tiny"), **kwargs)
    if name == "spectral":
        return _spectral.spectral_upstream(**kwargs)
    if name in _torchaudio.TORCHAUDIO_MODELS:
        return _torchaudio.torchaudio_upstream(name, pretrained=pretrained, **kwargs)
    raise ValueError(
        f"unknown upstream {name!r}; use one of {UPSTREAM_NAMES} or a torchaudio name "
        f"{tuple(_torchaudio.TORCHAUDIO_MODELS)}, or pass an upstream object"
    )
