"""One TCP connection: an ``asyncio.BufferedProtocol`` driving its ``PeerConnection`` machine.

The transport receives straight into the machine's frame buffer (a megabyte tensor chunk is
never copied on its way in); the link arms the machine's one timer, writes what the machine
puts out (one write per buffer: payloads are never joined), and reports events to its
:class:`~spheroid_p2p.net.peers.PeerManager`. An internal error closes this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from spheroid_p2p.core.connection import ConnectionLost, ConnectionState
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.net.sockets import DialError, wall_ms
from spheroid_p2p.params import TENSOR_CHUNK_BYTES
from spheroid_p2p.wire.control import Close
from spheroid_p2p.wire.framing import Buffer
from spheroid_p2p.wire.signing import PeerId

if TYPE_CHECKING:
    from spheroid_p2p.net.peers import PeerManager

__all__ = ["Link", "LinkInfo"]

log = logging.getLogger(__name__)

#: Bulk senders wait while the transport holds more than this unsent (about one chunk) ...
WRITE_HIGH_BYTES = 2 * TENSOR_CHUNK_BYTES
#: ... until it is back under this.
WRITE_LOW_BYTES = TENSOR_CHUNK_BYTES
#: After a peer was throttled (it exceeded a rate limit), its connection is read this many
#: bytes at a time for THROTTLED_READ_S: each resume then decodes a few of its frames, not a
#: socket buffer full of them in one go (which would stall everyone else).
THROTTLED_READ_BYTES = 4096
THROTTLED_READ_S = 5.0


@dataclass(frozen=True)
class LinkInfo:
    """What the status command shows about a connection."""

    peer: PeerId
    addr: str
    outbound: bool
    rtt_ms: float
    idle_ms: int


class Link(asyncio.BufferedProtocol):
    """One TCP connection: its state machine, transport and timer."""

    def __init__(self, manager: PeerManager, expected: PeerId | None, outbound: bool) -> None:
        self.manager = manager
        self.conn = manager.new_machine(expected)
        self.outbound = outbound
        self.addr = "?"
        self.host = "?"  # the source address of an inbound connection
        self.throttled = False
        #: reads stopped while what it sent waits to be processed (PeerManager.hold)
        self.held = False
        self.small_reads_until = 0.0
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[PeerId] = loop.create_future()
        self.closed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost: ConnectionLost | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._refused = False

    # -- asyncio.BufferedProtocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if not self.outbound:
            self.addr = f"{peer[0]}:{peer[1]}" if peer else "?"
            self.host = str(peer[0]) if peer else "?"
        transport.set_write_buffer_limits(high=WRITE_HIGH_BYTES, low=WRITE_LOW_BYTES)
        manager = self.manager
        why = None if self.outbound else manager.admit(self.host)
        if why is not None:
            manager.refused += 1
            log.log(
                logging.WARNING if manager.refused % 100 == 1 else logging.DEBUG,
                "refusing connection from %s: %s (%d refused so far)",
                self.addr,
                why,
                manager.refused,
            )
            self._refused = True
            frames = manager.signer.encode(
                Close(code=int(ErrorCode.OVERLOADED), reason=why), wall_ms()
            )
            self._write(frames)
            transport.close()
            return
        manager.links.add(self)
        self.conn.start(wall_ms())
        self.flush_machine()
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self.conn.get_buffer()
        if self.small_reads_until and time.monotonic() < self.small_reads_until:
            return buf[:THROTTLED_READ_BYTES]  # a peer that flooded us: small bites
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        self._handle(self.conn.buffer_updated(nbytes, time.monotonic(), wall_ms()))

    def eof_received(self) -> bool:
        self._handle(self.conn.eof(time.monotonic(), wall_ms()))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if exc is not None:
            lost = ConnectionLost(int(ErrorCode.NO_ERROR), f"socket error: {exc}", True)
        else:
            lost = ConnectionLost(int(ErrorCode.NO_ERROR), "peer closed the TCP connection", True)
        self.manager.link_lost(self, lost)
        if self._timer is not None:
            self._timer.cancel()
        self.manager.links.discard(self)
        self.writable.set()  # wake bulk senders: they see the link is gone
        if not self.opened.done():
            lost = self.lost or lost
            verb = "rejected" if lost.code else "closed"
            self.opened.set_exception(
                DialError(
                    f"dial {self.addr} failed: handshake {verb}: {lost.describe()}",
                    lost.code if lost.code else None,
                )
            )
            self.opened.exception()  # mark retrieved; the dialler re-raises it
        self.closed.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- helpers -------------------------------------------------------------------------------
    def _handle(self, events: list[object]) -> None:
        try:
            self.manager.link_events(self, events)
        except Exception:  # a bug: close this connection only, never the whole node
            log.exception(
                "[%s] internal error on the connection with %s", self.manager.me.short(), self.addr
            )
            self.conn.close(ErrorCode.INTERNAL_ERROR, "internal error", wall_ms())
            self.flush_machine()
            self.manager.link_lost(
                self, ConnectionLost(int(ErrorCode.INTERNAL_ERROR), "internal error", False)
            )
        if self.conn.state is ConnectionState.CLOSED:
            self.close_transport()
        else:
            self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep one timer at or before the machine's deadline (re-armed lazily when it fires
        early, so a busy connection does not reschedule it on every read)."""
        deadline = self.conn.get_timer()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        deadline = self.conn.get_timer()
        if deadline is None:
            return
        now = time.monotonic()
        if now < deadline:
            self._arm_timer()
            return
        self._handle(self.conn.handle_timer(now, wall_ms()))

    def _write(self, buffers: list[Buffer]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for buf in buffers:  # one write per buffer: the payload is never joined (copied)
            transport.write(buf)
        self.manager.frames_out += 1
        self.manager.bytes_out += sum(len(b) for b in buffers)

    def flush_machine(self) -> None:
        out = self.conn.take_outgoing()
        if out:
            self._write(out)

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close_transport(self) -> None:
        """Close once what is queued (a Close frame included) is written."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
