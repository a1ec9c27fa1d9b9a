"""OmniGen2 port: the DiT written here, Qwen2.5-VL from transformers, the FLUX VAE from diffusers.

`adapter.ADAPTER` is what `sgt-data train` / `infer` use; `write_tiny_checkpoint` writes a random tiny model in
the official folder layout for tests and `recipes/omnigen2_tiny.yaml`.
"""

from __future__ import annotations

from pathlib import Path


def write_tiny_checkpoint(dest: str | Path, seed: int = 0) -> Path:
    """Write a random-init tiny OmniGen2 (official layout: model_index.json, transformer/, vae/, mllm/,
    processor/, scheduler/) into `dest` and return it."""
    from .model import write_tiny_checkpoint as _write

    return _write(dest, seed=seed)


__all__ = ["write_tiny_checkpoint"]
