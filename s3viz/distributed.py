"""Sharding and summing helpers for runs over several processes (``torch.distributed``).

:func:`shard_indices` gives each rank a deterministic, balanced shard, :func:`all_reduce_sum`
sums over ranks, and :class:`Sharding` carries it to ``probe_layers(sharding=)`` and
``layer_similarity(sharding=)`` on stored shards (``docs/streaming.md``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .upstreams._hub import weights_of

__all__ = ["Sharding", "all_reduce_sum", "dist_info", "env_world", "shard_indices"]


def shard_indices(ids: Sequence[str], rank: int, world_size: int,
                  utterance_weights: Sequence[float] | None = None) -> list[int]:
    """Sorted positions of the utterances that ``rank`` handles.

    Utterances go in the order of the sha1 of their id: dealt round-robin, or with
    ``utterance_weights`` the heaviest first, each to the rank with the least weight so
    far (ties: sha1 order, then lowest rank), so every rank ends within one utterance's
    weight of the others. Only the ``(id, weight)`` pairs and the world size matter:
    shuffling the corpus never moves an utterance to another rank.

    Args:
        ids: utterance ids of the whole corpus (unique strings).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes (>= 1).
        utterance_weights: optional non-negative weight per utterance (e.g. its samples).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) \
            or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
            or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    ids = [str(u) for u in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique: sharding is by utterance id")
    keys = [int(hashlib.sha1(u.encode()).hexdigest()[:16], 16) for u in ids]
    if utterance_weights is None:
        order = sorted(range(len(ids)), key=lambda i: (keys[i], ids[i]))
        return sorted(i for k, i in enumerate(order) if k % world_size == rank)
    w = np.asarray(utterance_weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != len(ids) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"utterance_weights must be {len(ids)} finite non-negative numbers "
                         f"(one per id), got shape {w.shape}")
    order = sorted(range(len(ids)), key=lambda i: (-w[i], keys[i], ids[i]))
    load = np.zeros(world_size)
    count = np.zeros(world_size, dtype=np.int64)
    mine = []
    for i in order:
        r = int(np.lexsort((np.arange(world_size), count, load))[0])
        load[r] += w[i]
        count[r] += 1
        if r == rank:
            mine.append(i)
    return sorted(mine)


def dist_info() -> tuple[int, int, bool]:
    """``(rank, world_size, initialised)`` of the default process group (``(0, 1, False)`` without)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (in place) and return it; the identity without a process group.

    With the nccl backend the tensor travels through the current CUDA device
    and comes back on ``t``'s device. Integer tensors are summed exactly.

    Args:
        t: any tensor (same shape and dtype on every rank).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    nccl_cpu = dist.get_backend() == "nccl" and t.device.type != "cuda"
    work = (t.to(f"cuda:{torch.cuda.current_device()}") if nccl_cpu else t).contiguous()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if work is not t:
        t.copy_(work.to(t.device))
    return t


@dataclass(frozen=True)
class Sharding:
    """This process's part of a sharded run: ``store`` (of :func:`s3viz.probe.probe_layers`
    or :func:`s3viz.similarity.layer_similarity`) holds one shard, every statistic is summed
    over shards, and each shard returns the table of the whole corpus.

    Attributes:
        reference: the whole corpus's frame-free metadata (``ids``, ``labels``, ``phones``,
            ``tracks``; ``weights``: the shard store's) for the probes' folds, classes and
            controls (``layer_similarity`` needs only its ``ids`` and ``labels``, for
            ``bootstrap=``).
        reduce: ``reduce(tensor) -> tensor`` sums over all shards (``None``:
            :func:`all_reduce_sum`).
    """

    reference: object = None
    reduce: Callable | None = None

    def __post_init__(self):
        if self.reduce is None:
            object.__setattr__(self, "reduce", all_reduce_sum)
        if not callable(self.reduce):
            raise TypeError(f"Sharding.reduce must sum a tensor over shards (e.g. "
                            f"s3viz.distributed.all_reduce_sum), got {self.reduce!r}")

    @classmethod
    def of(cls, corpus, shard_store, shard_positions: Sequence[int],
           reduce=all_reduce_sum) -> Sharding:
        """The sharding of ``shard_store`` (the corpus utterances at ``shard_positions``):
        the whole ``corpus``'s metadata and ``reduce``."""
        from .measures._engine import CorpusMeta

        if list(shard_store.ids) != [corpus.ids[i] for i in shard_positions]:
            raise ValueError("shard_store must hold the corpus utterances at shard_positions, "
                             "in that order")
        meta = CorpusMeta(corpus)
        meta.weights = weights_of(shard_store)  # the weights the shards' tables say
        return cls(meta, reduce)


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``(0, 1, 0)`` without)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
