"""The LLaVA-OneVision pipeline spec: category table, totals, opt-in replacements, and `--total` rescaling.

`pipelines/llava_ov.yaml` states every category's total and the grand total next to the per-config quotas;
loading checks that they agree (all problems at once), so a table that claims 500k while summing to 74k cannot
be written down. `quotas()` turns the table into an ordered {config: (category, count)} after the explicit
choices of the user: replacements (`--fix-missing`), exclusions (`--exclude`) and rescaling (`--total N`, which
keeps every config's share of the table by largest-remainder rounding, so the counts sum to exactly N).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sgt_data import config as cfg


@dataclass
class Category:
    total: int
    """Rows this category contributes; must equal the sum of `configs`."""
    configs: dict[str, int] = field(default_factory=dict)
    """Config name (a folder of the dataset repo, verbatim with its parentheses and commas) -> rows."""


@dataclass
class LlavaOvSpec:
    categories: dict[str, Category]
    """Category name -> its configs and total (SGT: General, Doc_Chart_Screen, Math_Reasoning, ...)."""
    total: int
    """Grand total; must equal the sum of the category totals."""
    repo_id: str = "lmms-lab/LLaVA-OneVision-Data"
    """Dataset repository on the Hub (one folder of Parquet files per config)."""
    revision: str = "main"
    """Branch, tag or commit; resolved to a commit sha at plan time and recorded."""
    seed: int = 42
    """Sampling seed; each config draws from its own stream derived from (seed, config name)."""
    rows_per_shard: int = 2000
    """Most sampled rows per output shard; a shard never mixes configs (resume is per config)."""
    fetch_budget: float | None = 1.3
    """Bytes fetched per byte kept that the sampler aims at (None: exact simple random sample, see plan)."""
    replacements: dict[str, dict[str, int]] = field(default_factory=dict)
    """Opt-in (`--fix-missing`): config -> configs that replace it; their counts must sum to its count."""

    def validate(self) -> list[str]:
        return validate_table(self)


def validate_table(spec: LlavaOvSpec) -> list[str]:
    """Every inconsistency of the table: totals that do not add up, duplicates, bad counts and replacements."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name, cat in spec.categories.items():
        summed = sum(cat.configs.values())
        if summed != cat.total:
            problems.append(f"categories.{name}.total is {cat.total} but its configs sum to {summed}")
        for config, count in cat.configs.items():
            if count < 0:
                problems.append(f"categories.{name}.configs.{config}: count {count} < 0")
            if config in seen:
                problems.append(f"config {config!r} is listed in both {seen[config]} and {name}")
            seen[config] = name
    cat_sum = sum(c.total for c in spec.categories.values())
    if cat_sum != spec.total:
        problems.append(f"total is {spec.total} but the category totals sum to {cat_sum}")
    for missing, subs in spec.replacements.items():
        if missing not in seen:
            problems.append(f"replacements.{missing}: not a config of any category")
            continue
        quota = spec.categories[seen[missing]].configs[missing]
        if sum(subs.values()) != quota:
            problems.append(
                f"replacements.{missing}: replacements sum to {sum(subs.values())}, not its count {quota}"
            )
        for sub in subs:
            if sub in seen:
                problems.append(f"replacements.{missing}.{sub}: already a config of {seen[sub]}")
    if spec.rows_per_shard < 1:
        problems.append(f"rows_per_shard must be >= 1, got {spec.rows_per_shard}")
    if spec.fetch_budget is not None and spec.fetch_budget < 1.0:
        problems.append(f"fetch_budget must be >= 1.0 (or null for an exact sample), got {spec.fetch_budget}")
    return problems


def load_spec(path: str | Path, overrides: list[str] | None = None) -> LlavaOvSpec:
    """Read and check a LLaVA-OV pipeline YAML (ConfigError lists every problem)."""
    return cfg.load(LlavaOvSpec, path, overrides)


def rescale(counts: dict[str, int], total: int) -> dict[str, int]:
    """Counts scaled to sum to `total`, keeping their ratios: floor, then the largest remainders get +1.

    Ties break by table order, so the result is deterministic."""
    current = sum(counts.values())
    if total < 0:
        raise ValueError(f"--total must be >= 0, got {total}")
    if current == 0:
        raise ValueError("cannot rescale a table whose counts sum to 0")
    # Integer arithmetic: float remainders differ by ulps, which would break ties against the table order.
    split = {k: divmod(v * total, current) for k, v in counts.items()}
    out = {k: q for k, (q, _) in split.items()}
    left = total - sum(out.values())
    position = {k: i for i, k in enumerate(counts)}
    order = sorted(split, key=lambda k: (-split[k][1], position[k]))
    for k in order[:left]:
        out[k] += 1
    return out


def quotas(
    spec: LlavaOvSpec,
    fix_missing: bool = False,
    exclude: tuple[str, ...] | list[str] = (),
    total: int | None = None,
) -> dict[str, tuple[str, int]]:
    """Ordered {config: (category, count)} after replacements, exclusions and rescaling, in table order.

    Configs with a count of 0 are dropped (nothing to fetch). Unknown `exclude` names are an error, so a typo
    never silently keeps a config."""
    table: dict[str, tuple[str, int]] = {}
    for name, cat in spec.categories.items():
        for config, count in cat.configs.items():
            if fix_missing and config in spec.replacements:
                for sub, sub_count in spec.replacements[config].items():
                    if sub in table:  # two replacements (or a base config) naming it: counts would be lost
                        raise ValueError(f"--fix-missing: {sub!r} is listed twice in the table; list it once")
                    table[sub] = (name, sub_count)
            else:
                table[config] = (name, count)
    unknown = [c for c in exclude if c not in table]
    if unknown:
        raise ValueError(
            f"--exclude {unknown}: not in the table after replacements; configs are: {', '.join(table)}"
        )
    for config in exclude:
        del table[config]
    if total is not None:
        scaled = rescale({c: n for c, (_, n) in table.items()}, total)
        table = {c: (cat, scaled[c]) for c, (cat, _) in table.items()}
    return {c: (cat, n) for c, (cat, n) in table.items() if n > 0}


def category_totals(table: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Rows per category of a quota table (for the plan summary and the manifest)."""
    out: dict[str, int] = {}
    for category, count in table.values():
        out[category] = out.get(category, 0) + count
    return out


def as_dict(spec: LlavaOvSpec) -> dict:
    """The spec as a plain mapping (recorded in plan.json and the manifest)."""
    return cfg.to_dict(dataclasses.replace(spec))
