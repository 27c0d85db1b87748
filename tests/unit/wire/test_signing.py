"""Peer ids, signatures and domains."""

from __future__ import annotations

import pytest

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.wire.signing import DOMAIN_ENVELOPE, DOMAIN_RECORD, KeyPair, PeerId, verify


def test_peer_id_text_round_trip_and_rejects_garbage() -> None:
    """to_text/from_text round-trip; wrong prefix, length, case or alphabet are refused."""
    key = KeyPair.from_seed(bytes(32))
    text = key.peer_id.to_text()
    assert len(text) == 55 and text.startswith("sp1")
    assert PeerId.from_text(text) == key.peer_id
    for bad in ("", text[:-1], "sp2" + text[3:], text.upper(), text[:-1] + "1"):
        with pytest.raises(ValueError):
            PeerId.from_text(bad)


def test_signature_is_bound_to_its_domain() -> None:
    """A signature under one domain does not verify under another."""
    key = KeyPair.generate()
    sig = key.sign(DOMAIN_RECORD, b"data")
    verify(key.public_key, sig, DOMAIN_RECORD, b"data")
    with pytest.raises(RemoteProtocolError) as info:
        verify(key.public_key, sig, DOMAIN_ENVELOPE, b"data")
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_unknown_domain_is_a_local_error() -> None:
    """Signing under a domain the spec does not list is our bug, not the peer's."""
    with pytest.raises(LocalProtocolError):
        KeyPair.generate().sign(b"spheroid/v1/other", b"x")


def test_malformed_public_key_is_a_bad_signature() -> None:
    """A public key that is not a valid point fails verification with BAD_SIGNATURE."""
    with pytest.raises(RemoteProtocolError) as info:
        verify(b"\x00" * 31, b"\x00" * 64, DOMAIN_ENVELOPE, b"x")
    assert info.value.code is ErrorCode.BAD_SIGNATURE
