"""The BlockTrain block denoiser (design note §7) and the frozen target codebook.

Each block is self-contained: its own byte embedding, positions, noise-level embedder, a few
Transformer layers with AdaLN-Zero, EDM preconditioning and a byte head. Nothing is shared
between blocks except the codebook, which every peer rebuilds from a seed (§7.2), so a worker
that trains one block never needs another block's parameters.

Sequence layouts (§7.3, §12):

* **S** (single stream): row i = E(x_i) + pos(i) + W_in(c_in * z_i), where z_i is the noisy
  code of the next byte y_i = x_{i+1}; plain causal mask. Serves span 1.
* **P** (clean ; noisy): rows [E(x_c) + pos(c)] for the clean bytes, then one row per noisy
  slot, W_in(c_in * z) + pos(target position) + a "noisy" type vector. Clean rows are causal
  over clean rows; a noisy slot sees the clean prefix before its span and every slot of its
  own span. Only noisy rows are modulated by sigma, so clean rows form a plain causal LM.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.layers import Layer, NoiseEmbedder, ada_layer_norm
from spheroid_p2p.ml.noise import edm_scalings

__all__ = ["BlockDenoiser", "BlockOutput", "SpanPlan", "make_codebook"]


def make_codebook(cfg: ModelConfig) -> torch.Tensor:
    """The frozen target codebook C: (vocab, d_z) Gaussian rows from a fixed seed, unit norm."""
    gen = torch.Generator().manual_seed(cfg.codebook_seed)
    codes = torch.randn(cfg.vocab, cfg.d_z, generator=gen)
    return F.normalize(codes, dim=-1)


@dataclass(frozen=True)
class SpanPlan:
    """Where each noisy slot sits in layout P: its target position, how many clean bytes it
    sees, and its span id (slots of one span see each other)."""

    target_pos: tuple[int, ...]
    visible: tuple[int, ...]
    span_id: tuple[int, ...]

    @staticmethod
    def training(context: int, span: int, phase: int) -> SpanPlan:
        """All T next-byte targets of a window, cut into spans of ``span`` with a phase.

        Slot i denoises y_i = x_{i+1}. With phase f in [0, span), span ids are (i + f) // span;
        a span starting at slot s sees clean bytes x_0..x_s (its prefix).
        """
        ids = [(i + phase) // span for i in range(context)]
        starts = {}
        for i, sid in enumerate(ids):
            starts.setdefault(sid, i)
        return SpanPlan(
            target_pos=tuple(i + 1 for i in range(context)),
            visible=tuple(starts[sid] + 1 for sid in ids),
            span_id=tuple(ids),
        )

    @staticmethod
    def generation(prefix_len: int, span: int) -> SpanPlan:
        """``span`` slots for the bytes right after a clean prefix of ``prefix_len`` bytes."""
        return SpanPlan(
            target_pos=tuple(prefix_len + k for k in range(span)),
            visible=(prefix_len,) * span,
            span_id=(0,) * span,
        )


@lru_cache(maxsize=64)
def _p_mask(n_clean: int, plan: SpanPlan, span_mask: str = "full") -> torch.Tensor:
    """(S, S) boolean mask for layout P; True = may attend. ``span_mask`` "causal": a slot
    sees only the slots of its span up to itself."""
    n_noisy = len(plan.target_pos)
    size = n_clean + n_noisy
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:n_clean, :n_clean] = torch.ones(n_clean, n_clean, dtype=torch.bool).tril()
    visible = torch.tensor(plan.visible)
    cols = torch.arange(n_clean)
    mask[n_clean:, :n_clean] = cols[None, :] < visible[:, None]
    ids = torch.tensor(plan.span_id)
    same = ids[:, None] == ids[None, :]
    if span_mask == "causal":
        same &= torch.ones(n_noisy, n_noisy, dtype=torch.bool).tril()
    mask[n_clean:, n_clean:] = same
    return mask


_SERIALS = itertools.count(1)


def _shift_scale1p(mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An AdaLN's (shift, 1 + scale), each (B, 1, D), from its linear's output (B, 2D)."""
    shift, scale = mod[:, None].chunk(2, dim=-1)
    return shift, 1 + scale


@dataclass(frozen=True)
class _Conditioning:
    """A forward pass's sigma-only terms (EDM scalings, every AdaLN modulation)."""

    version: int  # the parameters' version counters when it was made
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    layers: tuple[tuple[torch.Tensor, ...], ...]
    final: tuple[torch.Tensor, torch.Tensor]  # shift, 1 + scale
    head: tuple[torch.Tensor, torch.Tensor]


