"""Emulated hosts on one machine (three by default, up to MAX_HOSTS): network namespaces, tbf
links and a delay router.

::

    h1 (10.77.1.2) --eth0==veth==h1-- +
    h2 (10.77.2.2) --eth0==veth==h2-- + router namespace: policy routing into a TUN device,
    h3 (10.77.3.2) --eth0==veth==h3-- +   router.py holds each packet for its links' delay
    ...

Every host link is shaped by ``tbf`` on both ends (the host's egress is its upload, the router's
egress towards it its download). A packet from one host to another crosses two links, so a
profile's one-way delay per link (25 ms by default) gives 50 ms between hosts and a 100 ms round
trip. Each host is its own network namespace with its own TCP settings (congestion control,
``tcp_slow_start_after_idle``), as separate machines would be.

Everything is torn down on exit, failure, SIGINT or SIGTERM: the processes started in the hosts
are ended by PID, the router stopped and the namespaces deleted. Needs root and
``/dev/net/tun``; :func:`unavailable` says why not when it cannot run.

CLI (for trying things by hand; the benchmarks use :class:`Topology` directly)::

    python3 scripts/wan/topology.py up --profile default   # prints the hosts, waits for Ctrl-C
    python3 scripts/wan/topology.py up --hosts 6           # six hosts of the profile's link
    python3 scripts/wan/topology.py down                   # removes leftovers of killed runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = [
    "MAX_HOSTS",
    "PROFILES",
    "HostLink",
    "Profile",
    "Topology",
    "profile_named",
    "unavailable",
]

HERE = Path(__file__).resolve().parent
#: Every namespace this tool creates starts with this (``down`` removes only these).
PREFIX = "sphwan"
SUBNET = "10.77"
#: Bytes of queue a tbf holds, in milliseconds of its rate (a home router's buffer).
QUEUE_MS = 50
#: Lifetime bound of a topology's router (a killed harness never leaves one running longer).
MAX_LIFETIME_S = 4 * 3600
#: Hosts a topology can have (one /24 of SUBNET each).
MAX_HOSTS = 16


@dataclass(frozen=True)
class HostLink:
    """One host's link to the internet: rates in Mbit/s, one-way delay, jitter, loss."""

    up_mbit: float = 100.0
    down_mbit: float = 100.0
    delay_ms: float = 25.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0


@dataclass(frozen=True)
class Profile:
    name: str
    #: One per host (a profile of three; :meth:`with_hosts` for another count).
    links: tuple[HostLink, ...]
    #: The hosts' default TCP congestion control (each host's own sysctl).
    congestion: str = "bbr"
    #: ``net.ipv4.tcp_slow_start_after_idle`` on the hosts (Linux's default is 1).
    slow_start_after_idle: int = 1
    #: The hosts' initial congestion and receive windows (segments) on their route (None:
    #: Linux's 10); a host setting, like the sysctls, that no socket option reaches.
    initcwnd: int | None = None
    notes: str = ""

    def with_hosts(self, n: int) -> Profile:
        """The same profile over ``n`` hosts, their links taken in turn from this one's."""
        if not 2 <= n <= MAX_HOSTS:
            raise ValueError(f"a topology has 2 to {MAX_HOSTS} hosts, not {n}")
        links = tuple(self.links[i % len(self.links)] for i in range(n))
        return replace(self, links=links)

    def one_way_ms(self, a: int, b: int) -> float:
        """One-way delay from host ``a`` to host ``b`` (0-based), without jitter."""
        return self.links[a].delay_ms + self.links[b].delay_ms

    def path_mbit(self, a: int, b: int) -> float:
        return min(self.links[a].up_mbit, self.links[b].down_mbit)

    def describe(self) -> dict[str, object]:
        return {**asdict(self), "links": [asdict(lk) for lk in self.links]}


