"""Actor pools for accelerator steps: compact transfers, CPU parts in the shard tasks, a queue that never runs dry.

`runner.py` sends each chunk's whole batch to an actor and waits for it before reading the next chunk. On one GPU
fed by a dozen shard tasks that is correct but wasteful: the actor receives every column (the encoded image and a
~10 MB decoded `_bgr` per SA-1B image) and does decode/resize/PNG work on its one CPU while the GPU idles. This
module is the drop-in improvement (see `process_chunks` and the note to the runner's owner at the end):

- *Split steps* (with `prepare`, `infer`, `finish`, `actor_inputs`, `actor_outputs`, e.g. `DepthTarget`): the shard
  task runs `prepare` (decode, resize to the model's grid), sends only `actor_inputs` to an actor (`infer`: the
  forward pass), merges `actor_outputs` back and runs `finish` (resize back, PNG). Other actor steps get the
  whole batch, as before.
- Each shard task keeps `prefetch` chunks in flight: while chunk n is on the accelerator, chunk n+1 is read and
  prepared and chunk n-1 is encoded. T shard tasks keep up to T x prefetch chunks queued at the actors.
- Actors are threaded (`actor_threads` calls at once), so one call's host work (unpickling, stacking, copies)
  overlaps another call's kernels; a task sends each chunk to the actor with the fewest of its own calls
  outstanding (rotated by the shard index) instead of blind round-robin.

Ray is imported only where actors exist, so the steps' unit tests and the local executor never pay for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

Batch = dict[str, list]
Journey = Generator[tuple[list, Batch], Any, Batch]


def is_actor_step(step: Any) -> bool:
    return bool(getattr(step, "actor", False) or getattr(step, "num_gpus", 0))


def is_split(step: Any) -> bool:
    """A step whose CPU parts (`prepare`, `finish`) run in the shard task and only `infer` in the actor."""
    return all(hasattr(step, a) for a in ("prepare", "infer", "finish", "actor_inputs", "actor_outputs"))


class PoolActor:
    """Ray actor body: loads a step once, then answers `call(batch)` (threaded: see `make_pools`)."""

    def __init__(self, step: Any):
        self.step = step
        if hasattr(step, "setup"):
            step.setup()

    def ready(self) -> bool:
        return True

    def call(self, batch: Batch) -> Batch:
        if is_split(self.step):
            out = self.step.infer(batch)
            return {c: out[c] for c in self.step.actor_outputs}
        return self.step(batch)


def pool_size(step: Any, cluster_gpus: float, concurrency: int | None = None) -> int:
    """Actors for `step`: `concurrency`, else the step's own, else GPUs / num_gpus, else 1."""
    size = concurrency or getattr(step, "concurrency", None)
    if size:
        return int(size)
    per = float(getattr(step, "num_gpus", 0) or 0)
    return max(1, int(cluster_gpus // per)) if per else 1


def make_pools(steps: list[Any], concurrency: int | None = None) -> dict[int, list]:
    """Start (and wait for) one pool of actors per actor step; {step index: [actor handles]}.

    Waiting for `ready` here makes a broken model fail at start, with its own traceback, before any shard runs.
    """
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    pools: dict[int, list] = {}
    for i, step in enumerate(steps):
        if not is_actor_step(step):
            continue
        per = float(getattr(step, "num_gpus", 0) or 0)
        if per > gpus:
            raise RuntimeError(
                f"{type(step).__name__} asks {per:g} GPU(s) per actor but the Ray cluster has {gpus:g}; "
                "set its num_gpus to 0 for CPU actors or add a GPU node"
            )
        if hasattr(step, "setup_prep"):
            step.setup_prep()  # cheap settings the shard tasks' `prepare` needs, computed once and shipped
        cls = ray.remote(
            num_cpus=float(getattr(step, "num_cpus", 1)),
            num_gpus=per,
            max_concurrency=int(getattr(step, "actor_threads", 1)),
        )(PoolActor)
        pools[i] = [cls.remote(step) for _ in range(pool_size(step, gpus, concurrency))]
    ray.get([a.ready.remote() for actors in pools.values() for a in actors])
    return pools


def _journey(batch: Batch, steps: list[Any], pools: dict[int, list]) -> Journey:
    """One chunk through all steps; suspends at each actor step with (actors, what to send), resumes on its answer."""
    for i, step in enumerate(steps):
        actors = pools.get(i)
        if not actors:
            batch = step(batch)
        elif is_split(step):
            batch = step.prepare(batch)
            answer = yield actors, {c: batch[c] for c in step.actor_inputs if c in batch}
            batch = step.finish({**batch, **answer})
        else:
            batch = yield actors, batch
    return batch


@dataclass
class _Chunk:
    journey: Journey
    ref: Any = None
    actor: Any = None
    result: Batch | None = None


@dataclass
class _Dispatch:
    """Per-shard-task view of the actors: outstanding calls per actor, rotated tie-break."""

    salt: int = 0
    load: dict[int, int] = field(default_factory=dict)

    def pick(self, actors: list) -> Any:
        n = len(actors)
        best = min(range(n), key=lambda k: (self.load.get(id(actors[k]), 0), (k - self.salt) % n))
        return actors[best]

    def advance(self, chunk: _Chunk, answer: Any) -> _Chunk:
        """Run the chunk's journey up to its next actor call (submitted) or to its end (result)."""
        try:
            actors, payload = chunk.journey.send(answer)
        except StopIteration as stop:
            chunk.ref, chunk.actor, chunk.result = None, None, stop.value
            return chunk
        chunk.actor = self.pick(actors)
        self.load[id(chunk.actor)] = self.load.get(id(chunk.actor), 0) + 1
        chunk.ref = chunk.actor.call.remote(payload)
        return chunk

    def complete(self, chunk: _Chunk) -> Batch:
        import ray

        while chunk.result is None:
            answer = ray.get(chunk.ref)
            self.load[id(chunk.actor)] -= 1
            self.advance(chunk, answer)
        return chunk.result


def process_chunks(
    chunks: Iterable[Batch],
    steps: list[Any],
    pools: dict[int, list] | None = None,
    salt: int = 0,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Yield each non-empty chunk after all steps, in input order, keeping `prefetch` chunks at the actors."""
    dispatch, queue = _Dispatch(salt=salt), deque()
    for chunk in chunks:
        if not chunk.get("key"):
            continue
        queue.append(dispatch.advance(_Chunk(_journey(chunk, steps, pools or {})), None))
        while queue and (len(queue) > prefetch or queue[0].result is not None):
            yield dispatch.complete(queue.popleft())
    while queue:
        yield dispatch.complete(queue.popleft())


# Note to the runner's owner: to use this module, in runner.py
#   - `_make_actor_pools(steps, opts)` -> `actor_pool.make_pools(steps, opts.actor_concurrency)`;
#   - in `process_shard`, replace the loop over `reader(task)` with
#         for out in actor_pool.process_chunks(reader(task), steps, actors, salt=task.index):
#             parts.append(drop_transient(out))
#     (the non-actor steps still need `_ready(step)` before it, as now).
