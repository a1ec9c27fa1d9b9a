"""SGT training for OmniGen2: single-task micro-batches and their unweighted loss sums.

Generative micro-batches: Qwen2.5-VL reads the prompt *with the input image* and its last hidden states (post
final norm, image tokens kept) condition the DiT; no VAE reference latents. The flow loss therefore trains Qwen
too. VQA micro-batches: Qwen's next-token CE on the answer tokens (incl. `<|im_end|>`), computing `lm_head` only
at label positions. Both return SUMS; the loop divides by the global counts and applies the recipe's weights.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..base import GEN_TASKS
from .processor import IGNORE
from .scheduler import shift_training_t


def kind(task: str) -> str:
    return "gen" if task in GEN_TASKS else task


KIND_ORDER = ("gen", "vqa")


def micro_batches(samples: list[dict], micro_batch: int) -> list[dict]:
    """Group samples into single-kind micro-batches of <= micro_batch: all generative ones first, then VQA.

    The kind sequence depends only on how many samples of each kind a rank holds (not on their order), so
    ranks with the same per-task counts (the mixer guarantees it) run the same kind of micro-batch at every
    micro-step: the DiT's collectives never run on some ranks only.
    """
    groups: dict[str, list[dict]] = {k: [] for k in KIND_ORDER}
    for s in samples:
        if kind(s["task"]) not in groups:
            raise ValueError(f"unknown task {s['task']!r} in a prepared sample")
        groups[kind(s["task"])].append(s)
    out = []
    for k, group in groups.items():
        for i in range(0, len(group), micro_batch):
            chunk = group[i : i + micro_batch]
            out.append(collate_gen(chunk) if k == "gen" else collate_vqa(chunk))
    return out


def _pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    length = max(s.shape[0] for s in seqs)
    return torch.stack([F.pad(s, (0, length - s.shape[0]), value=value) for s in seqs])


def _vision(chunk: list[dict]) -> dict:
    with_img = [s for s in chunk if "pixel_values" in s]
    if not with_img:
        return {}
    return {
        "pixel_values": torch.cat([s["pixel_values"] for s in with_img]),
        "image_grid_thw": torch.cat([s["image_grid_thw"] for s in with_img]),
    }


def collate_gen(chunk: list[dict]) -> dict:
    ids = [s["input_ids"] for s in chunk]
    return {
        "kind": "gen",
        "tasks": [s["task"] for s in chunk],
        "input_ids": _pad(ids, chunk[0]["pad_id"]),
        "attention_mask": _pad([torch.ones_like(i) for i in ids], 0),
        "text_lens": [len(i) for i in ids],
        **_vision(chunk),
        "targets": [s["target"] for s in chunk],
        "t_raw": torch.tensor([s["t_raw"] for s in chunk], dtype=torch.float32),
        "noise_seeds": [s["noise_seed"] for s in chunk],
        "counts": {"fm": sum(s["counts"]["fm"] for s in chunk)},
    }


def collate_vqa(chunk: list[dict]) -> dict:
    ids = [s["input_ids"] for s in chunk]
    return {
        "kind": "vqa",
        "input_ids": _pad(ids, chunk[0]["pad_id"]),
        "attention_mask": _pad([torch.ones_like(i) for i in ids], 0),
        "labels": _pad([s["labels"] for s in chunk], IGNORE),
        **_vision(chunk),
        "counts": {"ce": sum(s["counts"]["ce"] for s in chunk)},
    }


def autocast(model) -> contextlib.AbstractContextManager:
    """bf16 autocast over fp32 master weights when the model's compute dtype asks for it."""
    dtype = model.compute_dtype
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(model.device.type, dtype=dtype)


def mllm_hidden(model, batch: dict, device: torch.device) -> torch.Tensor:
    """Qwen2.5-VL last hidden states [B, L, H] (post final norm) without computing any vocabulary logits."""
    kwargs = {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
    }
    if "pixel_values" in batch:
        kwargs["pixel_values"] = batch["pixel_values"].to(device)
        kwargs["image_grid_thw"] = batch["image_grid_thw"].to(device)
    return model.mllm.model(**kwargs).last_hidden_state


@torch.no_grad()
def encode_targets(vae, targets: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """FLUX VAE posterior means, scaled: (mean − shift_factor)·scaling_factor; same-size targets batched."""
    cfg = vae.config
    out: list[torch.Tensor | None] = [None] * len(targets)
    by_shape: dict[tuple, list[int]] = {}
    for i, t in enumerate(targets):
        by_shape.setdefault(tuple(t.shape), []).append(i)
    for idx in by_shape.values():
        x = torch.stack([targets[i] for i in idx]).to(device)
        mean = vae.encode(x).latent_dist.mean.float()
        z = (mean - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
        for j, i in enumerate(idx):
            out[i] = z[j]
    return out  # type: ignore[return-value]


def gen_loss(model, batch: dict) -> dict[str, torch.Tensor]:
    """Flow-matching loss SUM over the micro-batch's latent elements."""
    device = model.device
    with autocast(model):
        x1 = encode_targets(model.vae, batch["targets"], device)
        text = mllm_hidden(model, batch, device)
        ts, xts, targets = [], [], []
        for i, z in enumerate(x1):
            gen = torch.Generator(device=device).manual_seed(batch["noise_seeds"][i])
            x0 = torch.randn(z.shape, generator=gen, device=device, dtype=torch.float32)
            t = shift_training_t(batch["t_raw"][i], z.shape[1], z.shape[2]).to(device)
            ts.append(t)
            xts.append(t * z + (1 - t) * x0)
            targets.append(z - x0)
        vel = model.transformer(xts, torch.stack(ts), text, batch["text_lens"])
    fm = sum(F.mse_loss(v.float(), u, reduction="sum") for v, u in zip(vel, targets))
    return {"fm": fm}


def vqa_loss(model, batch: dict) -> dict[str, torch.Tensor]:
    """Next-token CE SUM over answer tokens; lm_head runs only where there is a label."""
    device = model.device
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    with autocast(model):
        hidden = mllm_hidden(model, batch, device)[:, :-1]
        logits = model.mllm.lm_head(hidden[keep.to(device)])
    return {"ce": F.cross_entropy(logits.float(), labels[keep].to(device), reduction="sum")}


def losses(model, batch: dict) -> dict[str, torch.Tensor]:
    if batch["kind"] == "gen":
        return gen_loss(model, batch)
    if batch["kind"] == "vqa":
        return vqa_loss(model, batch)
    raise ValueError(f"unknown micro-batch kind {batch['kind']!r}")
