"""PeerConnection pairs joined in memory: handshake, messages, keep-alive, failures."""

from __future__ import annotations

import pytest

from spheroid_p2p.core.connection import (
    HOT_PING_S,
    ConnectionLost,
    ConnectionParams,
    ConnectionState,
    FrameSigner,
    HandshakeDone,
    MessageReceived,
    PeerConnection,
)
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.wire.codec import encode_frame
from spheroid_p2p.wire.control import Ping
from spheroid_p2p.wire.framing import join_frame
from spheroid_p2p.wire.gossip import GossipSummary
from spheroid_p2p.wire.signing import KeyPair

A = KeyPair.from_seed(bytes([1]) * 32)
B = KeyPair.from_seed(bytes([2]) * 32)
PARAMS = ConnectionParams(ping_interval_s=5.0, idle_timeout_s=20.0)
WALL = 1_700_000_000_000


def _pair(versions_b: tuple[int, ...] = (1,)) -> tuple[PeerConnection, PeerConnection]:
    a = PeerConnection(
        FrameSigner(A, 1000), now=0.0, nonce=b"a" * 32, params=PARAMS, capabilities=("gossip/1",)
    )
    b = PeerConnection(
        FrameSigner(B, 5000),
        now=0.0,
        nonce=b"b" * 32,
        params=PARAMS,
        capabilities=("gossip/1",),
        versions=versions_b,
    )
    a.start(WALL)
    b.start(WALL)
    return a, b


def _pump(a: PeerConnection, b: PeerConnection, now: float = 0.1) -> tuple[list, list]:  # type: ignore[type-arg]
    """Move queued bytes both ways until quiet, one byte at a time for good measure."""
    ev_a: list = []  # type: ignore[type-arg]
    ev_b: list = []  # type: ignore[type-arg]
    for _ in range(10):
        out_a, out_b = join_frame(a.take_outgoing()), join_frame(b.take_outgoing())
        if not out_a and not out_b:
            break
        for i in range(len(out_a)):
            ev_b += b.receive_data(out_a[i : i + 1], now, WALL)
        ev_a += a.receive_data(out_b, now, WALL)
    return ev_a, ev_b


def test_handshake_then_messages_flow_both_ways() -> None:
    """Both sides report HandshakeDone with the other's id; then messages arrive as events."""
    a, b = _pair()
    ev_a, ev_b = _pump(a, b)
    assert isinstance(ev_a[0], HandshakeDone) and ev_a[0].result.peer_id == B.peer_id
    assert isinstance(ev_b[0], HandshakeDone) and ev_b[0].result.peer_id == A.peer_id
    frames = a.send(GossipSummary(table_hash=bytes(32), count=0), WALL)
    (event,) = b.receive_data(join_frame(frames), 0.2, WALL)
    assert isinstance(event, MessageReceived) and isinstance(event.message, GossipSummary)


def test_version_mismatch_is_reported_on_both_sides() -> None:
    """Without a common version both connections end with UNSUPPORTED_VERSION."""
    a, b = _pair(versions_b=(2,))
    ev_a, ev_b = _pump(a, b)
    lost_a = [e for e in ev_a if isinstance(e, ConnectionLost)]
    lost_b = [e for e in ev_b if isinstance(e, ConnectionLost)]
    assert lost_a and lost_a[0].code == ErrorCode.UNSUPPORTED_VERSION
    assert lost_b and lost_b[0].code == ErrorCode.UNSUPPORTED_VERSION


def test_keepalive_measures_rtt_and_idle_peers_time_out() -> None:
    """A ping is sent when due and its pong gives an RTT; silence past the limit is TIMEOUT."""
    a, b = _pair()
    _pump(a, b)
    assert a.get_timer() == 5.0
    a.handle_timer(5.0, WALL)
    b.receive_data(join_frame(a.take_outgoing()), 5.01, WALL)
    a.receive_data(join_frame(b.take_outgoing()), 5.03, WALL)
    assert a.rtt_s is not None and abs(a.rtt_s - 0.03) < 1e-9
    (lost,) = a.handle_timer(5.03 + 20.0, WALL)
    assert isinstance(lost, ConnectionLost) and lost.code == ErrorCode.TIMEOUT
    assert a.state is ConnectionState.CLOSED


def test_a_hot_connection_pings_often_until_it_cools_down() -> None:
    """keep_hot: a ping every HOT_PING_S for the given seconds (the connection never looks
    idle to TCP), then the normal interval again."""
    a, b = _pair()
    _pump(a, b)
    a.keep_hot(1.0, 0.35)
    assert a.get_timer() == 1.0 + HOT_PING_S
    times = []
    now = 1.0
    for _ in range(10):
        now = a.get_timer()  # type: ignore[assignment]
        if now > 3.0:
            break
        a.handle_timer(now, WALL)
        if a.take_outgoing():
            times.append(now)
        b.receive_data(b"", now, WALL)
    assert times == pytest.approx([1.0 + HOT_PING_S * k for k in (1, 2, 3, 4)])
    assert a.get_timer() == pytest.approx(times[-1] + 5.0)  # cooled down: the normal interval


