"""A replica's installed version of its block: joining, adopting, installing (08, 09 §9.8).

The :class:`Installer` holds the replica's *base* (the version it trains on) and is the only
code that replaces it:

* :meth:`Installer.join`: adopt the newest version announced in the swarm (fetched from the
  peers that hold it, judged), keep our own from the store, or build version 0 from the seed;
* :meth:`Installer.on_manifest`: a version pushed by a publisher: install the weights this
  replica already built from the round's shard updates when they hash to the manifest's
  ``res``, else fetch it from the publisher and the other holders — in both cases only from a
  signer 09 §9.8 allows, and after the content check;
* :meth:`Installer.install`: set the base between two training steps (the install lock),
  load it into the trainer, write the position file, announce the version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from spheroid_p2p.core.gossip_params import LocalClaim
from spheroid_p2p.core.plan import RoundPlan
from spheroid_p2p.core.rounds import RoundParams, preferred_manifest
from spheroid_p2p.ml.averaging import FlatLayout, tensors_norm
from spheroid_p2p.ml.checkpoint import atomic_write
from spheroid_p2p.node.admission import SetCheck, join_check, version_check
from spheroid_p2p.node.buffers import TensorPool
from spheroid_p2p.node.swarm import SwarmView, holders, live_replicas, version_records
from spheroid_p2p.node.transfer import FetchError, Transfers, VersionRejected
from spheroid_p2p.wire.manifests import KIND_FULL, SignedManifest
from spheroid_p2p.wire.signing import KeyPair, PeerId

if TYPE_CHECKING:
    from spheroid_p2p.node.store import StoredSet, VersionStore

__all__ = ["Base", "Installer"]

log = logging.getLogger(__name__)

#: Tries to fetch the swarm's newest version on joining before starting from our own.
JOIN_ATTEMPTS = 5


@dataclass
class Base:
    """The version a replica trains on: its weights (as tensors and as the flat vector)."""

    signed: SignedManifest
    signer: PeerId
    tensors: dict[str, torch.Tensor]
    flat: torch.Tensor
    norm: float
    #: checks of fetched versions that read this base's tensors now (its flat vector is
    #: not recycled while any runs)
    pins: int = 0

    @property
    def version(self) -> int:
        return self.signed.manifest.version

    @property
    def weights(self) -> bytes:
        return self.signed.manifest.result

    @property
    def deadline(self) -> float:
        """Wall-clock seconds of the next round's deadline."""
        return self.signed.manifest.next_deadline_ms / 1000


