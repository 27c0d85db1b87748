"""Sockets and addresses: dial errors, ``host:port`` parsing, TCP congestion control, the
local address that reaches a peer. No protocol here."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from spheroid_p2p.errors import TransportError
from spheroid_p2p.wire.addr import BadAddressError
from spheroid_p2p.wire.addr import parse_addr as wire_parse_addr

__all__ = [
    "DialError",
    "available_congestion",
    "connected_socket",
    "parse_addr",
    "set_congestion",
    "source_address",
    "wall_ms",
]

log = logging.getLogger(__name__)


class DialError(TransportError):
    """A dial failed; the message names the address and the reason, and ``code`` the error
    code the peer refused the handshake with (None: no answer, or no handshake at all)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def parse_addr(addr: str, allow_any_port: bool = False) -> tuple[str, int]:
    """``host:port`` -> (host, port) by the grammar of 02 §2.4 (``wire.addr``); raises
    ``ValueError`` with the offending text. Port 0 ("any free port") is only valid where we
    listen (``allow_any_port``)."""
    try:
        parsed = wire_parse_addr(addr, allow_any_port)
    except BadAddressError as exc:
        raise ValueError(str(exc.args[0])) from None
    return parsed.host, parsed.port


def available_congestion() -> tuple[str, ...]:
    """The TCP congestion controls this host offers (empty where it cannot say)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            return tuple(f.read().split())
    except OSError:
        return ()


def set_congestion(sock: socket.socket | None, name: str) -> bool:
    """Set ``TCP_CONGESTION`` on ``sock``; False (and logged once) where the host refuses."""
    option = getattr(socket, "TCP_CONGESTION", None)
    if sock is None or option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, name.encode())
    except OSError as exc:
        if name not in _refused_congestion:
            _refused_congestion.add(name)
            log.warning("cannot set TCP congestion control %r: %s", name, exc.strerror or exc)
        return False
    return True


_refused_congestion: set[str] = set()


async def connected_socket(host: str, port: int, congestion: str) -> socket.socket:
    """A TCP socket connected to ``host:port`` with ``congestion`` set *before* it connects:
    set afterwards, a switch away from BBR keeps BBR's pacing (the kernel leaves the socket
    marked as needing it), and every burst is paced at a rate meant for BBR."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        set_congestion(sock, congestion)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def source_address(addr: str) -> str:
    """The local address this host would send from to reach ``addr`` (``host:port``): the
    interface a peer there can dial us back on. Found by connecting a UDP socket, which sends
    nothing; "127.0.0.1" where there is no route."""
    host, port = parse_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def wall_ms() -> int:
    return int(time.time() * 1000)
