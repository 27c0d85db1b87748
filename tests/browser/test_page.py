"""The live swarm page in a real browser (Debian's chromium, headless, through Playwright)
against a real local swarm: what a person would check by looking. Opt-in: ``-m browser``
(README, Operating a swarm). Screenshots go to ``bench-out/browser/``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spheroid_p2p.testing import tiny_trainer_args
from tests.support.swarm import NodeProcess, free_port, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "bench-out" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODEL = ("--context", "16", "--d-model", "32", "--layers-per-block", "1", "--n-blocks", "2")
#: Each check waits at most this long for the page to show it (it refreshes every 2 s).
WAIT_MS = 90_000


@pytest.fixture
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install -e '.[browser]' (README: browser test)"
    )
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_page_shows_the_swarm_as_it_changes(tmp_path: Path, browser: object) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    rounds = {"round_steps": 10, "round_period": 4, "round_grace": 2}
    trainer_web, eval_web = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    nodes: list[NodeProcess] = []
    evaluator = None
    try:
        b0 = NodeProcess(
            tmp_path, "b0", *tiny_trainer_args(**rounds), MODEL[6], MODEL[7],
            "--http", trainer_web, verbose=1,
        ).start()  # fmt: skip
        nodes.append(b0)
        for name in ("b1", "b1r"):
            nodes.append(
                NodeProcess(
                    tmp_path, name, *tiny_trainer_args(block=1, **rounds), MODEL[6], MODEL[7],
                    "--bootstrap", b0.addr, verbose=1,
                ).start()
            )  # fmt: skip
        evaluator = subprocess.Popen(
            [
                sys.executable, "-m", "spheroid_p2p.node", "eval", "--bootstrap", b0.addr,
                "--corpus", "embedded", *MODEL, "--windows", "4", "--every", "2",
                "--count", "100000", "--http", eval_web,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _answers(eval_web), timeout_s=120)
        page = browser.new_page(viewport={"width": 1100, "height": 1500})  # type: ignore[attr-defined]
        page.goto(f"http://{eval_web}/")

        # blocks appear with their owners (short peer ids in the trainers column)
        short = {n.name: n.peer_id[:12] for n in nodes}
        for name in ("b0", "b1", "b1r"):
            page.wait_for_selector(f'#blocks .owner[data-peer="{short[name]}"]', timeout=WAIT_MS)
        # the CE chart gains points as the evaluator scores the swarm's model
        page.wait_for_function(
            "Number(document.querySelector('#ce-chart').dataset.points || 0) >= 2",
            timeout=WAIT_MS,
        )
        first = int(page.eval_on_selector("#ce-chart", "e => e.dataset.points"))
        page.wait_for_function(
            f"Number(document.querySelector('#ce-chart').dataset.points) > {first}",
            timeout=WAIT_MS,
        )
        # versions of both blocks appear on the timeline
        page.wait_for_function(
            "document.querySelectorAll('#round-chart polyline').length >= 2", timeout=WAIT_MS
        )
        page.screenshot(path=str(SHOTS / "swarm.png"), full_page=True)

        # a node killed without warning: its owner leaves the blocks table
        victim = nodes.pop()
        victim.kill9()
        page.wait_for_selector(
            f'#blocks .owner[data-peer="{short["b1r"]}"]', state="detached", timeout=WAIT_MS
        )
        assert page.locator(f'#blocks .owner[data-peer="{short["b1"]}"]').count() == 1
        page.screenshot(path=str(SHOTS / "after-kill.png"), full_page=True)

        # a trainer's own page: its rounds (contributors) and its training job
        mine = browser.new_page(viewport={"width": 1100, "height": 1500})  # type: ignore[attr-defined]
        mine.goto(f"http://{trainer_web}/")
        mine.wait_for_selector("#rounds tbody tr", timeout=WAIT_MS)
        mine.wait_for_selector("#training tbody tr", timeout=WAIT_MS)
        assert "version" in mine.inner_text("#rounds")
        mine.wait_for_function(
            "Number(document.querySelector('#ce-chart').dataset.points || 0) >= 2",
            timeout=WAIT_MS,
        )  # a trainer charts its training loss
        mine.screenshot(path=str(SHOTS / "trainer.png"), full_page=True)
    finally:
        if evaluator is not None:
            evaluator.terminate()
            evaluator.wait(10)
        for n in nodes:
            n.stop()


def _answers(addr: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{addr}/api/v1/swarm", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        time.sleep(0.2)
        return False
