"""Pack raw BAGEL samples into one sequence, with the reference's token layout (spec/bagel.md §2.1).

A raw sample is `{"sequence_plan": [item, ...], "text_ids_list": [[ids], ...], "images": [CHW in [-1, 1]]}`
like the reference's dataset dicts, except that an item may carry its own `image` (targets bound by name, not
by list position: spec §11 pitfall 1), its `timestep_logit` (drawn per sample by the processor, so packing is
deterministic), and `drop` (condition dropout decided by the processor). Items without `image` consume
`images` in order, as the reference does.

The output holds the reference `Bagel.forward` argument names, without the flex pad document: our attention
needs no fixed length. `counts` gives the number of CE and MSE tokens (the loss normalisers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SpecialTokens:
    bos: int
    eos: int
    vision_start: int
    vision_end: int

    @classmethod
    def from_tokenizer(cls, tok) -> SpecialTokens:
        ids = {}
        for name, text in (
            ("bos", "<|im_start|>"),
            ("eos", "<|im_end|>"),
            ("vision_start", "<|vision_start|>"),
            ("vision_end", "<|vision_end|>"),
        ):
            i = tok.convert_tokens_to_ids(text)
            if i is None or i == tok.unk_token_id:
                raise ValueError(f"tokenizer has no {text} token (BAGEL needs the Qwen2 special tokens)")
            ids[name] = int(i)
        return cls(**ids)


@dataclass
class PackConfig:
    vit_patch_size: int = 14
    max_num_patch_per_side: int = 70
    vae_image_downsample: int = 16
    max_latent_size: int = 64


def patchify(image: torch.Tensor, p: int) -> torch.Tensor:
    """CHW -> [(H/p)*(W/p), p*p*C] in (h, w, p, q, c) order."""
    c, h, w = image.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
    x = image.reshape(c, h // p, p, w // p, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c)


def flat_position_ids(h_px: int, w_px: int, patch: int, per_side: int) -> torch.Tensor:
    nh, nw = h_px // patch, w_px // patch
    if nh > per_side or nw > per_side:
        raise ValueError(
            f"image {h_px}x{w_px} px needs {nh}x{nw} patches, more than the {per_side} per side "
            "the position table holds"
        )
    return (torch.arange(nh)[:, None] * per_side + torch.arange(nw)).flatten()


def pack(
    samples: list[dict], special: SpecialTokens, cfg: PackConfig, rng: np.random.Generator | None = None
) -> dict:
    """Pack samples into one batch (reference `pack_sequence` for each sample, then `to_tensor`)."""
    s: dict = {
        k: []
        for k in (
            "packed_text_ids",
            "packed_text_indexes",
            "packed_position_ids",
            "packed_vit_tokens",
            "packed_vit_position_ids",
            "packed_vit_token_indexes",
            "vit_token_seqlens",
            "vae_images",
            "packed_latent_position_ids",
            "vae_latent_shapes",
            "packed_vae_token_indexes",
            "packed_timesteps",
            "mse_loss_indexes",
            "packed_label_ids",
            "ce_loss_indexes",
            "ce_loss_weights",
            "sample_lens",
            "split_lens",
            "attn_modes",
            "vae_image_keys",
        )
    }
    curr = 0
    for sample in samples:
        curr = _pack_one(sample, s, curr, special, cfg, rng)
    return _to_tensor(s, curr)


def _pack_one(sample, s, curr, sp: SpecialTokens, cfg: PackConfig, rng) -> int:
    images = list(sample.get("images", []))
    texts = [list(t) for t in sample.get("text_ids_list", [])]
    split_lens, attn_modes = [], []
    rope = 0
    sample_len = 0
    split_len = 0
    n_vae = 0
    for item in sample["sequence_plan"]:
        if item.get("split_start", True):
            split_len = 0
        kind = item["type"]
        if kind == "text":
            ids = item["text_ids"] if "text_ids" in item else texts.pop(0)
            if item.get("drop"):
                continue
            shifted = [sp.bos, *ids]
            s["packed_text_ids"] += shifted
            s["packed_text_indexes"] += range(curr, curr + len(shifted))
            if item.get("loss"):
                s["ce_loss_indexes"] += range(curr, curr + len(shifted))
                s["ce_loss_weights"] += [len(shifted) ** -0.5] * len(shifted)
                s["packed_label_ids"] += [*ids, sp.eos]
            curr += len(shifted)
            split_len += len(shifted)
            _close(s, curr, sp.eos, item)
            curr += 1
            split_len += 1
            attn_modes.append("causal")
            s["packed_position_ids"] += range(rope, rope + split_len)
            rope += split_len
        elif kind in ("vit_image", "vae_image"):
            image = item["image"] if "image" in item else images.pop(0)
            if item.get("drop"):
                rope += 1
                continue
            s["packed_text_ids"].append(sp.vision_start)
            s["packed_text_indexes"].append(curr)
            curr += 1
            split_len += 1
            hh, ww = image.shape[1:]
            if kind == "vit_image":
                toks = patchify(image, cfg.vit_patch_size)
                n = toks.shape[0]
                s["packed_vit_token_indexes"] += range(curr, curr + n)
                s["packed_vit_tokens"].append(toks)
                s["vit_token_seqlens"].append(n)
                s["packed_vit_position_ids"].append(
                    flat_position_ids(hh, ww, cfg.vit_patch_size, cfg.max_num_patch_per_side)
                )
            else:
                d = cfg.vae_image_downsample
                s["vae_images"].append(image)
                s["vae_image_keys"].append(f"{sample['key']}/{n_vae}" if sample.get("key") else None)
                n_vae += 1
                s["packed_latent_position_ids"].append(flat_position_ids(hh, ww, d, cfg.max_latent_size))
                h, w = hh // d, ww // d
                s["vae_latent_shapes"].append((h, w))
                n = h * w
                s["packed_vae_token_indexes"] += range(curr, curr + n)
                if item.get("loss"):
                    s["mse_loss_indexes"] += range(curr, curr + n)
                    if "timestep_logit" in item:
                        t = float(item["timestep_logit"])
                    else:
                        t = float(rng.standard_normal()) if rng is not None else float(np.random.randn())
                else:
                    t = float("-inf")
                s["packed_timesteps"] += [t] * n
            curr += n
            split_len += n
            _close(s, curr, sp.vision_end, item)
            curr += 1
            split_len += 1
            if item.get("split_start", True):
                noised = kind == "vae_image" and item.get("loss") and "frame_delta" not in item
                attn_modes.append("noise" if noised else "full")
            s["packed_position_ids"] += [rope] * split_len
            if "frame_delta" in item:
                rope += item["frame_delta"]
            elif kind == "vit_image" or not item.get("loss"):
                rope += 1
        else:
            raise ValueError(f"unknown sequence_plan item type {kind!r}")
        if item.get("split_end", True):
            split_lens.append(split_len)
            sample_len += split_len
    s["sample_lens"].append(sample_len)
    s["split_lens"] += split_lens
    s["attn_modes"] += attn_modes
    return curr


def _close(s: dict, curr: int, token: int, item: dict) -> None:
    """The closing marker (<|im_end|> / <|vision_end|>) at `curr`; it carries a CE label only if asked."""
    s["packed_text_ids"].append(token)
    s["packed_text_indexes"].append(curr)
    if item.get("special_token_loss"):
        s["ce_loss_indexes"].append(curr)
        s["ce_loss_weights"].append(1.0)
        s["packed_label_ids"].append(item["special_token_label"])


def _to_tensor(s: dict, curr: int) -> dict:
    out = dict(
        sequence_length=curr,
        sample_lens=s["sample_lens"],
        split_lens=s["split_lens"],
        attn_modes=s["attn_modes"],
        packed_text_ids=torch.tensor(s["packed_text_ids"], dtype=torch.long),
        packed_text_indexes=torch.tensor(s["packed_text_indexes"], dtype=torch.long),
        packed_position_ids=torch.tensor(s["packed_position_ids"], dtype=torch.long),
    )
    if s["vae_images"]:
        imgs = s["vae_images"]
        size = [max(x) for x in zip(*(i.shape for i in imgs))]
        padded = torch.zeros(len(imgs), *size)
        for i, im in enumerate(imgs):
            padded[i, :, : im.shape[1], : im.shape[2]] = im
        out.update(
            padded_images=padded,
            vae_image_keys=s["vae_image_keys"],
            patchified_vae_latent_shapes=s["vae_latent_shapes"],
            packed_latent_position_ids=torch.cat(s["packed_latent_position_ids"]),
            packed_vae_token_indexes=torch.tensor(s["packed_vae_token_indexes"], dtype=torch.long),
            packed_timesteps=torch.tensor(s["packed_timesteps"], dtype=torch.float32),
            mse_loss_indexes=torch.tensor(s["mse_loss_indexes"], dtype=torch.long),
        )
    if s["packed_vit_tokens"]:
        out.update(
            packed_vit_tokens=torch.cat(s["packed_vit_tokens"]),
            packed_vit_position_ids=torch.cat(s["packed_vit_position_ids"]),
            packed_vit_token_indexes=torch.tensor(s["packed_vit_token_indexes"], dtype=torch.long),
            vit_token_seqlens=torch.tensor(s["vit_token_seqlens"], dtype=torch.long),
        )
    if s["packed_label_ids"]:
        out.update(
            packed_label_ids=torch.tensor(s["packed_label_ids"], dtype=torch.long),
            ce_loss_indexes=torch.tensor(s["ce_loss_indexes"], dtype=torch.long),
            ce_loss_weights=torch.tensor(s["ce_loss_weights"], dtype=torch.float32),
        )
    out["counts"] = {"ce": len(s["packed_label_ids"]), "mse": len(s["mse_loss_indexes"])}
    return out


def batch_to(batch: dict, device) -> dict:
    """Move every tensor of a packed batch to `device` (lists and ints stay)."""
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }
