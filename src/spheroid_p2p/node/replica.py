"""A trainer node's block replica: local training between averaging rounds (09-averaging.md).

One :class:`BlockReplica` per trained block. It joins the block's current version (fetched
from the peers that hold it, or version 0 built from the seed when nobody does), then loops:

1. **train** ``round_steps`` local steps, or as many as fit before the round's deadline minus
   the upload time, with its own AdamW state (kept across rounds);
2. **submit** Δ = θ_local − θ_base, encoded (bf16 by default, error feedback for lossy
   encodings), to the round's aggregator: the first live replica in rendezvous order, or
   itself; if no version appears within a grace period, to the next one in that order;
3. **install** the new version: fetch the aggregator's averaged *update* (small: the encoded
   mean delta), add it to the base, check the result against the manifest's weights hash
   (else fetch the full weights), and continue from it.

When this replica is a round's aggregator it judges incoming deltas (through the sans-I/O
:class:`~spheroid_p2p.core.rounds.Aggregation`), closes the round at its deadline or when
every live replica delivered, averages, publishes the signed manifest with the round report,
and pushes it to the other replicas. A delta refused as late (``ROUND_CLOSED``) is not lost:
its sender adds half of it to the new version and trains on (the staleness rule, 09 §9.5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spheroid_p2p.core.rounds import (
    Aggregation,
    DeltaOffer,
    Outcome,
    RoundParams,
    aggregator_order,
    preferred_manifest,
)
from spheroid_p2p.errors import ErrorCode, code_name
from spheroid_p2p.ml.averaging import (
    DeltaEncoder,
    apply_average,
    check_delta,
    decode_delta,
    delta_of,
    tensors_norm,
)
from spheroid_p2p.ml.checkpoint import atomic_write, save_block
from spheroid_p2p.node.admission import (
    SetCheck,
    delta_layout_problem,
    join_check,
    version_check,
)
from spheroid_p2p.node.store import StoredSet, raw_of, tensor_of
from spheroid_p2p.node.transfer import FetchError, ReceivedDelta, VersionRejected
from spheroid_p2p.wire.deltas import DeltaHeader
from spheroid_p2p.wire.manifests import (
    ENCODINGS,
    KIND_UPDATE,
    Manifest,
    RoundReport,
    SignedManifest,
)
from spheroid_p2p.wire.signing import PeerId

if TYPE_CHECKING:
    from spheroid_p2p.node.app import Node
    from spheroid_p2p.node.trainer import TrainingJob
    from spheroid_p2p.wire.records import OwnershipRecord

__all__ = ["BlockReplica", "RoundSettings", "version_records"]

log = logging.getLogger(__name__)

#: Tries to fetch the swarm's newest version on joining before starting from our own.
JOIN_ATTEMPTS = 5


def version_records(node: Node, block: int, config_hash: str) -> list[OwnershipRecord]:
    """Other peers' live records that name a version of ``block`` of this model config.

    Trainers' records name the version they hold; a server's record names a version only
    when it trained the block in rounds and serves the result (version >= 1: a server of a
    checkpoint file holds no version to fetch). A record without a config hash is accepted.
    """
    return [
        r
        for r in node.gossip.owners_of(block)
        if (r.role == "train" or r.version >= 1)
        and r.content_hash
        and r.owner != node.key.peer_id
        and r.config_hash in ("", config_hash)
    ]


_ENCODING_CODES = {name: code for code, name in ENCODINGS.items()}


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


@dataclass
class _Base:
    version: int
    weights: bytes  # weights hash
    signer: PeerId
    deadline: float  # wall-clock seconds of the next round's deadline
    tensors: dict[str, torch.Tensor]
    norm: float


class BlockReplica:
    """Training and averaging of one block on one node."""

    def __init__(self, node: Node, job: TrainingJob, settings: RoundSettings) -> None:
        self.node = node
        self.job = job
        self.block = job.block
        self.settings = settings
        self.tag = f"{node.tag} b{self.block}"
        self.config_hash = job.cfg.config_hash()
        self.encoder = DeltaEncoder(settings.encoding)
        self.update_encoder = DeltaEncoder(settings.encoding)
        self.base: _Base | None = None
        self.previous: _Base | None = None
        self.installed = asyncio.Event()
        self.aggregations: dict[int, Aggregation] = {}
        self._agg_tasks: dict[int, asyncio.Task[None]] = {}
        self._decoded: dict[tuple[int, PeerId], dict[str, torch.Tensor]] = {}
        #: (round, sender) -> (wire bytes, seconds) of each delta received, for the report
        self._delta_times: dict[tuple[int, PeerId], tuple[int, float]] = {}
        self._own: dict[int, dict[str, torch.Tensor]] = {}
        self._late: dict[str, torch.Tensor] | None = None
        self.reports: list[dict[str, object]] = []
        self.position_path = job.data_dir / f"block-{self.block}.round.json"
        self.reports_path = job.data_dir / f"block-{self.block}.rounds.jsonl"
        self.on_version: Callable[[int, bytes], None] | None = None
        #: Held while the compute thread trains (and while a step's delta is taken): a new
        #: version is installed only between steps, never under a running backward pass.
        self._install_lock = asyncio.Lock()
        #: Versions refused by the rule of 09 §9.8 (signer, finite, norm), for tests/status.
        self.rejected_versions = 0
        #: Own deltas discarded because they were not finite or too large.
        self.rejected_own = 0
        #: Weights hashes of versions being fetched to adopt: a push of one already being
        #: fetched starts nothing more.
        self._adopting: set[bytes] = set()

    # -- membership -----------------------------------------------------------------------------
    def live_replicas(self) -> set[PeerId]:
        """Replicas of this block with a live record and our model config (us included)."""
        out = {self.node.key.peer_id}
        allowed = self.node.config.allow_peers
        for rec in self.node.gossip.owners_of(self.block):
            ours = rec.role == "train" and rec.config_hash in ("", self.config_hash)
            if ours and (allowed is None or rec.owner in allowed):
                out.add(rec.owner)
        return out

    def holders(self, weights: bytes) -> list[PeerId]:
        """Peers whose record says they hold these weights (connected or dialable)."""
        me = self.node.key.peer_id
        return [
            rec.owner
            for rec in self.node.gossip.owners_of(self.block)
            if rec.content_hash == weights and rec.owner != me
        ]

    # -- joining ----------------------------------------------------------------------------------
    async def join(self) -> None:
        """Adopt the block's newest version in the swarm, or create version 0."""
        store = self.node.store
        position = self._read_position()
        await asyncio.sleep(self.settings.join_wait_s)  # let gossip bring the records in
        await self._wait_for_replicas()
        local = store.full(self.block)
        stored = None
        for attempt in range(JOIN_ATTEMPTS):
            newest = max(
                version_records(self.node, self.block, self.config_hash),
                key=lambda r: r.version,
                default=None,
            )
            if newest is None or (local is not None and newest.version <= local.manifest.version):
                break
            try:
                await self.node.connect_all([newest.owner])
                manifest = await self.node.transfers.get_manifest(
                    newest.owner, self.block, newest.content_hash
                )
                like = self.job.trainer.block.state_dict()
                stored = await self._fetch_full(manifest, [newest.owner], join_check(like))
                break
            except FetchError as exc:  # it moved on (pruned that version) or went away
                log.info(
                    "[%s] joining at v%d from %s failed (%s); attempt %d of %d",
                    self.tag,
                    newest.version,
                    newest.owner.short(),
                    exc,
                    attempt + 1,
                    JOIN_ATTEMPTS,
                )
                await asyncio.sleep(1.0)
        keep_local = False
        if stored is None and local is not None:
            stored = local
            keep_local = (
                position is not None and position.get("weights") == local.manifest.content.hex()
            )
        elif stored is None:  # version 0 is the seeded initialisation: the same everywhere
            stored = await asyncio.to_thread(self._make_version0)
        self._set_base(stored.signed, stored, keep_local=keep_local)
        log.info(
            "[%s] joined at version %d (%s) from %s",
            self.tag,
            stored.manifest.version,
            stored.manifest.content.hex()[:12],
            stored.manifest.signer.short(),
        )

    async def _wait_for_replicas(self) -> None:
        want = self.settings.min_replicas
        if len(self.live_replicas()) >= want:
            return
        log.info("[%s] waiting for %d replicas of block %d", self.tag, want, self.block)
        give_up = time.monotonic() + self.settings.replica_wait_s
        while not self.node.stopping and time.monotonic() < give_up:
            await asyncio.sleep(0.5)
            if len(self.live_replicas()) >= want:
                log.info("[%s] %d replicas live", self.tag, len(self.live_replicas()))
                return
        log.warning(
            "[%s] only %d of %d replicas live after %.0f s; training with them",
            self.tag,
            len(self.live_replicas()),
            want,
            self.settings.replica_wait_s,
        )

    def _make_version0(self) -> StoredSet:
        state = {k: v.detach().clone() for k, v in self.job.trainer.block.state_dict().items()}
        now = time.time()
        return self.node.store.put(
            self.node.key,
            state,
            block=self.block,
            version=0,
            parent=b"",
            config_hash=self.config_hash,
            created_ms=int(now * 1000),
            next_deadline_ms=int((now + self.settings.params.period_s) * 1000),
        )

    def _read_position(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.position_path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _set_base(
        self,
        signed: SignedManifest,
        stored: StoredSet,
        keep_local: bool = False,
        signer: PeerId | None = None,
    ) -> None:
        m = signed.manifest
        tensors = stored.tensors()
        deadline = m.next_deadline_ms / 1000
        self.previous = self.base
        self.base = _Base(
            m.version, m.result, signer or m.signer, deadline, tensors, tensors_norm(tensors)
        )
        if not keep_local:
            with torch.no_grad():
                self.job.trainer.block.load_state_dict(tensors)
                if self._late is not None:
                    # Our delta missed the round that made this version: add half of it.
                    for name, d in self._late.items():
                        self.job.trainer.block.state_dict()[name].add_(
                            d, alpha=self.settings.params.late_weight
                        )
                    self._late = None
        atomic_write(
            self.position_path,
            json.dumps({"version": m.version, "weights": self.base.weights.hex()}).encode(),
        )
        self.node.announce_version(self.block, m.version, self.base.weights)
        self.installed.set()
        if self.on_version is not None:
            self.on_version(m.version, self.base.weights)

    async def _fetch_full(
        self,
        signed: SignedManifest,
        holders: list[PeerId],
        check: SetCheck | None = None,
    ) -> StoredSet:
        m = signed.manifest
        more = [p for p in self.holders(m.content) if p not in holders]
        peers = await self.node.connect_all([*holders, *more])
        result = await self.node.transfers.fetch(signed, peers, check=check)
        log.info(
            "[%s] fetched version %d: %.1f MB in %.2f s from %s%s",
            self.tag,
            m.version,
            result.bytes_fetched / 1e6,
            result.seconds,
            result.per_holder,
            f"; bad holders {result.bad_holders}" if result.bad_holders else "",
        )
        return result.stored

    # -- the round loop -----------------------------------------------------------------------
    async def run(self, budget_steps: int) -> None:
        """Train and average until this replica has done ``budget_steps`` local steps."""
        await self.join()
        assert self.base is not None
        while self.job.trainer.step_count < budget_steps and not self.node.stopping:
            base = self.base
            r = base.version + 1
            margin = 1.0
            steps_left = budget_steps - self.job.trainer.step_count
            want = min(self.settings.round_steps, steps_left)
            stop_at = max(base.deadline - margin, time.time() + 0.0)
            async with self._install_lock:
                done, loss = await self.job.train_for(want, stop_at_wall=stop_at)
                if self.base is not base:
                    # A newer version arrived while we trained (we were late): rebase on it.
                    continue
                delta = await asyncio.to_thread(
                    delta_of, self.job.trainer.block.state_dict(), base.tensors
                )
                own = await asyncio.to_thread(
                    check_delta, delta, base.norm, self.settings.params.max_relative_norm
                )
                if own.problem is not None:
                    # Our own training diverged: it is judged like anyone's delta and never
                    # sent or signed; we go back to the base and train on from there.
                    self.rejected_own += 1
                    log.error(
                        "[%s] round %d: own delta discarded (%s); back to version %d",
                        self.tag,
                        r,
                        own.problem,
                        base.version,
                    )
                    await asyncio.to_thread(self.job.trainer.block.load_state_dict, base.tensors)
                    continue
            wire = await asyncio.to_thread(self.encoder.encode, delta)
            self._own[r] = delta
            await self._submit(r, base, wire, max(1, done), loss)
            self._own.pop(r, None)
        log.info("[%s] step budget spent at version %d", self.tag, self.base.version)

    async def _submit(
        self, r: int, base: _Base, wire: dict[str, torch.Tensor], steps: int, loss: float
    ) -> None:
        """Send our delta for round ``r`` and wait until version ``r`` is installed."""
        params = self.settings.params
        me = self.node.key.peer_id
        order = aggregator_order(self.block, r, self.live_replicas())
        self.installed.clear()
        for rank, agg in enumerate(order):
            if self.base is not None and self.base.version >= r:
                return
            if rank > 0:
                log.warning(
                    "[%s] round %d: no version from %s by its turn; handing over to %s",
                    self.tag,
                    r,
                    order[rank - 1].short(),
                    agg.short(),
                )
            if agg == me:
                self._offer_own(r, base, steps)
            else:
                code, reason = await self._send(agg, r, base, wire, steps, loss)
                while code == ErrorCode.NOT_READY and time.time() + 1.0 < base.deadline:
                    if self.node.stopping or (self.base is not None and self.base.version >= r):
                        return
                    await asyncio.sleep(1.0)  # it is still joining: send again (09 §9.5)
                    code, reason = await self._send(agg, r, base, wire, steps, loss)
                if code == ErrorCode.ROUND_CLOSED:
                    log.warning("[%s] round %d: delta late (%s)", self.tag, r, reason)
                    self._late = self._own.get(r)
                elif code not in (0, -1):
                    log.warning(
                        "[%s] round %d: %s refused our delta: %s: %s",
                        self.tag,
                        r,
                        agg.short(),
                        code_name(code),
                        reason,
                    )
            turn_ends = base.deadline + (rank + 1) * params.grace_s
            while self.base is None or self.base.version < r:
                left = turn_ends - time.time()
                if left <= 0 or self.node.stopping:
                    break
                self.installed.clear()
                try:
                    async with asyncio.timeout(min(left, 1.0)):
                        await self.installed.wait()
                except TimeoutError:
                    pass
            if self.base is not None and self.base.version >= r:
                return
            if self.node.stopping:
                return
        log.warning("[%s] round %d: no aggregator produced a version; training on", self.tag, r)

    async def _send(
        self,
        agg: PeerId,
        r: int,
        base: _Base,
        wire: dict[str, torch.Tensor],
        steps: int,
        loss: float,
    ) -> tuple[int, str]:
        peers = await self.node.connect_all([agg])
        if not peers:
            return -1, "unreachable"
        try:
            ack = await self.node.transfers.send_delta(
                agg,
                block=self.block,
                round_=r,
                base=base.weights,
                base_version=base.version,
                steps=steps,
                loss=float(loss) if loss == loss else 0.0,
                encoding=_ENCODING_CODES[self.settings.encoding],
                tensors={k: raw_of(v) for k, v in wire.items()},
                timeout_s=max(5.0, base.deadline + self.settings.params.grace_s - time.time()),
            )
        except (FetchError, TimeoutError) as exc:
            return -1, str(exc)
        return ack.code, ack.reason

    # -- aggregation ------------------------------------------------------------------------
    def _aggregation(self, r: int) -> Aggregation | None:
        base = self.base
        if base is None or r != base.version + 1:
            return None
        agg = self.aggregations.get(r)
        if agg is None:
            replicas = self.live_replicas()
            order = aggregator_order(self.block, r, replicas)
            rank = order.index(self.node.key.peer_id)
            known = {base.version: base.weights}
            if self.previous is not None:
                known[self.previous.version] = self.previous.weights
            deadline = base.deadline + (rank * self.settings.params.grace_s)
            if rank:
                deadline += self.settings.params.grace_s / 2
            agg = Aggregation(
                self.block, r, known, base.norm, 0, replicas, deadline, self.settings.params
            )
            self.aggregations[r] = agg
            self._agg_tasks[r] = asyncio.get_running_loop().create_task(self._close_when_due(r))
        return agg

    def _offer_own(self, r: int, base: _Base, steps: int) -> None:
        agg = self._aggregation(r)
        if agg is None:
            return
        delta = self._own[r]
        offer = DeltaOffer(
            self.node.key.peer_id, r, base.version, base.weights, steps, tensors_norm(delta)
        )
        agg.offer(offer, time.time())

    def admit(self, sender: PeerId, header: DeltaHeader) -> tuple[int, str] | None:
        """Judge a delta header before its buffer is allocated: from a live replica (and an
        allowed peer), naming exactly this block's tensors in its encoding (09 §9.4)."""
        base = self.base
        if base is None:
            return int(ErrorCode.NOT_READY), "this replica has not joined yet"
        if sender not in self.live_replicas():
            return int(ErrorCode.DELTA_REJECTED), "not a live replica of this block"
        problem = delta_layout_problem(header, base.tensors)
        return None if problem is None else (int(ErrorCode.DELTA_REJECTED), problem)

    def on_delta(self, delta: ReceivedDelta) -> None:
        """A delta for this block arrived (the node routes it here)."""
        self.node.spawn(self._judge_or_fail(delta), f"{self.tag} delta from {delta.sender}")

    async def _judge_or_fail(self, delta: ReceivedDelta) -> None:
        try:
            await self._judge(delta)
        except Exception:  # our failure: the sender hears it at once instead of timing out
            self.node.transfers.ack(delta, ErrorCode.INTERNAL_ERROR, "internal error")
            raise

    async def _judge(self, delta: ReceivedDelta) -> None:
        h = delta.header
        transfers = self.node.transfers
        base = self.base
        if base is None:
            transfers.ack(delta, ErrorCode.NOT_READY, "this replica has not joined yet")
            return
        if h.round <= base.version:
            transfers.ack(delta, ErrorCode.ROUND_CLOSED, f"version {h.round} is out")
            return
        if h.round > base.version + 1:
            transfers.ack(
                delta, ErrorCode.NOT_READY, f"version {h.round - 1} is not installed here yet"
            )
            return
        agg = self._aggregation(h.round)
        if agg is None:
            transfers.ack(
                delta, ErrorCode.DELTA_REJECTED, f"round {h.round} is not the next round here"
            )
            return
        like = base.tensors
        wire = {name: tensor_of(entry, data) for name, (entry, data) in delta.tensors.items()}
        decoded, problem = await asyncio.to_thread(decode_delta, wire, ENCODINGS[h.encoding], like)
        norm = 0.0
        if problem is None:
            check = await asyncio.to_thread(
                check_delta, decoded, base.norm, self.settings.params.max_relative_norm
            )
            norm, problem = check.norm, check.problem
        offer = DeltaOffer(
            delta.sender, h.round, h.base_version, h.base, h.steps, norm, problem, delta.nbytes
        )
        code, reason = agg.offer(offer, time.time())
        transfers.ack(delta, code, reason)
        self._delta_times[(h.round, delta.sender)] = (delta.nbytes, delta.seconds)
        if code == 0:
            # A staleness-1 delta (built on the version before our base) is applied to the
            # current base as it is, at the reduced weight the round gives it.
            self._decoded[(h.round, delta.sender)] = decoded
        else:
            log.warning(
                "[%s] round %d: delta from %s refused: %s: %s",
                self.tag,
                h.round,
                delta.sender.short(),
                code_name(code),
                reason,
            )

    async def _close_when_due(self, r: int) -> None:
        agg = self.aggregations[r]
        while not self.node.stopping:
            if self.base is not None and self.base.version >= r:
                return  # someone else's version r arrived first
            if agg.due(time.time()):
                break
            await asyncio.sleep(0.05)
        else:
            return
        outcome = agg.close(time.time())
        await self._publish(r, outcome)

    async def _publish(self, r: int, outcome: Outcome) -> None:
        base = self.base
        assert base is not None and base.version == r - 1
        me = self.node.key.peer_id
        deltas = []
        for peer, weight in outcome.weights.items():
            d = self._own.get(r) if peer == me else self._decoded.get((r, peer))
            if d is not None:
                deltas.append((d, weight))
        enc_code = _ENCODING_CODES[self.settings.encoding]
        now = time.time()
        next_deadline = now + self.settings.params.period_s
        report = RoundReport(
            contributors=tuple((p.digest, w, s, st) for p, w, s, st in outcome.contributors),
            rejected=tuple((p.digest, c, why[:200]) for p, c, why in outcome.rejected),
            late=tuple(p.digest for p in outcome.late),
            bytes_in=outcome.bytes_in,
        )
        store = self.node.store
        key = self.node.key

        common = {
            "block": self.block,
            "version": r,
            "parent": base.weights,
            "config_hash": self.config_hash,
            "created_ms": int(now * 1000),
            "next_deadline_ms": int(next_deadline * 1000),
            "report": report,
        }

        def build() -> tuple[StoredSet, StoredSet | None]:
            if not deltas:
                return store.put(key, base.tensors, **common), None
            mean = apply_average(
                {k: torch.zeros_like(v, dtype=torch.float32) for k, v in base.tensors.items()},
                deltas,
            )
            update = self.update_encoder.encode(mean)
            applied, problem = decode_delta(update, self.settings.encoding, base.tensors)
            assert problem is None
            new = apply_average(base.tensors, [(applied, 1.0)])
            full = store.put(key, new, durable=False, **common)
            upd = store.put(
                key,
                update,
                kind=KIND_UPDATE,
                encoding=enc_code,
                result=full.manifest.content,
                durable=False,
                **common,
            )
            return full, upd

        if self.base is None or self.base.version >= r:
            return
        full, upd = await asyncio.to_thread(build)
        if self.base is None or self.base.version >= r:
            return
        self._log_report(r, outcome, full)
        announce = upd.signed if upd is not None else full.signed
        for peer in self.live_replicas():
            if peer != me:
                self.node.transfers.push_manifest(peer, announce)
        async with self._install_lock:
            if self.base is not base:
                return
            self._set_base(full.signed, full)
        for key_ in [k for k in self._decoded if k[0] <= r]:
            del self._decoded[key_]

    def _log_report(self, r: int, outcome: Outcome, full: StoredSet) -> None:
        entry = {
            "block": self.block,
            "round": r,
            "version": full.manifest.version,
            "weights": full.manifest.content.hex(),
            "aggregator": self.node.key.peer_id.short(),
            "closed": "barrier" if outcome.early else "deadline",
            "contributors": [
                {"peer": p.short(), "weight": round(w, 4), "steps": s, "staleness": st}
                for p, w, s, st in outcome.contributors
            ],
            "rejected": [
                {"peer": p.short(), "code": code_name(c), "reason": why}
                for p, c, why in outcome.rejected
            ],
            "late": [p.short() for p in outcome.late],
            "bytes_in": outcome.bytes_in,
            # each received delta: wire bytes and seconds from its header to its last chunk
            "deltas": [
                {"peer": p.short(), "bytes": n, "seconds": round(sec, 4)}
                for (rr, p), (n, sec) in sorted(self._delta_times.items(), key=lambda kv: kv[1])
                if rr == r
            ],
            "time": time.time(),
        }
        for key in [k for k in self._delta_times if k[0] <= r]:
            del self._delta_times[key]
        self.reports.append(entry)
        with open(self.reports_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        log.info(
            "[%s] round %d closed by %s: %d contributors %s, rejected %s, late %s, %.1f MB in",
            self.tag,
            r,
            entry["closed"],
            len(outcome.contributors),
            [(c["peer"], c["weight"]) for c in entry["contributors"]],  # type: ignore[index]
            [(x["peer"], x["reason"]) for x in entry["rejected"]],  # type: ignore[index]
            entry["late"],
            outcome.bytes_in / 1e6,
        )

    # -- versions from others -------------------------------------------------------------------
    def may_install(self, signer: PeerId, version: int) -> str | None:
        """Why a version ``version`` signed by ``signer`` may not replace our base (09 §9.8),
        or None. The signer must be a live (and, in a private swarm, allowed) replica of the
        block; for the next round it must also hold a turn that has begun: the first peer of
        the round's aggregator order at once, the k-th only from ``k`` grace periods after
        the deadline (less half a grace period for clock skew)."""
        base = self.base
        if base is None:
            return "not joined yet"
        replicas = self.live_replicas()
        if signer not in replicas:
            return f"{signer.short()} is not a live replica of block {self.block}"
        if version == base.version + 1:
            rank = aggregator_order(self.block, version, replicas).index(signer)
            grace = self.settings.params.grace_s
            opens = base.deadline + (rank - 0.5) * grace
            if rank > 0 and time.time() < opens:
                return f"{signer.short()} is aggregator {rank} of round {version}, not yet its turn"
        return None

    def _content_check(self, base: _Base, gap: int, encoding: str | None) -> SetCheck:
        """The check of a set fetched on top of ``base`` (node.admission.version_check)."""
        bound = self.settings.params.max_relative_norm * max(1, gap)
        return version_check(base.tensors, base.norm, bound, encoding)

    def on_manifest(self, sender: PeerId, signed: SignedManifest) -> None:
        m = signed.manifest
        if m.block != self.block or m.config_hash not in ("", self.config_hash):
            return
        if m.result in self._adopting:
            return
        self._adopting.add(m.result)
        self.node.spawn(self._adopting_one(sender, signed), f"{self.tag} version from {sender}")

    async def _adopting_one(self, sender: PeerId, signed: SignedManifest) -> None:
        try:
            await self._adopt(sender, signed)
        finally:
            self._adopting.discard(signed.manifest.result)

    def _refuse(self, m: Manifest, why: str) -> None:
        self.rejected_versions += 1
        log.warning(
            "[%s] version %d from %s refused: %s", self.tag, m.version, m.signer.short(), why
        )

    async def _adopt(self, sender: PeerId, signed: SignedManifest) -> None:
        m = signed.manifest
        base = self.base
        if base is None:
            return
        if m.version <= base.version:
            if (
                m.version == base.version
                and m.result != base.weights
                and preferred_manifest(self.block, m.version, m.signer, base.signer) == m.signer
                and m.signer != base.signer
            ):
                log.warning(
                    "[%s] two versions %d: keeping %s's (ranked higher)",
                    self.tag,
                    m.version,
                    m.signer.short(),
                )
            else:
                return
        why = self.may_install(m.signer, m.version)
        if why is not None:
            self._refuse(m, why)
            return
        gap = m.version - base.version
        try:
            if m.kind == KIND_UPDATE and m.parent == base.weights and m.version == base.version + 1:
                stored = await self._fetch_full_via_update(sender, signed, base)
            else:
                full = await self.node.transfers.get_manifest(sender, self.block, m.result)
                if full.manifest.signer != m.signer or full.manifest.version != m.version:
                    self._refuse(m, "its full manifest names another signer or version")
                    return
                stored = await self._fetch_full(
                    full, [sender], self._content_check(base, gap, None)
                )
        except VersionRejected as exc:
            self._refuse(m, str(exc))
            return
        except (FetchError, TimeoutError) as exc:
            log.warning("[%s] cannot fetch version %d: %s", self.tag, m.version, exc)
            return
        async with self._install_lock:
            if self.base is not base:
                return
            self._set_base(stored.signed, stored, signer=m.signer)

    async def _fetch_full_via_update(
        self, sender: PeerId, signed: SignedManifest, base: _Base
    ) -> StoredSet:
        m = signed.manifest
        peers = await self.node.connect_all([sender, *self.holders(m.result)])
        check = self._content_check(base, 1, ENCODINGS[m.encoding])
        result = await self.node.transfers.fetch(signed, peers, check=check)
        update = result.stored.tensors()

        def rebuild() -> StoredSet | None:
            applied, problem = decode_delta(update, ENCODINGS[m.encoding], base.tensors)
            if problem is not None:
                return None
            new = apply_average(base.tensors, [(applied, 1.0)])
            full = self.node.store.put(
                self.node.key,
                new,
                block=self.block,
                version=m.version,
                parent=m.parent,
                config_hash=self.config_hash,
                created_ms=m.created_ms,
                next_deadline_ms=m.next_deadline_ms,
                report=m.report,
                durable=False,
            )
            return full if full.manifest.content == m.result else None

        stored = await asyncio.to_thread(rebuild)
        log.info(
            "[%s] version %d: update of %.2f MB in %.2f s",
            self.tag,
            m.version,
            result.bytes_fetched / 1e6,
            result.seconds,
        )
        if stored is None:
            log.warning(
                "[%s] update did not reproduce version %d; fetching it whole", self.tag, m.version
            )
            full = await self.node.transfers.get_manifest(sender, self.block, m.result)
            stored = await self._fetch_full(full, [sender], self._content_check(base, 1, None))
        return stored

    def save_final(self, path: Path) -> None:
        save_block(path, self.job.trainer.block)
