"""Hostile peers against real nodes on 127.0.0.1: no frame crashes a node, poisons it or makes
it allocate what the frame declares (issue: hostile peers; protocol/security.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from spheroid_p2p.client.status import fetch_status
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.node.app import Node, running_node
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.transfer import Payload
from spheroid_p2p.testing import tiny_trainer_args
from spheroid_p2p.testing.hostile import (
    HostilePeer,
    crafted_record,
    foreign_shard_delta,
    zstd_bomb,
)
from spheroid_p2p.wire.gossip import GossipRecords, RelayedRecord
from spheroid_p2p.wire.message import MessageType
from spheroid_p2p.wire.signing import KeyPair
from spheroid_p2p.wire.status import StatusRequest
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.transfer import REQUEST_ID_BIT, ChunkGet, TransferError, VersionGet
from spheroid_p2p.wire.traversal import Hop, InlineTensor, Traverse, TraverseError
from tests.support.swarm import NodeProcess, wait_for

pytestmark = pytest.mark.integration

BAD_ADDRS = ["x", ":0", ":99999", "127.0.0.1:0", "a b:1", "1.2.3:4", "[zz]:1"]


@contextlib.asynccontextmanager
async def _node(tmp: Path, name: str, **kw: Any) -> AsyncIterator[Node]:
    cfg = NodeConfig(data_dir=tmp / name, key=tmp / f"{name}.key", **kw)
    async with running_node(cfg) as node:
        yield node


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Wait (bounded) until ``predicate`` holds; fail the test naming ``what`` otherwise."""
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def _addr(node: Node) -> str:
    assert node.bound_address is not None
    return f"{node.bound_address[0]}:{node.bound_address[1]}"


def _traverse(client: KeyPair, me: bytes, reply: str = "127.0.0.1:9") -> Traverse:
    return Traverse(
        traversal_id=5,
        client=client.peer_id.digest,
        reply_addr=reply,
        route=(Hop(me, "127.0.0.1:9", 0, 0),),
        hop=0,
        config_hash="",
        steps_per_block=1,
        prefix=b"hello",
        span=0,
        seed=1,
        temperature=0.0,
        deadline_ms=5000,
        want_logits=False,
        z=InlineTensor(1, (0,), 0, chunk_digest(b"")),
    )


def test_bad_addresses_are_refused_at_decode_and_never_relayed(tmp_path: Path) -> None:
    """A record with a bad address is dropped (counted) and not relayed; a TRAVERSE whose
    reply is one closes that connection with MALFORMED_MESSAGE; both nodes live on."""

    async def main() -> None:
        async with _node(tmp_path, "a") as a, _node(tmp_path, "b", bootstrap=()) as b:
            await b.peers.dial(_addr(a))
            await _until(lambda: a.key.peer_id in b.gossip.peers, what="b gossips with a")
            evil = HostilePeer()
            await evil.connect(_addr(a))
            await asyncio.sleep(0.2)  # the node registers us as a gossip peer
            owner = KeyPair.generate()
            records = [
                RelayedRecord(*crafted_record(owner, {"blk": i, "addrs": [bad]}), 60_000)
                for i, bad in enumerate(BAD_ADDRS)
            ]
            good = crafted_record(owner, {"blk": 100})
            evil.send(GossipRecords(records=(*records, RelayedRecord(*good, 60_000))))
            key = (owner.peer_id.digest, 100)
            await _until(lambda: b.gossip.table.get(key) is not None, what="the record spreads")
            assert a.gossip.table.dropped["malformed_message"] >= len(BAD_ADDRS)
            for node in (a, b):
                held = [
                    e.record.block
                    for e in node.gossip.table.entries()
                    if e.record.owner == owner.peer_id
                ]
                assert held == [100], held
            # a traversal naming a bad reply address: that connection closes, nothing else
            evil.send_crafted(
                int(MessageType.TRAVERSE),
                dict(_traverse(evil.key, a.key.peer_id.digest).to_body(), reply="x"),
            )
            lost = await evil.wait_closed()
            assert lost is not None and lost.code == ErrorCode.MALFORMED_MESSAGE, lost
            assert a.task_failures == 0
            status = await fetch_status(_addr(a))
            assert status.total == 1  # the good record

    asyncio.run(main())


