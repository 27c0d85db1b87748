"""Encrypted sessions (spec: ``protocol/06-handshake.md`` §6.7).

Each side puts a fresh X25519 public key (``eph``) in its signed ``HELLO``. When both did,
every frame a side sends after its ``HELLO_ACK`` is sealed with AES-256-GCM, and every frame
it receives after the peer's ``HELLO_ACK`` is opened:

* ``shared = X25519(own ephemeral private key, peer's eph)``
* ``okm = HKDF-SHA256(ikm=shared, salt=nonce_lo || nonce_hi,
  info="spheroid/v1/session" || id_lo || id_hi, length=64)``, where ``lo``/``hi`` order the
  two peers by peer id bytes and each nonce is the one that peer put in its ``HELLO``;
* the peer with the lower id sends with ``okm[0:32]`` and the other with ``okm[32:64]``;
* frame ``n`` (0, 1, 2, ... per direction) is ``L || AES-256-GCM(key, nonce = 4 zero bytes ||
  u64be(n), plaintext = the frame body, aad = L)``, with ``L`` = the sealed length (body + 16).

The signatures inside stay: sealing adds confidentiality and binds every frame to this
connection's keys; the ephemeral keys are signed in the ``HELLO``s, so an on-path attacker
cannot substitute its own. Pure: the private key comes in as 32 random bytes.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.params import SESSION_TAG_BYTES
from spheroid_p2p.wire.framing import Buffer, frame_header

__all__ = ["SESSION_INFO", "Sealer", "ephemeral_public", "session_keys"]

SESSION_INFO: Final = b"spheroid/v1/session"


def ephemeral_public(private: bytes) -> bytes:
    """The X25519 public key (``eph``) of a 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def session_keys(
    private: bytes,
    peer_eph: bytes,
    *,
    local_id: bytes,
    peer_id: bytes,
    local_nonce: bytes,
    peer_nonce: bytes,
) -> tuple[bytes, bytes]:
    """(our send key, our receive key) of §6.7; raises ``HANDSHAKE_FAILED`` on a bad ``eph``."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_eph)
        )
    except ValueError as exc:  # a low-order point gives an all-zero secret: refused
        raise RemoteProtocolError(
            f"unusable ephemeral key: {exc}", ErrorCode.HANDSHAKE_FAILED
        ) from None
    we_are_lo = local_id < peer_id
    lo_id, hi_id = (local_id, peer_id) if we_are_lo else (peer_id, local_id)
    lo_nonce, hi_nonce = (local_nonce, peer_nonce) if we_are_lo else (peer_nonce, local_nonce)
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=lo_nonce + hi_nonce,
        info=SESSION_INFO + lo_id + hi_id,
    ).derive(shared)
    lo_key, hi_key = okm[:32], okm[32:]
    return (lo_key, hi_key) if we_are_lo else (hi_key, lo_key)


class Sealer:
    """One direction of a session: seals (or opens) frames in order, counting them."""

    __slots__ = ("_aead", "_scratch", "count")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.count = 0
        #: the plaintext of the frame being sealed, gathered from its buffers (reused: a
        #: fresh megabyte for every chunk frame costs more than sealing it)
        self._scratch = bytearray()

    def _nonce(self) -> bytes:
        nonce = struct.pack(">IQ", 0, self.count)
        self.count += 1
        return nonce

    def seal(self, buffers: list[Buffer]) -> list[Buffer]:
        """A plaintext frame (its buffers, length prefix first) -> the sealed frame, as the
        new length prefix and the ciphertext (two buffers: the ciphertext is not copied)."""
        if len(buffers) == 1:
            body = memoryview(buffers[0]).cast("B")[4:]
        else:
            views = [memoryview(b).cast("B") for b in buffers]
            size = sum(v.nbytes for v in views)
            if len(self._scratch) < size:
                self._scratch = bytearray(size)
            gathered, at = memoryview(self._scratch), 0
            for v in views:
                gathered[at : at + v.nbytes] = v
                at += v.nbytes
            body = gathered[4:size]
        prefix = frame_header(len(body) + SESSION_TAG_BYTES)
        return [prefix, self._aead.encrypt(self._nonce(), body, prefix)]

    def open(self, sealed: Buffer) -> bytes:
        """A received sealed body -> the frame body; ``DECRYPTION_FAILED`` if it was not
        sealed by the peer's key for this position in the stream."""
        prefix = struct.pack(">I", len(sealed))
        try:
            return self._aead.decrypt(self._nonce(), sealed, prefix)
        except InvalidTag:
            raise RemoteProtocolError(
                f"frame {self.count - 1} does not open with the session key",
                ErrorCode.DECRYPTION_FAILED,
            ) from None
