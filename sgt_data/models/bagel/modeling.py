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

from .attention import PackMeta
from .config import BagelConfig
from .llm import Qwen2MoTForCausalLM, compile_pointwise  # noqa: F401 - compile_pointwise re-exported
from .vit import SiglipNaViTModel

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
