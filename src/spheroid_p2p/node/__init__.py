"""A node's services and their composition root: the only package joining wire, core, net and ml.

``app`` composes (``Node``); the services it wires, each behind a small interface: ``gossip_glue``
(the ``SwarmView`` of ``swarm``), ``transfer`` (versions, chunks, shard streams), ``serving``
(traversals), ``blocks`` (training; ``replica``, ``aggregator``, ``installer`` for sharded
rounds), ``intake`` (what each peer may ask), ``status``. ``cli`` is the command line, the only
importer of ``app``.
"""

from __future__ import annotations

__all__: list[str] = []
