"""Round reports (spec: ``protocol/09-averaging.md`` §9.6): what a round, or one shard of it,
did — who contributed with which weight, whose delta was refused and why, who was late, and
(in a version) which aggregator's update each shard uses and whom it averaged."""

from __future__ import annotations

import math
from dataclasses import dataclass

from spheroid_p2p.params import MAX_REPORT_ENTRIES, MAX_SHARDS
from spheroid_p2p.wire.message import Body, as_tuple, bad, check_bytes, check_str, check_uint

__all__ = ["RoundReport", "ShardRow", "shard_mask"]


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One shard of a version: its index, the aggregator whose update the version uses, which
    of the report's contributors it averaged (bit j of ``mask``, MSB of byte 0 first, is
    contributor j), and the delta bytes that aggregator received."""

    index: int
    aggregator: bytes
    mask: bytes
    bytes_in: int

    def has(self, j: int) -> bool:
        return j // 8 < len(self.mask) and bool(self.mask[j // 8] & (0x80 >> (j % 8)))


def shard_mask(members: list[bool]) -> bytes:
    """The bitmap of a :class:`ShardRow` from one flag per contributor."""
    out = bytearray((len(members) + 7) // 8)
    for j, member in enumerate(members):
        if member:
            out[j // 8] |= 0x80 >> (j % 8)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What the round (or shard) that produced a version (or update) did; empty for version 0.

    ``contributors``: (peer id, weight, local steps, staleness); ``rejected``: (peer id, error
    code, reason); ``late``: peer ids that sent nothing in time; ``shards`` and ``missing``
    (r10, versions only): the shard table and the shards left at their base values.
    """

    contributors: tuple[tuple[bytes, float, int, int], ...] = ()
    rejected: tuple[tuple[bytes, int, str], ...] = ()
    late: tuple[bytes, ...] = ()
    bytes_in: int = 0
    shards: tuple[ShardRow, ...] = ()
    missing: tuple[int, ...] = ()

    def to_wire(self) -> Body:
        body: Body = {
            "c": [list(c) for c in self.contributors],
            "x": [list(r) for r in self.rejected],
            "l": list(self.late),
            "bi": self.bytes_in,
        }
        if self.shards:  # r10; left out when empty so earlier reports keep their bytes
            body["sh"] = [[s.index, s.aggregator, s.mask, s.bytes_in] for s in self.shards]
        if self.missing:
            body["ms"] = list(self.missing)
        return body

    @classmethod
    def from_wire(cls, value: object) -> RoundReport:
        if not isinstance(value, dict):
            raise bad("round report must be a map")
        contributors = []
        for item in as_tuple(value.get("c", []), "contributors"):
            if not isinstance(item, list) or len(item) != 4:
                raise bad("a contributor is [peer, weight, steps, staleness]")
            peer, weight, steps, stale = item
            check_bytes("contributor", peer, 32)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise bad("contributor weight must be a number")
            if not math.isfinite(weight) or not 0 <= weight <= 1:
                raise bad("contributor weight must be in 0..1")
            check_uint("steps", steps)
            check_uint("staleness", stale, 1)
            contributors.append((peer, float(weight), steps, stale))
        rejected = []
        for item in as_tuple(value.get("x", []), "rejected"):
            if not isinstance(item, list) or len(item) != 3:
                raise bad("a rejection is [peer, code, reason]")
            peer, code, reason = item
            check_bytes("rejected peer", peer, 32)
            check_uint("code", code, 0xFFFF)
            check_str("reason", reason)
            rejected.append((peer, code, reason))
        late = as_tuple(value.get("l", []), "late")
        for peer in late:
            check_bytes("late peer", peer, 32)
        if len(contributors) + len(rejected) + len(late) > MAX_REPORT_ENTRIES:
            raise bad(f"a round report lists at most {MAX_REPORT_ENTRIES} peers")
        bytes_in = value.get("bi", 0)
        check_uint("bytes in", bytes_in)
        shards = []
        mask_len = (len(contributors) + 7) // 8
        for item in as_tuple(value.get("sh", []), "shards"):
            if not isinstance(item, list) or len(item) != 4:
                raise bad("a shard row is [index, aggregator, mask, bytes in]")
            index, aggregator, mask, shard_bytes = item
            check_uint("shard index", index, MAX_SHARDS - 1)
            check_bytes("shard aggregator", aggregator, 32)
            check_bytes("shard mask", mask, mask_len)
            check_uint("shard bytes in", shard_bytes)
            shards.append(ShardRow(index, aggregator, mask, shard_bytes))
        if len(shards) > MAX_SHARDS or len({s.index for s in shards}) != len(shards):
            raise bad(f"a report lists each of at most {MAX_SHARDS} shards once")
        missing = as_tuple(value.get("ms", []), "missing shards")
        for index in missing:
            check_uint("missing shard", index, MAX_SHARDS - 1)
        if len(missing) > MAX_SHARDS:
            raise bad(f"at most {MAX_SHARDS} missing shards")
        return cls(
            tuple(contributors),
            tuple(rejected),
            tuple(late),
            bytes_in,
            tuple(shards),
            tuple(missing),
        )
