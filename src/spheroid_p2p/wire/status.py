"""Status messages (spec: ``protocol/07-ownership-gossip.md`` §7.8): a peer's view of the swarm.

Since r9 every row (a record, a connection) is a map with short keys, like a body: a receiver
ignores keys it does not know, so later revisions add fields without breaking older clients.
Rows are validated at decode like any other field: a status client acts on what it reads
(it plans routes from the addresses).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from spheroid_p2p.params import (
    CONTENT_HASH_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_STATUS_CONNECTIONS,
    MAX_STATUS_JOBS,
    MAX_STATUS_RECORDS,
)
from spheroid_p2p.wire.addr import check_addrs
from spheroid_p2p.wire.message import (
    Body,
    Message,
    MessageType,
    as_tuple,
    bad,
    check_bytes,
    check_str,
    check_str_tuple,
    check_uint,
    get_field,
    pairs,
    register,
    wire,
)

__all__ = ["ConnView", "JobView", "RecordView", "StatusRequest", "StatusResponse"]


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest(Message):
    """Ask a peer for its view of the swarm."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS_REQUEST
    request_id: int = wire("rid")
    #: Records to skip: the page starts at this index of the key-ordered table (r7).
    offset: int = wire("off", 0, omit_default=True)

    def __post_init__(self) -> None:
        check_uint("request_id", self.request_id)
        check_uint("offset", self.offset, 2**32 - 1)


def _row(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"a {what} row is a map")
    return value


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise bad(f"{name} must be finite and >= 0")
    return number


@dataclass(frozen=True, slots=True)
class RecordView:
    """One ownership record as a peer sees it, for the status command."""

    owner: bytes
    block: int
    role: str
    version: int
    content_hash: bytes
    addrs: tuple[str, ...]
    load: float
    seq: int
    age_ms: int
    expires_in_ms: int
    departed: bool
    n_blocks: int = 0
    config_hash: str = ""
    context: int = 0

    def __post_init__(self) -> None:
        check_bytes("owner", self.owner, 32)
        check_uint("block", self.block, 0xFFFF)
        check_str("role", self.role)
        check_uint("version", self.version)
        check_bytes("content hash", self.content_hash)
        if len(self.content_hash) not in (0, CONTENT_HASH_BYTES):
            raise bad("a record's hash is empty or 32 bytes")
        check_str_tuple("addrs", self.addrs)
        check_addrs("addrs", self.addrs)
        check_uint("seq", self.seq)
        check_uint("age", self.age_ms)
        check_uint("expires in", self.expires_in_ms)
        if not isinstance(self.departed, bool):
            raise bad("dep must be a boolean")
        check_uint("nb", self.n_blocks, 0xFFFF)
        check_str("cfg", self.config_hash)
        check_uint("ctx", self.context, MAX_CONTEXT_BYTES)

    def to_wire(self) -> Body:
        return {
            "o": self.owner,
            "blk": self.block,
            "role": self.role,
            "ver": self.version,
            "h": self.content_hash,
            "addrs": list(self.addrs),
            "load": float(self.load),
            "seq": self.seq,
            "age": self.age_ms,
            "exp": self.expires_in_ms,
            "dep": self.departed,
            "nb": self.n_blocks,
            "cfg": self.config_hash,
            "ctx": self.context,
        }

    @classmethod
    def from_wire(cls, value: object) -> RecordView:
        row = _row(value, "record")
        return cls(
            owner=get_field(row, "o"),
            block=get_field(row, "blk"),
            role=get_field(row, "role"),
            version=get_field(row, "ver"),
            content_hash=row.get("h", b""),
            addrs=as_tuple(row.get("addrs", []), "addrs"),
            load=_float(row.get("load", 0.0), "load"),
            seq=get_field(row, "seq"),
            age_ms=row.get("age", 0),
            expires_in_ms=row.get("exp", 0),
            departed=row.get("dep", False),
            n_blocks=row.get("nb", 0),
            config_hash=row.get("cfg", ""),
            context=row.get("ctx", 0),
        )


@dataclass(frozen=True, slots=True)
class ConnView:
    """One live connection as a peer sees it, for the status command."""

    peer: bytes
    addr: str
    outbound: bool
    rtt_ms: float
    idle_ms: int

    def __post_init__(self) -> None:
        check_bytes("peer", self.peer, 32)
        check_str("addr", self.addr)
        if not isinstance(self.outbound, bool):
            raise bad("out must be a boolean")
        check_uint("idle", self.idle_ms)

    def to_wire(self) -> Body:
        return {
            "p": self.peer,
            "addr": self.addr,
            "out": self.outbound,
            "rtt": float(self.rtt_ms),
            "idle": self.idle_ms,
        }

    @classmethod
    def from_wire(cls, value: object) -> ConnView:
        row = _row(value, "connection")
        return cls(
            peer=get_field(row, "p"),
            addr=row.get("addr", ""),
            outbound=row.get("out", False),
            rtt_ms=_float(row.get("rtt", 0.0), "rtt"),
            idle_ms=row.get("idle", 0),
        )


