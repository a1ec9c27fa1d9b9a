"""Plan summary, per-config counts, and manifest fields of a LLaVA-OV build (what the user sees and what is kept)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from sgt_data import shards
from sgt_data.sources.llava_ov_cache import read_fetch_records


def _mb(n: int) -> str:
    """Human size: 812 B, 45.3 kB, 12.0 MB, 4.3 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def format_plan(plan: dict) -> str:
    """One line per config (category, rows drawn / available, row groups fetched, bytes) plus totals."""
    lines = [f"llava-ov plan: {plan['source']['describe']} @ {plan['source']['revision']}"]
    width = max([len(c["config"]) for c in plan["configs"]] + [6])
    lines.append(
        f"  {'config':<{width}}  {'category':<16} {'rows':>8} {'of':>10} {'groups':>11} {'fetch':>11}"
    )
    for c in plan["configs"]:
        fetched = len(c["pieces"])
        note = f"  (short: wanted {c['requested']})" if c["short"] else ""
        lines.append(
            f"  {c['config']:<{width}}  {c['category']:<16} {c['quota']:>8,} {c['available']:>10,} "
            f"{fetched:>5}/{c['row_groups']:<5} {_mb(c['fetch_bytes']):>11}{note}"
        )
    totals: Counter = Counter()
    for c in plan["configs"]:
        totals[c["category"]] += c["quota"]
    cats = ", ".join(f"{k} {v:,}" for k, v in totals.items())
    lines.append(f"  total {sum(totals.values()):,} rows ({cats}) in {len(plan['shards'])} shard(s)")
    lines.append(
        f"  footers read: {_mb(plan['footer_bytes'])}; row groups to fetch: "
        f"{_mb(sum(c['fetch_bytes'] for c in plan['configs']))}"
    )
    return "\n".join(lines)


def counts_by_config(out: Path) -> dict[str, dict[str, int]]:
    """Rows per status for each config, read from the shards themselves (two small columns)."""
    counts: dict[str, Counter] = {}
    for path in shards.list_shards(out):
        table = pq.read_table(path, columns=["source", "status"])
        for src, status in zip(table.column("source").to_pylist(), table.column("status").to_pylist()):
            counts.setdefault(src, Counter())[status] += 1
    return {k: dict(sorted(v.items())) for k, v in counts.items()}


def sample_record(config: dict) -> dict[str, dict[str, list[int]]]:
    """Every kept row of a config as {file: {row group: [rows]}} (the reproducible record of the sample)."""
    record: dict[str, dict[str, list[int]]] = {}
    for path, row_group, rows in config["pieces"]:
        record.setdefault(path, {})[str(row_group)] = rows
    return record


def manifest_fields(out: Path, plan: dict, spec_path: Path) -> dict:
    """What `write_manifest` records beside its own totals: the request, the pinned source, per-config counts
    and samples, bytes fetched vs kept."""
    counts = counts_by_config(out)
    records = read_fetch_records(out)
    fetched = plan["footer_bytes"] + sum(r["fetched"] for r in records)
    kept = sum(r["kept"] for r in records)
    configs = {
        c["config"]: {
            "category": c["category"],
            "quota": c["quota"],
            "requested": c["requested"],
            "available": c["available"],
            "short": c["short"],
            "counts": counts.get(c["config"], {}),
            "sample": sample_record(c),
        }
        for c in plan["configs"]
    }
    return {
        "kind": "vqa",
        "command": "build llava-ov",
        "pipeline": str(spec_path),
        "request": plan["request"],
        "source": plan["source"],
        "steps": [{"name": "check_vqa", "version": 1}],
        "inputs_total": sum(c["quota"] for c in plan["configs"]),
        "configs": configs,
        "bytes": {
            "fetched": fetched,
            "kept": kept,
            "ratio": round(fetched / kept, 4) if kept else None,
            "whole_file_responses": sum(r.get("whole_files", 0) for r in records),
        },
    }


def format_report(manifest: dict, result) -> str:
    """Per-config counts by status, then totals and the fetch ratio."""
    statuses = sorted({s for c in manifest["configs"].values() for s in c["counts"]} | {"ok"})
    width = max([len(k) for k in manifest["configs"]] + [6])
    lines = [f"  {'config':<{width}}  {'planned':>8} " + " ".join(f"{s:>16}" for s in statuses)]
    for name, c in manifest["configs"].items():
        cells = " ".join(f"{c['counts'].get(s, 0):>16,}" for s in statuses)
        lines.append(f"  {name:<{width}}  {c['quota']:>8,} {cells}")
    b = manifest["bytes"]
    lines.append(
        f"  {manifest['rows']:,} rows in {manifest['shards']} shard(s) ({len(result.written)} written, "
        f"{len(result.skipped)} already complete); counts {manifest['counts']}"
    )
    if b["kept"]:
        lines.append(f"  fetched {_mb(b['fetched'])} for {_mb(b['kept'])} kept ({b['ratio']:.2f}x)")
    if b.get("whole_file_responses"):
        lines.append(
            f"  note: the server ignored Range {b['whole_file_responses']} time(s) and sent whole files "
            "(olah's local mirrors do); the Hub and hf-mirror honour Range"
        )
    return "\n".join(lines)
