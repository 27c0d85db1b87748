"""Windows of the known-prefix rule (``ml.prefixed``), without torch: the client cuts them.

Learned absolute positions make a window shifted by one byte a different computation, so a
window that would pass the context starts again from the last half of it (as the
autoregressive pipeline's sessions do, 10 §10.7) and grows by one byte per traversal from there:
every window of a generation but the restarts extends the one before, which is what lets a
server reuse its keys and values.
"""

from __future__ import annotations

__all__ = ["prefix_window", "window_len"]


def window_len(n: int, context: int) -> int:
    """Bytes of a text of ``n`` bytes that the window holds: all of it up to ``context``;
    beyond, the last half of the context, growing by one byte per traversal back to full."""
    if n <= context:
        return n
    half = max(1, context // 2)
    return half + (n - context - 1) % (context - half + 1)


def prefix_window(text: bytes, context: int) -> bytes:
    """The window a per-byte traversal of the known-prefix rule conditions on."""
    if not text:
        raise ValueError("generation needs at least one prompt byte")
    return text[len(text) - window_len(len(text), context) :]
