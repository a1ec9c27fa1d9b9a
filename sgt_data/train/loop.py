"""`sgt-data train`: one linear loop, setup -> train -> save -> cleanup, on `accelerate`.

The loop knows the model only through the port's adapter (`sgt_data.models.base.ModelAdapter`): it builds the
model, prepares samples in DataLoader workers with the adapter's processor, groups each step's samples with
`micro_batches` and gets loss sums from `losses`. Everything else is here: fp32 master weights under bf16
autocast, exact seg:VQA mixing per optimizer step, clipping, warm-up + constant/cosine schedule, optional EMA,
metrics, atomic rotating checkpoints, exact resume, and a hard stop at `train.max_steps`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from sgt_data.config import ConfigError, to_dict
from sgt_data.train import checkpoint as ckpt
from sgt_data.train.data import StepDataset, step_loader, task_indexes
from sgt_data.train.ema import EMA
from sgt_data.train.metrics import Metrics
from sgt_data.train.mixing import RatioSampler, check_world
from sgt_data.train.recipe import Recipe, preflight
from sgt_data.train.step import global_means, lr_factor, train_step

log = logging.getLogger("sgt_data.train")


def resolve_adapter(name: str) -> Any:
    """The port's ADAPTER; `toy` is the loop's own tiny reference model (tests, smoke runs)."""
    if name == "toy":
        from sgt_data.train.toy import ADAPTER

        return ADAPTER
    from sgt_data.models.base import get_adapter

    return get_adapter(name)


def make_accelerator(recipe: Recipe, adapter: Any = None) -> Any:
    """An Accelerator per `distributed:`; the scheduler steps once per optimizer step whatever the world size.

    FSDP units are `distributed.fsdp_wrap`, else the adapter's `fsdp_wrap` class names, else a size policy.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, FullyShardedDataParallelPlugin

    # accelerate logs every file of every checkpoint at INFO; our metrics and progress bar already say it.
    for name in ("accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(name).setLevel(logging.WARNING)
    d = recipe.distributed
    kwargs: dict[str, Any] = {}
    if d.strategy == "fsdp":
        wrap = list(d.fsdp_wrap or getattr(adapter, "fsdp_wrap", None) or [])
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            sharding_strategy=d.fsdp_sharding,
            auto_wrap_policy="transformer_based_wrap" if wrap else "size_based_wrap",
            transformer_cls_names_to_wrap=wrap or None,
            use_orig_params=True,
            state_dict_type="SHARDED_STATE_DICT",
        )
    return Accelerator(
        mixed_precision="bf16" if recipe.train.mixed_precision == "bf16" else "no",
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=d.find_unused_parameters)],
        **kwargs,
    )


def fp32_master(model: Any) -> int:
    """Make every trainable parameter fp32 (AdamW on bf16 weights rounds most updates away); return how many."""
    import torch

    changed = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            changed += 1
    return changed


def _setup(recipe: Recipe, adapter: Any) -> dict[str, Any]:
    """Check, build and prepare everything; nothing here trains."""
    import torch
    from accelerate.utils import DistributedType, set_seed

    problems = preflight(recipe)
    if problems:
        raise ConfigError("recipe", problems)
    acc = make_accelerator(recipe, adapter)
    counts = recipe.task_counts()
    problems = check_world(counts, acc.num_processes)
    if problems:
        raise ConfigError("recipe", problems)
    out = Path(recipe.train.output_dir)
    resume = ckpt.resume_from(out, recipe.train.resume)  # before building anything: fail fast
    set_seed(recipe.train.seed)
    indexes = task_indexes(recipe.data.proxies, recipe.data.vqa, counts)
    sampler = RatioSampler(
        counts, {t: len(ix) for t, ix in indexes.items()}, recipe.train.seed, acc.num_processes
    )
    dataset = StepDataset(indexes, adapter.processor(recipe.model), recipe.data.row_group_cache)

    model = adapter.build(recipe.model, device=str(acc.device), for_training=True)
    cast = fp32_master(model)
    model = acc.prepare(model)
    params = [p for p in model.parameters() if p.requires_grad]
    o = recipe.optim
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    factor = lambda s: lr_factor(s, o.warmup_steps, recipe.train.max_steps, o.schedule, o.min_lr_ratio)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    optimizer, scheduler = acc.prepare(optimizer, scheduler)
    ema = EMA(model, recipe.train.ema_decay) if recipe.train.ema_decay > 0 else None

    start = 0
    if resume is not None:
        start = int(ckpt.load(acc, resume, ema, optimizer)["step"])
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        sizes = {t: len(ix) for t, ix in indexes.items()}
        where = f"resuming from {resume} at step {start}" if resume else "starting at step 0"
        log.info(
            "rows per task %s; per step %s over %d process(es); %s", sizes, counts, acc.num_processes, where
        )
        if cast:
            log.info("cast %d trainable parameter tensor(s) to fp32 master weights", cast)
    return {
        "acc": acc,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "ema": ema,
        "sampler": sampler,
        "dataset": dataset,
        "start": start,
        "sharded": acc.distributed_type == DistributedType.FSDP,
    }


