"""Write a corpus of a different kind than prose for the quality benchmarks: Python source.

The standard library's top-level modules of the running interpreter, in name order, each
behind a ``# ---- name.py`` line, until 2.2 MB: ``bench-out/corpora/pystdlib.txt`` (a text
file: ``load_corpus`` evaluates on its last 10 %). Prints the path, size and module count.

    python scripts/corpus_pystdlib.py [--bytes 2200000] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=2_200_000, help="stop past this size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "corpora" / "pystdlib.txt")
    args = parser.parse_args()
    out = bytearray()
    modules = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        out += f"# ---- {path.name}\n".encode() + path.read_bytes() + b"\n"
        modules += 1
        if len(out) > args.bytes:
            break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(bytes(out))
    print(f"{args.out}: {len(out)} bytes from {modules} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
