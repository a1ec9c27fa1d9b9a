"""OmniGen2's flow-matching time grid: training-time t sampling with its shift, inference timesteps, Euler step.

Convention (OmniGen2's, the opposite of diffusers' sigma): t = 0 is pure noise, t = 1 is clean data;
x_t = t·x1 + (1 − t)·x0 and the model predicts the velocity x1 − x0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.33.1",
    "dynamic_time_shift": True,
    "num_train_timesteps": 1000,
}


def inference_timesteps(
    num_steps: int, num_tokens: int | None = None, dynamic_shift: bool = True
) -> torch.Tensor:
    """float32 [num_steps + 1]: linspace(0, 1, N + 1)[:-1], shifted t/(m − m·t + t) with m = √tokens / 40, then 1.0.

    `num_tokens` is the latent H·W (not patches). The arithmetic mirrors the reference scheduler (a float32 grid
    combined with a float64 m) so the values agree bit for bit.
    """
    t = np.linspace(0, 1, num_steps + 1, dtype=np.float32)[:-1]
    if dynamic_shift and num_tokens is not None:
        m = np.sqrt(num_tokens) / 40
        t = t / (m - m * t + t)
    grid = torch.from_numpy(np.asarray(t)).to(torch.float32)
    return torch.cat([grid, torch.ones(1)])


def load_scheduler_config(folder: str | Path) -> dict:
    """Read `scheduler/scheduler_config.json` (the official folder's); missing keys take the reference defaults."""
    path = Path(folder) / "scheduler_config.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    return {**SCHEDULER_CONFIG, **data}


def training_mu(latent_h: int, latent_w: int) -> float:
    """Shift exponent μ, linear in tokens = (H/2)(W/2) through (256, 0.5) and (4096, 1.15)."""
    tokens = (latent_h // 2) * (latent_w // 2)
    slope = (1.15 - 0.5) / (4096 - 256)
    return slope * tokens + (0.5 - slope * 256)


def shift_training_t(t: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """Resolution-dependent shift (v1, dynamic): t' = 1 − e^μ / (e^μ + (1/(1 − t) − 1)).

    Larger images get more time near the noise end (smaller t'), as the reference trains.
    """
    e_mu = math.exp(training_mu(latent_h, latent_w))
    return 1 - e_mu / (e_mu + (1 / (1 - t) - 1))


def sample_training_t(n: int, latent_hw: list[tuple[int, int]], generator: torch.Generator | None = None):
    """Per-sample t = shift(sigmoid(N(0, 1))) for each latent size (lognorm sampling, train_eps 0)."""
    raw = torch.sigmoid(torch.randn(n, generator=generator))
    return torch.stack([shift_training_t(raw[i], h, w) for i, (h, w) in enumerate(latent_hw)])


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """x <- x + (t_next − t)·v, computed in float32 as the reference does."""
    return (x.float() + (t_next - t) * v.float()).to(v.dtype)
