"""What the node's services may ask of the swarm: the :class:`SwarmView` interface.

Services (the replicas, the aggregators, the traversal server, the evaluator) see the swarm
only through this small interface, never through the node: who owns a block, which replicas
are live, who holds a version, connecting to peers, announcing what we hold, and waiting for
the view to change (an event, not a poll). ``node.gossip_glue.GossipGlue`` implements it over
the gossip service and the connections; the unit tests implement it with a few lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from spheroid_p2p.wire.signing import PeerId

if TYPE_CHECKING:
    from spheroid_p2p.core.gossip_params import LocalClaim
    from spheroid_p2p.wire.records import OwnershipRecord

__all__ = ["SwarmView", "live_replicas", "version_records"]


class SwarmView(Protocol):
    """The swarm as one node's services see it."""

    @property
    def me(self) -> PeerId: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def allow_peers(self) -> frozenset[PeerId] | None:
        """A private swarm's allow-list (09 §9.8); None: open."""
        ...

    def owners(self, block: int) -> list[OwnershipRecord]:
        """Live, non-departed records of ``block``."""
        ...

    async def connect(self, peers: list[PeerId]) -> list[PeerId]:
        """Connect to each peer (addresses from its records); the ones reached."""
        ...

    def announce(self, claim: LocalClaim) -> None:
        """Publish (or refresh) one of our records."""
        ...

    async def changed(self, timeout_s: float) -> None:
        """Return when the record table changes, or after ``timeout_s``."""
        ...


def live_replicas(swarm: SwarmView, block: int, config_hash: str) -> set[PeerId]:
    """Replicas of ``block`` with a live ``train`` record and our model config, us included,
    within the allow-list of a private swarm (09 §9.2, §9.8)."""
    out = {swarm.me}
    allowed = swarm.allow_peers
    for rec in swarm.owners(block):
        ours = rec.role == "train" and rec.config_hash in ("", config_hash)
        if ours and (allowed is None or rec.owner in allowed):
            out.add(rec.owner)
    return out


def version_records(swarm: SwarmView, block: int, config_hash: str) -> list[OwnershipRecord]:
    """Other peers' live records that name a version of ``block`` of this model config.

    Trainers' records name the version they hold; a server's record names a version only
    when it trained the block in rounds and serves the result (version >= 1: a server of a
    checkpoint file holds no version to fetch). A record without a config hash is accepted.
    """
    return [
        r
        for r in swarm.owners(block)
        if (r.role == "train" or r.version >= 1)
        and r.content_hash
        and r.owner != swarm.me
        and r.config_hash in ("", config_hash)
    ]


def holders(swarm: SwarmView, block: int, weights: bytes) -> list[PeerId]:
    """Peers whose record says they hold these weights."""
    return [
        r.owner for r in swarm.owners(block) if r.content_hash == weights and r.owner != swarm.me
    ]
