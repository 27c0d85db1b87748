"""The node's HTTP side (``--http HOST:PORT``): Prometheus metrics, a live swarm page, its JSON.

Served by ``aiohttp`` (nothing hand-written at the HTTP level); read-only (GET only) and
bounded: at most ``MAX_INFLIGHT`` requests at once (more: 503), the JSON is built at most once
per ``JSON_CACHE_S`` however often it is asked for, and every list in it is capped. It binds
where ``--http`` says; the README recommends 127.0.0.1 (the page shows peer addresses).

* ``GET /metrics``: the Prometheus text format (``prometheus_client.generate_latest``);
* ``GET /api/v1/swarm``: the page's data, a versioned JSON document (``"api": 1``, the
  README documents its fields; a later version adds fields, or moves to ``/api/v2``);
* ``GET /``: the page (``static/index.html``, ``app.js``, ``style.css``: plain SVG charts,
  no build toolchain), which asks for the JSON every two seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spheroid_p2p import __version__
from spheroid_p2p.net.sockets import parse_addr
from spheroid_p2p.node.metrics import NodeMetrics

if TYPE_CHECKING:
    from spheroid_p2p.node.app import Node

__all__ = ["API_VERSION", "WebServer", "swarm_json"]

log = logging.getLogger(__name__)

API_VERSION = 1
STATIC = Path(__file__).parent / "static"
#: Requests served at once; more are answered 503 at once.
MAX_INFLIGHT = 8
#: The swarm JSON is rebuilt at most this often (seconds).
JSON_CACHE_S = 0.5
#: Points kept per series on the page: versions seen, hop latencies, CE, loss.
MAX_POINTS = 500
MAX_HOPS = 256
MAX_ROUNDS = 60


class WebServer:
    """Metrics and the swarm page for one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.metrics = NodeMetrics(node)
        #: (wall time, first block, last block, seconds, queued seconds) of recent hops
        self.hops: deque[tuple[float, int, int, float, float]] = deque(maxlen=MAX_HOPS)
        #: (wall time, block, version, holders) each time a block's newest version changed
        self.versions: deque[tuple[float, int, int, int]] = deque(maxlen=MAX_POINTS)
        self._newest: dict[int, int] = {}
        self._json: tuple[float, bytes] | None = None
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT)
        self._runner: web.AppRunner | None = None
        self.address: str | None = None
        self._sampling: asyncio.TimerHandle | None = None
        node.swarm.on_change.append(self._changed)

    def _changed(self) -> None:
        """Gossip changed: look at the blocks' newest versions soon (at most twice a second)."""
        if self._sampling is None:
            loop = asyncio.get_running_loop()
            self._sampling = loop.call_later(JSON_CACHE_S, self._sample)

    def _sample(self) -> None:
        self._sampling = None
        self.note_versions(_blocks(self.node))

    def hop(self, first: int, last: int, seconds: float, queued_s: float) -> None:
        """A hop computed here (``TraversalServer.on_hop``)."""
        self.metrics.hop(first, last, seconds, queued_s)
        self.hops.append((time.time(), first, last, seconds, queued_s))

    async def start(self, addr: str) -> str:
        """Listen on ``addr`` (HOST:PORT, port 0: any); returns the bound HOST:PORT."""
        host, port = parse_addr(addr, allow_any_port=True)
        app = web.Application(middlewares=[self._bounded], client_max_size=1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get(f"/api/v{API_VERSION}/swarm", self._swarm)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=16)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (host, port)
        self.address = f"{bound[0]}:{bound[1]}"
        return self.address

    async def close(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
        if self.node.swarm.on_change.count(self._changed):
            self.node.swarm.on_change.remove(self._changed)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _bounded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._inflight.locked():
            return web.Response(status=503, text="busy: too many requests at once\n")
        async with self._inflight:
            return await handler(request)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _swarm(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        if self._json is None or now - self._json[0] >= JSON_CACHE_S:
            self._json = (now, json.dumps(swarm_json(self.node, self)).encode())
        return web.Response(body=self._json[1], content_type="application/json")

    def note_versions(self, blocks: list[dict[str, Any]]) -> None:
        """Remember when each block's newest version changed (for the round timeline)."""
        for b in blocks:
            newest = b["newest_version"]
            if newest is not None and self._newest.get(b["block"]) != newest["version"]:
                self._newest[b["block"]] = newest["version"]
                self.versions.append(
                    (time.time(), b["block"], newest["version"], newest["holders"])
                )


def _blocks(node: Node) -> list[dict[str, Any]]:
    """Every block the node's table names: servers, trainers, the newest version."""
    now = time.monotonic()
    by_block: dict[int, dict[str, Any]] = {}
    for e in node.gossip.table.entries():
        r = e.record
        if r.departed or r.block == 0xFFFF:
            continue
        row = by_block.setdefault(
            r.block, {"block": r.block, "servers": [], "trainers": [], "newest_version": None}
        )
        owner = {
            "peer": r.owner.short(),
            "id": r.owner.to_text(),
            "addr": r.addrs[0] if r.addrs else "",
            "version": r.version,
            "hash": r.content_hash.hex()[:12],
            "load": float(r.load),
            "age_s": round(now - e.received_at, 1),
            "me": r.owner == node.key.peer_id,
        }
        row["servers" if r.role == "serve" else "trainers"].append(owner)
    for row in by_block.values():
        # what can be fetched (07 §7.3): a trainer's version, a server's from version 1 on
        fetchable = [o for o in row["trainers"] if o["hash"]]
        fetchable += [o for o in row["servers"] if o["hash"] and o["version"] >= 1]
        holders: dict[tuple[int, str], int] = {}
        for o in fetchable:
            key = (o["version"], o["hash"])
            holders[key] = holders.get(key, 0) + 1
        if holders:
            (version, digest), n = max(holders.items())
            row["newest_version"] = {"version": version, "hash": digest, "holders": n}
    return [by_block[b] for b in sorted(by_block)]


def swarm_json(node: Node, web_server: WebServer | None = None) -> dict[str, Any]:
    """The page's data (``/api/v1/swarm``); every list is bounded."""
    blocks = _blocks(node)
    training = []
    rounds: list[dict[str, Any]] = []
    if node.blocks is not None:
        for view in node.blocks.job_views():
            job = node.blocks.jobs[view.block]
            training.append(
                {
                    "block": view.block,
                    "step": view.step,
                    "total": view.total,
                    "loss": view.loss,
                    "steps_per_s": view.rate,
                    "eta_s": view.eta_s,
                    "version": view.version,
                    "history": [
                        {"t": t, "step": s, "loss": loss}
                        for t, s, loss in list(job.history)[-MAX_POINTS:]
                    ],
                }
            )
        for replica in node.blocks.replicas.values():
            rounds += [
                {k: v for k, v in e.items() if k != "deltas"}
                for e in replica.roundlog.recent
                if e["kind"] in ("version", "shard")
            ][-MAX_ROUNDS:]
    rounds.sort(key=lambda e: float(e["time"]))
    evaluator = node.evaluator
    ce = (
        [{"t": t, "ce": c, "versions": v} for t, c, v in evaluator.history]
        if evaluator is not None
        else []
    )
    hops = web_server.hops if web_server is not None else ()
    versions = web_server.versions if web_server is not None else ()
    return {
        "api": API_VERSION,
        "time": time.time(),
        "node": {
            "peer": node.key.peer_id.short(),
            "id": node.key.peer_id.to_text(),
            "agent": f"spheroid_p2p/{__version__}",
            "uptime_s": round(time.monotonic() - node.started_at, 1),
            "listen": ":".join(map(str, node.bound_address)) if node.bound_address else None,
            "evaluator": evaluator is not None,
        },
        "blocks": blocks,
        "training": training,
        "rounds": rounds[-MAX_ROUNDS:],
        "versions": [{"t": t, "block": b, "version": v, "holders": n} for t, b, v, n in versions],
        "ce": ce[-MAX_POINTS:],
        "hops": [
            {
                "t": t,
                "blocks": f"{a}" if a == b else f"{a}-{b}",
                "ms": s * 1e3,
                "queued_ms": q * 1e3,
            }
            for t, a, b, s, q in hops
        ],
        "connections": [
            {
                "peer": i.peer.short(),
                "addr": i.addr,
                "outbound": i.outbound,
                "rtt_ms": round(i.rtt_ms, 2),
            }
            for i in node.peers.link_info()[:64]
        ],
    }
