"""Baselines (design note §14): a plain autoregressive byte Transformer.

(A) is this model with ``n_blocks * layers_per_block`` layers; (C), the one-block control, is the
same with ``layers_per_block`` layers. Same width, heads, MLP, context, embedding and positions
as the blocks, no noise conditioning.
"""

from __future__ import annotations

import torch
from torch import nn

from spheroid_p2p.ml.config import ModelConfig
from spheroid_p2p.ml.layers import Layer

__all__ = ["ARTransformer"]


class ARTransformer(nn.Module):
    """A causal pre-LN Transformer over bytes predicting the next byte at every position."""

    def __init__(self, cfg: ModelConfig, n_layers: int, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab, d)
        self.pos = nn.Embedding(cfg.context, d)
        self.layers = nn.ModuleList(
            Layer(d, cfg.n_heads, cfg.mlp_ratio, None, cfg.dropout) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab)
        gen = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.data = torch.randn(module.weight.shape, generator=gen) * 0.02
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def generate(self, prompt: bytes, n_bytes: int) -> bytes:
        """Greedy generation with the full forward pass each step (the reference for the
        pipelined, KV-cached baseline). The window slides over the last ``context`` bytes."""
        self.eval()
        out = bytearray(prompt)
        for _ in range(n_bytes):
            x = torch.tensor(list(out[-self.cfg.context :]), dtype=torch.long)[None]
            out.append(int(self(x)[0, -1].argmax()))
        return bytes(out[len(prompt) :])

    @torch.no_grad()
    def stage(
        self,
        first: int,
        last: int,
        tokens: torch.Tensor | None,  # (1, n) bytes, first stage only
        h: torch.Tensor | None,  # (1, n, D) from the previous stage
        pos: int,
        caches: list[tuple[torch.Tensor, torch.Tensor] | None],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor] | None]]:
        """Layers first..last-1 over new positions pos.. with KV caches (one per layer).

        The first stage embeds ``tokens``; the last (``last == len(layers)``) returns the
        next-byte logits of the last position (1, vocab) instead of hidden states.
        """
        if h is None:
            assert tokens is not None
            n = tokens.shape[1]
            h = self.embed(tokens) + self.pos(torch.arange(pos, pos + n))[None]
        new = []
        for i, layer in enumerate(self.layers[first:last]):
            assert isinstance(layer, Layer)
            h, cache = layer.forward_cached(h, caches[i])
            new.append(cache)
        if last == len(self.layers):
            return self.head(self.ln_f(h[:, -1])), new  # (1, vocab)
        return h, new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) bytes -> (B, T, vocab) next-byte logits."""
        T = x.shape[1]
        h = self.embed(x) + self.pos(torch.arange(T, device=x.device))[None]  # (B, T, D)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h))  # (B, T, vocab)
