"""Load and save BAGEL in the official `BAGEL-7B-MoT` layout.

The model is built on the meta device (no random init, no memory), then each tensor is streamed from the
safetensors file straight to its device and dtype (`load_state_dict(assign=True)`), so loading the 29 GB
bf16 checkpoint never materialises an fp32 copy on the host. Loading is strict: missing or unexpected keys
raise one error listing them. The two fixed sincos tables are recomputed (the reference pops them too), so
they may be absent from the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .config import BagelConfig
from .modeling import Bagel

WEIGHT_FILES = ("ema.safetensors", "model.safetensors")
RECOMPUTED = ("vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed")


class CheckpointKeyError(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def weights_file(folder: str | Path) -> Path:
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder}: no {' or '.join(WEIGHT_FILES)} (expected the official BAGEL-7B-MoT layout)"
    )


def infer_max_latent_size(path: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if "latent_pos_embed.pos_embed" in f.keys():
            n = f.get_slice("latent_pos_embed.pos_embed").get_shape()[0]
            side = int(round(n**0.5))
            if side * side == n:
                return side
    return None


def build_empty(cfg: BagelConfig) -> Bagel:
    """The architecture on the meta device (parameters without storage)."""
    with torch.device("meta"):
        return Bagel(cfg)


def init_random(model: Bagel, seed: int = 0, device="cpu", dtype=torch.float32) -> Bagel:
    """Materialise a meta model with random weights (Linear N(0, 0.02), norms 1, biases 0; llm2vae 0 as upstream)."""
    model.to_empty(device=device)
    # CPU generator for small models (reproducible everywhere); on-device draws for big ones (fast)
    gen_dev = "cpu" if sum(p.numel() for p in model.parameters()) < 50_000_000 else device
    g = torch.Generator(device=gen_dev).manual_seed(seed)
    with torch.no_grad():
        model.to(dtype)
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.startswith("llm2vae."):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=gen_dev) * 0.02)
    model.reset_fixed_buffers(device)
    return model


def load_weights(
    model: Bagel,
    path: str | Path,
    *,
    device="cpu",
    dtype: torch.dtype | None = torch.bfloat16,
    strict: bool = True,
) -> Bagel:
    """Stream a safetensors file into a (meta or real) model, strictly by name."""
    from safetensors import safe_open

    path = Path(path)
    expected = set(model.state_dict().keys())
    with safe_open(str(path), "pt", device="cpu") as f:
        found = set(f.keys())
        missing = sorted(expected - found - set(RECOMPUTED))
        unexpected = sorted(found - expected)
        if strict and (missing or unexpected):

            def show(keys):
                return ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "")

            parts = []
            if missing:
                parts.append(f"missing keys: {show(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {show(unexpected)}")
            raise CheckpointKeyError(
                f"{path}: checkpoint does not match the BAGEL architecture; " + "; ".join(parts)
            )
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        state = {}
        for k in sorted(found & expected):
            if k in RECOMPUTED:
                continue
            t = f.get_tensor(k)
            if tuple(t.shape) != tuple(shapes[k]):
                raise CheckpointKeyError(
                    f"{path}: {k} has shape {list(t.shape)}, the config expects {list(shapes[k])}"
                )
            state[k] = t.to(
                device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype
            )
    for k in RECOMPUTED:
        state[k] = torch.zeros(shapes[k], device=device)
    model.load_state_dict(state, strict=strict, assign=True)
    model.reset_fixed_buffers(device)
    return model


def from_pretrained(
    folder: str | Path,
    *,
    device="cpu",
    dtype: torch.dtype = torch.bfloat16,
    load_vae: bool = True,
    vae_dtype: torch.dtype | None = None,
    **overrides,
) -> Bagel:
    """Load an official BAGEL folder (llm_config.json, vit_config.json, ema.safetensors, ae.safetensors,
    tokenizer) strictly. `dtype` is the parameter dtype (bf16 for inference, fp32 for training masters)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: BAGEL checkpoint folder does not exist (download BAGEL-7B-MoT first)"
        )
    wfile = weights_file(folder)
    cfg = BagelConfig.from_folder(folder, **overrides)
    if "max_latent_size" not in overrides and not (folder / "bagel_config.json").is_file():
        cfg.max_latent_size = infer_max_latent_size(wfile) or cfg.max_latent_size
    model = load_weights(build_empty(cfg), wfile, device=device, dtype=dtype)
    model.special = load_special_tokens(folder)
    if load_vae:
        from ..vae import load_flux_vae

        model.attach_vae(
            load_flux_vae(folder / "ae.safetensors", dtype=vae_dtype or torch.float32, device=device)
        )
    model.checkpoint_dir = str(folder)
    return model


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def load_special_tokens(folder: str | Path) -> dict[str, int]:
    from .packing import SpecialTokens

    try:
        tok = load_tokenizer(folder)
    except Exception as e:  # noqa: BLE001 - name the folder and the fix
        raise FileNotFoundError(
            f"{folder}: cannot load the Qwen2 tokenizer ({e}); the BAGEL folder must hold it"
        ) from e
    return vars(SpecialTokens.from_tokenizer(tok))


def save_pretrained(
    model: Bagel,
    dest: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """Write the official layout: configs, ema.safetensors (in `dtype`), ae.safetensors, tokenizer files."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.config.save(dest)
    state = {
        k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = dest / "ema.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(dest / "ema.safetensors")
    src = Path(tokenizer_from or getattr(model, "checkpoint_dir", "") or "")
    if src and src.is_dir() and src.resolve() != dest.resolve():
        for f in src.iterdir():
            if f.name in ("ae.safetensors", "vae_config.json") or f.name.startswith(
                ("tokenizer", "vocab", "merges", "special_tokens", "added_tokens", "generation_config")
            ):
                shutil.copy2(f, dest / f.name)
    return dest


def write_tiny_checkpoint(dest: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """A random-init tiny BAGEL in the OFFICIAL layout (tests and recipes/bagel_tiny.yaml).

    llm_config.json, vit_config.json, bagel_config.json, ema.safetensors (fp32), ae.safetensors (tiny FLUX-
    architecture AE, BFL names) + vae_config.json, and the offline tiny Qwen2-style tokenizer."""
    from ..tiny_tokenizer import save_tiny_tokenizer
    from ..vae import flux_config_from_state, write_random_flux_ae
    from .config import tiny_config

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = save_tiny_tokenizer(dest, vocab_size=vocab_size)
    cfg = tiny_config(vocab_size=max(vocab_size, len(tok)))
    model = init_random(build_empty(cfg), seed=seed)
    model.checkpoint_dir = None
    save_pretrained(model, dest, dtype=torch.float32)
    ae = write_random_flux_ae(dest / "ae.safetensors", seed=seed)
    from safetensors import safe_open

    with safe_open(str(ae), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    (dest / "vae_config.json").write_text(json.dumps(flux_config_from_state(shapes), indent=2))
    return dest
