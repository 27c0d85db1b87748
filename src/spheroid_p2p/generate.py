"""``python -m spheroid_p2p.generate``: generate text through a swarm of block servers.

Prints the text as it arrives, then a timing summary (traversals, time per traversal, bytes
on the wire). Example::

    python -m spheroid_p2p.generate --peer 127.0.0.1:7000 --prompt "Day 12." --bytes 200
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
from pathlib import Path

from spheroid_p2p.client.drafts import DRAFTERS, drafter_by_name
from spheroid_p2p.errors import SpheroidError
from spheroid_p2p.ml.drafting import Drafter
from spheroid_p2p.wire.traversal import COMBINE_LAST, COMBINE_MEAN, COMBINE_WEIGHTED

#: --combine's choices and the rule each asks for (10 §10.9)
RULES = {"weighted": COMBINE_WEIGHTED, "mean": COMBINE_MEAN, "last": COMBINE_LAST}

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spheroid_p2p.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--peer", required=True, help="HOST:PORT of any peer of the swarm")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--bytes", type=int, default=200, help="bytes to generate")
    parser.add_argument(
        "--span",
        type=int,
        default=0,
        help="bytes per traversal (0: what the model was trained for)",
    )
    parser.add_argument("--steps", type=int, default=1, help="Euler steps per block")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: argmax")
    parser.add_argument(
        "--transport",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="dtype of the codes between hops",
    )
    parser.add_argument(
        "--combine",
        choices=["weighted", "mean", "last"],
        default="weighted",
        help="the output: the mean of every block's log-probabilities weighted by each block's "
        "quality (its trainer's recent CE; r14), their plain mean (r13), or the last block's "
        "prediction (10 §10.9); default: %(default)s",
    )
    parser.add_argument(
        "--rule",
        choices=["known", "noisy"],
        default="known",
        help="per-byte models: 'known' (the prefix's rows carry their bytes and servers keep "
        "their keys and values: one new row per block) or 'noisy' (every row from fresh noise, "
        "the whole window recomputed); default: %(default)s",
    )
    parser.add_argument(
        "--draft",
        choices=list(DRAFTERS),
        default="none",
        help="speculative traversals (rule 'known'): guess the next bytes and keep what the "
        "chain agrees with; the output is the same, in fewer traversals. 'lookup': earlier "
        "occurrences in the text; 'ngram': a byte n-gram model of --draft-corpus; "
        "default: %(default)s",
    )
    parser.add_argument("--draft-corpus", help="text file the n-gram drafter learns from")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per traversal")
    parser.add_argument(
        "--listen",
        help="HOST:PORT for the reply listener (default: the interface that reaches --peer)",
    )
    parser.add_argument(
        "--advertise",
        help="HOST:PORT the last hop may dial back if its connection is lost (default: the "
        "listener's; answers normally come over the connection the client opens)",
    )
    parser.add_argument(
        "--tcp-congestion", help="TCP congestion control for the client's connections"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _drafter(args: argparse.Namespace) -> Drafter | None:
    """The drafter the flags ask for (reads --draft-corpus); ValueError says what is wrong."""
    try:
        corpus = Path(args.draft_corpus).read_bytes() if args.draft_corpus else None
    except OSError as exc:
        raise ValueError(f"cannot read --draft-corpus {args.draft_corpus}: {exc.strerror}") from exc
    return drafter_by_name(args.draft, corpus)


async def _run(args: argparse.Namespace, drafter: Drafter | None) -> int:
    from spheroid_p2p.client.traversal import TraversalClient

    client = TraversalClient(
        timeout_s=args.timeout,
        listen=args.listen,
        advertise=args.advertise,
        tcp_congestion=args.tcp_congestion,
    )
    sys.stdout.write(args.prompt)
    sys.stdout.flush()

    def show(piece: bytes) -> None:
        sys.stdout.write(piece.decode("utf-8", errors="replace"))
        sys.stdout.flush()

    await client.start(toward=args.peer)
    try:
        report = await client.generate(
            args.peer,
            args.prompt.encode(),
            args.bytes,
            steps_per_block=args.steps,
            seed=args.seed,
            temperature=args.temperature,
            z_dtype=args.transport,
            span=args.span,
            on_bytes=show,
            rule=args.rule,
            combine=RULES[args.combine],
            drafter=drafter,
        )
    finally:
        await client.close()
    per = statistics.median(report.traversal_ms) if report.traversal_ms else 0.0
    print(
        f"\n--- {len(report.output)} bytes in {report.traversals} traversals, "
        f"{report.seconds:.2f} s ({report.bytes_per_traversal:.2f} bytes per traversal); "
        f"median {per:.1f} ms per traversal; "
        f"{report.bytes_sent} bytes sent by the client; {report.retries} retries; "
        f"route {' -> '.join(report.routes[-1]) if report.routes else '-'}",
        file=sys.stderr,
    )
    if report.qualities:
        print(
            "--- block qualities (nats/byte, the weights' source): "
            + ", ".join(f"{b}: {q:.3f}" for b, q in enumerate(report.qualities)),
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose == 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    failures: list[BaseException] = []
    try:
        return asyncio.run(_run(args, _drafter(args)))
    except* (SpheroidError, ValueError, OSError) as group:
        failures.extend(group.exceptions)
    for exc in failures:
        print(f"\nerror: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
