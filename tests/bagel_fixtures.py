"""Shared helpers for the BAGEL tests: locate `shared/parity`, rebuild its raw samples, load its tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def parity_root() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    for cand in (
        os.environ.get("SGT_PARITY_DIR"),
        here / "shared" / "parity",
        here.parent / "shared" / "parity",
        "/work/shared/parity",
    ):
        if cand and (Path(cand) / "bagel" / "model.safetensors").is_file():
            return Path(cand)
    return None


def require_parity() -> Path:
    root = parity_root()
    if root is None:
        pytest.skip("parity fixtures (shared/parity) not found; set SGT_PARITY_DIR")
    return root


def load_case(folder: Path):
    from safetensors.torch import load_file

    return (
        json.loads((folder / "inputs.json").read_text()),
        load_file(str(folder / "inputs.safetensors")),
        load_file(str(folder / "expected.safetensors")),
    )


def raw_samples(meta: dict, inputs: dict) -> list[dict]:
    """The fixture's raw samples in our raw-sample format (images consumed in plan order), with the fixed
    timestep logits assigned to the noised VAE images in order."""
    logits = list(meta["timestep_logits"])
    out = []
    for name, raw in meta["raw_samples"].items():
        plan = [dict(item) for item in raw["sequence_plan"]]
        for item in plan:
            if item["type"] == "vae_image" and item["loss"]:
                item["timestep_logit"] = logits.pop(0)
        out.append(
            {
                "key": name,
                "sequence_plan": plan,
                "text_ids_list": raw["text_ids_list"],
                "images": [inputs[k] for k in raw["images"]],
            }
        )
    return out


def parity_model(root: Path, **overrides):
    """The fixture's tiny model, loaded strictly through our loader (fp32)."""
    import torch

    from sgt_data.models.bagel.config import BagelConfig
    from sgt_data.models.bagel.loading import build_empty, load_weights

    folder = root / "bagel"
    meta = json.loads((folder / "inputs.json").read_text())
    cfg = BagelConfig.from_folder(
        folder, max_latent_size=meta["bagel_config"]["max_latent_size"], **overrides
    )
    model = load_weights(build_empty(cfg), folder / "model.safetensors", dtype=torch.float32)
    model.special = {"bos": 1000, "eos": 1001, "vision_start": 1002, "vision_end": 1003}
    return model


def pack_config(meta: dict):
    from sgt_data.models.bagel.packing import PackConfig

    dc = meta["data_config"]
    return PackConfig(
        vit_patch_size=dc["vit_patch_size"],
        max_num_patch_per_side=dc["max_num_patch_per_side"],
        vae_image_downsample=dc["vae_image_downsample"],
        max_latent_size=dc["max_latent_size"],
    )


def special_tokens(meta: dict):
    from sgt_data.models.bagel.packing import SpecialTokens

    s = meta["special_token_ids"]
    return SpecialTokens(s["bos_token_id"], s["eos_token_id"], s["start_of_image"], s["end_of_image"])
