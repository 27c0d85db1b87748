"""Asyncio glue under the sans-I/O machines: sockets, timers, backpressure, request tables.

``peers``: one TCP connection per peer pair, each driven by a ``core.connection`` machine, with
the connection-level policies of security.md §S.4 (caps, throttling, unsent-bytes bound) and
the rule that keeps one connection when both peers dial; ``requests``: outstanding requests by
id, failed when their peer goes. What a message means is decided above, in ``node``.
"""

from __future__ import annotations

__all__: list[str] = []
