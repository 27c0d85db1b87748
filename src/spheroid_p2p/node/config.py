"""Node configuration: command-line flags over an optional TOML file over defaults.

The TOML file's keys are the long flag names of ``node run`` (``node.cli`` reads it), e.g.::

    listen = "0.0.0.0:7000"
    bootstrap = ["10.0.0.2:7000"]
    key = "node.key"
    data-dir = "node-data"
    train-block = [1]
    corpus = "input.txt"
    record-ttl = 60
    [gossip]            # gossip parameters by name (07 §7.2), for what no flag sets
    target_peers = 12
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spheroid_p2p.core.gossip_params import GossipParams
from spheroid_p2p.errors import ConfigError
from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.net.sockets import available_congestion, parse_addr
from spheroid_p2p.params import MAX_SHARDS
from spheroid_p2p.wire.signing import PeerId

__all__ = ["NodeConfig"]


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs to start."""

    listen: str = "127.0.0.1:0"
    advertise: str | None = None  # address others should dial; defaults to the bound address
    bootstrap: tuple[str, ...] = ()
    key: Path = Path("spheroid-node.key")
    data_dir: Path = Path("spheroid-data")
    serve_blocks: tuple[int, ...] = ()
    #: Announce ``serve_blocks`` without weights to serve (gossip tests and benchmarks).
    announce_only: bool = False
    train_blocks: tuple[int, ...] = ()
    #: safetensors block checkpoints this node loads and serves traversals with.
    checkpoints: tuple[Path, ...] = ()
    #: The autoregressive pipeline baseline: a model file and this node's stage "S/N".
    ar_checkpoint: Path | None = None
    ar_stage: str | None = None
    #: Training: corpus path (or "embedded"), step budget, model shape, seed, torch threads.
    corpus: str | None = None
    train_steps: int = 1000
    batch_size: int = 32
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    threads: int = 0  # 0: torch's default
    max_connections: int = 64
    #: Averaging (09): local steps per round (0: train alone, publish no version), seconds
    #: from a version to the next deadline, grace per aggregator hand-over, delta encoding,
    #: compression of bulk transfers (auto: by measured link rate), rejection bounds.
    round_steps: int = 50
    round_period_s: float = 30.0
    round_grace_s: float = 5.0
    #: Before its first step a replica waits until this many replicas of its block (itself
    #: included) are live, for at most ``replica_wait_s``; then it trains with whoever is there.
    min_replicas: int = 1
    replica_wait_s: float = 120.0
    #: Shards a publisher plans per round (09 §9.2): one per replica up to this many; 1 is
    #: the single-aggregator round.
    round_shards: int = 64
    delta_encoding: str = "bfloat16"
    compression: str = "auto"
    norm_ratio: float = 10.0
    max_relative_norm: float = 1.0
    gossip: GossipParams = field(default_factory=GossipParams)
    versions: tuple[int, ...] = (1,)
    #: A private swarm's allow-list (09 §9.8): only these peers are counted as replicas of
    #: our blocks (contribute deltas, aggregate, publish versions we install). None: open.
    #: Given as a set of peer ids or the path of a file that lists them.
    allow_peers: frozenset[PeerId] | Path | None = None
    #: Offer an encrypted session on every connection (06 §6.7); False only to measure the
    #: cost (``--plaintext``) or to talk to a peer that cannot.
    encrypt: bool = True
    #: TCP congestion control for this node's connections (``TCP_CONGESTION``; None: the
    #: host's default). On long, mostly idle paths cubic or reno send a traversal's burst at
    #: once where BBR may pace it slowly (README, WAN).
    tcp_congestion: str | None = None
    #: Trajectory-matched training (``node.chain``, issue 19): a trainer of block b > 0
    #: trains this fraction of its batches on the code the swarm's earlier blocks hand it
    #: (0: off), refreshing them from their newest versions every ``chain_refresh`` steps.
    chain_fraction: float = 0.0
    chain_refresh: int = 200
    #: HOST:PORT of the metrics and swarm page server (``node.http``); None: none.
    http: str | None = None
    #: Keep a connection open to up to this many servers of the block after ours, so a
    #: traversal's next hop is not dialled while the traversal waits (0: dial on demand).
    warm_next_hops: int = 2
    #: After forwarding a traversal, keep that connection out of TCP's idle restart for this
    #: many seconds (small pings, ``core.connection.HOT_PING_S``; 0: off).
    keep_hot_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.allow_peers, str | Path):
            object.__setattr__(self, "allow_peers", _read_allow_list(Path(self.allow_peers)))
        try:
            parse_addr(self.listen, allow_any_port=True)
            if self.http is not None:
                parse_addr(self.http, allow_any_port=True)
            for addr in (*self.bootstrap, *([self.advertise] if self.advertise else [])):
                parse_addr(addr)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for block in (*self.serve_blocks, *self.train_blocks):
            if not 0 <= block < 0xFFFF:
                raise ConfigError(f"block index {block} out of range")
        if self.delta_encoding not in ("float32", "float16", "bfloat16", "int8"):
            raise ConfigError(
                f"delta encoding {self.delta_encoding!r}: float32, float16, bfloat16 or int8"
            )
        if self.compression not in ("auto", "none", "zstd", "shuffle"):
            raise ConfigError(f"compression {self.compression!r}: auto, none, zstd or shuffle")
        if self.round_steps < 0 or self.round_period_s <= 0 or self.round_grace_s <= 0:
            raise ConfigError("round steps must be >= 0, round period and grace > 0")
        if self.tcp_congestion is not None:
            offered = available_congestion()
            if offered and self.tcp_congestion not in offered:
                raise ConfigError(
                    f"TCP congestion control {self.tcp_congestion!r} is not offered by this "
                    f"host; choose one of: {', '.join(offered)}"
                )
        if self.warm_next_hops < 0 or self.keep_hot_s < 0:
            raise ConfigError("warm next hops and keep-hot seconds must be >= 0")
        if not 1 <= self.round_shards <= MAX_SHARDS:
            raise ConfigError(f"round shards must be in 1..{MAX_SHARDS}")
        if not 0.0 <= self.chain_fraction <= 1.0 or self.chain_refresh < 1:
            raise ConfigError("--chain-fraction must be in 0..1 and --chain-refresh >= 1")
        if self.min_replicas < 1 or self.replica_wait_s < 0:
            raise ConfigError("min replicas must be >= 1 and the replica wait >= 0")


def _read_allow_list(path: Path) -> frozenset[PeerId]:
    """Peer ids, one per line ('#' starts a comment); a ConfigError names a bad line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"--allow-peers {path}: {exc.strerror or exc}") from None
    out: set[PeerId] = set()
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out.add(PeerId.from_text(text))
        except ValueError as exc:
            raise ConfigError(f"--allow-peers {path} line {number}: {exc}") from None
    if not out:
        raise ConfigError(f"--allow-peers {path} lists no peer id")
    return frozenset(out)
