"""Load the conformance vectors and run a frame body through the codec the way a peer would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spheroid_p2p.errors import RemoteProtocolError
from spheroid_p2p.wire import msgpack_profile
from spheroid_p2p.wire.codec import Envelope, decode_frame

VECTOR_DIR = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def load(area: str) -> list[dict[str, Any]]:
    doc = json.loads((VECTOR_DIR / f"{area}.json").read_text())
    assert doc["area"] == area
    return list(doc["vectors"])


def render(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bin": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [render(v) for v in value]
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    return value


def envelope_fields(env: Envelope) -> dict[str, Any]:
    signed = msgpack_profile.unpack(env.signed)
    return {
        "v": env.version,
        "type": env.message.TYPE.name,
        "pk": env.sender_key.hex(),
        "peer_id": env.sender.to_text(),
        "seq": env.seq,
        "ts": env.timestamp_ms,
        "body": render(signed["body"]),
    }


def outcome(body: bytes | bytearray | memoryview) -> tuple[str, Any]:
    """('ok', envelope) or ('error', code name) for one frame body."""
    try:
        return "ok", decode_frame(body)
    except RemoteProtocolError as exc:
        return "error", exc.code.name
