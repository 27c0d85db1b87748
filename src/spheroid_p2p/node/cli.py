"""Command line of a spheroid_p2p peer: ``python -m spheroid_p2p.node [command] ...``.

Commands:

* ``run`` (the default when flags are given): a long-lived peer;
* ``status --peer HOST:PORT``: print a running peer's view of the swarm;
* ``id``: create this peer's key on first use and print its peer id.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from spheroid_p2p import __version__
from spheroid_p2p.core.gossip_params import GossipParams
from spheroid_p2p.errors import SpheroidError
from spheroid_p2p.identity import load_or_create_identity
from spheroid_p2p.ml.config import ModelConfig

__all__ = ["build_parser", "main"]

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_KEY = Path("spheroid-node.key")


def _blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of block indices: {text!r}") from None


def _addrs(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", type=int, help="model context (bytes)")
    parser.add_argument("--d-model", type=int, help="model width")
    parser.add_argument("--layers-per-block", type=int)
    parser.add_argument("--n-blocks", type=int, help="blocks in the model")


def _model(args: argparse.Namespace, model: ModelConfig | None = None) -> ModelConfig:
    model = model or ModelConfig()
    for name in ("context", "d_model", "layers_per_block", "n_blocks"):
        if getattr(args, name) is not None:
            model = replace(model, **{name: getattr(args, name)})
    return model


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="python -m spheroid_p2p.node",
        description="A spheroid_p2p peer: trains and serves blocks of a BlockTrain model "
        "together with other peers, with no central server.",
    )
    parser.add_argument("--version", action="version", version=f"spheroid_p2p {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run a peer until SIGINT/SIGTERM")
    run.add_argument("--config", type=Path, help="TOML file; flags override it")
    run.add_argument("--listen", help="HOST:PORT to accept connections on (port 0: any)")
    run.add_argument("--advertise", help="HOST:PORT others should dial (default: --listen)")
    run.add_argument(
        "--bootstrap",
        type=_addrs,
        action="extend",
        default=None,
        help="HOST:PORT[,...] of peers to join; none: start a new swarm",
    )
    run.add_argument("--key", type=Path, help=f"identity key file (default {DEFAULT_KEY})")
    run.add_argument("--data-dir", type=Path, help="where checkpoints and state live")
    run.add_argument(
        "--serve-block",
        dest="serve_blocks",
        type=_blocks,
        help="block indices this peer announces it serves, e.g. 0,1",
    )
    run.add_argument(
        "--train-block",
        dest="train_blocks",
        type=_blocks,
        help="block indices this peer announces it trains",
    )
    run.add_argument(
        "--checkpoint",
        dest="checkpoints",
        type=Path,
        action="append",
        help="safetensors block checkpoint to load and serve (repeatable)",
    )
    run.add_argument(
        "--corpus",
        help="train on this text file or WikiText folder ('embedded': the project's own corpus)",
    )
    run.add_argument("--train-steps", type=int, help="optimizer steps for each trained block")
    run.add_argument("--batch", dest="batch_size", type=int, help="training batch size")
    _model_flags(run)
    run.add_argument("--seed", type=int)
    run.add_argument("--threads", type=int, help="torch threads (0: default)")
    run.add_argument(
        "--ar-checkpoint",
        type=Path,
        help="serve a stage of this autoregressive baseline model (safetensors)",
    )
    run.add_argument("--ar-stage", help="which stage of --ar-checkpoint, as S/N (e.g. 0/4)")
    run.add_argument("--max-connections", type=int)
    run.add_argument(
        "--plaintext",
        action="store_true",
        help="offer no encrypted session (sessions are encrypted by default; this is for "
        "measuring their cost, or for a peer that cannot)",
    )
    run.add_argument(
        "--tcp-congestion",
        help="TCP congestion control for this node's connections (e.g. cubic, reno, bbr; "
        "default: the host's)",
    )
    run.add_argument(
        "--warm-next-hops",
        type=int,
        help="connections kept open to servers of the next block (default 2; 0: dial on demand)",
    )
    run.add_argument(
        "--keep-hot",
        dest="keep_hot_s",
        type=float,
        help="seconds a connection that carried a traversal is kept out of TCP's idle "
        "restart by small pings (default 10; 0: off)",
    )
    run.add_argument("--record-ttl", type=float, help="seconds a gossiped record lives")
    run.add_argument("--gossip-interval", type=float, help="seconds between anti-entropy rounds")
    run.add_argument("--fanout", type=int, help="peers each change is pushed to")
    run.add_argument("--protocol-versions", type=_blocks, help=argparse.SUPPRESS)
    rounds = run.add_argument_group("averaging rounds (several replicas of one block)")
    rounds.add_argument(
        "--round-steps", type=int, help="local steps per averaging round (0: train alone)"
    )
    rounds.add_argument(
        "--round-period",
        dest="round_period_s",
        type=float,
        help="seconds from one version to the next round's deadline",
    )
    rounds.add_argument(
        "--round-grace",
        dest="round_grace_s",
        type=float,
        help="seconds before the next aggregator in line takes over",
    )
    rounds.add_argument(
        "--round-shards",
        type=int,
        help="shards per averaging round, one aggregator each (default 64: one per replica; "
        "1: a single aggregator)",
    )
    rounds.add_argument(
        "--allow-peers",
        type=Path,
        help="a private swarm: file of peer ids (one 'sp1...' per line, '#' comments) that "
        "may train, average and publish versions of this node's blocks",
    )
    rounds.add_argument(
        "--min-replicas",
        type=int,
        help="wait until this many replicas of the block (this one included) are live "
        "before the first step",
    )
    rounds.add_argument(
        "--replica-wait",
        dest="replica_wait_s",
        type=float,
        help="longest wait for --min-replicas, in seconds; then train with whoever is there",
    )
    rounds.add_argument(
        "--delta-encoding",
        choices=("float32", "float16", "bfloat16", "int8"),
        help="how deltas travel (lossy ones use error feedback)",
    )
    rounds.add_argument(
        "--compression",
        choices=("auto", "none", "zstd", "shuffle"),
        help="bulk transfer compression (auto: chosen from the measured link rate)",
    )
    rounds.add_argument(
        "--norm-ratio",
        type=float,
        help="reject a delta whose norm is over this many times the median of the others",
    )

    ev = commands.add_parser(
        "eval",
        help="assemble the current model from the swarm (newest version of every block) "
        "and print its CE_sampler, once or every few seconds",
    )
    ev.add_argument(
        "--bootstrap", type=_addrs, required=True, help="HOST:PORT[,...] of peers to join"
    )
    ev.add_argument("--corpus", required=True, help="text file, WikiText folder or 'embedded'")
    _model_flags(ev)
    ev.add_argument("--windows", type=int, default=64, help="evaluation windows")
    ev.add_argument("--every", type=float, default=30.0, help="seconds between scores")
    ev.add_argument("--count", type=int, default=1, help="how many scores")
    ev.add_argument("--out", type=Path, help="append each score as a JSON line here")
    ev.add_argument("--timeout", type=float, default=300.0, help="wait this long for blocks")
    ev.add_argument("--data-dir", type=Path, help="where fetched versions go (default: temp)")
    ev.add_argument(
        "--listen",
        help="HOST:PORT to listen on (default: the interface that reaches --bootstrap, any port)",
    )
    ev.add_argument("--advertise", help="HOST:PORT others should dial (default: --listen)")

    status = commands.add_parser("status", help="print a running peer's view of the swarm")
    status.add_argument("--peer", required=True, help="HOST:PORT of the peer to ask")
    status.add_argument("--timeout", type=float, default=10.0)

    ident = commands.add_parser("id", help="print this peer's id (creates the key on first use)")
    ident.add_argument("--key", type=Path, default=DEFAULT_KEY, help="key file (PEM, mode 0600)")
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity <= 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (nodes do), the standard event loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def node_config(args: argparse.Namespace) -> Any:
    """Defaults, then the TOML file, then the flags."""
    from spheroid_p2p.node.config import NodeConfig, load_toml

    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    for name in (
        "listen",
        "advertise",
        "key",
        "data_dir",
        "serve_blocks",
        "train_blocks",
        "max_connections",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.bootstrap is not None:
        values["bootstrap"] = tuple(args.bootstrap)
    if args.protocol_versions:
        values["versions"] = args.protocol_versions
    if args.checkpoints:
        values["checkpoints"] = tuple(args.checkpoints)
    for name in (
        "corpus",
        "train_steps",
        "batch_size",
        "seed",
        "threads",
        "ar_checkpoint",
        "ar_stage",
        "round_steps",
        "round_period_s",
        "round_grace_s",
        "round_shards",
        "min_replicas",
        "replica_wait_s",
        "delta_encoding",
        "compression",
        "norm_ratio",
        "tcp_congestion",
        "warm_next_hops",
        "keep_hot_s",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.allow_peers is not None:
        values["allow_peers"] = args.allow_peers
    if args.plaintext:
        values["encrypt"] = False
    values["model"] = _model(args, values.get("model"))
    gossip = values.get("gossip", GossipParams())
    for flag, field_name in (
        ("record_ttl", "record_ttl_s"),
        ("gossip_interval", "interval_s"),
        ("fanout", "fanout"),
    ):
        if getattr(args, flag) is not None:
            gossip = replace(gossip, **{field_name: getattr(args, flag)})
    values["gossip"] = gossip
    return NodeConfig(**values)


def _dump_tasks() -> None:
    """SIGUSR2: write every asyncio task's stack to stderr (a live-debugging aid)."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        task.print_stack(limit=8, file=sys.stderr)


