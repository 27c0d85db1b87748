"""Drafters for speculative traversals (10 §10.8): guesses of the next bytes, checked by the chain.

A drafter is ``draft(text, most) -> bytes``: up to ``most`` bytes it expects to follow
``text``. A wrong guess costs only the rows it adds to one traversal (the chain keeps the
longest prefix it agrees with, plus its own next byte), so drafters may be cheap and often
wrong. Torch-free: they run in the client.

* :class:`PromptLookup`: the bytes that followed the latest earlier occurrence of the text's
  last few bytes (free; strong on repetitive text such as code, lists, dialogue headers);
* :class:`NgramDrafter`: a byte n-gram model of a corpus the client holds, continued greedily.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

__all__ = ["DRAFTERS", "FirstOf", "NgramDrafter", "PromptLookup", "drafter_by_name"]


class PromptLookup:
    """Prompt lookup: match the last ``longest..shortest`` bytes earlier in the text."""

    def __init__(self, longest: int = 8, shortest: int = 2, window: int = 4096) -> None:
        self.longest, self.shortest, self.window = longest, shortest, window

    def __call__(self, text: bytes, most: int) -> bytes:
        if most <= 0:
            return b""
        text = text[-self.window :]
        n = len(text)
        for size in range(min(self.longest, n - 1), self.shortest - 1, -1):
            start = text.rfind(text[n - size :], 0, n - 1)
            if start >= 0:
                return text[start + size : start + size + most]
        return b""


class NgramDrafter:
    """A byte n-gram model (orders ``order`` down to 1) of ``corpus``: each context's most
    frequent next byte, continued greedily with back-off."""

    def __init__(self, corpus: bytes, order: int = 6, min_count: int = 2) -> None:
        self.order = order
        self.best: list[dict[bytes, int]] = []
        for k in range(1, order + 1):
            counts: defaultdict[bytes, Counter[int]] = defaultdict(Counter)
            for i in range(k, len(corpus)):
                counts[corpus[i - k : i]][corpus[i]] += 1
            table = {}
            for ctx, nxt in counts.items():
                byte, count = nxt.most_common(1)[0]
                if count >= min_count:
                    table[ctx] = byte
            self.best.append(table)

    def _next(self, text: bytes) -> int | None:
        for k in range(min(self.order, len(text)), 0, -1):
            byte = self.best[k - 1].get(text[-k:])
            if byte is not None:
                return byte
        return None

    def __call__(self, text: bytes, most: int) -> bytes:
        out = bytearray()
        tail = text[-self.order :]
        while len(out) < most:
            byte = self._next(tail + bytes(out))
            if byte is None:
                break
            out.append(byte)
        return bytes(out)


class FirstOf:
    """The first drafter that proposes anything (prompt lookup, then the n-gram model)."""

    def __init__(self, *drafters: Callable[[bytes, int], bytes]) -> None:
        self.drafters = drafters

    def __call__(self, text: bytes, most: int) -> bytes:
        for drafter in self.drafters:
            draft = drafter(text, most)
            if draft:
                return draft
        return b""


#: The drafters by name, for the command line and the benchmarks.
DRAFTERS = ("none", "lookup", "ngram", "lookup+ngram")


def drafter_by_name(name: str, corpus: bytes | None = None) -> Callable[[bytes, int], bytes] | None:
    """One of ``DRAFTERS``; "ngram" and "lookup+ngram" need ``corpus`` (the client's text)."""
    if name == "none":
        return None
    if name == "lookup":
        return PromptLookup()
    if name in ("ngram", "lookup+ngram"):
        if not corpus:
            raise ValueError(f"the {name} drafter needs a corpus of text (--draft-corpus PATH)")
        ngram = NgramDrafter(corpus)
        return ngram if name == "ngram" else FirstOf(PromptLookup(), ngram)
    raise ValueError(f"unknown drafter {name!r}: one of {', '.join(DRAFTERS)}")
