"""The BlockTrain model in PyTorch: blocks, noise, sampler, training, evaluation, checkpoints.

Never imports networking (wire, core, net, node). Importing this package alone loads no torch;
its modules do.
"""

from __future__ import annotations

__all__: list[str] = []
