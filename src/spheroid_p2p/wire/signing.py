"""Identity and signatures (spec: ``protocol/04-identity-and-signing.md``).

A peer is an Ed25519 key pair. Its :class:`PeerId` is SHA-256 of the 32-byte raw public key,
written in text as ``sp1`` followed by the lowercase, unpadded RFC 4648 base32 of the digest.

Signatures are always over a *domain-separated* signing input (§4.3)::

    u16be(len(domain)) || domain || u32be(len(data)) || data

with ``domain`` one of the ASCII strings in :data:`DOMAINS`. The domain is never transmitted,
so a signature made for one purpose (a relayed gossip record) can never verify as
another (a frame envelope). ``data`` is always the exact transmitted bytes, never a
re-encoding: msgpack encodings are not canonical across implementations.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import PUBLIC_KEY_BYTES, SIGNATURE_BYTES

__all__ = [
    "DOMAINS",
    "DOMAIN_ENVELOPE",
    "DOMAIN_MANIFEST",
    "DOMAIN_RECORD",
    "KeyPair",
    "PeerId",
    "signing_input",
    "verify",
]

#: Signs the ``signed`` section of every frame (03-messages.md).
DOMAIN_ENVELOPE: Final = b"spheroid/v1/envelope"
#: Signs ownership records, which third parties relay (07).
DOMAIN_RECORD: Final = b"spheroid/v1/record"
#: Signs block-version manifests, which any peer relays and stores (08-checkpoints.md).
DOMAIN_MANIFEST: Final = b"spheroid/v1/manifest"
DOMAINS: Final = (DOMAIN_ENVELOPE, DOMAIN_RECORD, DOMAIN_MANIFEST)

_PEER_ID_PREFIX: Final = "sp1"
_PEER_ID_TEXT_LEN: Final = len(_PEER_ID_PREFIX) + 52  # 32 bytes -> 52 base32 characters


def signing_input(domain: bytes, data: bytes | memoryview) -> bytes:
    """Return the bytes that are actually signed for ``data`` under ``domain`` (§4.3)."""
    if domain not in DOMAINS:
        raise LocalProtocolError(f"unknown signing domain {domain!r}")
    return b"".join(
        (struct.pack(">H", len(domain)), domain, struct.pack(">I", len(data)), bytes(data))
    )


@dataclass(frozen=True, slots=True)
class PeerId:
    """SHA-256 of a peer's raw Ed25519 public key (§4.2). Compare and hash as bytes."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise ValueError(f"a peer id is 32 bytes, got {len(self.digest)}")

    @classmethod
    def from_public_key(cls, public_key: bytes) -> PeerId:
        """Derive the peer id of a 32-byte raw Ed25519 public key."""
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
        return cls(hashlib.sha256(public_key).digest())

    @classmethod
    def from_text(cls, text: str) -> PeerId:
        """Parse the ``sp1…`` text form; raises ``ValueError`` with the reason."""
        if len(text) != _PEER_ID_TEXT_LEN or not text.startswith(_PEER_ID_PREFIX):
            raise ValueError(f"not a peer id (want 'sp1' + 52 base32 characters): {text!r}")
        body = text[len(_PEER_ID_PREFIX) :]
        if body != body.lower():
            raise ValueError(f"peer ids are lowercase: {text!r}")
        try:
            digest = base64.b32decode(body.upper() + "====")
        except ValueError as exc:
            raise ValueError(f"bad base32 in peer id {text!r}") from exc
        return cls(digest)

    def to_text(self) -> str:
        """The canonical text form, ``sp1`` + 52 lowercase base32 characters."""
        return _PEER_ID_PREFIX + base64.b32encode(self.digest).decode("ascii").rstrip("=").lower()

    def short(self) -> str:
        """A 12-character prefix of the text form, for logs."""
        return self.to_text()[:12]

    def __str__(self) -> str:
        return self.to_text()


class KeyPair:
    """An Ed25519 signing key with its public key and peer id."""

    __slots__ = ("_private", "peer_id", "public_key")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key: bytes = private.public_key().public_bytes_raw()
        self.peer_id: PeerId = PeerId.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The key pair of a 32-byte Ed25519 seed (RFC 8032 private key). Vectors use this."""
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        """The 32-byte private seed. Handle with care: this is the identity."""
        return self._private.private_bytes_raw()

    def sign(self, domain: bytes, data: bytes | memoryview) -> bytes:
        """Sign ``data`` under ``domain`` and return the 64-byte signature."""
        return self._private.sign(signing_input(domain, data))


@functools.lru_cache(maxsize=1024)
def _public_key(public_key: bytes) -> Ed25519PublicKey:
    """The key object of a peer's public key (parsed once: every frame of a connection is
    signed by the same key). Raises ``ValueError`` for bytes that are no key."""
    return Ed25519PublicKey.from_public_bytes(public_key)


def verify(public_key: bytes, signature: bytes, domain: bytes, data: bytes | memoryview) -> None:
    """Check a signature; raise ``RemoteProtocolError(BAD_SIGNATURE)`` if it does not verify."""
    if len(signature) != SIGNATURE_BYTES:
        raise RemoteProtocolError(
            f"signature is {len(signature)} bytes, want {SIGNATURE_BYTES}", ErrorCode.BAD_SIGNATURE
        )
    try:
        _public_key(public_key).verify(signature, signing_input(domain, data))
    except (InvalidSignature, ValueError) as exc:
        raise RemoteProtocolError(
            "signature does not verify for the sender's key", ErrorCode.BAD_SIGNATURE
        ) from exc
