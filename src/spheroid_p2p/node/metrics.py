"""A node's Prometheus metrics, exposed by ``node.web`` at ``/metrics`` (``--http``).

Nothing here is on a hot path: the services keep plain counters (``PeerManager.traffic``,
``RoundLog.counts``, ``Codecs.chosen``, the training jobs' progress) and
:class:`NodeCollector` reads them when Prometheus scrapes, through ``prometheus_client``'s
custom-collector interface. The one metric observed as it happens is the traversal hop
latency histogram (``prometheus_client.Histogram``), fed by ``TraversalServer.on_hop``.
Every node has its own registry, so several nodes in one process (tests) do not mix.
The README's metrics table lists every name; ``tests/integration/test_web.py`` parses them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spheroid_p2p.wire.message import MessageType

if TYPE_CHECKING:
    from spheroid_p2p.node.app import Node

__all__ = ["HOP_BUCKETS_S", "NodeCollector", "NodeMetrics"]

#: Buckets of the hop latency histogram, in seconds (a hop computes for 0.5 ms to seconds).
HOP_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class NodeMetrics:
    """One node's registry: the collector plus the hop histograms."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        self.hop_seconds = Histogram(
            "spheroid_traversal_hop_seconds",
            "Seconds a hop of this node computed its blocks for one traversal",
            ["blocks"],
            buckets=HOP_BUCKETS_S,
            registry=self.registry,
        )
        self.hop_queued = Histogram(
            "spheroid_traversal_hop_queued_seconds",
            "Seconds a traversal waited at this node before its blocks ran",
            ["blocks"],
            buckets=HOP_BUCKETS_S,
            registry=self.registry,
        )

    def hop(self, first: int, last: int, seconds: float, queued_s: float) -> None:
        label = f"{first}" if first == last else f"{first}-{last}"
        self.hop_seconds.labels(label).observe(seconds)
        self.hop_queued.labels(label).observe(queued_s)


def _counter(
    name: str, doc: str, labels: list[str], values: Mapping[str, int] | Mapping[MessageType, int]
) -> Metric:
    """A counter family, one sample per key (a message type is labelled by its name)."""
    family = CounterMetricFamily(name, doc, labels=labels)
    named = {getattr(k, "name", str(k)): v for k, v in values.items()}
    for key, value in sorted(named.items()):
        family.add_metric([key], value)
    return family


