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
    """Return an upstream for a name, a folder or an object.

    Names mean pretrained models, as in transformers, torch.hub and s3prl: downloaded
    on first use into torch.hub's or huggingface_hub's cache and reused afterwards;
    ``S3VIZ_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` make every name cache-only. The names,
    their checkpoints, caches and download sizes: ``docs/upstreams.md``.

    Args:
        name_or_object:
            ``"tiny"``: the shipped tiny model, trained on the embedded corpus
            (offline, 3 MB; what the demo, notebooks and tests use);
            ``"spectral"``: a log-mel / MFCC baseline (nothing learned);
            a pretrained model's name (``"hubert_base"``, ``"wavlm_base_plus"``,
            ``"xls_r_300m"``, ``"distilhubert"``, ... ``PRETRAINED_MODELS``) or s3prl's
            name for it (``"hubert"``, ``"wavlm"``, ``"hubert_large_ll60k"``, ...
            ``ALIASES``);
            ``"hf:<repository id>"``: a Hugging Face checkpoint (``revision=`` picks a
            branch, tag or commit);
            a folder saved with ``save_pretrained``: its own weights;
            an s3prl checkpoint file (what ``hubert_local`` / ``wav2vec2_local``
            read): its own weights (:func:`from_s3prl_checkpoint`);
            an upstream object: an s3prl ``S3PRLUpstream`` is wrapped by
            :func:`from_s3prl`, a transformers model (``HubertModel``,
            ``WhisperModel``, ...) by :func:`from_transformers`.
        **kwargs: passed to the factory (``seed=``, ``checkpoint=`` for a torchaudio
            state dict file, ``revision=`` for ``hf:``, ``upstream_layers=``,
            ``normalize_waveform=`` for transformers models).
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