def _inject(node: Node) -> dict[str, Callable[[HostilePeer, Node], None]]:
    """Message senders, one per handler that the test makes fail."""
    me = node.key.peer_id.digest
    return {
        "gossip": lambda h, n: h.send(GossipRecords(records=())),
        "status": lambda h, n: h.send(StatusRequest(request_id=9)),
        "version_get": lambda h, n: h.send(
            VersionGet(request_id=REQUEST_ID_BIT | 9, block=0, weights=b"")
        ),
        "chunk_get": lambda h, n: h.send(
            ChunkGet(request_id=REQUEST_ID_BIT | 9, weights=bytes(32), indices=(0,))
        ),
        "traverse": lambda h, n: h.send(_traverse(h.key, me)),
    }


class _BoomError(RuntimeError):
    pass


def _raise(*args: object, **kwargs: object) -> Any:
    raise _BoomError("injected failure")


async def _araise(*args: object, **kwargs: object) -> Any:
    raise _BoomError("injected failure")


def test_a_failure_in_any_handler_ends_only_its_connection_or_request(tmp_path: Path) -> None:
    """Every handler of peer input is made to raise in turn: the node never exits; a failing
    synchronous handler closes that connection with INTERNAL_ERROR, a failing request is
    answered with INTERNAL_ERROR (traversal) or ends alone, and other peers are still served."""

    async def main() -> None:
        async with _node(tmp_path, "n") as node:
            targets: dict[str, tuple[object, str, Callable[..., Any]]] = {
                "gossip": (node.gossip, "handle_message", _raise),
                "status": (node, "status", _raise),
                "version_get": (node.transfers.server, "version", _raise),
                "chunk_get": (node.transfers.server, "chunks", _araise),
                "traverse": (node.server, "traverse", _araise),
            }
            senders = _inject(node)
            failures = 0
            for name, (obj, attr, fake) in targets.items():
                original = getattr(obj, attr)
                setattr(obj, attr, fake)
                try:
                    evil = HostilePeer()
                    await evil.connect(_addr(node))
                    await asyncio.sleep(0.1)
                    senders[name](evil, node)
                    if name in ("gossip", "status", "version_get"):  # synchronous handlers
                        lost = await evil.wait_closed()
                        assert lost is not None and lost.code == ErrorCode.INTERNAL_ERROR, name
                    else:
                        failures += 1
                        want = failures
                        await _until(lambda: node.task_failures >= want, 5, name)  # noqa: B023
                    if name == "traverse":  # the client hears why at once
                        # (among gossip the node sends on its own: look for the answer)
                        def answers(evil: HostilePeer = evil) -> list[TraverseError]:
                            return [
                                m.message
                                for m in evil.messages
                                if isinstance(m.message, TraverseError)
                            ]

                        await _until(lambda: bool(answers()), 5, "the traversal's answer")
                        assert answers()[0].code == ErrorCode.INTERNAL_ERROR
                    await evil.close()
                finally:
                    setattr(obj, attr, original)
                status = await fetch_status(_addr(node))  # still serving everyone else
                assert status.agent.startswith("spheroid_p2p/")
            assert node.task_failures == failures

    asyncio.run(main())


