"""The runner, the one place that knows Ray (with `actor_pool.py`): shard tasks -> steps -> shards, resumably.

A build is a list of `ShardTask`s (one output shard each, deterministic index) plus a `reader` that turns a task
into chunks of rows, plus a list of steps (design.md §4). Each shard is one Ray task: it reads its chunks, runs the
steps on each chunk, drops transient `_` columns, writes the shard atomically, then its stats and completion
marker. A rerun skips every shard with a marker; `overwrite=True` redoes all. Steps that declare `num_gpus` (or
`actor = True`) run in a pool of Ray actors, loaded once per actor (`actor_pool.py`); shard tasks keep chunks
queued at them and do the CPU parts (decode, resize, PNG) themselves, so the CPUs overlap the accelerator.

Ray is imported lazily, so `sgt-data --help` and the unit tests of the steps never pay for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgt_data import actor_pool, shards
from sgt_data.errors import PlanChanged

Batch = dict[str, list]

# Below this much input, starting Ray (5-12 s on a small machine) costs more than the work: run in-process.
LOCAL_MAX_BYTES = 64 << 20


@dataclass
class ShardTask:
    """One output shard: its index and whatever the reader needs to produce its rows (picklable)."""

    index: int
    inputs: Any
    rows_hint: int = 0
    bytes_hint: int = 0
    fingerprint: str | None = None
    """Set by `run`: digest of the plan + this task's inputs, recorded in the shard's completion marker."""


@dataclass
class RunOptions:
    address: str | None = None
    num_cpus: int | None = None
    overwrite: bool = False
    verbose: bool = False
    progress: bool = True
    actor_concurrency: int | None = None
    executor: str = "auto"


@dataclass
class RunResult:
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    rows: int = 0


def add_runner_arguments(parser) -> None:
    """The runner options every `build` command shares."""
    g = parser.add_argument_group("runner")
    g.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    g.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    g.add_argument("--overwrite", action="store_true", help="redo every shard, even completed ones")
    g.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument(
        "--executor",
        choices=("auto", "ray", "local"),
        default="auto",
        help="ray: shards in parallel on Ray; local: in this process; auto (default): local for jobs under "
        f"{LOCAL_MAX_BYTES >> 20} MB of input when no cluster is given (Ray's start-up would dominate), else ray",
    )


def options_from_args(args) -> RunOptions:
    return RunOptions(
        address=getattr(args, "address", None),
        num_cpus=getattr(args, "num_cpus", None),
        overwrite=getattr(args, "overwrite", False),
        verbose=getattr(args, "verbose", False),
        progress=getattr(args, "progress", True),
        executor=getattr(args, "executor", "auto"),
    )


# ---------------------------------------------------------------- per-shard work (runs inside Ray workers)


def _ready(step: Any) -> Any:
    """Call a step's heavy `setup()` once per step object: once per task in Ray workers (steps arrive pickled
    with each task), once per run in the local executor (the same objects serve every shard)."""
    if not getattr(step, "_sgt_ready", False):
        if hasattr(step, "setup"):
            step.setup()
        step._sgt_ready = True
    return step


def drop_transient(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def name_errors(batch: Batch) -> Batch:
    """Prefix each error with its sample key when the step's message does not name it (errors name the input)."""
    errors = batch.get("error")
    if errors:
        batch["error"] = [
            e if e is None or key in e else f"{key}: {e}" for key, e in zip(batch["key"], errors, strict=True)
        ]
    return batch


