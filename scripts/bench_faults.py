"""Fault table: hostile peers against real node processes on 127.0.0.1.

Each scenario attacks one node process for ``--attack`` seconds, ``--tries`` times, while an
honest peer measures the node's status and traversal answers; the same honest peer measures
them just before, with the node idle, so every ratio compares two windows of the same run.
For each scenario it records: what the attacker was answered (close or error codes), whether
the node is still alive, the honest peer's p50/p99 latency (attack / idle), timeouts, the
node's peak RSS growth, and what data was lost. Three more scenarios kill a process with
SIGKILL in the middle of a transfer, an averaging round and a traversal, and check what was
lost once it restarts.

The target serves all blocks of a small random model (timing does not depend on weights).

    python scripts/bench_faults.py --out bench-out/faults.json

Writes JSON and a PNG (honest p99 under attack against idle, per scenario) and prints one
summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402

sys.path.insert(0, str(ROOT))

from spheroid_p2p.errors import code_name  # noqa: E402
from spheroid_p2p.ml.block import BlockDenoiser  # noqa: E402
from spheroid_p2p.ml.checkpoint import save_block  # noqa: E402
from spheroid_p2p.ml.config import ModelConfig  # noqa: E402
from spheroid_p2p.node.launcher import NodeProcess, wait_for  # noqa: E402
from spheroid_p2p.testing import tiny_trainer_args  # noqa: E402
from spheroid_p2p.testing.hostile import (  # noqa: E402
    HostilePeer,
    crafted_record,
    foreign_shard_delta,
    zstd_bomb,
)
from spheroid_p2p.wire.codec import Envelope  # noqa: E402
from spheroid_p2p.wire.control import Ping  # noqa: E402
from spheroid_p2p.wire.gossip import GossipDigest, GossipRecords, RelayedRecord  # noqa: E402
from spheroid_p2p.wire.message import MessageType  # noqa: E402
from spheroid_p2p.wire.signing import KeyPair, PeerId  # noqa: E402
from spheroid_p2p.wire.status import StatusRequest, StatusResponse  # noqa: E402
from spheroid_p2p.wire.tensors import chunk_digest  # noqa: E402
from spheroid_p2p.wire.traversal import (  # noqa: E402
    Hop,
    InlineTensor,
    Traverse,
    TraverseError,
    TraverseResult,
)

MODEL = ModelConfig(context=64, d_model=64, layers_per_block=1)
PROMPT = b"To be, or not to be, that is the question."


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def traverse_request(client: KeyPair, server: bytes, tid: int, m: int = 1) -> Traverse:
    return Traverse(
        traversal_id=tid,
        client=client.peer_id.digest,
        reply_addr="127.0.0.1:9",
        route=(Hop(server, "127.0.0.1:9", 0, MODEL.n_blocks - 1),),
        hop=0,
        config_hash="",
        steps_per_block=m,
        prefix=PROMPT,
        span=0,
        seed=tid,
        temperature=0.0,
        deadline_ms=10_000,
        want_logits=False,
        z=InlineTensor(1, (0,), 0, chunk_digest(b"")),
    )


class Prober:
    """The honest peer: one connection, status and traversal requests, latencies in ms."""

    def __init__(self, addr: str, server: bytes) -> None:
        self.addr, self.server = addr, server
        self.peer = HostilePeer(capabilities=())  # a client: the node gossips nothing to it
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.sent_at: dict[int, float] = {}
        self.ids = iter(range(1, 10**9))

    async def start(self) -> None:
        await self.peer.connect(self.addr)
        self.peer.on_message = self._on_message

    def _on_message(self, envelope: Envelope) -> None:
        msg = envelope.message
        rid = None
        if isinstance(msg, StatusResponse):
            rid = msg.request_id
        elif isinstance(msg, TraverseResult | TraverseError):
            rid = msg.traversal_id
        fut = self.waiting.pop(rid, None) if rid is not None else None
        if fut is not None and not fut.done():
            ok = not isinstance(msg, TraverseError)
            fut.set_result((time.perf_counter() - self.sent_at.pop(rid)) * 1000 if ok else -1.0)

    async def _ask(self, kind: str, timeout_s: float = 5.0) -> float | None:
        rid = next(self.ids)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.sent_at[rid] = time.perf_counter()
        if kind == "status":
            self.peer.send(StatusRequest(request_id=rid))
        else:
            self.peer.send(traverse_request(self.peer.key, self.server, rid))
        try:
            value = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            self.waiting.pop(rid, None)
            return None
        return value if value >= 0 else None

    async def measure(self, seconds: float) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {"status": [], "traverse": []}
        end = time.monotonic() + seconds

        async def loop(kind: str, every: float) -> None:
            while time.monotonic() < end:
                out[kind].append(await self._ask(kind))
                await asyncio.sleep(every)

        # an honest client's pace: status 4/s (under its 5/s bucket), traversals 10/s
        await asyncio.gather(loop("status", 0.25), loop("traverse", 0.1))
        return out


def _stats(samples: list[float | None]) -> dict[str, Any]:
    ok = sorted(s for s in samples if s is not None)
    if not ok:
        return {"n": len(samples), "timeouts": len(samples), "p50_ms": None, "p99_ms": None}
    p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))]
    return {
        "n": len(samples),
        "timeouts": len(samples) - len(ok),
        "p50_ms": round(statistics.median(ok), 2),
        "p99_ms": round(p99, 2),
    }


# -- attackers: each runs until ``end`` and returns what it was answered -----------------------
Attack = Callable[[str, bytes, float], Awaitable[Counter[str]]]


async def _reconnecting(
    addr: str, end: float, frames: Callable[[HostilePeer], list[bytes]], handshake: bool = True
) -> Counter[str]:
    """Connect, send the frames, note the close code; again until ``end``."""
    seen: Counter[str] = Counter()
    while time.monotonic() < end:
        peer = HostilePeer()
        try:
            await peer.connect(addr, handshake=handshake)
        except (OSError, TimeoutError):
            seen["connect failed"] += 1
            continue
        for data in frames(peer):
            peer.send_raw(data)
        lost = await peer.wait_closed(timeout_s=max(0.1, min(2.0, end - time.monotonic())))
        seen[code_name(lost.code) if lost is not None else "no close"] += 1
        await peer.close()
    return seen


async def attack_garbage(addr: str, server: bytes, end: float) -> Counter[str]:
    rng = random.Random(0)
    return await _reconnecting(addr, end, lambda p: [rng.randbytes(8192)], handshake=False)


async def attack_oversized(addr: str, server: bytes, end: float) -> Counter[str]:
    return await _reconnecting(addr, end, lambda p: [struct.pack(">I", 0xFFFFFFF0)], False)


async def attack_forged(addr: str, server: bytes, end: float) -> Counter[str]:
    def frames(p: HostilePeer) -> list[bytes]:
        data = bytearray(p.frame(int(MessageType.PING), Ping(nonce=1).to_body()))
        data[-5] ^= 0x01  # inside the signature
        return [bytes(data)]

    return await _reconnecting(addr, end, frames)


async def attack_replay(addr: str, server: bytes, end: float) -> Counter[str]:
    def frames(p: HostilePeer) -> list[bytes]:
        data = p.frame(int(MessageType.PING), Ping(nonce=1).to_body())
        return [data, data]

    return await _reconnecting(addr, end, frames)


async def attack_bad_reply(addr: str, server: bytes, end: float) -> Counter[str]:
    def frames(p: HostilePeer) -> list[bytes]:
        body = dict(traverse_request(p.key, server, 1).to_body(), reply="x")
        return [p.frame(int(MessageType.TRAVERSE), body)]

    return await _reconnecting(addr, end, frames)


async def attack_int8_z(addr: str, server: bytes, end: float) -> Counter[str]:
    def frames(p: HostilePeer) -> list[bytes]:
        body = traverse_request(p.key, server, 1).to_body()
        body["z"] = {"dt": 5, "shape": [4, 4], "c": 0, "h": chunk_digest(bytes(16))}
        return [p.frame(int(MessageType.TRAVERSE), body, bytes(16))]

    return await _reconnecting(addr, end, frames)


async def attack_bomb_pre(addr: str, server: bytes, end: float) -> Counter[str]:
    bomb = zstd_bomb(1 << 20, 256 << 20)

    def frames(p: HostilePeer) -> list[bytes]:
        body = {"id": 9, "i": 0, "n": 1 << 20, "h": bytes(32), "c": 1}
        return [p.frame(int(MessageType.TENSOR_CHUNK), body, bomb)]

    return await _reconnecting(addr, end, frames, handshake=False)


async def attack_bomb_z(addr: str, server: bytes, end: float) -> Counter[str]:
    bomb = zstd_bomb(1 << 20, 256 << 20)

    def frames(p: HostilePeer) -> list[bytes]:
        body = traverse_request(p.key, server, 1).to_body()
        body["z"] = {"dt": 1, "shape": [512, 512], "c": 1, "h": bytes(32)}
        return [p.frame(int(MessageType.TRAVERSE), body, bomb)]

    return await _reconnecting(addr, end, frames)


async def _one_connection(
    addr: str, end: float, act: Callable[[HostilePeer, int], None], every: float = 0.0
) -> Counter[str]:
    """One handshaken connection that calls ``act`` until ``end`` (reconnecting if closed)."""
    seen: Counter[str] = Counter()
    i = 0
    while time.monotonic() < end:
        peer = HostilePeer()
        await peer.connect(addr)
        peer.on_message = lambda env: seen.update([type(env.message).__name__])
        while time.monotonic() < end and not peer.closed.is_set():
            act(peer, i)
            i += 1
            await peer.drain(max(0.05, end - time.monotonic()))
            await asyncio.sleep(every)
        if peer.lost is not None:
            seen["closed " + code_name(peer.lost.code)] += 1
        await peer.close()
    seen["sent"] = i
    return seen


async def attack_bad_records(addr: str, server: bytes, end: float) -> Counter[str]:
    owner = KeyPair.generate()

    def act(p: HostilePeer, i: int) -> None:
        recs = [
            RelayedRecord(*crafted_record(owner, {"blk": j, "addrs": [":99999"]}), 60_000)
            for j in range(64)
        ]
        p.send(GossipRecords(records=tuple(recs)))

    return await _one_connection(addr, end, act, 0.01)


#: Records of the fresh-key flood, signed before the attack window opens.
FLOOD_RECORDS = 30_000


def prepare_record_flood() -> list[GossipRecords]:
    keys = [KeyPair.generate() for _ in range(FLOOD_RECORDS)]
    recs = [RelayedRecord(*crafted_record(k, {"blk": 1}), 60_000) for k in keys]
    return [GossipRecords(records=tuple(recs[i : i + 256])) for i in range(0, len(recs), 256)]


async def attack_record_flood(addr: str, server: bytes, end: float) -> Counter[str]:
    """30,000 records from 30,000 fresh keys (signed beforehand), as fast as TCP takes them."""
    batches = PREPARED["record_flood"]

    def act(p: HostilePeer, i: int) -> None:
        p.send(batches[i % len(batches)])

    return await _one_connection(addr, end, act, 0.0)


async def attack_empty_digest(addr: str, server: bytes, end: float) -> Counter[str]:
    peer = HostilePeer()
    await peer.connect(addr)
    peer.on_message = lambda env: None
    sent = 0
    while time.monotonic() < end and not peer.closed.is_set():
        peer.send(GossipDigest(entries=()))
        sent += 1
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)
    out = Counter({"sent": sent, "bytes_out": peer.bytes_out, "bytes_in": peer.bytes_in})
    await peer.close()
    return out


async def attack_status_flood(addr: str, server: bytes, end: float) -> Counter[str]:
    return await _one_connection(
        addr, end, lambda p, i: p.send(StatusRequest(request_id=i + 1)), 0.0005
    )


async def attack_traverse_flood(addr: str, server: bytes, end: float) -> Counter[str]:
    """A valid client asking for 64 Euler steps a block (the most the spec allows)."""
    return await _one_connection(
        addr, end, lambda p, i: p.send(traverse_request(p.key, server, i + 1, m=64)), 0.001
    )


async def attack_slow_loris(addr: str, server: bytes, end: float) -> Counter[str]:
    """200 sockets from 127.0.0.2 that never handshake."""
    host, port = addr.rsplit(":", 1)
    socks, seen = [], Counter[str]()
    for _ in range(200):
        s = socket.socket()
        s.setblocking(False)
        s.bind(("127.0.0.2", 0))
        try:
            await asyncio.get_running_loop().sock_connect(s, (host, int(port)))
            socks.append(s)
        except OSError:
            seen["connect failed"] += 1
            s.close()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    for s in socks:  # refused ones got a CLOSE then EOF; held ones still wait (no EOF)
        try:
            while s.recv(65536, socket.MSG_DONTWAIT):
                pass
            seen["refused (EOF)"] += 1
        except BlockingIOError:
            seen["held open"] += 1
        except OSError:
            seen["reset"] += 1
        s.close()
    seen["sockets"] = len(socks)
    return seen


async def attack_conn_flood(addr: str, server: bytes, end: float) -> Counter[str]:
    """Handshake and hang up, as fast as possible, from 127.0.0.3."""
    seen: Counter[str] = Counter()
    host, port = addr.rsplit(":", 1)
    while time.monotonic() < end:
        try:
            _reader, writer = await asyncio.open_connection(
                host, int(port), local_addr=("127.0.0.3", 0)
            )
            writer.write(os.urandom(64))
            writer.close()
            seen["opened"] += 1
        except OSError:
            seen["refused"] += 1
        await asyncio.sleep(0)
    return seen


async def attack_shard_delta(addr: str, server: bytes, end: float) -> Counter[str]:
    """SHARD_DELTA headers (shard 63 of 64) at a node that trains nothing: each refused at
    its header, nothing allocated (a shard stream declares no size)."""

    def act(p: HostilePeer, i: int) -> None:
        p.send(foreign_shard_delta(i + 1, 1, bytes(32)))

    return await _one_connection(addr, end, act, 0.01)


SCENARIOS: dict[str, tuple[Attack, str]] = {
    "garbage bytes": (
        attack_garbage,
        "a random first byte decides: MALFORMED_FRAME / FRAME_TOO_LARGE",
    ),
    "oversized frame": (attack_oversized, "FRAME_TOO_LARGE before reading the body"),
    "forged signature": (attack_forged, "BAD_SIGNATURE"),
    "replayed frame": (attack_replay, "REPLAYED_MESSAGE"),
    "record with bad address": (attack_bad_records, "dropped at decode, counted, not relayed"),
    "TRAVERSE with bad reply": (attack_bad_reply, "MALFORMED_MESSAGE"),
    "TRAVERSE with int8 z": (attack_int8_z, "MALFORMED_MESSAGE"),
    "zstd bomb before handshake": (attack_bomb_pre, "PROTOCOL_VIOLATION, nothing inflated"),
    "zstd bomb in z": (attack_bomb_z, "DECOMPRESSION_FAILED at 1 MiB"),
    "SHARD_DELTA, foreign shard": (
        attack_shard_delta,
        "DELTA_ACK refused at the header, nothing allocated",
    ),
    "30k fresh-key records": (attack_record_flood, "table capped at 1024, flooder evicted first"),
    "empty digests": (attack_empty_digest, "digest answers bounded by the 4/s bucket"),
    "status flood": (attack_status_flood, "beyond 5/s dropped"),
    "TRAVERSE flood, m=64": (attack_traverse_flood, "steps interleaved; OVERLOADED past 8 waiting"),
    "slow loris, 200 sockets": (attack_slow_loris, "4 pending per address, the rest refused"),
    "connection flood": (attack_conn_flood, "pending caps; handshakes fail"),
}


def _checkpoints(tmp: Path) -> list[str]:
    import torch

    torch.manual_seed(0)
    args = []
    for b in range(MODEL.n_blocks):
        path = tmp / f"block{b}.safetensors"
        save_block(path, BlockDenoiser(MODEL, b))
        args += ["--checkpoint", str(path)]
    return args


PREPARED: dict[str, Any] = {}
#: The attacker process starts (and signs what it sends) before its window opens.
PREPARE_S = {"30k fresh-key records": 8.0}
PREPARE_DEFAULT_S = 2.5


def _attack_process(name: str, addr: str, server: bytes, start: float, end: float) -> dict:
    """Runs in a separate, niced process: the attacker never shares the honest peer's event
    loop, and yields the CPU to the node (a remote attacker's CPU is not the node's)."""
    os.nice(19)
    if name == "30k fresh-key records":
        PREPARED["record_flood"] = prepare_record_flood()
    time.sleep(max(0.0, start - time.monotonic()))
    return dict(asyncio.run(SCENARIOS[name][0](addr, server, end)))


async def run_scenario(node: NodeProcess, name: str, attack: Attack, args: Any) -> dict[str, Any]:
    server = PeerId.from_text(node.peer_id).digest
    prober = Prober(node.addr, server)
    await prober.start()
    await prober.measure(0.5)  # warm-up
    idle = await prober.measure(args.idle)
    tries = []
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("spawn")
    for t in range(args.tries):
        before = _hwm_kib(node.proc.pid)  # type: ignore[union-attr]
        start = time.monotonic() + PREPARE_S.get(name, PREPARE_DEFAULT_S)
        end = start + args.attack
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            attacker = loop.run_in_executor(
                pool, _attack_process, name, node.addr, server, start, end
            )
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            under = await prober.measure(args.attack)
            seen = await attacker
        tries.append(
            {
                "answers": dict(seen),
                "alive": node.alive(),
                "rss_growth_mib": round((_hwm_kib(node.proc.pid) - before) / 1024, 1),  # type: ignore[union-attr]
                "status": _stats(under["status"]),
                "traverse": _stats(under["traverse"]),
            }
        )
        print(f"  {name} try {t + 1}: {json.dumps(tries[-1])}", file=sys.stderr, flush=True)
        await asyncio.sleep(0.5)
    await prober.peer.close()
    return {"idle": {k: _stats(v) for k, v in idle.items()}, "tries": tries}


def _summarise(name: str, expected: str, result: dict[str, Any]) -> dict[str, Any]:
    idle, tries = result["idle"], result["tries"]

    def worst(kind: str) -> float | None:
        vals = [t[kind]["p99_ms"] for t in tries if t[kind]["p99_ms"] is not None]
        return max(vals) if vals else None

    out = {"scenario": name, "expected": expected}
    answers: Counter[str] = Counter()
    for t in tries:
        answers.update(t["answers"])
    out["answers"] = dict(answers.most_common(6))
    out["alive"] = all(t["alive"] for t in tries)
    for kind in ("status", "traverse"):
        p99, base = worst(kind), idle[kind]["p99_ms"]
        out[f"{kind}_p99_ms"] = p99
        out[f"{kind}_idle_p99_ms"] = base
        out[f"{kind}_ratio"] = round(p99 / base, 2) if p99 and base else None
        out[f"{kind}_timeouts"] = sum(t[kind]["timeouts"] for t in tries)
    out["rss_growth_mib"] = max(t["rss_growth_mib"] for t in tries)
    out["data_lost"] = "none" if out["alive"] else "node died"
    return out


async def kill_during_transfer(tmp: Path) -> dict[str, Any]:
    """Kill -9 the holder in the middle of a 64 MiB fetch; restart it; the fetch resumes."""
    import torch

    from spheroid_p2p.node.app import running_node
    from spheroid_p2p.node.config import NodeConfig
    from spheroid_p2p.node.store import VersionStore
    from spheroid_p2p.node.transfer import FetchError

    tensors = {f"w{i}": torch.randn(1024, 2048) for i in range(8)}  # 64 MiB
    store = VersionStore(tmp / "holder" / "versions")
    content = store.put(
        KeyPair.generate(), tensors, block=0, version=3, parent=bytes(32), config_hash="t"
    ).manifest.content
    store.close()
    holder = NodeProcess(tmp, "holder", verbose=0).start()
    pid = PeerId.from_text(holder.peer_id)
    out: dict[str, Any] = {"scenario": "kill -9 during a transfer"}
    cfg = NodeConfig(data_dir=tmp / "fetcher", key=tmp / "fetcher.key", compression="none")
    async with running_node(cfg) as node:
        await node.peers.dial(holder.addr)
        signed = await node.transfers.get_manifest(pid, 0, content)
        got: list[int] = []

        def on_chunk(n: int) -> None:
            got.append(n)
            if len(got) == 20:
                holder.kill9()

        try:
            await node.transfers.fetch(signed, [pid], on_chunk=on_chunk, timeout_s=60)
            out["first_fetch"] = "completed before the kill"
        except FetchError as exc:
            out["first_fetch"] = f"failed as expected: {str(exc)[:80]}"
        holder = NodeProcess(tmp, "holder", verbose=0).start()
        await node.peers.dial(holder.addr)
        result = await node.transfers.fetch(signed, [pid], timeout_s=60)
        same = all(torch.equal(result.stored.tensors()[k], v) for k, v in tensors.items())
        out.update(
            resumed_chunks=result.resumed_chunks,
            identical=same,
            data_lost="none" if same and result.resumed_chunks >= 20 else "chunks refetched",
        )
    holder.stop()
    out["alive"] = True
    return out


def kill_during_round(tmp: Path) -> dict[str, Any]:
    """Kill -9 a replica in the middle of its rounds; restart it with the same data dir. Its
    progress is read by status (the version its train record names); the steps lost, for the
    table, from its log."""
    import re

    args = tiny_trainer_args(round_steps=10, round_period=3, round_grace=1)
    node = NodeProcess(tmp, "replica", *args, verbose=1).start()

    def version(proc: NodeProcess) -> int:
        try:
            return max((r.version for r in proc.own_records("train")), default=-1)
        except Exception:  # not answering yet
            return -1

    def last_step(log: str) -> int:
        steps = re.findall(r"block 0 step (\d+)/", log)
        return int(steps[-1]) if steps else 0

    wait_for(lambda: version(node) >= 12, timeout_s=180)
    killed_version = version(node)
    node.kill9()
    killed_at = last_step(node.log())
    offset = len(node.log())  # the restart appends to the same log
    again = NodeProcess(tmp, "replica", *args, verbose=1).start()
    wait_for(lambda: version(again) >= killed_version + 2, timeout_s=180)
    resumed = re.findall(r"resuming training at step (\d+)", again.log()[offset:])
    again.stop()
    step = int(resumed[-1]) if resumed else 0
    return {
        "scenario": "kill -9 during a round",
        "killed_at_step": killed_at,
        "resumed_at_step": step,
        "alive": True,
        "data_lost": f"{max(0, killed_at - step)} local steps (checkpoint every 50)",
    }


async def kill_during_traversal(tmp: Path, ckpt: list[str]) -> dict[str, Any]:
    """Two servers of every block; kill -9 one while a client generates; it fails over."""
    from spheroid_p2p.client.traversal import TraversalClient

    a = NodeProcess(tmp, "sa", *ckpt, "--threads", "1", verbose=0).start()
    b = NodeProcess(tmp, "sb", *ckpt, "--threads", "1", "--bootstrap", a.addr, verbose=0).start()
    from spheroid_p2p.client.status import fetch_status

    for _ in range(300):  # both servers' records of every block reached a (bounded wait)
        view = await fetch_status(a.addr)
        if sum(r.role == "serve" for r in view.records) >= 2 * MODEL.n_blocks:
            break
        await asyncio.sleep(0.2)
    client = TraversalClient(timeout_s=30.0)
    await client.start()
    try:
        first = await client.generate(a.addr, PROMPT, 8)
        victim = b if any(h.startswith(b.peer_id[:12]) for h in client.last_route) else a
        survivor = a if victim is b else b

        async def killer() -> None:
            await asyncio.sleep(0.3)
            victim.kill9()

        report, _ = await asyncio.gather(client.generate(survivor.addr, PROMPT, 64), killer())
        ok = len(first.output if hasattr(first, "output") else b"x") > 0
        out = {
            "scenario": "kill -9 during a traversal",
            "alive": survivor.alive(),
            "retries": report.retries,
            "bytes": 64,
            "completed": ok,
            "data_lost": "none (the client re-sent the traversal on the other server)",
        }
    finally:
        await client.close()
        a.stop()
        b.stop()
    return out


async def poison_a_trainer(tmp: Path, tries: int) -> dict[str, Any]:
    """Against a training replica, ``tries`` times each: an unsolicited NaN version and a 100x
    version from a peer that is a replica, a NaN version from one that is not, and a NaN delta.
    Counts what was installed or persisted (the goal: nothing, in 100 % of tries)."""
    import torch

    from spheroid_p2p.client.status import fetch_status
    from spheroid_p2p.core.plan import shard_bounds
    from spheroid_p2p.node.app import running_node
    from spheroid_p2p.node.config import NodeConfig
    from spheroid_p2p.node.tensor_bridge import flat_bytes
    from spheroid_p2p.node.transfer import FetchError, Payload
    from spheroid_p2p.wire.deltas import ShardDelta

    model = ModelConfig(context=16, d_model=32, layers_per_block=1)
    trainer = NodeProcess(
        tmp, "trainer", *tiny_trainer_args(round_steps=5, round_period=4, round_grace=2), verbose=1
    ).start()
    target = PeerId.from_text(trainer.peer_id)
    sent: list[bytes] = []
    delta_codes: Counter[str] = Counter()
    replica = NodeConfig(
        data_dir=tmp / "evil",
        key=tmp / "evil.key",
        bootstrap=(trainer.addr,),
        train_blocks=(0,),
        model=model,
    )
    outsider = NodeConfig(data_dir=tmp / "out", key=tmp / "out.key", bootstrap=(trainer.addr,))
    try:
        async with running_node(replica) as evil, running_node(outsider) as other:
            for _ in range(600):  # the trainer has published a version and sees our record
                view = await fetch_status(trainer.addr)
                mine = [r for r in view.records if r.owner == evil.key.peer_id.digest]
                if mine and any(r.owner == target.digest and r.version >= 1 for r in view.records):
                    break
                await asyncio.sleep(0.2)

            async def newest() -> tuple[Any, dict[str, torch.Tensor]]:
                recs = [r for r in evil.swarm.owners(0) if r.owner == target and r.content_hash]
                rec = max(recs, key=lambda r: r.version)
                await evil.swarm.connect([target])
                signed = await evil.transfers.get_manifest(target, 0, rec.content_hash)
                return signed, (await evil.transfers.fetch(signed, [target])).stored.tensors()

            for _ in range(tries):
                try:
                    signed, base = await newest()
                except FetchError:
                    continue
                m = signed.manifest
                for node, make in (
                    (evil, lambda v: torch.full_like(v, float("nan"))),
                    (evil, lambda v: v * 100 + 1),
                    (other, lambda v: torch.full_like(v, float("nan"))),
                ):
                    bad = node.store.put(
                        node.key,
                        {k: make(v) for k, v in base.items()},
                        block=0,
                        version=m.version + 2,
                        parent=m.content,
                        config_hash=model.config_hash(),
                        created_ms=m.created_ms,
                        next_deadline_ms=m.next_deadline_ms,
                    )
                    node.transfers.push_manifest(target, bad.signed)
                    sent.append(bad.manifest.content)
                # a NaN delta of shard 0 of the round the trainer's plan announces
                numel = sum(v.numel() for v in base.values())
                shards = max(1, m.shards)
                bounds = shard_bounds(numel, shards)
                nan = torch.full((bounds[1] - bounds[0],), float("nan"), dtype=torch.bfloat16)
                header = ShardDelta(
                    stream_id=evil.transfers.streams.new_id(),
                    block=0,
                    round=m.version + 1,
                    base=m.content,
                    base_version=m.version,
                    shard=0,
                    shards=shards,
                    steps=5,
                    loss=1.0,
                    encoding=2,
                )
                try:
                    ack = await evil.transfers.streams.send_delta(
                        target, header, Payload.of(flat_bytes(nan), 2), 20
                    )
                    delta_codes[code_name(ack.code)] += 1
                except (FetchError, TimeoutError):
                    delta_codes["no answer"] += 1
                await asyncio.sleep(1.0)
            await asyncio.sleep(3.0)
    finally:
        alive = trainer.alive()
        trainer.stop()
    log = trainer.log()
    held = {p.name.split(".")[0] for p in (tmp / "trainer" / "versions").glob("*")}
    persisted = sum(c.hex() in held for c in sent)
    return {
        "scenario": "poisoned versions and NaN deltas to a trainer",
        "versions_pushed": len(sent),
        "versions_refused": log.count("refused: "),
        "versions_persisted": persisted,
        "nan_deltas": dict(delta_codes),
        "alive": alive,
        "data_lost": "none" if persisted == 0 and alive else "POISONED",
    }


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("status_ratio") is not None]
    names = [r["scenario"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["status_ratio"] or 0 for r in rows], 0.4, label="status")
    ax.barh([i + 0.2 for i in y], [r["traverse_ratio"] or 0 for r in rows], 0.4, label="traversal")
    ax.axvline(5, color="red", linestyle="--", label="goal: 5x idle")
    ax.set_yticks(list(y), names)
    ax.set_xlabel("honest peer's p99 latency under attack / idle p99 (same run)")
    ax.set_xscale("log")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "faults.json")
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--attack", type=float, default=3.0, help="seconds per attack")
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of idle baseline")
    parser.add_argument("--only", help="comma-separated scenario names (substrings)")
    parser.add_argument("--skip-kills", action="store_true")
    parser.add_argument(
        "--kills-only",
        action="store_true",
        help="run only the kill -9 scenarios and add them to the rows already in --out",
    )
    parser.add_argument(
        "--poison-only",
        action="store_true",
        help="run only the poisoning scenario and add it to the rows already in --out",
    )
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.poison_only:
        old = json.loads(args.out.read_text()) if args.out.exists() else {}
        rows = [
            r for r in old.get("rows") or old.get("partial", []) if "poison" not in r["scenario"]
        ]
        with tempfile.TemporaryDirectory() as td:
            rows.append(asyncio.run(poison_a_trainer(Path(td), args.tries)))
        args.kills_only, args.skip_kills = True, True
    if args.kills_only and args.out.exists() and not args.poison_only:
        old = json.loads(args.out.read_text())
        rows = [r for r in old.get("rows") or old.get("partial", []) if "status_ratio" in r]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        ckpt = _checkpoints(tmp)
        node = NodeProcess(tmp, "target", *ckpt, "--threads", "1", verbose=1).start()
        try:
            for name, (attack, expected) in SCENARIOS.items():
                if args.kills_only:
                    break
                if args.only and not any(s in name for s in args.only.split(",")):
                    continue
                result = asyncio.run(run_scenario(node, name, attack, args))
                rows.append(_summarise(name, expected, result))
                args.out.write_text(json.dumps({"partial": rows}, indent=2, default=str) + "\n")
                if not node.alive():  # record it, then give the next scenario a node
                    node = NodeProcess(tmp, "target", *ckpt, "--threads", "1", verbose=1).start()
        finally:
            node.stop()
        if not args.skip_kills:
            for kill in (
                lambda: asyncio.run(poison_a_trainer(tmp, args.tries)),
                lambda: asyncio.run(kill_during_transfer(tmp)),
                lambda: kill_during_round(tmp),
                lambda: asyncio.run(kill_during_traversal(tmp, ckpt)),
            ):
                rows.append(kill())
                args.out.write_text(json.dumps({"partial": rows}, indent=2, default=str) + "\n")
    report = {
        "commit": git_commit(),
        "model": MODEL.to_json(),
        "args": vars(args) | {"out": str(args.out)},
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    _plot(rows, args.out.with_suffix(".png"))
    attacks = [r for r in rows if "status_ratio" in r]
    dead = [r["scenario"] for r in rows if not r.get("alive", True)]
    worst = (
        max((max(r["status_ratio"] or 0, r["traverse_ratio"] or 0), r["scenario"]) for r in attacks)
        if attacks
        else (0, "")
    )
    timeouts = sum(r["status_timeouts"] + r["traverse_timeouts"] for r in attacks)
    rss = max((r["rss_growth_mib"] for r in attacks), default=0)
    print(
        f"faults: {len(rows)} scenarios, nodes died: {len(dead)} {dead}; worst honest p99 "
        f"{worst[0]:.1f}x idle ({worst[1]}); honest timeouts {timeouts}; peak RSS growth "
        f"{rss:.0f} MiB -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
