"""One entry point from a name (as typed in a notebook's parameters cell) to an upstream."""

from __future__ import annotations

import os
from typing import Union

from ._hub import ALIASES, PRETRAINED_MODELS, resolve_name

__all__ = ["get_upstream", "UPSTREAM_NAMES"]

UPSTREAM_NAMES = ("tiny", "spectral")
"""Names besides the pretrained models (``s3viz.upstreams.PRETRAINED_MODELS``)."""


def _names() -> str:
    return (f"{UPSTREAM_NAMES}, a pretrained model {tuple(PRETRAINED_MODELS)} (or s3prl's "
            f"name for one: {tuple(ALIASES)}), 'hf:<repository id>', a folder saved with "
            "save_pretrained, or an upstream object")


def get_upstream(name_or_object: Union[str, os.PathLike, object], *, pretrained: bool = True,
                 **kwargs):
    """Return an upstream for a name, a folder or an object (``docs/upstreams.md``).

    Names mean pretrained weights, downloaded on first use into torch.hub's or
    huggingface_hub's cache (``S3VIZ_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: cache only);
    ``pretrained=False`` is the same architecture with random weights.

    Args:
        name_or_object: ``"tiny"`` (the shipped model, offline); ``"spectral"`` (log-mel /
            MFCC, nothing learned); a name of ``PRETRAINED_MODELS`` or s3prl's name for
            one (``ALIASES``); ``"hf:<repository id>"``; a ``save_pretrained`` folder; an
            s3prl checkpoint file (:func:`from_s3prl_checkpoint`); or an upstream object
            (s3prl's wrapped by :func:`from_s3prl`, a transformers model by
            :func:`from_transformers`).
        **kwargs: for the factory: ``seed=``, ``checkpoint=`` (a torchaudio state dict
            file), ``revision=`` (``hf:``), ``upstream_layers=``, ``normalize_waveform=``.
    """
    from . import _s3prl, _spectral, _torchaudio, _transformers

    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    if not isinstance(name_or_object, (str, os.PathLike)):
        obj = name_or_object
        if not pretrained:
            raise ValueError(f"pretrained=False builds random weights for a name or folder; "
                             f"a {type(obj).__name__} object carries its own weights (build its "
                             "random control yourself, e.g. AutoModel.from_config(config))")
        if _transformers.is_transformers_model(obj):
            return _transformers.from_transformers(obj, **kwargs)
        if hasattr(obj, "num_layer"):
            return obj
        if hasattr(obj, "num_layers"):  # s3prl's spelling: wrap to expose num_layer
            return _s3prl.from_s3prl(obj)
        raise TypeError(f"expected an upstream name or an upstream object, got "
                        f"{type(obj).__name__}; names: {_names()}")
    name = os.fspath(name_or_object).strip()
    if name.startswith("hf:"):
        repo = name[3:].strip()
        if not repo:
            raise ValueError("'hf:' needs a repository id, e.g. 'hf:facebook/hubert-base-ls960'")
        # as transformers' from_pretrained: a repository id, or a local folder of that path
        return _transformers.load_transformers(repo, pretrained=pretrained, **kwargs)
    if "revision" in kwargs:
        raise TypeError(f"revision= applies to 'hf:<repository id>' names, not {name!r}")
    if name.lower() == "tiny":
        from ..zoo import tiny

        return tiny(pretrained=pretrained, **kwargs)
    if name.lower() == "spectral":
        if not pretrained:
            raise ValueError("'spectral' has no learned weights, so it has no random-weights "
                             "control: it is itself the baseline; leave pretrained out")
        return _spectral.spectral_upstream(**kwargs)
    key = resolve_name(name)
    if key is not None:
        spec = PRETRAINED_MODELS[key]
        if spec.source == "torchaudio":
            return _torchaudio.torchaudio_upstream(key, pretrained=pretrained, **kwargs)
        if "checkpoint" in kwargs:
            raise TypeError(f"checkpoint= applies to torchaudio models; {key!r} comes from "
                            f"Hugging Face ({spec.ref}): pass a save_pretrained folder instead")
        kwargs.setdefault("name", key)
        return _transformers.load_transformers(spec.ref, pretrained=pretrained,
                                               repository=True, **kwargs)
    # a path is tried after the built-in names, so a folder called "tiny" cannot shadow them
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):  # refused before transformers
            raise ValueError(f"{name!r} is a folder without config.json; an upstream folder is "
                             "one saved with a transformers model's save_pretrained")
        return _transformers.load_transformers(path, pretrained=pretrained, **kwargs)
    if os.path.isfile(path):  # s3prl's converted checkpoint says its architecture
        return _torchaudio.from_s3prl_checkpoint(path, pretrained=pretrained, **kwargs)
    raise ValueError(f"unknown upstream {name!r}; use {_names()}")
