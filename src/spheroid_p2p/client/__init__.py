"""Clients of a swarm: generating text through a chain of servers, asking a peer for status.

A client is a short-lived peer with a throw-away key; it needs no torch (it plans routes and
carries bytes; the servers compute). ``traversal``: :class:`TraversalClient`; ``status``:
:func:`fetch_status` and the table the ``status`` command prints.
"""

from __future__ import annotations

__all__: list[str] = []
