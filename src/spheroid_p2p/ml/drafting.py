"""Exact speculative traversals, the torch-free part (10 §10.8): what to keep of a draft, and
how long the next draft should be. The client and the in-process reference share it.

A traversal carrying a draft of D bytes has D + 1 trajectory rows; row k answers the per-byte
traversal of the window plus the draft's first k bytes, so the chain's byte at row k is what
per-byte generation would emit there *if* the draft's first k bytes are right. The longest
prefix of the draft the chain agrees with, plus the chain's byte after it, is therefore exactly
what per-byte generation emits, at any temperature (each row is sampled with its per-byte
traversal's seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["MAX_COMBINED_DRAFT", "MAX_DRAFT", "DraftLength", "Drafter", "accept"]

#: Most draft bytes one traversal carries (MAX_TRAJECTORY_ROWS - 1 in the protocol).
MAX_DRAFT = 63
#: ... under the combined output rule, which carries 16 rows (MAX_COMBINED_ROWS - 1).
MAX_COMBINED_DRAFT = 15

#: A drafter: (the text so far, at most this many bytes) -> the bytes it proposes next.
Drafter = Callable[[bytes, int], bytes]


def accept(draft: bytes, chain: bytes) -> bytes:
    """What a speculative traversal emits: the longest prefix of ``draft`` that the chain's
    own bytes agree with, then the chain's byte after it (``chain`` has len(draft) + 1)."""
    k = 0
    while k < len(draft) and draft[k] == chain[k]:
        k += 1
    return chain[: k + 1]


class DraftLength:
    """Draft length from the acceptance rate: with each draft byte accepted with probability
    ``a`` (estimated from recent drafts), a draft's byte k is still useful with probability
    ``a ** k``; drafts stop where that falls under ``useful``. A row costs far less than a
    traversal, so drafts run long while the drafter is right and shrink to one byte when not."""

    def __init__(self, most: int, useful: float = 0.01, decay: float = 0.9) -> None:
        self.most, self.useful, self.decay = most, useful, decay
        self.accepted, self.missed = 2.0, 1.0  # a prior: a = 2/3, drafts of 7

    def rate(self) -> float:
        return self.accepted / (self.accepted + self.missed)

    def next(self) -> int:
        a = self.rate()
        if a >= 1.0:
            return self.most
        return max(1, min(self.most, int(math.log(self.useful) / math.log(max(a, 1e-6)))))

    def update(self, drafted: int, accepted: int) -> None:
        """After a traversal: ``accepted`` of ``drafted`` bytes kept (a miss ends a draft)."""
        if drafted == 0:
            return
        self.accepted = self.decay * self.accepted + accepted
        self.missed = self.decay * self.missed + (1 if accepted < drafted else 0)
