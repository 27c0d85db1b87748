"""``status``: ask a running node for its view of the swarm and print it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from spheroid_p2p.core.connection import ConnectionLost, FrameSigner
from spheroid_p2p.core.freshness import initial_seq
from spheroid_p2p.errors import TransportError
from spheroid_p2p.net.peers import PeerManager
from spheroid_p2p.params import MAX_TABLE_RECORDS
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.signing import KeyPair, PeerId
from spheroid_p2p.wire.status import RecordView, StatusRequest, StatusResponse

__all__ = ["every_page", "fetch_peer_status", "fetch_status", "format_status", "status_json"]

#: Pages a status fetch asks for at most (a full table in pages of at least 8 records).
MAX_STATUS_PAGES = MAX_TABLE_RECORDS // 8 + 1


async def every_page(ask: Callable[[int, int], Awaitable[StatusResponse]]) -> StatusResponse:
    """A peer's whole status: its records come in pages (07 §7.8), so ask again from where
    the last page ended (``ask(request_id, offset)`` sends one STATUS_REQUEST and returns its
    answer) until ``total`` is reached or a page is empty; the last answer, every record."""
    records: list[RecordView] = []
    for page in range(MAX_STATUS_PAGES):
        result = await ask(page + 1, len(records))
        records += result.records
        if not result.records or len(records) >= result.total:
            break
    return dataclasses.replace(result, records=tuple(records))


async def fetch_status(addr: str, timeout_s: float = 10.0) -> StatusResponse:
    """Connect to ``addr`` with a throw-away identity and return its StatusResponse."""
    return (await fetch_peer_status(addr, timeout_s))[1]


async def fetch_peer_status(addr: str, timeout_s: float = 10.0) -> tuple[PeerId, StatusResponse]:
    """The peer at ``addr`` (its id, proven by the handshake) and its StatusResponse."""
    key = KeyPair.generate()
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[StatusResponse] = loop.create_future()

    def on_message(peer: PeerId, envelope: Envelope) -> None:
        if isinstance(envelope.message, StatusResponse) and not answer.done():
            answer.set_result(envelope.message)

    def on_close(peer: PeerId, lost: ConnectionLost) -> None:
        if not answer.done():
            answer.set_exception(TransportError(f"{addr} {lost.describe()}"))

    manager = PeerManager(
        FrameSigner(key, initial_seq(time.time())),
        on_open=lambda p, caps: None,
        on_message=on_message,
        on_close=on_close,
        capabilities=(),
        agent="spheroid_p2p status",
    )
    result: StatusResponse | None = None
    error: Exception | None = None
    peer: PeerId | None = None
    try:
        peer = await manager.dial(addr)

        async def ask(request_id: int, offset: int) -> StatusResponse:
            nonlocal answer
            if request_id > 1:
                answer = loop.create_future()
            manager.send(peer, StatusRequest(request_id=request_id, offset=offset))
            return await answer

        async with asyncio.timeout(timeout_s):
            result = await every_page(ask)
    except TimeoutError:
        error = TransportError(f"{addr} did not answer the status request in {timeout_s} s")
    except TransportError as exc:
        error = exc
    finally:
        await manager.close(reason="status done", flush_s=0.5)
    if result is None or peer is None:
        raise error or TransportError(f"no status from {addr}")
    return peer, result


def _age(ms: int) -> str:
    return f"{ms / 1000:.1f}s"


def format_status(status: StatusResponse) -> str:
    """A human-readable table: blocks and their owners, then connections."""
    lines = [f"node: {status.agent}, up {_age(status.uptime_ms)}"]
    live = [r for r in status.records if not r.departed]
    blocks = sorted({r.block for r in live})
    lines.append(
        f"blocks: {len(blocks)}  records: {len(live)} live, "
        f"{len(status.records) - len(live)} departed"
    )
    lines.append(
        f"{'block':>5}  {'role':<5}  {'owner':<14} {'ver':>4}  {'hash':<10} "
        f"{'load':>5}  {'age':>6}  {'expires':>7}  address"
    )
    for r in sorted(status.records, key=lambda r: (r.block, r.role, r.owner)):
        owner = PeerId(r.owner).short() + ("  (gone)" if r.departed else "")
        lines.append(
            f"{r.block:>5}  {r.role:<5}  {owner:<14} {r.version:>4}  "
            f"{(r.content_hash.hex()[:8] or '-'):<10} {r.load:>5.2f}  {_age(r.age_ms):>6}  "
            f"{_age(r.expires_in_ms):>7}  {', '.join(r.addrs)}"
        )
    if any(r.role == "serve" and not r.content_hash for r in live):
        lines.append("(a serve record without a hash: announced with --announce-only, no weights)")
    if status.jobs:
        lines.append(f"training: {len(status.jobs)} block(s)")
        for j in status.jobs:
            eta = _age(int(j.eta_s * 1000)) if j.eta_s is not None else "-"
            lines.append(
                f"  block {j.block}: step {j.step}/{j.total}  loss {j.loss:.3f}  "
                f"{j.rate:.2f} steps/s  eta {eta}  version {j.version}"
            )
    lines.append(f"connections: {len(status.connections)}")
    for c in status.connections:
        lines.append(
            f"  {PeerId(c.peer).short():<14} {'out' if c.outbound else 'in ':<3} "
            f"{c.addr:<22} rtt {c.rtt_ms:6.2f} ms  idle {_age(c.idle_ms)}"
        )
    if status.dropped:
        lines.append("dropped records: " + ", ".join(f"{k} {v}" for k, v in status.dropped))
    return "\n".join(lines)


def status_json(status: StatusResponse) -> dict[str, object]:
    """The status as plain JSON types (``node status --json``); peer ids as text, hashes hex."""
    return {
        "agent": status.agent,
        "uptime_s": status.uptime_ms / 1000,
        "records": [
            {
                "owner": PeerId(r.owner).to_text(),
                "block": r.block,
                "role": r.role,
                "version": r.version,
                "hash": r.content_hash.hex(),
                "addrs": list(r.addrs),
                "load": r.load,
                "age_s": r.age_ms / 1000,
                "expires_in_s": r.expires_in_ms / 1000,
                "departed": r.departed,
                "n_blocks": r.n_blocks,
                "config_hash": r.config_hash,
                "context": r.context,
            }
            for r in status.records
        ],
        "connections": [
            {
                "peer": PeerId(c.peer).to_text(),
                "addr": c.addr,
                "outbound": c.outbound,
                "rtt_ms": c.rtt_ms,
                "idle_s": c.idle_ms / 1000,
            }
            for c in status.connections
        ],
        "training": [
            {
                "block": j.block,
                "step": j.step,
                "total": j.total,
                "loss": j.loss,
                "steps_per_s": j.rate,
                "eta_s": j.eta_s,
                "version": j.version,
            }
            for j in status.jobs
        ],
        "dropped": dict(status.dropped),
    }
