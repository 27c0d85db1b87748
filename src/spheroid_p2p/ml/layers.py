"""Transformer layers with optional AdaLN-Zero conditioning (DiT, Peebles & Xie 2023).

A :class:`Layer` is ``forward(h, cond, row_mask, attn_mask) -> h`` with ``h: (B, S, D)``. When
``cond`` is given, rows selected by ``row_mask`` are modulated by shift/scale/gate chunks
computed from it (zero-initialised, so a fresh layer leaves those rows unchanged); other rows
run as a plain pre-LN layer (gate 1). With ``cond=None`` the layer is a plain pre-LN
Transformer layer, as in the autoregressive baselines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Layer", "NoiseEmbedder", "ada_layer_norm", "gated_linear", "modulate"]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, with shift/scale broadcast over the sequence."""
    return x * (1 + scale) + shift


class _AdaLayerNorm(torch.autograd.Function):
    """modulate(layer_norm(h), shift, scale), saving only ``h`` for the backward pass.

    Autograd on the unfused expression keeps both the normalised and the modulated tensor
    alive; the modulated one is kept anyway by the next linear layer, so the normalised copy
    is pure overhead (one (B, S, D) tensor per AdaLN). The backward recomputes the cheap
    normalisation instead, exactly as a fused kernel would.
    """

    @staticmethod
    def forward(ctx, h, shift, scale):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(h, shift, scale)
        return modulate(F.layer_norm(h, h.shape[-1:]), shift, scale)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        h, shift, scale = ctx.saved_tensors
        with torch.enable_grad():
            h_ = h.detach().requires_grad_(ctx.needs_input_grad[0])
            shift_ = shift.detach().requires_grad_(ctx.needs_input_grad[1])
            scale_ = scale.detach().requires_grad_(ctx.needs_input_grad[2])
            out = modulate(F.layer_norm(h_, h_.shape[-1:]), shift_, scale_)
            inputs = [t for t in (h_, shift_, scale_) if t.requires_grad]
            grads = iter(torch.autograd.grad(out, inputs, grad))
        return tuple(next(grads) if t.requires_grad else None for t in (h_, shift_, scale_))


class _GatedLinear(torch.autograd.Function):
    """gate * (x @ W^T + b), saving only x (which a plain linear saves anyway).

    AdaLN-Zero's residual gate would otherwise keep the linear's output alive for the gate's
    gradient; the backward recomputes that output from x instead (one extra matmul).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, gate):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x, weight, bias, gate)
        return F.linear(x, weight, bias) * gate

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        x, weight, bias, gate = ctx.saved_tensors
        grad_out = grad * gate  # (B, S, Dout)
        grad_gate = None
        if ctx.needs_input_grad[3]:
            grad_gate = (grad * F.linear(x, weight, bias)).sum_to_size(gate.shape)
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        flat_g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = flat_g.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = flat_g.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, grad_gate


def gated_linear(x: torch.Tensor, linear: nn.Linear, gate: torch.Tensor) -> torch.Tensor:
    """``gate * linear(x)`` with the memory of a plain linear layer."""
    if torch.is_grad_enabled():
        return _GatedLinear.apply(x, linear.weight, linear.bias, gate)  # type: ignore[no-any-return]
    return linear(x) * gate


def ada_layer_norm(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive LayerNorm without affine weights: LN(h) * (1 + scale) + shift."""
    if torch.is_grad_enabled() and (h.requires_grad or shift.requires_grad or scale.requires_grad):
        return _AdaLayerNorm.apply(h, shift, scale)  # type: ignore[no-any-return]
    return modulate(F.layer_norm(h, h.shape[-1:]), shift, scale)


class NoiseEmbedder(nn.Module):
    """c_noise(sigma) -> sinusoidal features -> MLP -> conditioning vector. (B,) -> (B, C)."""

    def __init__(self, d_cond: int, n_freq: int = 64, max_freq: float = 1.0) -> None:
        super().__init__()
        self.n_freq = n_freq
        #: Highest angular frequency per unit of c_noise. 1.0 keeps the features smooth over
        #: c_noise in [0.27, 1.1] (sigma 3..80), so the sigmas a block rarely trains on (the
        #: top of block 0's interval, where the sampler starts) get a sensible embedding;
        #: a large value (the DiT-style x100) makes them arbitrary.
        self.max_freq = max_freq
        self.mlp = nn.Sequential(
            nn.Linear(2 * n_freq, d_cond), nn.SiLU(), nn.Linear(d_cond, d_cond)
        )

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.n_freq
        freqs = self.max_freq * torch.exp(
            -math.log(1000.0)
            * torch.arange(half, device=c_noise.device, dtype=torch.float32)
            / half
        )
        args = c_noise.float()[:, None] * freqs[None, :]  # (B, half)
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))  # (B, C)