class Installer:
    """One replica's base, and every way it changes."""

    def __init__(
        self,
        swarm: SwarmView,
        transfers: Transfers,
        store: VersionStore,
        key: KeyPair,
        *,
        block: int,
        n_blocks: int,
        config_hash: str,
        module: torch.nn.Module,
        params: RoundParams,
        data_dir: Path,
        spawn: Callable[[Coroutine[object, object, None], str], bool],
        tag: str,
    ) -> None:
        self.swarm = swarm
        self.transfers = transfers
        self.store = store
        self.key = key
        self.block = block
        self.n_blocks = n_blocks
        self.config_hash = config_hash
        self.module = module
        self.params = params
        self.spawn = spawn
        self.tag = tag
        self.layout = FlatLayout(module.state_dict())
        self.base: Base | None = None
        self.previous: Base | None = None
        #: set after every install: waiters clear it and wait
        self.installed = asyncio.Event()
        #: held while the compute thread trains: a version is installed only between steps
        self.lock = asyncio.Lock()
        #: versions refused by 09 §9.8 (signer, finite, norm), for tests and status
        self.rejected_versions = 0
        self.position_path = data_dir / f"block-{block}.round.json"
        #: where the flat vectors of retired bases go (the replica's pool; None: nowhere)
        self.pool: TensorPool | None = None
        #: called (with the new base) right after an install, before training goes on
        self.after_install: Callable[[Base], None] | None = None
        #: offered version ``base + 1`` first: the round in progress installs it from its own
        #: shard updates when it can (True: taken)
        self.take_version: Callable[[SignedManifest], bool] | None = None
        self._adopting: set[bytes] = set()

    # -- the plan of the next round ---------------------------------------------------------------
    def plan(self) -> RoundPlan:
        """The plan of round ``base.version + 1`` (09 §9.2)."""
        base = self.base
        assert base is not None
        m = base.signed.manifest
        return RoundPlan.from_manifest(
            self.block,
            base.version + 1,
            m.plan,
            m.shards,
            base.deadline,
            self.params.grace_s,
            self.live(),
        )

    def live(self) -> set[PeerId]:
        return live_replicas(self.swarm, self.block, self.config_hash)

    # -- joining ----------------------------------------------------------------------------------
    async def join(self, join_wait_s: float, min_replicas: int, replica_wait_s: float) -> None:
        """Adopt the block's newest version in the swarm, or create version 0."""
        position = self._read_position()
        await self._wait_for(lambda: bool(version_records(self.swarm, self.block, "")), join_wait_s)
        await self._wait_for_replicas(min_replicas, replica_wait_s)
        local = self.store.full(self.block)
        stored = None
        for attempt in range(JOIN_ATTEMPTS):
            newest = max(
                version_records(self.swarm, self.block, self.config_hash),
                key=lambda r: r.version,
                default=None,
            )
            if newest is None or (local is not None and newest.version <= local.manifest.version):
                break
            try:
                await self.swarm.connect([newest.owner])
                manifest = await self.transfers.get_manifest(
                    newest.owner, self.block, newest.content_hash
                )
                check = join_check(self.module.state_dict())
                stored = await self.fetch(manifest, [newest.owner], check)
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
                await self.swarm.changed(1.0)
        keep_local = False
        if stored is None and local is not None:
            stored = local
            weights = local.manifest.content.hex()
            keep_local = position is not None and position.get("weights") == weights
        elif stored is None:  # version 0 is the seeded initialisation: the same everywhere
            stored = await asyncio.to_thread(self._make_version0)
        await self._set(stored.signed, stored.tensors(), keep_local=keep_local)
        log.info(
            "[%s] joined at version %d (%s) from %s",
            self.tag,
            stored.manifest.version,
            stored.manifest.content.hex()[:12],
            stored.manifest.signer.short(),
        )

    async def _wait_for(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (on record changes, never polling) until ``ready()`` or ``timeout_s``."""
        until = time.monotonic() + timeout_s
        while not ready() and not self.swarm.stopping:
            left = until - time.monotonic()
            if left <= 0:
                return False
            await self.swarm.changed(left)
        return ready()

    async def _wait_for_replicas(self, want: int, timeout_s: float) -> None:
        if len(self.live()) >= want:
            return
        log.info("[%s] waiting for %d replicas of block %d", self.tag, want, self.block)
        if await self._wait_for(lambda: len(self.live()) >= want, timeout_s):
            log.info("[%s] %d replicas live", self.tag, len(self.live()))
            return
        log.warning(
            "[%s] only %d of %d replicas live after %.0f s; training with them",
            self.tag,
            len(self.live()),
            want,
            timeout_s,
        )

    def _make_version0(self) -> StoredSet:
        state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        now = time.time()
        return self.store.put(
            self.key,
            state,
            block=self.block,
            version=0,
            parent=b"",
            config_hash=self.config_hash,
            created_ms=int(now * 1000),
            next_deadline_ms=int((now + self.params.period_s) * 1000),
        )

    def _read_position(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.position_path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    # -- installing -------------------------------------------------------------------------------
    async def _set(
        self,
        signed: SignedManifest,
        tensors: dict[str, torch.Tensor],
        *,
        keep_local: bool = False,
        signer: PeerId | None = None,
        flat: torch.Tensor | None = None,
        norm: float | None = None,
    ) -> None:
        """Make ``signed`` the base (call with :attr:`lock` held, or before training).
        ``keep_local``: the module holds these weights already (or ours are to be kept);
        ``flat`` and ``norm``: the weights as the flat vector and its norm, when known."""
        if flat is None:
            flat = await asyncio.to_thread(self.layout.flatten, tensors)
        if norm is None:
            norm = await asyncio.to_thread(tensors_norm, flat)
        tensors = self.layout.views(flat)  # the base's tensors are views of its flat vector
        retired = self.previous
        self.previous = self.base
        self.base = Base(signed, signer or signed.manifest.signer, tensors, flat, norm)
        if retired is not None and retired.pins == 0 and self.pool is not None:
            # two installs ago: nothing reads it any more (the round reads the base, the
            # aggregator the base and the previous one's weights hash)
            self.pool.give(retired.flat)
        if not keep_local:
            with torch.no_grad():
                await asyncio.to_thread(self.module.load_state_dict, tensors)
        if self.after_install is not None:
            self.after_install(self.base)
        m = signed.manifest
        position = json.dumps({"version": m.version, "weights": m.result.hex()}).encode()
        # a hint, safe to lose (a stale or missing one only reloads the trainer from the store):
        # no fsync, which on ext4 would also force out the 100s of MB just staged
        await asyncio.to_thread(atomic_write, self.position_path, position, durable=False)
        self.swarm.announce(
            LocalClaim(
                block=self.block,
                role="train",
                version=m.version,
                content_hash=m.result,
                n_blocks=self.n_blocks,
                config_hash=self.config_hash,
            )
        )
        self.installed.set()

    async def install(
        self,
        signed: SignedManifest,
        tensors: dict[str, torch.Tensor],
        expect: Base,
        *,
        signer: PeerId | None = None,
        flat: torch.Tensor | None = None,
        norm: float | None = None,
        loaded: bool = False,
    ) -> bool:
        """Install between two training steps, unless the base moved on from ``expect``;
        ``loaded``: the module already holds these weights."""
        async with self.lock:
            if self.base is not expect:
                return False
            await self._set(signed, tensors, signer=signer, flat=flat, norm=norm, keep_local=loaded)
            return True

    async def fetch(
        self, signed: SignedManifest, holders_: list[PeerId], check: SetCheck | None = None
    ) -> StoredSet:
        m = signed.manifest
        more = [p for p in holders(self.swarm, self.block, m.content) if p not in holders_]
        peers = await self.swarm.connect([*holders_, *more])
        result = await self.transfers.fetch(signed, peers, check=check)
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

    # -- versions from others ---------------------------------------------------------------------
    def may_install(self, signer: PeerId, version: int) -> str | None:
        """Why a version ``version`` signed by ``signer`` may not replace our base (09 §9.8),
        or None: the signer must be a live (allowed) replica of the block, and for the next
        round hold a publisher turn that has begun."""
        base = self.base
        if base is None:
            return "not joined yet"
        if signer not in self.live():
            return f"{signer.short()} is not a live replica of block {self.block}"
        if version == base.version + 1:
            plan = self.plan()
            rank = plan.publisher_rank(signer)
            if rank is None:
                return f"{signer.short()} is not in round {version}'s plan"
            if time.time() < plan.turn_opens(rank):
                return f"{signer.short()} is publisher {rank} of round {version}, not yet its turn"
        return None

    def content_check(self, base: Base, gap: int) -> SetCheck:
        """The check of a full set fetched on top of ``base`` (node.admission.version_check)."""
        bound = self.params.max_relative_norm * max(1, gap)
        return version_check(base.tensors, base.norm, bound)

    def on_manifest(self, sender: PeerId, signed: SignedManifest) -> None:
        """A version pushed to us (``VERSION_INFO`` with id 0)."""
        m = signed.manifest
        if m.block != self.block or m.kind != KIND_FULL:
            return
        if m.config_hash not in ("", self.config_hash) or m.result in self._adopting:
            return
        self._adopting.add(m.result)
        self.spawn(self._adopting_one(sender, signed), f"{self.tag} version from {sender}")

    async def _adopting_one(self, sender: PeerId, signed: SignedManifest) -> None:
        try:
            await self._adopt(sender, signed)
        finally:
            self._adopting.discard(signed.manifest.result)

    def _refuse(self, signed: SignedManifest, why: str) -> None:
        self.rejected_versions += 1
        m = signed.manifest
        log.warning(
            "[%s] version %d from %s refused: %s", self.tag, m.version, m.signer.short(), why
        )

    async def _adopt(self, sender: PeerId, signed: SignedManifest) -> None:
        m = signed.manifest
        base = self.base
        if base is None:
            return
        if m.version <= base.version:
            newer = (
                m.version == base.version
                and m.result != base.weights
                and m.signer != base.signer
                and preferred_manifest(self.block, m.version, m.signer, base.signer) == m.signer
            )
            if not newer:
                return
            log.warning("[%s] two versions %d: keeping %s's", self.tag, m.version, m.signer.short())
        why = self.may_install(m.signer, m.version)
        if why is not None:
            self._refuse(signed, why)
            return
        take = self.take_version
        if m.version == base.version + 1 and take is not None and take(signed):
            return
        await self.adopt_fetched(signed, base)

    async def adopt_fetched(self, signed: SignedManifest, base: Base) -> None:
        """Fetch ``signed`` from its signer and the other holders, judge it against ``base``
        (09 §9.8) and install it; a refused set leaves nothing behind."""
        m = signed.manifest
        check = self.content_check(base, m.version - base.version)
        base.pins += 1
        try:
            stored = await self.fetch(signed, [m.signer], check)
        except VersionRejected as exc:
            self._refuse(signed, str(exc))
            return
        except (FetchError, TimeoutError) as exc:
            log.warning("[%s] cannot fetch version %d: %s", self.tag, m.version, exc)
            return
        finally:
            base.pins -= 1
        await self.install(signed, stored.tensors(), base, signer=m.signer)