class NodeCollector(Collector):
    """Reads the node's state at scrape time (prometheus_client's custom collector)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        yield from self._connections(node)
        yield from self._gossip(node)
        yield from self._rounds(node)
        yield from self._transfers(node)
        yield from self._training(node)
        evaluator = node.evaluator
        if evaluator is not None and evaluator.history:
            _, ce, _ = evaluator.history[-1]
            yield GaugeMetricFamily(
                "spheroid_eval_ce_nats_per_byte",
                "CE_sampler of the swarm's current model, last score of this evaluator",
                value=ce,
            )
            yield CounterMetricFamily(
                "spheroid_eval_scores", "Scores this evaluator made", value=len(evaluator.history)
            )
        yield GaugeMetricFamily(
            "spheroid_node_uptime_seconds",
            "Seconds since this node started",
            value=time.monotonic() - node.started_at,
        )
        yield CounterMetricFamily(
            "spheroid_node_task_failures",
            "Guarded tasks that raised (0 on a healthy node)",
            value=node.task_failures,
        )

    def _connections(self, node: Node) -> Iterator[Metric]:
        peers = node.peers
        states: dict[str, int] = {}
        for link in peers.links:
            state = link.conn.state.value
            states[state] = states.get(state, 0) + 1
        family = GaugeMetricFamily("spheroid_connections", "Connections by state", labels=["state"])
        for state, n in sorted(states.items()):
            family.add_metric([state], n)
        yield family
        traffic = peers.traffic
        label = ["type"]
        yield _counter(
            "spheroid_frames_received", "Frames received by message type", label, traffic.frames_in
        )
        yield _counter(
            "spheroid_frames_sent", "Frames sent by message type", label, traffic.frames_out
        )
        yield _counter(
            "spheroid_received_bytes", "Frame bytes received by message type", label,
            traffic.bytes_in,
        )  # fmt: skip
        yield _counter(
            "spheroid_sent_bytes", "Frame bytes sent by message type", label, traffic.bytes_out
        )
        yield _counter(
            "spheroid_rejected",
            "Connections closed and requests refused because of what a peer sent, by error code",
            ["code"],
            traffic.rejected,
        )
        yield CounterMetricFamily(
            "spheroid_connections_refused",
            "Inbound connections refused by the connection caps",
            value=peers.refused,
        )

    def _gossip(self, node: Node) -> Iterator[Metric]:
        now = time.monotonic()
        entries = node.gossip.table.entries()
        counts: dict[tuple[str, str], int] = {}
        ages = []
        for e in entries:
            state = "departed" if e.record.departed else "live"
            counts[(e.record.role, state)] = counts.get((e.record.role, state), 0) + 1
            ages.append(now - e.received_at)
        family = GaugeMetricFamily(
            "spheroid_gossip_records", "Ownership records held", labels=["role", "state"]
        )
        for (role, state), n in sorted(counts.items()):
            family.add_metric([role, state], n)
        yield family
        age = GaugeMetricFamily(
            "spheroid_gossip_record_age_seconds",
            "Seconds since the held records were received (oldest and mean)",
            labels=["stat"],
        )
        age.add_metric(["max"], max(ages, default=0.0))
        age.add_metric(["mean"], sum(ages) / len(ages) if ages else 0.0)
        yield age
        yield _counter(
            "spheroid_gossip_records_dropped",
            "Records not taken into the table, by reason",
            ["reason"],
            dict(node.gossip.table.dropped),
        )

    def _rounds(self, node: Node) -> Iterator[Metric]:
        blocks = node.blocks
        if blocks is None:
            return
        shards = CounterMetricFamily(
            "spheroid_round_shards",
            "Shards this node aggregated, by how the shard closed",
            labels=["block", "closed"],
        )
        replicas = CounterMetricFamily(
            "spheroid_round_replicas",
            "Replicas in the shards this node aggregated, by outcome",
            labels=["block", "outcome"],
        )
        versions = CounterMetricFamily(
            "spheroid_round_versions_published",
            "Versions this node published as a round's publisher",
            labels=["block"],
        )
        current = GaugeMetricFamily(
            "spheroid_round_version", "Block version this replica trains from", labels=["block"]
        )
        refused = CounterMetricFamily(
            "spheroid_round_versions_refused",
            "Versions from other peers this replica refused (09 §9.8: not a live replica, "
            "not finite, too far from the base)",
            labels=["block"],
        )
        for block, replica in sorted(blocks.replicas.items()):
            b = str(block)
            counts = replica.roundlog.counts
            for closed in ("barrier", "deadline"):
                shards.add_metric([b, closed], counts[f"shard_{closed}"])
            for outcome in ("contributors", "rejected", "late"):
                replicas.add_metric([b, outcome], counts[outcome])
            versions.add_metric([b], counts["versions"])
            base = replica.installer.base
            current.add_metric([b], base.version if base is not None else 0)
            refused.add_metric([b], replica.installer.rejected_versions)
        yield from (shards, replicas, versions, current, refused)

    def _transfers(self, node: Node) -> Iterator[Metric]:
        transfers = node.transfers
        family = CounterMetricFamily(
            "spheroid_transfer_bytes", "Bulk transfer payload bytes", labels=["kind"]
        )
        family.add_metric(["served"], transfers.bytes_served)
        family.add_metric(["fetched"], transfers.bytes_fetched)
        family.add_metric(["stream_out"], transfers.streams.bytes_out)
        family.add_metric(["stream_in"], transfers.streams.bytes_in)
        yield family
        yield _counter(
            "spheroid_transfer_codec_choices",
            "Transfers by the codec chosen for them",
            ["codec"],
            transfers.codecs.chosen,
        )
        rates = GaugeMetricFamily(
            "spheroid_transfer_link_rate_bytes_per_second",
            "Measured bulk transfer rate from each peer (the codec choice reads it)",
            labels=["peer"],
        )
        for peer, rate in sorted(transfers.codecs.rates.rates.items(), key=lambda kv: kv[0].digest):
            rates.add_metric([peer.short()], rate)
        yield rates

    def _training(self, node: Node) -> Iterator[Metric]:
        if node.blocks is None:
            return
        labels = ["block"]
        step = GaugeMetricFamily("spheroid_training_step", "Optimizer steps done", labels=labels)
        total = GaugeMetricFamily("spheroid_training_step_budget", "Step budget", labels=labels)
        loss = GaugeMetricFamily(
            "spheroid_training_loss", "Recent training loss (mean of 20 steps)", labels=labels
        )
        rate = GaugeMetricFamily(
            "spheroid_training_steps_per_second", "Steps per second in this process", labels=labels
        )
        eta = GaugeMetricFamily(
            "spheroid_training_eta_seconds", "Seconds to the end of the budget", labels=labels
        )
        quality = GaugeMetricFamily(
            "spheroid_training_quality_nats_per_byte",
            "The block's quality: mean CE of its last 100 batches (the weighted rule's weight)",
            labels=labels,
        )
        for block, job in sorted(node.blocks.jobs.items()):
            if job.trainer.block.quality is not None:
                quality.add_metric([str(block)], job.trainer.block.quality)
        for job in node.blocks.job_views():
            b = [str(job.block)]
            step.add_metric(b, job.step)
            total.add_metric(b, job.total)
            loss.add_metric(b, job.loss)
            rate.add_metric(b, job.rate)
            if job.eta_s is not None:
                eta.add_metric(b, job.eta_s)
        yield from (step, total, loss, rate, eta, quality)
