"""Turn one of our shard rows into a raw BAGEL sample (CPU, DataLoader workers; picklable).

Generative proxy rows (seg / edge / depth) follow SGT's `sam_190k` plan with the target bound by name (spec §1.2,
§11 pitfall 1): [ViT(RGB) | instruction text | VAE(target map) with MSE]. The RGB is never VAE-encoded. VQA rows
follow `vlm_dataset.change_format`: human text pieces and `<image>` placeholders without loss, gpt turns with CE;
no chat template, each text item is `<|im_start|> ids <|im_end|>` (spec §1.3).

Every random choice (condition dropout, the per-image timestep logit) comes from `seed`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgt_data.models.targets import to_rgb8

from ..base import GEN_TASKS


@dataclass
class Resize:
    """Reference `MaxLongEdgeMinShortEdgeResize`: cap the long edge, raise the short edge, snap to `stride`."""

    max_size: int
    min_size: int
    stride: int
    max_pixels: int

    def _snap(self, w, h, scale):
        def div(v):
            return max(self.stride, int(round(v / self.stride) * self.stride))

        return div(round(w * scale)), div(round(h * scale))

    def size(self, width: int, height: int, img_num: int = 1) -> tuple[int, int]:
        scale = min(self.max_size / max(width, height), 1.0)
        scale = max(scale, self.min_size / min(width, height))
        w, h = self._snap(width, height, scale)
        if w * h > self.max_pixels / img_num:
            # the reference scales the edges by the *area* ratio here; kept as is so token counts match it
            w, h = self._snap(w, h, self.max_pixels / img_num / (w * h))
        if max(w, h) > self.max_size:
            w, h = self._snap(w, h, self.max_size / max(w, h))
        return w, h

    def __call__(self, img, img_num: int = 1, resample=None):
        """PIL image -> CHW float tensor in [-1, 1]."""
        import torch
        from PIL import Image

        w, h = self.size(*img.size, img_num=img_num)
        img = img.resize((w, h), Image.BICUBIC if resample is None else resample)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return (torch.from_numpy(arr).permute(2, 0, 1).contiguous() - 0.5) / 0.5


def to_rgb(img):
    """RGBA/LA/P -> RGB flattened onto white (reference `pil_img2rgb`)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def open_image(cell: Any, what: str):
    from PIL import Image

    if cell is None:
        raise ValueError(f"{what}: no image")
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return Image.open(io.BytesIO(cell["bytes"]))
        if cell.get("path"):
            return Image.open(cell["path"])
        raise ValueError(f"{what}: image cell has neither bytes nor path")
    if isinstance(cell, (bytes, bytearray)):
        return Image.open(io.BytesIO(cell))
    return cell  # already a PIL image


@dataclass
class BagelProcessor:
    tokenizer_dir: str
    vit_gen: Resize = field(default_factory=lambda: Resize(224, 224, 14, 14 * 14 * 9 * 1024))
    vae_gen: Resize = field(default_factory=lambda: Resize(1024, 512, 16, 14 * 14 * 9 * 1024))
    vit_vqa: Resize = field(default_factory=lambda: Resize(980, 378, 14, 2_007_040))
    text_cond_dropout: float = 0.1
    max_tokens_per_sample: int = 16384
    _tok: Any = field(default=None, init=False, repr=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tok"] = None  # workers load their own tokenizer
        return state

    @property
    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        return self._tok

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prepare(self, row: dict, task: str, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        key = str(row.get("key", ""))
        if task in GEN_TASKS:
            sample = self._generative(row, task, rng, key)
        elif task == "vqa":
            sample = self._vqa(row, rng, key)
        else:
            raise ValueError(f"row {key}: unknown task {task!r} (expected one of {GEN_TASKS} or vqa)")
        sample["num_tokens"] = estimate_tokens(sample["sequence_plan"])
        return sample

    def _generative(self, row, task, rng, key):
        from PIL import Image

        image = to_rgb(open_image(row.get("image"), f"row {key} image"))
        target = to_rgb(
            to_rgb8(open_image(row.get(task), f"row {key} {task} target"))
        )  # 16-bit depth: rescaled
        if target.size != image.size:
            target = target.resize(image.size, Image.NEAREST)
        prompt = row.get(f"prompt_{task}") or ""
        # colour-per-instance maps must not blend colours: nearest for seg (spec §11 pitfall 5)
        resample = Image.NEAREST if task == "seg" else Image.BICUBIC
        plan = [
            {"type": "vit_image", "image": self.vit_gen(image), "loss": 0, "enable_cfg": 0},
            {
                "type": "text",
                "text_ids": self.encode(prompt),
                "loss": 0,
                "enable_cfg": 1,
                "drop": bool(rng.random() < self.text_cond_dropout),
            },
            {
                "type": "vae_image",
                "image": self.vae_gen(target, resample=resample),
                "loss": 1,
                "enable_cfg": 0,
                "timestep_logit": float(rng.standard_normal()),
            },
        ]
        return {"key": f"{key}:{task}", "task": task, "sequence_plan": plan}

    def _vqa(self, row, rng, key):
        conv = row.get("conversations") or []
        img = row.get("image")
        images = [to_rgb(open_image(img, f"row {key} image"))] if img is not None else []
        plan: list[dict] = []
        used = 0
        for turn in conv:
            who, value = turn.get("from"), turn.get("value") or ""
            if who == "human":
                pieces = value.split("<image>")
                for i, text in enumerate(pieces):
                    if text.strip():
                        plan.append({"type": "text", "text_ids": self.encode(text.strip()), "loss": 0})
                    if i != len(pieces) - 1 and used < len(images):
                        plan.append(
                            {"type": "vit_image", "image": self.vit_vqa(images[used], len(images)), "loss": 0}
                        )
                        used += 1
            elif who == "gpt":
                plan.append({"type": "text", "text_ids": self.encode(value), "loss": 1})
        if not any(it.get("loss") for it in plan):
            raise ValueError(f"row {key}: conversation has no gpt turn to train on")
        # over the per-sample budget: drop trailing turns, keeping at least one answer
        while (
            estimate_tokens(plan) > self.max_tokens_per_sample and sum(it.get("loss", 0) for it in plan) > 1
        ):
            plan.pop()
            while plan and not plan[-1].get("loss"):
                plan.pop()
        return {"key": f"{key}:vqa", "task": "vqa", "sequence_plan": plan}


def estimate_tokens(plan: list[dict], vit_patch: int = 14, vae_down: int = 16) -> int:
    n = 0
    for it in plan:
        if it.get("drop") and it["type"] == "text":
            continue
        n += 2
        if it["type"] == "text":
            n += len(it["text_ids"])
        elif it["type"] == "vit_image":
            n += (it["image"].shape[1] // vit_patch) * (it["image"].shape[2] // vit_patch)
        else:
            n += (it["image"].shape[1] // vae_down) * (it["image"].shape[2] // vae_down)
    return n
