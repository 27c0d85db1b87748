"""Node configuration: TOML file under flags, clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from spheroid_p2p.errors import ConfigError
from spheroid_p2p.net.sockets import available_congestion
from spheroid_p2p.node.cli import build_parser, node_config


def test_flags_override_the_toml_file(tmp_path: Path) -> None:
    """Values come from defaults, then the TOML file (keys: the long flag names), then the
    flags; a [gossip] table sets the parameters no flag covers."""
    config = tmp_path / "node.toml"
    config.write_text(
        'listen = "127.0.0.1:7000"\nbootstrap = ["127.0.0.1:7001"]\nserve-block = [0, 1]\n'
        "announce-only = true\nrecord-ttl = 12.0\nfanout = 5\nbatch = 8\nround-period = 9\n"
        'checkpoint = ["a.safetensors", "b.safetensors"]\nplaintext = true\nd-model = 64\n'
        'delta-encoding = "int8"\n[gossip]\ntarget_peers = 4\n'
    )
    args = build_parser().parse_args(
        ["run", "--config", str(config), "--listen", "127.0.0.1:7100", "--fanout", "2"]
    )
    cfg = node_config(args)
    assert cfg.listen == "127.0.0.1:7100"
    assert cfg.bootstrap == ("127.0.0.1:7001",)
    assert cfg.serve_blocks == (0, 1) and cfg.announce_only
    assert cfg.gossip.record_ttl_s == 12.0 and cfg.gossip.fanout == 2
    assert cfg.gossip.target_peers == 4
    assert (cfg.batch_size, cfg.round_period_s, cfg.encrypt) == (8, 9.0, False)
    assert cfg.checkpoints == (Path("a.safetensors"), Path("b.safetensors"))
    assert cfg.model.d_model == 64 and cfg.delta_encoding == "int8"


def test_toml_values_are_checked_like_flags(tmp_path: Path) -> None:
    """A value of the wrong kind or outside a flag's choices names the key."""
    config = tmp_path / "node.toml"
    config.write_text('delta-encoding = "int3"\n')
    with pytest.raises(ConfigError, match="delta-encoding: one of"):
        node_config(build_parser().parse_args(["run", "--config", str(config)]))
    config.write_text('plaintext = "yes"\n')
    with pytest.raises(ConfigError, match="plaintext is a switch"):
        node_config(build_parser().parse_args(["run", "--config", str(config)]))
    config.write_text("serve-blocks = [0]\n")  # the internal name, not the flag's
    with pytest.raises(ConfigError, match="long flag names"):
        node_config(build_parser().parse_args(["run", "--config", str(config)]))


def test_help_shows_defaults_and_verbose_works_after_the_command() -> None:
    """`run --help` names each default; `-v` is accepted before or after the command."""
    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    assert "(default: 300.0)" in text  # --record-ttl
    assert "(default: 50)" in text  # --round-steps
    assert "(default: 127.0.0.1:0)" in text
    assert parser.parse_args(["run", "-vv"]).verbose == 2
    assert parser.parse_args(["-v", "run"]).verbose == 1
    assert parser.parse_args(["status", "--peer", "h:1", "-v"]).verbose == 1
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


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
