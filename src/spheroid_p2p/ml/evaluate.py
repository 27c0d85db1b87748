"""Evaluation (design note §13, §12.4): CE_sampler, CE_first, teacher-forced CE, span CE.

All figures are next-byte cross-entropy in nats/byte over every scored position of the same
fixed windows. CE_sampler is the headline: the one-traversal Euler sampler starts from fresh
noise and never sees the true bytes it scores, so it is an honest score of the composed
model. CE_tf (teacher-forced, noising the *true* target) is a diagnostic only: at low sigma it
reads the answer off its input (target leakage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from spheroid_p2p.ml.baselines import ARTransformer
from spheroid_p2p.ml.block import BlockDenoiser, SpanPlan
from spheroid_p2p.ml.combine import (
    COMBINE_LAST,
    COMBINE_MEAN,
    COMBINE_WEIGHTED,
    Combination,
    quality_of,
)
from spheroid_p2p.ml.noise import NoisePartition
from spheroid_p2p.ml.sampler import block_hop, block_points, initial_noise, traverse

__all__ = [
    "SamplerReport",
    "ce_autoregressive",
    "ce_teacher_forced",
    "evaluate_prefixed",
    "evaluate_sampler",
    "nats_report",
]


def nats_report(ce: float) -> dict[str, float]:
    """CE in nats/byte with its perplexity and bits/byte."""
    return {"ce": ce, "ppl": math.exp(ce), "bits_per_byte": ce / math.log(2)}


@dataclass
class SamplerReport:
    """CE of the composed model by the one-traversal sampler."""

    ce_sampler: float  # mean over noise seeds
    ce_per_seed: list[float]
    ce_mix: float  # CE of the mean softmax over seeds
    ce_first: float  # first block's first call (close to its context-only prediction)
    span: int
    #: CE of the blocks' predictions combined: the mean of every block's log-probabilities
    #: (its last call's), renormalised (a product of experts; ``ml.combine``), over seeds
    ce_combined: float = 0.0
    #: CE of the quality-weighted mean (``COMBINE_WEIGHTED``, the default rule since r14;
    #: the blocks' ``quality``, equal weights where none is known)
    ce_weighted: float = 0.0
    #: CE of the last block's prediction alone (the output rule until protocol r12)
    ce_last: float = 0.0
    #: the qualities the weighted rule used (``ml.combine.quality_of`` of each block's)
    qualities: list[float] = field(default_factory=list)
    #: CE of each block's own last prediction along the sampler's trajectory
    ce_by_block: list[float] = field(default_factory=list)
    ce_by_slot: list[float] = field(default_factory=list)  # CE at slot k of each span


def _batches(windows: torch.Tensor, batch: int) -> list[torch.Tensor]:
    return [windows[i : i + batch] for i in range(0, windows.shape[0], batch)]


@torch.no_grad()
def evaluate_sampler(
    blocks: Sequence[BlockDenoiser],
    windows: torch.Tensor,  # (W, T+1)
    seeds: Sequence[int] = (0, 1, 2),
    steps_per_block: int | None = None,
    batch: int = 32,
    combine: int = COMBINE_WEIGHTED,
) -> SamplerReport:
    """Run the one-traversal sampler over fixed windows and score its output: the
    quality-weighted mean of every block's log-probabilities (``COMBINE_WEIGHTED``, the
    default rule since protocol r14), their plain mean (``COMBINE_MEAN``, r13) or the last
    block's prediction (``COMBINE_LAST``). All three are reported: ``ce_sampler`` is the
    chosen rule's, ``ce_weighted``, ``ce_combined`` and ``ce_last`` each rule's."""
    cfg = blocks[0].cfg
    for block in blocks:
        block.eval()
    points = block_points(NoisePartition(cfg), steps_per_block)
    T = windows.shape[1] - 1
    plan = SpanPlan.training(T, cfg.span, 0) if cfg.layout == "P" else None
    per_seed, first_ce = [], []
    probs_sum: list[torch.Tensor] = []
    slot_nll = torch.zeros(cfg.span)
    slot_count = torch.zeros(cfg.span)
    slot_of = torch.tensor([i - (plan.visible[i] - 1) for i in range(T)]) if plan else None
    combined_ce, weighted_ce, last_ce, block_nll = [], [], [], torch.zeros(len(blocks))
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        nll_total, first_total, count, combined_total, last_total = 0.0, 0.0, 0, 0.0, 0.0
        weighted_total = 0.0
        for bi, chunk in enumerate(_batches(windows, batch)):
            x, y = chunk[:, :-1], chunk[:, 1:]
            z0 = initial_noise((*y.shape, cfg.d_z), points[0][0][0], gen)

            carried: list[torch.Tensor | None] = [None]  # self-conditioning across blocks
            per_block: list[torch.Tensor] = []

            def hop(
                b: int, z: torch.Tensor, x: torch.Tensor = x, carried=carried, per_block=per_block
            ):  # type: ignore[no-untyped-def]
                pts, nxt = points[b]
                result = block_hop(blocks[b], x, z, pts, nxt, plan, estimate=carried[0])
                carried[0] = result.estimate
                per_block.append(result.logits)
                return result

            last, first = traverse(hop, cfg.n_blocks, z0)
            flat_y = y.reshape(-1)
            mean_mix, weighted_mix = Combination(COMBINE_MEAN), Combination(COMBINE_WEIGHTED)
            for b, block_logits in enumerate(per_block):
                flat = block_logits.reshape(-1, cfg.vocab)
                block_nll[b] += float(F.cross_entropy(flat, flat_y, reduction="sum"))
                # as a traversal carries them (ml.combine)
                mean_mix.add(block_logits, blocks[b].quality)
                weighted_mix.add(block_logits, blocks[b].quality)
            mean = mean_mix.logits(cfg.n_blocks)
            weighted = weighted_mix.logits(cfg.n_blocks)
            combined_total += float(
                F.cross_entropy(mean.reshape(-1, cfg.vocab), flat_y, reduction="sum")
            )
            weighted_total += float(
                F.cross_entropy(weighted.reshape(-1, cfg.vocab), flat_y, reduction="sum")
            )
            last_total += float(
                F.cross_entropy(last.reshape(-1, cfg.vocab), flat_y, reduction="sum")
            )
            logits = {COMBINE_MEAN: mean, COMBINE_WEIGHTED: weighted, COMBINE_LAST: last}[combine]
            nll = F.cross_entropy(logits.reshape(-1, cfg.vocab), y.reshape(-1), reduction="none")
            nll_total += float(nll.sum())
            first_total += float(
                F.cross_entropy(first.reshape(-1, cfg.vocab), y.reshape(-1), reduction="sum")
            )
            count += y.numel()
            if slot_of is not None:
                slots = slot_of.expand_as(y).reshape(-1)
                slot_nll.index_add_(0, slots, nll)
                slot_count.index_add_(0, slots, torch.ones_like(nll))
            probs = torch.softmax(logits.float(), dim=-1)
            if len(probs_sum) <= bi:
                probs_sum.append(probs)
            else:
                probs_sum[bi] += probs
        per_seed.append(nll_total / count)
        first_ce.append(first_total / count)
        combined_ce.append(combined_total / count)
        weighted_ce.append(weighted_total / count)
        last_ce.append(last_total / count)
    mix_total, mix_count = 0.0, 0
    for bi, chunk in enumerate(_batches(windows, batch)):
        y = chunk[:, 1:]
        mean_probs = probs_sum[bi] / len(seeds)
        mix_total += float(
            F.nll_loss(
                torch.log(mean_probs.clamp_min(1e-12)).reshape(-1, cfg.vocab),
                y.reshape(-1),
                reduction="sum",
            )
        )
        mix_count += y.numel()
    by_slot = (slot_nll / slot_count.clamp_min(1)).tolist() if slot_of is not None else []
    return SamplerReport(
        ce_sampler=sum(per_seed) / len(per_seed),
        ce_per_seed=per_seed,
        ce_mix=mix_total / mix_count,
        ce_first=sum(first_ce) / len(first_ce),
        span=cfg.span,
        ce_by_slot=by_slot,
        ce_combined=sum(combined_ce) / len(combined_ce),
        ce_weighted=sum(weighted_ce) / len(weighted_ce),
        qualities=[quality_of(b.quality) for b in blocks],
        ce_last=sum(last_ce) / len(last_ce),
        ce_by_block=(block_nll / (count * len(seeds))).tolist(),
    )


@torch.no_grad()
def evaluate_prefixed(
    blocks: Sequence[BlockDenoiser],
    windows: torch.Tensor,  # (W, T+1)
    seeds: Sequence[int] = (0, 1, 2),
    steps_per_block: int | None = None,
    batch: int = 32,
    combine: int = COMBINE_WEIGHTED,
) -> SamplerReport:
    """CE_sampler under the known-prefix rule (``ml.prefixed``): every position's trajectory
    row starts from noise and sees the true bytes before it as known rows (noised to each
    block's sigma with fixed noise), exactly what a per-byte traversal at that position gets.
    ``ce_sampler`` scores the output rule ``combine`` (10 §10.9); ``ce_weighted``,
    ``ce_combined`` and ``ce_last`` each rule's."""
    from spheroid_p2p.ml.prefixed import prefixed_hop

    cfg = blocks[0].cfg
    if cfg.layout != "S":
        raise ValueError("the known-prefix rule is for per-byte (layout S) models")
    for block in blocks:
        block.eval()
    points = block_points(NoisePartition(cfg), steps_per_block)
    per_seed, first_ce = [], []
    rules = (COMBINE_WEIGHTED, COMBINE_MEAN, COMBINE_LAST)
    by_rule: dict[int, list[float]] = {rule: [] for rule in rules}
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        first_total, count = 0.0, 0
        totals = dict.fromkeys(rules, 0.0)
        for chunk in _batches(windows, batch):
            x, y = chunk[:, :-1], chunk[:, 1:]
            z = initial_noise((*y.shape, cfg.d_z), points[0][0][0], gen)
            noise = torch.randn(*y.shape, cfg.d_z, generator=gen)
            logits = torch.empty(0)
            mixes = {rule: Combination(rule) for rule in rules[:2]}
            for b in range(cfg.n_blocks):
                pts, nxt = points[b]
                if b == 0:
                    _, first = prefixed_hop(blocks[0], x, z, pts[:1], None, noise)
                    first_total += float(
                        F.cross_entropy(
                            first.reshape(-1, cfg.vocab), y.reshape(-1), reduction="sum"
                        )
                    )
                z, logits = prefixed_hop(blocks[b], x, z, pts, nxt, noise)
                for mix in mixes.values():
                    mix.add(logits, blocks[b].quality)
            outputs = {rule: mix.logits(cfg.n_blocks) for rule, mix in mixes.items()}
            outputs[COMBINE_LAST] = logits
            for rule, out in outputs.items():
                totals[rule] += float(
                    F.cross_entropy(out.reshape(-1, cfg.vocab), y.reshape(-1), reduction="sum")
                )
            count += y.numel()
        for rule in rules:
            by_rule[rule].append(totals[rule] / count)
        per_seed.append(totals[combine] / count)
        first_ce.append(first_total / count)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return SamplerReport(
        ce_sampler=mean(per_seed),
        ce_per_seed=per_seed,
        ce_mix=float("nan"),
        ce_first=mean(first_ce),
        span=1,
        ce_combined=mean(by_rule[COMBINE_MEAN]),
        ce_weighted=mean(by_rule[COMBINE_WEIGHTED]),
        ce_last=mean(by_rule[COMBINE_LAST]),
        qualities=[quality_of(b.quality) for b in blocks],
    )


@torch.no_grad()
def ce_teacher_forced(
    blocks: Sequence[BlockDenoiser], windows: torch.Tensor, seed: int = 0, batch: int = 32
) -> list[float]:
    """Per-block CE when the *true* target is noised at the block's first inference sigma.

    A diagnostic of target leakage, never a headline figure.
    """
    cfg = blocks[0].cfg
    points = block_points(NoisePartition(cfg))
    T = windows.shape[1] - 1
    plan = SpanPlan.training(T, cfg.span, 0) if cfg.layout == "P" else None
    out = []
    for b, block in enumerate(blocks):
        block.eval()
        gen = torch.Generator().manual_seed(seed)
        sigma_value = points[b][0][0]
        total, count = 0.0, 0
        for chunk in _batches(windows, batch):
            x, y = chunk[:, :-1], chunk[:, 1:]
            sigma = torch.full((x.shape[0],), sigma_value)
            z = block.codebook[y] + sigma_value * torch.randn(*y.shape, cfg.d_z, generator=gen)
            logits = block(x, z, sigma, plan).logits
            total += float(
                F.cross_entropy(logits.reshape(-1, cfg.vocab), y.reshape(-1), reduction="sum")
            )
            count += y.numel()
        out.append(total / count)
    return out


@torch.no_grad()
def ce_autoregressive(model: ARTransformer, windows: torch.Tensor, batch: int = 32) -> float:
    """Teacher-forced next-byte CE of an autoregressive baseline on the same windows."""
    model.eval()
    total, count = 0.0, 0
    for chunk in _batches(windows, batch):
        x, y = chunk[:, :-1], chunk[:, 1:]
        logits = model(x)
        total += float(
            F.cross_entropy(logits.reshape(-1, model.cfg.vocab), y.reshape(-1), reduction="sum")
        )
        count += y.numel()
    return total / count
