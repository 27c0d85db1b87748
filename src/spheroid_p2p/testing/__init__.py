"""Tools for testing a node from outside: hostile peers, and the smallest trainer's flags.

``hostile``: a real peer that sends crafted frames (tests, ``scripts/bench_faults.py``);
:func:`tiny_trainer_args`: a trainer fast enough for tests on two cores.
"""

from __future__ import annotations

__all__ = ["tiny_trainer_args"]


def tiny_trainer_args(*, steps: int = 100_000, block: int = 0, **rounds: float) -> list[str]:
    """``node run`` flags for a trainer of ``block`` on the embedded corpus with the smallest
    model (context 16, width 32, one layer, batch 4, one thread); ``rounds`` adds averaging
    flags by name, e.g. ``round_steps=5, round_period=4, round_grace=2``."""
    args = [
        "--corpus", "embedded", "--context", "16", "--d-model", "32", "--layers-per-block",
        "1", "--batch", "4", "--threads", "1", "--train-block", str(block),
        "--train-steps", str(steps),
    ]  # fmt: skip
    for name, value in rounds.items():
        args += ["--" + name.replace("_", "-"), f"{value:g}"]
    return args
