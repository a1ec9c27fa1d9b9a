"""Plan a LLaVA-OV subsample before fetching anything: footers -> row groups -> seeded sample -> shard tasks.

Sampling is per config, from a random stream derived from (seed, config name) and the row-group inventory read
from the footers (files sorted by path, row groups in file order). Nothing depends on processing order or on how
many workers run later, so the same seed and revision give the same rows.

How rows are drawn (`fetch_budget` b): Parquet can only be fetched a whole column chunk at a time, i.e. a row
group (LLaVA-OV image configs have ~100-row groups). A simple random sample of 4,000 of dvqa's 200,000 rows
touches ~87% of its row groups, so it would fetch ~40x what it keeps. With a budget, the sampler first draws
m = floor(b * n / mean rows per group) row groups (at least enough to hold n rows) uniformly at random, then n rows uniformly from their union:
every row still has the same inclusion probability n/N (exactly, when the groups are equally large), and the
bytes fetched are about b times the bytes kept. When m covers every group (high sampling rates, or
`fetch_budget: null`) this is exactly a simple random sample. The trade-off is clustering: rows come from m
groups instead of ~n, which matters only if neighbouring rows of a config are alike.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sgt_data.sources.llava_ov_io import FileRef, parse_footer, read_footer


class PlanError(ValueError):
    """The request cannot be planned (missing configs, too few rows); the message names the fix."""


@dataclass
class Piece:
    """Rows to keep from one row group of one file."""

    path: str
    row_group: int
    rows: list[int]


@dataclass
class ConfigPlan:
    config: str
    category: str
    quota: int
    available: int
    files: list[FileRef]
    row_groups: int
    pieces: list[Piece] = field(default_factory=list)
    fetch_bytes: int = 0
    short: bool = False


def config_seed(seed: int, config: str) -> np.random.Generator:
    """A random stream for one config: depends on the seed and the name only."""
    digest = int.from_bytes(hashlib.sha256(config.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def groups_for_budget(sizes: list[int], n: int, budget: float | None) -> int:
    """How many row groups the sampler may touch: all of them without a budget."""
    total = sum(sizes)
    if budget is None or total == 0:
        return len(sizes)
    mean = total / len(sizes)
    # As many groups as the budget pays for, but never fewer than needed to hold n rows.
    return min(len(sizes), max(math.ceil(n / mean), math.floor(budget * n / mean)))


def sample_groups(
    sizes: list[int], n: int, rng: np.random.Generator, budget: float | None
) -> list[tuple[int, list[int]]]:
    """Draw n rows from row groups of `sizes`; returns [(group index, sorted rows within it)] in group order."""
    total = sum(sizes)
    if n > total:
        raise ValueError(f"cannot draw {n} rows from {total}")
    m = groups_for_budget(sizes, n, budget)
    order = rng.permutation(len(sizes))
    if m >= len(sizes):
        chosen = list(range(len(sizes)))
    else:
        chosen, rows = [], 0
        for g in order:
            if len(chosen) >= m and rows >= n:
                break
            chosen.append(int(g))
            rows += sizes[g]
        chosen.sort()
    chosen_sizes = [sizes[g] for g in chosen]
    picks = np.sort(rng.choice(sum(chosen_sizes), size=n, replace=False))
    bounds = np.cumsum([0, *chosen_sizes])
    out = []
    for i, g in enumerate(chosen):
        lo, hi = np.searchsorted(picks, [bounds[i], bounds[i + 1]])
        if hi > lo:
            out.append((g, [int(r - bounds[i]) for r in picks[lo:hi]]))
    return out


def read_footers(source, files: list[FileRef], workers: int = 8) -> dict[str, bytes]:
    """Footer bytes of every file (ranged reads, a few in parallel); order of completion does not matter."""

    def one(ref: FileRef) -> bytes:
        footer = read_footer(source, ref)
        source.forget(ref)  # a Range-ignoring server sent the whole file: do not keep it
        return footer

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
        return dict(zip([f.path for f in files], pool.map(one, files)))


def check_configs(table: dict[str, tuple[str, int]], by_config: dict[str, list[FileRef]], where: str) -> None:
    """Every requested config must exist; otherwise fail with the available list and the ways out."""
    missing = [c for c in table if c not in by_config]
    if missing:
        available = ", ".join(sorted(by_config)) or "none"
        raise PlanError(
            f"{len(missing)} config(s) not found in {where}: {', '.join(missing)}\n"
            f"available configs ({len(by_config)}): {available}\n"
            "fix: correct the name in the pipeline spec, opt in to the listed replacements with --fix-missing, "
            "or drop a config explicitly with --exclude NAME"
        )


def plan_config(
    config: str,
    category: str,
    quota: int,
    files: list[FileRef],
    footers: dict[str, bytes],
    seed: int,
    budget: float | None,
    columns: list[str],
) -> ConfigPlan:
    """Row-group inventory of one config and its sample (quota is already capped by the caller if short)."""
    groups: list[tuple[FileRef, int, int, int]] = []  # (file, row group, rows, bytes of the needed columns)
    for ref in files:
        md = parse_footer(footers[ref.path])
        for g in range(md.num_row_groups):
            group = md.row_group(g)
            size = sum(
                group.column(i).total_compressed_size
                for i in range(group.num_columns)
                if group.column(i).path_in_schema.split(".", 1)[0] in columns
            )
            groups.append((ref, g, group.num_rows, size))
    sizes = [rows for _, _, rows, _ in groups]
    plan = ConfigPlan(config, category, quota, sum(sizes), files, len(groups))
    for g, rows in sample_groups(sizes, quota, config_seed(seed, config), budget):
        ref, rg, _, nbytes = groups[g]
        plan.pieces.append(Piece(ref.path, rg, rows))
        plan.fetch_bytes += nbytes
    return plan


def check_short(table: dict[str, tuple[str, int]], available: dict[str, int], allow_short: bool) -> dict:
    """Quotas capped to the rows a config has, when allowed; otherwise fail listing every short config."""
    short = {c: (n, available[c]) for c, (_, n) in table.items() if n > available[c]}
    if short and not allow_short:
        lines = ", ".join(f"{c} wants {n} of {have}" for c, (n, have) in short.items())
        raise PlanError(
            f"{len(short)} config(s) have fewer rows than their quota: {lines}\n"
            "fix: lower --total, or pass --allow-short to take every row of those configs (recorded)"
        )
    return {c: (cat, min(n, available[c])) for c, (cat, n) in table.items()}


def pack_shards(plans: list[ConfigPlan], rows_per_shard: int) -> list[tuple[ConfigPlan, list[Piece]]]:
    """Group pieces into shards of at most `rows_per_shard` rows; a shard holds one config and whole pieces
    (a row group is fetched once), so a piece larger than the limit gets a shard of its own."""
    shards: list[tuple[ConfigPlan, list[Piece]]] = []
    for plan in plans:
        current: list[Piece] = []
        count = 0
        for piece in plan.pieces:
            if current and count + len(piece.rows) > rows_per_shard:
                shards.append((plan, current))
                current, count = [], 0
            current.append(piece)
            count += len(piece.rows)
        if current:
            shards.append((plan, current))
    return shards


def make_plan(
    source,
    table: dict[str, tuple[str, int]],
    seed: int,
    budget: float | None,
    columns: list[str],
    allow_short: bool = False,
) -> tuple[list[ConfigPlan], dict[str, bytes]]:
    """List, check, read footers of the requested configs only, and sample each config."""
    by_config: dict[str, list[FileRef]] = {}
    for ref in sorted(source.list_files(), key=lambda r: r.path):  # never the listing's order
        by_config.setdefault(ref.config, []).append(ref)
    check_configs(table, by_config, source.describe())
    wanted = [ref for c in table for ref in by_config[c]]
    footers = read_footers(source, wanted)
    available = {c: sum(parse_footer(footers[r.path]).num_rows for r in by_config[c]) for c in table}
    capped = check_short(table, available, allow_short)
    plans = []
    for config, (category, quota) in capped.items():
        plan = plan_config(config, category, quota, by_config[config], footers, seed, budget, columns)
        plan.short = quota < table[config][1]
        plans.append(plan)
    return plans, footers
