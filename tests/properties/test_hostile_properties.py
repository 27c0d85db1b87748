"""Properties of the code that reads peer input: addresses, connections fed arbitrary bytes,
relayed records merged into a bounded table, the combined rules' fields of a traversal."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from spheroid_p2p.core.connection import FrameSigner, PeerConnection
from spheroid_p2p.core.ownership import OwnershipTable
from spheroid_p2p.errors import RemoteProtocolError
from spheroid_p2p.testing.hostile import crafted_record
from spheroid_p2p.wire.addr import BadAddressError, parse_addr
from spheroid_p2p.wire.records import SignedRecord
from spheroid_p2p.wire.signing import KeyPair

KEY = KeyPair.generate()


@given(st.text(max_size=300))
def test_any_text_parses_to_a_valid_address_or_a_bad_address_error(text: str) -> None:
    try:
        addr = parse_addr(text)
    except BadAddressError:
        return
    assert 1 <= addr.port <= 65535
    assert parse_addr(str(addr)) == addr  # what we print, we read back


@given(
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
    port=st.integers(1, 65535),
)
def test_every_dns_name_and_port_is_accepted(host: str, port: int) -> None:
    assert parse_addr(f"{host}:{port}").port == port


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), cut=st.integers(0, 2000), initiator=st.booleans())
def test_a_connection_fed_any_bytes_only_closes(data: bytes, cut: int, initiator: bool) -> None:
    """Whatever arrives, in whatever pieces, the machine returns events (never raises)."""
    conn = PeerConnection(FrameSigner(KEY, 1000), now=0.0, nonce=bytes(32))
    if initiator:
        conn.start(1_700_000_000_000)
    conn.receive_data(data[:cut], 1.0, 1_700_000_000_000)
    conn.receive_data(data[cut:], 2.0, 1_700_000_000_000)
    conn.handle_timer(60.0, 1_700_000_060_000)
    conn.eof(61.0, 1_700_000_061_000)


@settings(max_examples=100, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["blk", "role", "ver", "h", "addrs", "load", "seq", "ttl", "nb", "cfg"]),
        st.one_of(
            st.integers(-5, 2**64 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=20),
            st.binary(max_size=40),
            st.lists(st.text(max_size=30), max_size=10),
            st.booleans(),
        ),
        max_size=4,
    ),
    sources=st.lists(st.binary(min_size=1, max_size=2), min_size=1, max_size=5),
)
def test_relayed_records_decode_or_are_refused_and_the_table_stays_bounded(
    fields: dict[str, object], sources: list[bytes]
) -> None:
    table = OwnershipTable(max_records=8, max_per_owner=2)
    for i in range(12):
        data, sig = crafted_record(KeyPair.generate(), {**fields, "blk": fields.get("blk", i)})
        try:
            signed = SignedRecord.decode(data, sig)
        except RemoteProtocolError:
            continue
        table.offer(signed, 60_000, float(i), source=sources[i % len(sources)])
        assert len(table) <= 8
    table.expire(1e9)
    assert len(table) == 0


_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # what msgpack can carry
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.binary(max_size=4),
)


def _traverse_frame(fields: dict[str, object]) -> bytes:
    """A signed TRAVERSE frame to hop 1 (blocks 2-3) with ``fields`` set in its body as given."""
    from spheroid_p2p.testing.hostile import HostilePeer
    from spheroid_p2p.wire.tensors import chunk_digest
    from spheroid_p2p.wire.traversal import Hop, InlineTensor, Traverse

    z = bytes(16)
    base = Traverse(
        traversal_id=7, client=bytes(32), reply_addr="127.0.0.1:9000",
        route=(Hop(bytes(32), "127.0.0.1:7000", 0, 1), Hop(bytes(32), "127.0.0.1:7001", 2, 3)),
        hop=1, config_hash="", steps_per_block=1, prefix=b"Day 1.", span=0, seed=5,
        temperature=0.0, deadline_ms=10_000, want_logits=False,
        z=InlineTensor(1, (2, 2), 0, chunk_digest(z)), payload=z,
    )  # fmt: skip
    body = {**base.to_body(), **{k: v for k, v in fields.items() if v is not None}}
    return HostilePeer(KEY).frame(int(Traverse.TYPE), body, z)[4:]


def _next_lp_in_range(combine: int, combined: bytes, qualities: tuple[float, ...]) -> None:
    """The hop's arithmetic on what it accepted: the lp it passes on is what the next takes."""
    import torch

    from spheroid_p2p.ml.combine import Combination

    acc = torch.frombuffer(bytearray(combined), dtype=torch.float16).view(1, -1, 256)
    mix = Combination(combine, acc, qualities)
    mix.add(torch.randn(1, acc.shape[1], 256) * 30, 2.0)
    assert mix.acc is not None
    out = mix.acc.float()
    assert bool(torch.isfinite(out).all()) and float(out.min()) >= -60000 and float(out.max()) <= 0


@settings(max_examples=300, deadline=None)
@given(
    cb=st.sampled_from([0, 1, 2, 3]) | _VALUE,
    lp=st.none() | st.binary(max_size=1100),
    lq=st.none() | _VALUE | st.lists(st.floats(-1, 20) | _VALUE, max_size=70),
)
def test_any_combined_fields_decode_or_are_refused(cb: object, lp: object, lq: object) -> None:
    """A TRAVERSE whose cb, lp and lq are anything a peer can send is refused with a protocol
    error or decodes into values a hop can use (10 §10.9)."""
    from spheroid_p2p.wire.codec import decode_frame
    from spheroid_p2p.wire.traversal import COMBINE_LAST

    try:
        message = decode_frame(_traverse_frame({"cb": cb, "lp": lp, "lq": lq})).message
    except RemoteProtocolError:
        return
    if message.combine != COMBINE_LAST and message.combined:
        _next_lp_in_range(message.combine, message.combined, message.qualities)


@settings(max_examples=200, deadline=None)
@given(
    cb=st.sampled_from([1, 2]),
    rows=st.integers(1, 16),
    value=st.floats(-60000, 0, width=16),
    lq=st.lists(st.floats(0, 16), min_size=1, max_size=64),
)
def test_extreme_accepted_combined_fields_keep_the_next_lp_in_range(
    cb: int, rows: int, value: float, lq: list[float]
) -> None:
    """Every lp value at the floor or at 0, qualities from 0 to MAX_QUALITY (a share that
    underflows): accepted, and the next lp is still in range."""
    from spheroid_p2p.wire.codec import decode_frame

    lp = struct.pack("<e", value) * 256 * rows
    fields = {"cb": cb, "lp": lp, "lq": lq if cb == 2 else None}
    message = decode_frame(_traverse_frame(fields)).message
    _next_lp_in_range(message.combine, message.combined, message.qualities)
