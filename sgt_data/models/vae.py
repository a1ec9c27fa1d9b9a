"""The FLUX autoencoder (16 latent channels, x8), shared by the BAGEL and OmniGen2 ports.

Loads an official BFL-format `ae.safetensors` through diffusers' `AutoencoderKL.from_single_file` with a local
config folder, so nothing touches the network. The config is taken from a `config.json` beside the weights when
there is one, otherwise derived from the tensor shapes (any FLUX-architecture AE loads, the real 84M one and
tiny test ones alike). diffusers applies neither FLUX's scale nor its shift: `encode`/`decode` here do.

The inverse key map (`diffusers_to_bfl`) lets tests and `write_tiny_checkpoint` write random AEs in the
official layout.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FLUX_SCALE = 0.3611
FLUX_SHIFT = 0.1159


def flux_config_from_state(keys_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A diffusers `AutoencoderKL` config matching a BFL-format state dict (given as name -> shape)."""
    levels = sorted({int(m.group(1)) for k in keys_shapes if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if not levels:
        raise ValueError("not a FLUX/BFL autoencoder: no encoder.down.N.* tensors")
    channels = [keys_shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in levels]
    blocks = {int(m.group(1)) for k in keys_shapes if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    z2 = keys_shapes["encoder.conv_out.weight"][0]
    n = len(levels)
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "force_upcast": True,
        "in_channels": keys_shapes["encoder.conv_in.weight"][1],
        "out_channels": keys_shapes["decoder.conv_out.weight"][0],
        "latent_channels": z2 // 2,
        "layers_per_block": len(blocks),
        "mid_block_add_attention": True,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": FLUX_SCALE,
        "shift_factor": FLUX_SHIFT,
        "use_quant_conv": "quant_conv.weight" in keys_shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in keys_shapes,
        "latents_mean": None,
        "latents_std": None,
    }


@dataclass
class FluxVAE:
    """A frozen diffusers `AutoencoderKL` plus FLUX's latent scale and shift."""

    model: Any
    scale: float = FLUX_SCALE
    shift: float = FLUX_SHIFT

    @property
    def z_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    def to(self, device=None, dtype=None) -> FluxVAE:
        # nn.Module.to directly: diffusers' override warns about fp32-pinned modules FLUX's AE does not have
        torch.nn.Module.to(self.model, device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar) of images in [-1, 1], [B, 3, H, W] -> two [B, z, H/8, W/8] (fp32)."""
        p = next(self.model.parameters())
        dist = self.model.encode(images.to(device=p.device, dtype=p.dtype)).latent_dist
        return dist.mean.float(), dist.logvar.float()

    def latents_from_moments(
        self,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        *,
        sample: bool = True,
        eps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """scale * (z - shift) with z the posterior sample (BAGEL trains on samples) or its mean."""
        z = mean
        if sample:
            if eps is None:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        return self.scale * (z - self.shift)

    def encode(self, images: torch.Tensor, *, sample: bool = True, eps: torch.Tensor | None = None):
        mean, logvar = self.moments(images)
        return self.latents_from_moments(mean, logvar, sample=sample, eps=eps)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in roughly [-1, 1] (unclipped), fp32."""
        p = next(self.model.parameters())
        z = latents.to(device=p.device, dtype=p.dtype) / self.scale + self.shift
        return self.model.decode(z).sample.float()


def load_flux_vae(
    ae_path: str | Path,
    *,
    config_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> FluxVAE:
    """Load a BFL-format `ae.safetensors` offline. `config_dir` (a folder with a diffusers config.json) is
    optional: a `config.json` beside the file is used, else one is derived from the tensor shapes."""
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    ae_path = Path(ae_path)
    if not ae_path.is_file():
        raise FileNotFoundError(f"{ae_path}: no such autoencoder file (expected a FLUX ae.safetensors)")
    cfg_file = None
    if config_dir is not None:
        cfg_file = Path(config_dir) / "config.json"
    elif (ae_path.parent / "vae_config.json").is_file():
        cfg_file = ae_path.parent / "vae_config.json"
    if cfg_file is not None:
        config = json.loads(cfg_file.read_text())
    else:
        with safe_open(str(ae_path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        config = flux_config_from_state(shapes)
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # it warns about fp32-pinned modules that FLUX's AE does not have
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(config))
            model = AutoencoderKL.from_single_file(
                str(ae_path), config=tmp, torch_dtype=dtype, local_files_only=True
            )
    finally:
        dlog.set_verbosity(level)
    model.requires_grad_(False).eval()
    torch.nn.Module.to(model, device)
    return FluxVAE(
        model, float(config.get("scaling_factor", FLUX_SCALE)), float(config.get("shift_factor", FLUX_SHIFT))
    )


def diffusers_to_bfl(state: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Rename a diffusers `AutoencoderKL` state dict to the official BFL (`ae.safetensors`) names."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for name, t in state.items():
        side, rest = name.split(".", 1)
        new = None
        if m := re.match(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
            kind, i, j, tail = m.groups()
            lvl = int(i) if kind == "down" else num_levels - 1 - int(i)
            new = f"{kind}.{lvl}.block.{j}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", rest):
            new = f"down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", rest):
            new = f"up.{num_levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest):
            new = f"mid.block_{int(m.group(1)) + 1}.{m.group(2)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", rest):
            new = f"mid.attn_1.{attn[m.group(1)]}.{m.group(2)}"
            if t.ndim == 2:
                t = t[:, :, None, None]  # BFL stores the attention projections as 1x1 convs
        elif rest.startswith("conv_norm_out."):
            new = "norm_out." + rest[len("conv_norm_out.") :]
        elif rest.startswith(("conv_in.", "conv_out.")):
            new = rest
        if new is None:
            raise KeyError(f"no BFL name for diffusers key {name!r}")
        out[f"{side}.{new}"] = t.contiguous()
    return out


def write_random_flux_ae(
    dest: str | Path,
    *,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block: int = 1,
    latent_channels: int = 16,
    seed: int = 0,
) -> Path:
    """Write a random FLUX-architecture AE as BFL-named `ae.safetensors` (x8 for 4 levels) for tests."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    n = len(block_out_channels)
    torch.manual_seed(seed)
    model = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
        scaling_factor=FLUX_SCALE,
        shift_factor=FLUX_SHIFT,
    )
    dest = Path(dest)
    save_file(diffusers_to_bfl(model.state_dict(), n), str(dest))
    return dest
