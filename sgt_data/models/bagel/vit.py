"""SigLIP NaViT for BAGEL: transformers' `SiglipEncoderLayer`s over packed patches with our own embeddings.

Patches arrive as one packed sequence (no padding); attention is bidirectional inside each image. The encoder
layers reach our attention through transformers' `AttentionInterface` (the mask argument carries the per-image
token counts).
"""

from __future__ import annotations

from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import varlen_images
from .config import BagelConfig

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
