"""The blocks this node trains: one job each, alone or as a replica in averaging rounds (09).

:class:`TrainedBlocks` builds a :class:`~spheroid_p2p.node.trainer.TrainingJob` per trained
block, runs it alone (``round_steps`` 0) or as a :class:`~spheroid_p2p.node.replica.BlockReplica`,
and hands each finished block to the runtime for serving (``on_trained``). It routes the round
traffic for its blocks: shard delta and update headers, pushed versions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING

from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.swarm import SwarmView
from spheroid_p2p.node.transfer import Transfers
from spheroid_p2p.wire.deltas import ShardDelta, ShardUpdate
from spheroid_p2p.wire.manifests import SignedManifest
from spheroid_p2p.wire.signing import KeyPair, PeerId
from spheroid_p2p.wire.status import JobView

if TYPE_CHECKING:
    from spheroid_p2p.node.compute import BlockRuntime
    from spheroid_p2p.node.replica import BlockReplica
    from spheroid_p2p.node.store import VersionStore
    from spheroid_p2p.node.trainer import TrainingJob

__all__ = ["TrainedBlocks"]

log = logging.getLogger(__name__)


class TrainedBlocks:
    """Training (and averaging) of this node's blocks."""

    def __init__(
        self,
        config: NodeConfig,
        key: KeyPair,
        swarm: SwarmView,
        transfers: Transfers,
        store: VersionStore,
        runtime: BlockRuntime,
        *,
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        on_trained: Callable[[int, Path, int], None],
        tag: str,
    ) -> None:
        self.config = config
        self.key = key
        self.swarm = swarm
        self.transfers = transfers
        self.store = store
        self.runtime = runtime
        self.spawn = spawn
        self.on_trained = on_trained
        self.tag = tag
        self.replicas: dict[int, BlockReplica] = {}
        self.jobs: dict[int, TrainingJob] = {}
        self.stopping = False
        transfers.on_stream = self.on_stream
        transfers.on_manifest = self.on_manifest

    # -- round traffic --------------------------------------------------------------------------
    def on_stream(self, peer: PeerId, header: ShardDelta | ShardUpdate) -> None:
        replica = self.replicas.get(header.block)
        if replica is not None and replica.installer.base is not None:
            if isinstance(header, ShardDelta):
                replica.aggregators.admit(peer, header)
            else:
                replica.updates.admit(peer, header)
            return
        if isinstance(header, ShardDelta):
            if header.block in self.config.train_blocks:
                code, why = ErrorCode.NOT_READY, "this replica is still starting"
            else:
                code, why = ErrorCode.DELTA_REJECTED, f"block {header.block} is not trained here"
            self.transfers.streams.ack(peer, header, code, why)

    def on_manifest(self, peer: PeerId, signed: SignedManifest) -> None:
        replica = self.replicas.get(signed.manifest.block)
        if replica is not None:
            replica.installer.on_manifest(peer, signed)

    def stop(self) -> None:
        """The node is stopping: every job ends after its current step, checkpointed."""
        self.stopping = True
        for job in self.jobs.values():
            job.stop()

    def job_views(self) -> tuple[JobView, ...]:
        """Where each training job stands (STATUS_RESPONSE ``jobs``, the page, the metrics)."""
        views = []
        for block, job in sorted(self.jobs.items()):
            p = job.progress()
            replica = self.replicas.get(block)
            base = replica.installer.base if replica is not None else None
            views.append(
                JobView(
                    block,
                    p.step,
                    p.total,
                    max(0.0, p.loss),
                    p.rate,
                    p.eta_s,
                    base.version if base is not None else 0,
                )
            )
        return tuple(views)

    # -- training -------------------------------------------------------------------------------
    async def train(self, block: int) -> None:
        """Train ``block`` to the end of its budget, then serve it."""
        from spheroid_p2p.ml.config import TrainConfig
        from spheroid_p2p.ml.data import load_corpus
        from spheroid_p2p.ml.trajectory import trains_chained, w_in_rate
        from spheroid_p2p.node.trainer import TrainingJob

        cfg = self.config
        assert cfg.corpus is not None
        corpus = await asyncio.to_thread(load_corpus, cfg.corpus)
        tcfg = TrainConfig(
            batch_size=cfg.batch_size,
            steps=cfg.train_steps,
            warmup_steps=min(100, cfg.train_steps // 10),
            z_lr_scale=w_in_rate(cfg.model, block, cfg.chain_fraction),
        )
        seed = cfg.seed * 1009 + int.from_bytes(self.key.peer_id.digest[:4], "big")
        job = await asyncio.to_thread(
            TrainingJob, cfg.model, tcfg, block, corpus, cfg.data_dir, seed, self.tag
        )
        job.pool = self.runtime.pool
        job.gate = self.runtime.gate
        self.jobs[block] = job
        if self.stopping:
            job.stop()
        if trains_chained(cfg.model, block, cfg.chain_fraction):
            from spheroid_p2p.node.chain import ChainFeed

            feed = ChainFeed(
                self.swarm,
                self.transfers,
                cfg.model,
                job,
                cfg.chain_fraction,
                cfg.chain_refresh,
                self.tag,
            )
            self.spawn(feed.run(), f"chain inputs of block {block}")
        version = 0
        if cfg.round_steps > 0:
            replica = self._replica(job)
            self.replicas[block] = replica
            await replica.run(cfg.train_steps)
            base = replica.installer.base
            if self.swarm.stopping or base is None:
                return
            # Serve the swarm's version (the average), not our local weights, and name it in
            # the serve record, so a trainer that joins later starts from it.
            await asyncio.to_thread(job.trainer.block.load_state_dict, base.tensors)
            await asyncio.to_thread(replica.save_final, job.block_path)
            path, version = job.block_path, base.version
        else:
            path = await job.run(self.runtime.pool)
        if not self.swarm.stopping:
            self.on_trained(block, path, version)

    def _replica(self, job: TrainingJob) -> BlockReplica:
        from spheroid_p2p.node.installer import Installer
        from spheroid_p2p.node.replica import BlockReplica, RoundSettings

        cfg = self.config
        params = RoundParams(
            period_s=cfg.round_period_s,
            grace_s=cfg.round_grace_s,
            norm_ratio=cfg.norm_ratio,
            max_relative_norm=cfg.max_relative_norm,
            max_shards=cfg.round_shards,
        )
        settings = RoundSettings(
            round_steps=cfg.round_steps,
            encoding=cfg.delta_encoding,
            min_replicas=cfg.min_replicas,
            replica_wait_s=cfg.replica_wait_s,
            params=params,
        )
        tag = f"{self.tag} b{job.block}"
        installer = Installer(
            self.swarm,
            self.transfers,
            self.store,
            self.key,
            block=job.block,
            n_blocks=cfg.model.n_blocks,
            config_hash=job.cfg.config_hash(),
            module=job.trainer.block,
            params=params,
            data_dir=cfg.data_dir,
            spawn=self.spawn,
            tag=tag,
        )
        return BlockReplica(
            self.swarm,
            self.transfers,
            installer,
            self.key,
            job,
            settings,
            data_dir=cfg.data_dir,
            spawn=self.spawn,
            tag=tag,
        )
