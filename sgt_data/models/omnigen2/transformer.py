"""The OmniGen2 diffusion transformer (`OmniGen2Transformer2DModel` in the official layout), written here.

Forward, per sample: [valid text | reference images | noisy image] -> velocity for the noisy image.
(a) timestep and caption embeddings; (b) context refiner on text; (c) noise refiner on the noisy-image tokens;
(d) each reference image separately: patch embed + its index embedding, ref-image refiner; (e) joint blocks with
full attention over the concatenation; (f) output head on the noisy-image rows, unpatchified to [C, H, W].
All lengths are Python ints derived from shapes, so the forward has no host-device synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import Block, OutputHead, TimeCaptionEmbed
from .config import DiTConfig
from .rope import RopeTables, sample_position_ids

MAX_REF_IMAGES = 5


def patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """[C, H, W] -> [(H/p)(W/p), p·p·C] with feature order (p1, p2, c), rows in raster order."""
    C, H, W = latent.shape
    if H % p or W % p:
        raise ValueError(f"latent size {H}x{W} is not a multiple of patch_size {p}")
    return (
        latent.reshape(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0).reshape((H // p) * (W // p), p * p * C)
    )


def unpatchify(tokens: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of `patchify` for a grid of h x w patches -> [C, h·p, w·p]."""
    C = tokens.shape[-1] // (p * p)
    return tokens.reshape(h, w, p, p, C).permute(4, 0, 2, 1, 3).reshape(C, h * p, w * p)


