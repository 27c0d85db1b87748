"""Tensors reused round after round: a round's shards have the same sizes every time.

A fresh tensor of tens of megabytes costs its page faults (the kernel zeroes every page) on
top of the arithmetic that fills it; on a 2-core machine that was a quarter of a round's CPU.
:class:`TensorPool` hands out 1-D tensors by (length, dtype) and takes them back once their
user is done with them; the round code gives back exactly what it took.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["TensorPool"]

#: Idle tensors kept per (length, dtype).
KEEP_PER_SHAPE = 8


class TensorPool:
    """Idle 1-D tensors by (length, dtype)."""

    def __init__(self, keep: int = KEEP_PER_SHAPE) -> None:
        self.keep = keep
        self._idle: dict[tuple[int, torch.dtype], list[torch.Tensor]] = {}
        self._lock = threading.Lock()  # taken and given on worker threads and the loop
        self.reused = 0

    def take(self, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor of ``numel`` elements (contents undefined)."""
        with self._lock:
            idle = self._idle.get((numel, dtype))
            if idle:
                self.reused += 1
                return idle.pop()
        return torch.empty(numel, dtype=dtype)

    def give(self, tensor: torch.Tensor) -> None:
        """Take back a tensor from :meth:`take` that nothing uses any more."""
        with self._lock:
            idle = self._idle.setdefault((tensor.numel(), tensor.dtype), [])
            if len(idle) < self.keep and all(t is not tensor for t in idle):
                idle.append(tensor)
