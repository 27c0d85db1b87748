"""Command line of a spheroid_p2p peer: ``python -m spheroid_p2p.node [command] ...``.

Commands:

* ``id``: create this peer's key on first use and print its peer id.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spheroid_p2p import __version__
from spheroid_p2p.errors import ConfigError
from spheroid_p2p.identity import load_or_create_identity

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

DEFAULT_KEY = Path("spheroid-node.key")


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
    ident = commands.add_parser("id", help="print this peer's id (creates the key on first use)")
    ident.add_argument("--key", type=Path, default=DEFAULT_KEY, help="key file (PEM, mode 0600)")
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    _configure_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "id":
            return _cmd_id(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover - parser.error exits
