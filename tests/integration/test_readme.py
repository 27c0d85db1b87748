"""The README's "Running peers" commands, run as written in a shell (the ports moved to free
ones, the virtual environment named by its full path because the shell starts elsewhere)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from spheroid_p2p.node.launcher import probe
from tests.support.swarm import free_port, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running peers\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [
        re.sub(r"\s+", " ", line.split("  #")[0]).strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_running_peers_commands_work_as_written(tmp_path: Path) -> None:
    commands = _commands()
    assert commands[0] == ". .venv/bin/activate", commands[0]
    ports = {"7000": str(free_port()), "7001": str(free_port()), "9100": str(free_port())}

    def shell(command: str) -> list[str]:
        for old, new in ports.items():
            command = command.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        return ["bash", "-c", f". {ROOT}/.venv/bin/activate && exec {command}"]

    runs = [c for c in commands if ".node -v run " in c]
    statuses = [c for c in commands if ".node status " in c]
    assert len(runs) == 2 and len(statuses) == 3
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    procs = []
    try:
        for i, command in enumerate(runs):
            log = open(tmp_path / f"run{i}.log", "w")  # noqa: SIM115 (closed with the process)
            procs.append((subprocess.Popen(shell(command), cwd=tmp_path, stderr=log, env=env), log))
            addr = f"127.0.0.1:{ports['7000' if i == 0 else '7001']}"
            wait_for(lambda addr=addr: probe(addr) is not None, timeout_s=60)
        plain, as_json, watch = statuses
        out = subprocess.run(
            shell(plain), cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode == 0 and out.stdout.startswith("node: "), out.stderr
        wait_for(
            lambda: len(
                json.loads(
                    subprocess.run(
                        shell(as_json), cwd=tmp_path, capture_output=True, text=True,
                        timeout=60, env=env, check=True,
                    ).stdout
                )["records"]
            ) >= 2,
            timeout_s=60,
        )  # fmt: skip
        watching = subprocess.Popen(
            shell(watch), cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert watching.stdout is not None
            assert watching.stdout.readline().startswith("node: ")
        finally:
            watching.send_signal(signal.SIGINT)
            watching.wait(10)
        url = f"http://127.0.0.1:{ports['9100']}/api/v1/swarm"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert json.loads(answer.read())["api"] == 1
    finally:
        for proc, log in procs:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
    assert all(proc.returncode == 0 for proc, _ in procs), [p.returncode for p, _ in procs]
