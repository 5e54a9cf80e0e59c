"""The one rule for ``device=None`` across s3viz: cuda when available, else the CPU."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device=None) -> torch.device:
    """``None`` -> cuda when available else cpu; anything else -> ``torch.device(device)``.

    Raises:
        ValueError: for a string or object torch does not read as a device.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be e.g. 'cpu', 'cuda' or 'cuda:0', got {device!r}") from e