_DEFAULT = HostLink()
PROFILES: dict[str, Profile] = {
    "default": Profile("default", (_DEFAULT,) * 3, notes="100 Mbit/s, 25 ms one way per link"),
    "harsh": Profile(
        "harsh",
        (HostLink(20, 20, 75, 0, 1.0),) * 3,
        notes="20 Mbit/s, 75 ms one way and 1 % loss per link (a host pair: 150 ms, ~2 %)",
    ),
    "lan": Profile(
        "lan",
        (HostLink(1000, 1000, 0.0),) * 3,
        notes="1 Gbit/s, no added delay: what the emulation itself costs",
    ),
    "slow": Profile(
        "slow",
        (HostLink(20, 20, 25.0),) * 3,
        notes="20 Mbit/s, 25 ms one way per link, no loss (many hosts within this machine's CPU)",
    ),
    "nodelay": Profile(
        "nodelay",
        (HostLink(100, 100, 0.0),) * 3,
        notes="100 Mbit/s, no added delay (for checking the emulation)",
    ),
    "asymmetric": Profile(
        "asymmetric",
        (_DEFAULT, HostLink(up_mbit=10), _DEFAULT),
        notes="as default, but host 2 uploads at 10 Mbit/s",
    ),
}


def profile_named(text: str) -> Profile:
    """A profile by name, with host settings after ``+``: ``default+cubic`` (the hosts'
    congestion control), ``+noidle`` (``tcp_slow_start_after_idle=0``), ``+iw64`` (initial
    window 64 segments), e.g. ``harsh+cubic+iw64``."""
    name, *mods = text.split("+")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: one of {', '.join(PROFILES)}")
    profile = replace(PROFILES[name], name=text)
    for mod in mods:
        if mod in ("bbr", "cubic", "reno"):
            profile = replace(profile, congestion=mod)
        elif mod == "noidle":
            profile = replace(profile, slow_start_after_idle=0)
        elif mod.startswith("iw") and mod[2:].isdigit():
            profile = replace(profile, initcwnd=int(mod[2:]))
        else:
            raise ValueError(f"unknown host setting {mod!r}: bbr, cubic, reno, noidle, iwN")
    return profile


def unavailable() -> str | None:
    """Why namespaces cannot be built here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tbf and a TUN device)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (iproute2)"
    return None


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done


def _in(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in namespace ``ns``."""
    return _sh("ip", "netns", "exec", ns, *cmd, check=check)


def _sysctl(ns: str, key: str, value: object) -> None:
    _in(ns, "sysctl", "-qw", f"{key}={value}")


