"""Combining the blocks' predictions (issue 19; protocol r13, 10 §10.9).

Every block predicts the next bytes (its last call's logits). The chain's output under the
**combined rule** is the mean of every block's log-probabilities, renormalised: a product of
experts over the blocks. Measured on three corpora it is better than the last block alone
and than the first block alone (README, "The composed model against its first block").

A traversal carries the running sum from block to block (``lp``): after each block, in
float32, the sum plus that block's log-softmax, stored as float16. The rounding happens after
every block whatever the hops are, so the output never depends on how the chain is cut into
hops (failover re-routes with the same bytes), and the in-process sampler does the same.
"""

from __future__ import annotations

import torch

__all__ = ["COMBINE_LAST", "COMBINE_MEAN", "accumulate", "combined_logits"]

#: The output is the last block's prediction (the rule until r12).
COMBINE_LAST = 0
#: The output is the mean of every block's log-probabilities (r13).
COMBINE_MEAN = 1
#: Each block clamps the running sum to [-FLOOR, 0] before rounding it to binary16 (exact
#: there), so a sum never leaves the range the wire accepts (10 §10.9, wire COMBINED_FLOOR).
FLOOR = 60000.0


@torch.no_grad()
def accumulate(acc: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The running sum after one more block: ``acc`` (float16, or None before the first
    block) plus ``log_softmax(logits)``, summed in float32, clamped to [-FLOOR, 0] and
    returned as float16."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    total = logp if acc is None else acc.float() + logp
    return total.clamp(-FLOOR, 0.0).to(torch.float16)


def combined_logits(acc: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Logits of the combined prediction (the sampler picks bytes from them)."""
    return acc.float() / n_blocks
