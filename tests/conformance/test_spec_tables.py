"""The spec's Parameters tables and error registry agree with params.py and errors.py."""

from __future__ import annotations

import re
from pathlib import Path

from spheroid_p2p import params
from spheroid_p2p.errors import ErrorCode
from spheroid_p2p.wire.dtypes import DTYPES, Codec
from spheroid_p2p.wire.message import MessageType

SPEC = Path(__file__).resolve().parents[2] / "protocol"
ROW = re.compile(r"^\|\s*`([A-Z0-9_]+)`\s*\|\s*([^|]+?)\s*\|")


def _spec_parameters() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(SPEC.glob("[0-9][0-9]-*.md")):
        for line in path.read_text().splitlines():
            match = ROW.match(line)
            if match and hasattr(params, match.group(1)):
                found[match.group(1)] = match.group(2)
    return found


def test_every_limit_in_params_is_in_the_spec_with_the_same_value() -> None:
    """Each constant in params.__all__ has a Parameters row with the same value."""
    spec = _spec_parameters()
    missing = [name for name in params.__all__ if name not in spec]
    assert not missing, f"not documented in protocol/: {missing}"
    for name in params.__all__:
        value = getattr(params, name)
        if isinstance(value, tuple):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        assert spec[name] == str(value), f"{name}: spec says {spec[name]}, code says {value}"


def test_error_registry_matches_errors_md() -> None:
    """errors.md lists exactly the ErrorCode members, with the same numbers."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([A-Z_]+)`", (SPEC / "errors.md").read_text(), re.M)
    assert {name: int(code) for code, name in rows} == {e.name: e.value for e in ErrorCode}


def test_message_registry_matches_03_messages() -> None:
    """03-messages.md §3.2 lists exactly the registered message types."""
    text = (SPEC / "03-messages.md").read_text()
    rows = re.findall(r"^\|\s*0x([0-9a-f]+)\s*\|\s*`([A-Z_]+)`", text, re.M)
    assert {name: int(code, 16) for code, name in rows} == {m.name: m.value for m in MessageType}


def test_dtype_and_codec_tables_match_05_tensor_frames() -> None:
    """05 §5.2 and §5.3 list the same dtype and codec codes as the code."""
    text = (SPEC / "05-tensor-frames.md").read_text()
    dtypes = re.findall(r"^\|\s*(\d+)\s*\|\s*([a-z0-9]+)\s*\|\s*(\d)", text, re.M)
    assert {int(c): (n, int(s)) for c, n, s in dtypes} == {
        d.code: (d.name, d.itemsize) for d in DTYPES.values()
    }
    codecs = re.findall(r"^\|\s*(\d)\s*\|\s*(none|zstd|shuffle \+ zstd)\s*\|", text, re.M)
    assert [int(c) for c, _ in codecs] == [c.value for c in Codec]
