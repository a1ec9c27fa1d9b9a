"""The training recipe: what `recipes/*.yaml` may contain, with a docstring per field (shown by `--help`).

A recipe has seven blocks: `model` (the port's `ModelConfig`), `data`, `mixing`, `loss_weights`, `optim`,
`train`, `distributed`. `load_recipe` fills them from YAML plus `key=value` overrides through `sgt_data.config`,
so every bad key is reported at once. `Recipe.validate` adds the cross-field rules that need no filesystem;
`preflight` adds the ones that do (checkpoint and data folders exist), so `train validate` can run both and
`train` refuses to start before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Literal

from sgt_data.config import ConfigError, field_docs, load
from sgt_data.models.base import GEN_TASKS, TASKS, ModelConfig

INITS = ("pretrained", "random")


@dataclass
class DataConfig:
    """The `data:` block: which shard folders feed which task, and how they are read."""

    proxies: list[str] = field(default_factory=list)
    """Proxy shard folders written by `sgt-data build proxies` (one folder serves `seg`, `edge` and `depth`)."""
    vqa: list[str] = field(default_factory=list)
    """VQA shard folders written by `sgt-data build llava-ov`."""
    num_workers: int = 2
    """DataLoader worker processes that decode and prepare samples in parallel (0 = in the main process)."""
    prefetch_factor: int = 4
    """Samples each worker prepares ahead of the loop (only with num_workers > 0)."""
    row_group_cache: int = 4
    """Parquet row groups each worker keeps decoded in memory (LRU), so neighbouring rows are read once."""


@dataclass
class MixingConfig:
    """The `mixing:` block: the task ratio, defined as samples per optimizer step."""

    ratio: dict[str, int] = field(default_factory=lambda: {"seg": 2, "vqa": 1})
    """Samples of each task per optimizer step, as integer proportions ({seg: 2, vqa: 1} = the paper's 2:1).
    Tasks: seg, edge, depth (proxy shards) and vqa. A task with 0 is not trained."""
    samples_per_step: int = 60
    """Global samples per optimizer step (all ranks and micro-batches together). Each task gets exactly
    samples_per_step * ratio / sum(ratio) samples in every step, so this must be a multiple of sum(ratio),
    and each task's count a multiple of the number of processes."""


@dataclass
class OptimConfig:
    """The `optim:` block: AdamW on fp32 master weights and the learning-rate schedule."""

    lr: float = 1e-4
    """Peak learning rate (after warm-up)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this value every step (0 = no clipping; the norm is still logged)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to `lr` over this many optimizer steps."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: keep `lr` (constant), or cosine-decay it to lr * min_lr_ratio at train.max_steps."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule as a fraction of `lr`."""


@dataclass
class TrainConfig:
    """The `train:` block: length, precision, logging, checkpoints, EMA."""

    output_dir: str = "runs/sgt"
    """Run folder: checkpoints/, metrics.jsonl, recipe.yaml, tensorboard/, final/ (and final-ema/)."""
    max_steps: int = 1000
    """Optimizer steps to train; the run stops there and the schedule ends there."""
    seed: int = 0
    """Seeds the data order, per-sample randomness and torch's generators (identical on every rank)."""
    mixed_precision: Literal["bf16", "fp32"] = "bf16"
    """bf16 autocast over fp32 master weights, or `fp32` for full fp32 (used by exactness tests)."""
    log_every: int = 1
    """Write metrics every N steps (one small all-reduce each time)."""
    save_every: int = 1000
    """Write a resumable checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints to keep; older ones are deleted after a new one is complete (0 = keep all)."""
    resume: str = "auto"
    """`auto`: continue from the newest checkpoint in output_dir if there is one; `never`: refuse to start when
    output_dir already holds checkpoints; or the path of a checkpoint folder to continue from."""
    ema_decay: float = 0.0
    """EMA of the trainable weights with this decay (e.g. 0.9999), kept on the device next to each rank's
    parameter shard; 0 disables it. With EMA, the EMA weights are also exported to final-ema/."""
    save_final: bool = True
    """Export the trained model with the port's save_pretrained to output_dir/final at the end."""
    tensorboard: bool = False
    """Also write metrics to output_dir/tensorboard (needs the tensorboard package)."""
    progress: bool = True
    """Show a progress bar on the main process."""


@dataclass
class DistributedConfig:
    """The `distributed:` block: how `accelerate launch` processes share the work."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """`auto` follows `accelerate launch` (one process = plain, several = DDP); `fsdp` shards parameters,
    gradients and optimizer state (FSDP with fp32 master shards and bf16 compute)."""
    fsdp_sharding: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD"] = "FULL_SHARD"
    """FSDP sharding strategy."""
    fsdp_wrap: list[str] = field(default_factory=list)
    """Module class names that become FSDP units (e.g. the port's decoder layer); empty = the adapter's
    `fsdp_wrap` attribute if it has one."""
    find_unused_parameters: bool = True
    """DDP: allow parameters that a micro-batch does not use (e.g. the generation expert on VQA batches)."""


@dataclass
class Recipe:
    """A complete training recipe (`recipes/*.yaml`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The port and the checkpoint it starts from (see `model.*`)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shard folders and loading (see `data.*`)."""
    mixing: MixingConfig = field(default_factory=MixingConfig)
    """Task ratio per optimizer step (see `mixing.*`)."""
    loss_weights: dict[str, float] = field(default_factory=lambda: {"ce": 1.0, "mse": 1.0})
    """Weight of each loss the port returns (e.g. ce: 1.5, mse: 1.0 for BAGEL); each loss is first made a
    token mean over the global batch of the step, then weighted. Every returned loss needs a weight."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule (see `optim.*`)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run length, precision, logging, checkpoints (see `train.*`)."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Multi-GPU strategy (see `distributed.*`)."""

    def validate(self) -> list[str]:
        """Cross-field rules that need no filesystem; every problem is returned."""
        return [*_check_mixing(self), *_check_numbers(self), *_check_model(self.model)]

    def task_counts(self) -> dict[str, int]:
        """Samples of each trained task per optimizer step (exact integers once `validate` passed)."""
        ratio = {t: r for t, r in self.mixing.ratio.items() if r > 0}
        total = sum(ratio.values())
        return {t: self.mixing.samples_per_step * r // total for t, r in ratio.items()}


def _check_mixing(recipe: Recipe) -> list[str]:
    problems: list[str] = []
    mix, data = recipe.mixing, recipe.data
    unknown = [t for t in mix.ratio if t not in TASKS]
    if unknown:
        problems.append(f"mixing.ratio: unknown task(s) {', '.join(unknown)} (tasks: {', '.join(TASKS)})")
    if any(r < 0 for r in mix.ratio.values()):
        problems.append("mixing.ratio: proportions must be >= 0")
    total = sum(r for r in mix.ratio.values() if r > 0)
    if total == 0:
        problems.append("mixing.ratio: at least one task needs a proportion > 0")
    elif mix.samples_per_step <= 0 or mix.samples_per_step % total:
        near = max(total, round(mix.samples_per_step / total) * total)
        problems.append(
            f"mixing.samples_per_step: {mix.samples_per_step} is not a positive multiple of sum(ratio) = {total},"
            f" so the ratio cannot hold exactly in every step (try {near})"
        )
    active = [t for t, r in mix.ratio.items() if r > 0]
    if any(t in GEN_TASKS for t in active) and not data.proxies:
        problems.append("data.proxies: empty, but mixing.ratio trains a proxy task; list proxy shard folders")
    if "vqa" in active and not data.vqa:
        problems.append("data.vqa: empty, but mixing.ratio trains vqa; list VQA shard folders")
    return problems


def _check_numbers(recipe: Recipe) -> list[str]:
    o, t, d = recipe.optim, recipe.train, recipe.data
    rules = [
        (o.lr > 0, f"optim.lr: must be > 0, got {o.lr}"),
        (
            len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
            f"optim.betas: two values in [0, 1), got {o.betas}",
        ),
        (o.clip_grad_norm >= 0, "optim.clip_grad_norm: must be >= 0"),
        (0 <= o.warmup_steps, "optim.warmup_steps: must be >= 0"),
        (0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio: must be in [0, 1]"),
        (t.max_steps > 0, f"train.max_steps: must be > 0, got {t.max_steps}"),
        (t.log_every > 0, "train.log_every: must be > 0"),
        (t.save_every >= 0 and t.keep_last >= 0, "train.save_every / train.keep_last: must be >= 0"),
        (0 <= t.ema_decay < 1, f"train.ema_decay: must be in [0, 1), got {t.ema_decay}"),
        (d.num_workers >= 0 and d.prefetch_factor > 0, "data.num_workers >= 0 and data.prefetch_factor > 0"),
        (d.row_group_cache > 0, "data.row_group_cache: must be > 0"),
        (all(w >= 0 for w in recipe.loss_weights.values()), "loss_weights: weights must be >= 0"),
    ]
    return [msg for ok, msg in rules if not ok]


def _check_model(model: ModelConfig) -> list[str]:
    problems = []
    if model.init not in INITS:
        problems.append(f"model.init: must be one of {', '.join(INITS)}, got {model.init!r}")
    if model.init == "pretrained" and not model.path:
        problems.append(
            "model.path: required with init: pretrained (or set model.init=random to train from scratch)"
        )
    return problems


def preflight(recipe: Recipe) -> list[str]:
    """Filesystem checks done before anything is built: a wrong path must stop the run, not start from noise."""
    problems: list[str] = []
    m = recipe.model
    if m.init == "pretrained" and m.path and not Path(m.path).exists():
        problems.append(
            f"model.path: {m.path} does not exist; refusing to train (init: random is the only way to start"
            " from random weights)"
        )
    if m.overlay and not Path(m.overlay).exists():
        problems.append(f"model.overlay: {m.overlay} does not exist")
    active = {t for t, r in recipe.mixing.ratio.items() if r > 0}
    for key, used in (("proxies", bool(active & set(GEN_TASKS))), ("vqa", "vqa" in active)):
        for folder in getattr(recipe.data, key) if used else []:
            found = sorted(Path(folder).glob("shard-*.parquet"))
            if not found:
                problems.append(
                    f"data.{key}: {folder} holds no shard-*.parquet (build it with sgt-data build)"
                )
            elif key == "proxies":
                import pyarrow.parquet as pq

                columns = set(pq.read_schema(found[0]).names)
                for task in sorted(active & set(GEN_TASKS) - columns):
                    problems.append(
                        f"data.proxies: {folder} has no {task} targets (mixing.ratio trains {task}); build it "
                        f"with `sgt-data build proxies --level {task}`, or drop {task} from mixing.ratio"
                    )
    resume = recipe.train.resume
    if resume not in ("auto", "never") and not Path(resume).is_dir():
        problems.append(f"train.resume: checkpoint folder {resume} does not exist")
    return problems


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML with overrides; ConfigError lists every problem (schema and cross-field) at once."""
    return load(Recipe, path, overrides)


def describe(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every field, nested blocks expanded, for `sgt-data train --help`."""
    rows: list[tuple[str, str, str]] = []
    docs = field_docs(cls)
    for f in fields(cls):
        key = prefix + f.name
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            rows.extend(describe(type(default), key + "."))
        else:
            rows.append((key, repr(default), docs.get(f.name, "")))
    return rows


__all__ = ["ConfigError", "Recipe", "describe", "load_recipe", "preflight"]
