"""Per-byte traversals over a known prefix, with reusable keys and values (layout S).

Today's rule (``ml.generate``) gives every row of the window fresh noise and denoises them all,
keeping the last row: nothing a block computes for the prefix can be reused by the next
traversal. The **known-prefix rule** gives every row whose next byte is known what training
shows the blocks: that byte's code noised to the block's sigma, ``C[y_r] + sigma * eps_r``,
with ``eps_r`` fixed per window position by the generation's seed (:func:`prefix_noise`).
Only the **trajectory** rows (whose next byte is being generated) start from noise and follow
the chain's Euler steps. A row's keys and values then depend only on the bytes up to its
target, its noise and the block's sigma points, so a server keeps them per generation session
(:class:`PrefixCache`) and a per-byte traversal computes one new known row and one trajectory
row per block, not the whole window.

One traversal over a window of ``S`` bytes carries ``n_traj`` trajectory rows at positions
``S - n_traj .. S - 1`` (1 for a per-byte traversal; more for a draft's candidates or for
scoring a whole window); the known rows are positions ``0 .. S - 2``. A known row ``r`` attends
to known rows ``<= r``; a trajectory row ``q`` to known rows ``< q`` and to itself, which is
exactly what a per-byte traversal at ``q`` would give it.

Windows restart instead of sliding (:func:`window_len`): learned absolute positions make a
window shifted by one byte a different computation, so when a window would pass the context it
starts again from the last half, as the autoregressive pipeline's sessions do (10 §10.7).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from spheroid_p2p.ml.block import BlockDenoiser
from spheroid_p2p.ml.combine import COMBINE_LAST, COMBINE_WEIGHTED, Combination
from spheroid_p2p.ml.drafting import MAX_COMBINED_DRAFT, MAX_DRAFT, Drafter, DraftLength, accept
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.sampler import block_points, euler_step, initial_noise
from spheroid_p2p.ml.windows import prefix_window

__all__ = [
    "BlockCache",
    "PrefixCache",
    "generate_prefixed",
    "pick_rows",
    "prefix_noise",
    "prefixed_hop",
    "row_mask",
]

#: Salt of the prefix-noise generator, so that it never equals a traversal's own noise.
_NOISE_SALT = 0x6B6E_6F77  # "know"

KV = tuple[torch.Tensor, torch.Tensor]


def prefix_noise(seed: int, context: int, d_z: int) -> torch.Tensor:
    """(context, d_z): the fixed noise of each window position's known row for ``seed``."""
    gen = torch.Generator().manual_seed((seed ^ _NOISE_SALT) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(context, d_z, generator=gen)


@lru_cache(maxsize=512)
def row_mask(known: int, first_new: int, n_traj: int, size: int) -> torch.Tensor:
    """Attention of the new rows over [known rows 0..known-1 ; trajectory rows]: new known
    rows ``first_new..known-1`` then ``n_traj`` trajectory rows at positions
    ``size - n_traj..size - 1``. (known - first_new + n_traj, known + n_traj) bool."""
    kpos = torch.arange(known)
    qk = torch.arange(first_new, known)
    qt = torch.arange(size - n_traj, size)
    known_rows = torch.cat(
        [kpos[None, :] <= qk[:, None], torch.zeros(len(qk), n_traj, dtype=torch.bool)], dim=1
    )
    traj_rows = torch.cat([kpos[None, :] < qt[:, None], torch.eye(n_traj, dtype=torch.bool)], dim=1)
    return torch.cat([known_rows, traj_rows], dim=0)


@dataclass
class BlockCache:
    """One block's keys and values of the known rows ``0..rows-1``: per Euler point, per
    layer, buffers of ``capacity`` rows (the rows past ``rows`` are scratch)."""

    rows: int = 0
    steps: list[list[KV]] = field(default_factory=list)
    #: the block and weights the rows were computed with (other weights: nothing is valid)
    stamp: tuple[int, int] = (0, 0)

    def truncate(self, rows: int) -> None:
        self.rows = min(self.rows, rows)

    def buffers(self, block: BlockDenoiser, n_steps: int, batch: int, size: int) -> None:
        """Make sure there are buffers for ``n_steps`` points holding ``size`` rows."""
        capacity = self.steps[0][0][0].shape[2] if self.steps else 0
        if len(self.steps) == n_steps and capacity >= size:
            return
        cfg = block.cfg
        capacity = max(size, 2 * cfg.context)
        shape = (batch, cfg.n_heads, capacity, cfg.d_model // cfg.n_heads)
        old, self.steps = self.steps, []
        for j in range(n_steps):
            step = []
            for i in range(cfg.layers_per_block):
                keys, values = torch.empty(shape), torch.empty(shape)
                if j < len(old) and self.rows:
                    keys[:, :, : self.rows] = old[j][i][0][:, :, : self.rows]
                    values[:, :, : self.rows] = old[j][i][1][:, :, : self.rows]
                step.append((keys, values))
            self.steps.append(step)
        if len(old) != n_steps:
            self.rows = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for step in self.steps for kv in step for t in kv)


@dataclass
class PrefixCache:
    """What a server keeps for one generation session: the window bytes its known rows stand
    on, the prefix-noise seed, and each block's :class:`BlockCache`."""

    seed: int
    noise: torch.Tensor  # (context, d_z) from prefix_noise(seed, ...)
    #: Euler steps per block the cached rows were computed for (their sigma points)
    steps_per_block: int = 0
    text: bytes = b""
    blocks: dict[int, BlockCache] = field(default_factory=dict)

    def reuse(self, text: bytes) -> int:
        """Keep the rows that ``text`` leaves valid (row r needs bytes 0..r+1 unchanged, and
        no row a traversal of ``text`` does not use); returns how many are kept."""
        same = 0
        limit = min(len(text), len(self.text))
        while same < limit and text[same] == self.text[same]:
            same += 1
        rows = max(0, min(same - 1, len(text) - 1))
        for cache in self.blocks.values():
            cache.truncate(rows)
        self.text = text[: rows + 1] if rows else b""
        return rows

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.blocks.values())


