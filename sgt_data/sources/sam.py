"""`sgt-data build sam`: SAM-SGT from the Hub / a mirror / disk, or raw SA-1B (`--from`), -> canonical shards.

Hub path, in order: list the repo at one commit with LFS metadata; find the SAM-SGT layout (or fail listing what
is there); select shards (`--shards 1-4`, `--limit N`); print the plan (files, bytes, free disk) and stop when it
does not fit; download with resume + size/sha256 verification (hub_download); scan each tar's headers, pair
members by key across the tars of a shard index, and stream member bytes into canonical shards on the runner
(nothing is extracted). Unsafe members are rejected, reported and kept as error rows. A rerun skips completed
shards, and skips even the download of a tar index whose shards are all complete.

`--from PATH`: a folder of SAM-SGT tars is ingested the same way; otherwise PATH is read as raw SA-1B
(`sa_*.jpg` + `sa_*.json`, folders or tars, via sources/sa1b.py) with the RLE annotations kept in `annotations`
for `build proxies` to render.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sgt_data import config, shards, specs
from sgt_data.runner import ShardTask, add_runner_arguments, options_from_args

PROG = "sgt-data build sam"


@dataclass
class SamSpec:
    repo_id: str = "Two-hot/SAM-SGT"
    """Hub dataset holding the SAM-SGT tar shards."""
    repo_type: str = "dataset"
    revision: str = "main"
    """Branch, tag or commit; the listing is resolved to one commit and every file is fetched at it."""
    rows_per_shard: int = 500
    """Rows per output shard (~500 MB of SA-1B images); one tar shard gives several output shards."""
    chunk_size: int = 16
    """Rows a shard task holds at once while reading."""
    download_workers: int = 4
    """Files downloaded at the same time."""
    retries: int = 5
    """Retries (with backoff and resume) per file after a dropped connection or a 5xx/429."""
    timeout_s: float = 60.0
    """Seconds without a byte before a connection counts as dropped."""
    source: str = "sam-sgt"
    """`source` column value for SAM-SGT rows (raw SA-1B rows get `sa1b`)."""


def add_arguments(parser) -> None:
    from sgt_data.hub import add_hub_arguments

    parser.add_argument("--output", required=True, help="output folder (completed shards are kept on rerun)")
    parser.add_argument("--from", dest="from_path", metavar="PATH",
                        help="ingest from disk: SAM-SGT tars, or raw SA-1B folders/tars (sa_*.jpg + sa_*.json)")  # fmt: skip
    parser.add_argument(
        "--shards", help="tar shard indices to take, e.g. 1-4,7 (the NN of sam_selection-000NN.tar)"
    )
    parser.add_argument(
        "--limit", type=int, help="only the first N tar shards (with raw SA-1B: first N samples)"
    )
    parser.add_argument("--download-dir", help="where tars are downloaded (default OUTPUT/.download)")
    parser.add_argument("--plan", action="store_true", help="print the download plan and stop")
    parser.add_argument("--pipeline", default="sam", help="pipeline spec name or YAML path (default: sam)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec value, e.g. --set revision=<commit> (repeatable)")  # fmt: skip
    add_hub_arguments(parser)
    add_runner_arguments(parser)


def _fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def run(args) -> int:
    from sgt_data.download_plan import InsufficientSpace
    from sgt_data.hub_download import DownloadError
    from sgt_data.sources.sam_layout import LayoutError

    started = time.time()
    try:
        spec_path = specs.resolve("pipelines", args.pipeline)
        spec = config.load(SamSpec, spec_path, args.overrides)
    except (config.ConfigError, FileNotFoundError) as e:
        return _fail(str(e))
    out = Path(args.output)
    try:
        if args.from_path:
            return _from_disk(args, spec, out, started)
        return _from_hub(args, spec, out, started)
    except (LayoutError, InsufficientSpace, DownloadError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))


# ---------------------------------------------------------------- Hub


def _from_hub(args, spec: SamSpec, out: Path, started: float) -> int:
    from sgt_data import download_plan, hub, hub_download
    from sgt_data.sources.sam_layout import discover_layout, select

    endpoint = hub.resolve_endpoint(args.endpoint, args.mirror)
    token = hub.get_token(args.token_env, endpoint)
    listing = hub_download.list_repo(endpoint, spec.repo_id, spec.repo_type, spec.revision, token)
    where = f"{spec.repo_id}@{listing.commit[:12]} on {endpoint}"
    layout = discover_layout([f.path for f in listing.files], where)
    indices = select(layout, args.shards, args.limit)
    todo = [i for i in indices if not _index_complete(out, i)]
    by_path = {f.path: f for f in listing.files}
    files = [by_path[p] for i in todo for p in layout.shards[i]] + [by_path[p] for p in layout.file_lists]
    dest = Path(args.download_dir) if args.download_dir else out / ".download"
    tar_bytes = sum(f.size for f in files if f.path.endswith(".tar"))
    plan = download_plan.make_plan(files, dest, extra_bytes=tar_bytes)  # shards hold the images as they are
    _print_plan(where, indices, todo, plan)
    download_plan.check_space(plan)
    if args.plan:
        return 0
    hub_download.download_all(listing, files, dest, token, spec.download_workers, spec.retries,
                              spec.timeout_s, progress=args.progress)  # fmt: skip
    source = {
        "endpoint": endpoint,
        "repo_id": spec.repo_id,
        "revision": spec.revision,
        "commit": listing.commit,
    }
    inputs = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]
    tars = {i: [dest / p for p in layout.shards[i]] for i in todo}
    return _ingest_tars(args, spec, out, tars, indices, started, source=source, inputs=inputs)


def _built_shards(out: Path, indices: list[int]) -> int:
    """Output shards of tar indices that are complete (skipped before download and scan)."""
    return sum(
        len(json.loads(_record_path(out, i).read_text())["shards"])
        for i in indices
        if _index_complete(out, i)
    )


def _print_plan(where: str, indices: list[int], todo: list[int], plan) -> None:
    from sgt_data.download_plan import human

    print(
        f"build sam: {where}: {len(indices)} tar shard(s) selected, {len(indices) - len(todo)} already built"
    )
    for f in plan.files:
        state = "verified" if f.path in plan.done else "to fetch"
        print(f"  {human(f.size):>10}  {f.path}  ({state})")
    print(
        f"build sam: {len(plan.files)} file(s), {human(plan.total_bytes)} in total; to download "
        f"{human(plan.fetch_bytes)} (+{human(plan.partial_bytes)} resumed) into {plan.dest}; output ~"
        f"{human(plan.extra_bytes)}; free {human(plan.free_bytes)}"
    )


# ---------------------------------------------------------------- disk


def _from_disk(args, spec: SamSpec, out: Path, started: float) -> int:
    from sgt_data.sources.sam_layout import LayoutError, discover_layout, select

    root = Path(args.from_path)
    if not root.exists():
        raise FileNotFoundError(f"--from {root}: no such file or folder")
    base = root if root.is_dir() else root.parent
    rel = [p.relative_to(base).as_posix() for p in (root.rglob("*.tar") if root.is_dir() else [root])]
    try:
        layout = discover_layout(rel, str(root))
    except LayoutError:
        layout = None  # not SAM-SGT: read it as raw SA-1B below
    if layout is not None:
        indices = select(layout, args.shards, args.limit)
        todo = [i for i in indices if not _index_complete(out, i)]
        tars = {i: [base / p for p in layout.shards[i]] for i in todo}
        inputs = [{"path": str(t)} for ts in tars.values() for t in ts]
        return _ingest_tars(
            args, spec, out, tars, indices, started, source={"path": str(root)}, inputs=inputs
        )
    return _ingest_sa1b(args, spec, out, root, started)


def _ingest_sa1b(args, spec: SamSpec, out: Path, root: Path, started: float) -> int:
    from sgt_data.sources import sa1b, tar_safe

    samples = sa1b.discover(root)
    if args.limit:
        samples = samples[: args.limit]
    tar_paths = [root] if root.is_file() else sorted(root.glob("*.tar"))
    rejected = [r for t in tar_paths for r in tar_safe.scan(t)[1]]
    n = spec.rows_per_shard
    tasks = [
        ShardTask(i, samples[s : s + n], len(samples[s : s + n]))
        for i, s in enumerate(range(0, len(samples), n))
    ]
    print(f"build sam: {len(samples)} raw SA-1B samples from {root} -> {len(tasks)} shard(s)")
    reader = functools.partial(read_sa1b_task, chunk_size=spec.chunk_size)
    return _run_and_record(args, spec, out, tasks, reader, started, rejected, source={"path": str(root)},
                           input_kind="sa1b", inputs=[str(root)])  # fmt: skip


def read_sa1b_task(task: ShardTask, chunk_size: int):
    """Reader for the runner: rows of one shard of raw SA-1B samples."""
    from sgt_data.sources.sa1b import read_samples

    yield from read_samples(task.inputs, chunk_size)


# ---------------------------------------------------------------- tars -> shards


def _record_path(out: Path, index: int) -> Path:
    return out / ".sgt-sam" / f"tar-{index:05d}.json"


def _index_complete(out: Path, index: int) -> bool:
    """All output shards of tar index `index` were written (recorded when its tasks were planned)."""
    path = _record_path(out, index)
    if not path.exists():
        return False
    parts = json.loads(path.read_text())["shards"]
    return all(shards.is_complete(out, p) for p in parts)


def plan_tar_tasks(tars: dict[int, list[Path]], rows_per_shard: int) -> tuple[list[ShardTask], list, dict]:
    """Shard tasks for each tar index (headers scanned, members paired), rejected members, index -> shards."""
    from sgt_data.sources import tar_safe
    from sgt_data.sources.sam_layout import STRIDE, pair_members

    tasks, rejected, shard_map = [], [], {}
    for index, paths in sorted(tars.items()):
        scanned = []
        for p in paths:
            members, bad = tar_safe.scan(p)
            scanned.append((str(p), members, bad))
            rejected.extend(bad)
        samples = pair_members(scanned)
        parts = [samples[s : s + rows_per_shard] for s in range(0, len(samples), rows_per_shard)] or [[]]
        if len(parts) > STRIDE:
            raise ValueError(
                f"tar index {index}: {len(parts)} output shards > {STRIDE}; raise rows_per_shard"
            )
        shard_map[index] = [index * STRIDE + k for k in range(len(parts))]
        tasks += [ShardTask(index * STRIDE + k, part, len(part)) for k, part in enumerate(parts)]
    return tasks, rejected, shard_map


def _ingest_tars(args, spec, out, tars, indices, started, source: dict, inputs: list) -> int:
    from sgt_data.sources.sam_layout import read_sam_task

    tasks, rejected, shard_map = plan_tar_tasks(tars, spec.rows_per_shard)
    print(
        f"build sam: {sum(t.rows_hint for t in tasks)} samples in {len(tars)} tar shard(s) -> {len(tasks)} shard(s)"
    )
    reader = functools.partial(read_sam_task, chunk_size=spec.chunk_size, source=spec.source)
    code = _run_and_record(args, spec, out, tasks, reader, started, rejected, kept=_built_shards(out, indices),
                           source=source, input_kind="sam-sgt", inputs=inputs, tar_indices=indices)  # fmt: skip
    for index, parts in shard_map.items():  # only after the run: the record means "these shards exist"
        shards.write_json_atomic({"shards": parts}, _record_path(out, index))
    return code


def _run_and_record(args, spec, out, tasks, reader, started, rejected, kept: int = 0, **fields) -> int:
    from sgt_data import runner

    opts = options_from_args(args)
    # Subsets (--shards) build into the same folder over several runs: other shards there are not stale.
    plan = {"spec": config.to_dict(spec), "source": fields.get("input_kind")}
    result = runner.run(tasks, reader, [], shards.INGEST_COLUMNS, out, opts, plan=plan, exclusive=False)
    for r in rejected[:10]:
        print(f"build sam: rejected {r.message()}", file=sys.stderr)
    if len(rejected) > 10:
        print(
            f"build sam: ... {len(rejected) - 10} more rejected members (see manifest.json)", file=sys.stderr
        )
    manifest = shards.write_manifest(
        out,
        kind="ingest",
        command=getattr(args, "argv", None),
        spec=config.to_dict(spec),
        rejected_members=[{"tar": r.tar, "name": r.name, "reason": r.reason} for r in rejected],
        seconds=round(time.time() - started, 2),
        **fields,
    )
    print(
        f"build sam: wrote {len(result.written)} shard(s), kept {len(result.skipped) + kept} completed; "
        f"{manifest['rows']} rows {manifest['counts']} -> {out}"
    )
    # Counts in == counts out for what this run planned: every sample (and rejected member) is a row.
    planned = sum(t.rows_hint for t in tasks)
    stats = {s["shard"]: s["rows"] for s in shards.read_stats(out)}
    written = sum(stats.get(shards.shard_name(t.index), 0) for t in tasks)
    if written != planned:
        print(f"sgt-data build sam: {planned} samples planned but {written} rows written", file=sys.stderr)
        return 1
    return 0
