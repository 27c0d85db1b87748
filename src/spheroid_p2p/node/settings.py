"""A node's settings: defaults, then a TOML file, then the command line's flags.

The TOML file's keys are the long flag names of ``node run`` (``serve-block = [0, 1]``,
``record-ttl = 60``), converted and checked as the flags' own text would be; a ``[gossip]``
table sets gossip parameters (07 §7.2) by name, for the ones no flag sets.
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from spheroid_p2p.core.gossip_params import GossipParams
from spheroid_p2p.errors import ConfigError
from spheroid_p2p.node.config import NodeConfig
from spheroid_p2p.node.flags import (
    build_parser,
    model_from_args,
    parse_addrs,
    parse_blocks,
)

__all__ = ["node_config"]


def _run_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["run"]


def _toml_value(action: argparse.Action, key: str, value: object, path: Path) -> object:
    """A TOML value converted the way its flag's text would be."""
    where = f"{path}: {key}"
    if action.nargs == 0:  # a switch: store_true
        if not isinstance(value, bool):
            raise ConfigError(f"{where} is a switch: true or false")
        return value
    items = value if isinstance(value, list) else [value]
    convert = action.type if callable(action.type) else str
    if convert in (parse_blocks, parse_addrs):  # lists: give them as TOML arrays or comma strings
        out: list[Any] = []
        for item in items:
            out.extend(convert(str(item)) if convert is parse_addrs else (int(item),))
        return tuple(out)
    try:
        converted = [convert(item if convert is str else str(item)) for item in items]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and any(c not in action.choices for c in converted):
        raise ConfigError(f"{where}: one of {', '.join(map(str, action.choices))}")
    if isinstance(action, argparse._AppendAction) or isinstance(value, list):
        return converted if isinstance(action, argparse._AppendAction) else tuple(converted)
    return converted[0]


def _apply_toml(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Fill the flags not given on the command line from the TOML file at ``path``, whose
    keys are the long flag names (``serve-block = [0, 1]``, ``record-ttl = 60``); a
    ``[gossip]`` table sets gossip parameters by name. Returns NodeConfig values the flags do
    not cover (the gossip table)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    flags = {
        option[2:]: action
        for action in _run_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--config", "--verbose")
    }
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("_", "-")
        if name == "gossip" and isinstance(value, dict):
            known = {f.name for f in fields(GossipParams)}
            bad = sorted(set(value) - known)
            if bad:
                raise ConfigError(f"{path}: unknown gossip settings {bad} (known: {sorted(known)})")
            extra["gossip"] = replace(GossipParams(), **value)
            continue
        action = flags.get(name)
        if action is None or action.help == argparse.SUPPRESS:
            raise ConfigError(
                f"{path}: unknown setting {key!r}: keys are the long flag names of "
                "`node run --help`, without the dashes in front (e.g. serve-block = [0])"
            )
        if getattr(args, action.dest, None) in (None, False):
            setattr(args, action.dest, _toml_value(action, key, value, path))
    return extra


#: NodeConfig fields set below from flags of another name or type, not by the generic loop.
_CONVERTED = frozenset({"bootstrap", "checkpoints", "versions", "encrypt", "model", "gossip"})


def node_config(args: argparse.Namespace) -> NodeConfig:
    """Defaults, then the TOML file, then the flags."""
    values: dict[str, Any] = _apply_toml(args, args.config) if args.config else {}
    # most flags store straight into the NodeConfig field of their own name
    for f in fields(NodeConfig):
        if f.name not in _CONVERTED and getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    if args.bootstrap is not None:
        values["bootstrap"] = tuple(args.bootstrap)
    if args.protocol_versions:
        values["versions"] = args.protocol_versions
    if args.checkpoints:
        values["checkpoints"] = tuple(Path(p) for p in args.checkpoints)
    if args.plaintext:
        values["encrypt"] = False
    values["model"] = model_from_args(args)
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
