"""Effects returned by the sans-I/O services, as data; the asyncio glue carries them out."""

from __future__ import annotations

from dataclasses import dataclass

from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import PeerId

__all__ = ["Action", "Dial", "Probe", "Send"]


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the connected peer ``peer`` (dropped if it is no longer connected)."""

    peer: PeerId
    message: Message


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a connection to ``peer`` at one of ``addrs`` (``host:port``)."""

    peer: PeerId
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Probe:
    """Check whether ``peer`` answers at ``addrs``; report back with ``probe_result``."""

    peer: PeerId
    addrs: tuple[str, ...]


Action = Send | Dial | Probe
