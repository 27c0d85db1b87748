"""Signed block-ownership records (spec: ``protocol/07-ownership-gossip.md`` §7.3).

A record says "peer P serves (or trains) block B at version V, reachable at these addresses,
with this load". The owner signs its msgpack encoding under ``spheroid/v1/record``; relays
forward the exact signed bytes and signature, so any peer can check a record however many
hops it travelled. Records are keyed by ``(owner peer id, block)``; the owner's ``seq`` orders
them (higher wins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from spheroid_p2p.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from spheroid_p2p.params import (
    MAX_CONTEXT_BYTES,
    MAX_RECORD_TTL_MS,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
)
from spheroid_p2p.wire import msgpack_profile
from spheroid_p2p.wire.addr import check_addrs
from spheroid_p2p.wire.signing import DOMAIN_RECORD, KeyPair, PeerId, verify

__all__ = ["ROLES", "OwnershipRecord", "SignedRecord"]

#: What a peer does with a block.
ROLES: Final = ("serve", "train")
#: Block index used by records that announce a peer without any block (e.g. a client).
NO_BLOCK: Final = 0xFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipRecord:
    """The content of one record (§7.3). Validated on construction."""

    owner_key: bytes
    block: int
    role: str
    version: int
    content_hash: bytes
    addrs: tuple[str, ...]
    load: float
    seq: int
    ttl_ms: int
    departed: bool = False
    #: Blocks in the owner's model (0: not said) and its config hash (hex; "": not said).
    n_blocks: int = 0
    config_hash: str = ""
    #: The model's context in bytes (r9; 0: not said): what a client sends as the prompt
    #: window, and when an autoregressive pipeline's session must start over.
    context: int = 0

    def __post_init__(self) -> None:
        def bad(msg: str, code: ErrorCode = ErrorCode.MALFORMED_MESSAGE) -> LocalProtocolError:
            return LocalProtocolError(f"ownership record: {msg}", code)

        if not isinstance(self.owner_key, bytes) or len(self.owner_key) != PUBLIC_KEY_BYTES:
            raise bad("owner key must be 32 bytes")
        if not isinstance(self.block, int) or not 0 <= self.block <= NO_BLOCK:
            raise bad(f"block must be in 0..{NO_BLOCK}")
        if self.role not in ROLES:
            raise bad(f"role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.version, int) or not 0 <= self.version < 2**64:
            raise bad("version must be a uint64")
        if not isinstance(self.content_hash, bytes) or len(self.content_hash) not in (0, 32):
            raise bad("content hash must be empty or 32 bytes")
        if not isinstance(self.addrs, tuple) or not all(isinstance(a, str) for a in self.addrs):
            raise bad("addrs must be a list of strings")
        check_addrs("ownership record addrs", self.addrs)
        if not isinstance(self.load, int | float) or not math.isfinite(self.load) or self.load < 0:
            raise bad("load must be a finite number >= 0")
        if not isinstance(self.seq, int) or not 0 <= self.seq < 2**64:
            raise bad("seq must be a uint64")
        if not isinstance(self.ttl_ms, int) or not self.ttl_ms > 0:
            raise bad("ttl must be a positive integer")
        if self.ttl_ms > MAX_RECORD_TTL_MS:
            raise bad(
                f"ttl {self.ttl_ms} ms exceeds MAX_RECORD_TTL_MS={MAX_RECORD_TTL_MS}",
                ErrorCode.STALE_RECORD,
            )
        if not isinstance(self.departed, bool):
            raise bad("dep must be a boolean")
        if not isinstance(self.n_blocks, int) or not 0 <= self.n_blocks < NO_BLOCK:
            raise bad("nb must be a block count")
        if not isinstance(self.config_hash, str) or len(self.config_hash) > 64:
            raise bad("cfg must be a string of at most 64 characters")
        if not isinstance(self.context, int) or isinstance(self.context, bool):
            raise bad("ctx must be an integer")
        if not 0 <= self.context <= MAX_CONTEXT_BYTES:
            raise bad(f"ctx must be in 0..{MAX_CONTEXT_BYTES}")

    @property
    def owner(self) -> PeerId:
        return PeerId.from_public_key(self.owner_key)

    @property
    def key(self) -> tuple[bytes, int]:
        """The merge key: (owner peer id bytes, block)."""
        return (self.owner.digest, self.block)

    def encode(self) -> bytes:
        return msgpack_profile.pack(
            {
                "pk": self.owner_key,
                "blk": self.block,
                "role": self.role,
                "ver": self.version,
                "h": self.content_hash,
                "addrs": list(self.addrs),
                "load": float(self.load),
                "seq": self.seq,
                "ttl": self.ttl_ms,
                "dep": self.departed,
                "nb": self.n_blocks,
                "cfg": self.config_hash,
                # r9, left out while 0 so that earlier records keep their bytes
                **({"ctx": self.context} if self.context else {}),
            }
        )

    def sign(self, key: KeyPair) -> SignedRecord:
        """Sign this record with its owner's key."""
        if key.public_key != self.owner_key:
            raise LocalProtocolError("a record can only be signed by its owner")
        data = self.encode()
        return SignedRecord(data=data, signature=key.sign(DOMAIN_RECORD, data), record=self)


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A record as it travels: the exact signed bytes, the owner's signature, and the
    decoded record."""

    data: bytes
    signature: bytes
    record: OwnershipRecord

    @classmethod
    def decode(cls, data: bytes, signature: bytes) -> SignedRecord:
        """Parse and verify a relayed record; raises ``RemoteProtocolError`` only."""
        if len(signature) != SIGNATURE_BYTES:
            raise RemoteProtocolError("record signature must be 64 bytes", ErrorCode.BAD_SIGNATURE)
        fields = msgpack_profile.unpack(data)
        if not isinstance(fields, dict):
            raise RemoteProtocolError("record is not a map", ErrorCode.MALFORMED_MESSAGE)
        if not isinstance(fields.get("addrs"), list):
            raise RemoteProtocolError("record addrs must be an array", ErrorCode.MALFORMED_MESSAGE)
        try:
            record = OwnershipRecord(
                owner_key=fields["pk"],
                block=fields["blk"],
                role=fields["role"],
                version=fields["ver"],
                content_hash=fields["h"],
                addrs=tuple(fields["addrs"]),
                load=fields["load"],
                seq=fields["seq"],
                ttl_ms=fields["ttl"],
                departed=fields.get("dep", False),
                n_blocks=fields.get("nb", 0),
                config_hash=fields.get("cfg", ""),
                context=fields.get("ctx", 0),
            )
        except KeyError as exc:
            raise RemoteProtocolError(
                f"record misses field {exc.args[0]!r}", ErrorCode.MALFORMED_MESSAGE
            ) from exc
        except LocalProtocolError as exc:
            raise RemoteProtocolError(str(exc.args[0]), exc.code) from exc
        verify(record.owner_key, signature, DOMAIN_RECORD, data)
        return cls(data=data, signature=signature, record=record)