def test_requests_beyond_a_peers_rate_are_refused_not_queued(tmp_path: Path) -> None:
    """A flood of VERSION_GETs from one peer: past its bucket the answers are OVERLOADED, and
    another peer's status request is still answered."""

    async def main() -> None:
        async with _node(tmp_path, "n") as node:
            evil = HostilePeer()
            await evil.connect(_addr(node))
            for i in range(200):
                evil.send(VersionGet(request_id=REQUEST_ID_BIT | (i + 1), block=0, weights=b""))
            await _until(lambda: len(evil.messages) >= 200, what="200 answers")
            codes = [m.message.code for m in evil.messages if isinstance(m.message, TransferError)]
            assert codes.count(ErrorCode.OVERLOADED) >= 100, codes[:50]
            assert ErrorCode.VERSION_UNKNOWN in codes  # the first ones were served
            status = await fetch_status(_addr(node))
            assert status.uptime_ms > 0
            await evil.close()

    asyncio.run(main())


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _bomb_chunk(h: HostilePeer) -> bytes:
    """A TENSOR_CHUNK whose zstd frame declares 1 MiB (= n) and expands to 256 MiB."""
    return h.frame(
        int(MessageType.TENSOR_CHUNK),
        {"id": 9, "i": 0, "n": 1 << 20, "h": bytes(32), "c": 1},
        zstd_bomb(1 << 20, 256 << 20),
    )


def _bomb_traverse(h: HostilePeer, me: bytes) -> bytes:
    """A TRAVERSE at hop 1 whose z (float32 [512, 512], 1 MiB) is a 256 MiB zstd bomb."""
    body = dict(_traverse(h.key, me).to_body(), hop=0)
    body["z"] = {"dt": 1, "shape": [512, 512], "c": 1, "h": bytes(32)}
    return h.frame(int(MessageType.TRAVERSE), body, zstd_bomb(1 << 20, 256 << 20))


def test_zstd_bombs_are_refused_without_inflating(tmp_path: Path) -> None:
    """Before the handshake a chunk is refused unread (PROTOCOL_VIOLATION); after it, a bomb
    in a traversal's z is refused while decoding into its declared 1 MiB
    (DECOMPRESSION_FAILED). The node's peak RSS grows by under 16 MiB for 20 bombs."""
    target = NodeProcess(tmp_path, "t", verbose=1).start()

    async def main() -> None:
        before = _hwm_kib(target.proc.pid)  # type: ignore[union-attr]
        for _ in range(10):
            evil = HostilePeer()
            await evil.connect(target.addr, handshake=False)
            evil.send_raw(_bomb_chunk(evil))
            lost = await evil.wait_closed()
            assert lost is not None and lost.code == ErrorCode.PROTOCOL_VIOLATION, lost
            await evil.close()
        me = bytes.fromhex("00" * 32)
        for _ in range(10):
            evil = HostilePeer()
            await evil.connect(target.addr)
            evil.send_raw(_bomb_traverse(evil, me))
            lost = await evil.wait_closed()
            assert lost is not None and lost.code == ErrorCode.DECOMPRESSION_FAILED, lost
            await evil.close()
        growth = _hwm_kib(target.proc.pid) - before  # type: ignore[union-attr]
        assert growth < 16 * 1024, f"peak RSS grew by {growth} KiB"

    try:
        asyncio.run(main())
        assert target.alive()
        assert target.status().uptime_ms > 0
    finally:
        target.stop()


TRAINER = tiny_trainer_args(round_steps=5, round_period=4, round_grace=2)


