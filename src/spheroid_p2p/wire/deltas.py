"""Averaging messages (spec: ``protocol/09-averaging.md`` §9.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from spheroid_p2p.params import CONTENT_HASH_BYTES
from spheroid_p2p.wire.manifests import ENCODINGS, TensorEntry, check_entries, entries_from
from spheroid_p2p.wire.message import (
    Message,
    MessageType,
    bad,
    check_bytes,
    check_str,
    check_uint,
    register,
    wire,
)
from spheroid_p2p.wire.transfer import REQUEST_ID_BIT

__all__ = ["DeltaAck", "DeltaHeader"]


def _as_float(value: object) -> object:
    """msgpack may carry a whole-number float as an int; anything else is left to the check."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaHeader(Message):
    """Opens a delta stream for round ``round`` of ``block`` (09 §9.4)."""

    TYPE: ClassVar[MessageType] = MessageType.DELTA_HEADER
    stream_id: int = wire("id")
    block: int = wire("b")
    round: int = wire("r")
    base: bytes = wire("base")
    base_version: int = wire("bv")
    steps: int = wire("st")
    loss: float = wire("loss", decode=_as_float)
    encoding: int = wire("enc")
    tensors: tuple[TensorEntry, ...] = wire(
        "ts", encode=lambda es: [e.to_wire() for e in es], decode=entries_from
    )

    def __post_init__(self) -> None:
        check_uint("stream id", self.stream_id, REQUEST_ID_BIT - 1)
        check_uint("block", self.block, 0xFFFE)
        check_uint("round", self.round)
        if self.round < 1:
            raise bad("round 0 has no deltas; rounds start at 1")
        check_bytes("base", self.base, CONTENT_HASH_BYTES)
        check_uint("base version", self.base_version)
        if self.base_version >= self.round:
            raise bad("a delta's base version precedes its round")
        check_uint("steps", self.steps, 2**32 - 1)
        if not isinstance(self.loss, float) or not math.isfinite(self.loss):
            raise bad("loss must be a finite float")
        if self.encoding not in ENCODINGS:
            raise bad(f"unknown delta encoding {self.encoding}")
        check_entries(self.tensors, "a delta")

    @property
    def total_bytes(self) -> int:
        return sum(e.raw_len for e in self.tensors)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaAck(Message):
    """The aggregator's answer to a delta: taken (code 0) or refused, and why."""

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
