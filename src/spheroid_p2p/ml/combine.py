"""Combining the blocks' predictions (issue 19; protocol r13 and r14, 10 §10.9).

Every block predicts the next bytes (its last call's logits). Two rules combine them:

* ``COMBINE_MEAN`` (r13): the mean of every block's log-probabilities, renormalised: a
  product of experts over the blocks. A traversal carries the running *sum* (``lp``).
* ``COMBINE_WEIGHTED`` (r14, the default): a weighted mean, block b's weight
  ``exp(-q_b / WEIGHT_TEMPERATURE)`` where ``q_b`` is the block's **quality**, the next-byte
  CE its trainer measured on its own recent batches (nats/byte, carried in its checkpoint;
  ``BlockDenoiser.quality``). These are exponential weights over experts by their losses
  (Hedge, Bayesian model averaging); at sigma >= 5 a block reads almost nothing from its code
  (``ml.codeinfo``), so its training CE *is* the CE it contributes to the chain and a weak
  block (an unlucky draw, a block with fewer trainers) is weighed down, not averaged in. A
  traversal carries the running weighted mean (``lp``) and the qualities so far (``lq``).

The running value is rounded to binary16 after every block whatever the hops are, so the
output never depends on how the chain is cut into hops (failover re-routes with the same
bytes), and the in-process sampler does the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spheroid_p2p.params import MAX_QUALITY, WEIGHT_TEMPERATURE

__all__ = [
    "COMBINE_LAST",
    "COMBINE_MEAN",
    "COMBINE_WEIGHTED",
    "MAX_QUALITY",
    "QUALITY_UNKNOWN",
    "WEIGHT_TEMPERATURE",
    "Combination",
    "accumulate",
    "combine_step",
    "combined_logits",
    "known_quality",
    "new_share",
    "quality_of",
]

#: The output is the last block's prediction (the rule until r12).
COMBINE_LAST = 0
#: The output is the mean of every block's log-probabilities (r13).
COMBINE_MEAN = 1
#: The output is the quality-weighted mean of the blocks' log-probabilities (r14).
COMBINE_WEIGHTED = 2
#: Each block clamps the running value to [-FLOOR, 0] before rounding it to binary16 (exact
#: there), so it never leaves the range the wire accepts (10 §10.9, wire COMBINED_FLOOR).
FLOOR = 60000.0
#: The quality of a block that does not know its own: that of an untrained block, which
#: predicts every byte alike (ln 256 nats); it weighs ~e^-110 against a trained one.
#: (WEIGHT_TEMPERATURE, tau of the weights, and MAX_QUALITY are protocol constants: params.)
QUALITY_UNKNOWN = math.log(256)


def known_quality(value: object) -> float | None:
    """``value`` as a quality the wire and the checkpoints take (a number in
    [0, MAX_QUALITY]), or None when it is not one (None, NaN, a diverged trainer's CE)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0.0 <= value <= MAX_QUALITY:  # NaN fails the comparison
        return None
    return float(value)


def quality_of(value: float | None) -> float:
    """A block's quality as a hop reports it: its own when known, else QUALITY_UNKNOWN."""
    known = known_quality(value)
    return QUALITY_UNKNOWN if known is None else known


def new_share(qualities: Sequence[float]) -> float:
    """The last block's share of the weighted mean over the blocks of ``qualities`` (in
    block order, the new one last): ``w_last / sum(w)``, in binary64 (10 §10.9)."""
    if not qualities:
        raise ValueError("no qualities")
    logw = [-q / WEIGHT_TEMPERATURE for q in qualities]
    top = max(logw)
    return math.exp(logw[-1] - top) / math.fsum(math.exp(v - top) for v in logw)


@torch.no_grad()
def accumulate(
    acc: torch.Tensor | None, logits: torch.Tensor, qualities: Sequence[float] = ()
) -> torch.Tensor:
    """The running value after one more block, as float16 (``acc`` None before the first
    block). Without ``qualities`` (``COMBINE_MEAN``): ``acc + log_softmax(logits)``. With
    them (``COMBINE_WEIGHTED``: every block's so far, this one last): the weighted mean,
    ``acc * (1 - s) + log_softmax(logits) * s`` with ``s`` = :func:`new_share`. In float32,
    clamped to [-FLOOR, 0]."""
    return combine_step(acc, torch.log_softmax(logits.float(), dim=-1), qualities)


def combine_step(
    acc: torch.Tensor | None, logp: torch.Tensor, qualities: Sequence[float] = ()
) -> torch.Tensor:
    """:func:`accumulate`'s arithmetic on one block's log-probabilities ``logp`` (float32):
    what the conformance vectors check (protocol/vectors/combine.json)."""
    if acc is None:
        total = logp
    elif not qualities:
        total = acc.float() + logp
    else:
        s = new_share(qualities)
        total = acc.float() * float(torch.tensor(1.0 - s, dtype=torch.float32)) + logp * float(
            torch.tensor(s, dtype=torch.float32)
        )
    return total.clamp(-FLOOR, 0.0).to(torch.float16)


def combined_logits(acc: torch.Tensor, n_blocks: int, rule: int = COMBINE_MEAN) -> torch.Tensor:
    """Logits of the combined prediction (the sampler picks bytes from them)."""
    if rule == COMBINE_WEIGHTED:
        return acc.float()
    return acc.float() / n_blocks


@dataclass
class Combination:
    """The combined rule's running state, as a traversal carries it from block to block:
    the running value (``lp``) and, under ``COMBINE_WEIGHTED``, the qualities so far (``lq``).
    Under ``COMBINE_LAST`` it stays empty."""

    rule: int = COMBINE_LAST
    acc: torch.Tensor | None = None
    qualities: tuple[float, ...] = ()

    def add(self, logits: torch.Tensor, quality: float | None) -> None:
        """One more block's prediction (``quality``: the block's own, None when unknown)."""
        if self.rule == COMBINE_MEAN:
            self.acc = accumulate(self.acc, logits)
        elif self.rule == COMBINE_WEIGHTED:
            self.qualities = (*self.qualities, quality_of(quality))
            self.acc = accumulate(self.acc, logits, self.qualities)

    def logits(self, n_blocks: int) -> torch.Tensor:
        """The combined prediction after ``n_blocks`` blocks."""
        if self.acc is None:
            raise ValueError("no block's prediction combined yet")
        return combined_logits(self.acc, n_blocks, self.rule)

    def output(self, last: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """The traversal's output logits after ``n_blocks`` blocks: ``last`` (the last
        block's) under ``COMBINE_LAST``, else the combination's."""
        return last if self.rule == COMBINE_LAST else self.logits(n_blocks)

    def lp_bytes(self) -> bytes:
        """The running value as ``lp`` carries it (binary16, little-endian)."""
        return self.acc.contiguous().numpy().tobytes() if self.acc is not None else b""
