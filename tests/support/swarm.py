"""Real node processes on 127.0.0.1 for integration tests (the launcher lives in the package)."""

from __future__ import annotations

from spheroid_p2p.node.launcher import NodeProcess, free_port, live_view, wait_for

__all__ = ["NodeProcess", "free_port", "live_view", "wait_for"]