def _tbf(ns: str, dev: str, mbit: float) -> None:
    rate = int(mbit * 1e6)
    burst = max(15_140, rate // 8 // 250)  # at least 10 packets, else 4 ms of the rate
    limit = max(3 * 15_140, rate // 8 * QUEUE_MS // 1000)
    tbf = ("tbf", "rate", f"{rate}bit", "burst", str(burst), "limit", str(limit))
    _in(ns, "tc", "qdisc", "replace", "dev", dev, "root", *tbf)


@dataclass
class Topology:
    """Build the three hosts for ``profile``; a context manager that always tears down."""

    profile: Profile
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    workdir: Path = field(default_factory=lambda: Path("/tmp"))
    router: subprocess.Popen[bytes] | None = None

    @property
    def router_ns(self) -> str:
        return f"{PREFIX}{self.tag}r"

    def ns(self, host: int) -> str:
        """The namespace of host ``host`` (0-based)."""
        return f"{PREFIX}{self.tag}h{host + 1}"

    @staticmethod
    def addr(host: int) -> str:
        return f"{SUBNET}.{host + 1}.2"

    @property
    def stats_path(self) -> Path:
        return self.workdir / f"{PREFIX}{self.tag}-router.json"

    def exec_prefix(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def __enter__(self) -> Topology:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        r = self.router_ns
        _sh("ip", "netns", "add", r)
        _sysctl(r, "net.ipv4.ip_forward", 1)
        _sysctl(r, "net.ipv4.conf.all.rp_filter", 0)
        _sysctl(r, "net.ipv4.conf.default.rp_filter", 0)
        _sysctl(r, "net.ipv6.conf.all.disable_ipv6", 1)
        _in(r, "ip", "link", "set", "lo", "up")
        for i, link in enumerate(self.profile.links):
            h, side, net = self.ns(i), f"h{i + 1}", f"{SUBNET}.{i + 1}"
            _sh("ip", "netns", "add", h)
            veth = ("type", "veth", "peer", "name", side, "netns", r)
            _sh("ip", "link", "add", "eth0", "netns", h, *veth)
            _sysctl(h, "net.ipv6.conf.all.disable_ipv6", 1)
            _sysctl(h, "net.ipv4.tcp_congestion_control", self.profile.congestion)
            _sysctl(h, "net.ipv4.tcp_slow_start_after_idle", self.profile.slow_start_after_idle)
            _in(h, "ip", "link", "set", "lo", "up")
            _in(h, "ip", "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            _in(h, "ip", "link", "set", "eth0", "up")
            iw = self.profile.initcwnd
            window = ("initcwnd", str(iw), "initrwnd", str(iw)) if iw else ()
            if iw:  # a receive buffer whose first window holds the initial window
                _sysctl(h, "net.ipv4.tcp_rmem", f"4096 {max(131072, 4 * iw * 1448)} 6291456")
            _in(h, "ip", "route", "add", "default", "via", f"{net}.1", *window)
            _in(r, "ip", "addr", "add", f"{net}.1/24", "dev", side)
            _sysctl(r, f"net.ipv4.conf.{side}.rp_filter", 0)
            _in(r, "ip", "link", "set", side, "up")
            # what a host sends goes to the TUN device (table 100), what comes back from it
            # is routed by the main table to the receiving host's link
            _in(r, "ip", "rule", "add", "iif", side, "table", "100")
            _tbf(h, "eth0", link.up_mbit)
            _tbf(r, side, link.down_mbit)
        self._start_router()

    def _start_router(self) -> None:
        r, tun = self.router_ns, "sphtun"
        ready = self.workdir / f"{PREFIX}{self.tag}-router.ready"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, str(HERE / "router.py"), "--tun", tun]
        for i, lk in enumerate(self.profile.links):
            spec = f"{SUBNET}.{i + 1}.0/24={lk.delay_ms}:{lk.jitter_ms}:{lk.loss_percent}"
            cmd += ["--link", spec]
        cmd += ["--stats", str(self.stats_path), "--ready", str(ready)]
        cmd += ["--max-seconds", str(MAX_LIFETIME_S)]
        self.router = subprocess.Popen(["ip", "netns", "exec", r, *cmd])
        deadline = time.monotonic() + 10
        while not ready.exists():  # bounded: the router writes it once its device is open
            if self.router.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the delay router did not start")
            time.sleep(0.05)
        ready.unlink()
        _sysctl(r, f"net.ipv4.conf.{tun}.rp_filter", 0)
        _in(r, "ip", "link", "set", tun, "up", "mtu", "1500")
        _in(r, "ip", "route", "add", "default", "dev", tun, "table", "100")

    def router_stats(self) -> dict[str, dict[str, int]]:
        """Per host pair (``"1->2"``): packets, bytes, lost, overflow; read after ``down``."""
        if not self.stats_path.exists():
            return {}
        return json.loads(self.stats_path.read_text())  # type: ignore[no-any-return]

    def down(self) -> None:
        if self.router is not None:
            _end(self.router)
        names = [self.router_ns, *(self.ns(i) for i in range(len(self.profile.links)))]
        for ns in names:
            _end_namespace_processes(ns)
            _sh("ip", "netns", "del", ns, check=False)


def _end(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace_s: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def _end_namespace_processes(ns: str) -> None:
    """End what is left in one of our namespaces (children of what we started), by PID."""
    done = _sh("ip", "netns", "pids", ns, check=False)
    for pid in (int(p) for p in done.stdout.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def leftovers() -> list[str]:
    done = _sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.startswith(PREFIX)]


@contextlib.contextmanager
def signals_end_cleanly() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so ``with Topology(...)`` tears down."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the hosts and keep them until Ctrl-C")
    up.add_argument("--profile", default="default", help="e.g. default, harsh+cubic+iw64")
    up.add_argument("--hosts", type=int, default=3, help=f"2 to {MAX_HOSTS} hosts")
    up.add_argument("--seconds", type=float, default=3600, help="tear down after this long")
    sub.add_parser("down", help=f"delete namespaces named {PREFIX}* left by killed runs")
    args = parser.parse_args(argv)
    if args.command == "down":
        for ns in leftovers():
            _end_namespace_processes(ns)
            _sh("ip", "netns", "del", ns, check=False)
            print(f"deleted {ns}")
        return 0
    reason = unavailable()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    try:
        profile = profile_named(args.profile).with_hosts(args.hosts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with signals_end_cleanly(), Topology(profile) as topo:
        for i in range(args.hosts):
            print(f"host {i + 1}: {topo.addr(i)}  (ip netns exec {topo.ns(i)} ...)")
        print(f"profile {profile.name}: {profile.notes}; Ctrl-C tears down", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
