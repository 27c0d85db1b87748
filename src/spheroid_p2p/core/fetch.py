"""Fetching one block version from several holders at once (spec: 08-checkpoints.md §8.5).

Sans-I/O: the glue tells the :class:`Fetcher` which holders exist, which chunks arrived (bytes
here, hash not yet checked), which were verified against their hash or failed it, which
holders failed, and the time; the fetcher answers with :class:`RequestChunks` actions. It
keeps up to ``window`` chunks in flight per holder (a chunk leaves the window when its bytes
arrive, so hashing and writing overlap the next requests) and at most ``max_unverified``
arrived chunks waiting for their check, hands each missing chunk to the least-loaded holder,
re-requests a chunk from another holder when its holder fails, times out or sends a chunk
whose hash is not the manifest's (that holder is then banned and reported), and near the end
asks a second holder for chunks still in flight (so one slow holder cannot hold up the
finish). Requests carry ``batch`` chunks (fewer only for the last ones): a holder's window is
refilled a batch at a time, not one chunk per arrival, so a fast fetch asks few times. A
holder that answers ``OVERLOADED`` (its rate limit) keeps its place: its chunks are asked of
others and it is asked again after a pause.

Chunks already present (verified on disk from an interrupted fetch) are passed in ``have``
and never requested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from spheroid_p2p.wire.manifests import ChunkSpan
from spheroid_p2p.wire.signing import PeerId

__all__ = ["FetchParams", "Fetcher", "RequestChunks"]


@dataclass(frozen=True)
class FetchParams:
    #: Chunks in flight per holder (1 MiB each): enough to fill a long fat pipe.
    window: int = 16
    #: Chunks arrived but not yet hashed and written; no new requests past this (it bounds
    #: the receiver's memory when checking is slower than the network).
    max_unverified: int = 16
    #: Chunks per CHUNK_GET.
    batch: int = 8
    #: A holder that answered OVERLOADED is asked nothing for this long.
    overload_pause_s: float = 0.25
    #: A chunk not delivered this long after it was asked for is asked of someone else.
    chunk_timeout_s: float = 20.0


@dataclass(frozen=True)
class RequestChunks:
    """Send ``CHUNK_GET`` for ``indices`` to ``holder``."""

    holder: PeerId
    indices: tuple[int, ...]


@dataclass
class _Holder:
    peer: PeerId
    inflight: dict[int, float] = field(default_factory=dict)  # chunk -> asked at
    received: int = 0
    banned: str | None = None
    paused_until: float = 0.0  # it answered OVERLOADED


class Fetcher:
    """State of one fetch: which chunk is where."""

    def __init__(
        self,
        spans: list[ChunkSpan],
        have: Iterable[int] = (),
        params: FetchParams | None = None,
    ) -> None:
        self.spans = spans
        self.params = params or FetchParams()
        self.have: set[int] = set(have)
        self.missing: list[int] = [s.index for s in spans if s.index not in self.have]
        self.holders: dict[PeerId, _Holder] = {}
        self.unverified: dict[int, PeerId] = {}  # arrived, hash being checked -> from whom
        self.reports: list[tuple[PeerId, str]] = []  # (bad holder, what it did)

    # -- inputs -----------------------------------------------------------------------------
    def add_holder(self, peer: PeerId) -> None:
        if peer not in self.holders:
            self.holders[peer] = _Holder(peer)

    @property
    def done(self) -> bool:
        return len(self.have) == len(self.spans)

    @property
    def usable(self) -> list[PeerId]:
        return [h.peer for h in self.holders.values() if h.banned is None]

    def holder_failed(self, peer: PeerId, reason: str, ban: bool = False) -> None:
        """``peer`` went away (or misbehaved): its chunks in flight go back to the queue."""
        holder = self.holders.get(peer)
        if holder is None:
            return
        self._requeue(holder.inflight)
        holder.inflight.clear()
        if ban and holder.banned is None:
            holder.banned = reason
            self.reports.append((peer, reason))
        elif not ban:
            # a holder that dropped can come back (add_holder after a reconnect)
            del self.holders[peer]

    def chunk_arrived(self, peer: PeerId, index: int) -> None:
        """The bytes of chunk ``index`` arrived from ``peer``; their hash is being checked.
        The chunk leaves ``peer``'s window now and waits for :meth:`chunk_received` (its hash
        matched) or :meth:`chunk_failed` (it did not)."""
        holder = self.holders.get(peer)
        if holder is not None:
            holder.inflight.pop(index, None)
        if index < len(self.spans) and index not in self.have:
            self.unverified[index] = peer

    def duplicate_arrived(self, peer: PeerId, index: int) -> None:
        """Chunk ``index`` arrived from ``peer`` while another holder's copy is still being
        checked (or is stored): it frees ``peer``'s window slot and is dropped. Should the
        other copy fail its check, the chunk is asked for again (:meth:`chunk_failed`)."""
        holder = self.holders.get(peer)
        if holder is not None:
            holder.inflight.pop(index, None)

    def chunk_failed(self, index: int) -> None:
        """Chunk ``index`` did not match its hash (or could not be written): ask again. The
        holder that sent it is reported through :meth:`holder_failed`."""
        self.unverified.pop(index, None)
        self._requeue({index: 0.0})

    def chunk_received(self, peer: PeerId, index: int, digest: bytes) -> bool:
        """A chunk arrived from ``peer`` (its bytes already match ``digest``). Returns True if
        the caller should store it; False for a duplicate or a chunk we did not want. A digest
        that is not the manifest's bans the holder."""
        holder = self.holders.get(peer)
        if index >= len(self.spans):
            if holder is not None:
                self.holder_failed(peer, f"sent chunk {index} of a version with fewer", ban=True)
            return False
        if digest != self.spans[index].digest:
            self.holder_failed(peer, f"served chunk {index} with the wrong hash", ban=True)
            return False
        self.unverified.pop(index, None)
        if holder is not None:
            holder.inflight.pop(index, None)
            holder.received += 1
        for other in self.holders.values():  # an endgame duplicate elsewhere is now moot
            other.inflight.pop(index, None)
        if index in self.have:
            return False
        self.have.add(index)
        return True

    def chunk_refused(self, peer: PeerId, reason: str) -> None:
        """The holder answered TRANSFER_ERROR: it does not have the version (any more)."""
        self.holder_failed(peer, reason)

    def holder_overloaded(self, peer: PeerId, now: float) -> None:
        """The holder answered OVERLOADED (past its rate limit): its chunks in flight go back
        to the queue and it is asked again ``overload_pause_s`` later."""
        holder = self.holders.get(peer)
        if holder is None:
            return
        self._requeue(holder.inflight)
        holder.inflight.clear()
        holder.paused_until = now + self.params.overload_pause_s

    # -- outputs ----------------------------------------------------------------------------
    def poll(self, now: float) -> list[RequestChunks]:
        """Requests to send now (call after every input and on a timer)."""
        p = self.params
        for holder in self.holders.values():
            expired = [i for i, t in holder.inflight.items() if now - t > p.chunk_timeout_s]
            if expired:
                self._requeue(dict.fromkeys(expired, 0.0))
                for i in expired:
                    del holder.inflight[i]
        self.missing = [i for i in self.missing if i not in self.have]
        inflight_any = {i for h in self.holders.values() for i in h.inflight}
        queue = [i for i in self.missing if i not in inflight_any and i not in self.unverified]
        actions: list[RequestChunks] = []
        usable = [h for h in self.holders.values() if h.banned is None and h.paused_until <= now]
        while usable and len(self.unverified) < p.max_unverified:
            usable.sort(key=lambda h: (len(h.inflight), -h.received, h.peer.digest))
            holder = usable[0]
            room = p.window - len(holder.inflight)
            if room <= 0 or (room < min(p.batch, len(queue)) and holder.inflight):
                break  # refilled a whole batch at a time
            take = min(room, p.batch)
            picked = queue[:take]
            del queue[:take]
            if not picked:
                # Endgame: ask this idle holder for chunks still in flight elsewhere.
                picked = [
                    i
                    for i in sorted(inflight_any)
                    if i not in holder.inflight and i not in self.have and i not in self.unverified
                ][:take]
                if not picked or len(holder.inflight) > 0:
                    break
                inflight_any -= set(picked)
            for i in picked:
                holder.inflight[i] = now
            actions.append(RequestChunks(holder.peer, tuple(picked)))
        return actions

    def next_deadline(self) -> float | None:
        times = [
            t + self.params.chunk_timeout_s
            for h in self.holders.values()
            for t in h.inflight.values()
        ]
        times += [h.paused_until for h in self.holders.values() if h.paused_until]
        return min(times) if times else None

    def _requeue(self, chunks: dict[int, float]) -> None:
        for i in chunks:
            if i not in self.have and i not in self.missing:
                self.missing.append(i)
        self.missing.sort()
