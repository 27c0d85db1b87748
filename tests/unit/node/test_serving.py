"""The traversal server against in-memory peers: a hop checks a traversal (the pure plan of
``core.traversal``), runs its blocks on a real tiny model, and forwards it on or answers the
client; refusals carry their codes."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from spheroid_p2p.core.traversal import Compute, Refuse, ServedModel, check_hop, forward, hop_times
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import save_block
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.node.compute import BlockRuntime
from spheroid_p2p.node.serving import TraversalServer
from spheroid_p2p.node.turns import ComputeTurns
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.traversal import Hop, InlineTensor, Traverse, TraverseError, TraverseResult
from tests.support.fakes import FakeSwarm, MemoryLink, MemoryNet

CFG = ModelConfig(context=16, d_model=32, layers_per_block=1)


def _traverse(client: PeerId, hops: list[tuple[PeerId, int, int]], **changes: object) -> Traverse:
    req = Traverse(
        traversal_id=7,
        client=client.digest,
        reply_addr="127.0.0.1:9",
        route=tuple(Hop(p.digest, "127.0.0.1:1", a, b) for p, a, b in hops),
        hop=0,
        config_hash=CFG.config_hash(),
        steps_per_block=1,
        prefix=b"Day 1. ",
        span=0,
        seed=5,
        temperature=0.0,
        deadline_ms=10_000,
        want_logits=False,
        z=InlineTensor(1, (0,), 0, chunk_digest(b"")),
    )
    return dataclasses.replace(req, **changes)  # type: ignore[arg-type]


# -- the pure plan -------------------------------------------------------------------------
ME, OTHER, CLIENT = (PeerId(bytes([i]) * 32) for i in (1, 2, 3))
SERVED = ServedModel(frozenset({0, 1}), CFG.config_hash(), CFG.span)


def _shape(first: int, prefix: bytes) -> tuple[int, int]:
    return (16, CFG.d_z)


def test_check_hop_names_each_refusal_by_its_code() -> None:
    ok = _traverse(CLIENT, [(ME, 0, 1), (OTHER, 2, 3)])
    assert check_hop(ok, ME.digest, SERVED, _shape, 0.0) == Compute(0, 1, starting=True)
    cases = {
        ErrorCode.PROTOCOL_VIOLATION: _traverse(CLIENT, [(OTHER, 0, 1), (ME, 2, 3)]),
        ErrorCode.BLOCK_NOT_SERVED: _traverse(CLIENT, [(ME, 0, 2), (OTHER, 3, 3)]),
        ErrorCode.SPAN_UNSUPPORTED: _traverse(CLIENT, [(ME, 0, 1), (OTHER, 2, 3)], span=9),
    }
    for code, req in cases.items():
        verdict = check_hop(req, ME.digest, SERVED, _shape, 0.0)
        assert isinstance(verdict, Refuse) and verdict.code == code, (code, verdict)
    other_config = _traverse(CLIENT, [(ME, 0, 1)], config_hash="ff" * 20)
    assert (
        check_hop(other_config, ME.digest, SERVED, _shape, 0.0).code == ErrorCode.BLOCK_NOT_SERVED
    )  # type: ignore[union-attr]
    late = check_hop(ok, ME.digest, SERVED, _shape, 20_000.0)
    assert isinstance(late, Refuse) and late.code == ErrorCode.TIMEOUT


def test_forward_spends_the_deadline_and_carries_the_hop_times() -> None:
    req = _traverse(CLIENT, [(ME, 0, 1), (OTHER, 2, 3)])
    z = InlineTensor(1, (16, CFG.d_z), 0, chunk_digest(b"x"), b"x")
    nxt = forward(req, z, b"x", hop_times(req, (1.0, 2.0, 3.0)), spent_ms=400)
    assert isinstance(nxt, Traverse)
    assert nxt.hop == 1 and nxt.deadline_ms == 9_600 and nxt.timings == (1.0, 2.0, 3.0)
    assert isinstance(forward(req, z, b"x", (), spent_ms=10_000), Refuse)
    last = dataclasses.replace(req, hop=1)
    assert forward(last, z, b"x", (), 0).code == ErrorCode.PROTOCOL_VIOLATION  # type: ignore[union-attr]


# -- the server on in-memory peers ----------------------------------------------------------
class Endpoint:
    def __init__(self, net: MemoryNet, seed: int) -> None:
        self.link: MemoryLink = net.endpoint(seed)
        self.got: list[tuple[PeerId, Message]] = []
        self.link.handler = lambda peer, message: self.got.append((peer, message))


@pytest.fixture
def runtime(tmp_path: Path) -> BlockRuntime:
    paths = []
    for b in (0, 1, 2, 3):
        path = tmp_path / f"block-{b}.safetensors"
        save_block(path, BlockDenoiser(CFG, b))
        paths.append(path)
    return BlockRuntime(tuple(paths[:2]))


async def _served(server: TraversalServer, req: Traverse, sender: PeerId) -> None:
    await server.answering_failure(server.traverse(req, sender), req)
    await asyncio.sleep(0.01)  # deliveries run on the next loop turns


@pytest.mark.asyncio
async def test_a_hop_runs_its_blocks_and_forwards_with_the_codes(runtime: BlockRuntime) -> None:
    net = MemoryNet()
    hop, nxt, client = Endpoint(net, 1), Endpoint(net, 2), Endpoint(net, 3)
    server = TraversalServer(
        hop.link,  # type: ignore[arg-type]
        FakeSwarm(hop.link),  # type: ignore[arg-type]
        ComputeTurns(slots=2),
        runtime=runtime,
        ar_stage=None,
        keep_hot_s=0.0,
        tag="hop",
    )
    req = _traverse(client.link.me, [(hop.link.me, 0, 1), (nxt.link.me, 2, 3)])
    await _served(server, req, client.link.me)
    ((sender, onward),) = nxt.got
    assert sender == hop.link.me and isinstance(onward, Traverse)
    assert onward.hop == 1 and onward.deadline_ms <= req.deadline_ms
    assert tuple(onward.z.shape) == runtime.z_shape(0, req)  # every block: one shape
    assert len(onward.timings) == 3 and not client.got
    # the next hop is gone: the client hears TIMEOUT naming it
    net.cut(hop.link.me, nxt.link.me)
    await _served(server, req, client.link.me)
    ((_, error),) = client.got
    assert isinstance(error, TraverseError) and error.code == ErrorCode.TIMEOUT
    assert error.peer == nxt.link.me.digest


@pytest.mark.asyncio
async def test_the_last_hop_answers_the_client_and_refusals_carry_codes(
    runtime: BlockRuntime, tmp_path: Path
) -> None:
    runtime.add(tmp_path / "block-2.safetensors")
    runtime.add(tmp_path / "block-3.safetensors")
    net = MemoryNet()
    hop, client = Endpoint(net, 1), Endpoint(net, 3)
    server = TraversalServer(
        hop.link,  # type: ignore[arg-type]
        FakeSwarm(hop.link),  # type: ignore[arg-type]
        ComputeTurns(slots=2),
        runtime=runtime,
        ar_stage=None,
        keep_hot_s=0.0,
        tag="hop",
    )
    whole = _traverse(client.link.me, [(hop.link.me, 0, 3)])
    await _served(server, whole, client.link.me)
    ((_, result),) = client.got
    assert isinstance(result, TraverseResult) and len(result.output) == CFG.span
    client.got.clear()
    await _served(server, dataclasses.replace(whole, span=CFG.span + 5), client.link.me)
    ((_, refused),) = client.got
    assert isinstance(refused, TraverseError) and refused.code == ErrorCode.SPAN_UNSUPPORTED
