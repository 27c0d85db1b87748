"""What the transfer services share: their errors, results, and the link they send through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from spheroid_p2p.errors import ErrorCode, SpheroidError
from spheroid_p2p.wire.dtypes import DTYPES
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import PeerId

if TYPE_CHECKING:
    from spheroid_p2p.node.store import StoredSet

__all__ = ["BulkLink", "FetchError", "FetchResult", "VersionRejected", "elem_size"]


class FetchError(SpheroidError):
    """A fetch could not complete; the message says which chunks and why."""


class VersionRejected(FetchError):  # noqa: N818 (a FetchError: what was fetched is refused)
    """The fetched set arrived whole but its content failed the caller's check; nothing of
    it was installed or kept."""


class BulkLink(Protocol):
    """What the transfer services need of the connections (``net.peers.PeerManager``; the
    unit tests pass a fake)."""

    def send(self, peer: PeerId, message: Message) -> bool: ...

    async def send_bulk(self, peer: PeerId, message: Message) -> bool: ...

    def close_peer(self, peer: PeerId, code: ErrorCode, reason: str) -> None: ...

    def hold(self, peer: PeerId, held: bool) -> None: ...


@dataclass
class FetchResult:
    stored: StoredSet
    seconds: float
    bytes_fetched: int
    per_holder: dict[str, int]
    resumed_chunks: int
    bad_holders: list[tuple[str, str]]


def elem_size(dtype_code: int) -> int:
    """The element size shuffle+zstd works on for a dtype (1 for anything unusual)."""
    size = DTYPES[dtype_code].itemsize
    return size if size in (2, 4, 8) else 1
