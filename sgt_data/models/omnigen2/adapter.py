"""`ADAPTER`: the OmniGen2 port behind the `ModelAdapter` contract (sgt_data/models/base.py).

Options (`model.options` in a recipe):
- `micro_batch` (2): samples per micro-batch (single task each);
- `gradient_checkpointing` (false): recompute DiT blocks and Qwen layers in backward;
- `max_output_pixels` (1048576), `max_side_length` (2048): target size limits (multiple of 16);
- `min_pixels` / `max_pixels`: Qwen image-processor budget (SGT: 256·28·28 and 1280·28·28);
- `max_text_tokens` (8192): VQA sequences are cut there (never inside an image);
- `vision_attention` (`varlen`): on CUDA, run Qwen's windowed vision attention as one varlen kernel; `stock`
  keeps transformers' per-window loop.

Inference keywords: t2i takes `text_guidance_scale` (4.0), `image_guidance_scale` (1.0), `negative_prompt` (""), `align_res` (True),
`images` (PIL list: edit / in-context references, VAE-encoded as upstream), `cfg_range` ((0, 1)), `max_pixels`;
seg takes `text_guidance_scale` (1.0: the training conditioning, no CFG) and `max_pixels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..base import ModelConfig

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _apply_image_budget(image_processor, options: dict) -> None:
    if "min_pixels" in options or "max_pixels" in options:
        size = dict(getattr(image_processor, "size", {}) or {})
        size["shortest_edge"] = int(options.get("min_pixels", size.get("shortest_edge", 256 * 28 * 28)))
        size["longest_edge"] = int(options.get("max_pixels", size.get("longest_edge", 1280 * 28 * 28)))
        image_processor.size = size
        for attr, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if hasattr(image_processor, attr):
                setattr(image_processor, attr, size[key])


class OmniGen2Adapter:
    """Builds, feeds, trains and runs the OmniGen2 pair (DiT + Qwen2.5-VL + FLUX VAE)."""

    name = "omnigen2"
    supports_edit = True  # t2i takes `images=[...]`: instruction-guided editing as upstream
    fsdp_wrap = ["Block", "Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]

    def build(self, cfg: ModelConfig, *, device: str = "cpu", for_training: bool = True) -> Any:
        from .model import build_random, load_pretrained

        if cfg.init == "pretrained":
            if not cfg.path or not Path(cfg.path).exists():
                raise FileNotFoundError(
                    f"model.path {cfg.path!r} does not exist: point it at a downloaded OmniGen2 folder "
                    "(or set model.init=random with model.config=tiny)"
                )
            model = load_pretrained(cfg.path, cfg.overlay)
        elif cfg.init == "random":
            model = build_random(cfg.config or "tiny")
        else:
            raise ValueError(f"model.init {cfg.init!r}: choose pretrained or random")
        _apply_image_budget(model.image_processor, cfg.options)
        dtype = _dtype(cfg.dtype)
        model.compute_dtype = dtype if torch.device(device).type == "cuda" else torch.float32
        if cfg.options.get("gradient_checkpointing") and for_training:
            model.transformer.gradient_checkpointing = True
            model.mllm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if torch.device(device).type == "cuda" and cfg.options.get("vision_attention", "varlen") == "varlen":
            from .fast_attention import use_varlen_vision_attention

            use_varlen_vision_attention(model.mllm)  # one varlen kernel for all vision windows (spec §11)
        model.to(device)
        model.train(for_training)
        if not for_training:
            model.requires_grad_(False)
        return model

    def processor(self, cfg: ModelConfig) -> Any:
        from .model import tiny_image_processor
        from .processor import Processor

        if cfg.init == "random" and (cfg.config or "tiny") == "tiny":
            from ..tiny_tokenizer import build_tiny_tokenizer

            tokenizer, image_processor, channels = build_tiny_tokenizer(), tiny_image_processor(), 16
        else:
            import json

            from transformers import AutoTokenizer

            from .model import load_image_processor

            root = Path(cfg.path if cfg.init == "pretrained" else cfg.config)
            if not (root / "processor").is_dir():
                raise FileNotFoundError(f"{root}/processor does not exist: not an OmniGen2 folder")
            tokenizer = AutoTokenizer.from_pretrained(str(root / "processor"))
            image_processor = load_image_processor(root)
            channels = json.loads((root / "vae" / "config.json").read_text()).get("latent_channels", 16)
        _apply_image_budget(image_processor, cfg.options)
        return Processor(tokenizer, image_processor, latent_channels=channels, options=cfg.options)

    def micro_batches(self, samples: list[dict], cfg: ModelConfig) -> list[dict]:
        from .training import micro_batches

        return micro_batches(samples, int(cfg.options.get("micro_batch", 2)))

    def losses(self, model: Any, batch: dict) -> dict[str, Any]:
        # through __call__ (OmniGen2.forward) so DDP / FSDP wrappers run their forward hooks
        return model(batch)

    def save_pretrained(self, model: Any, dest: str) -> None:
        from .model import save_pretrained

        save_pretrained(getattr(model, "module", model), dest)

    def und(self, model: Any, image: Any | None, question: str, *, max_new_tokens: int = 256) -> str:
        from .inference import und

        return und(model, image, question, max_new_tokens=max_new_tokens)

    def t2i(
        self, model: Any, prompt: str, *, width: int, height: int, steps: int, seed: int, **cfg: Any
    ) -> Any:
        from .inference import t2i

        return t2i(model, prompt, width=width, height=height, steps=steps, seed=seed, **cfg)

    def seg(self, model: Any, image: Any, prompt: str, *, steps: int, seed: int, **cfg: Any) -> Any:
        from .inference import seg

        return seg(model, image, prompt, steps=steps, seed=seed, **cfg)


ADAPTER = OmniGen2Adapter()
