"""Traversals across real server processes: same bytes as in-process, and failover."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from spheroid_p2p.client.drafts import PromptLookup
from spheroid_p2p.client.traversal import GenerationReport, TraversalClient
from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.checkpoint import load_block, save_block
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.generate import generate
from spheroid_p2p.ml.prefixed import generate_prefixed
from spheroid_p2p.wire.signing import PeerId
from tests.support.swarm import NodeProcess, wait_for

pytestmark = pytest.mark.integration
CFG = ModelConfig(d_model=32, n_heads=2, d_cond=8, context=32, layers_per_block=1)


def _checkpoints(tmp: Path, cfg: ModelConfig) -> list[Path]:
    torch.manual_seed(0)
    paths = []
    for b in range(cfg.n_blocks):
        block = BlockDenoiser(cfg, b)
        with torch.no_grad():
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        path = tmp / f"block{b}.safetensors"
        save_block(path, block)
        paths.append(path)
    return paths


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.stop()


def _serve(nodes: list[NodeProcess], tmp: Path, name: str, ckpt: Path) -> NodeProcess:
    extra = ("--bootstrap", nodes[0].addr) if nodes else ()
    node = NodeProcess(tmp, name, "--checkpoint", str(ckpt), *extra, verbose=1).start()
    nodes.append(node)
    return node


def _serving(node: NodeProcess, count: int) -> bool:
    return sum(1 for r in node.status().records if r.role == "serve" and not r.departed) >= count


def _remote(
    addr: str,
    prompt: bytes,
    n: int,
    dtype: str = "float32",
    rule: str = "known",
    drafter: PromptLookup | None = None,
    temperature: float = 0.0,
) -> GenerationReport:
    async def run() -> GenerationReport:
        client = TraversalClient(timeout_s=10.0, max_retries=6)
        await client.start()
        try:
            return await client.generate(
                addr,
                prompt,
                n,
                seed=5,
                z_dtype=dtype,
                rule=rule,
                drafter=drafter,
                temperature=temperature,
            )
        finally:
            await client.close()

    return asyncio.run(run())


def test_chain_of_four_servers_matches_the_in_process_sampler(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """fp32 transport reproduces in-process generation byte for byte, under both prefix rules
    (the known-prefix rule past the context, with every server reusing its session's rows);
    fp16 is measured."""
    paths = _checkpoints(tmp_path, CFG)
    for b, path in enumerate(paths):
        _serve(nodes, tmp_path, f"s{b}", path)
    wait_for(lambda: _serving(nodes[0], 4), timeout_s=30)
    blocks = {b: load_block(p) for b, p in enumerate(paths)}
    noisy = _remote(nodes[0].addr, b"Day 1.", 24, rule="noisy")
    assert noisy.output == generate(blocks, b"Day 1.", 24, seed=5) and not noisy.reused
    expected = generate_prefixed(blocks, b"Day 1.", 40, seed=5)
    report = _remote(nodes[0].addr, b"Day 1.", 40)
    assert report.output == expected
    assert report.traversals == 40 and len(report.routes[-1]) == 4
    assert report.reused[0] == (0, 0, 0, 0)  # the first traversal computes the prompt
    assert report.reused[1] == (5, 5, 5, 5)  # then every server reuses its session
    assert (0, 0, 0, 0) in report.reused[20:]  # the window restarted past the context
    # speculative traversals (10 §10.8): the same bytes, greedy and sampled, fewer traversals
    prompt = b"ab ab ab ab ab"
    for temperature in (0.0, 0.9):
        fast = _remote(nodes[0].addr, prompt, 40, drafter=PromptLookup(), temperature=temperature)
        slow = generate_prefixed(blocks, prompt, 40, seed=5, temperature=temperature)
        assert fast.output == slow and fast.drafted > 0, (fast.output, slow)
        assert fast.traversals <= 40
    expected = expected[:24]
    fp16 = _remote(nodes[0].addr, b"Day 1.", 24, dtype="float16").output
    agreement = sum(a == b for a, b in zip(fp16, expected, strict=True)) / len(expected)
    print(f"fp16 transport agreement with fp32: {agreement:.2%}")
    assert len(fp16) == 24

    async def two_at_once() -> list[GenerationReport]:
        async def one(prompt: bytes) -> GenerationReport:
            client = TraversalClient(timeout_s=20.0)
            await client.start()
            try:
                return await client.generate(nodes[1].addr, prompt, 12, seed=5)
            finally:
                await client.close()

        return list(await asyncio.gather(one(b"Day 1."), one(b"Day 2.")))

    first, second = asyncio.run(two_at_once())  # concurrent traversals share the servers
    assert first.output == generate_prefixed(blocks, b"Day 1.", 12, seed=5)
    assert second.output == generate_prefixed(blocks, b"Day 2.", 12, seed=5)
    # every hop reported its times (10 §10.3.1)
    assert all(len(hops) == 4 for hops in report.hop_timings)
    assert all(h["compute_ms"] > 0 and h["queued_ms"] >= 0 for h in report.hop_timings[0])


def test_a_client_no_server_can_dial_gets_its_answer_over_its_own_connection(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """The client names a reply address where nothing listens: the last hop answers over
    the connection the client opened to it before the first traversal. And every server
    holds a connection to the next block's server before any traversal (warm next hops)."""
    paths = _checkpoints(tmp_path, CFG)
    for b, path in enumerate(paths):
        _serve(nodes, tmp_path, f"s{b}", path)
    wait_for(lambda: _serving(nodes[0], 4), timeout_s=30)

    def warm() -> bool:
        ids = [PeerId.from_text(n.peer_id).digest for n in nodes]
        return all(
            ids[i + 1] in {c.peer for c in node.status().connections}
            for i, node in enumerate(nodes[:-1])
        )

    wait_for(warm, timeout_s=30)

    async def run() -> GenerationReport:
        client = TraversalClient(timeout_s=10.0, max_retries=0, advertise="127.0.0.1:9")
        await client.start()
        try:
            return await client.generate(nodes[0].addr, b"Day 1.", 6, seed=5)
        finally:
            await client.close()

    report = asyncio.run(run())
    blocks = {b: load_block(p) for b, p in enumerate(paths)}
    assert report.output == generate_prefixed(blocks, b"Day 1.", 6, seed=5)
    assert report.retries == 0
    assert report.connect_ms[0] > 0 and all(ms == 0 for ms in report.connect_ms[1:])


def test_a_killed_hop_is_routed_around_and_the_output_is_unchanged(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """Two servers hold block 2; kill -9 the one in use mid-generation: the request
    completes through the other, with the same bytes as in-process generation (the new
    server has no session: the traversal's window replays the prefix to it)."""
    paths = _checkpoints(tmp_path, CFG)
    for b, path in enumerate(paths):
        _serve(nodes, tmp_path, f"s{b}", path)
    spare = _serve(nodes, tmp_path, "s2b", paths[2])
    wait_for(lambda: _serving(nodes[0], 5), timeout_s=30)
    blocks = {b: load_block(p) for b, p in enumerate(paths)}
    expected = generate_prefixed(blocks, b"Day 7.", 30, seed=5)
    by_short = {n.peer_id[:12]: n for n in (nodes[2], spare)}
    killed: list[str] = []

    async def run() -> GenerationReport:
        client = TraversalClient(timeout_s=5.0, max_retries=6)
        produced: list[bytes] = []

        def watch(piece: bytes) -> None:
            produced.append(piece)
            if len(produced) == 8 and not killed:
                victim = next(by_short[p] for p in client.last_route if p in by_short)
                victim.kill9()
                killed.append(victim.name)

        await client.start()
        try:
            return await client.generate(nodes[0].addr, b"Day 7.", 30, seed=5, on_bytes=watch)
        finally:
            await client.close()

    report = asyncio.run(run())
    assert killed, "the kill never happened"
    assert report.output == expected
    assert report.retries >= 1
    after = report.reused[8:]
    assert after[0][2] == 0 and after[1][2] > 0  # the spare rebuilt its session, then reused


def test_the_autoregressive_pipeline_matches_the_in_process_model(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """Baseline (A) split by layers over 4 servers with KV caches produces the in-process
    model's bytes, one traversal per byte."""
    from spheroid_p2p.ml.baselines import ARTransformer
    from spheroid_p2p.ml.checkpoint import save_ar

    model = ARTransformer(CFG, n_layers=8, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path / "ar.safetensors"
    save_ar(path, model)
    for stage in range(4):
        extra = ("--bootstrap", nodes[0].addr) if nodes else ()
        nodes.append(
            NodeProcess(
                tmp_path,
                f"ar{stage}",
                "--ar-checkpoint",
                str(path),
                "--ar-stage",
                f"{stage}/4",
                *extra,
                verbose=1,
            ).start()
        )
    wait_for(lambda: _serving(nodes[0], 4), timeout_s=30)
    expected = model.generate(b"Hello", 20)

    async def run() -> GenerationReport:
        client = TraversalClient(timeout_s=10.0)
        await client.start()
        try:
            return await client.generate_ar(nodes[0].addr, b"Hello", 20)
        finally:
            await client.close()

    report = asyncio.run(run())
    assert report.output == expected
    assert report.traversals == 20 and len(report.routes[-1]) == 4


def test_a_span_model_is_served_by_the_rule_it_supports(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """The client asks a span model for the known-prefix rule (its default), learns by code
    (SPAN_UNSUPPORTED) that the model emits spans, and generates with the rule of 10 §10.4:
    the bytes of in-process span generation."""
    cfg = CFG.replace(layout="P", span=4)
    paths = _checkpoints(tmp_path, cfg)
    args = [a for p in paths for a in ("--checkpoint", str(p))]
    nodes.append(NodeProcess(tmp_path, "spans", *args, verbose=1).start())
    wait_for(lambda: _serving(nodes[0], 4), timeout_s=30)
    blocks = {b: load_block(p) for b, p in enumerate(paths)}
    report = _remote(nodes[0].addr, b"Day 3.", 12)
    assert report.output == generate(blocks, b"Day 3.", 12, seed=5)
    assert report.traversals == 3 and not report.reused


def test_generate_command_with_a_draft(nodes: list[NodeProcess], tmp_path: Path) -> None:
    """`python -m spheroid_p2p.generate --draft lookup` as a user runs it: the text, then a
    summary with bytes per traversal; a drafter that needs a corpus without one is one line."""
    import subprocess
    import sys

    paths = _checkpoints(tmp_path, CFG)
    args = [a for p in paths for a in ("--checkpoint", str(p))]
    nodes.append(NodeProcess(tmp_path, "all", *args, verbose=1).start())
    wait_for(lambda: _serving(nodes[0], 4), timeout_s=30)
    command = [sys.executable, "-m", "spheroid_p2p.generate", "--peer", nodes[0].addr]
    done = subprocess.run(
        [*command, "--prompt", "ab ab ab", "--bytes", "20", "--draft", "lookup"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"ab ab ab") and b"bytes per traversal" in done.stderr
    bad = subprocess.run(
        [*command, "--prompt", "x", "--draft", "ngram"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        b"error: the ngram drafter needs a corpus of text (--draft-corpus PATH)"
    ]


def test_a_killed_first_hop_is_routed_around_at_once(
    nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """Two servers hold block 0, the client's first hop; kill -9 the one in use: the client
    sees its connection end without a goodbye and re-routes at once, not after the
    traversal's 30 s deadline, and the bytes are those of in-process generation."""
    import time

    paths = _checkpoints(tmp_path, CFG)
    for b, path in enumerate(paths):
        _serve(nodes, tmp_path, f"s{b}", path)
    spare = _serve(nodes, tmp_path, "s0b", paths[0])
    wait_for(lambda: _serving(nodes[0], 5), timeout_s=30)
    blocks = {b: load_block(p) for b, p in enumerate(paths)}
    by_short = {n.peer_id[:12]: n for n in (nodes[0], spare)}
    killed: list[float] = []

    async def run() -> GenerationReport:
        client = TraversalClient(timeout_s=30.0, max_retries=6)
        produced: list[bytes] = []

        def watch(piece: bytes) -> None:
            produced.append(piece)
            if len(produced) == 6 and not killed:
                by_short[client.last_route[0]].kill9()
                killed.append(time.monotonic())

        await client.start()
        try:
            return await client.generate(nodes[1].addr, b"Day 9.", 16, seed=5, on_bytes=watch)
        finally:
            await client.close()

    report = asyncio.run(run())
    assert killed, "the kill never happened"
    assert report.output == generate_prefixed(blocks, b"Day 9.", 16, seed=5)
    assert report.retries >= 1
    assert time.monotonic() - killed[0] < 15, "the client waited for the traversal's deadline"
