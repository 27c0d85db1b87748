"""The ownership table's bounds and eviction rule (07 §7.4.1)."""

from __future__ import annotations

from spheroid_p2p.core.ownership import SELF, OwnershipTable
from spheroid_p2p.wire.records import OwnershipRecord, SignedRecord
from spheroid_p2p.wire.signing import KeyPair


def _record(key: KeyPair, block: int = 0, seq: int = 1) -> SignedRecord:
    return OwnershipRecord(
        owner_key=key.public_key,
        block=block,
        role="serve",
        version=0,
        content_hash=b"",
        addrs=("127.0.0.1:1",),
        load=0.0,
        seq=seq,
        ttl_ms=60_000,
    ).sign(key)


def test_a_flood_of_fresh_keys_evicts_the_flooders_records_not_others() -> None:
    table = OwnershipTable(max_records=32, max_per_owner=4)
    mine = KeyPair.generate()
    assert table.offer(_record(mine), 60_000, 0.0, source=SELF)
    honest = [KeyPair.generate() for _ in range(10)]
    for k in honest:
        assert table.offer(_record(k), 60_000, 0.0, source=b"honest")
    flood = [KeyPair.generate() for _ in range(200)]
    for k in flood:
        table.offer(_record(k), 60_000, 0.0, source=b"flooder")
    assert len(table) == 32
    owners = {e.record.owner for e in table.entries()}
    assert mine.peer_id in owners
    assert all(k.peer_id in owners for k in honest)  # the honest relay's records all stayed
    assert table.dropped["evicted"] == 200 - (32 - 11)
    # the flooder's newest records are the ones held (oldest evicted first)
    assert flood[-1].peer_id in owners and flood[0].peer_id not in owners


def test_one_owner_holds_at_most_max_per_owner_records() -> None:
    table = OwnershipTable(max_records=32, max_per_owner=4)
    key = KeyPair.generate()
    accepted = [table.offer(_record(key, block=b), 60_000, 0.0, source=b"x") for b in range(10)]
    assert accepted == [True] * 4 + [False] * 6
    assert table.dropped["owner_full"] == 6
    # a newer record for a key it already holds is still accepted
    assert table.offer(_record(key, block=0, seq=2), 60_000, 0.0, source=b"x")


def test_a_full_table_of_own_records_refuses_newcomers() -> None:
    table = OwnershipTable(max_records=2, max_per_owner=4)
    mine = KeyPair.generate()
    for b in range(2):
        assert table.offer(_record(mine, block=b), 60_000, 0.0)
    assert not table.offer(_record(KeyPair.generate()), 60_000, 0.0, source=b"x")
    assert table.dropped["table_full"] == 1