def test_frames_from_another_key_and_replays_close_the_connection() -> None:
    """After the handshake, a frame signed by a third key, or a replayed seq, is refused."""
    a, b = _pair()
    _pump(a, b)
    other = KeyPair.from_seed(bytes([3]) * 32)
    forged = join_frame(encode_frame(other, Ping(nonce=1), seq=10**9, timestamp_ms=WALL))
    (lost,) = b.receive_data(forged, 1.0, WALL)
    assert isinstance(lost, ConnectionLost) and lost.code == ErrorCode.BAD_SIGNATURE
    a2, b2 = _pair()
    _pump(a2, b2)
    frame = join_frame(a2.send(GossipSummary(table_hash=bytes(32), count=0), WALL))
    b2.receive_data(frame, 1.0, WALL)
    (lost,) = b2.receive_data(frame, 1.0, WALL)
    assert isinstance(lost, ConnectionLost) and lost.code == ErrorCode.REPLAYED_MESSAGE


def test_garbage_closes_with_a_coded_close_frame() -> None:
    """Malformed bytes produce ConnectionLost and a Close frame carrying the code."""
    a, b = _pair()
    _pump(a, b)
    (lost,) = b.receive_data(b"\x00\x00\x00\x02\x90\x90", 1.0, WALL)
    assert lost.code == ErrorCode.MALFORMED_FRAME and not lost.by_peer
    (closed,) = a.receive_data(join_frame(b.take_outgoing()), 1.0, WALL)
    assert isinstance(closed, ConnectionLost) and closed.by_peer
    assert closed.code == ErrorCode.MALFORMED_FRAME


def _session_pair(
    key_a: bytes | None, key_b: bytes | None
) -> tuple[PeerConnection, PeerConnection]:
    a = PeerConnection(
        FrameSigner(A, 1000), now=0.0, nonce=b"a" * 32, params=PARAMS, session_key=key_a
    )
    b = PeerConnection(
        FrameSigner(B, 5000), now=0.0, nonce=b"b" * 32, params=PARAMS, session_key=key_b
    )
    a.start(WALL)
    b.start(WALL)
    return a, b


def test_encrypted_session_seals_every_frame_after_the_handshake() -> None:
    """Both offer eph: the handshake completes (byte by byte), later frames are sealed (the
    plaintext does not appear on the wire) and open on the other side; a flipped bit closes
    the connection with DECRYPTION_FAILED."""
    a, b = _session_pair(bytes(range(32)), bytes(range(32, 64)))
    ev_a, ev_b = _pump(a, b)
    assert isinstance(ev_a[0], HandshakeDone) and isinstance(ev_b[0], HandshakeDone)
    assert a.encrypted and b.encrypted
    summary = GossipSummary(table_hash=b"\x42" * 32, count=7)
    wire = join_frame(a.send(summary, WALL))
    assert b"\x42" * 32 not in wire  # sealed
    for i in range(len(wire)):
        events = b.receive_data(wire[i : i + 1], 0.2, WALL)
    assert isinstance(events[0], MessageReceived) and events[0].message == summary
    # the keep-alive the machines queue themselves is sealed too
    b.handle_timer(5.5, WALL)
    assert a.receive_data(join_frame(b.take_outgoing()), 5.6, WALL) == []  # a sealed PING
    assert a.take_outgoing()  # the sealed PONG
    bad = bytearray(join_frame(a.send(summary, WALL)))
    bad[-1] ^= 0x01
    (lost,) = b.receive_data(bytes(bad), 0.3, WALL)
    assert isinstance(lost, ConnectionLost) and lost.code == ErrorCode.DECRYPTION_FAILED


def test_a_peer_that_offers_no_session_gets_a_plaintext_connection() -> None:
    a, b = _session_pair(bytes(range(32)), None)
    ev_a, ev_b = _pump(a, b)
    assert isinstance(ev_a[0], HandshakeDone) and isinstance(ev_b[0], HandshakeDone)
    assert not a.encrypted and not b.encrypted
    summary = GossipSummary(table_hash=b"\x42" * 32, count=7)
    wire = join_frame(a.send(summary, WALL))
    assert b"\x42" * 32 in wire
    (event,) = b.receive_data(wire, 0.2, WALL)
    assert isinstance(event, MessageReceived) and event.message == summary
