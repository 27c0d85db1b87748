"""The main job: a local swarm on loopback trains a BlockTrain model, then generates text.

``python -m spheroid_p2p.demo`` starts one node process per block on 127.0.0.1. Each node
trains only its own block (its own optimizer, its own data order) on the project's generated
corpus, shows its progress, and once done serves its block; the nodes find each other by
gossip. The demo then scores the composed model (CE of the one-traversal sampler on held-out
windows) and generates text from a prompt through the chain of servers, one traversal per
byte, printing it as it arrives. Everything stops cleanly at the end.

Flags choose the corpus, block count, steps and output length; ``--help`` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

PROGRESS = re.compile(r"block (\d+) step (\d+)/(\d+) loss ([\d.]+)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spheroid_p2p.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--corpus",
        default="embedded",
        help="text file or WikiText folder ('embedded': generated, default)",
    )
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500, help="training steps per block")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", default="Day 12. Weather: ")
    parser.add_argument("--bytes", type=int, default=160, help="bytes to generate")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature (0: argmax; seeded, so runs repeat)",
    )
    parser.add_argument("--workdir", type=Path, help="keep keys, logs and checkpoints here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after (s)")
    return parser


def _progress_bars(nodes: list, blocks: int, timeout_s: float) -> None:  # type: ignore[type-arg]
    """Follow each node's log and draw one progress bar per block until all are served."""
    from tqdm import tqdm

    bars = [
        tqdm(
            total=1,
            desc=f"block {b}",
            position=b,
            unit="step",
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        for b in range(blocks)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            done = 0
            for b, node in enumerate(nodes):
                if not node.alive():
                    raise RuntimeError(f"node for block {b} exited; log:\n{node.log()[-2000:]}")
                text = node.log()
                matches = PROGRESS.findall(text)
                if matches:
                    _, step, total, loss = matches[-1]
                    bars[b].total = int(total)
                    bars[b].n = int(step)
                    bars[b].set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
                    bars[b].refresh()
                if "serving blocks" in text:
                    done += 1
            if done == blocks:
                return
            time.sleep(0.5)
        raise TimeoutError(f"training did not finish within {timeout_s:.0f} s")
    finally:
        for bar in bars:
            bar.close()


def _score(workdir: Path, blocks: int, corpus_name: str, context: int) -> float:
    """CE of the composed model by the one-traversal sampler on 32 held-out windows."""
    from spheroid_p2p.ml.checkpoint import load_block
    from spheroid_p2p.ml.data import load_corpus
    from spheroid_p2p.ml.evaluate import evaluate_sampler

    model = [load_block(workdir / f"b{b}" / f"block-{b}.safetensors") for b in range(blocks)]
    windows = load_corpus(corpus_name).eval_windows(context, 32)
    return evaluate_sampler(model, windows, seeds=(0,)).ce_sampler


async def _generate(addr: str, prompt: str, n: int, temperature: float) -> None:
    from spheroid_p2p.node.client import TraversalClient

    client = TraversalClient(timeout_s=30.0)
    print(f"\n{prompt}", end="", flush=True)

    def show(piece: bytes) -> None:
        print(piece.decode("utf-8", errors="replace"), end="", flush=True)

    await client.start()
    try:
        report = await client.generate(
            addr, prompt.encode(), n, temperature=temperature, on_bytes=show
        )
    finally:
        await client.close()
    per = sum(report.traversal_ms) / max(1, len(report.traversal_ms))
    print(
        f"\n\n[{report.traversals} traversals through "
        f"{' -> '.join(report.routes[-1])}, {per:.1f} ms each, {report.seconds:.1f} s]"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from spheroid_p2p.node.launcher import NodeProcess

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spheroid-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    common = [
        "--corpus",
        args.corpus,
        "--train-steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--context",
        str(args.context),
        "--d-model",
        str(args.d_model),
        "--n-blocks",
        str(args.blocks),
        "--threads",
        "1",
        "--record-ttl",
        "30",
    ]
    print(
        f"spheroid_p2p demo: {args.blocks} nodes on 127.0.0.1, one block each, "
        f"{args.steps} steps per block; logs and checkpoints in {workdir}",
        flush=True,
    )
    nodes: list[NodeProcess] = []
    start = time.monotonic()
    try:
        for b in range(args.blocks):
            extra = ["--bootstrap", nodes[0].addr] if nodes else []
            nodes.append(
                NodeProcess(
                    workdir, f"b{b}", *common, "--train-block", str(b), *extra, verbose=1
                ).start()
            )
        _progress_bars(nodes, args.blocks, args.timeout)
        trained = time.monotonic() - start
        ce = _score(workdir, args.blocks, args.corpus, args.context)
        print(
            f"\ntrained {args.blocks} blocks in {trained:.0f} s; composed model CE "
            f"{ce:.3f} nats/byte ({ce / 0.6931:.2f} bits/byte; uniform is 5.545)",
            flush=True,
        )
        asyncio.run(_generate(nodes[0].addr, args.prompt, args.bytes, args.temperature))
    finally:
        for node in nodes:
            node.stop()
    print(f"done in {time.monotonic() - start:.0f} s; all nodes stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
