"""The handshake state machine, driven by hand with a manual clock (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from spheroid_p2p.core.handshake import Handshake, HandshakeState, choose_version
from spheroid_p2p.errors import ErrorCode, RemoteProtocolError
from spheroid_p2p.wire.codec import Envelope, decode_frame, encode_frame
from spheroid_p2p.wire.control import Close, HelloAck, Ping
from spheroid_p2p.wire.framing import join_frame
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.signing import KeyPair

A = KeyPair.from_seed(bytes([1]) * 32)
B = KeyPair.from_seed(bytes([2]) * 32)
M = KeyPair.from_seed(bytes([3]) * 32)


def _over_wire(key: KeyPair, message: Message, seq: int = 1) -> Envelope:
    return decode_frame(join_frame(encode_frame(key, message, seq=seq, timestamp_ms=0))[4:])


def _pair(
    versions_a: tuple[int, ...] = (1,), versions_b: tuple[int, ...] = (1,)
) -> tuple[Handshake, Handshake]:
    a = Handshake(
        local_id=A.peer_id,
        nonce=b"a" * 32,
        now=0.0,
        versions=versions_a,
        capabilities=("gossip/1", "transfer/1"),
        listen_addrs=("127.0.0.1:1",),
    )
    b = Handshake(
        local_id=B.peer_id,
        nonce=b"b" * 32,
        now=0.0,
        versions=versions_b,
        capabilities=("gossip/1",),
    )
    return a, b


def _exchange(a: Handshake, b: Handshake) -> None:
    (hello_a,), (hello_b,) = a.start(), b.start()
    (ack_b,) = b.handle(_over_wire(A, hello_a), now=1.0)
    (ack_a,) = a.handle(_over_wire(B, hello_b), now=1.0)
    assert a.handle(_over_wire(B, ack_b, seq=2), now=2.0) == []
    assert b.handle(_over_wire(A, ack_a, seq=2), now=2.0) == []


def test_symmetric_handshake_completes_with_common_capabilities() -> None:
    """Both sides finish, know each other's id, version 1 and the common capabilities."""
    a, b = _pair()
    _exchange(a, b)
    assert a.state is b.state is HandshakeState.DONE
    assert a.result is not None and b.result is not None
    assert a.result.peer_id == B.peer_id and b.result.peer_id == A.peer_id
    assert a.result.capabilities == b.result.capabilities == ("gossip/1",)
    assert b.result.listen_addrs == ("127.0.0.1:1",)
    assert a.get_timer() is None


def test_version_mismatch_fails_on_both_sides_with_the_version_code() -> None:
    """Peers with no common version both end with UNSUPPORTED_VERSION."""
    a, b = _pair(versions_a=(1,), versions_b=(2,))
    (hello_a,), (_hello_b,) = a.start(), b.start()
    with pytest.raises(RemoteProtocolError) as info_b:
        b.handle(_over_wire(A, hello_a), now=0.1)
    assert info_b.value.code is ErrorCode.UNSUPPORTED_VERSION
    # b sends Close(UNSUPPORTED_VERSION); a sees it instead of a HelloAck.
    with pytest.raises(RemoteProtocolError) as info_a:
        a.handle(_over_wire(B, Close(code=7, reason=str(info_b.value))), now=0.2)
    assert info_a.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert a.state is b.state is HandshakeState.FAILED


def test_ack_must_echo_our_nonce_and_name_us() -> None:
    """A HelloAck with someone else's nonce or recipient is HANDSHAKE_FAILED."""
    for nonce, recipient in ((b"x" * 32, A.peer_id.digest), (b"a" * 32, M.peer_id.digest)):
        a, b = _pair()
        a.start()
        a.handle(_over_wire(B, b.start()[0]), now=0.0)
        bad = HelloAck(version=1, capabilities=(), nonce=nonce, recipient=recipient)
        with pytest.raises(RemoteProtocolError) as info:
            a.handle(_over_wire(B, bad, seq=2), now=0.0)
        assert info.value.code is ErrorCode.HANDSHAKE_FAILED


def test_ack_signed_by_another_key_is_refused() -> None:
    """The HelloAck must come from the key that sent the Hello."""
    a, b = _pair()
    a.handle(_over_wire(B, b.start()[0]), now=0.0)
    forged = HelloAck(version=1, capabilities=(), nonce=b"a" * 32, recipient=A.peer_id.digest)
    with pytest.raises(RemoteProtocolError) as info:
        a.handle(_over_wire(M, forged), now=0.0)
    assert info.value.code is ErrorCode.HANDSHAKE_FAILED


def test_unexpected_peer_and_self_connections_are_refused() -> None:
    """Dialling a known id and reaching another, or reaching ourselves, fails the handshake."""
    a = Handshake(local_id=A.peer_id, nonce=b"a" * 32, now=0.0, expected_peer=M.peer_id)
    with pytest.raises(RemoteProtocolError) as info:
        a.handle(_over_wire(B, _pair()[1].start()[0]), now=0.0)
    assert info.value.code is ErrorCode.HANDSHAKE_FAILED
    a2 = Handshake(local_id=A.peer_id, nonce=b"a" * 32, now=0.0)
    with pytest.raises(RemoteProtocolError):
        a2.handle(_over_wire(A, a2.start()[0]), now=0.0)


def test_out_of_order_and_non_handshake_messages_are_violations() -> None:
    """A HelloAck before the Hello, or a Ping during the handshake, is PROTOCOL_VIOLATION."""
    for message in (
        HelloAck(version=1, capabilities=(), nonce=b"a" * 32, recipient=A.peer_id.digest),
        Ping(nonce=1),
    ):
        a, _ = _pair()
        with pytest.raises(RemoteProtocolError) as info:
            a.handle(_over_wire(B, message), now=0.0)
        assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_deadline_passes() -> None:
    """handle_timer at the deadline fails with TIMEOUT; before it, nothing happens."""
    a, _ = _pair()
    deadline = a.get_timer()
    assert deadline == 10.0
    a.handle_timer(9.99)
    assert a.state is HandshakeState.AWAIT_HELLO
    with pytest.raises(RemoteProtocolError) as info:
        a.handle_timer(deadline)
    assert info.value.code is ErrorCode.TIMEOUT


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"), [((1,), (1,), 1), ((1, 2, 3), (2, 3, 4), 3), ((1,), (1, 9), 1)]
)
def test_choose_version_picks_the_highest_common(
    ours: tuple[int, ...], theirs: tuple[int, ...], expected: int
) -> None:
    """The chosen version is the maximum of the intersection, the same on both sides."""
    assert choose_version(ours, theirs) == choose_version(theirs, ours) == expected
