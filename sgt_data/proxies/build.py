"""`sgt-data build proxies`: SA-1B inputs or canonical shards -> seg / edge / depth targets, on the runner.

Plan (driver, cheap): resolve the pipeline spec, find the inputs, cut them into shard tasks, check the depth model.
Run (Ray): each shard task reads its rows, runs DecodeImage -> SegTarget -> EdgeTarget -> DepthTarget -> Prompts,
and writes its shard. Every input sample ends as a row (`ok` or with its error): counts in == counts out, which
the manifest records and `sgt-data validate` checks.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sgt_data import config, shards, specs
from sgt_data.runner import ShardTask, add_runner_arguments, options_from_args

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


@dataclass
class SegSpec:
    palette: str = "random"
    """Colour scheme of the instance map: `random` = seeded random RGB per instance, never black."""


@dataclass
class EdgeSpec:
    source: str = "image"
    """`image`: Canny on the grey image; `masks`: boundaries between instances of the seg label map."""
    low: float | str = "auto"
    """Canny lower threshold, or `auto` = (1 - sigma) * median grey."""
    high: float | str = "auto"
    """Canny upper threshold, or `auto` = (1 + sigma) * median grey."""
    sigma: float = 0.33
    """Spread around the median for `auto` thresholds."""
    width: int = 1
    """Line width in pixels for `masks` edges."""

    def validate(self) -> list[str]:
        problems = []
        if self.source not in ("image", "masks"):
            problems.append(f"levels.edge.source: must be image or masks, got {self.source!r}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, str) and value != "auto":
                problems.append(f"levels.edge.{name}: a number or 'auto', got {value!r}")
        return problems


@dataclass
class DepthSpec:
    model: str = DEFAULT_DEPTH_MODEL
    """Local folder or Hub id of a transformers depth model (Depth-Anything-V2-Small is Apache-2.0)."""
    batch_size: int = 16
    """Images per forward pass in a depth actor."""
    dtype: str = "auto"
    """`auto` (bf16 on CUDA, fp32 on CPU), `float32`, `float16` or `bfloat16`."""
    num_gpus: float = 1
    """GPUs per depth actor when CUDA is present (CPU actors otherwise)."""
    concurrency: int | None = None
    """Number of depth actors; default GPUs / num_gpus, or 1 without GPUs."""
    max_side: int | None = None
    """Cap on the depth PNG's longer side (PNG encoding on the CPUs, not the GPU, bounds throughput); None = image size."""


@dataclass
class LevelsSpec:
    seg: SegSpec = field(default_factory=SegSpec)
    edge: EdgeSpec = field(default_factory=EdgeSpec)
    depth: DepthSpec = field(default_factory=DepthSpec)