class Layer(nn.Module):
    """Pre-LN attention + MLP, with AdaLN-Zero modulation on selected rows."""

    def __init__(
        self,
        d: int,
        n_heads: int,
        mlp_ratio: int,
        d_cond: int | None,
        dropout: float = 0.0,
        gate_offset: float = 0.0,
    ) -> None:
        super().__init__()
        #: Residual gate = gate_offset + ada(cond). 0 is AdaLN-Zero (a fresh layer is the
        #: identity); 1 starts the layer as a plain pre-LN layer, with zero modulation.
        self.gate_offset = gate_offset
        self.n_heads = n_heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(d, elementwise_affine=d_cond is None)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d, elementwise_affine=d_cond is None)
        self.fc1 = nn.Linear(d, mlp_ratio * d)
        self.fc2 = nn.Linear(mlp_ratio * d, d)
        self.ada: nn.Linear | None = None
        if d_cond is not None:
            self.ada = nn.Linear(d_cond, 6 * d)
            nn.init.zeros_(self.ada.weight)  # AdaLN-Zero: modulated rows start as identity
            nn.init.zeros_(self.ada.bias)

    def _attn_core(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention before the output projection. (B, S, D) -> (B, S, D)."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # (B, S, D) each
        q = q.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, S, Dh)
        k = k.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)
        v = v.view(B, S, self.n_heads, D // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, S, Dh)
        return y.transpose(1, 2).reshape(B, S, D)  # (B, S, D)

    @torch.no_grad()
    def forward_cached(
        self,
        h: torch.Tensor,  # (B, n, D): the new positions only
        cache: tuple[torch.Tensor, torch.Tensor] | None,  # keys, values (B, H, p, Dh)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Plain causal layer over new positions, reusing cached keys and values (inference
        of the autoregressive baseline). Returns the new hidden states and the grown cache."""
        B, n, D = h.shape
        x = self.ln1(h)
        q, k, v = self.qkv(x).split(D, dim=-1)
        q = q.view(B, n, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, n, Dh)
        k = k.view(B, n, self.n_heads, D // self.n_heads).transpose(1, 2)
        v = v.view(B, n, self.n_heads, D // self.n_heads).transpose(1, 2)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)  # (B, H, p + n, Dh)
            v = torch.cat([cache[1], v], dim=2)
        past = k.shape[2] - n
        mask = torch.ones(n, past + n, dtype=torch.bool).tril(diagonal=past)  # (n, p + n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, n, Dh)
        h = h + self.proj(y.transpose(1, 2).reshape(B, n, D))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return h, (k, v)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The AdaLN-Zero terms for ``cond`` (B, C), each (B, 1, D), in the form
        :meth:`forward_rows` takes: shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2 (gates
        offset)."""
        assert self.ada is not None
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[:, None, :].chunk(6, dim=-1)
        off = self.gate_offset
        return shift1, 1 + scale1, gate1 + off, shift2, 1 + scale2, gate2 + off

    @torch.no_grad()
    def forward_rows(
        self,
        h: torch.Tensor,  # (B, n, D): the new rows only
        mod: tuple[torch.Tensor, ...],  # modulation(cond): every row is conditioned
        cache: tuple[torch.Tensor, torch.Tensor] | None,  # key, value buffers (B, H, cap, Dh)
        past: int,  # rows of the buffers in use before these
        attn_mask: torch.Tensor,  # (n, past + n) bool, True = may attend
    ) -> torch.Tensor:
        """The modulated layer over new rows that attend to the ``past`` cached rows' keys and
        values as ``attn_mask`` says. The new rows' keys and values are written into the
        buffers after them (the caller says which stay valid); without buffers the rows attend
        to each other only."""
        B, n, D = h.shape
        heads = self.n_heads
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        x = torch.addcmul(shift1, F.layer_norm(h, (D,)), scale1)
        qkv = self.qkv(x).view(B, n, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, n, Dh)
        if cache is not None:
            keys, values = cache
            keys[:, :, past : past + n] = k
            values[:, :, past : past + n] = v
            k, v = keys[:, :, : past + n], values[:, :, : past + n]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h + self.proj(y.transpose(1, 2).reshape(B, n, D)) * gate1
        hidden = F.gelu(self.fc1(torch.addcmul(shift2, F.layer_norm(h, (D,)), scale2)))
        return h + self.fc2(hidden) * gate2

    def forward(
        self,
        h: torch.Tensor,  # (B, S, D)
        cond: torch.Tensor | None = None,  # (B, C)
        row_mask: torch.Tensor | None = None,  # (S,) bool: rows that are modulated
        attn_mask: torch.Tensor | None = None,  # (S, S) bool, True = may attend; None = causal
    ) -> torch.Tensor:
        if self.ada is None or cond is None:
            h = h + self.proj(self._attn_core(self.ln1(h), attn_mask))
            return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        mod = self.ada(cond)[:, None, :]  # (B, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)  # (B, 1, D) each
        if self.gate_offset:
            gate1, gate2 = gate1 + self.gate_offset, gate2 + self.gate_offset
        if row_mask is not None:
            m = row_mask.to(h.dtype)[None, :, None]  # (1, S, 1)
            shift1, scale1, shift2, scale2 = shift1 * m, scale1 * m, shift2 * m, scale2 * m
            gate1 = gate1 * m + (1 - m)
            gate2 = gate2 * m + (1 - m)
        attn = self._attn_core(ada_layer_norm(h, shift1, scale1), attn_mask)
        h = h + gated_linear(attn, self.proj, gate1)
        hidden = F.gelu(self.fc1(ada_layer_norm(h, shift2, scale2)))
        return h + gated_linear(hidden, self.fc2, gate2)
