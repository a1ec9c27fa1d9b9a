"""The Qwen2 Mixture-of-Transformers decoder of BAGEL (official parameter names, spec/bagel.md §6.1-6.2).

Two full expert sets per layer, "und" (text, markers, ViT tokens) and "gen" (VAE latent tokens), routed by
modality, sharing one joint attention. Inputs are in compute order [und rows | gen rows] (see modeling.py), so
each expert runs on one contiguous slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import PackMeta, cached_attention, packed_attention


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]


_KERNELS = {"rms": _rms_norm, "rope": _rope}


def compile_pointwise() -> None:
    """GPU speed-up: fuse RMSNorm and RoPE (a handful of elementwise kernels each) with torch.compile."""
    _KERNELS["rms"] = torch.compile(_rms_norm, dynamic=True)
    _KERNELS["rope"] = torch.compile(_rope, dynamic=True)


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: normalise in fp32, scale by the weight after casting back."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _KERNELS["rms"](x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device=None) -> torch.Tensor:
        idx = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float()
        return 1.0 / (self.theta ** (idx / self.head_dim))

    def reset(self) -> None:
        """Recompute after meta-device construction."""
        self.inv_freq = self._inv_freq(self.inv_freq.device if self.inv_freq.device.type != "meta" else None)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        freqs = position_ids.float()[:, None] * self.inv_freq.float()[None]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [L, H, D], cos/sin [L, D] (rotate-half convention, as Qwen2)."""
    return _KERNELS["rope"](x, cos, sin)


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class MoTAttention(nn.Module):
    """Per-expert Q/K/V/O with QK-norm (before RoPE); one joint attention over all tokens."""

    def __init__(self, cfg):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        for sfx in ("", "_moe_gen"):
            setattr(self, f"q_proj{sfx}", nn.Linear(h, self.num_heads * d, bias=True))
            setattr(self, f"k_proj{sfx}", nn.Linear(h, self.num_kv * d, bias=True))
            setattr(self, f"v_proj{sfx}", nn.Linear(h, self.num_kv * d, bias=True))
            setattr(self, f"o_proj{sfx}", nn.Linear(self.num_heads * d, h, bias=False))
            setattr(self, f"q_norm{sfx}", RMSNorm(d, cfg.rms_norm_eps))
            setattr(self, f"k_norm{sfx}", RMSNorm(d, cfg.rms_norm_eps))

    def _qkv(self, x, sfx: str):
        n = x.shape[0]
        q = getattr(self, f"q_proj{sfx}")(x).view(n, self.num_heads, self.head_dim)
        k = getattr(self, f"k_proj{sfx}")(x).view(n, self.num_kv, self.head_dim)
        v = getattr(self, f"v_proj{sfx}")(x).view(n, self.num_kv, self.head_dim)
        return getattr(self, f"q_norm{sfx}")(q), getattr(self, f"k_norm{sfx}")(k), v

    def qkv(self, hu, hg, cos, sin):
        qu, ku, vu = self._qkv(hu, "")
        qg, kg, vg = self._qkv(hg, "_moe_gen")
        q, k, v = torch.cat([qu, qg]), torch.cat([ku, kg]), torch.cat([vu, vg])
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dt = _compute_dtype(v)  # fp32 norm weights promote q/k under autocast: attend in the autocast dtype
        return q.to(dt), k.to(dt), v.to(dt)

    def out(self, a, nu: int):
        a = a.reshape(a.shape[0], -1)
        return torch.cat([self.o_proj(a[:nu]), self.o_proj_moe_gen(a[nu:])])


class MoTDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = MoTAttention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.mlp_moe_gen = MLP(cfg.hidden_size, cfg.intermediate_size)
        for name in ("input_layernorm", "post_attention_layernorm"):
            setattr(self, name, RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
            setattr(self, name + "_moe_gen", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))

    def _mlp(self, x, nu):
        hu = self.mlp(self.post_attention_layernorm(x[:nu]))
        hg = self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(x[nu:]))
        return x + torch.cat([hu, hg])

    def forward(self, x, nu: int, cos, sin, meta: PackMeta, backend: str):
        """Training / full forward over a pack in compute order (und rows first)."""
        q, k, v = self.self_attn.qkv(
            self.input_layernorm(x[:nu]), self.input_layernorm_moe_gen(x[nu:]), cos, sin
        )
        x = x + self.self_attn.out(packed_attention(q, k, v, meta, backend), nu)
        return self._mlp(x, nu)

    def forward_cached(self, x, nu: int, cos, sin, cache, layer_idx: int, causal: bool, commit: bool):
        """Inference: x is a new split (und rows first) attending the cache; `commit` appends its K/V."""
        q, k, v = self.self_attn.qkv(
            self.input_layernorm(x[:nu]), self.input_layernorm_moe_gen(x[nu:]), cos, sin
        )
        k_all, v_all = cache.extend(layer_idx, k, v, commit)
        x = x + self.self_attn.out(cached_attention(q, k_all, v_all, causal), nu)
        return self._mlp(x, nu)


class Qwen2MoTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.gradient_checkpointing = False

    def forward(self, x, nu: int, position_ids, meta: PackMeta, backend: str = "sdpa"):
        """x [L, H] in compute order -> pre-final-norm hidden states [L, H]."""
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, nu, cos, sin, meta, backend, use_reentrant=False)
            else:
                x = layer(x, nu, cos, sin, meta, backend)
        return x

    def final_norm(self, x, nu: int):
        return torch.cat([self.norm(x[:nu]), self.norm_moe_gen(x[nu:])])


class Qwen2MoTForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.model = Qwen2MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
