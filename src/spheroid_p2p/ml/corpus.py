"""The project's own small corpus, generated deterministically (no download, no ../shared).

A seeded grammar writes plain English prose: short chronicles of a harbour town, with
dialogue, weather reports and ledgers. It has the structure a byte model can learn in a few
minutes on a CPU (spelling, capitals, punctuation, recurring names and phrases, line layout),
so the demo and the tests train on real text-like bytes without any external data.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["embedded_corpus", "write_embedded_corpus"]

_NAMES = [
    "Ada",
    "Bram",
    "Cora",
    "Dov",
    "Elin",
    "Fenn",
    "Greta",
    "Hugo",
    "Ines",
    "Jory",
    "Kasia",
    "Lio",
    "Mara",
    "Nils",
    "Orla",
    "Piet",
    "Quinn",
    "Rosa",
    "Sten",
    "Tova",
]
_TRADES = [
    "baker",
    "smith",
    "weaver",
    "ferryman",
    "miller",
    "cooper",
    "net mender",
    "lamplighter",
    "carpenter",
    "fishmonger",
    "clerk",
    "gardener",
]
_PLACES = [
    "the harbour",
    "the market square",
    "the old mill",
    "the north road",
    "the chapel steps",
    "the long pier",
    "the salt store",
    "the river ford",
    "the orchard",
    "the bell tower",
    "the quay",
    "the narrow lane",
]
_THINGS = [
    "a basket of apples",
    "three loaves of rye",
    "a coil of rope",
    "a bolt of linen",
    "a lantern",
    "two barrels of herring",
    "a sack of flour",
    "a brass key",
    "a letter sealed with wax",
    "a box of nails",
    "a jar of honey",
    "a new oar",
]
_ADJ = ["grey", "quiet", "windy", "bright", "cold", "busy", "damp", "golden", "still", "sharp"]
_TIMES = [
    "At dawn",
    "In the morning",
    "Before noon",
    "At midday",
    "In the afternoon",
    "Towards evening",
    "At dusk",
    "Late at night",
]
_VERBS = [
    "carried",
    "sold",
    "mended",
    "lost",
    "found",
    "bought",
    "hid",
    "delivered",
    "counted",
    "painted",
]
_WEATHER = [
    "rain from the west",
    "a clear sky",
    "fog over the water",
    "a strong east wind",
    "light snow",
    "warm sun",
    "thunder in the hills",
    "a mild breeze",
]
_SAYINGS = [
    "The tide waits for no one.",
    "Count twice, pay once.",
    "A dry net catches nothing.",
    "Bread first, then gossip.",
    "Mind the third step.",
    "The bell is always late.",
]


def _sentence(rng: random.Random) -> str:
    name, other = rng.sample(_NAMES, 2)
    kind = rng.randrange(6)
    if kind == 0:
        return (
            f"{rng.choice(_TIMES)}, {name} the {rng.choice(_TRADES)} {rng.choice(_VERBS)} "
            f"{rng.choice(_THINGS)} at {rng.choice(_PLACES)}."
        )
    if kind == 1:
        return f"The day was {rng.choice(_ADJ)}, and {rng.choice(_PLACES)} was {rng.choice(_ADJ)}."
    if kind == 2:
        return f'{name} told {other}: "{rng.choice(_SAYINGS)}"'
    if kind == 3:
        return (
            f"{name} asked {other} where {rng.choice(_THINGS)} had gone, and {other} "
            f"said it was at {rng.choice(_PLACES)}."
        )
    if kind == 4:
        count = rng.randrange(2, 40)
        amount = "more" if count > 20 else "less"
        return (
            f"By evening {name} had {rng.choice(_VERBS)} {count} of them, "
            f"which was {amount} than usual."
        )
    return f"Nobody in town could remember a {rng.choice(_ADJ)} season like it."


def _entry(rng: random.Random, day: int) -> str:
    lines = [f"Day {day}. Weather: {rng.choice(_WEATHER)}."]
    paragraph = " ".join(_sentence(rng) for _ in range(rng.randrange(3, 7)))
    lines.append(paragraph)
    if rng.random() < 0.4:
        name = rng.choice(_NAMES)
        lines.append(f"LEDGER of {name}:")
        for _ in range(rng.randrange(2, 5)):
            thing = rng.choice(_THINGS)
            lines.append(f"  {thing:<26} {rng.randrange(1, 99):>3} coins")
    if rng.random() < 0.3:
        a, b = rng.sample(_NAMES, 2)
        lines.append(f"{a.upper()}: Have you seen {rng.choice(_PLACES)} today?")
        lines.append(f"{b.upper()}: Only from a distance. {rng.choice(_SAYINGS)}")
    return "\n".join(lines) + "\n\n"


def embedded_corpus(size_bytes: int = 400_000, seed: int = 7) -> bytes:
    """About ``size_bytes`` of generated chronicle text (ASCII, deterministic in ``seed``)."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    day = 1
    while total < size_bytes:
        entry = _entry(rng, day)
        parts.append(entry)
        total += len(entry)
        day += 1
    return "".join(parts).encode("ascii")


def write_embedded_corpus(path: Path, size_bytes: int = 400_000, seed: int = 7) -> Path:
    """Write the generated corpus to ``path`` (for tools that take a corpus by path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(embedded_corpus(size_bytes, seed))
    return path