@dataclass
class BlockOutput:
    logits: torch.Tensor  # (B, N, vocab)
    denoised: torch.Tensor  # (B, N, d_z): D = c_skip * z + c_out * F


class BlockDenoiser(nn.Module):
    """One block: an EDM-preconditioned denoiser of next-byte codes for its noise interval."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        if not 0 <= index < cfg.n_blocks:
            raise ValueError(f"block index {index} outside 0..{cfg.n_blocks - 1}")
        self.cfg = cfg
        self.index = index
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab, d)
        self.pos = nn.Embedding(cfg.context + 1, d)
        self.noisy_type = nn.Parameter(torch.zeros(d))
        self.w_in = nn.Linear(cfg.d_z, d)
        #: self-conditioning: reads the previous estimate of the codes (zero at the start)
        self.w_sc = nn.Linear(cfg.d_z, d) if cfg.self_cond else None
        self.noise_embed = NoiseEmbedder(cfg.d_cond, max_freq=cfg.noise_max_freq)
        self.layers = nn.ModuleList(
            Layer(d, cfg.n_heads, cfg.mlp_ratio, cfg.d_cond, cfg.dropout, cfg.gate_offset)
            for _ in range(cfg.layers_per_block)
        )
        self.ada_f = nn.Linear(cfg.d_cond, 2 * d)
        self.w_out = nn.Linear(d, cfg.d_z)
        self.ada_head = nn.Linear(cfg.d_cond, 2 * cfg.d_z)
        self.head = nn.Linear(cfg.d_z, cfg.vocab)
        self.register_buffer("codebook", make_codebook(cfg), persistent=False)
        self._by_sigma: dict[float, _Conditioning] = {}
        self._params: list[nn.Parameter] = []
        #: unlike id(), never reused by a later block: with weights_version, names the weights
        self.serial = next(_SERIALS)
        #: the block's quality: the next-byte CE its trainer measured on its recent batches
        #: (nats/byte; ``BlockTrainer.quality``, kept in checkpoints), None when unknown; the
        #: combined rule weighs the blocks by it (``ml.combine``, 10 §10.9)
        self.quality: float | None = None
        self._init_weights(cfg.init_seed * 1009 + index)

    def _init_weights(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = torch.randn(module.weight.shape, generator=gen) * 0.02
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                module.weight.data = torch.randn(module.weight.shape, generator=gen) * 0.02
        for layer in self.layers:
            assert layer.ada is not None
            nn.init.zeros_(layer.ada.weight)
            nn.init.zeros_(layer.ada.bias)
        zeros = [self.ada_f, self.ada_head] + ([self.head] if self.cfg.zero_init_head else [])
        if self.cfg.zero_init_w_in:
            zeros.append(self.w_in)
        if self.w_sc is not None:
            zeros.append(self.w_sc)
        for zero in zeros:
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,  # (B, Tc) clean bytes, long
        z: torch.Tensor,  # (B, N, d_z) noisy codes
        sigma: torch.Tensor,  # (B,)
        plan: SpanPlan | None = None,  # layout P only
        estimate: torch.Tensor | None = None,  # (B, N, d_z) self-conditioning input
    ) -> BlockOutput:
        cfg = self.cfg
        c_skip, c_out, c_in, c_noise = (
            s[:, None, None] for s in edm_scalings(sigma, cfg.sigma_data)
        )
        cond = self.noise_embed(c_noise[:, 0, 0])  # (B, C)
        z_in = self.w_in(c_in * z)  # (B, N, D)
        if self.w_sc is not None and estimate is not None:
            z_in = z_in + self.w_sc(estimate)
        if cfg.layout == "S":
            T = x.shape[1]
            positions = torch.arange(T, device=x.device)
            h = self.embed(x) + self.pos(positions)[None] + z_in  # (B, T, D)
            row_mask, attn_mask, n_clean = None, None, 0
        else:
            if plan is None:
                raise ValueError("layout P needs a SpanPlan")
            n_clean = x.shape[1]
            clean = self.embed(x) + self.pos(torch.arange(n_clean, device=x.device))[None]
            target_pos = torch.tensor(plan.target_pos, device=x.device)
            noisy = z_in + self.pos(target_pos)[None] + self.noisy_type  # (B, N, D)
            h = torch.cat([clean, noisy], dim=1)  # (B, Tc + N, D)
            attn_mask = _p_mask(n_clean, plan, cfg.span_mask).to(x.device)
            row_mask = torch.arange(h.shape[1], device=x.device) >= n_clean  # (Tc + N,)
        for layer in self.layers:
            h = layer(h, cond, row_mask, attn_mask)
        return self._out(h[:, n_clean:], z, cond, c_skip, c_out)  # the noisy rows

    def _out(
        self,
        h: torch.Tensor,  # (B, N, D)
        z: torch.Tensor,  # (B, N, d_z)
        cond: torch.Tensor,  # (B, C)
        c_skip: torch.Tensor,
        c_out: torch.Tensor,
    ) -> BlockOutput:
        """The final AdaLN, the EDM output D = c_skip z + c_out F, and the byte head."""
        shift, scale = self.ada_f(cond)[:, None].chunk(2, dim=-1)  # (B, 1, D)
        f = self.w_out(ada_layer_norm(h, shift, scale))  # (B, N, d_z)
        denoised = c_skip * z + c_out * f  # (B, N, d_z)
        hshift, hscale = self.ada_head(cond)[:, None].chunk(2, dim=-1)
        logits = self.head(ada_layer_norm(denoised, hshift, hscale))  # (B, N, vocab)
        return BlockOutput(logits=logits, denoised=denoised)

    def weights_version(self) -> int:
        """Changes whenever a parameter is written in place (optimizer steps, installs):
        what was computed from the weights before is stale."""
        if not self._params:
            self._params = list(self.parameters())
        return sum(p._version for p in self._params)

    def _conditioning(self, sigma: float) -> _Conditioning:
        """Everything a forward pass derives from sigma alone, kept per sigma value (a
        server's traversals use the same few sigma points) until a parameter changes."""
        version = self.weights_version()
        hit = self._by_sigma.get(sigma)
        if hit is not None and hit.version == version:
            return hit
        c_skip, c_out, c_in, c_noise = (
            s[:, None, None] for s in edm_scalings(torch.tensor([sigma]), self.cfg.sigma_data)
        )
        cond = self.noise_embed(c_noise[:, 0, 0])  # (1, C)
        made = _Conditioning(
            version,
            c_skip,
            c_out,
            c_in,
            tuple(layer.modulation(cond) for layer in self.layers),
            _shift_scale1p(self.ada_f(cond)),
            _shift_scale1p(self.ada_head(cond)),
        )
        if len(self._by_sigma) >= 64:
            self._by_sigma.clear()
        self._by_sigma[sigma] = made
        return made

    @torch.no_grad()
    def forward_rows(
        self,
        x: torch.Tensor,  # (B, n) each new row's clean byte, long
        pos: torch.Tensor,  # (n,) each new row's position in the window
        z: torch.Tensor,  # (B, n, d_z) each new row's noisy code
        sigma: float,  # every row's
        attn_mask: torch.Tensor,  # (n, past + n) bool over [cached rows ; new rows]
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None,  # per layer (B, H, cap, Dh)
        past: int = 0,
        out_from: int = 0,
    ) -> BlockOutput:
        """Layout S over some rows of a window: new rows attend to the ``past`` cached rows'
        keys and values and to each other as ``attn_mask`` says (``ml.prefixed``); their own
        keys and values are written into ``cache`` after those. Returns the output of rows
        ``out_from..``."""
        if self.cfg.layout != "S":
            raise ValueError("rows with cached keys are a layout S feature")
        c = self._conditioning(float(sigma))
        h = self.embed(x) + self.pos(pos)[None] + self.w_in(c.c_in * z)  # (B, n, D)
        for i, layer in enumerate(self.layers):
            h = layer.forward_rows(
                h, c.layers[i], None if cache is None else cache[i], past, attn_mask
            )
        h, z = h[:, out_from:], z[:, out_from:]
        f = self.w_out(torch.addcmul(c.final[0], F.layer_norm(h, h.shape[-1:]), c.final[1]))
        denoised = c.c_skip * z + c.c_out * f  # (B, N, d_z)
        ln = F.layer_norm(denoised, denoised.shape[-1:])
        logits = self.head(torch.addcmul(c.head[0], ln, c.head[1]))
        return BlockOutput(logits=logits, denoised=denoised)

    def expected_code(self, logits: torch.Tensor) -> torch.Tensor:
        """D_hat = softmax(logits) @ C: the denoised estimate the sampler moves toward."""
        return torch.softmax(logits.float(), dim=-1) @ self.codebook  # (B, N, d_z)
