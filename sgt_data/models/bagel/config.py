"""BAGEL configuration: the LLM (Qwen2 `llm_config.json`), the ViT (SigLIP `vit_config.json`) and BAGEL's own knobs.

The official folder carries only the two HF-style configs; BAGEL's trainer forces `qk_norm`, MoT layers and
untied embeddings from its own arguments (spec/bagel.md §7.1), and so do we. `max_latent_size` is read off the
`latent_pos_embed` table when a checkpoint is at hand. Our own folders (save_pretrained, tiny) add
`bagel_config.json` with the BAGEL-level fields so a round trip is exact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LLMConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def head_dim(self) -> int:
        return int(self.raw.get("head_dim") or self.hidden_size // self.num_attention_heads)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LLMConfig:
        keys = {f for f in cls.__dataclass_fields__ if f != "raw"}
        return cls(**{k: d[k] for k in keys if k in d}, raw=dict(d))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.raw) or {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
        }
        out.update({k: v for k, v in asdict(self).items() if k != "raw"})
        out["tie_word_embeddings"] = False
        return out


@dataclass
class ViTConfig:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 980
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    num_channels: int = 3
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        keys = {f for f in cls.__dataclass_fields__ if f != "raw"}
        return cls(**{k: d[k] for k in keys if k in d}, raw=dict(d))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.raw) or {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model"}
        out.update({k: v for k, v in asdict(self).items() if k != "raw"})
        return out


@dataclass
class BagelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    vit_select_layer: int = -2
    """Layers used = num_hidden_layers + 1 + vit_select_layer (26 of SigLIP-so400m's 27)."""
    latent_patch_size: int = 2
    max_latent_size: int = 64
    vit_max_num_patch_per_side: int = 70
    connector_act: str = "gelu_pytorch_tanh"
    z_channels: int = 16
    vae_downsample: int = 8
    timestep_shift: float = 1.0
    """Training-time shift of t (reference default 1.0). Inference uses its own (3.0): see inference.py."""

    @property
    def vit_layers(self) -> int:
        return self.vit.num_hidden_layers + 1 + self.vit_select_layer

    @property
    def latent_dim(self) -> int:
        return self.latent_patch_size**2 * self.z_channels

    @property
    def image_downsample(self) -> int:
        """Pixels per LLM latent token side (VAE x8 times the 2x2 latent patch = 16)."""
        return self.vae_downsample * self.latent_patch_size

    def bagel_fields(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("llm", "vit")}

    @classmethod
    def from_folder(cls, folder: str | Path, **overrides: Any) -> BagelConfig:
        folder = Path(folder)
        for name in ("llm_config.json", "vit_config.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder}: missing {name} (expected the official BAGEL-7B-MoT layout)"
                )
        llm = LLMConfig.from_dict(json.loads((folder / "llm_config.json").read_text()))
        vit = ViTConfig.from_dict(json.loads((folder / "vit_config.json").read_text()))
        extra = {}
        if (folder / "bagel_config.json").is_file():
            extra = json.loads((folder / "bagel_config.json").read_text())
        extra.setdefault("vit_max_num_patch_per_side", vit.image_size // vit.patch_size)
        extra.update(overrides)
        return cls(llm=llm, vit=vit, **extra)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        (folder / "llm_config.json").write_text(json.dumps(self.llm.to_dict(), indent=2))
        (folder / "vit_config.json").write_text(json.dumps(self.vit.to_dict(), indent=2))
        (folder / "bagel_config.json").write_text(json.dumps(self.bagel_fields(), indent=2))


def tiny_config(vocab_size: int = 512) -> BagelConfig:
    """spec/bagel.md §9.1: ~1M parameters, real structure (GQA, QK-norm, MoT, the -2 ViT layer rule)."""
    llm = LLMConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    vit = ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=224
    )
    return BagelConfig(llm=llm, vit=vit, max_latent_size=16, vit_max_num_patch_per_side=16)


def bench_config(name: str) -> BagelConfig:
    """spec/bagel.md §9.2 benchmark shapes: `qwen05b` (Config B) and `7b_2l` (Config A, 7B width x 2 layers)."""
    vit = ViTConfig()
    if name == "qwen05b":
        llm = LLMConfig(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
        )
    elif name == "7b_2l":
        llm = LLMConfig(num_hidden_layers=2)
    elif name == "7b":
        llm = LLMConfig()
    else:
        raise ValueError(f"unknown BAGEL preset {name!r}: qwen05b, 7b_2l, 7b")
    return BagelConfig(llm=llm, vit=vit)
