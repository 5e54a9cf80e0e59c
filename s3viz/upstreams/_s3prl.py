"""Wrap s3prl's ``S3PRLUpstream`` (or anything shaped like it: ``num_layers`` or ``num_layer``,
``hidden_sizes``, ``downsample_rates``, ``forward(wavs, wavs_len) -> (all_hs, all_hs_len)``)
as an s3viz upstream without importing s3prl: ``from_s3prl(S3PRLUpstream("hubert"))``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..interface import AbsUpstream, check_wavs, num_layer_of

__all__ = ["S3PRLUpstreamAdapter", "from_s3prl"]


def _int_list(value, what: str, n: int, owner: str) -> List[int]:
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError) as e:
        raise TypeError(f"{owner}.{what} must be a list of ints, got {value!r}") from e
    if len(out) != n:
        raise ValueError(f"{owner}.{what} has {len(out)} entries but the upstream reports {n} "
                         "layers (num_layers); they must match")
    return out


class S3PRLUpstreamAdapter(AbsUpstream):
    """An s3prl ``S3PRLUpstream``-like object behind the s3viz upstream interface (an
    ``nn.Module`` becomes a submodule, device and mode as they are); ``name`` defaults to
    ``upstream.name`` or its class name. Sizes are read from the wrapped object each time:
    :attr:`num_layer`, :attr:`hidden_sizes`, :attr:`downsample_rates` and, when it has
    them, ``receptive_fields`` and ``conv_layers``."""

    def __init__(self, upstream, *, name: Optional[str] = None):
        super().__init__()
        owner = type(upstream).__name__
        if not callable(upstream):
            raise TypeError(f"from_s3prl: {owner} is not callable; it needs forward(wavs, "
                            "wavs_len) -> (all_hs, all_hs_len)")
        n = num_layer_of(upstream)
        for what in ("hidden_sizes", "downsample_rates"):
            if not hasattr(upstream, what):
                raise TypeError(f"from_s3prl: {owner} has no '{what}'; an s3prl upstream lists "
                                "one value per hidden state")
            _int_list(getattr(upstream, what), what, n, owner)
        self.upstream = upstream  # a submodule when it is an nn.Module
        own = getattr(upstream, "name", None)
        self.name = name or (own if isinstance(own, str) and own else owner)

    num_layer = property(lambda self: num_layer_of(self.upstream))

    def _list(self, what: str, optional: bool = False) -> List[int]:
        """The wrapped object's ``what``, checked (``optional``: AttributeError when None)."""
        value = getattr(self.upstream, what, None) if optional else getattr(self.upstream, what)
        if value is None and optional:
            raise AttributeError(f"{self.name} does not report {what}")
        return _int_list(value, what, self.num_layer, self.name)

    hidden_sizes = property(lambda self: self._list("hidden_sizes"))
    downsample_rates = property(lambda self: self._list("downsample_rates"))
    receptive_fields = property(lambda self: self._list("receptive_fields", optional=True))
    conv_layers = property(lambda self: getattr(self.upstream, "conv_layers", None))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_layer={self.num_layer}"

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The wrapped upstream's ``(all_hs, all_hs_len)`` as lists, lengths long."""
        wavs, wavs_len = check_wavs(wavs, wavs_len, who=f"from_s3prl({self.name})")
        out = self.upstream(wavs, wavs_len)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"{self.name} returned {type(out).__name__}; an s3prl upstream "
                            "returns (all_hs, all_hs_len)")
        all_hs, all_hs_len = list(out[0]), list(out[1])
        n = self.num_layer
        if len(all_hs) != n or len(all_hs_len) != n:
            raise ValueError(f"{self.name} returned {len(all_hs)} hidden states and "
                             f"{len(all_hs_len)} lengths but reports num_layers={n}")
        all_hs_len = [torch.as_tensor(h_len, device=wavs.device).long() for h_len in all_hs_len]
        return all_hs, all_hs_len


def from_s3prl(upstream, *, name: Optional[str] = None) -> S3PRLUpstreamAdapter:
    """Wrap an s3prl ``S3PRLUpstream``-like object (see :class:`S3PRLUpstreamAdapter`)."""
    return S3PRLUpstreamAdapter(upstream, name=name)