def limit_threads() -> None:
    """One shard task = one CPU: stop OpenCV's own thread pool from oversubscribing the cores Ray hands out."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a core dependency
        pass


def process_shard(
    task: ShardTask,
    reader: Callable[[ShardTask], Iterator[Batch]],
    steps: list[Any],
    columns: list[str],
    out_dir: str,
    actors: dict[int, list] | None = None,
) -> dict:
    """Read, transform and write one shard; returns its stats. Pure Python: also used by the plain-loop path."""
    started = time.time()
    for i, step in enumerate(steps):
        if not (actors and i in actors):
            _ready(step)
    parts = [
        name_errors(drop_transient(out))
        for out in actor_pool.process_chunks(reader(task), steps, actors, salt=task.index)
    ]
    rows: Batch = {c: [v for p in parts for v in p.get(c, [None] * len(p["key"]))] for c in columns}
    if "key" not in rows or not parts:
        rows = {c: [] for c in columns}
    table = shards.to_table(rows, columns)
    seconds = {"seconds": round(time.time() - started, 3)}
    return shards.finish_shard(Path(out_dir), task.index, table, seconds, fingerprint=task.fingerprint)


def _process_shard_in_worker(*args: Any) -> dict:
    limit_threads()
    return process_shard(*args)


# ---------------------------------------------------------------- driver side


def _quiet_env(local: bool) -> None:
    # A cluster we start ourselves stays on loopback and needs no auth token file.
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def init_ray(opts: RunOptions) -> bool:
    """Start (or join) Ray unless already initialised; returns True when we started it (and must stop it)."""
    _quiet_env(local=opts.address is None)
    import ray

    if ray.is_initialized():
        return False
    level = logging.INFO if opts.verbose else logging.WARNING
    kwargs: dict[str, Any] = dict(
        logging_level=level, log_to_driver=opts.verbose, include_dashboard=False, configure_logging=True
    )
    if opts.address:
        ray.init(address=opts.address, **kwargs)
    else:
        ray.init(num_cpus=opts.num_cpus, **kwargs)
    return True


def choose_executor(todo: list[ShardTask], steps: list[Any], opts: RunOptions) -> str:
    """`local` for small jobs without a cluster and without actor steps; `ray` otherwise (or as asked)."""
    if opts.executor != "auto":
        return opts.executor
    if opts.address or any(actor_pool.is_actor_step(s) for s in steps):
        return "ray"
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return "ray"
    small = sum(t.bytes_hint for t in todo) < LOCAL_MAX_BYTES and all(t.bytes_hint > 0 for t in todo)
    return "local" if small or (opts.num_cpus == 1) else "ray"


def run(
    tasks: list[ShardTask],
    reader: Callable[[ShardTask], Iterator[Batch]],
    steps: list[Any],
    columns: list[str],
    out_dir: str | Path,
    opts: RunOptions,
    plan: Any = None,
    exclusive: bool = True,
) -> RunResult:
    """Run every task not yet completed (all with `overwrite`); shards are written by the tasks.

    `plan` (the resolved spec, levels, inputs: plain data) goes into every shard's fingerprint. With `exclusive`,
    the folder holds this plan's shards only: shards of other indices are stale (from another sharding) and are
    refused, or deleted with `overwrite`. Without it (incremental builds of subsets, e.g. `build sam --shards`),
    other shards are left alone."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".shard-*.tmp-*"):  # half-written by a killed run; never a completed shard
        stale.unlink(missing_ok=True)
    result = RunResult()
    stamp(tasks, steps, columns, plan)
    check_plan(out, tasks, opts.overwrite, exclusive)
    todo = []
    for task in tasks:
        if not opts.overwrite and shards.is_complete(out, task.index):
            result.skipped.append(task.index)
        else:
            (out / "completions" / shards.shard_stem(task.index)).unlink(missing_ok=True)
            todo.append(task)
    if not todo:
        return result
    started = time.time()
    bar = _progress(sum(t.rows_hint for t in todo), opts.progress)
    run_tasks = _run_local if choose_executor(todo, steps, opts) == "local" else _run_on_ray
    for task, stats in run_tasks(todo, reader, steps, columns, str(out), opts):
        result.written.append(task.index)
        result.rows += stats["rows"]
        if bar is not None:
            bar.update(stats["rows"])
    if bar is not None:
        bar.close()
    result.seconds = time.time() - started
    return result


def _plain(value: Any) -> Any:
    """JSON-able view of a step's settings (loaded models and other objects are left out)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return None


def stamp(tasks: list[ShardTask], steps: list[Any], columns: list[str], plan: Any) -> None:
    """Give every task its fingerprint: the plan, the steps' settings, the columns and the task's own inputs."""
    import hashlib
    import json

    recipe = {
        "plan": _plain(plan),
        "columns": list(columns),
        "steps": [
            [type(s).__name__, {k: _plain(v) for k, v in sorted(vars(s).items()) if not k.startswith("_")}]
            for s in steps
        ],
    }
    base = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for task in tasks:
        h = base.copy()
        h.update(repr((task.index, task.rows_hint, task.bytes_hint, task.inputs)).encode())
        task.fingerprint = h.hexdigest()[:24]


def check_plan(out: Path, tasks: list[ShardTask], overwrite: bool, exclusive: bool) -> None:
    """Refuse (or, with `overwrite`, clear) completed shards that another plan produced."""
    wanted = {t.index: t.fingerprint for t in tasks}
    stale = sorted(i for i in shards.shard_indices(out) if i not in wanted) if exclusive else []
    changed = sorted(
        i
        for i, fp in wanted.items()
        if shards.is_complete(out, i) and shards.marker_fingerprint(out, i) != fp
    )
    if overwrite:
        for index in stale:
            shards.remove_shard(out, index)
        return
    if stale or changed:
        names = ", ".join(shards.shard_stem(i) for i in (changed + stale)[:6])
        more = len(changed) + len(stale) - 6
        raise PlanChanged(
            f"{out} holds {len(changed) + len(stale)} shard(s) built with other settings, inputs or sharding "
            f"({names}{f' and {more} more' if more > 0 else ''}); pass --overwrite to rebuild it, or use a new "
            "--output"
        )


def _run_local(todo, reader, steps, columns, out: str, opts: RunOptions):
    """Shards one after another in this process: (task, stats) as each finishes."""
    for task in todo:
        yield task, process_shard(task, reader, steps, columns, out)


def _run_on_ray(todo, reader, steps, columns, out: str, opts: RunOptions):
    """Shards as parallel Ray tasks (actor steps in pools): (task, stats) in completion order."""
    own = init_ray(opts)
    import ray

    pools: dict[int, list] = {}
    try:
        pools = actor_pool.make_pools(steps, opts.actor_concurrency)
        remote = ray.remote(num_cpus=1, max_retries=1)(_process_shard_in_worker)
        pending = {remote.remote(t, reader, steps, columns, out, pools): t for t in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(done[0]), ray.get(done[0])
    finally:
        for actor in (a for actors in pools.values() for a in actors):
            ray.kill(actor)
        if own:
            ray.shutdown()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total or None, unit="sample", unit_scale=True, dynamic_ncols=True, smoothing=0.1)
