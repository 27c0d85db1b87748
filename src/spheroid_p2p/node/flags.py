"""The command line's flags: ``python -m spheroid_p2p.node`` and its commands' arguments.

``build_parser`` is the one description of every flag: ``node.settings`` reads TOML files
through it (keys are the long flag names), and ``--help`` shows each default.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from spheroid_p2p import __version__
from spheroid_p2p.errors import ConfigError
from spheroid_p2p.ml.config import ModelConfig

__all__ = ["DEFAULT_KEY", "build_parser", "model_from_args", "parse_addrs", "parse_blocks"]

DEFAULT_KEY = Path("spheroid-node.key")


def parse_blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of block indices: {text!r}") from None


def parse_addrs(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


_MODEL_FIELDS = ("context", "d_model", "layers_per_block", "n_blocks", "span", "layout")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    d = ModelConfig()
    group = parser.add_argument_group("model shape (every peer of a swarm uses the same)")
    group.add_argument("--context", type=int, help=f"model context in bytes (default {d.context})")
    group.add_argument("--d-model", type=int, help=f"model width (default {d.d_model})")
    group.add_argument(
        "--layers-per-block",
        type=int,
        help=f"Transformer layers in each block (default {d.layers_per_block})",
    )
    group.add_argument("--n-blocks", type=int, help=f"blocks in the model (default {d.n_blocks})")
    group.add_argument(
        "--span",
        type=int,
        help="bytes one traversal emits (default 1; K > 1 trains a span model, which needs "
        "--layout P)",
    )
    group.add_argument(
        "--layout",
        choices=("S", "P"),
        help=f"S: one row per byte; P: clean and noisy rows, spans >= 1 (default {d.layout})",
    )


def model_from_args(args: argparse.Namespace, model: ModelConfig | None = None) -> ModelConfig:
    model = model or ModelConfig()
    changes = {n: getattr(args, n) for n in _MODEL_FIELDS if getattr(args, n, None) is not None}
    if changes.get("span", 1) > 1 and "layout" not in changes and model.layout == "S":
        changes["layout"] = "P"  # a span model needs the P layout; say so in --help, not here
    try:
        return replace(model, **changes)
    except ValueError as exc:
        raise ConfigError(f"model flags: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="python -m spheroid_p2p.node",
        description="A spheroid_p2p peer: trains and serves blocks of a BlockTrain model "
        "together with other peers, with no central server.",
    )
    parser.add_argument("--version", action="version", version=f"spheroid_p2p {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    # -v also after the command (``node run -v``): the subcommand's count replaces this one
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[verbose],
        help="run a peer until SIGINT/SIGTERM",
        description="Run a peer until SIGINT or SIGTERM (a second one ends it at once).",
    )
    run.add_argument("--config", type=Path, help="TOML file; flags override it")
    run.add_argument("--listen", help="HOST:PORT to accept connections on (port 0: any)")
    run.add_argument("--advertise", help="HOST:PORT others should dial (default: --listen)")
    run.add_argument(
        "--bootstrap",
        type=parse_addrs,
        action="extend",
        default=None,
        help="HOST:PORT[,...] of peers to join; none: start a new swarm",
    )
    run.add_argument("--key", type=Path, help=f"identity key file (default {DEFAULT_KEY})")
    run.add_argument("--data-dir", type=Path, help="where checkpoints and state live")
    run.add_argument(
        "--serve-block",
        dest="serve_blocks",
        type=parse_blocks,
        help="block indices this peer announces it serves, e.g. 0,1 (needs --checkpoint, or "
        "--announce-only)",
    )
    run.add_argument(
        "--announce-only",
        action="store_true",
        help="announce --serve-block (and --train-block) without weights to serve or a corpus "
        "to train on (gossip tests); such a peer is never on a traversal's route",
    )
    run.add_argument(
        "--train-block",
        dest="train_blocks",
        type=parse_blocks,
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
    run.add_argument(
        "--chain-fraction",
        type=float,
        help="trajectory-matched training: this fraction of a block's batches (block > 0) "
        "takes the code the swarm's earlier blocks hand it instead of a noisy true code",
    )
    run.add_argument(
        "--chain-refresh",
        type=int,
        help="steps between two fetches of the earlier blocks' newest versions",
    )
    run.add_argument("--batch", dest="batch_size", type=int, help="training batch size")
    _model_flags(run)
    run.add_argument("--seed", type=int, help="training seed (mixed with the peer id)")
    run.add_argument("--threads", type=int, help="torch threads (0: torch's default)")
    run.add_argument(
        "--ar-checkpoint",
        type=Path,
        help="serve a stage of this autoregressive baseline model (safetensors)",
    )
    run.add_argument("--ar-stage", help="which stage of --ar-checkpoint, as S/N (e.g. 0/4)")
    run.add_argument("--max-connections", type=int, help="connections at most, in and out")
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
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve Prometheus metrics (/metrics), the live swarm page (/) and its JSON "
        "(/api/v1/swarm) here; read-only (e.g. 127.0.0.1:9100)",
    )
    run.add_argument("--record-ttl", type=float, help="seconds a gossiped record lives")
    run.add_argument("--gossip-interval", type=float, help="seconds between anti-entropy rounds")
    run.add_argument("--fanout", type=int, help="peers each change is pushed to")
    run.add_argument("--protocol-versions", type=parse_blocks, help=argparse.SUPPRESS)
    rounds = run.add_argument_group("averaging rounds (several replicas of one block)")
    rounds.add_argument(
        "--round-steps",
        type=int,
        help="local steps per averaging round; a trainer alone publishes a version each round "
        "too, which `node eval` and later replicas fetch (0: train alone, publish nothing)",
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
        parents=[verbose],
        help="assemble the current model from the swarm (newest version of every block) "
        "and print its CE_sampler, once or every few seconds",
    )
    ev.add_argument(
        "--bootstrap", type=parse_addrs, required=True, help="HOST:PORT[,...] of peers to join"
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
    ev.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve metrics and the live swarm page, with the CE chart, here",
    )

    status = commands.add_parser(
        "status", parents=[verbose], help="print a running peer's view of the swarm"
    )
    status.add_argument("--peer", required=True, help="HOST:PORT of the peer to ask")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    status.add_argument(
        "--json", action="store_true", help="print the view as one JSON object (for scripts)"
    )
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="ask again every SECONDS (default 2) until Ctrl-C",
    )

    ident = commands.add_parser(
        "id", parents=[verbose], help="print this peer's id (creates the key on first use)"
    )
    ident.add_argument("--key", type=Path, default=DEFAULT_KEY, help="key file (PEM, mode 0600)")
    _show_defaults(run, _run_defaults())
    return parser


def _run_defaults() -> dict[str, object]:
    """What each ``run`` flag defaults to (the NodeConfig and gossip defaults)."""
    from spheroid_p2p.node.config import NodeConfig

    config = NodeConfig()
    out: dict[str, object] = {f: getattr(config, f) for f in config.__dataclass_fields__}
    gossip = config.gossip
    out.update(
        record_ttl=gossip.record_ttl_s, gossip_interval=gossip.interval_s, fanout=gossip.fanout
    )
    out["key"] = DEFAULT_KEY
    return out


def _show_defaults(parser: argparse.ArgumentParser, defaults: dict[str, object]) -> None:
    """Append "(default: X)" to each flag's help where X is a value worth showing."""
    for action in parser._actions:
        value = defaults.get(action.dest)
        text = action.help
        if value in (None, (), False) or not text or text == argparse.SUPPRESS:
            continue
        if "default" not in text:
            action.help = f"{text} (default: {value})"
