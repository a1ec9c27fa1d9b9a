"""The saved plan of a LLaVA-OV build (`<output>/plan/`): what was asked, what was drawn, the footers, per-shard
fetch records. A rerun with the same request reuses it (same rows, no listing, no footer reads) and the runner
skips completed shards, so a build resumes where it stopped; a different request is refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sgt_data import shards
from sgt_data.runner import ShardTask
from sgt_data.sources import llava_ov_spec as ovspec
from sgt_data.sources.llava_ov_io import HubSource
from sgt_data.sources.llava_ov_plan import PlanError, make_plan, pack_shards
from sgt_data.sources.llava_ov_rows import READ_COLUMNS

PLAN_DIR = "plan"


def load_request(spec_path: Path, args) -> tuple[ovspec.LlavaOvSpec, dict]:
    """The spec with CLI settings applied, and the request that identifies the sample (for resume checks)."""
    overrides = list(getattr(args, "overrides", []) or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    spec = ovspec.load_spec(spec_path, overrides)
    if args.exact:
        spec.fetch_budget = None
    elif args.fetch_budget is not None:
        spec.fetch_budget = args.fetch_budget
        problems = ovspec.validate_table(spec)
        if problems:
            raise ValueError("; ".join(problems))
    if args.repo_id:
        spec.repo_id = args.repo_id
    if args.revision:
        spec.revision = args.revision
    request = {
        "spec": ovspec.as_dict(spec),
        "fix_missing": bool(args.fix_missing),
        "exclude": sorted(args.exclude or []),
        "total": args.total,
        "allow_short": bool(args.allow_short),
        "source": f"local:{Path(args.source).resolve()}" if args.source else f"hub:{spec.repo_id}",
    }
    return spec, request


def footer_file(plan_dir: str | Path, path: str) -> Path:
    return Path(plan_dir) / "footers" / (hashlib.sha1(path.encode()).hexdigest() + ".bin")


def load_footer(plan_dir: str, path: str) -> bytes:
    return footer_file(plan_dir, path).read_bytes()


def write_fetch_record(plan_dir: str, index: int, fetched: int, kept: int, whole_files: int = 0) -> None:
    """Bytes one shard task fetched and kept (and files a Range-ignoring server sent whole)."""
    record = {"fetched": fetched, "kept": kept, "whole_files": whole_files}
    shards.write_json_atomic(record, Path(plan_dir) / "fetch" / f"{shards.shard_stem(index)}.json")


def read_fetch_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / PLAN_DIR / "fetch").glob("shard-*.json"))]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def load_or_make_plan(
    out: Path, source, spec: ovspec.LlavaOvSpec, request: dict, overwrite: bool = False
) -> dict:
    """The saved plan when it answers the same request; a fresh one (saved) otherwise or with `overwrite`."""
    plan_file = out / PLAN_DIR / "plan.json"
    if plan_file.exists() and not overwrite:
        saved = json.loads(plan_file.read_text())
        diff = _differences(saved["request"], request)
        if diff:
            raise PlanError(
                f"{out} holds a build of a different request ({'; '.join(diff[:5])}); "
                "use a new --output, or --overwrite to rebuild it"
            )
        return saved
    if not plan_file.exists() and shards.list_shards(out) and not overwrite:
        raise PlanError(f"{out} already holds shards but no LLaVA-OV plan; use a new --output or --overwrite")
    plan = _new_plan(out, source, spec, request)
    if overwrite:
        _drop_stale_shards(out, len(plan["shards"]))
    return plan


def _new_plan(out: Path, source, spec: ovspec.LlavaOvSpec, request: dict) -> dict:
    table = ovspec.quotas(spec, request["fix_missing"], request["exclude"], request["total"])
    before = source.counter.bytes
    plans, footers = make_plan(
        source, table, spec.seed, spec.fetch_budget, READ_COLUMNS, request["allow_short"]
    )
    plan_dir = out / PLAN_DIR
    for path, footer in footers.items():
        target = footer_file(plan_dir, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(footer)
    configs = [
        {
            "config": p.config,
            "category": p.category,
            "quota": p.quota,
            "requested": table[p.config][1],
            "short": p.short,
            "available": p.available,
            "row_groups": p.row_groups,
            "files": {f.path: f.size for f in p.files},
            "fetch_bytes": p.fetch_bytes,
            "pieces": [[x.path, x.row_group, x.rows] for x in p.pieces],
        }
        for p in plans
    ]
    packed = pack_shards(plans, spec.rows_per_shard)
    plan = {
        "request": request,
        "source": {"describe": source.describe(), "revision": source.revision},
        "footer_bytes": source.counter.bytes - before,
        "configs": configs,
        "shards": [
            {"index": i, "config": p.config, "pieces": [[x.path, x.row_group, x.rows] for x in pieces]}
            for i, (p, pieces) in enumerate(packed)
        ],
    }
    shards.write_json_atomic(plan, plan_dir / "plan.json")
    return plan


def _drop_stale_shards(out: Path, keep: int) -> None:
    """With --overwrite, shards numbered past the new plan's last shard would be counted as part of it: remove."""
    for index in shards.shard_indices(out):
        if index >= keep:
            shards.remove_shard(out, index)
            # its fetch record too, else the manifest's byte totals would count it
            (out / PLAN_DIR / "fetch" / f"{shards.shard_stem(index)}.json").unlink(missing_ok=True)


def source_for_plan(source, plan: dict):
    """Pin a Hub source to the plan's commit (a resumed build reads exactly what was planned)."""
    if isinstance(source, HubSource):
        source.revision = plan["source"]["revision"]
    return source


def shard_tasks(plan: dict, out: Path) -> list[ShardTask]:
    """One task per output shard; its inputs name every (file, row group, rows) to fetch."""
    by_config = {c["config"]: c for c in plan["configs"]}
    tasks = []
    for shard in plan["shards"]:
        conf = by_config[shard["config"]]
        pieces = [tuple(p) for p in shard["pieces"]]
        inputs = {
            "config": conf["config"],
            "category": conf["category"],
            "pieces": pieces,
            "sizes": {p[0]: conf["files"][p[0]] for p in pieces},
            "plan_dir": str(out / PLAN_DIR),
        }
        tasks.append(ShardTask(shard["index"], inputs, sum(len(p[2]) for p in pieces)))
    return tasks
