"""The autoregressive pipeline baseline's client (10 §10.7): one PIPE_STEP per byte.

What a user would otherwise deploy, measured beside BlockTrain traversals: each stage keeps the
session's key/value cache, so after the prompt only the new byte travels; when the context is
full the session restarts from the last half of the text.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from spheroid_p2p.client.report import GenerationReport
from spheroid_p2p.core.routing import plan_route
from spheroid_p2p.errors import TransportError
from spheroid_p2p.wire.pipeline import PipeResult, PipeStep
from spheroid_p2p.wire.signing import PeerId
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.traversal import InlineTensor

if TYPE_CHECKING:
    from spheroid_p2p.client.traversal import TraversalClient

__all__ = ["generate_ar"]


async def generate_ar(
    client: TraversalClient,
    addr: str,
    prompt: bytes,
    n_bytes: int,
    on_bytes: Callable[[bytes], None] | None = None,
) -> GenerationReport:
    """The baseline: the autoregressive model pipelined by layers, one traversal per byte.

    Each server keeps the session's key/value cache, so after the prompt only the new
    byte travels. When the context is full the session restarts from the last half.
    """
    report = GenerationReport()
    offers = await client.offers(addr, kind="ar")
    if not offers:
        raise TransportError(f"no autoregressive pipeline stages known to {addr}")
    stages = max(o.n_blocks for o in offers)
    config = offers[0].config_hash
    context = min((o.context for o in offers), default=0)
    if context <= 0:
        raise TransportError("the pipeline's stages do not announce their context (ctx)")
    start = time.perf_counter()
    out = b""
    session: int | None = None
    pos = 0
    pending = b""
    while len(out) < n_bytes:
        if session is None or pos + 1 > context:
            keep = context // 2 if session is not None else context
            session, pos, pending = random.getrandbits(63), 0, (prompt + out)[-keep:]
        now = time.monotonic()
        route = plan_route(offers, stages, exclude={p for p, t in client._avoid.items() if t > now})
        client.last_route = tuple(PeerId(h.peer).short() for h in route)
        report.routes.append(client.last_route)
        step = PipeStep(
            session_id=session,
            client=client.key.peer_id.digest,
            reply_addr=client.reply_addr,
            route=route,
            hop=0,
            config_hash=config,
            pos=pos,
            tokens=pending,
            deadline_ms=int(client.timeout_s * 1000),
            hidden=InlineTensor(1, (0,), 0, chunk_digest(b"")),
        )
        answer = await client._exchange(route, step, session, report)
        if not isinstance(answer, PipeResult):
            report.retries += 1
            if report.retries > client.max_retries:
                raise TransportError("pipeline step failed after retries")
            for bad in await client._blame(route, answer):
                client._avoid[bad] = time.monotonic() + client.avoid_s
            session = None  # the caches lived on the failed route: start over
            continue
        report.traversal_ms.append(report.last_ms)
        report.traversals += 1
        pos += len(pending)
        pending = answer.output
        out += answer.output
        if on_bytes is not None:
            on_bytes(answer.output)
    report.output = out[:n_bytes]
    report.seconds = time.perf_counter() - start
    return report
