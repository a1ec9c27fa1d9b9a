"""`model.name: toy`: the loop's own tiny model, a complete ModelAdapter in ~150 lines.

It exists to exercise the training loop on CPU in seconds (tests, smoke runs of new recipes) and as a readable
example of the adapter protocol. It reads real rows: decodes the RGB image and the proxy PNG, or the VQA
conversation, and trains two real losses with the ports' reduction contract: flow-matching `mse` (sum over target
elements, count = elements) and next-byte `ce` (sum over answer bytes, count = bytes).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 16
TEXT = 48


def _pixels(cell: dict | None, mode: str = "RGB", nearest: bool = False) -> np.ndarray:
    """Decode a {bytes, path} image cell to a [3, SIZE, SIZE] float array in [-1, 1] (zeros when absent)."""
    from PIL import Image

    if not cell or not cell.get("bytes"):
        return np.zeros((3, SIZE, SIZE), dtype=np.float32)
    img = Image.open(io.BytesIO(cell["bytes"])).convert(mode)
    img = img.resize((SIZE, SIZE), Image.NEAREST if nearest else Image.BILINEAR)
    return (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0).copy()


def _bytes(text: str, n: int = TEXT) -> np.ndarray:
    return np.frombuffer(text.encode()[:n].ljust(n, b"\0"), dtype=np.uint8).astype(np.int64)


class ToyProcessor:
    """Picklable CPU-side preparation: image tensor, plus the target map or the answer bytes."""

    def prepare(self, row: dict[str, Any], task: str, seed: int) -> dict[str, Any]:
        """One sample; `seed` fixes its flow-matching noise (the timestep is drawn by the model, from torch's RNG)."""
        rng = np.random.default_rng(seed)
        sample: dict[str, Any] = {"task": task, "image": _pixels(row.get("image"))}
        if task == "vqa":
            turns = row.get("conversations") or []
            answer = " ".join(t["value"] for t in turns if t["from"] == "gpt")
            sample["answer"] = _bytes(answer)
            sample["length"] = min(len(answer.encode()), TEXT)
        else:
            sample["target"] = _pixels(row.get(task), nearest=True)
            sample["prompt"] = _bytes(row.get(f"prompt_{task}") or "")
            sample["noise"] = rng.standard_normal((3, SIZE, SIZE)).astype(np.float32)
        return sample


def _collate(samples: list[dict]) -> dict[str, Any]:
    import torch

    gen = [s for s in samples if s["task"] != "vqa"]
    vqa = [s for s in samples if s["task"] == "vqa"]
    batch: dict[str, Any] = {"counts": {}}
    if gen:
        batch["gen"] = {
            k: torch.as_tensor(np.stack([s[k] for s in gen])) for k in ("image", "target", "noise")
        }
        batch["counts"]["mse"] = len(gen) * 3 * SIZE * SIZE
    if vqa:
        lengths = torch.tensor([s["length"] for s in vqa])
        batch["vqa"] = {
            "image": torch.as_tensor(np.stack([s["image"] for s in vqa])),
            "answer": torch.as_tensor(np.stack([s["answer"] for s in vqa])),
            "mask": torch.arange(TEXT)[None, :] < lengths[:, None],
        }
        batch["counts"]["ce"] = int(lengths.sum())
    return batch


def _model_cls() -> type:
    import torch
    from torch import nn

    class ToyModel(nn.Module):
        """Image encoder shared by a velocity head (proxy tasks) and a next-byte head (VQA)."""

        def __init__(self, width: int = 32):
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1)
            )
            self.velocity = nn.Conv2d(3 + width + 1, 3, 3, padding=1)
            self.embed = nn.Embedding(256, width)
            self.lm_head = nn.Linear(width, 256)

        def forward(self, batch: dict) -> dict:
            out = {}
            if "gen" in batch:
                g = batch["gen"]
                cond = self.encoder(g["image"]).expand(-1, -1, SIZE, SIZE)
                # Drawn from the global RNG on purpose: exact resume must restore it.
                t = torch.sigmoid(torch.randn(len(g["image"]), device=g["image"].device)).view(-1, 1, 1, 1)
                x_t = (1 - t) * g["target"] + t * g["noise"]
                pred = self.velocity(torch.cat([x_t, cond, t.expand(-1, 1, SIZE, SIZE)], 1))
                out["mse"] = ((pred.float() - (g["noise"] - g["target"]).float()) ** 2).sum()
            if "vqa" in batch:
                v = batch["vqa"]
                ctx = self.encoder(v["image"]).flatten(1)[:, None, :]
                prev = torch.nn.functional.pad(v["answer"][:, :-1], (1, 0))
                logits = self.lm_head(self.embed(prev) + ctx).float()
                ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), v["answer"], reduction="none")
                out["ce"] = (ce * v["mask"]).sum()
            return out

    return ToyModel


class ToyAdapter:
    """ModelAdapter for the toy model; options: `micro_batch_size` (samples per micro-batch, default 2)."""

    name = "toy"

    def build(self, cfg: Any, *, device: str = "cpu", for_training: bool = True) -> Any:
        """Random init (init: random) or a strict load of `path`/model.safetensors (init: pretrained)."""
        from safetensors.torch import load_file

        model = _model_cls()()
        if cfg.init == "pretrained":
            state = load_file(str(Path(cfg.path) / "model.safetensors"))
            model.load_state_dict(state, strict=True)
        return model.to(device).train(for_training)

    def processor(self, cfg: Any) -> ToyProcessor:
        """The DataLoader-side preparation object."""
        return ToyProcessor()

    def micro_batches(self, samples: list[dict], cfg: Any) -> list[dict]:
        """Consecutive groups of `micro_batch_size` samples (the sampler already interleaves tasks)."""
        size = int(cfg.options.get("micro_batch_size", 2))
        return [_collate(samples[i : i + size]) for i in range(0, len(samples), size)]

    def losses(self, model: Any, batch: dict) -> dict[str, Any]:
        """Loss sums of one micro-batch, through the root module's forward (required by DDP/FSDP)."""
        return model(batch)

    def save_pretrained(self, model: Any, dest: str) -> None:
        """model.safetensors + config.json, loadable by build(init: pretrained, path: dest)."""
        from safetensors.torch import save_file

        Path(dest).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(Path(dest) / "model.safetensors"))
        (Path(dest) / "config.json").write_text(json.dumps({"model": "toy", "size": SIZE, "text": TEXT}))


def write_tiny_checkpoint(dest: str | Path, seed: int = 0) -> Path:
    """A random toy checkpoint at `dest` (for recipes with init: pretrained)."""
    import torch

    torch.manual_seed(seed)
    ADAPTER.save_pretrained(_model_cls()(), str(dest))
    return Path(dest)


ADAPTER = ToyAdapter()
