"""A trainer's replica of its block: local training between sharded averaging rounds (09).

One :class:`BlockReplica` per trained block. It joins the block's current version
(``node.installer``), then, round after round:

1. **train** ``round_steps`` local steps, or as many as fit before the round's deadline, with
   its own optimizer state (kept across rounds);
2. **send** each shard of its delta Δ = θ_local − θ_base to that shard's aggregator (its own
   shard it offers to itself, ``node.aggregator``), encoded once per round with error feedback;
   a shard whose update does not come in time goes to the shard's next rank — the sans-I/O
   :class:`~spheroid_p2p.core.plan.Exchange` says where and when;
3. **collect** every shard's averaged update (``SHARD_UPDATE``, judged as it arrives, 09 §9.8),
   build the new weights θ_base + update in float32, and install them when the round's
   publisher's manifest names them — or, as the publisher, sign and push that manifest.

The replica waits on events only: an update arriving, a version installed, or the exchange's
next deadline. A shard delta refused as late (``ROUND_CLOSED``) is not lost: half of it is
added after the next install (the staleness rule, 09 §9.6).
"""

from __future__ import annotations

import asyncio
import contextlib
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
    next_plan,
    shard_bounds,
    version_report,
)
from spheroid_p2p.core.rounds import RoundParams
from spheroid_p2p.errors import ErrorCode, code_name
from spheroid_p2p.ml.averaging import ENCODING_DTYPES, SliceEncoder, check_values, tensors_norm
from spheroid_p2p.ml.checkpoint import save_block
from spheroid_p2p.node.aggregator import Aggregators, ShardResult
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.installer import Base, Installer
from spheroid_p2p.node.roundlog import RoundLog
from spheroid_p2p.node.shards import to_payload
from spheroid_p2p.node.swarm import SwarmView
from spheroid_p2p.node.tensor_bridge import flat_bytes
from spheroid_p2p.node.transfer import FetchError, Payload, Transfers
from spheroid_p2p.node.updates import Built, RoundState, UpdateIntake
from spheroid_p2p.wire.deltas import ShardDelta
from spheroid_p2p.wire.manifests import ENCODINGS, SignedManifest
from spheroid_p2p.wire.signing import KeyPair, PeerId

__all__ = ["BlockReplica", "LocalTraining", "RoundSettings"]

log = logging.getLogger(__name__)

