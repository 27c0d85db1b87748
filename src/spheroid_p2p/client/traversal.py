"""The traversal client: plan a route from gossip, send traversals, fail over (10-traversal.md).

The client is a short-lived peer with its own throw-away key. Before a traversal it connects to
the route's last hop as well as its first, so the result comes back over a connection the
client opened: that works behind a NAT or a firewall, and the last hop does not spend a dial and
a handshake (two round trips on a WAN) on the first traversal. It also listens, on the interface
that reaches the swarm (``source_address``), and names that address as ``reply`` for a last hop
that has lost the connection. Each traversal carries the prompt window,
a seed (the first hop draws the initial noise from it), and the route; the client only waits.
If a hop reports an error, or the traversal misses its deadline, the client probes the
route's hops, avoids the dead or failing server for ``avoid_s``, re-plans and retries the
traversal from the start (the same seed, so the result is unchanged).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from spheroid_p2p.client.report import GenerationReport
from spheroid_p2p.client.spec import NoCombineError, PerByteOnlyError, TraversalSpec
from spheroid_p2p.client.status import every_page
from spheroid_p2p.core.connection import ConnectionLost, FrameSigner
from spheroid_p2p.core.freshness import initial_seq
from spheroid_p2p.core.routing import NoRouteError, ServerOffer, plan_route
from spheroid_p2p.errors import ErrorCode, TransportError, code_name
from spheroid_p2p.ml.drafting import MAX_COMBINED_DRAFT, MAX_DRAFT, Drafter, DraftLength, accept
from spheroid_p2p.ml.windows import prefix_window
from spheroid_p2p.net.peers import PeerManager
from spheroid_p2p.net.sockets import DialError, parse_addr, source_address
from spheroid_p2p.wire.codec import Envelope
from spheroid_p2p.wire.dtypes import dtype_by_name
from spheroid_p2p.wire.message import Message
from spheroid_p2p.wire.pipeline import PipeResult
from spheroid_p2p.wire.signing import KeyPair, PeerId
from spheroid_p2p.wire.status import StatusRequest, StatusResponse
from spheroid_p2p.wire.tensors import chunk_digest
from spheroid_p2p.wire.traversal import (
    COMBINE_LAST,
    COMBINE_WEIGHTED,
    HOP_TIMINGS,
    PREFIX_KNOWN,
    PREFIX_NOISY,
    Hop,
    InlineTensor,
    Traverse,
    TraverseError,
    TraverseResult,
)

__all__ = ["GenerationReport", "TraversalClient"]

log = logging.getLogger(__name__)


class TraversalClient:
    """Generates text through a swarm of block servers."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        avoid_s: float = 60.0,
        max_retries: int = 4,
        listen: str | None = None,
        advertise: str | None = None,
        tcp_congestion: str | None = None,
    ) -> None:
        """``listen``: HOST:PORT for the reply listener (default: the interface that reaches
        the first peer asked, any port); ``advertise``: the address to name as ``reply``
        (default: the listener's); ``tcp_congestion``: TCP_CONGESTION for every connection."""
        self.key = KeyPair.generate()
        self.listen_addr = listen
        self.advertise = advertise
        self.timeout_s = timeout_s
        self.avoid_s = avoid_s
        self.max_retries = max_retries
        self._answers: dict[int, asyncio.Future[Any]] = {}
        #: the first and last hop of each traversal in flight (the client's connections)
        self._ends: dict[int, frozenset[bytes]] = {}
        self._status: asyncio.Future[StatusResponse] | None = None
        self._avoid: dict[bytes, float] = {}
        self.manager = PeerManager(
            FrameSigner(self.key, initial_seq(time.time())),
            on_open=lambda p, c: None,
            on_message=self._on_message,
            on_close=self._on_close,
            capabilities=(),
            agent="spheroid_p2p generate",
            tcp_congestion=tcp_congestion,
        )
        self.reply_addr = ""
        #: Short peer ids of the route the latest traversal took.
        self.last_route: tuple[str, ...] = ()

    def _on_message(self, peer: PeerId, envelope: Envelope) -> None:
        message = envelope.message
        if isinstance(message, PipeResult):
            waiting = self._answers.get(message.session_id)
            if waiting is not None and not waiting.done():
                waiting.set_result(message)  # type: ignore[arg-type]
        elif isinstance(message, TraverseResult | TraverseError):
            future = self._answers.get(message.traversal_id)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, StatusResponse) and self._status and not self._status.done():
            self._status.set_result(message)

    def _on_close(self, peer: PeerId, lost: ConnectionLost) -> None:
        """A first or last hop gone without a goodbye (killed, or its network lost): the
        traversals through it fail now, not at their deadline, and are routed around."""
        if lost.clean:
            return
        for key, ends in list(self._ends.items()):
            future = self._answers.get(key)
            if peer.digest in ends and future is not None and not future.done():
                future.set_result(None)

    async def start(self, toward: str | None = None) -> None:
        """Listen for replies: on ``listen`` if given, else on the interface that reaches
        ``toward`` (a peer's HOST:PORT; loopback when None)."""
        if self.listen_addr is not None:
            host, port = parse_addr(self.listen_addr, allow_any_port=True)
        else:
            host, port = (source_address(toward) if toward else "127.0.0.1"), 0
        bound_host, bound_port = await self.manager.listen(host, port)
        if bound_host in ("0.0.0.0", "::") and toward:
            bound_host = source_address(toward)  # name an address a server can dial
        self.reply_addr = self.advertise or f"{bound_host}:{bound_port}"

    async def close(self) -> None:
        await self.manager.close(reason="generation done", flush_s=0.5)

    async def offers(self, addr: str, kind: str = "blocktrain") -> list[ServerOffer]:
        """Ask the peer at ``addr`` for its view; return the live block servers it knows."""
        peer = await self.manager.dial(addr)

        async def ask(request_id: int, offset: int) -> StatusResponse:
            self._status = asyncio.get_running_loop().create_future()
            self.manager.send(peer, StatusRequest(request_id=request_id, offset=offset))
            return await self._status

        async with asyncio.timeout(self.timeout_s):
            status = await every_page(ask)
        offers = [
            ServerOffer(r.owner, r.addrs[0], r.block, r.load, r.n_blocks, r.config_hash, r.context)
            for r in status.records
            if r.role == "serve"
            and not r.departed
            and r.addrs
            and r.config_hash.startswith("ar-") == (kind == "ar")
        ]
        # One model per request: the config most servers announce.
        configs = Counter(o.config_hash for o in offers if o.config_hash)
        if configs:
            best = configs.most_common(1)[0][0]
            offers = [o for o in offers if o.config_hash == best]
        return offers

    async def generate(
        self,
        addr: str,
        prompt: bytes,
        n_bytes: int,
        *,
        steps_per_block: int = 1,
        seed: int = 0,
        temperature: float = 0.0,
        z_dtype: str = "float32",
        span: int = 0,
        on_bytes: Callable[[bytes], None] | None = None,
        rule: str = "known",
        drafter: Drafter | None = None,
        max_draft: int = 32,
        combine: int = COMBINE_WEIGHTED,
    ) -> GenerationReport:
        """Generate ``n_bytes`` after ``prompt`` through the swarm that ``addr`` belongs to.

        ``rule``: for per-byte models, "known" (10 §10.8: the prefix's rows carry their known
        bytes, and every server keeps the session's keys and values, so a traversal computes
        one new row per block) or "noisy" (every row from fresh noise, recomputed each time).
        ``drafter`` (known rule): each traversal carries its guess of the next bytes as extra
        trajectory rows and keeps what the chain agrees with, which is exactly what per-byte
        generation emits, in fewer traversals (``client.drafts``; length from the acceptance
        rate, at most ``max_draft``). ``combine``: the output rule (10 §10.9), by default the
        mean of every block's log-probabilities weighted by each block's quality
        (``COMBINE_MEAN``: unweighted; ``COMBINE_LAST``: the last block's prediction); a route
        that cannot apply it (spans over 16 bytes, a hop before r13) falls back to the last
        block's for the rest of the generation, with a warning.
        """
        if rule not in ("known", "noisy"):
            raise ValueError(f"rule must be 'known' or 'noisy', got {rule!r}")
        report = GenerationReport()
        offers = await self.offers(addr)
        n_blocks = max((o.n_blocks for o in offers), default=0)
        if not n_blocks:
            raise TransportError(f"no block servers known to {addr} yet")
        config = next((o.config_hash for o in offers if o.config_hash), "")
        context = min((o.context for o in offers if o.context), default=0)
        known = rule == "known" and span in (0, 1)
        if known and not context:
            raise TransportError("the block servers do not announce their context (ctx)")
        session = random.getrandbits(63) | 1 if known else 0
        length = DraftLength(min(max_draft, MAX_DRAFT))
        if combine != COMBINE_LAST:
            length = DraftLength(min(max_draft, MAX_COMBINED_DRAFT))
        start = time.perf_counter()
        out = b""
        traversal = 0
        while len(out) < n_bytes:
            text = prompt + out
            draft = b""
            if known:
                window = prefix_window(text, context)
                room = min(context - len(window), n_bytes - len(out) - 1, length.next())
                if drafter is not None and room > 0:
                    draft = drafter(text, room)[:room]
            spec = TraversalSpec(
                config,
                window + draft if known else text[-4096:],
                steps_per_block,
                seed + len(out) if known else seed + traversal,  # row j: seed + j (10 §10.8)
                temperature,
                z_dtype,
                span,
                PREFIX_KNOWN if known else PREFIX_NOISY,
                session,
                seed if known else 0,
                len(draft) + 1,
                combine,
            )
            try:
                piece = await self._one(offers, n_blocks, spec, report, addr)
            except PerByteOnlyError:  # the route serves the rule of 10 §10.4 only
                known, session = False, 0
                continue
            except NoCombineError as exc:
                log.warning("the route cannot combine the blocks' predictions (%s); the last "
                            "block's prediction is the output from here on", exc)  # fmt: skip
                combine = COMBINE_LAST
                continue
            if draft:
                piece = accept(draft, piece)
                length.update(len(draft), len(piece) - 1)
                report.drafted += len(draft)
            out += piece
            traversal += 1
            if on_bytes is not None:
                on_bytes(piece[: n_bytes - len(out) + len(piece)])
        report.output = out[:n_bytes]
        report.traversals = traversal
        report.seconds = time.perf_counter() - start
        return report

    async def _one(
        self,
        offers: list[ServerOffer],
        n_blocks: int,
        spec: TraversalSpec,
        report: GenerationReport,
        addr: str,
    ) -> bytes:
        """One traversal, re-routed around failing servers (§10.5)."""
        for attempt in range(self.max_retries + 1):
            now = time.monotonic()
            exclude = {p for p, until in self._avoid.items() if until > now}
            try:
                route = plan_route(offers, n_blocks, exclude=exclude)
            except NoRouteError:
                if attempt == self.max_retries:
                    raise
                await asyncio.sleep(min(5.0, 0.5 * 2**attempt))  # servers may still be starting
                offers = await self.offers(addr)  # gossip may know new servers by now
                n_blocks = max((o.n_blocks for o in offers), default=n_blocks)
                continue
            self.last_route = tuple(PeerId(h.peer).short() for h in route)
            report.routes.append(self.last_route)
            answer = await self._send(route, spec, report)
            rows = spec.trajectory_rows if spec.rule == PREFIX_KNOWN else 0
            if rows and isinstance(answer, TraverseResult) and len(answer.reused) != len(route):
                raise PerByteOnlyError("a hop answered without cr: it predates r11")
            if (
                isinstance(answer, TraverseResult)
                and spec.combine != COMBINE_LAST
                and answer.combine != spec.combine
            ):
                raise NoCombineError(f"a hop answered cb = {answer.combine}: it predates r13")
            if isinstance(answer, TraverseResult) and (not rows or len(answer.output) == rows):
                return answer.output
            if isinstance(answer, TraverseError) and answer.code == ErrorCode.SPAN_UNSUPPORTED:
                if spec.rule == PREFIX_KNOWN and spec.span in (0, 1):
                    raise PerByteOnlyError(answer.reason)
                if spec.combine != COMBINE_LAST:
                    raise NoCombineError(answer.reason)
                raise TransportError(f"the swarm cannot do this: {answer.reason}")
            report.retries += 1
            if isinstance(answer, TraverseResult):  # not one byte per row: the last hop's fault
                bad, why = [route[-1].peer], f"{len(answer.output)} bytes for {rows} rows"
            else:
                bad = await self._blame(route, answer)
                why = (
                    "timeout"
                    if answer is None
                    else f"{code_name(answer.code)} at hop {answer.hop}: {answer.reason}"
                )
            for peer in bad:
                self._avoid[peer] = time.monotonic() + self.avoid_s
            log.warning(
                "traversal failed (%s); avoiding %s and re-routing",
                why,
                [PeerId(p).short() for p in bad],
            )
        raise TransportError(f"traversal failed after {self.max_retries} retries")

    async def _send(
        self, route: tuple[Hop, ...], spec: TraversalSpec, report: GenerationReport
    ) -> TraverseResult | TraverseError | None:
        tid = random.getrandbits(63)
        request = Traverse(
            traversal_id=tid,
            client=self.key.peer_id.digest,
            reply_addr=self.reply_addr,
            route=route,
            hop=0,
            config_hash=spec.config,
            steps_per_block=spec.steps,
            prefix=spec.prefix,
            span=spec.span,
            seed=spec.seed,
            temperature=spec.temperature,
            deadline_ms=int(self.timeout_s * 1000),
            want_logits=False,
            z=InlineTensor(dtype_by_name(spec.z_dtype).code, (0,), 0, chunk_digest(b"")),
            prefix_rule=spec.rule,
            session=spec.session,
            prefix_seed=spec.prefix_seed,
            trajectory_rows=spec.trajectory_rows,
            combine=spec.combine,
        )
        answer = await self._exchange(route, request, tid, report)
        if isinstance(answer, TraverseResult):
            report.traversal_ms.append(report.last_ms)
            if answer.qualities:
                report.qualities = answer.qualities
            if spec.rule == PREFIX_KNOWN:
                report.reused.append(answer.reused)
            n = len(HOP_TIMINGS)
            t = answer.timings
            report.hop_timings.append(
                [dict(zip(HOP_TIMINGS, t[i : i + n], strict=True)) for i in range(0, len(t), n)]
            )
        return answer  # type: ignore[no-any-return]

    async def connect_route(self, route: tuple[Hop, ...]) -> float:
        """Connect to the route's first hop (where the request goes) and its last (where the
        answer comes from), in parallel; returns the milliseconds it took (0 when both were
        connected). A last hop we cannot reach is left to dial ``reply`` itself."""
        started = time.perf_counter()
        ends = {route[0], route[-1]}
        todo = [h for h in ends if PeerId(h.peer) not in self.manager.connected()]
        if not todo:
            return 0.0
        results = await asyncio.gather(
            *(self.manager.dial(h.addr, expected=PeerId(h.peer)) for h in todo),
            return_exceptions=True,
        )
        for hop, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                if hop == route[0]:
                    raise result if isinstance(result, DialError) else DialError(str(result))
                log.info("reply path to the last hop not opened: %s", result)
        return (time.perf_counter() - started) * 1000

    async def _exchange(
        self, route: tuple[Hop, ...], request: Message, key: int, report: GenerationReport
    ) -> Any:
        """Send ``request`` to the route's first hop and wait for the answer filed under
        ``key`` (a result or an error), or None if the hop cannot be reached or it times out.
        Connecting (first and last hop) is timed apart from the traversal."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[key] = future
        self._ends[key] = frozenset({route[0].peer, route[-1].peer})
        try:
            report.connect_ms.append(await self.connect_route(route))
            started = time.perf_counter()
            peer = PeerId(route[0].peer)
            before = self.manager.bytes_out
            self.manager.send(peer, request)
            async with asyncio.timeout(self.timeout_s):
                answer = await future
            report.bytes_sent += self.manager.bytes_out - before
        except (DialError, TimeoutError):
            return None
        finally:
            self._answers.pop(key, None)
            self._ends.pop(key, None)
        report.last_ms = (time.perf_counter() - started) * 1000
        return answer

    async def _blame(self, route: tuple[Hop, ...], answer: TraverseError | None) -> list[bytes]:
        """Which servers to avoid: the one an error names, else every hop that does not answer
        a fresh connection (a killed process refuses at once)."""
        if answer is not None:
            return [answer.peer]
        dead = []
        for hop in route:
            probe = PeerManager(
                FrameSigner(KeyPair.generate(), initial_seq(time.time())),
                on_open=lambda p, c: None,
                on_message=lambda p, e: None,
                on_close=lambda p, lost: None,
                capabilities=(),
                dial_timeout_s=2.0,
            )
            try:
                try:
                    await probe.dial(hop.addr, expected=PeerId(hop.peer))
                except DialError:
                    dead.append(hop.peer)
                finally:
                    await probe.close(flush_s=0.2)
            except Exception as exc:
                log.debug("probe of %s failed: %s", hop.addr, exc)
                dead.append(hop.peer)
        return dead or [route[0].peer]

    async def generate_ar(
        self,
        addr: str,
        prompt: bytes,
        n_bytes: int,
        on_bytes: Callable[[bytes], None] | None = None,
    ) -> GenerationReport:
        """The baseline: the autoregressive model pipelined by layers (``client.pipeline``)."""
        from spheroid_p2p.client.pipeline import generate_ar

        return await generate_ar(self, addr, prompt, n_bytes, on_bytes)
