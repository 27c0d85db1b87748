"""Coverage-guided fuzzing (atheris, libFuzzer) of the code that reads peer input.

Targets, each fed arbitrary bytes:

* ``frames``: the stream decoder (01) split at a fuzzed point, then every frame body decoded;
* ``messages``: one frame body through ``decode_frame`` (03 §3.4: structure, profile,
  envelope, signature, body, tensors), also with the pre-handshake gate;
* ``handshake``: a connection state machine (both roles) receiving the bytes at a fuzzed
  split, including its timers;
* ``records``: a relayed record decoded, verified and merged into an ownership table.

Anything other than ``RemoteProtocolError`` (the one exception peer input may cause) is a
crash, and libFuzzer stops with the input that caused it. The seed corpus is every
conformance vector in ``protocol/vectors``.

    python3 scripts/devenv.py fuzz                      # every target, 1M runs each
    python scripts/fuzz.py --runs 1000000 --out bench-out/fuzz.json
    python scripts/fuzz.py --target messages --seconds 60

Writes JSON (runs, seconds, runs/s, crashes per target) and prints one summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("frames", "messages", "handshake", "records")


def _seed_corpus(directory: Path) -> int:
    count = 0
    for path in sorted((ROOT / "protocol" / "vectors").glob("*.json")):
        for vector in json.loads(path.read_text()).get("vectors", []):
            for key in ("bytes", "stream"):
                value = vector.get(key)
                if isinstance(value, str) and re.fullmatch(r"[0-9a-f]*", value):
                    (directory / f"{path.stem}-{count}").write_bytes(bytes.fromhex(value))
                    count += 1
    return count


def _target(name: str) -> Any:
    """The one-input function of a target (imports happen under atheris' instrumentation)."""
    import atheris

    with atheris.instrument_imports():
        from spheroid_p2p.core.connection import FrameSigner, PeerConnection
        from spheroid_p2p.core.ownership import OwnershipTable
        from spheroid_p2p.errors import RemoteProtocolError
        from spheroid_p2p.wire.codec import decode_frame
        from spheroid_p2p.wire.framing import FrameDecoder
        from spheroid_p2p.wire.records import SignedRecord
        from spheroid_p2p.wire.signing import KeyPair

    key = KeyPair.generate()
    gate = frozenset({1, 2, 3})

    def frames(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        cut = fdp.ConsumeIntInRange(0, 64)
        rest = fdp.ConsumeBytes(fdp.remaining_bytes())
        decoder = FrameDecoder()
        try:
            decoder.feed(rest[:cut])
            decoder.feed(rest[cut:])
            for _ in range(64):
                body = decoder.next_frame()
                if body is None:
                    break
                decode_frame(body, verify_chunks=True)
            decoder.eof()
        except RemoteProtocolError:
            pass

    def messages(data: bytes) -> None:
        for only in (None, gate):
            with contextlib.suppress(RemoteProtocolError):
                decode_frame(data, verify_chunks=True, only=only)

    def handshake(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        initiator = fdp.ConsumeBool()
        cut = fdp.ConsumeIntInRange(0, 256)
        rest = fdp.ConsumeBytes(fdp.remaining_bytes())
        conn = PeerConnection(
            FrameSigner(key, 1000), now=0.0, nonce=bytes(32), capabilities=("gossip/1",)
        )
        if initiator:
            conn.start(1_700_000_000_000)
        conn.receive_data(rest[:cut], 1.0, 1_700_000_000_000)
        conn.receive_data(rest[cut:], 2.0, 1_700_000_000_000)
        conn.handle_timer(30.0, 1_700_000_030_000)
        conn.eof(31.0, 1_700_000_031_000)
        conn.take_outgoing()

    table = OwnershipTable(max_records=64)

    def records(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        sig = fdp.ConsumeBytes(64)
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        try:
            signed = SignedRecord.decode(body, sig)
        except RemoteProtocolError:
            return
        table.offer(signed, 60_000, 0.0, source=sig[:32])
        table.expire(1e9)

    return {"frames": frames, "messages": messages, "handshake": handshake, "records": records}[
        name
    ]


def _child(name: str, runs: int, seconds: int, corpus: str) -> None:
    import atheris

    one = _target(name)
    flags = [sys.argv[0], f"-runs={runs}", "-max_len=65536", "-rss_limit_mb=4096"]
    if seconds:
        flags.append(f"-max_total_time={seconds}")
    atheris.Setup([*flags, corpus], one)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=TARGETS, action="append")
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per target")
    parser.add_argument("--seconds", type=int, default=0, help="time limit per target (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "fuzz.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.runs, args.seconds, args.corpus)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.target or TARGETS:
        with tempfile.TemporaryDirectory() as corpus:
            seeds = _seed_corpus(Path(corpus))
            start = time.monotonic()
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    "--runs",
                    str(args.runs),
                    "--seconds",
                    str(args.seconds),
                    "--corpus",
                    corpus,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            seconds = time.monotonic() - start
        log = proc.stdout + proc.stderr
        done = re.findall(r"Done (\d+) runs in (\d+) second", log)
        runs = int(done[-1][0]) if done else 0
        crashed = proc.returncode != 0
        results.append(
            {
                "target": name,
                "runs": runs,
                "seconds": round(seconds, 1),
                "runs_per_s": round(runs / max(seconds, 1e-9)),
                "seed_inputs": seeds,
                "crashed": crashed,
                "exit_code": proc.returncode,
                "log_tail": log[-3000:] if crashed else log[-400:],
            }
        )
        print(f"  {name}: {runs} runs in {seconds:.0f} s, crashed={crashed}", file=sys.stderr)
    args.out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    total = sum(r["runs"] for r in results)
    crashes = [r["target"] for r in results if r["crashed"]]
    print(
        f"fuzz: {len(results)} targets, {total} executions "
        f"(min {min(r['runs'] for r in results)} per target), crashes: {crashes or 'none'} "
        f"-> {args.out}"
    )
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
