"""The OmniGen2 pair as one nn.Module (DiT + Qwen2.5-VL + frozen FLUX VAE), built from the official folder.

`transformer` and `mllm` are trained (SGT trains both, full-parameter); the VAE is frozen and only encodes
targets / decodes samples. The tokenizer and image processor ride along as plain attributes for inference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import folder as fl
from .config import DiTConfig, preset
from .mllm import load_mllm, overlay_text_encoder, tiny_qwen_config
from .scheduler import SCHEDULER_CONFIG, load_scheduler_config
from .transformer import OmniGen2Transformer


class OmniGen2(nn.Module):
    """DiT + MLLM + VAE. `forward(batch)` returns the training loss sums of one micro-batch (training.py), so a
    DDP / FSDP wrapper around this module sees a normal forward; inference calls the parts (inference.py)."""

    def __init__(self, transformer, mllm, vae, tokenizer, image_processor, scheduler_config: dict) -> None:
        super().__init__()
        self.transformer = transformer
        self.mllm = mllm
        self.vae = vae.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.scheduler_config = dict(scheduler_config)
        self.compute_dtype = torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        from .training import losses

        return losses(self, batch)

    def train(self, mode: bool = True) -> OmniGen2:
        super().train(mode)
        self.vae.eval()
        return self


def tiny_vae():
    """A random FLUX-shaped AutoencoderKL (16 latent channels, x8) with 16-wide blocks, for tests."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )


def tiny_image_processor():
    """Qwen2-VL image processor with a small pixel budget (4-64 merged tokens) for tiny models."""
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size={"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28})


def load_image_processor(root: Path):
    """The Qwen2-VL image processor of `processor/` (else `mllm_processor/`, else Qwen's defaults).

    OmniGen2's scripts read only the tokenizer from `processor/`; what matters here is that images are patched
    the way Qwen2.5-VL expects (14-px patches, 2x2 merge), which only a Qwen2-VL image processor does.
    """
    from transformers import AutoImageProcessor, Qwen2VLImageProcessor

    for sub in ("processor", "mllm_processor"):
        if (root / sub / "preprocessor_config.json").is_file():
            try:
                proc = AutoImageProcessor.from_pretrained(str(root / sub))
            except (OSError, ValueError):
                continue
            if hasattr(proc, "merge_size"):
                return proc
    return Qwen2VLImageProcessor()


def _load_processor(root: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(root / "processor")), load_image_processor(root)


def load_pretrained(path: str | Path, overlay: str | Path | None = None) -> OmniGen2:
    """Load the official layout (strict keys everywhere), then lay SGT-Gen2's `transformer/` overlay over it."""
    from diffusers import AutoencoderKL

    root = fl.check_layout(path)
    transformer = fl.load_transformer(root / "transformer")
    mllm = load_mllm(root / "mllm")
    if overlay:
        dit_dir, te_dir = fl.overlay_dirs(overlay)
        if dit_dir is not None:
            transformer = fl.load_transformer(dit_dir)
        if te_dir is not None:
            overlay_text_encoder(mllm, fl.read_text_encoder(te_dir), str(te_dir))
    vae = AutoencoderKL.from_pretrained(str(root / "vae"))
    tokenizer, image_processor = _load_processor(root)
    sched = load_scheduler_config(root / "scheduler")
    return OmniGen2(transformer, mllm, vae, tokenizer, image_processor, sched)


def build_random(config: str, seed: int = 0) -> OmniGen2:
    """Random weights: `config` = 'tiny' (everything tiny, offline tokenizer) or an OmniGen2 folder (its configs)."""
    from diffusers import AutoencoderKL
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ..tiny_tokenizer import build_tiny_tokenizer

    torch.manual_seed(seed)
    if config == "tiny":
        tokenizer, image_processor = build_tiny_tokenizer(), tiny_image_processor()
        qwen_cfg, dit_cfg, vae = tiny_qwen_config(tokenizer), preset("tiny"), tiny_vae()
        sched = dict(SCHEDULER_CONFIG)
    else:
        root = fl.check_layout(config)
        tokenizer, image_processor = _load_processor(root)
        qwen_cfg = Qwen2_5_VLConfig.from_pretrained(str(root / "mllm"))
        dit_cfg = DiTConfig.from_file(root / "transformer" / "config.json")
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae")))
        sched = load_scheduler_config(root / "scheduler")
    mllm = Qwen2_5_VLForConditionalGeneration(qwen_cfg)
    transformer = OmniGen2Transformer(dit_cfg)
    if config == "tiny":
        # a fresh DiT outputs exactly 0 (zero adaLN and head): give those layers small values so tests see signal
        for name, p in transformer.named_parameters():
            if "norm1.linear" in name or "norm_out.linear" in name:
                nn.init.normal_(p, std=0.02)
    return OmniGen2(transformer, mllm, vae, tokenizer, image_processor, sched)


def save_pretrained(model: OmniGen2, dest: str | Path) -> None:
    """Write the official layout so `load_pretrained(dest)` (and the reference) read it back."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model_index.json").write_text(json.dumps(fl.MODEL_INDEX, indent=2) + "\n")
    fl.save_transformer(model.transformer, dest / "transformer")
    model.mllm.save_pretrained(str(dest / "mllm"))
    model.vae.save_pretrained(str(dest / "vae"))
    model.tokenizer.save_pretrained(str(dest / "processor"))
    model.image_processor.save_pretrained(str(dest / "processor"))
    (dest / "scheduler").mkdir(exist_ok=True)
    (dest / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(model.scheduler_config, indent=2) + "\n"
    )


def write_tiny_checkpoint(dest: str | Path, seed: int = 0) -> Path:
    """A random-init tiny OmniGen2 in the OFFICIAL layout (used by tests and recipes/omnigen2_tiny.yaml)."""
    save_pretrained(build_random("tiny", seed=seed), dest)
    return Path(dest)


def describe(model: OmniGen2) -> dict[str, Any]:
    """Parameter counts per part (for logs and the benchmark)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"transformer": count(model.transformer), "mllm": count(model.mllm), "vae": count(model.vae)}
