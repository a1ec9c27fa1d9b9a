"""Multi-GPU runs of the loop through `accelerate launch` (skipped without 2 CUDA devices).

Straight 4 steps vs 2 steps + restart + 2 steps under DDP and FSDP, with EMA and data workers: the losses must
be identical (the sampler position, model, optimizer, scheduler and RNG all come back), and the FSDP export
must produce the port's layout on rank 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.built import write_fixture_shards, write_recipe

pytestmark = pytest.mark.gpu


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def _launch(recipe: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "sgt_data.cli", "train", str(recipe), *overrides, "--log-level", "WARNING"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpu_resume_is_exact(strategy, tmp_path):
    proxy, vqa = write_fixture_shards(tmp_path / "shards", n_proxy=40, n_vqa=24)
    recipe = write_recipe(tmp_path / "r.yaml", proxy, vqa, tmp_path / "unused", train={"ema_decay": 0.9})
    common = [f"distributed.strategy={strategy}", "train.mixed_precision=bf16", "mixing.samples_per_step=12"]
    common += ["data.num_workers=2", "optim.schedule=constant"]
    a, b = tmp_path / "a", tmp_path / "b"
    _launch(recipe, *common, f"train.output_dir={a}")
    _launch(recipe, *common, f"train.output_dir={b}", "train.max_steps=2", "train.save_final=false")
    _launch(recipe, *common, f"train.output_dir={b}")
    assert _losses(a) == _losses(b)
    assert (a / "final" / "model.safetensors").is_file() and (a / "final-ema" / "model.safetensors").is_file()
    assert {p.name for p in (a / "checkpoints" / "step-0000004").glob("ema-rank-*.pt")} == {
        "ema-rank-00000.pt",
        "ema-rank-00001.pt",
    }
