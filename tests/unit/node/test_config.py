"""Node configuration: TOML file under flags, clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from spheroid_p2p.errors import ConfigError
from spheroid_p2p.net.sockets import available_congestion
from spheroid_p2p.node.cli import build_parser, node_config


def test_flags_override_the_toml_file(tmp_path: Path) -> None:
    """Values come from defaults, then the TOML file, then the flags."""
    config = tmp_path / "node.toml"
    config.write_text(
        'listen = "127.0.0.1:7000"\nbootstrap = ["127.0.0.1:7001"]\nserve-blocks = [0, 1]\n'
        "[gossip]\nrecord_ttl_s = 12.0\nfanout = 5\n"
    )
    args = build_parser().parse_args(
        ["run", "--config", str(config), "--listen", "127.0.0.1:7100", "--fanout", "2"]
    )
    cfg = node_config(args)
    assert cfg.listen == "127.0.0.1:7100"
    assert cfg.bootstrap == ("127.0.0.1:7001",)
    assert cfg.serve_blocks == (0, 1)
    assert cfg.gossip.record_ttl_s == 12.0 and cfg.gossip.fanout == 2


def test_unknown_settings_and_bad_addresses_are_clear_errors(tmp_path: Path) -> None:
    """A typo in the TOML file or a malformed address names the culprit."""
    config = tmp_path / "node.toml"
    config.write_text('lisen = "127.0.0.1:7000"\n')
    with pytest.raises(ConfigError, match="unknown setting 'lisen'"):
        node_config(build_parser().parse_args(["run", "--config", str(config)]))
    with pytest.raises(ConfigError, match="not a host:port"):
        node_config(build_parser().parse_args(["run", "--bootstrap", "localhost"]))


def test_wan_flags_reach_the_config_and_an_unknown_congestion_control_is_refused() -> None:
    """--tcp-congestion must name one this host offers (the error lists them);
    --warm-next-hops and --keep-hot are plain numbers."""
    cfg = node_config(
        build_parser().parse_args(
            ["run", "--tcp-congestion", "reno", "--warm-next-hops", "0", "--keep-hot", "2.5"]
        )
    )
    assert (cfg.tcp_congestion, cfg.warm_next_hops, cfg.keep_hot_s) == ("reno", 0, 2.5)
    if available_congestion():
        with pytest.raises(ConfigError, match=r"not offered by this host; choose one of: .*reno"):
            node_config(build_parser().parse_args(["run", "--tcp-congestion", "nosuch"]))
