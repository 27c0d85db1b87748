"""Error codes and the exception hierarchy (spec: ``protocol/errors.md``).

``ErrorCode`` mirrors the registry in ``protocol/errors.md`` one to one; a test checks that the
two agree. Every way a frame or message can be rejected has a code, and every exception raised
while decoding untrusted bytes is a :class:`RemoteProtocolError` carrying one.

The split follows h11: :class:`LocalProtocolError` means *we* broke the rules (a caller bug),
:class:`RemoteProtocolError` means the peer did. Decoding peer input never raises anything
else; any other exception escaping the codec is a bug (the fuzz tests check this).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ConfigError",
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SpheroidError",
    "TransportError",
    "code_name",
]


class ErrorCode(IntEnum):
    """Registry of wire error codes (``protocol/errors.md``)."""

    NO_ERROR = 0
    PROTOCOL_VIOLATION = 1
    FRAME_TOO_LARGE = 2
    FRAME_TRUNCATED = 3
    MALFORMED_FRAME = 4
    MALFORMED_MESSAGE = 5
    UNKNOWN_MESSAGE_TYPE = 6
    UNSUPPORTED_VERSION = 7
    BAD_SIGNATURE = 8
    REPLAYED_MESSAGE = 9
    UNKNOWN_DTYPE = 10
    UNKNOWN_CODEC = 11
    TENSOR_SHAPE_MISMATCH = 12
    TENSOR_LIMIT = 13
    DECOMPRESSION_FAILED = 14
    HASH_MISMATCH = 15
    HANDSHAKE_FAILED = 16
    TIMEOUT = 17
    OVERLOADED = 18
    INTERNAL_ERROR = 19
    STALE_RECORD = 20
    BLOCK_NOT_SERVED = 21
    ROUND_CLOSED = 22
    CLOCK_SKEW = 23
    VERSION_UNKNOWN = 24
    DELTA_REJECTED = 25
    NOT_READY = 26
    DECRYPTION_FAILED = 27
    SPAN_UNSUPPORTED = 28


def code_name(code: int) -> str:
    """Name of a received code; codes outside the registry stay numbers (``UNKNOWN(42)``)."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN({code})"


class SpheroidError(Exception):
    """Base of every exception this package raises on purpose."""


class ConfigError(SpheroidError):
    """A configuration value, key file or command-line argument is unusable."""


class TransportError(SpheroidError):
    """A socket-level failure: refused, reset, timed out. Carries the address when known."""


class ProtocolError(SpheroidError):
    """A rule of the wire protocol was broken. ``code`` names the rule (``ErrorCode``)."""

    code: ErrorCode = ErrorCode.PROTOCOL_VIOLATION

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.args[0]}"


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids. The connection moves to ERROR."""
