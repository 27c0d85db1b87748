"""A user-space delay router: packets between emulated hosts, held for their links' delay.

This kernel has no ``netem``, and a TCP relay that delays bytes would hide the round trip
from TCP (it would see two short connections). So the router namespace sends every packet
that arrives from a host into a TUN device (policy routing, see ``topology.py``); this
program reads each IPv4 packet from the TUN device, holds it for the one-way delay of the
sender's link plus the receiver's link (with jitter and loss if asked), and writes it back,
and the kernel forwards it to the receiving host. Bandwidth is not shaped here: ``tbf`` does
that on both ends of every link.

Packets of one (sender, receiver) pair leave in the order they came (jitter never reorders,
so TCP sees delay variation but no spurious reordering). Loss is drawn per link crossed.
Bounded: it exits after ``--max-seconds`` or on SIGTERM/SIGINT, and writes its counters
(packets, bytes and drops per pair) as JSON to ``--stats`` on exit.

Run inside the router namespace as root::

    python3 router.py --tun sphtun --link 10.77.1.0/24=25:0:0 --link 10.77.2.0/24=25:0:0 ...

where each link is ``PREFIX=DELAY_MS:JITTER_MS:LOSS_PERCENT`` for one host's link.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import ipaddress
import json
import os
import random
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LinkSpec", "Router", "open_tun", "parse_link"]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
#: Largest packet read from the TUN device (its MTU is the hosts' 1500; this leaves room).
MAX_PACKET = 65536
#: Packets read per wake-up before releasing due ones (bounds the time between releases).
READ_BATCH = 256
#: Packets held at most (about 90 MB of 1500-byte packets); beyond it new packets are dropped.
MAX_HELD = 60_000


@dataclass(frozen=True)
class LinkSpec:
    """One host's link to the router: its prefix, one-way delay, jitter and loss."""

    network: ipaddress.IPv4Network
    delay_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0  # probability, 0..1

    def draw_ms(self, rng: random.Random) -> float:
        if self.jitter_ms <= 0:
            return self.delay_ms
        return max(0.0, rng.gauss(self.delay_ms, self.jitter_ms))


def parse_link(text: str) -> LinkSpec:
    """``10.77.1.0/24=25:2:0.5`` -> 25 ms one way, 2 ms jitter (sd), 0.5 % loss."""
    prefix, _, rest = text.partition("=")
    parts = [float(p) for p in rest.split(":")] if rest else []
    delay, jitter, loss = [*parts, 0.0, 0.0, 0.0][:3]
    if delay < 0 or jitter < 0 or not 0 <= loss < 100:
        raise ValueError(f"bad link {text!r}: want PREFIX=DELAY_MS[:JITTER_MS[:LOSS_PERCENT]]")
    return LinkSpec(ipaddress.IPv4Network(prefix), delay, jitter, loss / 100)


def open_tun(name: str) -> int:
    """Open (create) the TUN device ``name``; returns its file descriptor (non-blocking)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Router:
    """The delay line: ``on_packet`` files a packet, ``release`` writes out the due ones."""

    def __init__(self, links: list[LinkSpec], seed: int = 0) -> None:
        self.links = links
        self.rng = random.Random(seed)
        self.queues: dict[tuple[int, int], collections.deque[tuple[float, bytes]]] = {}
        self.held = 0
        self.stats: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
        self._by_addr: dict[int, int] = {}

    def _link_of(self, addr: int) -> int:
        index = self._by_addr.get(addr)
        if index is None:
            ip = ipaddress.IPv4Address(addr)
            index = next((i for i, lk in enumerate(self.links) if ip in lk.network), -1)
            self._by_addr[addr] = index
        return index

    def on_packet(self, packet: bytes, now: float) -> None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return  # not IPv4: the hosts have IPv6 off; nothing else is routed here
        src = self._link_of(int.from_bytes(packet[12:16], "big"))
        dst = self._link_of(int.from_bytes(packet[16:20], "big"))
        pair = (src, dst)
        # stats per pair: packets, bytes, dropped by loss, dropped for lack of room
        row = self.stats[f"{src + 1}->{dst + 1}"]
        row[0] += 1
        row[1] += len(packet)
        delay = 0.0
        for index in (src, dst):
            if index < 0:
                continue
            link = self.links[index]
            if link.loss and self.rng.random() < link.loss:
                row[2] += 1
                return
            delay += link.draw_ms(self.rng)
        if self.held >= MAX_HELD:
            row[3] += 1
            return
        queue = self.queues.setdefault(pair, collections.deque())
        due = now + delay / 1000
        if queue and queue[-1][0] > due:
            due = queue[-1][0]  # never reorder within a pair
        queue.append((due, packet))
        self.held += 1

    def next_due(self) -> float | None:
        heads = [q[0][0] for q in self.queues.values() if q]
        return min(heads) if heads else None

    def release(self, fd: int, now: float) -> None:
        for queue in self.queues.values():
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                self.held -= 1
                with contextlib.suppress(OSError):  # no route, or the device is going away
                    os.write(fd, packet)


def serve(fd: int, router: Router, max_seconds: float, stats_path: Path | None) -> None:
    """Read, hold and release packets until stopped or ``max_seconds`` have passed."""
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    poller = select.epoll()
    poller.register(fd, select.EPOLLIN)
    ends = time.monotonic() + max_seconds
    try:
        while not stop:
            now = time.monotonic()
            if now >= ends:
                break
            due = router.next_due()
            timeout = min(1.0, ends - now) if due is None else max(0.0, due - now)
            if poller.poll(timeout):
                for _ in range(READ_BATCH):
                    try:
                        packet = os.read(fd, MAX_PACKET)
                    except BlockingIOError:
                        break
                    router.on_packet(packet, time.monotonic())
            router.release(fd, time.monotonic())
    finally:
        poller.close()
        if stats_path is not None:
            rows = {
                pair: {"packets": r[0], "bytes": r[1], "lost": r[2], "overflow": r[3]}
                for pair, r in sorted(router.stats.items())
            }
            tmp = stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows, indent=1) + "\n")
            os.replace(tmp, stats_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tun", required=True, help="TUN device to create and read")
    parser.add_argument("--link", action="append", default=[], type=parse_link)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--ready", type=Path, help="file written once the device is open")
    args = parser.parse_args(argv)
    fd = open_tun(args.tun)
    if args.ready is not None:
        args.ready.write_text(str(os.getpid()))
    serve(fd, Router(args.link, args.seed), args.max_seconds, args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
