"""The shipped tiny upstream (defined in :mod:`s3viz.zoo.tiny`), listed with the adapters."""

from ..zoo.tiny import TinyUpstream, tiny

__all__ = ["tiny", "TinyUpstream"]
