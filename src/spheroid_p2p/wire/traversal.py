"""Traversal messages: a request flowing block 0 -> 1 -> ... -> B-1 (spec: 10-traversal.md).

A traversal carries the noisy codes ``z`` of one span through the chain. Each hop runs its
blocks' Euler steps and forwards ``TRAVERSE`` to the next hop over its own connection; the last
hop sends ``TRAVERSE_RESULT`` (the span's bytes, optionally its logits) straight to the client,
and any hop that cannot go on sends ``TRAVERSE_ERROR`` to the client.

``z`` and logits travel as *inline tensors*: dtype, shape, codec and BLAKE3 hash in the signed
body, the encoded bytes in the frame's payload section (at most ``TENSOR_CHUNK_BYTES`` raw),
checked exactly like a tensor chunk (05 §5.4).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from spheroid_p2p.errors import ErrorCode, LocalProtocolError
from spheroid_p2p.params import (
    MAX_COMBINED_ROWS,
    MAX_CONTEXT_BYTES,
    MAX_ROUTE_HOPS,
    MAX_TRAJECTORY_ROWS,
    MAX_WEIGHTED_BLOCKS,
)
from spheroid_p2p.wire.addr import check_addr
from spheroid_p2p.wire.framing import Buffer
from spheroid_p2p.wire.inline import InlineTensor, verify_inline
from spheroid_p2p.wire.message import (
    Body,
    Message,
    MessageType,
    as_tuple,
    check_bytes,
    check_quality,
    check_str,
    check_uint,
    get_field,
    pairs,
    register,
    wire,
)

__all__ = [
    "COMBINED_FLOOR",
    "COMBINED_ROW_BYTES",
    "COMBINE_LAST",
    "COMBINE_MEAN",
    "COMBINE_RULES",
    "COMBINE_WEIGHTED",
    "HOP_TIMINGS",
    "PREFIX_KNOWN",
    "PREFIX_NOISY",
    "Z_DTYPES",
    "Hop",
    "InlineTensor",
    "Traverse",
    "TraverseError",
    "TraverseResult",
    "check_route",
    "route_body",
    "route_from",
    "verify_inline",
]


#: The dtypes ``z`` may travel in (10 §10.3): code -> name.
Z_DTYPES: Final = {1: "float32", 2: "float16", 3: "bfloat16"}


def _bad(msg: str, code: ErrorCode = ErrorCode.MALFORMED_MESSAGE) -> LocalProtocolError:
    return LocalProtocolError(msg, code)


@dataclass(frozen=True, slots=True)
class Hop:
    """One hop of a route: a server, its address, and the contiguous blocks it runs."""

    peer: bytes
    addr: str
    first_block: int
    last_block: int


#: Prefix rules (10 §10.8, r11): every window row from fresh noise (r3), or the known-prefix
#: rule, whose rows with a known next byte carry its code noised with fixed noise.
PREFIX_NOISY: Final = 0
PREFIX_KNOWN: Final = 1
#: r13 (10 §10.9): the output rule: the last block's prediction, or the mean of every
#: block's log-probabilities (``ml.combine``), whose running sum a traversal carries (``lp``).
COMBINE_LAST: Final = 0
COMBINE_MEAN: Final = 1
#: r14: the mean of the blocks' log-probabilities weighted by each block's quality: ``lp``
#: is the running weighted mean, ``lq`` the qualities of the blocks so far (``ml.combine``).
COMBINE_WEIGHTED: Final = 2
COMBINE_RULES: Final = (COMBINE_LAST, COMBINE_MEAN, COMBINE_WEIGHTED)
#: Bytes of one row of ``lp``: 256 float16 log-probabilities, little-endian.
COMBINED_ROW_BYTES: Final = 512
#: Every ``lp`` value is in [-COMBINED_FLOOR, 0]: each block clamps its sum there before
#: rounding (exact in binary16), so no hop ever forwards a value the next one refuses.
COMBINED_FLOOR: Final = 60000.0


def _check_reused(values: tuple[int, ...]) -> None:
    """Reused rows per hop (r11 ``cr``): at most MAX_ROUTE_HOPS counts, each a uint."""
    if len(values) > MAX_ROUTE_HOPS:
        raise _bad(f"reused rows: at most {MAX_ROUTE_HOPS} hops")
    for v in values:
        check_uint("reused rows", v, MAX_CONTEXT_BYTES)  # no window has more rows


#: Times a hop reports (10 §10.3.1), in this order, in milliseconds.
HOP_TIMINGS = ("queued_ms", "compute_ms", "encode_ms")


def _check_timings(values: tuple[float, ...], per_hop: int = len(HOP_TIMINGS)) -> None:
    """Hop times: finite numbers >= 0, ``per_hop`` for each of at most MAX_ROUTE_HOPS hops."""
    if len(values) % per_hop or len(values) > per_hop * MAX_ROUTE_HOPS:
        raise _bad(f"hop times: {per_hop} per hop for at most {MAX_ROUTE_HOPS} hops")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e9:
            raise _bad("hop times must be numbers in [0, 1e9) ms")


def _check_qualities(values: tuple[float, ...]) -> None:
    """The qualities of the blocks so far (r14 ``lq``): at most MAX_WEIGHTED_BLOCKS numbers,
    each in [0, MAX_QUALITY]."""
    if len(values) > MAX_WEIGHTED_BLOCKS:
        raise _bad(f"lq: at most {MAX_WEIGHTED_BLOCKS} blocks")
    for v in values:
        check_quality("an lq value", v)


def check_route(route: tuple[Hop, ...], hop: int) -> None:
    if not 1 <= len(route) <= MAX_ROUTE_HOPS:
        raise _bad(f"a route has 1..{MAX_ROUTE_HOPS} hops")
    for h in route:
        check_bytes("hop peer", h.peer, 32)
        check_addr("hop addr", h.addr)
        check_uint("first block", h.first_block, 0xFFFE)
        check_uint("last block", h.last_block, 0xFFFE)
        if h.last_block < h.first_block:
            raise _bad("a hop's last block precedes its first")
    check_uint("hop", hop, len(route) - 1)


def route_body(route: tuple[Hop, ...]) -> list[list[Any]]:
    return [[h.peer, h.addr, h.first_block, h.last_block] for h in route]


def route_from(body: Mapping[str, Any]) -> tuple[Hop, ...]:
    return tuple(Hop(*h) for h in pairs(get_field(body, "route"), "route", 4))


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Traverse(Message):
    """A span's noisy codes on their way through the chain (10 §10.3)."""

    TYPE: ClassVar[MessageType] = MessageType.TRAVERSE
    HAS_PAYLOAD: ClassVar[bool] = True
    traversal_id: int
    client: bytes
    reply_addr: str
    route: tuple[Hop, ...]
    hop: int
    config_hash: str
    steps_per_block: int
    prefix: bytes
    span: int
    seed: int
    temperature: float
    deadline_ms: int
    want_logits: bool
    z: InlineTensor
    #: r8: the earlier hops' times, three per hop (10 §10.3.1); () is left out of the body.
    timings: tuple[float, ...] = ()
    #: r11 (10 §10.8): the prefix rule, its noise seed, the generation session (0: none),
    #: the trajectory rows and the earlier hops' reused rows; defaults are left out.
    prefix_rule: int = PREFIX_NOISY
    prefix_seed: int = 0
    session: int = 0
    trajectory_rows: int = 1
    reused: tuple[int, ...] = ()
    #: r13 (10 §10.9): the output rule, and the running sum (r14 under cb = 2: the weighted
    #: mean) of the blocks' log-probabilities over the output rows so far (float16,
    #: COMBINED_ROW_BYTES a row); left out at 0 / empty.
    combine: int = COMBINE_LAST
    combined: bytes = b""
    #: r14: under cb = 2, the qualities of the blocks so far (one per block, in block order)
    qualities: tuple[float, ...] = ()
    payload: Buffer = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        check_uint("traversal_id", self.traversal_id)
        check_bytes("client", self.client, 32)
        if self.combine not in COMBINE_RULES or isinstance(self.combine, bool):
            raise _bad("cb must be 0 (last block), 1 (mean) or 2 (weighted mean of the blocks)")
        check_bytes("lp", self.combined)
        if self.combined and self.combine == COMBINE_LAST:
            raise _bad("lp belongs to the combined rules (cb = 1 or 2)")
        _check_qualities(self.qualities)
        if self.qualities and self.combine != COMBINE_WEIGHTED:
            raise _bad("lq belongs to the weighted rule (cb = 2)")
        if self.combine == COMBINE_WEIGHTED and bool(self.qualities) != bool(self.combined):
            raise _bad("lq and lp come together: both empty at block 0, both there after it")
        if len(self.combined) % COMBINED_ROW_BYTES or (
            len(self.combined) > MAX_COMBINED_ROWS * COMBINED_ROW_BYTES
        ):
            raise _bad(f"lp holds 1..{MAX_COMBINED_ROWS} rows of {COMBINED_ROW_BYTES} bytes")
        if self.combined and not all(
            -COMBINED_FLOOR <= v <= 0.0 for (v,) in struct.iter_unpack("<e", self.combined)
        ):  # NaN fails the comparison too
            raise _bad(f"lp values are log-probabilities: in [-{COMBINED_FLOOR:g}, 0]")
        _check_timings(self.timings)
        if self.prefix_rule not in (PREFIX_NOISY, PREFIX_KNOWN) or isinstance(
            self.prefix_rule, bool
        ):
            raise _bad("prefix rule must be 0 (noisy) or 1 (known)")
        check_uint("prefix seed", self.prefix_seed)
        check_uint("session", self.session)
        check_uint("trajectory rows", self.trajectory_rows, MAX_TRAJECTORY_ROWS)
        if self.trajectory_rows < 1:
            raise _bad("a traversal has at least one trajectory row")
        if self.prefix_rule == PREFIX_NOISY and (
            self.trajectory_rows != 1 or self.session or self.prefix_seed or self.reused
        ):
            raise _bad("ps, ses, nt and cr belong to the known-prefix rule (pr = 1)")
        _check_reused(self.reused)
        check_addr("reply_addr", self.reply_addr)
        check_route(self.route, self.hop)
        check_str("config_hash", self.config_hash)
        check_uint("steps_per_block", self.steps_per_block, 64)
        if self.steps_per_block < 1:
            raise _bad("steps_per_block must be at least 1")
        check_bytes("prefix", self.prefix)
        check_uint("span", self.span, 4096)
        check_uint("seed", self.seed)
        if (
            not isinstance(self.temperature, int | float)
            or not math.isfinite(self.temperature)
            or self.temperature < 0
        ):
            raise _bad("temperature must be a finite number >= 0")
        check_uint("deadline_ms", self.deadline_ms)
        if not isinstance(self.want_logits, bool):
            raise _bad("logits flag must be a boolean")
        self.z.check()
        if self.z.dtype not in Z_DTYPES or len(self.z.shape) not in (1, 2):
            raise _bad("z must be float32, float16 or bfloat16 of shape [0] or [N, d]")

    def to_body(self) -> Body:
        return {
            "tid": self.traversal_id,
            "client": self.client,
            "reply": self.reply_addr,
            "route": route_body(self.route),
            "hop": self.hop,
            "cfg": self.config_hash,
            "m": self.steps_per_block,
            "x": self.prefix,
            "k": self.span,
            "seed": self.seed,
            "temp": float(self.temperature),
            "dl": self.deadline_ms,
            "lg": self.want_logits,
            "z": self.z.to_body(),
            **({"tm": [float(v) for v in self.timings]} if self.timings else {}),
            **self._prefix_body(),
            **({"cb": self.combine} if self.combine else {}),
            **({"lp": self.combined} if self.combined else {}),
            **({"lq": [float(q) for q in self.qualities]} if self.qualities else {}),
        }

    def _prefix_body(self) -> Body:
        if self.prefix_rule == PREFIX_NOISY:
            return {}
        body: Body = {"pr": self.prefix_rule, "ps": self.prefix_seed}
        if self.session:
            body["ses"] = self.session
        if self.trajectory_rows != 1:
            body["nt"] = self.trajectory_rows
        if self.reused:
            body["cr"] = list(self.reused)
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> Traverse:
        return cls(
            traversal_id=get_field(body, "tid"),
            client=get_field(body, "client"),
            reply_addr=get_field(body, "reply"),
            route=route_from(body),
            hop=get_field(body, "hop"),
            config_hash=get_field(body, "cfg"),
            steps_per_block=get_field(body, "m"),
            prefix=get_field(body, "x"),
            span=get_field(body, "k"),
            seed=get_field(body, "seed"),
            temperature=get_field(body, "temp"),
            deadline_ms=get_field(body, "dl"),
            want_logits=get_field(body, "lg"),
            z=InlineTensor.from_body(get_field(body, "z"), payload),
            timings=as_tuple(body.get("tm", []), "tm"),
            prefix_rule=body.get("pr", PREFIX_NOISY),
            prefix_seed=body.get("ps", 0),
            session=body.get("ses", 0),
            trajectory_rows=body.get("nt", 1),
            reused=as_tuple(body.get("cr", []), "cr"),
            combine=body.get("cb", COMBINE_LAST),
            combined=body.get("lp", b""),
            qualities=as_tuple(body.get("lq", []), "lq"),
            payload=payload,
        )


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class TraverseResult(Message):
    """The last hop's answer to the client: the span's bytes, per-hop times, logits if asked."""

    TYPE: ClassVar[MessageType] = MessageType.TRAVERSE_RESULT
    HAS_PAYLOAD: ClassVar[bool] = True
    traversal_id: int
    output: bytes
    hop_ms: tuple[float, ...]
    logits: InlineTensor | None = None
    #: r8: every hop's times, three per hop (10 §10.3.1); () is left out of the body.
    timings: tuple[float, ...] = ()
    #: r11: every hop's reused rows (10 §10.8); () is left out of the body.
    reused: tuple[int, ...] = ()
    #: r13: the output rule the last hop applied (10 §10.9); 0 is left out of the body.
    combine: int = COMBINE_LAST
    #: r14: under cb = 2, every block's quality as the weights used them; () is left out.
    qualities: tuple[float, ...] = ()
    payload: Buffer = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        check_uint("traversal_id", self.traversal_id)
        if self.combine not in COMBINE_RULES or isinstance(self.combine, bool):
            raise _bad("cb must be 0 (last block), 1 (mean) or 2 (weighted mean of the blocks)")
        _check_qualities(self.qualities)
        if self.qualities and self.combine != COMBINE_WEIGHTED:
            raise _bad("lq belongs to the weighted rule (cb = 2)")
        check_bytes("output", self.output)
        _check_timings(self.hop_ms, per_hop=1)
        _check_timings(self.timings)
        _check_reused(self.reused)
        if self.logits is not None:
            self.logits.check()

    def to_body(self) -> Body:
        body: Body = {
            "tid": self.traversal_id,
            "out": self.output,
            "hms": [float(v) for v in self.hop_ms],
        }
        if self.timings:
            body["tm"] = [float(v) for v in self.timings]
        if self.reused:
            body["cr"] = list(self.reused)
        if self.logits is not None:
            body["lg"] = self.logits.to_body()
        if self.combine:
            body["cb"] = self.combine
        if self.qualities:
            body["lq"] = [float(q) for q in self.qualities]
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any], payload: memoryview) -> TraverseResult:
        logits = InlineTensor.from_body(body["lg"], payload) if "lg" in body else None
        return cls(
            traversal_id=get_field(body, "tid"),
            output=get_field(body, "out"),
            hop_ms=as_tuple(body.get("hms", []), "hms"),
            logits=logits,
            timings=as_tuple(body.get("tm", []), "tm"),
            reused=as_tuple(body.get("cr", []), "cr"),
            combine=body.get("cb", COMBINE_LAST),
            qualities=as_tuple(body.get("lq", []), "lq"),
            payload=payload,
        )


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class TraverseError(Message):
    """A hop could not go on: which hop, which peer, why (an ``ErrorCode``)."""

    TYPE: ClassVar[MessageType] = MessageType.TRAVERSE_ERROR
    traversal_id: int = wire("tid")
    hop: int = wire("hop")
    peer: bytes = wire("peer")
    code: int = wire("code")
    reason: str = wire("msg", "")

    def __post_init__(self) -> None:
        check_uint("traversal_id", self.traversal_id)
        check_uint("hop", self.hop, MAX_ROUTE_HOPS)
        check_bytes("peer", self.peer, 32)
        check_uint("code", self.code, 0xFFFF)
        check_str("reason", self.reason)
