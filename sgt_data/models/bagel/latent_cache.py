"""Cached VAE posterior moments: the FLUX VAE is frozen, so each training target is encoded once.

Entries are fp16 safetensors (`mean`, `logvar`), one file per image key (`<row key>:<task>/<n>`), written
atomically so several ranks may share the folder. The posterior is still *sampled* every step from the cached
moments, as the reference samples it from a fresh encode.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def cached_moments(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior moments for each VAE image of a batch, read from / written to `model.latent_cache`.

    Each image is encoded on its own (not zero-padded beside its batch-mates, unlike the reference), so a
    cached entry does not depend on the batch it was first seen in. Entries are fp16 safetensors, one per key."""
    from safetensors.torch import load_file, save_file

    root = Path(model.latent_cache)
    root.mkdir(parents=True, exist_ok=True)
    imgs = batch["padded_images"]
    down = model.config.image_downsample
    vd = model.config.vae_downsample
    shapes = batch["patchified_vae_latent_shapes"]
    keys = batch.get("vae_image_keys") or [None] * len(shapes)
    z = model.config.z_channels
    mean = torch.zeros(len(shapes), z, imgs.shape[2] // vd, imgs.shape[3] // vd, device=imgs.device)
    logvar = torch.zeros_like(mean)
    for i, ((h, w), key) in enumerate(zip(shapes, keys)):
        path = root / (hashlib.sha1(key.encode()).hexdigest() + ".safetensors") if key else None
        if path is not None and path.is_file():
            t = load_file(str(path), device=str(imgs.device))
            m, lv = t["mean"].float(), t["logvar"].float()
        else:
            m, lv = model.vae.to(device=imgs.device).moments(imgs[i : i + 1, :, : h * down, : w * down])
            m, lv = m[0], lv[0]
            if path is not None:
                tmp = path.with_suffix(f".tmp{torch.randint(1 << 30, ()).item()}")
                save_file(
                    {"mean": m.half().cpu().contiguous(), "logvar": lv.half().cpu().contiguous()}, str(tmp)
                )
                tmp.replace(path)
        mean[i, :, : m.shape[1], : m.shape[2]] = m
        logvar[i, :, : lv.shape[1], : lv.shape[2]] = lv
    return mean, logvar
