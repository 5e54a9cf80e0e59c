"""The runtime rules shared across s3viz: devices, model sessions, notebook threads.

:func:`resolve_device` is the one device rule: every s3viz function that picks a device
picks it here, and this is the only module that asks torch whether CUDA is there
(``tests/test_architecture.py``). :func:`eval_session` runs a model in eval mode;
:func:`notebook_threads` picks torch threads for a (possibly shared) notebook server.
"""

from __future__ import annotations

import contextlib
import os

import torch

def module_device(module) -> torch.device | None:
    """The device of ``module``'s first parameter (or buffer); None when it has neither
    or is not an ``nn.Module``."""
    if not isinstance(module, torch.nn.Module):
        return None
    t = next(module.parameters(), None)
    t = next(module.buffers(), None) if t is None else t
    return None if t is None else t.device


def resolve_device(device=None, module=None) -> torch.device:
    """``None`` -> ``module``'s own device when it has tensors, else cuda when available,
    else cpu; anything else -> ``torch.device(device)``. ValueError for what torch does not
    read as a device, or CUDA where torch sees none."""
    if device is None:
        own = module_device(module)
        return own if own is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be e.g. 'cpu', 'cuda' or 'cuda:0', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; pass device='cpu' "
                         "or device=None (the model's own device, else the CPU)")
    return dev


@contextlib.contextmanager
def eval_session(module, device: torch.device | None = None, *, move: bool = False):
    """Eval mode for the block (with ``move``, on ``device`` too); afterwards every submodule
    gets back its own training flag and a moved module goes back. A callable that is not
    an ``nn.Module`` is left alone."""
    if not isinstance(module, torch.nn.Module):
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    own = module_device(module)
    moved = bool(move) and device is not None and own is not None
    try:
        if moved:
            module.to(device)
        module.eval()
        yield
    finally:
        if moved:
            module.to(own)
        for m, flag in flags:
            m.training = flag


def notebook_threads(*, apply: bool = True, verbose: bool = True) -> int:
    """The torch CPU thread count for an analysis notebook on this machine: ``S3VIZ_THREADS``
    when set; one thread on at most 4 cores or when the load average is at least half the
    cores (threads wait for each other on a busy server: ``benchmarks/bench_threads.py``);
    otherwise the cores the load leaves idle, at most torch's default.

    Args:
        apply: set torch's thread count to the chosen one (False: only return it).
        verbose: print the count chosen and why.
    """
    env = os.environ.get("S3VIZ_THREADS", "").strip()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    why = f"{cores} cores, load average {load:.1f}"
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"S3VIZ_THREADS must be a positive whole number, got {env!r}")
        n, why = int(env), "S3VIZ_THREADS"
    elif cores <= 4 or load >= cores / 2:
        n = 1
    else:
        n = max(1, min(torch.get_num_threads(), int(cores - load)))
    if apply:
        torch.set_num_threads(n)
    if verbose:
        print(f"torch threads: {n} ({why})")
    return n
