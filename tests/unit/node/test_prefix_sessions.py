"""Known-prefix traversals at servers (node.prefix_sessions): the bytes of in-process
generation whatever happens to the sessions: hops split over servers, sessions evicted, a
server replaced mid-generation (failover replays the window). Each answer says what it reused."""

from __future__ import annotations

import asyncio
import contextlib
import math

import torch

from spheroid_p2p.core.sessions import SessionLimits
from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.combine import Combination
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.prefixed import generate_prefixed, pick_rows
from spheroid_p2p.ml.windows import prefix_window
from spheroid_p2p.node.prefix_sessions import KnownPrefixRunner
from spheroid_p2p.node.tensor_bridge import flat_bytes
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.traversal import (
    COMBINE_WEIGHTED,
    PREFIX_KNOWN,
    Hop,
    InlineTensor,
    Traverse,
)

CFG = ModelConfig(d_model=32, n_heads=2, d_cond=8, context=16, layers_per_block=1)
CLIENT = b"c" * 32


def _blocks() -> dict[int, BlockDenoiser]:
    torch.manual_seed(1)
    out = {}
    for b in range(CFG.n_blocks):
        block = BlockDenoiser(CFG, b)
        with torch.no_grad():
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        block.quality = (2.3, 2.1, None, 2.2)[b]  # one block does not know its own
        out[b] = block.eval()
    return out


def _req(window: bytes, seed: int, session: int) -> Traverse:
    hop = Hop(b"s" * 32, "127.0.0.1:1", 0, 3)
    return Traverse(
        traversal_id=1,
        client=CLIENT,
        reply_addr="127.0.0.1:2",
        route=(hop,),
        hop=0,
        config_hash="",
        steps_per_block=1,
        prefix=window,
        span=0,
        seed=seed,
        temperature=0.0,
        deadline_ms=1000,
        want_logits=False,
        z=InlineTensor(1, (0,), 0, chunk_digest(b"")),
        prefix_rule=PREFIX_KNOWN,
        prefix_seed=3,
        session=session,
        combine=COMBINE_WEIGHTED,
    )


def _generate(
    blocks: dict[int, BlockDenoiser], servers: list[KnownPrefixRunner], n: int, every: int = 0
) -> tuple[bytes, list[tuple[int, int]]]:
    """Two hops (blocks 0-1 on servers[0], 2-3 on servers[1]); every ``every`` bytes the
    second hop's server is replaced by a fresh one."""
    out, reused = b"", []
    second = servers[1]
    for i in range(n):
        if every and i and i % every == 0:
            second = KnownPrefixRunner()
        req = _req(prefix_window(b"Day 1." + out, CFG.context), 3 + i, 77)
        mix = Combination(COMBINE_WEIGHTED)
        z, _, r0 = servers[0].run(blocks, req, 0, 1, None, None, mix)
        raw = bytes(flat_bytes(z[0].float()))
        assert mix.acc is not None and mix.acc.dtype == torch.float16  # lp, as the wire has it
        assert mix.qualities == (2.3, 2.1)  # lq
        # the next hop rebuilds the state from the bytes of lp and the numbers of lq
        acc = torch.frombuffer(bytearray(mix.lp_bytes()), dtype=torch.float16).view(1, -1, 256)
        onward = Combination(COMBINE_WEIGHTED, acc, mix.qualities)
        _, logits, r1 = second.run(blocks, req, 2, 3, raw, None, onward)
        assert onward.qualities == (2.3, 2.1, math.log(256), 2.2)
        assert logits is not None
        out += pick_rows(logits, 0.0, 3 + i)
        reused.append((r0, r1))
    return out, reused


def test_two_hops_with_sessions_give_the_in_process_bytes() -> None:
    blocks = _blocks()
    expected = generate_prefixed(blocks, b"Day 1.", 30, seed=3)
    out, reused = _generate(blocks, [KnownPrefixRunner(), KnownPrefixRunner()], 30)
    assert out == expected
    assert reused[0] == (0, 0)  # the first traversal computes the prompt
    assert reused[1] == (5, 5)  # then one new known row per traversal
    assert any(r == (0, 0) for r in reused[11:])  # the window restarted past the context


def test_evicted_sessions_and_a_replaced_server_recompute_the_same_bytes() -> None:
    blocks = _blocks()
    expected = generate_prefixed(blocks, b"Day 1.", 20, seed=3)
    tiny = KnownPrefixRunner(
        SessionLimits(max_sessions=4, max_per_client=4, max_bytes=1, idle_s=60)
    )
    out, reused = _generate(blocks, [tiny, KnownPrefixRunner()], 20, every=7)
    assert out == expected
    assert all(r0 == 0 for r0, _ in reused)  # nothing fits: every traversal recomputes
    assert tiny.table.evicted == 20
    assert reused[7][1] == 0 and reused[8][1] > 0  # the new server rebuilt from the window


def test_idle_sessions_are_dropped_when_they_go_idle_not_at_the_next_traversal() -> None:
    """The node's expiry task sleeps to the table's next deadline (or until a traversal keeps
    a session) and drops what went idle, with no traversal touching the table."""
    blocks = _blocks()
    runner = KnownPrefixRunner(
        SessionLimits(max_sessions=8, max_per_client=8, max_bytes=1 << 30, idle_s=0.3)
    )

    async def main() -> tuple[int, int]:
        task = asyncio.create_task(runner.expire_when_idle())
        await asyncio.sleep(0.05)  # waiting: no session yet
        req = _req(prefix_window(b"Day 1.", CFG.context), 3, 77)
        await asyncio.to_thread(runner.run, blocks, req, 0, 3, None)  # keeps session 77
        kept = len(runner.table)
        await asyncio.sleep(1.0)  # idle for 0.3 s, and nothing touches the table
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return kept, len(runner.table)

    kept, left = asyncio.run(main())
    assert kept == 1 and left == 0
    assert runner.table.evicted == 1 and runner.on_kept is None
