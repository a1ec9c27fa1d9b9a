"""BAGEL inference: a growable KV cache, understanding (greedy/sampled decode), text-to-image and seg.

The cache is a per-layer buffer with spare capacity that grows by doubling: appending a token writes in
place (amortised O(1)), unlike the reference's NaiveCache which reallocates the whole cache every token.
Denoising queries never write to it. CFG contexts that are prefixes of the conditional one (e.g. "image, no
text") are views of the same buffers with a shorter length, not deep copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .modeling import Bagel, shift_t, unpatchify_latent


class KVCache:
    def __init__(self, num_layers: int, num_kv: int, head_dim: int, device, dtype, capacity: int = 256):
        self.k = [
            torch.empty(capacity, num_kv, head_dim, device=device, dtype=dtype) for _ in range(num_layers)
        ]
        self.v = [torch.empty_like(t) for t in self.k]
        self.length = 0

    @classmethod
    def for_model(cls, model: Bagel, capacity: int = 256) -> KVCache:
        c = model.config.llm
        w = model.language_model.model.embed_tokens.weight
        return cls(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, w.device, w.dtype, capacity)

    def extend(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, commit: bool):
        """K/V of the context followed by the new tokens; written in place when `commit`."""
        end = self.length + k_new.shape[0]
        if not commit:
            return torch.cat([self.k[layer][: self.length], k_new]), torch.cat(
                [self.v[layer][: self.length], v_new]
            )
        if end > self.k[layer].shape[0]:
            cap = max(end, 2 * self.k[layer].shape[0])
            for buf in (self.k, self.v):
                new = buf[layer].new_empty(cap, *buf[layer].shape[1:])
                new[: self.length] = buf[layer][: self.length]
                buf[layer] = new
        self.k[layer][self.length : end] = k_new
        self.v[layer][self.length : end] = v_new
        return self.k[layer][:end], self.v[layer][:end]

    def prefix(self, length: int) -> KVCache:
        """A read-only view of the first `length` tokens (for CFG contexts); do not commit to it."""
        view = object.__new__(KVCache)
        view.k, view.v, view.length = list(self.k), list(self.v), length
        return view


@dataclass
class Context:
    cache: KVCache
    rope: int = 0  # next RoPE id

    def prefix(self, length: int, rope: int) -> Context:
        return Context(self.cache.prefix(length), rope)


@torch.no_grad()
def run_split(
    model: Bagel,
    ctx: Context,
    x: torch.Tensor,
    nu: int,
    positions: torch.Tensor,
    *,
    causal: bool,
    commit: bool,
) -> torch.Tensor:
    """Forward one new split (und rows first) against the cache; returns final-normed hidden states."""
    lm = model.language_model.model
    cos, sin = lm.rotary_emb(positions, x.dtype)
    for i, layer in enumerate(lm.layers):
        x = layer.forward_cached(x, nu, cos, sin, ctx.cache, i, causal, commit)
    if commit:
        ctx.cache.length += x.shape[0]
    return lm.final_norm(x, nu)


def _device(model):
    return model.language_model.model.embed_tokens.weight.device


@torch.no_grad()
def add_text(model: Bagel, ctx: Context, ids: list[int]) -> Context:
    """`<|im_start|> ids <|im_end|>`, causal, consecutive RoPE ids."""
    sp = model.special
    toks = torch.tensor([sp["bos"], *ids, sp["eos"]], device=_device(model))
    pos = torch.arange(ctx.rope, ctx.rope + len(toks), device=toks.device)
    run_split(
        model, ctx, model.language_model.model.embed_tokens(toks), len(toks), pos, causal=True, commit=True
    )
    ctx.rope += len(toks)
    return ctx


@torch.no_grad()
def add_vit_image(model: Bagel, ctx: Context, image: torch.Tensor) -> Context:
    """`<|vision_start|> ViT tokens <|vision_end|>` at one RoPE id, bidirectional; image CHW in [-1, 1]."""
    from .packing import flat_position_ids, patchify

    sp, cfg, dev = model.special, model.config, _device(model)
    p = cfg.vit.patch_size
    dtype = model.vit_model.vision_model.embeddings.patch_embedding.weight.dtype
    patches = patchify(image.float(), p).to(dev, dtype)
    vpos = flat_position_ids(image.shape[1], image.shape[2], p, cfg.vit_max_num_patch_per_side).to(dev)
    vit_emb = model.embed_vit(patches, vpos, [patches.shape[0]])[0]
    marks = model.language_model.model.embed_tokens(
        torch.tensor([sp["vision_start"], sp["vision_end"]], device=dev)
    )
    # compute order is irrelevant inside a full split: [vs, ve, vit tokens] all und
    x = torch.cat([marks, vit_emb.to(marks.dtype)])
    pos = torch.full((x.shape[0],), ctx.rope, device=dev)
    run_split(model, ctx, x, x.shape[0], pos, causal=False, commit=True)
    ctx.rope += 1
    return ctx


@torch.no_grad()
def generate_text(
    model: Bagel,
    ctx: Context,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
):
    """Start from `<|im_start|>` at the next RoPE id; stop at `<|im_end|>` (not returned) or `max_new_tokens`."""
    sp, dev = model.special, _device(model)
    lm = model.language_model
    tok = torch.tensor([sp["bos"]], device=dev)
    out, logits_all = [], []
    for _ in range(max_new_tokens):
        pos = torch.tensor([ctx.rope], device=dev)
        h = run_split(model, ctx, lm.model.embed_tokens(tok), 1, pos, causal=True, commit=True)
        ctx.rope += 1
        logits = lm.lm_head(h).float()
        logits_all.append(logits[0])
        if do_sample:
            probs = torch.softmax(logits / temperature, dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator)[0]
        else:
            tok = logits.argmax(-1)
        if int(tok) == sp["eos"]:
            break
        out.append(int(tok))
    return (out, torch.stack(logits_all)) if return_logits else out


def _velocity(model: Bagel, ctx: Context, x_t, t: float, h: int, w: int):
    sp, cfg, dev = model.special, model.config, _device(model)
    n = h * w
    tt = torch.full((n,), t, device=dev)
    lpos = (
        torch.arange(h, device=dev)[:, None] * cfg.max_latent_size + torch.arange(w, device=dev)
    ).flatten()
    lat = model.embed_latents(x_t.to(model.vae2llm.weight.dtype), tt, lpos)[0]
    marks = model.language_model.model.embed_tokens(
        torch.tensor([sp["vision_start"], sp["vision_end"]], device=dev)
    )
    x = torch.cat([marks, lat.to(marks.dtype)])
    pos = torch.full((n + 2,), ctx.rope, device=dev)
    hid = run_split(model, ctx, x, 2, pos, causal=False, commit=False)
    return model.llm2vae(hid[2:]).float()


def _renorm(v_cond, v_cfg, kind: str, lo: float):
    if kind == "global":
        a, b = torch.norm(v_cond), torch.norm(v_cfg)
    else:
        a, b = torch.norm(v_cond, dim=-1, keepdim=True), torch.norm(v_cfg, dim=-1, keepdim=True)
    return v_cfg * (a / (b + 1e-8)).clamp(min=lo, max=1.0)


@torch.no_grad()
def generate_latent(
    model: Bagel,
    ctx: Context,
    h: int,
    w: int,
    *,
    text_uncond: Context | None = None,
    img_uncond: Context | None = None,
    steps: int = 50,
    shift: float = 3.0,
    cfg_text_scale: float = 4.0,
    cfg_img_scale: float = 1.0,
    cfg_interval=(0.4, 1.0),
    cfg_renorm_type: str = "global",
    cfg_renorm_min: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Euler flow sampling from t=1 (noise) to 0 on an h x w grid of latent tokens -> [h*w, 64] tokens.

    CFG: v_txt = v_u_txt + s_txt (v - v_u_txt); v = v_u_img + s_img (v_txt - v_u_img), only where
    cfg_interval[0] < t <= cfg_interval[1] (shifted t); optional renorm (global / channel / text_channel)."""
    dev = _device(model)
    x = torch.randn(h * w, model.config.latent_dim, generator=generator, device="cpu").to(dev)
    ts = shift_t(torch.linspace(1, 0, steps), shift).tolist()
    for t, t_next in zip(ts[:-1], ts[1:]):
        on = cfg_interval[0] < t <= cfg_interval[1]
        s_txt = cfg_text_scale if (on and text_uncond is not None) else 1.0
        s_img = cfg_img_scale if (on and img_uncond is not None) else 1.0
        v = _velocity(model, ctx, x, t, h, w)
        if s_txt > 1.0:
            v_ut = _velocity(model, text_uncond, x, t, h, w)
            v_txt = v_ut + s_txt * (v - v_ut)
            if cfg_renorm_type == "text_channel":
                v_txt = _renorm(v, v_txt, "channel", cfg_renorm_min)
            v_out = v_txt
            if s_img > 1.0:
                v_ui = _velocity(model, img_uncond, x, t, h, w)
                v_out = v_ui + s_img * (v_txt - v_ui)
            if cfg_renorm_type != "text_channel":
                v_out = _renorm(v, v_out, cfg_renorm_type, cfg_renorm_min)
            v = v_out
        x = x - v * (t - t_next)
    return x


@torch.no_grad()
def decode_latent(model: Bagel, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[h*w, 64] latent tokens -> image CHW in [0, 1] through the attached VAE."""
    cfg = model.config
    lat = unpatchify_latent(tokens.float(), h, w, cfg.latent_patch_size, cfg.z_channels)
    img = model.vae.to(device=tokens.device).decode(lat[None])[0]
    return (img * 0.5 + 0.5).clamp(0, 1)
