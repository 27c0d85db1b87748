"""Wait until a peer knows ``--count`` live records of ``--role`` (readiness by query).

Runs where the driver is (on an emulated host: ``ip netns exec NS python3 wait_serving.py``;
on a real machine, as it is) and asks the peer's status every half second, for at most
``--timeout`` seconds; exit 0 when the count is reached, 1 otherwise (saying what it saw).

    python3 scripts/wan/wait_serving.py --peer 203.0.113.10:7000 --count 4 [--role serve]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from spheroid_p2p.client.status import fetch_status
from spheroid_p2p.errors import SpheroidError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--role", default="serve", choices=["serve", "train"])
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    ends = time.monotonic() + args.timeout
    seen = -1
    while time.monotonic() < ends:
        try:
            status = asyncio.run(fetch_status(args.peer, timeout_s=5.0))
            seen = sum(1 for r in status.records if r.role == args.role and not r.departed)
            if seen >= args.count:
                return 0
        except (SpheroidError, OSError):
            pass  # not up yet
        time.sleep(0.5)
    print(
        f"{args.peer}: {seen} live {args.role} records after {args.timeout:.0f} s, "
        f"want {args.count}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
