"""The BAGEL port behind `sgt_data.models.base.ModelAdapter` (what `sgt-data train` / `infer` call).

`model.options` (recipe) knobs, all optional:
  attn_backend        `flex` (default on CUDA) or `sdpa` (exact, default on CPU)
  grad_checkpoint     {llm: bool, vit: bool}; default llm true, vit true (what fits 7B on 8 GPUs)
  tokens_per_batch    token budget of one packed micro-batch (default 16384)
  timestep_shift      training shift of t (reference 1.0)
  text_cond_dropout   prompt dropout for the generative tasks (SGT 0.1)
  vit_gen / vae_gen / vit_vqa / vit_und   [max, min, stride, max_pixels] image transforms (SGT defaults;
                      vit_und is the understanding-inference one, 980/224/14)
  latent_cache        folder for cached VAE posterior moments (the VAE is frozen; encode each target once)
  save_dtype          dtype of the saved ema.safetensors (bfloat16)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from ..base import ModelConfig
from .processor import BagelProcessor, Resize

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def image_transforms(bcfg, opts: dict) -> dict[str, Resize]:
    """The three image transforms (recipe options or SGT's), capped to what the model's position tables hold."""
    d = BagelProcessor("")
    out = {}
    und = Resize(980, 224, 14, 14 * 14 * 9 * 1024)  # reference inference ViT transform (spec §8.1)
    for name, default in (
        ("vit_gen", d.vit_gen),
        ("vae_gen", d.vae_gen),
        ("vit_vqa", d.vit_vqa),
        ("vit_und", und),
    ):
        r = Resize(*opts[name]) if opts.get(name) else default
        limit = (
            bcfg.vit_max_num_patch_per_side * bcfg.vit.patch_size
            if name.startswith("vit")
            else bcfg.max_latent_size * bcfg.image_downsample
        )
        top = min(r.max_size, limit)
        out[name] = Resize(top, min(r.min_size, top), r.stride, r.max_pixels)
    return out


class BagelAdapter:
    name = "bagel"
    fsdp_wrap = ["MoTDecoderLayer", "SiglipEncoderLayer"]

    # ------------------------------------------------------------------------------------------- building
    def checkpoint_dir(self, cfg: ModelConfig) -> Path:
        """The official-layout folder the model loads from (a tiny one is written for init=random, config=tiny)."""
        if cfg.init == "pretrained":
            if not cfg.path:
                raise ValueError("model.path is required with model.init: pretrained (a BAGEL-7B-MoT folder)")
            path = Path(cfg.path).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(
                    f"model.path {path} does not exist: download BAGEL-7B-MoT (or "
                    "Two-hot/SGT-BAGEL) there, or use model.init: random with model.config: tiny"
                )
            return path
        if cfg.init == "random":
            if cfg.config == "tiny":
                from .loading import write_tiny_checkpoint

                return write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="bagel-tiny-")))
            if cfg.config and Path(cfg.config).is_dir():
                return Path(cfg.config)
            raise ValueError(
                f"model.config {cfg.config!r}: give 'tiny' or a folder with llm_config.json, "
                "vit_config.json, ae.safetensors and a tokenizer"
            )
        raise ValueError(f"model.init {cfg.init!r}: pretrained or random")

    def build(self, cfg: ModelConfig, *, device: str = "cpu", for_training: bool = True):
        from ..vae import load_flux_vae
        from .config import BagelConfig
        from .loading import (
            build_empty,
            from_pretrained,
            init_random,
            load_special_tokens,
            load_tokenizer,
            load_weights,
        )

        folder = self.checkpoint_dir(cfg)
        opts = cfg.options or {}
        dtype = torch.float32 if for_training else DTYPES.get(cfg.dtype, torch.bfloat16)
        if cfg.init == "random" and cfg.config != "tiny":
            model = init_random(build_empty(BagelConfig.from_folder(folder)), device=device, dtype=dtype)
            model.special = load_special_tokens(folder)
            model.attach_vae(load_flux_vae(folder / "ae.safetensors", device=device))
            model.checkpoint_dir = str(folder)
        else:
            model = from_pretrained(folder, device=device, dtype=dtype)
        if cfg.overlay:
            overlay = Path(cfg.overlay)
            load_weights(
                model,
                overlay if overlay.is_file() else overlay / "ema.safetensors",
                device=device,
                dtype=dtype,
            )
        model.tokenizer = load_tokenizer(folder)
        if "timestep_shift" in opts:
            model.config.timestep_shift = float(opts["timestep_shift"])
        model.attn_backend = opts.get("attn_backend", "flex" if str(device).startswith("cuda") else "sdpa")
        gc = opts.get("grad_checkpoint", {})
        model.set_gradient_checkpointing(llm=bool(gc.get("llm", True)), vit=bool(gc.get("vit", True)))
        model.latent_cache = opts.get("latent_cache")
        model.transforms = image_transforms(model.config, opts)
        model.save_dtype = opts.get("save_dtype", "bfloat16")
        if for_training:
            model.train()
        else:
            model.eval().requires_grad_(False)
        return model

    def processor(self, cfg: ModelConfig) -> BagelProcessor:
        opts = cfg.options or {}
        folder = self.checkpoint_dir(cfg) if cfg.init == "pretrained" or cfg.config != "tiny" else None
        if folder is None:
            from ..tiny_tokenizer import save_tiny_tokenizer

            folder = Path(tempfile.mkdtemp(prefix="bagel-tok-"))
            save_tiny_tokenizer(folder)
        d = BagelProcessor(str(folder))
        tf = image_transforms(self._pack_setup(cfg)[2], opts)
        return BagelProcessor(
            str(folder),
            vit_gen=tf["vit_gen"],
            vae_gen=tf["vae_gen"],
            vit_vqa=tf["vit_vqa"],
            text_cond_dropout=float(opts.get("text_cond_dropout", d.text_cond_dropout)),
            max_tokens_per_sample=int(opts.get("max_tokens_per_sample", d.max_tokens_per_sample)),
        )

    # -------------------------------------------------------------------------------------------- training
    def micro_batches(self, samples: list[dict], cfg: ModelConfig) -> list[dict]:
        """First-fit-decreasing packing of one step's samples into micro-batches of <= tokens_per_batch."""
        from .packing import pack

        opts = cfg.options or {}
        budget = int(opts.get("tokens_per_batch", 16384))
        special, pcfg, _ = self._pack_setup(cfg)
        bins: list[list[dict]] = []
        loads: list[int] = []
        for s in sorted(samples, key=lambda s: -s["num_tokens"]):
            for i, load in enumerate(loads):
                if load + s["num_tokens"] <= budget:
                    bins[i].append(s)
                    loads[i] += s["num_tokens"]
                    break
            else:
                bins.append([s])
                loads.append(s["num_tokens"])
        return [pack(b, special, pcfg) for b in bins]

    def _pack_setup(self, cfg: ModelConfig):
        from .packing import PackConfig, SpecialTokens

        key = (cfg.path, cfg.init, cfg.config)
        cached = getattr(self, "_pack_cache", {})
        if key not in cached:
            from .config import BagelConfig, tiny_config
            from .loading import load_tokenizer

            folder = self.checkpoint_dir(cfg) if (cfg.init == "pretrained" or cfg.config != "tiny") else None
            if folder is None:
                from ..tiny_tokenizer import build_tiny_tokenizer

                tok, bcfg = build_tiny_tokenizer(), tiny_config()
            else:
                tok, bcfg = load_tokenizer(folder), BagelConfig.from_folder(folder)
                from .loading import infer_max_latent_size, weights_file

                if not (folder / "bagel_config.json").is_file():
                    bcfg.max_latent_size = infer_max_latent_size(weights_file(folder)) or bcfg.max_latent_size
            pcfg = PackConfig(
                vit_patch_size=bcfg.vit.patch_size,
                max_num_patch_per_side=bcfg.vit_max_num_patch_per_side,
                vae_image_downsample=bcfg.image_downsample,
                max_latent_size=bcfg.max_latent_size,
            )
            cached[key] = (SpecialTokens.from_tokenizer(tok), pcfg, bcfg)
            self._pack_cache = cached
        return cached[key]

    def losses(self, model, batch: dict) -> dict[str, Any]:
        core = _unwrap(model)
        if batch.get("padded_images") is not None and getattr(core, "latent_cache", None):
            batch = dict(batch)
            from .latent_cache import cached_moments

            batch["vae_mean"], batch["vae_logvar"] = cached_moments(core, batch)
        out = model(batch)
        res = {}
        if "ce" in out:
            res["ce"] = out["ce"].sum()
        if "mse" in out:
            res["mse"] = out["mse"].mean(-1).sum()
        return res

    def save_pretrained(self, model, dest: str) -> None:
        from .loading import save_pretrained

        core = _unwrap(model)
        save_pretrained(core, dest, dtype=DTYPES.get(getattr(core, "save_dtype", "bfloat16"), torch.bfloat16))

    # ------------------------------------------------------------------------------------------- inference
    def und(self, model, image, question: str, *, max_new_tokens: int = 256) -> str:
        from . import inference as inf
        from .processor import to_rgb

        core = _unwrap(model)
        ctx = inf.Context(inf.KVCache.for_model(core))
        if image is not None:
            inf.add_vit_image(core, ctx, core.transforms["vit_und"](to_rgb(image)))
        inf.add_text(core, ctx, core.tokenizer.encode(question, add_special_tokens=False))
        ids = inf.generate_text(core, ctx, max_new_tokens)
        return core.tokenizer.decode(ids, skip_special_tokens=True)

    def t2i(
        self,
        model,
        prompt: str,
        *,
        width: int = 1024,
        height: int = 1024,
        steps: int = 50,
        seed: int = 0,
        **cfg: Any,
    ):
        from . import inference as inf

        core = _unwrap(model)
        down = core.config.image_downsample
        h, w = max(1, round(height / down)), max(1, round(width / down))
        ctx = inf.Context(inf.KVCache.for_model(core))
        empty = ctx.prefix(0, 0)
        inf.add_text(core, ctx, core.tokenizer.encode(prompt, add_special_tokens=False))
        gen = torch.Generator().manual_seed(seed)
        opts = dict(
            cfg_text_scale=4.0,
            cfg_img_scale=1.0,
            cfg_interval=(0.4, 1.0),
            cfg_renorm_type="global",
            cfg_renorm_min=0.0,
            shift=3.0,
        )
        opts.update(cfg)
        tokens = inf.generate_latent(core, ctx, h, w, text_uncond=empty, steps=steps, generator=gen, **opts)
        return _to_pil(inf.decode_latent(core, tokens, h, w))

    def seg(self, model, image, prompt: str, *, steps: int = 50, seed: int = 0, **cfg: Any):
        """ViT-only conditioning as trained ([ViT(image) | prompt] -> VAE latents); output at the input's size."""
        from PIL import Image

        from . import inference as inf
        from .processor import to_rgb

        core = _unwrap(model)
        image = to_rgb(image)
        vit_tf, vae_tf = core.transforms["vit_gen"], core.transforms["vae_gen"]
        down = core.config.image_downsample
        ow, oh = vae_tf.size(*image.size)
        h, w = oh // down, ow // down
        ids = core.tokenizer.encode(prompt, add_special_tokens=False)
        ctx = inf.Context(inf.KVCache.for_model(core))
        inf.add_vit_image(core, ctx, vit_tf(image))
        text_uncond = ctx.prefix(ctx.cache.length, ctx.rope)  # image, no text: a view, not a copy
        inf.add_text(core, ctx, ids)
        opts = dict(
            cfg_text_scale=4.0,
            cfg_img_scale=1.0,
            cfg_interval=(0.0, 1.0),
            cfg_renorm_type="text_channel",
            cfg_renorm_min=0.0,
            shift=3.0,
        )
        opts.update(cfg)
        img_uncond = None
        if opts["cfg_img_scale"] > 1.0:
            img_uncond = inf.add_text(core, inf.Context(inf.KVCache.for_model(core)), ids)
        gen = torch.Generator().manual_seed(seed)
        tokens = inf.generate_latent(
            core,
            ctx,
            h,
            w,
            text_uncond=text_uncond,
            img_uncond=img_uncond,
            steps=steps,
            generator=gen,
            **opts,
        )
        out = _to_pil(inf.decode_latent(core, tokens, h, w))
        return out.resize(image.size, Image.NEAREST)


def _to_pil(img: torch.Tensor):
    from PIL import Image

    arr = (img.permute(1, 2, 0).float().cpu().numpy() * 255).round().clip(0, 255).astype("uint8")
    return Image.fromarray(arr)


ADAPTER = BagelAdapter()
