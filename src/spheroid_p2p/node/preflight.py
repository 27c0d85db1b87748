"""Checks of a node's configuration before it listens or joins anything.

A user's mistake (a corpus that does not exist, a block the model does not have, a
checkpoint that is missing, a data directory that cannot be written, a port in use) is
reported as one :class:`~spheroid_p2p.errors.ConfigError` line that says what to do, before
the node binds its port, so no peer ever dials a node that is about to fail.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from spheroid_p2p.errors import ConfigError
from spheroid_p2p.net.sockets import parse_addr
from spheroid_p2p.node.config import NodeConfig

__all__ = ["check_corpus", "check_listen", "check_run"]

EMBEDDED = "embedded"


def check_corpus(corpus: str, flag: str = "--corpus") -> None:
    """``corpus`` is 'embedded', a readable text file or a WikiText raw folder."""
    if corpus == EMBEDDED:
        return
    path = Path(corpus)
    if path.is_dir():
        test = path / "wiki.test.raw"
        train = [p for p in (path / "wiki.train.raw", path / "wiki.valid.raw") if p.is_file()]
        if not (train and test.is_file()):
            raise ConfigError(
                f"{flag} {corpus}: a folder must hold WikiText raw files (wiki.test.raw and "
                "wiki.train.raw or wiki.valid.raw); give a text file or 'embedded' instead"
            )
        return
    if not path.exists():
        raise ConfigError(
            f"{flag} {corpus}: no such file; give a text file, a WikiText raw folder, or "
            "'embedded' for the project's own corpus"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag} {corpus}: not readable by this user; check its permissions")
    if path.stat().st_size < 1024:
        raise ConfigError(f"{flag} {corpus}: too small to train on (under 1 KiB of text)")


def check_listen(listen: str, flag: str = "--listen") -> None:
    """The listen address can be bound now (the node binds it for real right after)."""
    host, port = parse_addr(listen, allow_any_port=True)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise listen_error(listen, exc, flag) from None


def listen_error(listen: str, exc: OSError, flag: str = "--listen") -> ConfigError:
    """The one-line error for an address the node cannot listen on."""
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"{flag} {listen}: the port is in use by another process; choose another port "
            "(or port 0 for any free one), or stop the process using it"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"{flag} {listen}: no interface of this machine has that address; use one of its "
            "own addresses, 0.0.0.0 for all of them, or 127.0.0.1"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(f"{flag} {listen}: permission denied; use a port above 1023")
    return ConfigError(f"{flag} {listen}: cannot listen there: {exc.strerror or exc}")


def check_run(config: NodeConfig) -> None:
    """Everything ``node run`` can check before it listens. Raises ConfigError."""
    n_blocks = config.model.n_blocks
    claims = (("--train-block", config.train_blocks), ("--serve-block", config.serve_blocks))
    for flag, blocks in claims:
        for block in blocks:
            if block >= n_blocks:
                raise ConfigError(
                    f"{flag} {block}: the model has {n_blocks} blocks (0..{n_blocks - 1}); "
                    "pick one of those, or change --n-blocks"
                )
    if config.train_blocks and config.corpus is None and not config.announce_only:
        raise ConfigError(
            "--train-block needs --corpus (a text file, a WikiText raw folder or 'embedded')"
        )
    if config.corpus is not None and config.train_blocks:
        check_corpus(config.corpus)
    for path in (*config.checkpoints, *([config.ar_checkpoint] if config.ar_checkpoint else [])):
        if not Path(path).is_file():
            raise ConfigError(
                f"checkpoint {path}: no such file; give the path of a block's .safetensors "
                "file (a trainer writes <data-dir>/block-B.safetensors)"
            )
    if config.ar_checkpoint is None and config.ar_stage is not None:
        raise ConfigError("--ar-stage needs --ar-checkpoint")
    if config.serve_blocks and not (config.checkpoints or config.announce_only):
        raise ConfigError(
            f"--serve-block {','.join(map(str, config.serve_blocks))}: this node has no weights "
            "to serve; give --checkpoint FILE (or --train-block B: a trainer serves its block "
            "when training ends), or add --announce-only to announce without serving"
        )
    _check_writable(config.data_dir, "--data-dir")
    _check_writable(config.key.parent if str(config.key.parent) else Path("."), "--key's folder")
    check_listen(config.listen)
    if config.http is not None:
        check_listen(config.http, "--http")


def _check_writable(path: Path, flag: str) -> None:
    """``path`` is a directory we can write, or can be created."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, not a folder; choose another path")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {probe} is not writable by this user")
