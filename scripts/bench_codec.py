"""Benchmark the wire codec on a large tensor, against a plain copy measured in the same run.

For a 64 MiB float32 tensor (by default) this times, per codec (none, zstd, shuffle+zstd):

* encode+sign: hash every chunk, build and sign the header and chunk frames;
* decode+verify: feed the frames through the stream decoder, verify every signature and chunk
  hash, and assemble the tensor into one buffer;

and, as the baseline, one plain copy of the same tensor (``tensor.numpy().tobytes()``). The
headline is the uncompressed round trip divided by one plain copy (goal: at most 3).

Writes JSON (``--out``) and prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spheroid_p2p.core.session import Sealer
from spheroid_p2p.wire.chunks import TensorChunk, TensorHeader
from spheroid_p2p.wire.codec import decode_frame, encode_frame
from spheroid_p2p.wire.control import Ping
from spheroid_p2p.wire.dtypes import Codec, dtype_by_name
from spheroid_p2p.wire.framing import Buffer, FrameDecoder
from spheroid_p2p.wire.signing import KeyPair
from spheroid_p2p.wire.tensors import RawTensor, TensorAssembler, tensor_chunks, tensor_header

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from benchlib import git_commit  # noqa: E402


def _median_s(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def encode_tensor(key: KeyPair, tensor: RawTensor, codec: Codec) -> list[list[Buffer]]:
    """All frames of one tensor stream (each a list of buffers, as a socket would take it)."""
    header = tensor_header(1, "bench", tensor)
    frames = [encode_frame(key, header, seq=1, timestamp_ms=0)]
    for i, chunk in enumerate(tensor_chunks(header, tensor, codec)):
        frames.append(encode_frame(key, chunk, seq=2 + i, timestamp_ms=0))
    return frames


def decode_tensor(frames: list[list[Buffer]]) -> RawTensor:
    """Feed the frames to a stream decoder, verify everything and assemble the tensor."""
    decoder = FrameDecoder()
    assembler: TensorAssembler | None = None
    for frame in frames:
        for part in frame:
            decoder.feed(part)
        while (body := decoder.next_frame()) is not None:
            message = decode_frame(body).message
            if isinstance(message, TensorHeader):
                assembler = TensorAssembler(message)
            elif isinstance(message, TensorChunk) and assembler is not None:
                assembler.add(message)
    if assembler is None:
        raise RuntimeError("no tensor header in the stream")
    return assembler.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="tensor size in MiB (float32)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "bench_codec.json")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    numel = args.mib * 1024 * 1024 // 4
    # Weights-like data: normal values rounded to bf16 precision, as a checkpoint might hold.
    values = torch.randn(numel).to(torch.bfloat16).to(torch.float32)
    array = values.numpy()
    tensor = RawTensor(dtype_by_name("float32"), (numel,), memoryview(array).cast("B"))
    key = KeyPair.from_seed(bytes(32))

    copy_s, copy_all = _median_s(lambda: array.tobytes(), args.repeats)
    results: dict[str, Any] = {}
    for codec in Codec:
        frames = encode_tensor(key, tensor, codec)
        wire_bytes = sum(len(p) for f in frames for p in f)
        check = decode_tensor(frames)
        if bytes(check.data) != array.tobytes():
            print(f"error: {codec.name} round trip changed the tensor", file=sys.stderr)
            return 1
        repeats = args.repeats if codec == Codec.NONE else max(1, args.repeats // 2)
        enc_s, enc_all = _median_s(lambda c=codec: encode_tensor(key, tensor, c), repeats)
        dec_s, dec_all = _median_s(lambda f=frames: decode_tensor(f), repeats)
        results[codec.name.lower()] = {
            "encode_sign_s": enc_s,
            "decode_verify_s": dec_s,
            "round_trip_s": enc_s + dec_s,
            "round_trip_over_copy": (enc_s + dec_s) / copy_s,
            "encode_GBps": array.nbytes / enc_s / 1e9,
            "decode_GBps": array.nbytes / dec_s / 1e9,
            "wire_bytes": wire_bytes,
            "compression_ratio": array.nbytes / wire_bytes,
            "frames": len(frames),
            "encode_all_s": enc_all,
            "decode_all_s": dec_all,
        }
    # encrypted sessions (06 §6.7): seal every uncompressed frame, then open it, against the
    # uncompressed round trip above
    frames = encode_tensor(key, tensor, Codec.NONE)

    def seal_open() -> None:
        tx, rx = Sealer(bytes(32)), Sealer(bytes(32))
        for frame in frames:
            _, sealed = tx.seal(frame)
            rx.open(sealed)

    seal_s, _ = _median_s(seal_open, args.repeats)
    none_rt = results["none"]["round_trip_s"]
    session = {
        "seal_open_s": seal_s,
        "seal_open_GBps": array.nbytes / seal_s / 1e9,
        "encrypted_round_trip_over_plain": (none_rt + seal_s) / none_rt,
    }
    ping = Ping(nonce=1)
    small_enc_s, _ = _median_s(
        lambda: [encode_frame(key, ping, seq=1, timestamp_ms=0) for _ in range(1000)], 3
    )
    small_body = b"".join(encode_frame(key, ping, seq=1, timestamp_ms=0))[4:]
    small_dec_s, _ = _median_s(lambda: [decode_frame(small_body) for _ in range(1000)], 3)
    report = {
        "benchmark": "bench_codec",
        "git_commit": git_commit(),
        "params": {"mib": args.mib, "repeats": args.repeats, "dtype": "float32"},
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "plain_copy_s": copy_s,
        "plain_copy_all_s": copy_all,
        "codecs": results,
        "session": session,
        "control_frame_encode_sign_us": small_enc_s * 1e3,
        "control_frame_decode_verify_us": small_dec_s * 1e3,
        "goal": "uncompressed round trip <= 3x one plain copy",
        "goal_met": results["none"]["round_trip_over_copy"] <= 3.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    none, zstd = results["none"], results["zstd"]
    shuf = results["shuffle_zstd"]
    print(
        f"bench_codec {args.mib} MiB: copy {copy_s * 1e3:.1f} ms; none round trip "
        f"{none['round_trip_s'] * 1e3:.1f} ms = {none['round_trip_over_copy']:.2f}x copy "
        f"(goal <= 3x: {'met' if report['goal_met'] else 'MISSED'}); zstd "
        f"{zstd['round_trip_over_copy']:.1f}x, ratio {zstd['compression_ratio']:.2f}; "
        f"shuffle+zstd {shuf['round_trip_over_copy']:.1f}x, ratio "
        f"{shuf['compression_ratio']:.2f}; control frame {small_enc_s * 1e3:.0f}+"
        f"{small_dec_s * 1e3:.0f} us; sealing+opening adds {seal_s * 1e3:.1f} ms "
        f"({session['seal_open_GBps']:.2f} GB/s: the encrypted round trip is "
        f"{session['encrypted_round_trip_over_plain']:.2f}x the plain one) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
