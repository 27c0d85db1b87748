"""This node's answer to ``STATUS_REQUEST`` (07 §7.8): its records and connections, paged."""

from __future__ import annotations

import time

from spheroid_p2p.core.gossip import GossipService
from spheroid_p2p.net.peers import PeerManager
from spheroid_p2p.params import MAX_STATUS_CONNECTIONS, MAX_STATUS_JOBS, MAX_STATUS_RECORDS
from spheroid_p2p.wire.status import ConnView, JobView, RecordView, StatusResponse

__all__ = ["STATUS_PAGE_BYTES", "status_response"]

#: Estimated bytes of records in one STATUS_RESPONSE page (well under MAX_SIGNED_BYTES).
STATUS_PAGE_BYTES = 40 * 1024


def status_response(
    gossip: GossipService,
    peers: PeerManager,
    *,
    agent: str,
    started_at: float,
    request_id: int = 0,
    offset: int = 0,
    page: bool = False,
    jobs: tuple[JobView, ...] = (),
) -> StatusResponse:
    """This node's view of the swarm, as the status command shows it. With ``page`` (a
    request from the wire), the records from ``offset`` that fit one response (at most
    ``MAX_STATUS_RECORDS`` and ``STATUS_PAGE_BYTES``); ``total`` says how many there are, and
    the client asks again from where the page ended."""
    now = time.monotonic()
    entries = gossip.table.entries()
    total = len(entries)
    if page:
        chosen, size = [], 0
        for e in entries[offset:]:
            size += 160 + len(e.record.config_hash) + sum(len(a) + 4 for a in e.record.addrs)
            if chosen and (len(chosen) >= MAX_STATUS_RECORDS or size > STATUS_PAGE_BYTES):
                break
            chosen.append(e)
        entries = chosen
    records = tuple(
        RecordView(
            owner=e.record.owner.digest,
            block=e.record.block,
            role=e.record.role,
            version=e.record.version,
            content_hash=e.record.content_hash,
            addrs=e.record.addrs,
            load=float(e.record.load),
            seq=e.record.seq,
            age_ms=int((now - e.received_at) * 1000),
            expires_in_ms=max(0, int((e.expires_at - now) * 1000)),
            departed=e.record.departed,
            n_blocks=e.record.n_blocks,
            config_hash=e.record.config_hash,
            context=e.record.context,
        )
        for e in entries
    )
    conns = tuple(
        ConnView(i.peer.digest, i.addr, i.outbound, i.rtt_ms, i.idle_ms)
        for i in peers.link_info()[:MAX_STATUS_CONNECTIONS]
    )
    return StatusResponse(
        request_id=request_id,
        agent=agent,
        uptime_ms=int((now - started_at) * 1000),
        records=records,
        connections=conns,
        dropped=tuple(sorted(gossip.table.dropped.items())),
        total=total,
        jobs=jobs[:MAX_STATUS_JOBS],
    )
