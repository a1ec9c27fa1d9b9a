"""OmniGen2 inference: understanding (greedy Qwen chat), text-to-image / edit with CFG, and SGT-style seg.

- t2i / edit follow the reference pipeline: the prompt goes through Qwen as text only (image-generation system
  prompt), input images enter the DiT as VAE reference latents; CFG with a text scale and an image scale
  (3 passes when both > 1: v = v_u + s_i·(v_r − v_u) + s_t·(v_c − v_r)).
- seg uses the *training* conditioning (the reference has none): the input image goes through Qwen with the
  SGT prompt, all hidden states (image tokens included) condition the DiT, no reference latents.
"""

from __future__ import annotations

import torch

from .mllm import IMAGE_BLOCK, SYSTEM_CHAT, chat_turn, expand_image_pads, gen_prompt, special_id, t2i_prompt
from .processor import output_size, to_tensor
from .scheduler import euler_step, inference_timesteps
from .training import autocast, encode_targets


def _encode_texts(model, texts: list[str], images: list | None = None):
    """Qwen last hidden states for a batch of prompts -> (features [B, L, H], lengths).

    `images`, when given, holds one image per prompt (each prompt has one image placeholder).
    """
    tok = model.tokenizer
    vision: dict = {}
    if images:
        enc = model.image_processor(images=images, return_tensors="pt")
        merge = int(getattr(model.image_processor, "merge_size", 2))
        counts = (enc["image_grid_thw"].prod(dim=1) // (merge * merge)).tolist()
        texts = [expand_image_pads(t, [n]) for t, n in zip(texts, counts)]
        vision = {"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
    ids = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    pad = special_id(tok, "<|endoftext|>")
    length = max(len(i) for i in ids)
    batch = {
        "input_ids": torch.stack([torch.nn.functional.pad(i, (0, length - len(i)), value=pad) for i in ids]),
        "attention_mask": torch.stack([(torch.arange(length) < len(i)).long() for i in ids]),
        **vision,
    }
    from .training import mllm_hidden

    return mllm_hidden(model, batch, model.device), [len(i) for i in ids]


def _decode(model, z: torch.Tensor, size: tuple[int, int] | None = None):
    """Latent [C, h, w] -> PIL RGB (optionally resized to `size` = (W, H))."""
    from PIL import Image

    cfg = model.vae.config
    x = model.vae.decode((z[None].float() / cfg.scaling_factor) + (cfg.shift_factor or 0.0)).sample[0]
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(arr)
    return image.resize(size, Image.NEAREST) if size and image.size != size else image


def _sample(model, conds: list, refs: list, shape, steps: int, seed: int, scales, cfg_range) -> torch.Tensor:
    """Euler flow sampling. conds: [(features, len)] for cond / (ref-cond) / uncond passes, batched per step."""
    device = model.device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device)
    grid = inference_timesteps(
        steps, shape[1] * shape[2], model.scheduler_config.get("dynamic_time_shift", True)
    )
    feats = [c[0] for c in conds]
    width = max(f.shape[1] for f in feats)
    text = torch.cat([torch.nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f in feats])
    lens = [c[1] for c in conds]
    s_t, s_i = scales
    for i in range(steps):
        t, t_next = grid[i].item(), grid[i + 1].item()
        use_cfg = len(conds) > 1 and cfg_range[0] <= i / steps <= cfg_range[1]
        n = len(conds) if use_cfg else 1
        tt = torch.full((n,), t, device=device)
        v = model.transformer([x] * n, tt, text[:n], lens[:n], refs[:n])
        if n == 1:
            out = v[0]
        elif n == 2:
            out = v[1] + s_t * (v[0] - v[1])
        else:
            out = v[2] + s_i * (v[1] - v[2]) + s_t * (v[0] - v[1])
        x = euler_step(x, out.float(), t, t_next)
    return x


T2I_KEYS = {
    "images",
    "text_guidance_scale",
    "image_guidance_scale",
    "negative_prompt",
    "cfg_range",
    "max_pixels",
    "align_res",
}


def _fit(image, max_pixels: int):
    """An input image resized (LANCZOS: a photo, not a label map) to <= max_pixels with sides a multiple of 16."""
    from PIL import Image

    size = output_size(*image.size, max_pixels)
    return image if image.size == size else image.resize(size, Image.LANCZOS)


SEG_KEYS = {"text_guidance_scale", "max_pixels"}


def _check_keys(cfg: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"OmniGen2 {what}: unknown option(s) {unknown}; known: {sorted(allowed)}")


@torch.no_grad()
def t2i(model, prompt: str, *, width: int, height: int, steps: int, seed: int, **cfg):
    """Text (+ optional `images` for edit) -> PIL image, as the reference OmniGen2 pipeline samples it."""
    _check_keys(cfg, T2I_KEYS, "t2i")
    images = cfg.get("images") or []
    s_t, s_i = float(cfg.get("text_guidance_scale", 4.0)), float(cfg.get("image_guidance_scale", 1.0))
    negative = cfg.get("negative_prompt", "")
    max_pixels = int(cfg.get("max_pixels", 1024 * 1024))
    images = [_fit(im.convert("RGB"), max_pixels) for im in images]
    if len(images) == 1 and cfg.get("align_res", True):  # upstream: one input image fixes the output size
        width, height = images[0].size
    w, h = output_size(width, height, max_pixels)
    with autocast(model):
        refs_lat = encode_targets(model.vae, [to_tensor(im) for im in images], model.device)
        feats, lens = _encode_texts(model, [t2i_prompt(prompt), t2i_prompt(negative)])
        cond, neg = (feats[:1], lens[0]), (feats[1:], lens[1])
        ref = refs_lat or None
        if images and s_i > 1 and s_t > 1:
            conds, refs = [cond, neg, neg], [ref, ref, None]
        elif s_t > 1:
            conds, refs = [cond, neg], [ref, None]
        else:
            conds, refs = [cond], [ref]
        z = _sample(
            model, conds, refs, (16, h // 8, w // 8), steps, seed, (s_t, s_i), cfg.get("cfg_range", (0, 1))
        )
        return _decode(model, z)


@torch.no_grad()
def seg(model, image, prompt: str, *, steps: int, seed: int, **cfg):
    """Image -> colour segmentation map at the input's size, with SGT's training conditioning."""
    _check_keys(cfg, SEG_KEYS, "seg")
    image = image.convert("RGB")
    w, h = output_size(*image.size, int(cfg.get("max_pixels", 1024 * 1024)))
    s_t = float(cfg.get("text_guidance_scale", 1.0))
    with autocast(model):
        texts = [gen_prompt(prompt, True)] + ([gen_prompt("", True)] if s_t > 1 else [])
        feats, lens = _encode_texts(model, texts, [image] * len(texts))
        conds = [(feats[i : i + 1], lens[i]) for i in range(len(texts))]
        z = _sample(model, conds, [None] * len(conds), (16, h // 8, w // 8), steps, seed, (s_t, 1.0), (0, 1))
        return _decode(model, z, size=image.size)


@torch.no_grad()
def und(model, image, question: str, *, max_new_tokens: int = 256) -> str:
    """Greedy answer with the standard Qwen chat template and a KV cache (transformers `generate`)."""
    tok = model.tokenizer
    user = (IMAGE_BLOCK if image is not None else "") + question
    text = chat_turn("system", SYSTEM_CHAT) + chat_turn("user", user) + "<|im_start|>assistant\n"
    kwargs: dict = {}
    if image is not None:
        enc = model.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        merge = int(getattr(model.image_processor, "merge_size", 2))
        text = expand_image_pads(text, [int(enc["image_grid_thw"][0].prod()) // (merge * merge)])
        kwargs = {k: enc[k].to(model.device) for k in ("pixel_values", "image_grid_thw")}
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=model.device)
    eos = special_id(tok, "<|im_end|>")
    with autocast(model):
        out = model.mllm.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=special_id(tok, "<|endoftext|>"),
            **kwargs,
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
