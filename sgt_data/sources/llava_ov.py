"""`sgt-data build llava-ov`: a seeded LLaVA-OneVision subsample -> VQA canonical shards, reading only what it keeps.

1. Plan (driver): list the repo (or `--source` folder), fail on configs that do not exist, read only the footers
   of the requested configs, draw each config's sample (llava_ov_plan), split it into shard tasks. The plan is
   saved in `<output>/plan/` so a rerun resumes the same sample without listing or reading footers again.
2. Fetch + write (runner, one Ray task per shard): fetch only the column chunks of the row groups holding
   sampled rows, keep image bytes as they are, check each row (bad rows become status rows), write the shard.
3. Report: per-config counts by status, bytes fetched vs kept; the manifest records every kept row's
   (config, file, row group, row).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

# pyarrow-backed modules are imported inside functions: `--help` stays instant.


def add_arguments(parser) -> None:
    from sgt_data.hub import add_hub_arguments
    from sgt_data.runner import add_runner_arguments

    parser.add_argument("--output", "-o", required=True, help="output folder (shards, manifest, plan/)")
    parser.add_argument(
        "--pipeline", default="llava_ov", help="pipeline spec name or YAML path (default: llava_ov)"
    )
    parser.add_argument("--source", help="local copy of the dataset (<config>/*.parquet) instead of the Hub")
    parser.add_argument("--repo-id", help="dataset repo (default: the spec's repo_id)")
    parser.add_argument("--revision", help="branch, tag or commit (default: the spec's; pinned to a sha)")
    parser.add_argument("--total", type=int, help="rescale the table to N rows in total, keeping its ratios")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the spec's)")
    parser.add_argument(
        "--fix-missing",
        action="store_true",
        help="swap configs listed under `replacements` for their replacements",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="CONFIG",
        help="drop a config (repeatable; recorded)",
    )
    parser.add_argument(
        "--allow-short", action="store_true", help="take every row of configs smaller than their quota"
    )
    parser.add_argument(
        "--fetch-budget", type=float, help="bytes fetched per byte kept to aim at (default: the spec's)"
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="exact simple random sample (no fetch budget; may fetch far more)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="plan (footers only), print the summary and stop; a later run reuses it",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec value, e.g. --set rows_per_shard=500 (repeatable)")  # fmt: skip
    add_hub_arguments(parser)
    add_runner_arguments(parser)


class ShardReader:
    """Runner reader: one chunk per row group of a shard task; records the bytes it fetched (picklable)."""

    def __init__(self, source):
        self.source = source

    def __call__(self, task) -> Iterator[dict[str, list]]:
        from sgt_data.sources.llava_ov_cache import load_footer, write_fetch_record
        from sgt_data.sources.llava_ov_io import FileRef, read_row_group
        from sgt_data.sources.llava_ov_rows import READ_COLUMNS, chunk_from_table, payload_bytes

        inp = task.inputs
        counter = self.source.counter
        before, whole_before, kept = counter.bytes, counter.whole_files, 0
        previous = None
        for path, row_group, rows in inp["pieces"]:
            ref = FileRef(inp["config"], path, inp["sizes"][path])
            if previous is not None and previous != ref:
                self.source.forget(previous)  # pieces come file by file: a whole-file body is done with
            previous = ref
            footer = load_footer(inp["plan_dir"], path)
            table = read_row_group(self.source, ref, footer, row_group, READ_COLUMNS)
            chunk = chunk_from_table(table, rows, inp["config"], inp["category"], path, row_group)
            kept += payload_bytes(chunk)
            yield chunk
        if previous is not None:
            self.source.forget(previous)
        write_fetch_record(
            inp["plan_dir"], task.index, counter.bytes - before, kept, counter.whole_files - whole_before
        )


def make_source(args, spec):
    """`--source PATH` or the Hub at the resolved endpoint (explicit, never a module default)."""
    from sgt_data import hub
    from sgt_data.sources.llava_ov_io import HubSource, LocalSource

    if args.source:
        return LocalSource(args.source)

    endpoint = hub.resolve_endpoint(args.endpoint, args.mirror)
    return HubSource(
        args.repo_id or spec.repo_id,
        args.revision or spec.revision,
        endpoint,
        hub.get_token(args.token_env, endpoint),
    )


def run(args) -> int:
    from sgt_data import runner, shards
    from sgt_data.config import ConfigError
    from sgt_data.hub_download import DownloadError
    from sgt_data.sources import llava_ov_cache as cache
    from sgt_data.sources.llava_ov_plan import PlanError
    from sgt_data.sources.llava_ov_report import format_plan, format_report, manifest_fields
    from sgt_data.sources.llava_ov_rows import CheckVqa
    from sgt_data.specs import resolve

    out = Path(args.output)
    try:
        spec_path = resolve("pipelines", args.pipeline)
        spec, request = cache.load_request(spec_path, args)
        source = make_source(args, spec)
        plan = cache.load_or_make_plan(out, source, spec, request, overwrite=args.overwrite)
    except (ConfigError, PlanError, DownloadError, FileNotFoundError, ValueError) as err:
        print(f"sgt-data build llava-ov: {_redact(err, args)}", file=sys.stderr)
        return 2
    print(format_plan(plan), file=sys.stderr)
    if args.plan:
        return 0
    source = cache.source_for_plan(source, plan)
    tasks = cache.shard_tasks(plan, out)
    result = runner.run(
        tasks, ShardReader(source), [CheckVqa()], shards.VQA_COLUMNS, out, runner.options_from_args(args)
    )
    fields = manifest_fields(out, plan, spec_path)
    fields["command"] = getattr(args, "argv", None) or ["sgt-data", "build", "llava-ov"]
    manifest = shards.write_manifest(out, **fields)
    print(format_report(manifest, result), file=sys.stderr)
    return 0


def _redact(err: Exception, args) -> str:
    from sgt_data.hub import get_token, redact

    return redact(err, get_token(getattr(args, "token_env", "HF_TOKEN")))