async def _cmd_run(args: argparse.Namespace) -> int:
    from spheroid_p2p.node.app import Node

    config = node_config(args)
    key, created = load_or_create_identity(config.key)
    if created:
        log.info("new identity %s written to %s", key.peer_id, config.key)
    node = Node(config, key)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    task = asyncio.create_task(node.run())
    ready = asyncio.create_task(node.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if node.bound_address is not None:
        host, port = node.bound_address
        print(f"spheroid node {key.peer_id} listening on {host}:{port}", flush=True)
    await task
    return 0


async def _cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from spheroid_p2p.ml.data import load_corpus
    from spheroid_p2p.net.sockets import source_address
    from spheroid_p2p.node.app import running_node
    from spheroid_p2p.node.config import NodeConfig
    from spheroid_p2p.node.evaluator import run_evaluator
    from spheroid_p2p.wire.signing import KeyPair

    model = _model(args)
    corpus = await asyncio.to_thread(load_corpus, args.corpus)
    windows = corpus.eval_windows(model.context, args.windows)
    with tempfile.TemporaryDirectory(prefix="spheroid-eval-") as tmp:
        config = NodeConfig(
            listen=args.listen or f"{source_address(args.bootstrap[0])}:0",
            advertise=args.advertise,
            data_dir=args.data_dir or Path(tmp),
            key=Path(tmp) / "eval.key",
            bootstrap=tuple(args.bootstrap),
            model=model,
        )
        async with running_node(config, KeyPair.generate()) as node:
            await run_evaluator(
                node.swarm,
                node.transfers,
                model,
                windows,
                every_s=args.every,
                count=args.count,
                out=args.out,
                timeout_s=args.timeout,
            )
    return 0


async def _cmd_status(args: argparse.Namespace) -> int:
    from spheroid_p2p.client.status import fetch_status, format_status

    print(format_status(await fetch_status(args.peer, args.timeout)))
    return 0


def _cmd_id(args: argparse.Namespace) -> int:
    key, created = load_or_create_identity(args.key)
    print(key.peer_id.to_text())
    if created:
        print(f"(new key written to {args.key})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose if args.command != "status" else args.verbose - 1)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "id":
            return _cmd_id(args)
        if args.command == "run":
            return run_async(_cmd_run(args))
        if args.command == "status":
            return run_async(_cmd_status(args))
        if args.command == "eval":
            return run_async(_cmd_eval(args))
    except (SpheroidError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover - parser.error exits