def _record(
    recipe: Recipe, s: dict[str, Any], step: int, result: Any, lr: float, times: tuple[float, float]
) -> dict[str, Any]:
    """One metrics line; `times` = (seconds waiting for data, seconds for the whole step) on this rank."""
    means = global_means(s["acc"], result)
    record: dict[str, Any] = {"step": step, "lr": lr, "grad_norm": result.grad_norm}
    record["loss"] = sum(recipe.loss_weights[n] * v for n, v in means.items())
    record.update({f"loss/{n}": v for n, v in means.items()})
    record.update({f"samples/{t}": n for t, n in s["sampler"].counts.items()})
    record["micro_batches"] = result.micro_batches
    # data_seconds near 0 means the workers keep up; otherwise raise data.num_workers.
    record["data_seconds"], record["step_seconds"] = times
    return record


def _export_model(recipe: Recipe, s: dict[str, Any], adapter: Any) -> Any:
    """The model to hand to `save_pretrained` on the main process (None elsewhere).

    Unsharded: the trained module itself. FSDP: the full state dict is gathered to rank 0 (clean parameter names,
    CPU offload) and loaded strictly into a CPU copy the port builds, so the port's writer never sees FSDP
    wrappers or shards.
    """
    acc, model = s["acc"], s["model"]
    if not s["sharded"]:
        return acc.unwrap_model(model) if acc.is_main_process else None
    state = acc.get_state_dict(model)  # collective: every rank takes part
    if not acc.is_main_process:
        return None
    copy = adapter.build(recipe.model, device="cpu", for_training=False)
    copy.load_state_dict(state, strict=True)
    return copy


def _export(recipe: Recipe, s: dict[str, Any], adapter: Any, name: str) -> None:
    """Write the model in the port's official layout to OUTPUT/name (written aside, then renamed)."""
    dest = Path(recipe.train.output_dir) / name
    tmp = dest.with_name(f".tmp-{name}")
    model = _export_model(recipe, s, adapter)
    if model is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        adapter.save_pretrained(model, str(tmp))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    s["acc"].wait_for_everyone()


def train(recipe: Recipe, adapter: Any = None) -> Path:
    """Run the recipe to `train.max_steps` (resuming per `train.resume`); return the output folder."""
    from accelerate.utils import send_to_device

    adapter = adapter or resolve_adapter(recipe.model.name)
    s = _setup(recipe, adapter)
    acc, t = s["acc"], recipe.train
    out = Path(t.output_dir)
    metrics = Metrics(out, acc.is_main_process, s["start"], t.max_steps, t.tensorboard, t.progress)
    extra = {"recipe": to_dict(recipe), "samples_per_step": s["sampler"].counts}
    loader = step_loader(
        s["dataset"],
        s["sampler"],
        s["start"],
        t.max_steps,
        acc.process_index,
        recipe.data.num_workers,
        recipe.data.prefetch_factor,
        t.seed,
    )
    try:
        for step in range(s["start"], t.max_steps):
            began = time.perf_counter()
            samples = [item["sample"] for item in next(loader)]
            waited = time.perf_counter() - began
            batches = [send_to_device(b, acc.device) for b in adapter.micro_batches(samples, recipe.model)]
            result = train_step(
                acc,
                s["model"],
                s["optimizer"],
                adapter,
                batches,
                recipe.loss_weights,
                recipe.optim.clip_grad_norm,
                s["sharded"],
            )
            lr = s["scheduler"].get_last_lr()[0]  # the lr this step used
            s["scheduler"].step()
            if s["ema"] is not None:
                s["ema"].update()
            done = step + 1
            if done % t.log_every == 0 or done == t.max_steps:
                metrics.log(_record(recipe, s, done, result, lr, (waited, time.perf_counter() - began)))
            metrics.advance()
            if done == t.max_steps or (t.save_every and done % t.save_every == 0):
                ckpt.save(acc, out, done, s["ema"], extra, t.keep_last)
        if t.save_final:
            _export(recipe, s, adapter, "final")
            if s["ema"] is not None:
                with s["ema"].swapped_in():
                    _export(recipe, s, adapter, "final-ema")
    finally:
        metrics.close()
        acc.end_training()
    return out
