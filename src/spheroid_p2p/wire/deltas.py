"""Averaging messages (spec: ``protocol/09-averaging.md`` §9.4): a replica's shard of its
delta (SHARD_DELTA) and its answer (DELTA_ACK), and a shard's averaged update (SHARD_UPDATE).

Neither header declares a size or lists tensors: the receiver knows a shard's exact layout
from its own base, the shard index and count, and the encoding (09 §9.3), so a header cannot
make it allocate more than one shard of its own block. The chunks that follow are
``TENSOR_CHUNK`` frames with the header's stream id (bit 63 clear).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spheroid_p2p.params import CONTENT_HASH_BYTES, MAX_SHARDS
from spheroid_p2p.wire.manifests import ENCODINGS
from spheroid_p2p.wire.message import (
    Body,
    Message,
    MessageType,
    bad,
    check_bytes,
    check_str,
    check_uint,
    get_field,
    register,
    wire,
)
from spheroid_p2p.wire.reports import RoundReport
from spheroid_p2p.wire.transfer import REQUEST_ID_BIT

__all__ = ["DeltaAck", "ShardDelta", "ShardUpdate"]


def _as_float(value: object) -> object:
    """msgpack may carry a whole-number float as an int; anything else is left to the check."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _check_stream(stream_id: object, block: object, round_: object, base: object) -> None:
    check_uint("stream id", stream_id, REQUEST_ID_BIT - 1)
    check_uint("block", block, 0xFFFE)
    check_uint("round", round_)
    if round_ == 0:
        raise bad("round 0 has no deltas; rounds start at 1")
    check_bytes("base", base, CONTENT_HASH_BYTES)


def _check_shard(shard: object, shards: object, encoding: object) -> None:
    check_uint("shard count", shards, MAX_SHARDS)
    check_uint("shard", shard, MAX_SHARDS - 1)
    assert isinstance(shard, int) and isinstance(shards, int)
    if not shard < shards:
        raise bad(f"shard {shard} of {shards}")
    if encoding not in ENCODINGS:
        raise bad(f"unknown delta encoding {encoding}")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ShardDelta(Message):
    """Opens a stream of shard ``shard`` (of ``shards``) of a replica's delta for round
    ``round`` of ``block`` (09 §9.4), built on version ``base_version`` (weights ``base``)."""

    TYPE: ClassVar[MessageType] = MessageType.SHARD_DELTA
    stream_id: int = wire("id")
    block: int = wire("b")
    round: int = wire("r")
    base: bytes = wire("base")
    base_version: int = wire("bv")
    shard: int = wire("sh")
    shards: int = wire("ns")
    steps: int = wire("st")
    loss: float = wire("loss", decode=_as_float)
    encoding: int = wire("enc")

    def __post_init__(self) -> None:
        _check_stream(self.stream_id, self.block, self.round, self.base)
        check_uint("base version", self.base_version)
        if self.base_version >= self.round:
            raise bad("a delta's base version precedes its round")
        _check_shard(self.shard, self.shards, self.encoding)
        check_uint("steps", self.steps, 2**32 - 1)
        if not isinstance(self.loss, float) or not math.isfinite(self.loss):
            raise bad("loss must be a finite float")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaAck(Message):
    """The aggregator's answer to a shard delta: taken (code 0) or refused, and why."""

    TYPE: ClassVar[MessageType] = MessageType.DELTA_ACK
    stream_id: int = wire("id")
    block: int = wire("b")
    round: int = wire("r")
    code: int = wire("code")
    reason: str = wire("why", "")

    def __post_init__(self) -> None:
        check_uint("stream id", self.stream_id, REQUEST_ID_BIT - 1)
        check_uint("block", self.block, 0xFFFE)
        check_uint("round", self.round)
        check_uint("code", self.code, 0xFFFF)
        check_str("reason", self.reason)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ShardUpdate(Message):
    """Opens a stream of shard ``shard``'s averaged update for round ``round`` of ``block``,
    on version ``round - 1`` (weights ``base``), with the shard's report (09 §9.6)."""

    TYPE: ClassVar[MessageType] = MessageType.SHARD_UPDATE
    stream_id: int
    block: int
    round: int
    base: bytes
    shard: int
    shards: int
    encoding: int
    report: RoundReport = field(default_factory=RoundReport)

    def __post_init__(self) -> None:
        _check_stream(self.stream_id, self.block, self.round, self.base)
        _check_shard(self.shard, self.shards, self.encoding)
        if self.report.shards or self.report.missing:
            raise bad("a shard's report has no shard table")

    def to_body(self) -> Body:
        return {
            "id": self.stream_id,
            "b": self.block,
            "r": self.round,
            "base": self.base,
            "sh": self.shard,
            "ns": self.shards,
            "enc": self.encoding,
            "rep": self.report.to_wire(),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> ShardUpdate:
        return cls(
            stream_id=get_field(body, "id"),
            block=get_field(body, "b"),
            round=get_field(body, "r"),
            base=get_field(body, "base"),
            shard=get_field(body, "sh"),
            shards=get_field(body, "ns"),
            encoding=get_field(body, "enc"),
            report=RoundReport.from_wire(body.get("rep", {})),
        )
