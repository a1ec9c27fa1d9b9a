"""The OmniGen2 DiT configuration (`transformer/config.json`) and the presets used by tests and benchmarks.

The field names are those of the official `config.json`, so a folder written by the reference loads here and a
folder written here loads in the reference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CLASS_NAME = "OmniGen2Transformer2DModel"


@dataclass
class DiTConfig:
    """Architecture hyper-parameters of the OmniGen2 diffusion transformer."""

    patch_size: int = 2
    in_channels: int = 16
    out_channels: int | None = None
    hidden_size: int = 2520
    num_layers: int = 32
    num_refiner_layers: int = 2
    num_attention_heads: int = 21
    num_kv_heads: int = 7
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    axes_dim_rope: list[int] = field(default_factory=lambda: [40, 40, 40])
    axes_lens: list[int] = field(default_factory=lambda: [10000, 10000, 10000])
    text_feat_dim: int = 2048
    timestep_scale: float = 1000.0

    def __post_init__(self) -> None:
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by heads {self.num_attention_heads}"
            )
        if sum(self.axes_dim_rope) != head_dim:
            raise ValueError(f"axes_dim_rope {self.axes_dim_rope} must sum to head_dim {head_dim}")
        if any(d % 2 for d in self.axes_dim_rope):
            raise ValueError(f"every axes_dim_rope entry must be even, got {self.axes_dim_rope}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"heads {self.num_attention_heads} must be a multiple of kv heads {self.num_kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def out_dim(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def temb_dim(self) -> int:
        """Width of the timestep embedding (the reference caps it at 1024)."""
        return min(self.hidden_size, 1024)

    @property
    def ffn_dim(self) -> int:
        """SwiGLU inner width: 4·D (times the optional multiplier) rounded up to `multiple_of`."""
        inner = 4 * self.hidden_size
        if self.ffn_dim_multiplier is not None:
            inner = int(self.ffn_dim_multiplier * inner)
        return self.multiple_of * ((inner + self.multiple_of - 1) // self.multiple_of)

    def to_json(self) -> dict:
        """The official `config.json` dict (diffusers style)."""
        return {"_class_name": CLASS_NAME, "_diffusers_version": "0.33.1", **asdict(self)}

    @classmethod
    def from_json(cls, data: dict, source: str = "config") -> DiTConfig:
        """Build from an official `config.json` dict; unknown non-underscore keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"{source}: unknown OmniGen2 transformer config keys {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_file(cls, path: str | Path) -> DiTConfig:
        path = Path(path)
        return cls.from_json(json.loads(path.read_text()), source=str(path))


PRESETS: dict[str, dict] = {
    # spec §8.1: the parity fixture's shape (239,904 parameters)
    "tiny": dict(
        hidden_size=48,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=[8, 8, 8],
        axes_lens=[1024, 512, 512],
        text_feat_dim=32,
    ),
    # spec §6.1: the released 4B model
    "production": {},
    # spec §8.2: production widths, 8 joint layers (1,454.6M parameters)
    "bench-mid": dict(num_layers=8),
}


def preset(name: str) -> DiTConfig:
    """A named DiT configuration (`tiny`, `production`, `bench-mid`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown OmniGen2 preset {name!r}: choose one of {', '.join(PRESETS)}")
    return DiTConfig(**PRESETS[name])
