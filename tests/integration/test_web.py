"""``--http``: the Prometheus metrics (parsed with prometheus_client's parser, every name in
the README's table seen) and the swarm page's JSON, from a real two-block swarm with an
evaluator, a traversal and a hostile frame."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spheroid_p2p.testing import tiny_trainer_args
from spheroid_p2p.testing.hostile import HostilePeer
from tests.support.swarm import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = ("--context", "16", "--d-model", "32", "--layers-per-block", "1", "--n-blocks", "2")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


def _samples(addr: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a scrape by name (counters as ``*_total``, histogram buckets...)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(_get(f"http://{addr}/metrics").decode()):
        # a labelled family with no samples yet still names itself (HELP and TYPE lines)
        out.setdefault(family.name + ("_total" if family.type == "counter" else ""), [])
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _documented() -> set[str]:
    """Metric names in the README's metrics table (first column, in backquotes)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(spheroid_[a-z_]+)`", section, re.M))


def test_metrics_and_the_swarm_json_of_a_real_swarm(tmp_path: Path) -> None:
    web0, web_eval = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = [*tiny_trainer_args(steps=80, round_steps=20), *MODEL[6:]]
    b0 = NodeProcess(tmp_path, "b0", *args, "--http", web0, verbose=1).start()
    nodes = [b0]
    evaluator = None
    try:
        nodes.append(
            NodeProcess(
                tmp_path, "b1", *tiny_trainer_args(steps=80, round_steps=20, block=1),
                *MODEL[6:], "--bootstrap", b0.addr, verbose=1,
            ).start()
        )  # fmt: skip
        evaluator = subprocess.Popen(
            [
                sys.executable, "-m", "spheroid_p2p.node", "eval", "--bootstrap", b0.addr,
                "--corpus", "embedded", *MODEL, "--windows", "4", "--every", "1",
                "--count", "1000", "--http", web_eval,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: all(n.serving_trained() for n in nodes), timeout_s=180)
        # a traversal through both servers, so each hop observes its latency
        subprocess.run(
            [sys.executable, "-m", "spheroid_p2p.generate", "--peer", b0.addr, "--prompt",
             "Day", "--bytes", "4"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

        async def garbage() -> None:  # a frame that cannot be opened: refused, counted
            evil = HostilePeer()
            await evil.connect(b0.addr)
            evil.send_raw(b"\x00\x00\x00\x08garbage!")
            await evil.wait_closed(5)
            await evil.close()

        asyncio.run(garbage())

        def scored() -> bool:
            try:
                return "spheroid_eval_ce_nats_per_byte" in _samples(web_eval)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(scored, timeout_s=120, interval_s=0.5)
        node, ev = _samples(web0), _samples(web_eval)
    finally:
        if evaluator is not None:
            evaluator.terminate()
            evaluator.wait(10)
        for n in nodes:
            n.stop()
    seen = {re.sub(r"_(bucket|sum|count|created)$", "", name) for name in {*node, *ev}}
    missing = _documented() - seen
    assert not missing, f"documented but not exposed: {sorted(missing)}"
    undocumented = {n for n in seen if n.startswith("spheroid_")} - _documented()
    assert not undocumented, f"exposed but not in the README table: {sorted(undocumented)}"
    frames = {labels["type"]: v for labels, v in node["spheroid_frames_received_total"]}
    assert frames["GOSSIP_RECORDS"] >= 1 and frames["TRAVERSE"] >= 1
    rejected = {labels["code"]: v for labels, v in node["spheroid_rejected_total"]}
    assert sum(rejected.values()) >= 1, rejected
    hops = [v for labels, v in node["spheroid_traversal_hop_seconds_count"]]
    assert hops and sum(hops) >= 4  # one hop per byte on block 0's server
    (_, step), *_ = node["spheroid_training_step"]
    assert step == 80
    (_, ce), *_ = ev["spheroid_eval_ce_nats_per_byte"]
    assert 0.5 < ce < 6.0


def test_the_swarm_json_and_page_are_read_only_and_bounded(tmp_path: Path) -> None:
    web = f"127.0.0.1:{free_port()}"
    node = NodeProcess(tmp_path, "t", *tiny_trainer_args(steps=5000), "--http", web).start()
    try:
        wait_for(lambda: bool(node.status().jobs and node.status().jobs[0].step >= 20), 60)
        data = json.loads(_get(f"http://{web}/api/v1/swarm"))
        assert data["api"] == 1 and data["node"]["id"] == node.peer_id
        (block,) = data["blocks"]
        assert block["block"] == 0 and block["trainers"][0]["me"]
        (job,) = data["training"]
        assert job["step"] >= 20 and job["history"] and job["total"] == 5000
        page = _get(f"http://{web}/").decode()
        assert "/static/app.js" in page and "<svg" in page
        assert b"refresh" in _get(f"http://{web}/static/app.js")
        post = urllib.request.Request(f"http://{web}/api/v1/swarm", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=10)
        assert refused.value.code == 405
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://{web}/static/../../app.py", timeout=10)
        assert missing.value.code in (403, 404)
    finally:
        node.stop()