@dataclass(frozen=True, slots=True)
class JobView:
    """One block a peer trains (r12): where its training stands."""

    block: int
    step: int
    total: int
    loss: float
    #: optimizer steps per second in the peer's current process
    rate: float
    #: seconds to the end of the step budget at that rate; None: not known yet
    eta_s: float | None
    #: the block version the replica trains from (its last averaging round); 0: none yet
    version: int = 0

    def __post_init__(self) -> None:
        check_uint("blk", self.block, 0xFFFF)
        check_uint("step", self.step)
        check_uint("tot", self.total)
        check_uint("ver", self.version)
        for name, value in (("loss", self.loss), ("rate", self.rate), ("eta", self.eta_s)):
            if value is not None:
                _float(value, name)

    def to_wire(self) -> Body:
        row: Body = {
            "blk": self.block,
            "step": self.step,
            "tot": self.total,
            "loss": float(self.loss),
            "rate": float(self.rate),
            "ver": self.version,
        }
        if self.eta_s is not None:
            row["eta"] = float(self.eta_s)
        return row

    @classmethod
    def from_wire(cls, value: object) -> JobView:
        row = _row(value, "job")
        eta = row.get("eta")
        return cls(
            block=get_field(row, "blk"),
            step=get_field(row, "step"),
            total=get_field(row, "tot"),
            loss=_float(row.get("loss", 0.0), "loss"),
            rate=_float(row.get("rate", 0.0), "rate"),
            eta_s=None if eta is None else _float(eta, "eta"),
            version=row.get("ver", 0),
        )


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResponse(Message):
    """A peer's view: its own id and uptime, the records it holds, its connections."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS_RESPONSE
    request_id: int
    agent: str
    uptime_ms: int
    records: tuple[RecordView, ...]
    connections: tuple[ConnView, ...]
    dropped: tuple[tuple[str, int], ...] = ()
    #: Records the peer holds in all (r7; the page holds ``records`` from the asked offset).
    total: int = 0
    #: The blocks the peer trains (r12); left out when it trains none.
    jobs: tuple[JobView, ...] = ()

    def __post_init__(self) -> None:
        check_uint("request_id", self.request_id)
        check_str("agent", self.agent)
        check_uint("uptime_ms", self.uptime_ms)
        check_uint("total", self.total, 2**32 - 1)
        if len(self.records) > MAX_STATUS_RECORDS:
            raise bad(f"a status page holds at most {MAX_STATUS_RECORDS} records")
        if len(self.connections) > MAX_STATUS_CONNECTIONS:
            raise bad(f"a status lists at most {MAX_STATUS_CONNECTIONS} connections")
        if len(self.jobs) > MAX_STATUS_JOBS:
            raise bad(f"a status lists at most {MAX_STATUS_JOBS} training jobs")
        for reason, count in self.dropped:
            check_str("drop reason", reason)
            check_uint("drop count", count)

    def to_body(self) -> Body:
        return {
            "rid": self.request_id,
            "agent": self.agent,
            "up": self.uptime_ms,
            "recs": [r.to_wire() for r in self.records],
            "conns": [c.to_wire() for c in self.connections],
            "drops": [[k, v] for k, v in self.dropped],
            **({"total": self.total} if self.total else {}),
            **({"jobs": [j.to_wire() for j in self.jobs]} if self.jobs else {}),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> StatusResponse:
        records = tuple(RecordView.from_wire(r) for r in as_tuple(get_field(body, "recs"), "recs"))
        conns = tuple(ConnView.from_wire(c) for c in as_tuple(get_field(body, "conns"), "conns"))
        drops = tuple((k, v) for k, v in pairs(body.get("drops", []), "drops", 2))
        jobs = tuple(JobView.from_wire(j) for j in as_tuple(body.get("jobs", []), "jobs"))
        return cls(
            request_id=get_field(body, "rid"),
            agent=get_field(body, "agent"),
            uptime_ms=get_field(body, "up"),
            records=records,
            connections=conns,
            dropped=drops,
            total=body.get("total", len(records)),
            jobs=jobs,
        )
