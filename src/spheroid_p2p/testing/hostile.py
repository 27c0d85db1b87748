"""A hostile peer for tests and ``scripts/bench_faults.py``: a real TCP peer that completes
the handshake honestly (or not at all) and then sends whatever frames it is told to.

It reuses the project's own sans-I/O :class:`PeerConnection` to read the node's frames and to
handshake, and builds crafted frames itself, signed with its real key and next sequence number,
so a frame reaches exactly the check it is aimed at (a bad address, a zstd bomb, an unsolicited
manifest) instead of failing an earlier one. Nothing here validates what it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from spheroid_p2p.core.connection import (
    ConnectionLost,
    FrameSigner,
    HandshakeDone,
    MessageReceived,
    PeerConnection,
)
from spheroid_p2p.core.freshness import initial_seq
from spheroid_p2p.net.sockets import parse_addr
from spheroid_p2p.wire import msgpack_profile
from spheroid_p2p.wire.codec import Envelope, frame_body_parts
from spheroid_p2p.wire.deltas import ShardDelta
from spheroid_p2p.wire.framing import Buffer
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import DOMAIN_ENVELOPE, DOMAIN_RECORD, KeyPair

__all__ = ["HostilePeer", "crafted_record", "foreign_shard_delta", "zstd_bomb"]


def _wall_ms() -> int:
    return int(time.time() * 1000)


def zstd_bomb(declared: int, actual: int) -> bytes:
    """A zstd frame that declares ``declared`` content bytes and whose RLE blocks expand to
    ``actual`` zero bytes: about 4 bytes per 128 KiB (a 256 MiB bomb is 8 KiB)."""
    header = bytes([0b1110_0000]) + struct.pack("<Q", declared)  # 8-byte size, single segment
    step = 128 * 1024
    blocks = []
    for start in range(0, actual, step):
        size = min(step, actual - start)
        last = 1 if start + step >= actual else 0
        blocks.append(struct.pack("<I", last | (1 << 1) | (size << 3))[:3] + b"\x00")
    return b"\x28\xb5\x2f\xfd" + header + b"".join(blocks)


def foreign_shard_delta(stream_id: int, round_: int, base: bytes) -> ShardDelta:
    """A well-formed SHARD_DELTA for shard 63 of 64 of block 0: a receiver whose plan has
    another shard count refuses it at its header, before allocating anything (09 §9.4; a
    shard stream declares no size, so no header can make a node allocate more than one shard
    of its own block)."""
    return ShardDelta(
        stream_id=stream_id,
        block=0,
        round=round_,
        base=base,
        base_version=round_ - 1,
        shard=63,
        shards=64,
        steps=1,
        loss=1.0,
        encoding=2,
    )


def crafted_record(key: KeyPair, fields: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """A record's signed bytes and signature from raw ``fields`` (no validation), by
    ``key``; fields left out get a valid default."""
    body = {
        "pk": key.public_key,
        "blk": 0,
        "role": "serve",
        "ver": 0,
        "h": b"",
        "addrs": ["127.0.0.1:9"],
        "load": 0.0,
        "seq": int(time.time() * 1000),
        "ttl": 60_000,
        "dep": False,
        "nb": 4,
        "cfg": "",
        **fields,
    }
    data = msgpack_profile.pack(body)
    return data, key.sign(DOMAIN_RECORD, data)


class HostilePeer:
    """One connection to a node under test, driven from a test or benchmark."""

    def __init__(
        self, key: KeyPair | None = None, capabilities: tuple[str, ...] = ("gossip/1",)
    ) -> None:
        self.key = key or KeyPair.generate()
        self.signer = FrameSigner(self.key, initial_seq(time.time()))
        self.capabilities = capabilities
        self.conn: PeerConnection | None = None
        self.messages: list[Envelope] = []
        self.lost: ConnectionLost | None = None
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.received = asyncio.Event()
        #: called with every message the node sends us (after the handshake)
        self.on_message: Callable[[Envelope], None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, addr: str, handshake: bool = True, timeout_s: float = 10.0) -> None:
        """Open TCP to ``addr``; with ``handshake``, complete it before returning."""
        host, port = parse_addr(addr)
        reader, self._writer = await asyncio.open_connection(host, port)
        self.conn = PeerConnection(
            self.signer,
            now=time.monotonic(),
            nonce=os.urandom(32),
            capabilities=self.capabilities,
            agent="hostile",
        )
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        if handshake:
            self.conn.start(_wall_ms())
            self._flush()
            async with asyncio.timeout(timeout_s):
                await self.opened.wait()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        assert self.conn is not None
        while True:
            try:
                data = await reader.read(1 << 16)
            except (ConnectionError, OSError):
                data = b""
            self.bytes_in += len(data)
            now = time.monotonic()
            events = self.conn.eof(now, _wall_ms()) if not data else []
            if data:
                events = self.conn.receive_data(data, now, _wall_ms())
            self._flush()
            for event in events:
                if isinstance(event, HandshakeDone):
                    self.opened.set()
                elif isinstance(event, MessageReceived):
                    if self.on_message is not None:
                        self.on_message(event.envelope)
                    else:
                        self.messages.append(event.envelope)
                    self.received.set()
                elif isinstance(event, ConnectionLost):
                    self.lost = event
                    self.closed.set()
            if not data or self.closed.is_set():
                self.closed.set()
                return

    def _flush(self) -> None:
        if self.conn is not None and self._writer is not None:
            for buf in self.conn.take_outgoing():
                self._writer.write(buf)

    def send(self, message: Message) -> None:
        """A well-formed message (after the handshake)."""
        assert self.conn is not None and self._writer is not None
        if self.closed.is_set():
            return
        for buf in self.conn.send(message, _wall_ms()):
            self.bytes_out += len(buf)
            self._writer.write(buf)

    def frame(self, type_code: int, body: Mapping[str, Any], payload: Buffer = b"") -> bytes:
        """A crafted frame: ``body`` as given, signed with our key and next sequence number."""
        signed = msgpack_profile.pack(
            {
                "v": 1,
                "t": type_code,
                "pk": self.key.public_key,
                "seq": self.signer.take_seq(),
                "ts": _wall_ms(),
                "body": dict(body),
            }
        )
        signature = self.key.sign(DOMAIN_ENVELOPE, signed)
        return b"".join(bytes(b) for b in frame_body_parts(signed, signature, payload))

    def send_crafted(self, type_code: int, body: Mapping[str, Any], payload: Buffer = b"") -> None:
        self.send_raw(self.frame(type_code, body, payload))

    def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        if self._writer.is_closing():
            return
        self.bytes_out += len(data)
        self._writer.write(data)

    async def wait_closed(self, timeout_s: float = 10.0) -> ConnectionLost | None:
        """Wait until the node closes the connection; its reason, or None on a bare EOF."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.closed.wait()
        except TimeoutError:
            return None
        return self.lost

    async def drain(self, timeout_s: float = 1.0) -> None:
        """Wait (bounded) until TCP takes what we wrote: a flood then goes as fast as the node
        reads, as a remote attacker's would, instead of piling up here."""
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(self._writer.drain(), timeout_s)

    async def close(self) -> None:
        """Drop the connection at once (what is still unsent is discarded)."""
        if self._writer is not None:
            self._writer.transport.abort()
        if self._reader_task is not None:
            self._reader_task.cancel()
