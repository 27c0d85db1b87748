"""Properties of the code that reads peer input: addresses, connections fed arbitrary bytes,
relayed records merged into a bounded table."""

from __future__ import annotations

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
