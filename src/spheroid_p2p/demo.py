"""The main job: a local swarm on loopback trains a BlockTrain model, then generates text.

``python -m spheroid_p2p.demo`` starts one node process per block on 127.0.0.1, plus extra
replicas (by default one more trainer of block 0, the highest-noise block). Each node trains
only its own block (its own optimizer, its own data order) on the project's generated corpus
and takes part in that block's averaging rounds (09): replicas of one block send bf16 deltas
to the round's aggregator, which publishes the averaged version. An evaluator process
assembles the current model from the swarm every few seconds (the newest version of every
block, fetched over the network) and the demo prints its CE as it falls, under one progress
bar per node. Once training ends, every node serves its block; the demo scores the final
model and generates text from a prompt through the chain of servers, one traversal per byte,
printing it as it arrives. Everything stops cleanly at the end.

Flags choose the corpus, block count, replicas, steps (the duration) and output length;
``--help`` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

PROGRESS = re.compile(r"block (\d+) step (\d+)/(\d+) loss ([\d.]+)")
#: Seconds between progress lines when the output is not a terminal.
PLAIN_EVERY_S = 15.0
EVAL_LINE = re.compile(r"^eval t=.*$", re.M)


def _replicas(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of block indices: {text!r}") from None


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
    parser.add_argument(
        "--replicas",
        type=_replicas,
        default=[0],
        help="blocks that get one extra trainer each, e.g. 0,1 ('' for none; default 0)",
    )
    parser.add_argument(
        "--steps", type=int, default=500, help="training steps per trainer (the duration)"
    )
    parser.add_argument("--round-steps", type=int, default=50, help="local steps per round")
    parser.add_argument(
        "--eval-every", type=float, default=20.0, help="seconds between CE scores (0: none)"
    )
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
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep keys, logs and checkpoints here (default: a temporary folder, removed at "
        "the end)",
    )
    parser.add_argument(
        "--http",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the evaluator's live swarm page and metrics (default: 127.0.0.1, a free port; "
        "'off': none)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after (s)")
    return parser


def _progress_bars(
    nodes: list,  # type: ignore[type-arg]
    labels: list[str],
    timeout_s: float,
    eval_log: Path | None,
) -> None:
    """One progress bar per node (its training step and loss, from its log) until every node
    serves its trained block (asked by status query); print each CE score the evaluator
    writes meanwhile. Redirected (not a terminal), there are no bars: one line of every
    node's step and loss every ``PLAIN_EVERY_S`` seconds instead."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bars = [
        tqdm(
            total=1,
            desc=label,
            position=i,
            unit="step",
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not tty,
        )
        for i, label in enumerate(labels)
    ]
    said = time.monotonic()
    shown = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            done = 0
            for i, node in enumerate(nodes):
                if not node.alive():
                    raise RuntimeError(f"node {labels[i]} exited; log:\n{node.log()[-2000:]}")
                text = node.log()
                matches = PROGRESS.findall(text)
                if matches:
                    _, step, total, loss = matches[-1]
                    bars[i].total = int(total)
                    bars[i].n = int(step)
                    bars[i].set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
                    bars[i].refresh()
                if node.serving_trained():
                    done += 1
            if eval_log is not None and eval_log.exists():
                lines = EVAL_LINE.findall(eval_log.read_text())
                for line in lines[shown:]:
                    tqdm.write(f"swarm model {line}", file=sys.stderr)
                shown = len(lines)
            if not tty and (time.monotonic() - said >= PLAIN_EVERY_S or done == len(nodes)):
                said = time.monotonic()
                parts = [
                    f"{label} {bar.n}/{bar.total} {bar.postfix or ''}".strip()
                    for label, bar in zip(labels, bars, strict=True)
                ]
                print("training: " + " | ".join(parts), file=sys.stderr, flush=True)
            if done == len(nodes):
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
    from spheroid_p2p.client.traversal import TraversalClient

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
    weights = ""
    if report.qualities:  # the weighted output rule (10 §10.9): what each block counted for
        weights = "; block qualities " + " / ".join(f"{q:.3f}" for q in report.qualities)
    print(
        f"\n\n[{report.traversals} traversals through "
        f"{' -> '.join(report.routes[-1])}, {per:.1f} ms each, {report.seconds:.1f} s{weights}]"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from spheroid_p2p.node.launcher import NodeProcess, evaluator_command, swarm_plan

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spheroid-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    http = None if args.http == "off" else _http_address(args.http)
    data_and_model = [
        "--corpus",
        args.corpus,
        "--context",
        str(args.context),
        "--d-model",
        str(args.d_model),
        "--n-blocks",
        str(args.blocks),
    ]
    common = [
        *data_and_model,
        "--train-steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--threads",
        "1",
        "--record-ttl",
        "30",
        "--round-steps",
        str(args.round_steps),
        "--round-period",
        "30",
        "--round-grace",
        "5",
        "--delta-encoding",
        "bfloat16",
    ]
    try:
        plan = swarm_plan(args.blocks, args.replicas)
    except ValueError as exc:
        raise SystemExit(f"--replicas: {exc}") from None
    replicas = {b: sum(1 for x, _ in plan if x == b) for b in range(args.blocks)}
    labels = [f"block {b}" + (f" replica {r + 1}" if r else "") for b, r in plan]
    print(
        f"spheroid_p2p demo: {len(plan)} nodes on 127.0.0.1 ({args.blocks} blocks"
        f"{', extra replicas of ' + ','.join(map(str, args.replicas)) if args.replicas else ''}"
        f"), {args.steps} steps per trainer, averaging every {args.round_steps} steps; "
        f"logs and checkpoints in {workdir}"
        + ("" if args.workdir else " (removed at the end; --workdir DIR keeps them)"),
        flush=True,
    )
    nodes: list[NodeProcess] = []
    evaluator: subprocess.Popen[bytes] | None = None
    eval_log = workdir / "eval.log" if args.eval_every > 0 else None
    start = time.monotonic()
    try:
        for i, (b, r) in enumerate(plan):
            extra = ["--bootstrap", nodes[0].addr] if nodes else []
            name = f"b{b}" if r == 0 else f"b{b}r{r}"
            nodes.append(
                NodeProcess(
                    workdir,
                    name,
                    *common,
                    "--train-block",
                    str(b),
                    "--min-replicas",
                    str(replicas[b]),
                    "--seed",
                    str(i),
                    *extra,
                    verbose=1,
                ).start()
            )
        if eval_log is not None:
            with open(eval_log, "w") as out:
                command = evaluator_command(
                    nodes[0].addr, data_and_model, args.eval_every, workdir / "eval.jsonl"
                )
                evaluator = subprocess.Popen(
                    [*command, *(["--http", http] if http else [])],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if http:
                print(f"live swarm page: http://{http}/  (metrics: http://{http}/metrics)")
        _progress_bars(nodes, labels, args.timeout, eval_log)
        trained = time.monotonic() - start
        for line in _rounds_summary(workdir, args.blocks):
            print(line, flush=True)
        ce = _score(workdir, args.blocks, args.corpus, args.context)
        print(
            f"\ntrained {args.blocks} blocks in {trained:.0f} s; composed model CE "
            f"{ce:.3f} nats/byte ({ce / 0.6931:.2f} bits/byte; uniform is 5.545)",
            flush=True,
        )
        asyncio.run(_generate(nodes[0].addr, args.prompt, args.bytes, args.temperature))
    finally:
        if evaluator is not None and evaluator.poll() is None:
            evaluator.terminate()
            try:
                evaluator.wait(10)
            except subprocess.TimeoutExpired:
                evaluator.kill()
        for node in nodes:
            node.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"done in {time.monotonic() - start:.0f} s; all nodes stopped", flush=True)
    return 0


def _rounds_summary(workdir: Path, blocks: int) -> list[str]:
    """One line per block: versions published and the most contributors one version had."""
    import json

    lines = []
    for b in range(blocks):
        versions, most = set(), 0
        for path in workdir.glob(f"*/block-{b}.rounds.jsonl"):
            for text in path.read_text().splitlines():
                entry = json.loads(text)
                if entry.get("kind") == "version":
                    versions.add(entry["version"])
                    most = max(most, len(entry.get("contributors", [])))
        lines.append(
            f"averaging: block {b}: {len(versions)} versions published, "
            f"up to {most} contributors per version"
        )
    return lines


def _http_address(addr: str) -> str:
    """HOST:PORT for the evaluator's page; port 0: a port free now, so it can be printed."""
    from spheroid_p2p.net.sockets import parse_addr
    from spheroid_p2p.node.launcher import free_port

    try:
        host, port = parse_addr(addr, allow_any_port=True)
    except ValueError as exc:
        raise SystemExit(f"--http: {exc}") from None
    return f"{host}:{port or free_port(host)}"


if __name__ == "__main__":
    sys.exit(main())
