"""Publishing a round's version (09 §9.5 step 4): the publisher signs the version its updates
give, with the round's report and the next round's plan, stores it, pushes its manifest to
every live replica and installs it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from spheroid_p2p.core.plan import next_plan, version_report
from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.ml.combine import known_quality
from spheroid_p2p.node.building import Built
from spheroid_p2p.node.installer import Installer
from spheroid_p2p.node.roundlog import RoundLog
from spheroid_p2p.node.swarm import SwarmView
from spheroid_p2p.node.transfer import Transfers
from spheroid_p2p.node.updates import RoundState
from spheroid_p2p.wire.signing import KeyPair, PeerId

__all__ = ["Publisher"]

log = logging.getLogger(__name__)


class Publisher:
    """Signs, stores, pushes and installs the versions this replica publishes."""

    def __init__(
        self,
        swarm: SwarmView,
        transfers: Transfers,
        installer: Installer,
        key: KeyPair,
        params: RoundParams,
        roundlog: RoundLog,
        tag: str,
    ) -> None:
        self.swarm = swarm
        self.transfers = transfers
        self.installer = installer
        self.key = key
        self.params = params
        self.roundlog = roundlog
        self.block = installer.block
        self.tag = tag

    async def publish(self, state: RoundState, built: Built, missing: tuple[int, ...]) -> None:
        """Version ``state``'s round from ``built``; ``missing`` shards keep the base's values."""
        plan = state.exchange.plan
        chosen = state.choice()
        report = version_report(
            {s: (r.aggregator.digest, r.report) for s, r in chosen.items()}, missing
        )
        contributors = {PeerId(c[0]) for c in report.contributors} | {self.swarm.me}
        live = self.installer.live() & contributors
        next_ranks, next_shards = next_plan(
            self.block, plan.round + 1, live, self.params.max_shards
        )
        now = time.time()
        stored = await asyncio.to_thread(
            self.installer.store.put,
            self.key,
            built.tensors,
            block=self.block,
            version=plan.round,
            parent=state.base.weights,
            config_hash=self.installer.config_hash,
            created_ms=int(now * 1000),
            next_deadline_ms=int((now + self.params.period_s) * 1000),
            report=report,
            plan=next_ranks,
            shards=next_shards,
            # this replica's trainer's recent CE when the wire takes it (08 §8.2, r14)
            quality=known_quality(getattr(self.installer.module, "quality", None)),
            durable=False,
            staged=built.staged,
        )
        if self.installer.base is not state.base:
            return  # another publisher's version came first
        for peer in self.installer.live() - {self.swarm.me}:
            self.transfers.push_manifest(peer, stored.signed)
        entry = self.roundlog.version(stored.signed, missing)
        log.info(
            "[%s] version %d published: %d shards (%s missing), %d contributors, late %s",
            self.tag,
            plan.round,
            entry["shards"],
            list(missing) or "none",
            len(report.contributors),
            entry["late"],
        )
        await self.installer.install(
            stored.signed, built.tensors, state.base, flat=built.flat, norm=built.norm, loaded=True
        )