@dataclass
class ProxiesSpec:
    seed: int = 0
    """Seed of palettes and prompt choices (combined with each sample key, never with processing order)."""
    shard_rows: int = 1000
    """Rows per output shard for SA-1B inputs (canonical-shard inputs keep their sharding)."""
    chunk_size: int = 16
    """Rows a shard task holds decoded at once."""
    max_pixels: int = 100_000_000
    """Images above this many pixels become `bad_image` rows (decompression-bomb guard)."""
    levels: LevelsSpec = field(default_factory=LevelsSpec)

    def validate(self) -> list[str]:
        problems = self.levels.edge.validate()
        for name in ("shard_rows", "chunk_size", "max_pixels"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be >= 1")
        return problems


# ---------------------------------------------------------------- readers (run inside shard tasks)


def read_sa1b_task(task: ShardTask, chunk_size: int) -> Iterator[dict]:
    from sgt_data.sources.sa1b import read_samples

    yield from read_samples(task.inputs, chunk_size)


def read_shard_task(task: ShardTask, chunk_size: int) -> Iterator[dict]:
    """Rows of one canonical input shard, image structs unwrapped to bytes for the steps."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(task.inputs)
    wanted = [c for c in shards.INGEST_COLUMNS if c in pf.schema_arrow.names]
    for batch in pf.iter_batches(columns=wanted, batch_size=chunk_size):
        cols = batch.to_pydict()
        n = batch.num_rows
        for name in ("image", "sam_mask"):
            cols[name] = [v["bytes"] if v else None for v in cols.get(name, [None] * n)]
        for name in shards.INGEST_COLUMNS:
            cols.setdefault(name, [None] * n)
        cols["status"] = [s or "ok" for s in cols["status"]]
        yield cols


# ---------------------------------------------------------------- plan


def plan_tasks(input_path: Path, spec: ProxiesSpec) -> tuple[list[ShardTask], Iterator | None, int, str]:
    """Shard tasks, their reader, the number of input samples, and the input kind."""
    found = shards.list_shards(input_path) if input_path.is_dir() else []
    if found:
        tasks = []
        total = 0
        import pyarrow.parquet as pq

        for path in found:
            rows = pq.ParquetFile(path).metadata.num_rows
            index = int(path.stem.split("-")[1])
            tasks.append(
                ShardTask(index=index, inputs=str(path), rows_hint=rows, bytes_hint=path.stat().st_size)
            )
            total += rows
        return tasks, functools.partial(read_shard_task, chunk_size=spec.chunk_size), total, "shards"
    from sgt_data.sources.sa1b import discover

    samples = discover(input_path)
    if not samples:
        raise FileNotFoundError(
            f"{input_path}: no SA-1B samples (sa_*.jpg + sa_*.json) and no canonical shards (shard-*.parquet)"
        )
    step = spec.shard_rows
    tasks = []
    for i, start in enumerate(range(0, len(samples), step)):
        part = samples[start : start + step]
        tasks.append(ShardTask(index=i, inputs=part, rows_hint=len(part), bytes_hint=input_bytes(part)))
    return tasks, functools.partial(read_sa1b_task, chunk_size=spec.chunk_size), len(samples), "sa1b"


def input_bytes(samples: list) -> int:
    """Bytes of a task's input files (tar members know their size; folder files are stat'ed)."""
    total = 0
    for s in samples:
        for ref in (s.image, s.annotations):
            if ref is not None:
                total += ref.size if ref.size >= 0 else Path(ref.path).stat().st_size
    return total


def parse_levels(text: str | None) -> tuple[list[str], bool]:
    """`seg,edge` -> (['seg', 'edge'], explicit). None means seg + edge, plus depth only if its model is there."""
    if text is None:
        return ["seg", "edge", "depth"], False
    levels = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in levels if t not in shards.LEVELS]
    if unknown or not levels:
        raise SystemExit(
            f"sgt-data build proxies: --level takes a list of {', '.join(shards.LEVELS)}; got {text!r}"
        )
    return [lv for lv in shards.LEVELS if lv in levels], True


def make_steps(levels: list[str], spec: ProxiesSpec, endpoint: str | None = None) -> list:
    """The step chain for `levels` (seg's label map is built whenever seg or mask edges need it)."""
    from sgt_data.proxies.image import DecodeImage
    from sgt_data.proxies.prompts import Prompts

    edge = spec.levels.edge
    # Only depth looks at colour: without it, decode the luma alone (seg needs the size, Canny the grey levels).
    steps: list = [DecodeImage(max_pixels=spec.max_pixels, grey="depth" not in levels)]
    if "seg" in levels or ("edge" in levels and edge.source == "masks"):
        from sgt_data.proxies.seg import SegTarget

        steps.append(SegTarget(seed=spec.seed))
    if "edge" in levels:
        from sgt_data.proxies.edge import EdgeTarget

        steps.append(
            EdgeTarget(source=edge.source, low=edge.low, high=edge.high, sigma=edge.sigma, width=edge.width)
        )
    if "depth" in levels:
        from sgt_data.proxies.depth import DepthTarget

        d = spec.levels.depth
        steps.append(
            DepthTarget(
                model=d.model,
                batch_size=d.batch_size,
                dtype=d.dtype,
                num_gpus=d.num_gpus,
                concurrency=d.concurrency,
            )
        )
    steps.append(Prompts(levels=levels, seed=spec.seed))
    return steps


def check_depth(levels: list[str], explicit: bool, spec: ProxiesSpec, endpoint: str | None) -> list[str]:
    """Drop depth (with the fetch command printed) when its model is unavailable and depth was not asked for."""
    if "depth" not in levels:
        return levels
    from sgt_data.proxies.depth import check_model

    problem = check_model(spec.levels.depth.model, endpoint=endpoint, explicit=explicit)
    if problem is None:
        return levels
    if explicit:
        raise SystemExit(f"sgt-data build proxies: depth model unavailable.\n{problem}")
    print(f"note: skipping depth (not requested explicitly).\n{problem}", file=sys.stderr)
    return [lv for lv in levels if lv != "depth"]


# ---------------------------------------------------------------- command


def add_arguments(parser) -> None:
    parser.add_argument(
        "--input", required=True, help="SA-1B folder/tar (sa_*.jpg + sa_*.json) or canonical shards"
    )
    parser.add_argument("--output", required=True, help="output folder (created; completed shards are kept)")
    parser.add_argument(
        "--level", help="comma list of seg, edge, depth (default: seg,edge + depth if available)"
    )
    parser.add_argument(
        "--pipeline", default="proxies", help="pipeline spec name or YAML path (default: proxies)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec value, e.g. --set levels.edge.low=50 (repeatable)")  # fmt: skip
    parser.add_argument("--depth-model", help="local folder or Hub id of the depth model (implies depth)")
    parser.add_argument("--endpoint", help="Hub endpoint used to fetch the depth model (default HF_ENDPOINT)")
    parser.add_argument("--mirror", action="store_true", help="use the public Hub mirror for the depth model")
    add_runner_arguments(parser)


def load_spec(pipeline: str, overrides: list[str]) -> tuple[ProxiesSpec, Path]:
    path = specs.resolve("pipelines", pipeline)
    return config.load(ProxiesSpec, path, overrides), path


def run(args) -> int:
    started = time.time()
    overrides = list(args.overrides)
    if args.depth_model:
        overrides.append(f"levels.depth.model={args.depth_model}")
        if args.level is None:
            args.level = "seg,edge,depth"
    try:
        spec, spec_path = load_spec(args.pipeline, overrides)
    except (config.ConfigError, FileNotFoundError) as e:
        print(f"sgt-data build proxies: {e}", file=sys.stderr)
        return 2
    levels, explicit = parse_levels(args.level)
    from sgt_data.hub import resolve_endpoint

    endpoint = resolve_endpoint(args.endpoint, args.mirror) if (args.endpoint or args.mirror) else None
    levels = check_depth(levels, explicit, spec, endpoint)
    input_path, out = Path(args.input), Path(args.output)
    try:
        tasks, reader, total, kind = plan_tasks(input_path, spec)
    except (FileNotFoundError, ValueError) as e:
        print(f"sgt-data build proxies: {e}", file=sys.stderr)
        return 2
    steps = make_steps(levels, spec, endpoint)
    columns = shards.sample_columns(levels)
    opts = options_from_args(args)
    print(
        f"build proxies: {total} samples from {input_path} ({kind}) -> {len(tasks)} shard(s), levels {levels}"
    )
    from sgt_data import runner

    plan = {"spec": config.to_dict(spec), "levels": levels, "input": str(input_path.resolve()), "kind": kind}
    result = runner.run(tasks, reader, steps, columns, out, opts, plan=plan)
    manifest = shards.write_manifest(
        out,
        kind="proxies",
        command=getattr(args, "argv", None),
        spec=config.to_dict(spec),
        spec_path=str(spec_path),
        levels=levels,
        steps=[{"name": type(s).__name__, "version": getattr(s, "version", "1")} for s in steps],
        inputs=[str(input_path)],
        input_kind=kind,
        inputs_total=total,
        seconds=round(time.time() - started, 2),
    )
    print(
        f"build proxies: wrote {len(result.written)} shard(s), kept {len(result.skipped)} completed; "
        f"{manifest['rows']} rows {manifest['counts']} -> {out}"
    )
    if manifest["rows"] != total:
        print(f"sgt-data build proxies: {total} samples in but {manifest['rows']} rows out", file=sys.stderr)
        return 1
    return 0