@torch.no_grad()
def prefixed_hop(
    block: BlockDenoiser,
    text: torch.Tensor,  # (B, S) window bytes, long
    z: torch.Tensor,  # (B, n_traj, d_z) the trajectory rows' codes
    points: list[float],
    next_sigma: float | None,
    noise: torch.Tensor,  # (B or 1, >= S - 1, d_z) fixed noise of the known rows
    cache: BlockCache | None = None,
    gate: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's Euler steps for the trajectory rows of a window; known rows come from
    ``cache`` as far as it goes and are computed (and added to it) beyond.

    Returns (z after the block's steps, the last call's logits of the trajectory rows).
    """
    S = text.shape[1]
    n_traj = z.shape[1]
    if not 1 <= n_traj <= S:
        raise ValueError(f"{n_traj} trajectory rows in a window of {S}")
    known = S - 1
    if cache is not None:
        stamp = (block.serial, block.weights_version())
        if cache.stamp != stamp:
            cache.rows, cache.stamp = 0, stamp
    first_new = cache.rows if cache is not None else 0
    if first_new > known:
        raise ValueError("the cache holds rows this window does not have")
    mask = row_mask(known, first_new, n_traj, S)
    new_known = known - first_new
    x_rows, pos = _rows(text, first_new, known, n_traj)
    codes = block.codebook[text[:, first_new + 1 : S]]  # (B, new_known, d_z) known targets
    row_noise = noise[:, first_new:known]
    logits = torch.empty(0)
    if cache is not None:
        cache.buffers(block, len(points), text.shape[0], known + n_traj)
    for j, sigma in enumerate(points):
        z_rows = torch.cat([codes + sigma * row_noise, z], dim=1)
        buffers = cache.steps[j] if cache is not None else None
        if gate is not None:
            with gate():  # type: ignore[attr-defined]
                out = block.forward_rows(
                    x_rows, pos, z_rows, sigma, mask, buffers, first_new, new_known
                )
        else:
            out = block.forward_rows(
                x_rows, pos, z_rows, sigma, mask, buffers, first_new, new_known
            )
        logits = out.logits
        target = points[j + 1] if j + 1 < len(points) else next_sigma
        if target is None:
            break
        z = euler_step(z, block.expected_code(logits), sigma, target)
    if cache is not None:
        cache.rows = known
    return z, logits


def _rows(
    text: torch.Tensor, first_new: int, known: int, n_traj: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The new rows' bytes and positions: known rows first_new..known-1, then the trajectory
    rows (one contiguous slice for a per-byte traversal, whose one trajectory row follows)."""
    S = text.shape[1]
    if n_traj == 1:
        return text[:, first_new:S], _positions(first_new, S, 0, 0)
    x_rows = torch.cat([text[:, first_new:known], text[:, S - n_traj :]], dim=1)
    return x_rows, _positions(first_new, known, S - n_traj, S)


@lru_cache(maxsize=512)
def _positions(a: int, b: int, c: int, d: int) -> torch.Tensor:
    """Positions a..b-1 then c..d-1 (cached: a server sees the same few shapes)."""
    return torch.cat([torch.arange(a, b), torch.arange(c, d)])


_U64 = 0xFFFF_FFFF_FFFF_FFFF


def start_row(cfg_top: float, d_z: int, seed: int, rows: int = 1) -> torch.Tensor:
    """(1, rows, d_z): the trajectory rows' initial noise at the top of the schedule, row j
    from its own generator seeded ``seed + j``: the noise per-byte traversal ``seed + j``
    would draw, so a pass of several rows reproduces several per-byte traversals."""
    out = [
        initial_noise((1, 1, d_z), cfg_top, torch.Generator().manual_seed((seed + j) & _U64))
        for j in range(rows)
    ]
    return torch.cat(out, dim=1)


def pick_rows(logits: torch.Tensor, temperature: float, seed: int) -> bytes:
    """One byte per trajectory row of the final logits (1, n, vocab): argmax at temperature 0,
    else row j sampled from its own generator seeded ``(seed + j) XOR 0x5EED`` (what per-byte
    traversal ``seed + j`` samples with)."""
    rows = logits[0]
    if temperature <= 0:
        return bytes(rows.argmax(dim=-1).tolist())
    probs = torch.softmax(rows.double() / temperature, dim=-1)
    out = []
    for j in range(rows.shape[0]):
        gen = torch.Generator().manual_seed(((seed + j) & _U64) ^ 0x5EED)
        out.append(int(torch.multinomial(probs[j : j + 1], 1, generator=gen)[0, 0]))
    return bytes(out)


@torch.no_grad()
def generate_prefixed(
    blocks: Mapping[int, BlockDenoiser],
    prompt: bytes,
    n_bytes: int,
    seed: int = 0,
    temperature: float = 0.0,
    steps_per_block: int | None = None,
    cached: bool = True,
    drafter: Drafter | None = None,
    max_draft: int = 16,
    stats: dict[str, int] | None = None,
    combine: int = COMBINE_WEIGHTED,
) -> bytes:
    """Per-byte generation with the known-prefix rule in one process, reusing each block's
    keys and values when ``cached`` (the output is the same either way).

    With a ``drafter``, each traversal carries its draft's candidates as trajectory rows and
    keeps what the chain agrees with (:func:`accept`): the output is identical to per-byte
    generation at any temperature (each row has the per-byte traversal's seed); ``stats``
    receives ``traversals`` and ``drafted``.
    """
    cfg = blocks[0].cfg
    m = steps_per_block or cfg.euler_steps_per_block
    points = block_points(NoisePartition(cfg), m)
    session = PrefixCache(seed, prefix_noise(seed, cfg.context, cfg.d_z))
    out = b""
    traversals = drafted = 0
    # the combined rule carries 16 rows at most (10 §10.9): a draft of 15 and the next byte
    cap = MAX_DRAFT if combine == COMBINE_LAST else MAX_COMBINED_DRAFT
    length = DraftLength(min(max_draft, cap))
    while len(out) < n_bytes:
        window = prefix_window(prompt + out, cfg.context)
        room = min(cfg.context - len(window), n_bytes - len(out) - 1, length.next())
        draft = drafter(prompt + out, room)[:room] if drafter is not None and room > 0 else b""
        if not cached:
            session = PrefixCache(seed, session.noise)
        text_bytes = window + draft
        session.reuse(text_bytes)
        text = torch.tensor(list(text_bytes), dtype=torch.long)[None]
        z = start_row(points[0][0][0], cfg.d_z, seed + len(out), len(draft) + 1)
        logits = torch.empty(0)
        mix = Combination(combine)
        for b in range(cfg.n_blocks):
            pts, nxt = points[b]
            cache = session.blocks.setdefault(b, BlockCache())
            z, logits = prefixed_hop(blocks[b], text, z, pts, nxt, session.noise[None], cache)
            mix.add(logits, blocks[b].quality)
        logits = mix.output(logits, cfg.n_blocks)
        session.text = text_bytes
        got = accept(draft, pick_rows(logits, temperature, seed + len(out)))
        out += got
        traversals += 1
        drafted += len(draft)
        length.update(len(draft), len(got) - 1)
    if stats is not None:
        stats.update(traversals=traversals, drafted=drafted)
    return out[:n_bytes]
