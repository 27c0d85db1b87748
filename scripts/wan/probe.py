"""The raw link, measured the way the benchmarks' ceilings need it: RTT and bulk TCP goodput.

``serve`` (in one host) accepts connections and answers each by the protocol below;
``measure`` (in another) asks it for the round trip (small echoes on a fresh connection,
after the handshake) and then for ``--bytes`` of bulk data, timing from the request to the last
byte, as a fetch of one version is timed. The bulk goodput is the ceiling a transfer over the
same link is compared with ("raw capacity", in the same run).

Protocol, one request per connection: the client sends ``b"E"`` + 8 bytes (count of echoes:
each a 1-byte ping answered by a 1-byte pong), or ``b"B"`` + 8 bytes (bytes wanted: the server
writes that many zero bytes and closes).

    python3 probe.py serve --listen 10.77.1.2:9100 --seconds 60
    python3 probe.py measure --peer 10.77.1.2:9100 --bytes 67108864   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from pathlib import Path

__all__ = ["measure", "serve"]

PIECE = 1 << 20
#: Bytes a client may ask for at most (bounds what one request costs the server).
MAX_BULK = 1 << 32


def _handle(conn: socket.socket) -> None:
    with conn:
        head = b""
        while len(head) < 9:
            more = conn.recv(9 - len(head))
            if not more:
                return
            head += more
        kind, (count,) = head[:1], struct.unpack(">Q", head[1:])
        if kind == b"E":
            for _ in range(min(count, 1000)):
                if not conn.recv(1):
                    return
                conn.sendall(b"p")
        elif kind == b"B":
            zeros = bytes(PIECE)
            left = min(count, MAX_BULK)
            while left > 0:
                n = min(left, PIECE)
                conn.sendall(zeros[:n])
                left -= n


def serve(listen: str, seconds: float, congestion: str | None = None) -> None:
    host, port = listen.rsplit(":", 1)
    server = socket.create_server((host, int(port)), reuse_port=False)
    server.settimeout(0.5)
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        if congestion:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


def measure(peer: str, n_bytes: int, echoes: int = 10) -> dict[str, float]:
    host, port = peer.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"E" + struct.pack(">Q", echoes))
        rtts = []
        for _ in range(echoes):
            t = time.perf_counter()
            conn.sendall(b"x")
            conn.recv(1)
            rtts.append((time.perf_counter() - t) * 1000)
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        start = time.perf_counter()
        conn.sendall(b"B" + struct.pack(">Q", n_bytes))
        got = 0
        buf = bytearray(PIECE)
        while got < n_bytes:
            n = conn.recv_into(buf)
            if not n:
                break
            got += n
        seconds = time.perf_counter() - start
    return {
        "rtt_ms_min": min(rtts),
        "rtt_ms_median": sorted(rtts)[len(rtts) // 2],
        "bulk_bytes": got,
        "bulk_seconds": seconds,
        "bulk_mbit_s": got * 8 / seconds / 1e6,
    }


def measured_links(hosts: list, seconds: float = 60.0) -> dict[str, dict[str, float]]:
    """Every ordered pair of ``hosts`` (``hosts.Host``) measured: a server on the receiver
    (bulk data flows from it), the client on the sender's side. For real machines, where
    no profile says what the links are."""
    import subprocess

    here = Path(__file__).resolve()
    out = {}
    for b, dst in enumerate(hosts):
        listen = f"{dst.addr}:{PROBE_PORT}"
        server = subprocess.Popen(
            [
                *dst.prefix,
                sys.executable,
                str(here),
                "serve",
                "--listen",
                listen,
                "--seconds",
                str(seconds),
            ]
        )
        try:
            time.sleep(1.0)  # the server binds; a real machine may need the time
            for a, src in enumerate(hosts):
                if a == b:
                    continue
                done = subprocess.run(
                    [*src.prefix, sys.executable, str(here), "measure", "--peer", listen],
                    capture_output=True,
                    text=True,
                    timeout=seconds,
                    check=True,
                )
                m = json.loads(done.stdout)
                # bulk data flows from b to a: the path b -> a
                out[f"{b}->{a}"] = {"one_way_ms": m["rtt_ms_min"] / 2, "mbit": m["bulk_mbit_s"]}
        finally:
            server.terminate()
            server.wait(10)
    return out


#: Port the probe server listens on (real machines: open it between the hosts).
PROBE_PORT = 9100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--seconds", type=float, default=120)
    s.add_argument("--congestion")
    m = sub.add_parser("measure")
    m.add_argument("--peer", required=True)
    m.add_argument("--bytes", type=int, default=16 << 20)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.listen, args.seconds, args.congestion)
    else:
        print(json.dumps(measure(args.peer, args.bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
