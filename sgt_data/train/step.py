"""One optimizer step and the learning-rate schedule: the numeric core of the loop, kept free of I/O.

Loss normalisation (see `sgt_data.models.base`): the port returns loss *sums* per micro-batch and says in
`batch["counts"]` how many elements each sum runs over. The step adds the counts of all its micro-batches on all
ranks (one all-gather, which also carries the micro-batch count), so each loss becomes a mean over the global
batch; it is multiplied by world size to undo the gradient averaging of DDP/FSDP, then by its recipe weight.

Ranks must run the same number of forward/backward passes (FSDP collectives are matched by call order). The
sampler gives every rank the same task pattern; if a port still groups a rank's samples into fewer micro-batches
than another rank, that rank repeats its last micro-batch with weight 0, keeping the collectives in step.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any


def lr_factor(step: int, warmup: int, max_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class StepResult:
    """What a step reports: per-loss sums over this rank's real micro-batches, the global counts, the norm."""

    names: list[str]
    local_sums: Any
    global_counts: Any
    grad_norm: float
    micro_batches: int


def loss_scales(
    names: list[str], weights: dict[str, float], global_counts: Any, world: int
) -> dict[str, float]:
    """Factor turning each loss sum into its weighted share of a global token mean (0 when nothing counted)."""
    return {
        n: (weights[n] * world / float(c)) if float(c) > 0 else 0.0
        for n, c in zip(names, global_counts.tolist())
    }


def _check_names(batches: list[dict], weights: dict[str, float]) -> None:
    unknown = sorted({n for b in batches for n in b["counts"] if n not in weights})
    if unknown:
        raise ValueError(
            f"the model returns loss(es) {', '.join(unknown)} without a weight; add them to the recipe's"
            f" loss_weights (it has: {', '.join(sorted(weights)) or 'none'})"
        )


def train_step(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    adapter: Any,
    batches: list[dict],
    weights: dict[str, float],
    clip: float,
    sharded: bool,
) -> StepResult:
    """Forward/backward every micro-batch of this rank, then clip and step the optimizer."""
    import torch

    _check_names(batches, weights)
    names = sorted(weights)
    counts = [float(sum(b["counts"].get(n, 0) for b in batches)) for n in names]
    local = torch.tensor([*counts, float(len(batches))], dtype=torch.float64, device=accelerator.device)
    table = accelerator.gather(local).view(accelerator.num_processes, -1)
    global_counts, passes = table[:, :-1].sum(0).cpu(), int(table[:, -1].max())
    scales = loss_scales(names, weights, global_counts, accelerator.num_processes)

    model.train()
    sums = torch.zeros(len(names), dtype=torch.float64, device=accelerator.device)
    zero = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for i in range(passes):
        real = i < len(batches)
        batch = batches[i] if real else batches[-1]
        last = i == passes - 1
        # DDP all-reduces only on the last pass; FSDP reduce-scatters every pass (no_sync would keep full grads).
        sync = nullcontext() if (last or sharded) else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                out = adapter.losses(model, batch)
            loss = sum(out[n] * scales[n] for n in out) * (1.0 if real else 0.0)
            accelerator.backward(loss)
        if real:
            sums += torch.stack([out[n].detach().double() if n in out else zero for n in names])
    norm = accelerator.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(names, sums, global_counts, float(norm), len(batches))


def global_means(accelerator: Any, result: StepResult) -> dict[str, float]:
    """Per-loss means over the global batch of the step (one all-reduce; call only on logging steps)."""

    total = accelerator.reduce(result.local_sums, reduction="sum").cpu()
    return {
        n: float(s) / float(c)
        for n, s, c in zip(result.names, total.tolist(), result.global_counts.tolist())
        if c > 0
    }