def test_poisoned_versions_and_foreign_shard_deltas_are_refused(tmp_path: Path) -> None:
    """Against a training replica: unsolicited VERSION_INFOs (NaN weights from a replica,
    100x weights from a replica, NaN weights from a peer that is no replica) are refused and
    never installed or persisted; a SHARD_DELTA for a shard its plan does not have is refused
    at its header, before anything is allocated. The replica trains on, its versions finite."""
    import torch

    from spheroid_p2p.ml.config import ModelConfig
    from spheroid_p2p.wire.signing import PeerId

    trainer = NodeProcess(tmp_path, "r0", *TRAINER, verbose=1).start()
    model = ModelConfig(context=16, d_model=32, layers_per_block=1)
    target = PeerId.from_text(trainer.peer_id)

    async def poison(node: Node, make: Callable[[torch.Tensor], torch.Tensor]) -> bytes:
        recs = [r for r in node.gossip.owners_of(0) if r.owner == target and r.content_hash]
        newest = max(recs, key=lambda r: r.version)
        await node.swarm.connect([target])
        signed = await node.transfers.get_manifest(target, 0, newest.content_hash)
        base = (await node.transfers.fetch(signed, [target])).stored.tensors()
        # ahead of the trainer's version as it is now, by a margin of rounds (4 s each): a
        # version it has already passed is ignored, not refused, and a loaded machine can take
        # a few seconds to get here (CI: gossip a round behind, the fetch a round more)
        view = await fetch_status(trainer.addr)
        now = max(r.version for r in view.records if r.owner == target.digest and r.block == 0)
        bad = node.store.put(
            node.key,
            {k: make(v) for k, v in base.items()},
            block=0,
            version=max(now, signed.manifest.version) + 5,
            parent=signed.manifest.content,
            config_hash=model.config_hash(),
            created_ms=signed.manifest.created_ms,
            next_deadline_ms=signed.manifest.next_deadline_ms,
        )
        assert node.transfers.push_manifest(target, bad.signed)
        return bad.manifest.content

    async def main() -> list[bytes]:
        replica = NodeConfig(
            data_dir=tmp_path / "evil",
            key=tmp_path / "evil.key",
            bootstrap=(trainer.addr,),
            train_blocks=(0,),  # announces itself as a replica of block 0
            model=model,
        )
        outsider = NodeConfig(
            data_dir=tmp_path / "outsider", key=tmp_path / "o.key", bootstrap=(trainer.addr,)
        )
        sent = []
        async with running_node(replica) as evil, running_node(outsider) as other:
            await _until(
                lambda: any(r.owner == target and r.version >= 1 for r in evil.gossip.owners_of(0)),
                60,
                "the trainer publishes version 1",
            )
            for _ in range(100):  # the trainer knows our replica record
                view = await fetch_status(trainer.addr)
                if any(r.owner == evil.key.peer_id.digest for r in view.records):
                    break
                await asyncio.sleep(0.2)
            nan = float("nan")
            sent.append(await poison(evil, lambda v: torch.full_like(v, nan)))
            sent.append(await poison(evil, lambda v: v * 100 + 1))
            sent.append(await poison(other, lambda v: torch.full_like(v, nan)))
            # shard 63 of 64 of a block whose plan has one shard: refused at the header
            recs = [r for r in evil.swarm.owners(0) if r.owner == target and r.content_hash]
            newest = max(recs, key=lambda r: r.version)
            header = foreign_shard_delta(
                evil.transfers.streams.new_id(), newest.version + 1, newest.content_hash
            )
            before = _hwm_kib(trainer.proc.pid)  # type: ignore[union-attr]
            answer = await evil.transfers.streams.send_delta(
                target, header, Payload.of(bytes(1 << 20)), 10
            )
            assert answer.code in (ErrorCode.DELTA_REJECTED, ErrorCode.ROUND_CLOSED), answer
            assert _hwm_kib(trainer.proc.pid) - before < 64 * 1024  # type: ignore[union-attr]
            # the trainer fetches and judges the pushed versions
            await _until(lambda: trainer.log().count("refused: ") >= 3, 30, "three refusals")
        return sent

    try:
        sent = asyncio.run(main())
        wait_for(lambda: trainer.log().count("refused: ") >= 3, timeout_s=30)
        assert trainer.alive()
        held = {p.name.split(".")[0] for p in (tmp_path / "r0" / "versions").glob("*")}
        for content in sent:
            assert content.hex() not in held, "a rejected version was persisted"
        log = trainer.log()
        assert "non-finite" in log and "exceeds" in log and "not a live replica" in log, log[-3000:]
        # it goes on training and publishing versions
        v0 = max(r.version for r in trainer.status().records if r.owner == target.digest)
        wait_for(
            lambda: (
                max(r.version for r in trainer.status().records if r.owner == target.digest) > v0
            ),
            timeout_s=40,
        )
    finally:
        trainer.stop()
