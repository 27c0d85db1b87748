"""The WAN emulator's delay router (scripts/wan/router.py), without a TUN device."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "wan"))

from router import Router, parse_link


def _packet(src: str, dst: str, tag: int) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[12:16] = bytes(int(x) for x in src.split("."))
    header[16:20] = bytes(int(x) for x in dst.split("."))
    return bytes(header) + bytes([tag])


def _drain(router: Router, now: float) -> list[bytes]:
    r, w = os.pipe()
    try:
        router.release(w, now)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
    finally:
        os.close(r)
    return [data[i : i + 21] for i in range(0, len(data), 21)]


def test_a_packet_waits_for_both_links_delays_in_order() -> None:
    router = Router([parse_link("10.77.1.0/24=25"), parse_link("10.77.2.0/24=10")])
    for tag in range(3):
        router.on_packet(_packet("10.77.1.2", "10.77.2.2", tag), now=0.0)
    assert router.next_due() == pytest.approx(0.035)
    assert _drain(router, 0.034) == []
    assert [p[-1] for p in _drain(router, 0.035)] == [0, 1, 2]
    assert router.stats["1->2"][:2] == [3, 63]


def test_jitter_never_reorders_a_pair_and_loss_is_counted() -> None:
    router = Router([parse_link("10.77.1.0/24=20:15"), parse_link("10.77.2.0/24=20:15:30")])
    for tag in range(200):
        router.on_packet(_packet("10.77.1.2", "10.77.2.2", tag), now=tag * 1e-4)
    got = [p[-1] for p in _drain(router, 10.0)]
    assert got == sorted(got)  # in order
    lost = router.stats["1->2"][2]
    assert lost + len(got) == 200 and 30 < lost < 90  # about 30 % of 200


def test_bad_link_specs_and_non_ipv4_packets() -> None:
    with pytest.raises(ValueError, match="bad link"):
        parse_link("10.77.1.0/24=-5")
    router = Router([parse_link("10.77.1.0/24=1")])
    router.on_packet(b"\x60" + bytes(40), now=0.0)  # IPv6: not routed here
    router.on_packet(b"\x45", now=0.0)  # truncated
    assert router.held == 0
