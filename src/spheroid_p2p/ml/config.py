"""Model and training configuration (design note §5, §7, §15.1).

``ModelConfig`` is frozen and hashable into a config hash: every peer of a swarm must build the
same blocks, codebook and noise partition from it, so it is the "swarm configuration" of
design note §10.2 (version 0 of every block is rebuilt from it and the seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ModelConfig", "TrainConfig"]

Layout = Literal["S", "P"]


#: Fields added after the first swarms, with the default that leaves them out of the hash.
_LATER_FIELDS = {"span_mask": "full", "self_cond": False}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the shape and meaning of a BlockTrain model."""

    # -- blocks and width (design note §15.1) --
    n_blocks: int = 4
    layers_per_block: int = 2
    d_model: int = 128  # also the code dimension d_z: W_in is then a square projection
    n_heads: int = 4
    mlp_ratio: int = 4
    d_cond: int = 32  # AdaLN conditioning width (d/4 keeps adaLN from dominating)
    context: int = 128  # T: bytes of context per window
    vocab: int = 256
    dropout: float = 0.0
    #: Residual gates start at this value: 0.0 is AdaLN-Zero (DiT), 1.0 starts every layer as
    #: a plain pre-LN layer with zero modulation. Measured (Tiny Shakespeare, context 64, 300
    #: steps per block): CE_sampler 2.381 with 1.0 against 2.423 with AdaLN-Zero, whose closed
    #: gates leave a short run's layers idle at first.
    gate_offset: float = 1.0
    #: Zero-initialise W_in, the projection of the noisy code into the residual stream. At
    #: high sigma, c_in * z is unit-variance noise whose random projection (std ~0.2 per
    #: coordinate) would drown the 0.02-scale byte embeddings; from zero, a fresh block is a
    #: pure context model that learns how much to read from z.
    zero_init_w_in: bool = True
    #: Zero-initialise the byte head (a fresh block predicts exactly uniformly). Measured: it
    #: starves the layers of gradient early on (block-local CE 2.76 against 2.40 after 300
    #: steps on Tiny Shakespeare), so the head starts small and random like the baselines'.
    zero_init_head: bool = False
    #: Highest frequency of the sinusoidal sigma features (see ``NoiseEmbedder``).
    noise_max_freq: float = 1.0

    # -- sequence layout (§7.3, §12.3) --
    #: "S": one stream of T rows, clean byte + noisy code of the next byte (per-byte only).
    #: "P": [clean ; noisy] rows with a block-causal mask; serves span K >= 1.
    layout: Layout = "S"
    #: Bytes denoised jointly per traversal (1 = per byte; ``context`` = the whole window).
    span: int = 1
    #: Layout P: which slots of its span a slot sees: "full" (all) or "causal" (up to itself).
    span_mask: str = "full"
    #: Self-conditioning: a block also reads the previous denoiser call's estimate of the codes
    #: (the expected code; at a block's first call, the previous block's last), trained
    #: block-locally on its own first estimate half of the time (Chen et al. 2022).
    self_cond: bool = False

    # -- noise (§5, §6) --
    # sigma_min 5 with sigma_max 80: the best of [1, 10], [3, 80] and [5, 80] in the variant
    # table (Tiny Shakespeare, context 64, 300 steps per block: 2.774 / 2.454 / 2.423), and the
    # pilot's best too (design note §15.3).
    sigma_min: float = 5.0
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    gamma: float = 0.05  # interval overlap, in units of each interval's log-width
    sigma_data: float = 0.5
    loss_weighting: bool = True  # multiply CE by lambda(sigma) (EDM)

    # -- sampler (§11, §12.2) --
    euler_steps_per_block: int = 1

    # -- frozen target codebook (§7.2) --
    codebook_seed: int = 20260621
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")
        if self.layout not in ("S", "P"):
            raise ValueError(f"layout must be 'S' or 'P', got {self.layout!r}")
        if self.span_mask not in ("full", "causal"):
            raise ValueError(f"span_mask must be 'full' or 'causal', got {self.span_mask!r}")
        if self.layout == "S" and self.span != 1:
            raise ValueError("layout S serves span 1 only; use layout P for span > 1")
        if not 1 <= self.span <= self.context:
            raise ValueError(f"span must be in 1..context, got {self.span}")
        if self.euler_steps_per_block < 1 or self.n_blocks < 1 or self.layers_per_block < 1:
            raise ValueError("blocks, layers and Euler steps must be at least 1")

    @property
    def d_z(self) -> int:
        return self.d_model

    def to_json(self) -> str:
        """Canonical JSON. Fields added after swarms existed are left out at their default, so
        a swarm's config hash does not change when the code learns a new option."""
        data = dataclasses.asdict(self)
        for name, default in _LATER_FIELDS.items():
            if data[name] == default:
                del data[name]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON: peers compare it before exchanging any block."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule (design note §8, §15.1)."""

    batch_size: int = 32
    lr: float = 1e-3
    lr_min: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    steps: int = 1500  # per block (the schedule length of one block's optimizer)
    #: Learning-rate multiplier of a block's W_in, the projection that reads the noisy code.
    #: At sigma >= 5 a noisy true code holds at most 0.018 nats about its byte and the
    #: chain's code passes nothing from block to block (scripts/bench_code_info.py), so W_in's
    #: gradient is noise, and whatever W_in learns feeds noise into the block's residual
    #: stream. 0 keeps W_in at its zero init: each block is the best context model it can be.
    #: Measured, default model, 500 steps per block, blocks 1-3 retrained (bench_combine.py
    #: --w-in-frozen): wt2-small combined 2.2574 at 0 against 2.2811 at 0.1 (same seeds) and
    #: 2.2667 with trajectory-matched training; earlier (Tiny Shakespeare, context 64): 2.381
    #: at 1.0, 2.315 at 0.1, 2.305 at 0. Raise it only with a sigma range where the code holds
    #: something (a lower sigma_min) and trajectory-matched training.
    z_lr_scale: float = 0.0

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay from ``lr`` to ``lr_min`` at ``steps``."""
        import math

        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * progress))
