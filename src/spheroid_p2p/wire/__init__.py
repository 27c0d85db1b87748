"""The pure wire codec: bytes <-> typed, signed messages. No sockets, clocks, asyncio or torch.

Spec: ``protocol/`` (framing 01, encoding 02, messages 03, signing 04, tensor frames 05; the
messages of each service in their own module, gathered by ``messages``). Import what you use
from its module; this package re-exports nothing, so importing one module never imports the
rest (and the package has no import cycle through its ``__init__``).
"""

from __future__ import annotations

__all__: list[str] = []
