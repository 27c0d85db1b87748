"""Where nodes run: three emulated hosts (namespaces) or three real machines (a hosts file).

A benchmark is written against :class:`Host` only: a name, the address other hosts dial it at,
and the command prefix that runs a program there (``ip netns exec NS`` for an emulated host,
``ssh TARGET cd ROOT &&`` for a real one, nothing for the machine the driver runs on). The
driver itself runs on host 3, the client's machine, and starts the nodes of hosts 1 and 2
through their prefixes, so every status query and traversal of the driver crosses the WAN as a
user's would.

A hosts file has one line per host, in order (``#`` starts a comment)::

    # name  address      ssh target (empty: this machine)
    h1      203.0.113.10  me@203.0.113.10
    h2      203.0.113.20  me@203.0.113.20
    h3      203.0.113.30

Every machine needs the repository at the same path (``--remote-root``, default this one) set
up with ``python3 scripts/devenv.py setup``, and the listed ports open between the hosts.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from spheroid_p2p.node.launcher import NodeProcess

__all__ = ["Host", "from_file", "start_node"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Host:
    name: str
    addr: str
    prefix: tuple[str, ...] = ()

    def command_line(self, cmd: list[str]) -> str:
        """What runs there, as a shell line a person can paste."""
        return " ".join(shlex.quote(p) for p in (*self.prefix, *cmd))


def from_file(path: Path, remote_root: Path = ROOT) -> list[Host]:
    """Hosts from a hosts file (see the module docstring); exactly three."""
    hosts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise ValueError(f"{path}:{number}: want 'name address [ssh-target]'")
        prefix: tuple[str, ...] = ()
        if len(parts) == 3:
            prefix = ("ssh", "-o", "BatchMode=yes", parts[2], "cd", str(remote_root), "&&")
        hosts.append(Host(parts[0], parts[1], prefix))
    if len(hosts) != 3:
        raise ValueError(f"{path}: want 3 hosts, found {len(hosts)}")
    return hosts


def start_node(
    host: Host,
    workdir: Path,
    name: str,
    *args: str,
    bootstrap: str | None = None,
    extra: tuple[str, ...] = (),
    verbose: int = 1,
    plan: list[str] | None = None,
) -> NodeProcess:
    """Start a node on ``host``, listening on its address (any port); its command line is
    appended to ``plan`` (what runs where, printed by the benchmarks)."""
    boot = ("--bootstrap", bootstrap) if bootstrap else ()
    node = NodeProcess(
        workdir,
        name,
        *args,
        *boot,
        *extra,
        verbose=verbose,
        listen=f"{host.addr}:0",
        prefix=host.prefix,
    )
    if plan is not None:
        cmd = [sys.executable, "-m", "spheroid_p2p.node", "run", *node.args]
        plan.append(f"[{host.name}] {host.command_line(cmd)}")
    return node.start(timeout_s=120)
