"""BAGEL: a Qwen2 Mixture-of-Transformers decoder, a SigLIP NaViT, and the flow-matching heads.

Parameter names follow the official `ema.safetensors` (spec/bagel.md §6.2). Two full expert sets per layer,
"und" (text, markers, ViT tokens) and "gen" (VAE latent tokens), are routed by modality and share one joint
attention. Unlike the reference, which gathers/scatters around every projection, a pack is permuted once
into compute order [und tokens | gen tokens] so each expert runs on one contiguous slice; the attention mask
is expressed on per-token metadata, so the order does not change the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import PackMeta, cached_attention, packed_attention, varlen_images
from .config import BagelConfig

# ----------------------------------------------------------------------------------------------------- LLM


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


# ----------------------------------------------------------------------------------------------------- ViT

_ATTN_NAME = "sgt_bagel_varlen"


def _vit_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: `attention_mask` is our list of per-image token counts."""
    if scaling is not None and abs(scaling - query.shape[-1] ** -0.5) > 1e-12:
        query = query * (scaling * query.shape[-1] ** 0.5)
    return varlen_images(query, key, value, attention_mask), None


class SiglipEmbeddingsNaViT(nn.Module):
    """Packed patch embedding: Linear over 14*14*3 patch values (h, w, p, q, c order) + learned positions."""

    def __init__(self, vcfg, max_patches_per_side: int):
        super().__init__()
        p = vcfg.patch_size
        self.patch_embedding = nn.Linear(p * p * vcfg.num_channels, vcfg.hidden_size)
        self.position_embedding = nn.Embedding(max_patches_per_side**2, vcfg.hidden_size)

    def forward(self, patches, position_ids):
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class SiglipVisionNaViT(nn.Module):
    def __init__(self, vcfg, num_layers: int, max_patches_per_side: int):
        super().__init__()
        from transformers import AttentionInterface
        from transformers.models.siglip.configuration_siglip import SiglipVisionConfig
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

        AttentionInterface.register(_ATTN_NAME, _vit_attention)
        hf = SiglipVisionConfig(
            hidden_size=vcfg.hidden_size,
            intermediate_size=vcfg.intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=vcfg.num_attention_heads,
            patch_size=vcfg.patch_size,
            image_size=vcfg.image_size,
            layer_norm_eps=vcfg.layer_norm_eps,
            hidden_act=vcfg.hidden_act,
            num_channels=vcfg.num_channels,
            attention_dropout=0.0,
        )
        hf._attn_implementation = _ATTN_NAME
        self.embeddings = SiglipEmbeddingsNaViT(vcfg, max_patches_per_side)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([SiglipEncoderLayer(hf) for _ in range(num_layers)])
        self.post_layernorm = nn.LayerNorm(vcfg.hidden_size, eps=vcfg.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, patches, position_ids, seqlens: list[int]):
        h = self.embeddings(patches, position_ids)[None]
        for layer in self.encoder.layers:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(layer, h, seqlens, use_reentrant=False)
            else:
                h = layer(h, seqlens)
        return self.post_layernorm(h[0])


class SiglipNaViTModel(nn.Module):
    def __init__(self, cfg: BagelConfig):
        super().__init__()
        self.vision_model = SiglipVisionNaViT(cfg.vit, cfg.vit_layers, cfg.vit_max_num_patch_per_side)

    def forward(self, patches, position_ids, seqlens):
        return self.vision_model(patches, position_ids, seqlens)


# ------------------------------------------------------------------------------------------- small modules


def _act(name: str) -> nn.Module:
    if name == "gelu_pytorch_tanh":
        return nn.GELU(approximate="tanh")
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unsupported connector activation {name!r}")


class MLPConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = _act(act)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE 2-D sincos table [grid*grid, dim]: row index = r*grid + c; first half encodes the column."""

    def one_d(d, pos):
        omega = torch.arange(d // 2, dtype=torch.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    coords = torch.arange(grid, dtype=torch.float32).double()
    col = coords[None, :].expand(grid, grid)
    row = coords[:, None].expand(grid, grid)
    return torch.cat([one_d(dim // 2, col), one_d(dim // 2, row)], dim=1).float()


class PositionEmbedding(nn.Module):
    """Fixed sincos table (a persistent buffer: in the checkpoint's key set, never trained)."""

    def __init__(self, grid: int, dim: int):
        super().__init__()
        self.grid, self.dim = grid, dim
        self.register_buffer("pos_embed", torch.zeros(grid * grid, dim))

    def reset(self, device=None) -> None:
        dev = device if device is not None else (None if self.pos_embed.is_meta else self.pos_embed.device)
        self.pos_embed = sincos_2d(self.dim, self.grid).to(device=dev)

    def forward(self, position_ids):
        return self.pos_embed[position_ids]


class TimestepEmbedder(nn.Module):
    """256-d sinusoid of t in [0, 1] (not x1000), cos half first -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# --------------------------------------------------------------------------------------------------- Bagel


def shift_t(t: torch.Tensor, s: float) -> torch.Tensor:
    return s * t / (1 + (s - 1) * t)


def patchify_latent(latent: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """[C, >=h*p, >=w*p] -> [h*w, p*p*C] in (h, w, p, q, c) order."""
    c = latent.shape[0]
    x = latent[:, : h * p, : w * p].reshape(c, h, p, w, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(h * w, p * p * c)


def unpatchify_latent(tokens: torch.Tensor, h: int, w: int, p: int, c: int) -> torch.Tensor:
    x = tokens.reshape(h, w, p, p, c)
    return torch.einsum("hwpqc->chpwq", x).reshape(c, h * p, w * p)


class Bagel(nn.Module):
    """The trainable BAGEL model (the frozen VAE is attached with `attach_vae`, outside the state dict)."""

    def __init__(self, cfg: BagelConfig):
        super().__init__()
        self.config = cfg
        h = cfg.llm.hidden_size
        self.language_model = Qwen2MoTForCausalLM(cfg.llm)
        self.vit_model = SiglipNaViTModel(cfg)
        self.connector = MLPConnector(cfg.vit.hidden_size, h, cfg.connector_act)
        self.vit_pos_embed = PositionEmbedding(cfg.vit_max_num_patch_per_side, h)
        self.time_embedder = TimestepEmbedder(h)
        self.vae2llm = nn.Linear(cfg.latent_dim, h)
        self.llm2vae = nn.Linear(h, cfg.latent_dim)
        self.latent_pos_embed = PositionEmbedding(cfg.max_latent_size, h)
        self.attn_backend = "sdpa"
        self.special: dict[str, int] = {}
        self._vae = None  # plain attribute: frozen, not a submodule, not in state_dict / parameters()

    # -- setup ---------------------------------------------------------------------------------------------
    def reset_fixed_buffers(self, device=None) -> None:
        """(Re)compute the non-learned tables: the two sincos tables and the RoPE frequencies."""
        self.vit_pos_embed.reset(device)
        self.latent_pos_embed.reset(device)
        self.language_model.model.rotary_emb.reset()
        if device is not None:
            self.language_model.model.rotary_emb.inv_freq = self.language_model.model.rotary_emb.inv_freq.to(
                device
            )

    def attach_vae(self, vae) -> None:
        self._vae = vae

    @property
    def vae(self):
        return self._vae

    def set_gradient_checkpointing(self, llm: bool = True, vit: bool = True) -> None:
        self.language_model.model.gradient_checkpointing = llm
        self.vit_model.vision_model.gradient_checkpointing = vit

    # -- embeddings ----------------------------------------------------------------------------------------
    def embed_vit(self, patches, position_ids, seqlens: list[int]):
        out = self.vit_model(patches, position_ids, seqlens)
        conn = self.connector(out)
        return conn + self.vit_pos_embed(position_ids).to(conn.dtype), out, conn

    def embed_latents(self, x_t, t, position_ids):
        temb = self.time_embedder(t)
        emb = self.vae2llm(x_t) + temb + self.latent_pos_embed(position_ids).to(temb.dtype)
        return emb, temb

    def latent_tokens(self, batch: dict) -> torch.Tensor:
        """Clean latent tokens x0 [N, 64] from `padded_latent`, or from cached moments / images via the VAE."""
        p = self.config.latent_patch_size
        latent = batch.get("padded_latent")
        if latent is None:
            vae = self._vae
            if "vae_mean" in batch:
                mean, logvar = batch["vae_mean"], batch["vae_logvar"]
            else:
                if vae is None:
                    raise RuntimeError("this batch has VAE images but no VAE is attached (attach_vae)")
                mean, logvar = vae.to(device=batch["padded_images"].device).moments(batch["padded_images"])
            scale, shift = (vae.scale, vae.shift) if vae is not None else (0.3611, 0.1159)
            z = mean
            if batch.get("vae_sample", True):
                eps = batch.get("posterior_eps")
                if eps is None:
                    eps = torch.randn(mean.shape, generator=batch.get("generator"), device=mean.device)
                z = mean + torch.exp(0.5 * logvar) * eps
            latent = scale * (z - shift)
        toks = [
            patchify_latent(lat, h, w, p)
            for lat, (h, w) in zip(latent, batch["patchified_vae_latent_shapes"])
        ]
        return torch.cat(toks)

    # -- training forward ----------------------------------------------------------------------------------
    def forward(self, batch: dict, *, return_intermediates: bool = False) -> dict:
        """One packed batch (see packing.py) -> {'ce': per-token CE, 'mse': per-element squared error [n, 64]}."""
        cfg = self.config
        lm = self.language_model
        dev = lm.model.embed_tokens.weight.device
        out: dict = {}

        text_idx = batch["packed_text_indexes"]
        und_parts_idx, und_parts = [text_idx], [lm.model.embed_tokens(batch["packed_text_ids"])]
        if batch.get("packed_vit_tokens") is not None:
            vit_emb, vit_out, conn = self.embed_vit(
                batch["packed_vit_tokens"],
                batch["packed_vit_position_ids"],
                list(map(int, batch["vit_token_seqlens"])),
            )
            und_parts_idx.append(batch["packed_vit_token_indexes"])
            und_parts.append(vit_emb.to(und_parts[0].dtype))
            if return_intermediates:
                out.update(vit_output=vit_out, connector_output=conn)

        und_idx, und_order = torch.sort(torch.cat(und_parts_idx))
        x_und = torch.cat(und_parts)[und_order]
        has_gen = batch.get("packed_vae_token_indexes") is not None
        if has_gen:
            x0 = self.latent_tokens(batch)
            noise = batch.get("noise")
            if noise is None:
                noise = torch.randn(x0.shape, generator=batch.get("generator"), device=x0.device)
            t = torch.sigmoid(batch["packed_timesteps"].to(x0.device).float())
            t = shift_t(t, float(batch.get("timestep_shift", cfg.timestep_shift)))
            x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
            lat_emb, temb = self.embed_latents(
                x_t.to(self.vae2llm.weight.dtype), t, batch["packed_latent_position_ids"]
            )
            gen_idx, gen_order = torch.sort(batch["packed_vae_token_indexes"])
            x = torch.cat([x_und, lat_emb.to(x_und.dtype)[gen_order]])
            order = torch.cat([und_idx, gen_idx])
            if return_intermediates:
                out["timestep_embeds"] = temb
        else:
            x, order = x_und, und_idx
        nu = x_und.shape[0]
        seq_len = order.shape[0]
        meta = PackMeta.from_splits(
            batch["sample_lens"], batch["split_lens"], batch["attn_modes"], order, dev
        )
        positions = batch["packed_position_ids"].to(dev)[order]
        inv = torch.empty_like(order)
        inv[order] = torch.arange(seq_len, device=order.device)
        if return_intermediates:
            out["llm_input_sequence"] = x[inv]

        hidden = lm.model(x, nu, positions, meta, self.attn_backend)
        if return_intermediates:
            out["last_hidden_state"] = lm.model.final_norm(hidden, nu)[inv]

        if batch.get("ce_loss_indexes") is not None and len(batch["ce_loss_indexes"]):
            rows = inv[batch["ce_loss_indexes"]]
            logits = lm.lm_head(lm.model.norm(hidden[rows]))  # CE rows are text, always und
            out["ce"] = F.cross_entropy(logits.float(), batch["packed_label_ids"], reduction="none")
            if return_intermediates:
                out["ce_logits"] = logits
        if has_gen and batch.get("mse_loss_indexes") is not None and len(batch["mse_loss_indexes"]):
            rows = inv[batch["mse_loss_indexes"]]
            preds = self.llm2vae(lm.model.norm_moe_gen(hidden[rows]))
            target = (noise - x0)[t > 0]
            out["mse"] = (preds.float() - target) ** 2
            if return_intermediates:
                out["mse_preds"] = preds
        return out
