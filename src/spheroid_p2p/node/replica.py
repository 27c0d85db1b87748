"""A trainer's replica of its block: local training between sharded averaging rounds (09).

One :class:`BlockReplica` per trained block. It joins the block's current version
(``node.installer``), then, round after round:

1. **train** ``round_steps`` local steps, or as many as fit before the round's deadline, with
   its own optimizer state (kept across rounds);
2. **send** each shard of its delta Δ = θ_local − θ_base to that shard's aggregator (its own
   shard it offers to itself, ``node.aggregator``), encoded once per round with error feedback
   (``node.outgoing``); a shard whose update does not come in time goes to the shard's next
   rank — the sans-I/O :class:`~spheroid_p2p.core.plan.Exchange` says where and when;
3. **collect** every shard's averaged update (``SHARD_UPDATE``, judged as it arrives, 09 §9.8),
   building the new weights θ_base + update in float32 as the updates stream in
   (``node.building``), and install them when the round's publisher's manifest names them —
   or, as the publisher, sign and push that manifest (``node.publishing``).

The replica waits on events only: an update arriving, a version installed, or the exchange's
next deadline. A shard delta refused as late (``ROUND_CLOSED``) is not lost: half of it is
added after the next install (the staleness rule, 09 §9.6).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from spheroid_p2p.core.plan import (
    Exchange,
    Publish,
    SendShard,
    shard_bounds,
)
from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.ml.averaging import check_values
from spheroid_p2p.ml.checkpoint import save_block
from spheroid_p2p.node.aggregator import Aggregators, ShardResult
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.building import VersionBuilder
from spheroid_p2p.node.installer import Base, Installer
from spheroid_p2p.node.outgoing import DeltaSender
from spheroid_p2p.node.publishing import Publisher
from spheroid_p2p.node.roundlog import RoundLog
from spheroid_p2p.node.swarm import SwarmView
from spheroid_p2p.node.transfer import Transfers
from spheroid_p2p.node.updates import RoundState, UpdateIntake
from spheroid_p2p.wire.manifests import SignedManifest
from spheroid_p2p.wire.signing import KeyPair

__all__ = ["BlockReplica", "LocalTraining", "RoundSettings"]

log = logging.getLogger(__name__)


class LocalTraining(Protocol):
    """What a replica needs of the training it averages (``node.trainer.TrainingJob``)."""

    @property
    def module(self) -> torch.nn.Module: ...

    @property
    def steps_done(self) -> int: ...

    async def train_for(self, steps: int, stop_at_wall: float) -> tuple[int, float]: ...


@dataclass(frozen=True)
class RoundSettings:
    """How a replica takes part in averaging rounds."""

    round_steps: int = 50
    encoding: str = "bfloat16"
    params: RoundParams = field(default_factory=RoundParams)
    #: Seconds to wait for peers' records before deciding nobody holds the block.
    join_wait_s: float = 2.0
    #: Wait for this many live replicas of the block (us included) before the first step,
    #: at most ``replica_wait_s`` seconds, so that replicas started together train together.
    min_replicas: int = 1
    replica_wait_s: float = 120.0


class BlockReplica:
    """Training and averaging of one block on one node."""

    def __init__(
        self,
        swarm: SwarmView,
        transfers: Transfers,
        installer: Installer,
        key: KeyPair,
        training: LocalTraining,
        settings: RoundSettings,
        *,
        data_dir: Path,
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        tag: str,
    ) -> None:
        self.swarm = swarm
        self.transfers = transfers
        self.installer = installer
        self.key = key
        self.training = training
        self.settings = settings
        self.spawn = spawn
        self.block = installer.block
        self.tag = tag
        #: tensors reused round after round (a round's shards have the same sizes each time)
        self.pool = TensorPool()
        installer.pool = self.pool
        self.roundlog = RoundLog(
            data_dir / f"block-{self.block}.rounds.jsonl", self.block, swarm.me
        )
        self.publisher = Publisher(
            swarm, transfers, installer, key, settings.params, self.roundlog, tag
        )
        self.sender = DeltaSender(
            swarm,
            transfers,
            installer,
            settings.encoding,
            self.pool,
            spawn=spawn,
            free=self._free,
            tag=tag,
        )
        self.aggregators = Aggregators(
            swarm,
            installer,
            transfers.streams,
            encoding=settings.encoding,
            params=settings.params,
            deliver=self._deliver,
            spawn=spawn,
            tag=tag,
            roundlog=self.roundlog,
            pool=self.pool,
        )
        self.round: RoundState | None = None
        self._delta_buf: torch.Tensor | None = None
        self._builds = itertools.count()
        #: shard updates from the wire, judged as they arrive (09 §9.8, 3.)
        self.updates = UpdateIntake(
            installer,
            transfers.streams,
            settings.params,
            current=lambda: self.round,
            deliver=self._deliver,
            pool=self.pool,
            spawn=spawn,
            tag=tag,
        )

        #: own deltas discarded because they were not finite or too large
        self.rejected_own = 0
        self.rounds_done = 0
        installer.after_install = self._after_install
        installer.take_version = self.take_version

    # -- the round loop -------------------------------------------------------------------------
    async def run(self, budget_steps: int) -> None:
        """Train and average until this replica has done ``budget_steps`` local steps."""
        s = self.settings
        await self.installer.join(s.join_wait_s, s.min_replicas, s.replica_wait_s)
        while self.training.steps_done < budget_steps and not self.swarm.stopping:
            base = self.installer.base
            assert base is not None
            want = min(s.round_steps, budget_steps - self.training.steps_done)
            async with self.installer.lock:
                done, _ = await self.training.train_for(want, stop_at_wall=base.deadline - 1.0)
                if self.installer.base is not base:
                    continue  # a newer version arrived while we trained: rebase on it
                started = time.time()
                cpu = time.process_time()
                streams = self.transfers.streams
                sent, received = streams.bytes_out, streams.bytes_in
                delta = await asyncio.to_thread(self._delta, base)
                if delta is None:
                    continue
            marks = await self._exchange(base, delta, max(1, done), started)
            marks["cpu"] = round(time.process_time() - cpu, 4)  # this process, every thread
            installed = self.installer.base
            self.roundlog.exchange(
                base.version + 1,
                time.time() - started,
                installed.version if installed is not None else base.version,
                streams.bytes_out - sent,
                streams.bytes_in - received,
                marks,
            )
        log.info("[%s] step budget spent at version %d", self.tag, self.installer.base.version)

    def _delta(self, base: Base) -> torch.Tensor | None:
        """Δ = θ_local − θ_base over the flat vector, judged like anyone's (09 §9.8)."""
        layout = self.installer.layout
        if self._delta_buf is None:  # one buffer for every round's delta (read within a round)
            self._delta_buf = torch.empty(layout.numel, dtype=torch.float32)
        delta = layout.flatten(self.training.module.state_dict(), out=self._delta_buf)
        delta.sub_(base.flat)
        check = check_values(delta, base.norm, self.settings.params.max_relative_norm)
        if check.problem is None:
            return delta
        self.rejected_own += 1
        log.error(
            "[%s] round %d: own delta discarded (%s); back to version %d",
            self.tag,
            base.version + 1,
            check.problem,
            base.version,
        )
        self.training.module.load_state_dict(base.tensors)
        return None

    async def _exchange(
        self, base: Base, delta: torch.Tensor, steps: int, started: float
    ) -> dict[str, float]:
        """One round, from our delta to version ``base.version + 1`` installed (or given up);
        returns when each step of it was reached (seconds from ``started``)."""
        plan = self.installer.plan()
        bounds = shard_bounds(self.installer.layout.numel, plan.shards)
        exchange = Exchange(plan, self.swarm.me, len(bounds) - 1)
        state = RoundState(base, exchange, bounds, steps, delta, started=started)
        state.builder = VersionBuilder(
            base.flat,
            bounds,
            self.installer.layout,
            self.pool,
            self.installer.store.stage_path(
                f"build-{self.block}-{plan.round}-{next(self._builds)}"
            ),
        )
        state.mark("delta")
        self.round = state
        try:
            self._act(state, exchange.start(time.time()))
            while self.installer.base is base and not self.swarm.stopping:
                now = time.time()
                if exchange.complete and state.built is None:
                    self._start_build(state)
                for_version = None
                if state.manifest is not None and not state.installing:
                    for_version = self._take_version(state, now)
                for_exchange = exchange.next_deadline()
                if for_exchange is not None and for_exchange <= now:
                    self._act(state, exchange.handle_timer(now))
                    continue
                due = [d for d in (for_version, for_exchange) if d is not None]
                state.wake.clear()
                timeout = max(0.0, min(due) - now) if due else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await state.wake.wait()
            self.rounds_done += 1
            state.mark("installed")
        finally:
            self.round = None
            state.closed = True
            state.builder.close()
            self._free(state)
        return state.marks

    def _free(self, state: RoundState) -> None:
        """Give a finished round's tensors back to the pool: its updates, and its encoded
        shards once no send of them is under way."""
        if not state.closed or state.sending:
            return
        for have in state.results.values():
            for result in have.values():
                self.pool.give(result.update)
        state.results.clear()
        for tensor in state.encoded:
            self.pool.give(tensor)
        state.encoded.clear()

    def take_version(self, signed: SignedManifest) -> bool:
        """The installer hands us version ``base + 1`` from a publisher whose turn has begun:
        the round installs it from its own updates, or fetches it (09 §9.5 step 5)."""
        state = self.round
        if state is None or signed.manifest.version != state.exchange.plan.round:
            return False
        if state.manifest is None:
            state.manifest = signed
            state.manifest_at = time.time()
            state.mark("version")
            state.exchange.version_arrived()
            state.wake.set()
        return True

    def _take_version(self, state: RoundState, now: float) -> float | None:
        """Install the publisher's version once our result is known: ours when it matches,
        else fetched. Returns when to look again (None: under way)."""
        assert state.manifest is not None
        if state.built is not None and state.built.done():
            state.installing = True
            self.spawn(
                self._install_version(state), f"{self.tag} install r{state.exchange.plan.round}"
            )
            return None
        patience = state.manifest_at + self.settings.params.grace_s
        if now >= patience and state.built is None:  # the updates we lack: fetch it whole
            state.installing = True
            self.spawn(
                self._install_version(state), f"{self.tag} fetch r{state.exchange.plan.round}"
            )
            return None
        return patience

    def _start_build(self, state: RoundState) -> None:
        state.built = asyncio.get_running_loop().create_future()
        self.spawn(self._build(state), f"{self.tag} build r{state.exchange.plan.round}")

    async def _install_version(self, state: RoundState) -> None:
        signed = state.manifest
        assert signed is not None
        m = signed.manifest
        built = state.built.result() if state.built is not None and state.built.done() else None
        store = self.installer.store
        if built is not None and built.weights == m.result and built.staged is not None:
            await asyncio.to_thread(store.commit_staged, signed, built.staged)
            await self.installer.install(
                signed, built.tensors, state.base, flat=built.flat, norm=built.norm, loaded=True
            )
            return
        if built is not None and built.staged is not None:
            store.discard_partial(built.staged[0])
            self.pool.give(built.flat)
        log.info(
            "[%s] version %d from %s is not what our updates give; fetching it",
            self.tag,
            m.version,
            m.signer.short(),
        )
        await self.installer.adopt_fetched(signed, state.base)

    def _act(self, state: RoundState, actions: list[SendShard | Publish]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.spawn(self._publish(state, action), f"{self.tag} publish")
            elif action.to == self.swarm.me:
                a, b = state.bounds[action.shard], state.bounds[action.shard + 1]
                plan = state.exchange.plan
                code = self.aggregators.offer_own(
                    plan.round, action.shard, plan.shards, state.delta[a:b], state.steps
                )
                if code == ErrorCode.ROUND_CLOSED:
                    state.late[action.shard] = state.delta[a:b].clone()
            else:
                what = f"{self.tag} shard {action.shard} to {action.to.short()}"
                self.spawn(self.sender.send(state, action), what)

    def _deliver(self, result: ShardResult) -> None:
        """A judged update of a shard (from the wire, or from our own aggregator): kept, and
        its slice of the new version built at once."""
        state = self.round
        if state is None or state.exchange.plan.round != result.round:
            return
        kept = state.deliver(result)
        builder, shard = state.builder, result.shard
        if builder is None:
            return
        better = state.ranks_before(shard, result.aggregator, builder.applied.get(shard))
        if builder.delivered(shard, result.aggregator, kept, better):
            self.spawn(self._apply(state, result), f"{self.tag} build shard {shard}")

    async def _apply(self, state: RoundState, result: ShardResult) -> None:
        assert state.builder is not None
        state.sending += 1  # the pooled update is in use until it is applied
        try:
            await state.builder.take(result.shard, result.aggregator, result.update)
        finally:
            state.sending -= 1
            self._free(state)

    async def _build(self, state: RoundState) -> None:
        """θ_r from the base and the chosen updates, most of it done already shard by shard
        (``node.building``), ready to install before the publisher's manifest comes."""
        assert state.builder is not None
        choice = {s: (r.aggregator, r.update) for s, r in state.choice().items()}
        try:
            built = await state.builder.build(choice, self.training.module)
        except BaseException as exc:
            if state.built is not None and not state.built.done():
                state.built.set_exception(exc)
            raise
        if state.built is not None and not state.built.done():
            state.built.set_result(built)
        state.mark("built")
        state.wake.set()

    async def _publish(self, state: RoundState, action: Publish) -> None:
        """As the round's publisher: sign, store and push version r (09 §9.5 step 4)."""
        if state.built is None:
            self._start_build(state)
        assert state.built is not None
        built = await state.built
        if built is not None:  # (None: the round ended meanwhile)
            await self.publisher.publish(state, built, action.missing)

    def _after_install(self, base: Base) -> None:
        """Right after a new base is installed: half of each late shard delta (09 §9.6)."""
        state = self.round
        if state is None:
            return
        state.wake.set()
        if not state.late:
            return
        with torch.no_grad():
            params = self.training.module.state_dict()
            flat = self.installer.layout.flatten(params)
            for shard, values in state.late.items():
                a, b = state.bounds[shard], state.bounds[shard + 1]
                flat[a:b].add_(values, alpha=self.settings.params.late_weight)
            self.training.module.load_state_dict(self.installer.layout.unflatten(flat))
        state.late.clear()

    def save_final(self, path: Path) -> None:
        save_block(path, self.training.module)
