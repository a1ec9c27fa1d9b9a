"""The contract between a model port and `sgt-data train` / `sgt-data infer`.

A model port lives in `sgt_data/models/<name>/` and exposes `ADAPTER` (an instance of a class that satisfies
`ModelAdapter`) from `sgt_data/models/<name>/adapter.py`. The training loop and the inference front-end only
talk to that object, so a new architecture plugs in without touching the loop.

Tasks. A training row comes from our shards and is routed by task name:
- generative proxy tasks `seg`, `edge`, `depth`: row has `image` ({bytes, path}), the target column of the same
  name ({bytes, path}, a PNG) and `prompt_<task>` (the instruction);
- `vqa`: row has `image` ({bytes, path} or None), `conversations` ([{from, value}]).

Loss normalisation. `losses()` returns *sums* over the micro-batch, and `pack()` reports in `batch["counts"]`
how many elements each sum runs over (known before the forward pass, e.g. the number of CE target tokens). The
loop adds the counts of every micro-batch of the optimizer step on every rank, and divides each sum by that
global count: the loss is then a true token mean over the global batch whatever the accumulation or world size,
and the per-task weights in the recipe mean what they say.

What the loop does around a port (so ports need not): it moves each micro-batch's tensors to the device, runs
`losses()` under bf16 autocast with fp32 master weights, and `losses()` must call the root module (`model(...)`)
so DDP/FSDP hooks fire. Under FSDP, the final export builds a CPU copy with `build(cfg, device="cpu",
for_training=False)`, loads the gathered full state dict into it strictly, then calls `save_pretrained`: that
build must produce the same state-dict keys as the training model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

GEN_TASKS = ("seg", "edge", "depth")
TASKS = (*GEN_TASKS, "vqa")


@dataclass
class ModelConfig:
    """The `model:` block of a recipe."""

    name: str = "bagel"
    """Which port: `bagel` or `omnigen2`."""
    path: str | None = None
    """Official checkpoint folder (e.g. BAGEL-7B-MoT, or the OmniGen2 layout). Required unless init == 'random'."""
    init: str = "pretrained"
    """`pretrained` loads `path` strictly; `random` builds the architecture from `config` with random weights."""
    config: str | None = None
    """For init == 'random': a preset name (e.g. `tiny`) or a folder holding the config files and tokenizer."""
    overlay: str | None = None
    """Optional fine-tuned weights laid over `path` (e.g. Two-hot/SGT-BAGEL or SGT-Gen2's transformer/)."""
    dtype: str = "bfloat16"
    """Compute dtype under autocast; master weights stay fp32 while training."""
    options: dict[str, Any] = field(default_factory=dict)
    """Port-specific knobs (token budgets, image sizes, frozen parts, gradient checkpointing, attention kernel)."""


class ModelAdapter(Protocol):
    """What the loop and the inference front-end need from a port."""

    name: str

    def build(self, cfg: ModelConfig, *, device: str = "cpu", for_training: bool = True) -> Any:
        """Return the model (an nn.Module holding every trainable part; frozen parts may live inside it)."""

    def processor(self, cfg: ModelConfig) -> Any:
        """A picklable CPU-side object with `prepare(row, task, seed) -> sample` for DataLoader workers:
        decode the image bytes, tokenize, build tensors. `seed` makes every random choice per sample."""

    def micro_batches(self, samples: list[dict], cfg: ModelConfig) -> list[dict]:
        """Group one optimizer step's prepared samples (of one rank) into micro-batches; each has `counts`."""

    def losses(self, model: Any, batch: dict) -> dict[str, Any]:
        """Forward one micro-batch; return unweighted loss *sums* keyed like `batch['counts']` (e.g. ce, mse)."""

    def save_pretrained(self, model: Any, dest: str) -> None:
        """Write the model in its official folder layout, so `build(path=dest)` and `infer` can load it."""

    # Inference entry points used by `sgt-data infer {und,t2i,seg}` (model from build(for_training=False)).
    def und(self, model: Any, image: Any | None, question: str, *, max_new_tokens: int = 256) -> str:
        """Answer `question` about a PIL image (or None for text only); greedy decode with a KV cache."""

    def t2i(
        self, model: Any, prompt: str, *, width: int, height: int, steps: int, seed: int, **cfg: Any
    ) -> Any:
        """Generate a PIL image from text (Euler flow sampling with the port's CFG options)."""

    def seg(self, model: Any, image: Any, prompt: str, *, steps: int, seed: int, **cfg: Any) -> Any:
        """Image -> colour segmentation map (PIL, at the input's size) with the training conditioning."""


PORTS = ("bagel", "omnigen2")


def get_adapter(name: str) -> ModelAdapter:
    """Import `sgt_data.models.<name>.adapter` lazily and return its ADAPTER."""
    if name not in PORTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(PORTS)}")
    module = importlib.import_module(f"sgt_data.models.{name}.adapter")
    return module.ADAPTER
