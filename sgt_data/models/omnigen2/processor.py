"""CPU-side sample preparation for OmniGen2 training (runs in DataLoader workers; picklable, no torch CUDA).

Generative rows (seg/edge/depth): the input RGB goes to Qwen only (`pixel_values`, SGT's "reca" route), the
target map is resized with NEAREST (label colours must stay exact) to <= max_output_pixels, sides a multiple
of 16, and its VAE latent is the flow-matching target. VQA rows: every turn is kept, the standard chat
template is used, and each answer's `<|im_end|>` is part of the labels (the model learns to stop).
"""

from __future__ import annotations

import io
import math
from typing import Any

import torch

from sgt_data.models.targets import to_rgb8

from ..base import GEN_TASKS
from .mllm import IMAGE_BLOCK, SYSTEM_CHAT, chat_turn, expand_image_pads, gen_prompt, special_id

IGNORE = -100


def decode_image(cell: Any, what: str):
    """A PIL RGB image from a `datasets` Image cell ({bytes, path}), raw bytes or a PIL image."""
    from PIL import Image

    if cell is None:
        raise ValueError(f"{what}: image is missing")
    if isinstance(cell, Image.Image):
        return cell.convert("RGB")
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if data is None and isinstance(cell, dict) and cell.get("path"):
        with open(cell["path"], "rb") as fh:
            data = fh.read()
    if data is None:
        raise ValueError(f"{what}: image cell has neither bytes nor path")
    return to_rgb8(Image.open(io.BytesIO(data)))  # 16-bit depth targets rescaled, not clipped to white


def output_size(width: int, height: int, max_pixels: int, max_side: int = 2048, multiple: int = 16):
    """(W, H) within max_pixels and max_side, keeping the aspect ratio, both rounded down to `multiple`."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), max_side / max(width, height))
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h


def to_tensor(image) -> torch.Tensor:
    """PIL RGB -> float32 [3, H, W] in [-1, 1]."""
    import numpy as np

    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float() / 127.5 - 1.0


class Processor:
    """`prepare(row, task, seed)` -> one sample dict; all randomness comes from `seed`."""

    def __init__(self, tokenizer, image_processor, *, latent_channels: int = 16, options: dict | None = None):
        opts = options or {}
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.latent_channels = latent_channels
        self.max_output_pixels = int(opts.get("max_output_pixels", 1024 * 1024))
        self.max_side = int(opts.get("max_side_length", 2048))
        self.max_tokens = int(opts.get("max_text_tokens", 8192))
        self.pad_id = special_id(tokenizer, "<|endoftext|>")
        self.merge = int(getattr(image_processor, "merge_size", 2))

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _images(self, images: list) -> tuple[dict, list[int]]:
        if not images:
            return {}, []
        enc = self.image_processor(images=images, return_tensors="pt")
        grid = enc["image_grid_thw"]
        counts = (grid.prod(dim=1) // (self.merge * self.merge)).tolist()
        return {"pixel_values": enc["pixel_values"], "image_grid_thw": grid}, counts

    def prepare(self, row: dict, task: str, seed: int) -> dict:
        key = row.get("key", "?")
        if task in GEN_TASKS:
            return self._prepare_gen(row, task, seed, key)
        if task == "vqa":
            return self._prepare_vqa(row, key)
        raise ValueError(f"row {key}: unknown task {task!r} (tasks: {', '.join((*GEN_TASKS, 'vqa'))})")

    def _prepare_gen(self, row: dict, task: str, seed: int, key: str) -> dict:
        from PIL import Image

        image = decode_image(row.get("image"), f"row {key} image")
        target = decode_image(row.get(task), f"row {key} {task}")
        w, h = output_size(*target.size, self.max_output_pixels, self.max_side)
        if target.size != (w, h):
            target = target.resize((w, h), Image.NEAREST)
        instruction = row.get(f"prompt_{task}")
        if not instruction:
            raise ValueError(f"row {key}: prompt_{task} is empty; rebuild the proxies with prompts")
        vision, counts = self._images([image])
        ids = self._tokens(expand_image_pads(gen_prompt(instruction, True), counts))
        gen = torch.Generator().manual_seed(seed)
        t_raw = torch.sigmoid(torch.randn(1, generator=gen)).item()
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
        return {
            "task": task,
            "input_ids": torch.tensor(ids, dtype=torch.long),
            **vision,
            "target": to_tensor(target),
            "t_raw": t_raw,
            "noise_seed": noise_seed,
            "pad_id": self.pad_id,
            "counts": {"fm": self.latent_channels * (h // 8) * (w // 8)},
        }

    def _prepare_vqa(self, row: dict, key: str) -> dict:
        turns = row.get("conversations") or []
        images = [decode_image(row["image"], f"row {key} image")] if row.get("image") else []
        placeholders = sum(t["value"].count("<image>") for t in turns if t.get("from") in ("human", "user"))
        if placeholders > len(images):
            raise ValueError(f"row {key}: {placeholders} <image> placeholders but {len(images)} image(s)")
        vision, counts = self._images(images)
        segments: list[tuple[str, bool]] = [(chat_turn("system", SYSTEM_CHAT), False)]
        for i, turn in enumerate(turns):
            value = turn["value"]
            if turn.get("from") in ("human", "user"):
                value = value.replace("<image>\n", IMAGE_BLOCK).replace("<image>", IMAGE_BLOCK)
                if i == 0 and images and placeholders == 0:
                    value = IMAGE_BLOCK * len(images) + value
                segments.append((chat_turn("user", value), False))
            elif turn.get("from") in ("gpt", "assistant"):
                segments += [("<|im_start|>assistant\n", False), (value + "<|im_end|>", True), ("\n", False)]
            else:
                raise ValueError(f"row {key}: conversation turn {i} has unknown role {turn.get('from')!r}")
        n_pads = sum(seg.count("<|image_pad|>") for seg, _ in segments)
        if n_pads != len(counts):
            raise ValueError(
                f"row {key}: {n_pads} image placeholder(s) in the conversation but {len(counts)} image(s)"
            )
        ids: list[int] = []
        labels: list[int] = []
        pads = iter(counts)
        for seg, is_label in segments:
            if "<|image_pad|>" in seg:
                seg = expand_image_pads(seg, [next(pads) for _ in range(seg.count("<|image_pad|>"))])
            tok = self._tokens(seg)
            ids += tok
            labels += tok if is_label else [IGNORE] * len(tok)
        if len(ids) > self.max_tokens:
            image_id = special_id(self.tokenizer, "<|image_pad|>")
            if image_id in ids[self.max_tokens :]:
                raise ValueError(
                    f"row {key}: {len(ids)} tokens > max_text_tokens {self.max_tokens} inside the image"
                )
            ids, labels = ids[: self.max_tokens], labels[: self.max_tokens]
        n_ce = sum(1 for x in labels[1:] if x != IGNORE)
        return {
            "task": "vqa",
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            **vision,
            "pad_id": self.pad_id,
            "counts": {"ce": n_ce},
        }
