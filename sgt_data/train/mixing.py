"""The ratio sampler: which samples every optimizer step trains on, exactly and deterministically.

Definition. The seg:VQA ratio is a number of *samples per optimizer step*: with `counts = {seg: 40, vqa: 20}`
every step trains on exactly 40 proxy samples and 20 VQA samples, summed over all ranks and micro-batches.

Order. Task `t` is drawn as a stream: its k-th sample overall (k = step * counts[t] + j) is position k mod N_t
of epoch k // N_t, where each epoch is a fresh seeded permutation of the task's N_t rows. The plan of a step is
therefore a pure function of (seed, step, counts, dataset sizes): there is no hidden iterator state, resuming
needs only the step number, and the global data does not depend on the world size.

Ranks. Each task's samples of a step are dealt to ranks in equal contiguous parts, and every rank lays its part
out in the same task pattern (seg, seg, vqa, seg, seg, vqa, ...), so micro-batch i holds the same tasks on every
rank: no rank runs a module the others skip (the FSDP desync of the reference sampler).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True, order=True)
class Draw:
    """One sample of a step: task, row index in the task's dataset, and the seed of its random choices."""

    task: str
    index: int
    seed: int


def task_id(task: str) -> int:
    """A stable integer per task name (Python's hash() is salted per process, so it is not used)."""
    return int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")


@lru_cache(maxsize=16)
def _permutation(seed: int, task: str, epoch: int, size: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, task_id(task), epoch])))
    return rng.permutation(size)


def sample_seed(seed: int, task: str, k: int) -> int:
    """Seed for the k-th sample of `task` (prompt choice, crops, noise in `prepare`); stable across resumes."""
    return int(np.random.SeedSequence([seed, task_id(task), k, 1]).generate_state(1)[0])


def task_stream(seed: int, task: str, size: int, start: int, n: int) -> list[Draw]:
    """Samples start .. start+n-1 of `task`'s stream: epoch-wise seeded permutations of range(size)."""
    if size <= 0:
        raise ValueError(f"task {task!r} has no usable rows (status == 'ok'); check its shard folders")
    out = []
    for k in range(start, start + n):
        epoch, pos = divmod(k, size)
        out.append(Draw(task, int(_permutation(seed, task, epoch, size)[pos]), sample_seed(seed, task, k)))
    return out


def task_pattern(counts: dict[str, int]) -> list[str]:
    """Spread tasks evenly in proportion to `counts`: {seg: 4, vqa: 2} -> seg, vqa, seg, seg, vqa, seg.

    Slot j of task t sits at (j + 0.5) / counts[t]; sorting those positions interleaves the tasks as smoothly
    as the counts allow, with ties broken by task name so the result never depends on dict order.
    """
    slots = [((j + 0.5) / n, t) for t, n in counts.items() for j in range(n)]
    return [t for _, t in sorted(slots)]


def check_world(counts: dict[str, int], world_size: int) -> list[str]:
    """Problems that stop `counts` from being split evenly over `world_size` ranks (empty list = fine)."""
    bad = [t for t, n in counts.items() if n % world_size]
    if not bad:
        return []
    unit = np.gcd.reduce([n for n in counts.values() if n]) if any(counts.values()) else 1
    base = {t: n // unit for t, n in counts.items()}
    k = next(k for k in range(1, world_size + 1) if all(k * b % world_size == 0 for b in base.values()))
    step = k * sum(base.values())
    return [
        f"mixing.samples_per_step: per-step counts {counts} cannot be split evenly over {world_size} processes"
        f" ({', '.join(bad)} not divisible by {world_size}); use a multiple of {step}"
    ]


class RatioSampler:
    """The plan of every optimizer step: `step_plan(step, rank)` -> this rank's draws, in micro-batch order."""

    def __init__(self, counts: dict[str, int], sizes: dict[str, int], seed: int, world_size: int = 1):
        problems = check_world(counts, world_size)
        if problems:
            raise ValueError(problems[0])
        missing = [t for t in counts if t not in sizes]
        if missing:
            raise ValueError(f"no dataset for task(s) {', '.join(missing)}")
        self.counts = dict(sorted(counts.items()))
        self.sizes = dict(sizes)
        self.seed = seed
        self.world_size = world_size
        self.per_rank = {t: n // world_size for t, n in self.counts.items()}
        self.pattern = task_pattern(self.per_rank)

    @property
    def samples_per_rank(self) -> int:
        """Draws per rank per step."""
        return len(self.pattern)

    def global_plan(self, step: int) -> dict[str, list[Draw]]:
        """Every draw of `step` over all ranks, per task, in stream order."""
        return {
            t: task_stream(self.seed, t, self.sizes[t], step * n, n) if n else []
            for t, n in self.counts.items()
        }

    def step_plan(self, step: int, rank: int = 0) -> list[Draw]:
        """This rank's draws of `step`: its contiguous share of each task, laid out in the shared pattern."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world size {self.world_size}")
        shares = {}
        for t, draws in self.global_plan(step).items():
            n = self.per_rank[t]
            shares[t] = iter(draws[rank * n : (rank + 1) * n])
        return [next(shares[t]) for t in self.pattern]

    def iter_draws(self, start_step: int, stop_step: int, rank: int = 0) -> Iterator[Draw]:
        """Draws of steps start_step .. stop_step-1 for `rank`, flattened (the DataLoader's index stream)."""
        for step in range(start_step, stop_step):
            yield from self.step_plan(step, rank)
