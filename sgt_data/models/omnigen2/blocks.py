"""The OmniGen2 DiT building blocks, with the official parameter names.

Sequences are padded batches [B, L, D] with per-sample lengths given as Python ints (known on the host from the
latent shapes and text lengths, so no device sync is needed). Rows past a sample's length are padding: attention
never looks at them as keys and returns 0 for them as queries, like the reference's varlen flash path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope


class RMSNorm(nn.RMSNorm):
    """RMSNorm that casts its weight to the input dtype: under bf16 autocast with fp32 master weights the input is
    bf16, and a mixed-dtype call would miss torch's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, scale: float = 1.0, max_period: float = 10000.0):
    """[cos | sin] embedding of scale·t (diffusers `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`).

    The operation order (t·freq, then ·scale) follows the reference so fp32 rounding agrees at t·1000.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = scale * emb
    return torch.cat([torch.cos(emb), torch.sin(emb)], dim=-1)


class TimestepEmbedder(nn.Module):
    """256-d sinusoid -> linear_1 -> SiLU -> linear_2 (`time_caption_embed.timestep_embedder`)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeCaptionEmbed(nn.Module):
    """Timestep embedding (temb) and caption embedding (RMSNorm + Linear of the MLLM features)."""

    def __init__(self, hidden: int, text_dim: int, temb_dim: int, eps: float, timestep_scale: float) -> None:
        super().__init__()
        self.timestep_scale = timestep_scale
        self.timestep_embedder = TimestepEmbedder(256, temb_dim)
        self.caption_embedder = nn.Sequential(RMSNorm(text_dim, eps=eps), nn.Linear(text_dim, hidden))

    def forward(
        self, t: torch.Tensor, text: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        proj = timestep_sinusoid(t, 256, self.timestep_scale).to(dtype)
        return self.timestep_embedder(proj), self.caption_embedder(text)


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: list[int]) -> torch.Tensor:
    """Non-causal GQA attention per sample over its first `lens[b]` rows; q [B,L,H,d], k/v [B,L,KV,d].

    Each sample runs without a mask (so the flash kernel applies on GPU); padded query rows come back as 0.
    """
    B, L = q.shape[:2]
    if q.is_cuda and k.shape[2] != q.shape[2]:
        from .fast_attention import flash_supports_gqa

        if not flash_supports_gqa(q.device.index or 0):  # never fall back to the math kernel for GQA
            rep = q.shape[2] // k.shape[2]
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    if all(n == L for n in lens):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True
        )
        return out.transpose(1, 2)
    outs = []
    for b, n in enumerate(lens):
        if n == 0:
            outs.append(q.new_zeros(1, L, *q.shape[2:]))
            continue
        o = F.scaled_dot_product_attention(
            q[b : b + 1, :n].transpose(1, 2),
            k[b : b + 1, :n].transpose(1, 2),
            v[b : b + 1, :n].transpose(1, 2),
            enable_gqa=True,
        ).transpose(1, 2)
        outs.append(F.pad(o, (0, 0, 0, 0, 0, L - n)))
    return torch.cat(outs, dim=0)


class Attention(nn.Module):
    """Bias-free q/k/v/out projections, per-head RMSNorm on q and k, Omni-RoPE, GQA."""

    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.to_q = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.to_k = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.to_v = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.norm_q = RMSNorm(self.head_dim, eps=1e-5)
        self.norm_k = RMSNorm(self.head_dim, eps=1e-5)
        self.to_out = nn.ModuleList([nn.Linear(heads * self.head_dim, dim, bias=False)])

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], lens: list[int]
    ) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.norm_q(self.to_q(x).view(B, L, self.heads, self.head_dim))
        k = self.norm_k(self.to_k(x).view(B, L, self.kv_heads, self.head_dim))
        v = self.to_v(x).view(B, L, self.kv_heads, self.head_dim)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = padded_attention(q, k.to(q.dtype), v.to(q.dtype), lens)
        return self.to_out[0](out.flatten(2))


class FeedForward(nn.Module):
    """SwiGLU: linear_2(silu(linear_1 x) * linear_3 x), no biases."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, inner, bias=False)
        self.linear_2 = nn.Linear(inner, dim, bias=False)
        self.linear_3 = nn.Linear(dim, inner, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)) * self.linear_3(x))


class ModulatedNorm(nn.Module):
    """adaLN-zero input norm (`norm1`): RMSNorm(x)·(1 + scale_msa) and the three other modulation chunks."""

    def __init__(self, dim: int, temb_dim: int, eps: float) -> None:
        super().__init__()
        self.linear = nn.Linear(temb_dim, 4 * dim)
        self.norm = RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, temb: torch.Tensor):
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.linear(F.silu(temb)).chunk(4, dim=1)
        return self.norm(x) * (1 + scale_msa[:, None]), gate_msa, scale_mlp, gate_mlp


class Block(nn.Module):
    """One DiT block; `modulation=False` is the context refiner's un-modulated variant."""

    def __init__(
        self, dim: int, heads: int, kv_heads: int, ffn: int, eps: float, temb_dim: int, modulation: bool
    ):
        super().__init__()
        self.modulation = modulation
        self.attn = Attention(dim, heads, kv_heads)
        self.feed_forward = FeedForward(dim, ffn)
        self.norm1 = ModulatedNorm(dim, temb_dim, eps) if modulation else RMSNorm(dim, eps=eps)
        self.ffn_norm1 = RMSNorm(dim, eps=eps)
        self.norm2 = RMSNorm(dim, eps=eps)
        self.ffn_norm2 = RMSNorm(dim, eps=eps)

    def forward(
        self, x: torch.Tensor, rope, lens: list[int], temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.modulation:
            h, gate_msa, scale_mlp, gate_mlp = self.norm1(x, temb)
            x = x + gate_msa[:, None].tanh() * self.norm2(self.attn(h, rope, lens))
            ff = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp[:, None]))
            return x + gate_mlp[:, None].tanh() * self.ffn_norm2(ff)
        x = x + self.norm2(self.attn(self.norm1(x), rope, lens))
        return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))


class OutputHead(nn.Module):
    """`norm_out`: LayerNorm (no affine, eps 1e-6)·(1 + linear_1(SiLU(temb))) -> linear_2 to patch pixels."""

    def __init__(self, dim: int, temb_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(temb_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.linear_2 = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale = self.linear_1(F.silu(temb).to(x.dtype))
        return self.linear_2(self.norm(x) * (1 + scale)[:, None, :])