def pad_stack(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack [n_i, F] tensors into [B, length, F], zero-padding at the end."""
    return torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])


def pad_ids(ids: list[torch.Tensor], length: int | None = None) -> torch.Tensor:
    """Stack per-sample position ids [n_i, 3] into [B, length, 3] (zero rows as padding)."""
    length = length or max([i.shape[0] for i in ids] + [1])
    return torch.stack([F.pad(i, (0, 0, 0, length - i.shape[0])) for i in ids])


class OmniGen2Transformer(nn.Module):
    """The DiT. Parameter names equal the official checkpoint's, so `load_state_dict(strict=True)` works."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        c = self.config = config
        D, patch_dim = c.hidden_size, c.patch_size * c.patch_size * c.in_channels
        self.x_embedder = nn.Linear(patch_dim, D)
        self.ref_image_patch_embedder = nn.Linear(patch_dim, D)
        self.time_caption_embed = TimeCaptionEmbed(
            D, c.text_feat_dim, c.temb_dim, c.norm_eps, c.timestep_scale
        )

        def blocks(n: int, modulation: bool) -> nn.ModuleList:
            args = (D, c.num_attention_heads, c.num_kv_heads, c.ffn_dim, c.norm_eps, c.temb_dim, modulation)
            return nn.ModuleList(Block(*args) for _ in range(n))

        self.noise_refiner = blocks(c.num_refiner_layers, True)
        self.ref_image_refiner = blocks(c.num_refiner_layers, True)
        self.context_refiner = blocks(c.num_refiner_layers, False)
        self.layers = blocks(c.num_layers, True)
        self.norm_out = OutputHead(D, c.temb_dim, c.patch_size * c.patch_size * c.out_dim)
        self.image_index_embedding = nn.Parameter(torch.zeros(MAX_REF_IMAGES, D))
        self.rope = RopeTables(c.axes_dim_rope, c.axes_lens)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: Xavier linears, zero biases, zero adaLN and output head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in [*self.noise_refiner, *self.ref_image_refiner, *self.layers]:
            nn.init.zeros_(blk.norm1.linear.weight)
            nn.init.zeros_(blk.norm1.linear.bias)
        nn.init.trunc_normal_(self.time_caption_embed.caption_embedder[1].weight, std=0.02)
        for lin in (self.norm_out.linear_1, self.norm_out.linear_2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.image_index_embedding, std=0.02)

    def _run(self, block: nn.Module, x, rope, lens, temb=None) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, rope, lens, temb, use_reentrant=False)
        return block(x, rope, lens, temb)

    def forward(
        self,
        latents: list[torch.Tensor] | torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_lens: list[int] | torch.Tensor,
        refs: list[list[torch.Tensor] | None] | None = None,
    ) -> list[torch.Tensor] | torch.Tensor:
        """Predict the velocity x1 - x0 for each noisy latent [C, H, W] (a list: sizes may differ).

        t: [B] in [0, 1] (0 = noise, 1 = data). text: [B, Lt, text_feat_dim], right-padded, valid lengths
        `text_lens` (a list of ints, or a [B, Lt] bool mask). refs: per sample a list of reference latents or None.
        """
        p = self.config.patch_size
        stacked = isinstance(latents, torch.Tensor)
        latents = list(latents)
        B, device = len(latents), latents[0].device
        if isinstance(text_lens, torch.Tensor):
            text_lens = text_lens.sum(dim=1).tolist()
        refs = refs if refs is not None else [None] * B
        ref_lists = [list(r) if r else [] for r in refs]
        if any(len(r) > MAX_REF_IMAGES for r in ref_lists):
            raise ValueError(f"at most {MAX_REF_IMAGES} reference images per sample are supported")

        temb, cap = self.time_caption_embed(t, text, latents[0].dtype)

        img_sizes = [(x.shape[1] // p, x.shape[2] // p) for x in latents]
        img_lens = [h * w for h, w in img_sizes]
        ref_sizes = [[(r.shape[1] // p, r.shape[2] // p) for r in rs] for rs in ref_lists]
        ref_lens = [[h * w for h, w in rs] for rs in ref_sizes]
        seq_lens = [t_ + sum(r) + i for t_, r, i in zip(text_lens, ref_lens, img_lens)]
        ids = [sample_position_ids(t_, r, i, 1) for t_, r, i in zip(text_lens, ref_sizes, img_sizes)]

        # (b) context refiner on text
        text_ids = [i[:n] for i, n in zip(ids, text_lens)]
        cap_rope = self.rope.cos_sin(pad_ids(text_ids, cap.shape[1]), device)
        for blk in self.context_refiner:
            cap = self._run(blk, cap, cap_rope, text_lens)

        # (c) noise refiner on the noisy image tokens
        img = self.x_embedder(pad_stack([patchify(x, p) for x in latents], max(img_lens)))
        img_ids = [i[s - n : s] for i, s, n in zip(ids, seq_lens, img_lens)]
        img_rope = self.rope.cos_sin(pad_ids(img_ids), device)
        for blk in self.noise_refiner:
            img = self._run(blk, img, img_rope, img_lens, temb)

        # (d) each reference image on its own
        flat_refs = [r for rs in ref_lists for r in rs]
        ref_out: list[list[torch.Tensor]] = [[] for _ in range(B)]
        if flat_refs:
            owner = [b for b, rs in enumerate(ref_lists) for _ in rs]
            index = [j for rs in ref_lists for j in range(len(rs))]
            lens = [n for rl in ref_lens for n in rl]
            ref = self.ref_image_patch_embedder(pad_stack([patchify(r, p) for r in flat_refs], max(lens)))
            ref = ref + self.image_index_embedding[index][:, None, :].to(ref.dtype)
            starts = [text_lens[b] + sum(ref_lens[b][:j]) for b, j in zip(owner, index)]
            ref_ids = [ids[b][s : s + n] for b, s, n in zip(owner, starts, lens)]
            ref_rope = self.rope.cos_sin(pad_ids(ref_ids), device)
            ref_temb = temb[owner]
            for blk in self.ref_image_refiner:
                ref = self._run(blk, ref, ref_rope, lens, ref_temb)
            for k, (b, n) in enumerate(zip(owner, lens)):
                ref_out[b].append(ref[k, :n])

        # (e) joint blocks over [text | refs | image]
        rows = [torch.cat([cap[b, : text_lens[b]], *ref_out[b], img[b, : img_lens[b]]]) for b in range(B)]
        h = pad_stack(rows, max(seq_lens))
        joint_rope = self.rope.cos_sin(pad_ids(ids), device)
        for blk in self.layers:
            h = self._run(blk, h, joint_rope, seq_lens, temb)

        # (f) output head and unpatchify
        out = self.norm_out(h, temb)
        vel = [
            unpatchify(out[b, s - n : s], *img_sizes[b], p)
            for b, (s, n) in enumerate(zip(seq_lens, img_lens))
        ]
        return torch.stack(vel) if stacked else vel