_ENCODING_CODES = {name: code for code, name in ENCODINGS.items()}
#: Elements of a shard encoded per step: its first chunks go out while the rest is encoded.
ENCODE_BLOCK_ELEMS = 1 << 20
#: A delta its aggregator answered NOT_READY (it is installing the base, or joining) is sent
#: again after this many seconds, doubling each time up to NOT_READY_MAX_S (09 §9.5).
NOT_READY_RETRY_S = 0.05
NOT_READY_MAX_S = 1.0


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
        self.encoder = SliceEncoder(settings.encoding)
        #: tensors reused round after round (a round's shards have the same sizes each time)
        self.pool = TensorPool()
        installer.pool = self.pool
        self.roundlog = RoundLog(
            data_dir / f"block-{self.block}.rounds.jsonl", self.block, swarm.me
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
                self.spawn(self._send(state, action), what)

    # -- our delta's shards out -----------------------------------------------------------------
    def _payload(self, state: RoundState, shard: int) -> Payload:
        """Shard ``shard`` of our delta, encoded once per round (a hand-over resends the same
        bytes; encoding again would count the error feedback twice). The encoding runs on a
        worker thread block by block, and each block's bytes can go out as soon as it is done
        (int8, whose scales come last, is encoded whole first)."""
        payload = state.payloads.get(shard)
        if payload is not None:
            return payload
        a, b = state.bounds[shard], state.bounds[shard + 1]
        encoding = self.settings.encoding
        numel = state.delta.numel()
        elem = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}[encoding]
        if encoding == "int8":
            encoded = self.encoder.encode(state.delta[a:b], a, numel)
            payload = Payload.of(to_payload(encoded), elem)
            state.payloads[shard] = payload
            return payload
        out = self.pool.take(b - a, ENCODING_DTYPES[encoding])
        state.encoded.append(out)
        payload = Payload.of(flat_bytes(out), elem, ready=0)
        state.payloads[shard] = payload
        loop = asyncio.get_running_loop()

        def encode() -> None:
            try:
                for lo in range(0, b - a, ENCODE_BLOCK_ELEMS):
                    hi = min(b - a, lo + ENCODE_BLOCK_ELEMS)
                    self.encoder.encode(state.delta[a + lo : a + hi], a + lo, numel, out[lo:hi])
                    loop.call_soon_threadsafe(payload.advance, hi * elem)
            except BaseException as exc:
                loop.call_soon_threadsafe(payload.fail, exc)
                raise

        async def encoding() -> None:
            state.sending += 1  # the pooled tensor is in use until the encoder is done
            try:
                await asyncio.to_thread(encode)
            finally:
                state.sending -= 1
                self._free(state)

        self.spawn(encoding(), f"{self.tag} encode shard {shard}")
        return payload

    async def _send(self, state: RoundState, action: SendShard) -> None:
        state.sending += 1
        try:
            payload = self._payload(state, action.shard)
            await self._send_payload(state, action, payload)
        finally:
            state.sending -= 1
            self._free(state)

    async def _send_payload(self, state: RoundState, action: SendShard, payload: Payload) -> None:
        plan = state.exchange.plan
        base = state.base
        give_up = plan.handover_at(action.rank)
        retry = NOT_READY_RETRY_S
        while not self.swarm.stopping and self.installer.base is base:
            header = ShardDelta(
                stream_id=self.transfers.streams.new_id(),
                block=self.block,
                round=plan.round,
                base=base.weights,
                base_version=base.version,
                shard=action.shard,
                shards=plan.shards,
                steps=state.steps,
                loss=0.0,
                encoding=_ENCODING_CODES[self.settings.encoding],
            )
            if not await self.swarm.connect([action.to]):
                log.warning("[%s] shard %d: %s unreachable", self.tag, action.shard, action.to)
                return
            try:
                ack = await self.transfers.streams.send_delta(
                    action.to, header, payload, max(5.0, give_up - time.time())
                )
            except FetchError as exc:
                log.warning("[%s] shard %d to %s: %s", self.tag, action.shard, action.to, exc)
                return
            if ack.code == ErrorCode.NOT_READY and time.time() + retry < give_up:
                await asyncio.sleep(retry)  # it is installing or joining: again (09 §9.5)
                retry = min(NOT_READY_MAX_S, 2 * retry)
                continue
            if ack.code == ErrorCode.ROUND_CLOSED:
                a, b = state.bounds[action.shard], state.bounds[action.shard + 1]
                state.late[action.shard] = state.delta[a:b].clone()
            if ack.code != 0:
                log.warning(
                    "[%s] round %d shard %d: %s refused our delta: %s: %s",
                    self.tag,
                    plan.round,
                    action.shard,
                    action.to.short(),
                    code_name(ack.code),
                    ack.reason,
                )
            return

    def _deliver(self, result: ShardResult) -> None:
        """A judged update of a shard (from the wire, or from our own aggregator)."""
        state = self.round
        if state is not None and state.exchange.plan.round == result.round:
            state.deliver(result)

    async def _build(self, state: RoundState) -> None:
        """θ_r from the base and the chosen updates (float32), made ready to install before
        the publisher's manifest comes: its blob staged in the store, its norm taken, the
        module loaded with it (the next training waits for the install anyway)."""
        store, module = self.installer.store, self.training.module

        def build() -> Built:
            built = state.build(self.installer.layout, self.pool)
            built.staged = store.stage(built.tensors, built.entries)
            built.norm = tensors_norm(built.flat)
            with torch.no_grad():
                module.load_state_dict(built.tensors)
            return built

        try:
            built = await asyncio.to_thread(build)
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
        plan = state.exchange.plan
        chosen = state.choice()
        report = version_report(
            {s: (r.aggregator.digest, r.report) for s, r in chosen.items()}, action.missing
        )
        contributors = {PeerId(c[0]) for c in report.contributors} | {self.swarm.me}
        live = self.installer.live() & contributors
        next_ranks, next_shards = next_plan(
            self.block, plan.round + 1, live, self.settings.params.max_shards
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
            next_deadline_ms=int((now + self.settings.params.period_s) * 1000),
            report=report,
            plan=next_ranks,
            shards=next_shards,
            durable=False,
            staged=built.staged,
        )
        if self.installer.base is not state.base:
            return  # another publisher's version came first
        for peer in self.installer.live() - {self.swarm.me}:
            self.transfers.push_manifest(peer, stored.signed)
        entry = self.roundlog.version(stored.signed, action.missing)
        log.info(
            "[%s] version %d published: %d shards (%s missing), %d contributors, late %s",
            self.tag,
            plan.round,
            entry["shards"],
            list(action.missing) or "none",
            len(report.contributors),
            entry["late"],
        )
        await self.installer.install(
            stored.signed, built.tensors, state.base, flat=built.flat, norm=built.norm, loaded=True
        )

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
