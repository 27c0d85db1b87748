"""Sans-I/O state machines: ``(input, now)`` in, messages and actions out. No sockets, no clock."""

from __future__ import annotations

__all__: list[str] = []
