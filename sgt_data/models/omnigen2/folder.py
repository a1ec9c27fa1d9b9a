"""The official OmniGen2 folder layout: reading and writing it without remote code.

```
model_index.json   transformer/{config.json, diffusion_pytorch_model[-0000k-of-0000n].safetensors[.index.json]}
vae/ (diffusers AutoencoderKL)   mllm/ (transformers Qwen2.5-VL)   processor/ (tokenizer + Qwen2-VL image processor)
scheduler/scheduler_config.json
```
SGT's release (`Two-hot/SGT-Gen2`) is an overlay: `transformer/transformer/` (the DiT) and
`transformer/text_encoder/` (the fine-tuned Qwen, saved without `lm_head`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import DiTConfig
from .transformer import OmniGen2Transformer

MODEL_INDEX = {
    "_class_name": "OmniGen2Pipeline",
    "_diffusers_version": "0.33.1",
    "mllm": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "processor": ["transformers", "Qwen2_5_VLProcessor"],
    "scheduler": ["scheduling_flow_match_euler_discrete", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["transformer_omnigen2", "OmniGen2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
REQUIRED = ("transformer", "vae", "mllm", "processor")


def check_layout(root: str | Path) -> Path:
    """Return `root` as a Path after checking the official sub-folders exist; errors say what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"OmniGen2 folder {root} does not exist: download OmniGen2/OmniGen2 there first"
        )
    missing = [name for name in REQUIRED if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not an OmniGen2 folder: missing {', '.join(m + '/' for m in missing)} (expected the official layout "
            "with model_index.json, transformer/, vae/, mllm/, processor/, scheduler/)"
        )
    return root


def read_safetensors_folder(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    """Read `<stem>` or its sharded form (`<stem>.index.json` + shards) from `folder`."""
    from safetensors.torch import load_file

    single, index = folder / stem, folder / f"{stem}.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    found = sorted(p.name for p in folder.glob("*"))
    raise FileNotFoundError(f"{folder}: no {stem} (or {stem}.index.json); found {found}")


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists the offending keys and shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: weights do not match the config: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{unexpected[:5]} ({len(unexpected)}), shape mismatches {shapes[:5]}"
        )
    module.load_state_dict(state, strict=True)


def load_transformer(folder: str | Path) -> OmniGen2Transformer:
    """Build the DiT from `folder/config.json` and load its weights strictly."""
    folder = Path(folder)
    config = DiTConfig.from_file(folder / "config.json")
    with torch.device("meta"):
        model = OmniGen2Transformer(config)
    model = model.to_empty(device="cpu")
    load_state_strict(model, read_safetensors_folder(folder, DIT_WEIGHTS), str(folder))
    return model


def save_transformer(model: OmniGen2Transformer, folder: str | Path) -> None:
    """Write `config.json` + `diffusion_pytorch_model.safetensors` (the official names and format)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_json(), indent=2) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / DIT_WEIGHTS), metadata={"format": "pt"})


def overlay_dirs(overlay: str | Path) -> tuple[Path | None, Path | None]:
    """Locate the DiT and text-encoder folders of an SGT-Gen2 style overlay (root or its `transformer/`)."""
    overlay = Path(overlay)
    if not overlay.is_dir():
        raise FileNotFoundError(
            f"overlay folder {overlay} does not exist: download Two-hot/SGT-Gen2 there first"
        )
    for base in (overlay / "transformer", overlay):
        dit, te = base / "transformer", base / "text_encoder"
        if dit.is_dir() or te.is_dir():
            return (dit if dit.is_dir() else None), (te if te.is_dir() else None)
    raise FileNotFoundError(
        f"{overlay}: no transformer/transformer/ or transformer/text_encoder/ inside (the SGT-Gen2 layout)"
    )


def read_text_encoder(folder: Path) -> dict[str, torch.Tensor]:
    """The overlay's text-encoder weights (`model.safetensors`, sharded or not)."""
    return read_safetensors_folder(folder, "model.safetensors")
