"""The round log a replica keeps: ``<data-dir>/block-B.rounds.jsonl``, one JSON line per event.

An ``exchange`` line for each round this replica took part in (seconds from its delta to the
next version installed, bytes it sent and received in shard streams); a ``shard`` line for each
shard this replica closed as its aggregator (how it closed, the
contributors and their weights, refusals and why, who was late, each delta's bytes and
seconds, the update's bytes sent); a ``version`` line for each version it published (the
shard table: whose update each shard uses, the shards missing, the next round's plan).
Benchmarks and tests read it; so can a user.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from pathlib import Path

from spheroid_p2p.core.rounds import Outcome
from spheroid_p2p.errors import code_name
from spheroid_p2p.wire.manifests import SignedManifest
from spheroid_p2p.wire.signing import PeerId

__all__ = ["RoundLog"]


#: Entries a round log keeps in memory for the swarm page.
RECENT_ENTRIES = 200


class RoundLog:
    """Appends the events of one block's rounds to its log file."""

    def __init__(self, path: Path, block: int, me: PeerId) -> None:
        self.path = path
        self.block = block
        self.me = me
        #: the latest entries, for the swarm page (the file holds them all)
        self.recent: deque[dict[str, object]] = deque(maxlen=RECENT_ENTRIES)
        #: counts for the metrics: shards closed by how ("barrier"/"deadline"), versions
        #: published, and per shard the contributors, refused and late replicas
        self.counts: Counter[str] = Counter()

    def _write(self, entry: dict[str, object]) -> None:
        self.recent.append(entry)
        kind = entry["kind"]
        if kind == "shard":
            self.counts[f"shard_{entry['closed']}"] += 1
            for name in ("contributors", "rejected", "late"):
                self.counts[name] += len(entry[name])  # type: ignore[arg-type]
        elif kind == "version":
            self.counts["versions"] += 1
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def exchange(
        self,
        round_: int,
        seconds: float,
        installed: int,
        sent: int,
        received: int,
        marks: dict[str, float] | None = None,
    ) -> dict[str, object]:
        entry: dict[str, object] = {
            "kind": "exchange",
            "block": self.block,
            "round": round_,
            "peer": self.me.short(),
            "seconds": round(seconds, 4),
            "installed": installed,
            "bytes_out": sent,
            "bytes_in": received,
            # when each step was reached, in seconds from the delta: the delta computed, each
            # shard's update judged, all of them, the new weights built and staged, the
            # publisher's version received, installed
            "marks": marks or {},
            "time": time.time(),
        }
        self._write(entry)
        return entry

    def shard(
        self,
        outcome: Outcome,
        deltas: dict[PeerId, tuple[int, float]],
        receivers: int,
        update_bytes: int,
    ) -> dict[str, object]:
        entry: dict[str, object] = {
            "kind": "shard",
            "block": self.block,
            "round": outcome.round,
            "shard": outcome.shard,
            "aggregator": self.me.short(),
            "closed": "barrier" if outcome.early else "deadline",
            "contributors": [
                {"peer": p.short(), "weight": round(w, 4), "steps": s, "staleness": st}
                for p, w, s, st in outcome.contributors
            ],
            "rejected": [
                {"peer": p.short(), "code": code_name(c), "reason": why}
                for p, c, why in outcome.rejected
            ],
            "late": [p.short() for p in outcome.late],
            "bytes_in": outcome.bytes_in,
            # each received delta: wire bytes and seconds from its header to its last chunk
            "deltas": [
                {"peer": p.short(), "bytes": n, "seconds": round(sec, 4)}
                for p, (n, sec) in sorted(deltas.items(), key=lambda kv: kv[1])
            ],
            "replicas": receivers + 1,
            # the update's payload, as sent to each other replica
            "update_bytes": update_bytes * receivers,
            "time": time.time(),
        }
        self._write(entry)
        return entry

    def version(self, signed: SignedManifest, missing: tuple[int, ...]) -> dict[str, object]:
        m = signed.manifest
        report = m.report
        entry: dict[str, object] = {
            "kind": "version",
            "block": self.block,
            "round": m.version,
            "version": m.version,
            "weights": m.result.hex(),
            "publisher": self.me.short(),
            "aggregators": {s.index: PeerId(s.aggregator).short() for s in report.shards},
            "shards": len(report.shards) + len(missing),
            "missing": list(missing),
            # the next round's aggregators in rank order, and its shard count (09 §9.2)
            "plan": [PeerId(p).short() for p in m.plan],
            "plan_shards": m.shards,
            "contributors": [
                {"peer": PeerId(p).short(), "weight": round(w, 4), "steps": s, "staleness": st}
                for p, w, s, st in report.contributors
            ],
            "rejected": [
                {"peer": PeerId(p).short(), "code": code_name(c), "reason": why}
                for p, c, why in report.rejected
            ],
            "late": [PeerId(p).short() for p in report.late],
            "bytes_in": report.bytes_in,
            "time": time.time(),
        }
        self._write(entry)
        return entry
