"""An all_reduce(SUM) between threads, standing in for torch.distributed ranks in tests."""

from __future__ import annotations

import threading

import torch


class ThreadSum:
    """An all_reduce(SUM) between threads: each thread's ``reduce`` is a collective call."""

    def __init__(self, n: int):
        self.barrier = threading.Barrier(n)
        self.lock = threading.Lock()
        self.parts: dict[int, list] = {}

    def reducer(self, rank: int = 0):
        """The ``reduce`` of one thread; ranks must be distinct (rank 0 frees each call)."""
        calls = [0]

        def reduce(t: torch.Tensor) -> torch.Tensor:
            k = calls[0]
            calls[0] += 1
            with self.lock:
                self.parts.setdefault(k, []).append(t.clone())
            self.barrier.wait()
            total = torch.stack(self.parts[k]).sum(0)
            self.barrier.wait()
            if rank == 0:
                del self.parts[k]
            return t.copy_(total)

        return reduce


def run_threads(n: int, work, timeout: float = 300.0):
    """Run ``work(rank)`` in ``n`` threads; return ``(results, errors)`` by rank.

    Fails the test if a thread is still running after ``timeout`` (a deadlock).
    """
    out, errors = [None] * n, [None] * n

    def target(r):
        try:
            out[r] = work(r)
        except BaseException as e:  # noqa: BLE001 - inspected by the caller
            errors[r] = e

    threads = [threading.Thread(target=target, args=(r,)) for r in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=timeout)
    assert not any(th.is_alive() for th in threads), "a shard is still waiting: deadlock"
    return out, errors
