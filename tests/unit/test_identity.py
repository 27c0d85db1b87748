"""Identity files: created once with mode 0600, reloaded, and refused when unsafe or corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spheroid_p2p.errors import ConfigError
from spheroid_p2p.identity import load_identity, load_or_create_identity


def test_first_start_creates_an_owner_only_key_and_reloads_it(tmp_path: Path) -> None:
    """The key is created with mode 0600 and the same peer id comes back on reload."""
    path = tmp_path / "sub" / "node.key"
    key, created = load_or_create_identity(path)
    assert created
    assert (path.stat().st_mode & 0o777) == 0o600
    again, created_again = load_or_create_identity(path)
    assert not created_again and again.peer_id == key.peer_id
    assert not list(path.parent.glob(".*tmp")), "no temporary file is left behind"


def test_world_readable_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    """A key others can read is refused, and the message says how to fix it."""
    path = tmp_path / "node.key"
    load_or_create_identity(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_identity(path)


def test_corrupt_key_is_refused_not_replaced(tmp_path: Path) -> None:
    """A corrupt key file raises ConfigError and is left untouched."""
    path = tmp_path / "node.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="corrupt"):
        load_or_create_identity(path)
    assert path.read_bytes().startswith(b"-----BEGIN")


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    """load_identity on a missing path names the path."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_identity(tmp_path / "absent.key")
