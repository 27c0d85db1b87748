"""A peer's identity on disk (spec: ``protocol/04-identity-and-signing.md`` §4.5).

The key file is the unencrypted PKCS#8 PEM encoding of the Ed25519 private key, created with
mode 0600 on first start and written atomically (temporary file, fsync, rename), so a crash
never leaves half a key. Loading refuses a file that group or others can read (the key *is*
the peer's identity) and explains how to fix a corrupt one, instead of silently replacing it
and changing the peer id.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spheroid_p2p.errors import ConfigError
from spheroid_p2p.wire.signing import KeyPair

__all__ = ["load_identity", "load_or_create_identity", "write_identity"]

log = logging.getLogger(__name__)

_KEY_MODE = 0o600


def write_identity(path: Path, key: KeyPair) -> None:
    """Write ``key`` to ``path`` atomically with owner-only permissions."""
    pem = Ed25519PrivateKey.from_private_bytes(key.seed()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_identity(path: Path) -> KeyPair:
    """Load the key at ``path``; raises ``ConfigError`` saying what is wrong and how to fix it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"key file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"it holds this peer's private key: run 'chmod 600 {path}'"
        )
    data = path.read_bytes()
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"key file {path} is corrupt or not an unencrypted PEM private key ({exc}); "
            "restore it from a backup, or move it away to start as a new peer (new peer id)"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"key file {path} holds a {type(private).__name__}, not an Ed25519 key")
    return KeyPair(private)


def load_or_create_identity(path: Path) -> tuple[KeyPair, bool]:
    """Load the key at ``path``, creating a new one if the file does not exist.

    Returns the key and whether it was created now.
    """
    if path.exists():
        return load_identity(path), False
    key = KeyPair.generate()
    write_identity(path, key)
    log.info("created a new identity %s in %s", key.peer_id.short(), path)
    return key, True
