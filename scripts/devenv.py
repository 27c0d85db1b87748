"""Set up the project's virtual environment, then run the demo or the test suite.

Usage (from a fresh clone, with only Python 3.11+ and pip)::

    python3 scripts/devenv.py demo [demo flags...]   # set up, then run the local-swarm demo
    python3 scripts/devenv.py test [pytest args...]  # set up, then lint and run the tests
    python3 scripts/devenv.py fuzz [fuzz.py flags...] # set up, add atheris, fuzz the decoders
    python3 scripts/devenv.py setup                  # only set up

Setup creates ``.venv/`` in the repository, installs ``torch==2.13.0`` first (the CPU build;
any other torch spec would pull gigabytes of CUDA packages), then the package in editable mode
with its test and benchmark extras. It is skipped when ``setup.cfg`` has not changed since the
last successful setup.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".spheroid-setup"
TORCH = "torch==2.13.0"


def _run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def setup() -> None:
    """Create and fill .venv unless it is already up to date."""
    want = hashlib.sha256((ROOT / "setup.cfg").read_bytes() + TORCH.encode()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == want:
        return
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = (PY, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    print(
        f"setting up {VENV}: {TORCH} (CPU) first, then this package and its dependencies "
        "(the first time takes a minute or two; later runs skip this)",
        flush=True,
    )
    started = time.monotonic()
    _run(*pip, TORCH)
    print(f"  torch installed ({time.monotonic() - started:.0f} s); now the package", flush=True)
    _run(*pip, "-e", f"{ROOT}[test,bench]")
    STAMP.write_text(want)
    print(f"  set up in {time.monotonic() - started:.0f} s", flush=True)


def run_tests(extra: list[str]) -> int:
    """Lint, check the vectors, run pytest. pytest's 'no tests collected' (5) is a failure."""
    _run(PY, "-m", "ruff", "check", "src", "tests", "scripts")
    _run(PY, "scripts/gen_vectors.py", "--check")
    code = subprocess.run([str(PY), "-m", "pytest", *extra], cwd=ROOT, check=False).returncode
    if code == 5:
        print("error: pytest collected no tests", file=sys.stderr)
        return 1
    return code


def run_fuzz(extra: list[str]) -> int:
    """Coverage-guided fuzzing of the decoders (scripts/fuzz.py), with atheris added."""
    _run(PY, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", f"{ROOT}[fuzz]")
    return subprocess.run([str(PY), "scripts/fuzz.py", *extra], cwd=ROOT, check=False).returncode


def run_demo(extra: list[str]) -> int:
    """The main job: a local swarm trains a model on loopback, then generates text."""
    return subprocess.run(
        [str(PY), "-m", "spheroid_p2p.demo", *extra], cwd=ROOT, check=False
    ).returncode


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in {"setup", "test", "demo", "fuzz"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, extra = args[0], args[1:]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    setup()
    if command == "test":
        return run_tests(extra)
    if command == "demo":
        return run_demo(extra)
    if command == "fuzz":
        return run_fuzz(extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
