"""Command line of a spheroid_p2p peer: ``python -m spheroid_p2p.node [command] ...``.

Commands:

* ``run`` (the default when flags are given): a long-lived peer;
* ``status --peer HOST:PORT [--json] [--watch]``: a running peer's view of the swarm;
* ``eval --bootstrap HOST:PORT --corpus PATH``: score the swarm's current model;
* ``id``: create this peer's key on first use and print its peer id.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from spheroid_p2p.errors import SpheroidError
from spheroid_p2p.identity import load_or_create_identity
from spheroid_p2p.node.flags import build_parser, model_from_args
from spheroid_p2p.node.settings import node_config

if TYPE_CHECKING:
    from spheroid_p2p.wire.status import StatusResponse

__all__ = ["build_parser", "main", "node_config"]

T = TypeVar("T")

log = logging.getLogger(__name__)


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


def _dump_tasks() -> None:
    """SIGUSR2: write every asyncio task's stack to stderr (a live-debugging aid)."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        task.print_stack(limit=8, file=sys.stderr)


async def _cmd_run(args: argparse.Namespace) -> int:
    from spheroid_p2p.node.app import Node
    from spheroid_p2p.node.preflight import check_run

    config = node_config(args)
    check_run(config)  # a user's mistake ends here, in one line, before we listen
    key, created = load_or_create_identity(config.key)
    if created:
        log.info("new identity %s written to %s", key.peer_id, config.key)
    node = Node(config, key)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.warning("[%s] %s: stopping (send it again to end at once)", node.tag, sig.name)
            node.stop()
            return
        # checkpoints and versions are written atomically: ending here loses at most the
        # steps since the last checkpoint, never a file
        log.warning("[%s] second %s: ending now", node.tag, sig.name)
        logging.shutdown()
        os._exit(128 + sig.value)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    task = asyncio.create_task(node.run())
    ready = asyncio.create_task(node.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if node.bound_address is not None:
        host, port = node.bound_address
        print(f"spheroid node {key.peer_id} listening on {host}:{port}", flush=True)
        if node.http_address is not None:
            print(f"swarm page and metrics: http://{node.http_address}/", flush=True)
    await task
    return 0


async def _cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from spheroid_p2p.ml.data import load_corpus
    from spheroid_p2p.net.sockets import source_address
    from spheroid_p2p.node.app import running_node
    from spheroid_p2p.node.config import NodeConfig
    from spheroid_p2p.node.evaluator import SwarmEvaluator, run_evaluator
    from spheroid_p2p.node.preflight import check_corpus, check_listen
    from spheroid_p2p.wire.signing import KeyPair

    model = model_from_args(args)
    check_corpus(args.corpus)
    if args.http is not None:
        check_listen(args.http, "--http")
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
            http=args.http,
        )
        async with running_node(config, KeyPair.generate()) as node:
            if node.http_address is not None:
                print(f"swarm page and metrics: http://{node.http_address}/", flush=True)
            node.evaluator = SwarmEvaluator(node.swarm, node.transfers, model, windows)
            await run_evaluator(
                node.swarm,
                node.transfers,
                model,
                windows,
                every_s=args.every,
                count=args.count,
                out=args.out,
                timeout_s=args.timeout,
                evaluator=node.evaluator,
            )
    return 0


async def _cmd_status(args: argparse.Namespace) -> int:
    from spheroid_p2p.client.status import fetch_status

    # SIGINT/SIGTERM end --watch for sure: the handler cancels this task and leaves a flag,
    # so a cancellation that lands in a connection's close (which waits out its flush and
    # carries on) still ends the loop before the next view
    main = asyncio.current_task()
    assert main is not None
    stopping = False

    def on_signal() -> None:
        nonlocal stopping
        stopping = True
        main.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        while not stopping:
            status = await fetch_status(args.peer, args.timeout)
            if stopping:
                break
            _show_status(status, as_json=args.json, watch=bool(args.watch))
            if not args.watch:
                return 0
            await asyncio.sleep(args.watch)
    except asyncio.CancelledError:
        if not stopping:
            raise
    return 130


def _show_status(status: StatusResponse, as_json: bool, watch: bool) -> None:
    import json

    from spheroid_p2p.client.status import format_status, status_json

    if as_json:
        print(json.dumps(status_json(status)), flush=True)
        return
    if watch and sys.stdout.isatty():
        print("\x1b[H\x1b[2J", end="")  # clear the screen between views
    print(format_status(status), flush=True)
    if watch and not sys.stdout.isatty():
        print(flush=True)


def _cmd_id(args: argparse.Namespace) -> int:
    key, created = load_or_create_identity(args.key)
    print(key.peer_id.to_text())
    if created:
        print(f"(new key written to {args.key})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status. From the command line (``argv`` None),
    a peer that stopped cleanly ends the process at once: its checkpoints are written and
    its threads joined, and the interpreter's teardown of torch would add a second or more
    between a signal and the exit."""
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
            code = run_async(_cmd_run(args))
            if argv is None:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            return code
        if args.command == "status":
            return run_async(_cmd_status(args))
        if args.command == "eval":
            return run_async(_cmd_eval(args))
    except (SpheroidError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``status | head``): say nothing, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover - parser.error exits
