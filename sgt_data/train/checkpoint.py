"""Resumable checkpoints: atomic folders, rotation, and the choice of where to resume from.

A checkpoint is `OUTPUT/checkpoints/step-0000042/` holding what `accelerate` saves (model, optimizer, scheduler,
per-process RNG states; sharded under FSDP), each rank's `ema-rank-NNNNN.pt`, and `trainer_state.json` (the
step, which is also the sampler position, and the recipe). It is written as `.tmp-step-0000042/` and renamed
when complete, so a crash mid-save never leaves a folder that looks resumable. Rotation deletes the oldest
complete checkpoints only after a new one exists.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{7,})$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    """Folder holding the run's checkpoints."""
    return Path(output_dir) / "checkpoints"


def step_name(step: int) -> str:
    """Folder name of the checkpoint taken after `step` optimizer steps."""
    return f"step-{step:07d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer_state.json), oldest first."""
    found = []
    folder = checkpoints_dir(output_dir)
    for path in folder.iterdir() if folder.is_dir() else []:
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def resume_from(output_dir: str | Path, resume: str) -> Path | None:
    """Which checkpoint to continue from, per `train.resume` (auto / never / a path); None = fresh start."""
    existing = list_checkpoints(output_dir)
    if resume == "auto":
        return existing[-1][1] if existing else None
    if resume == "never":
        if existing:
            raise FileExistsError(
                f"{output_dir} already holds checkpoints ({existing[-1][1].name}); train.resume=never refuses"
                " to mix runs: choose a new train.output_dir or set train.resume=auto"
            )
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"train.resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def rotate(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all); return what was deleted."""
    existing = list_checkpoints(output_dir)
    doomed = [p for _, p in existing[:-keep_last]] if keep_last else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def save(
    accelerator: Any, output_dir: str | Path, step: int, ema: Any, extra: dict[str, Any], keep_last: int
) -> Path:
    """Write the checkpoint of `step` atomically on every rank (a collective: all ranks must call it)."""
    folder = checkpoints_dir(output_dir)
    final = folder / step_name(step)
    tmp = folder / f".tmp-{step_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if ema is not None:
        ema.save(tmp, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "world_size": accelerator.num_processes, **extra}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        if final.exists():  # a rerun of the same step after a crash between rename and rotation
            shutil.rmtree(final)
        tmp.rename(final)
        rotate(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def prime_optimizer(optimizer: Any) -> None:
    """Create the optimizer's per-parameter state (zeros) with a step of learning rate 0 and zero gradients.

    Sharded (DCP) loading fills only the entries the live optimizer already has, so a fresh AdamW, whose
    moments do not exist before its first step, would silently resume with empty moments (seen under FSDP on
    2 GPUs: step 3 matched a straight run, step 4 did not). The loaded state replaces these zeros entirely.
    """
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer
    if inner.state:
        return
    lrs = [g["lr"] for g in inner.param_groups]
    for group in inner.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    inner.step()
    for group, lr in zip(inner.param_groups, lrs):
        group["lr"] = lr
        for p in group["params"]:
            p.grad = None


def load(accelerator: Any, path: Path, ema: Any, optimizer: Any = None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, RNG and EMA from `path`; return its trainer state."""
    state = json.loads((path / STATE_FILE).read_text())
    if ema is not None and not (path / f"ema-rank-{accelerator.process_index:05d}.pt").is_file():
        raise FileNotFoundError(
            f"{path}: no EMA state for rank {accelerator.process_index}; was EMA off then?"
        )
    if state.get("world_size") not in (None, accelerator.num_processes) and ema is not None:
        raise ValueError(
            f"{path} was written by {state['world_size']} processes; EMA shards need the same number to resume"
        )
    if optimizer is not None:
        prime_optimizer(optimizer)
    accelerator.load_state(str(path))
    if ema is not None:
        ema.load(path, accelerator.process_index)
    return state
