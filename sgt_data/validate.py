"""`sgt-data validate DIR`: is this built folder complete and self-consistent?

Checks, in the order a user would fix them:

1. every shard has a completion marker and every marker has its shard (a shard without a marker means the build
   stopped before finishing it: *partial*; a marker without its shard means the folder was edited: *error*);
2. every shard's Arrow schema is the canonical one (column names, types, `datasets` feature metadata) for the
   folder's kind, and all shards agree;
3. per-shard stats and markers agree with the rows really in the shard, status by status;
4. the manifest's `rows`, `shards` and `counts` equal the sums over the shards, the inputs the build counted
   (`inputs_total`, when recorded) equal the rows out, and no `key` appears twice: nothing lost, nothing doubled.

Problems are *partial* (the build did not finish: rerun it, or push with `--allow-partial`) or *errors* (the folder
disagrees with itself: rebuild). `validate(folder)` returns a `Report`; `push` calls it before uploading.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PARTIAL = "partial"
ERROR = "error"


@dataclass
class Problem:
    """One finding: `severity` is PARTIAL or ERROR, `message` names the file and the fix."""

    severity: str
    message: str


@dataclass
class Report:
    """What `validate` found: complete shards, totals read from the shards themselves, and problems."""

    folder: Path
    kind: str | None = None
    complete_shards: list[Path] = field(default_factory=list)
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def partial(self) -> bool:
        """True when every problem only says the build is unfinished."""
        return bool(self.problems) and not self.errors

    def add(self, severity: str, message: str) -> None:
        self.problems.append(Problem(severity, message))

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "no rows"
        head = f"{self.folder}: {len(self.complete_shards)} complete shards, {self.rows} rows ({counts})"
        if self.kind:
            head += f", kind {self.kind}"
        if self.ok:
            return head + "\nOK"
        lines = [head, f"{len(self.problems)} problem(s):"]
        lines += [f"  [{p.severity}] {p.message}" for p in self.problems]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "kind": self.kind,
            "shards": [p.name for p in self.complete_shards],
            "rows": self.rows,
            "counts": self.counts,
            "ok": self.ok,
            "partial": self.partial,
            "problems": [{"severity": p.severity, "message": p.message} for p in self.problems],
        }


def expected_columns(manifest: dict[str, Any] | None) -> list[str] | None:
    """Canonical column list for the manifest's `kind` (None when the kind is not recorded)."""
    from sgt_data import shards

    kind = (manifest or {}).get("kind")
    if kind == "ingest":
        return list(shards.INGEST_COLUMNS)
    if kind == "vqa":
        return list(shards.VQA_COLUMNS)
    if kind == "proxies":
        return shards.sample_columns((manifest or {}).get("levels") or ())
    return None


def _schema_problem(name: str, schema, wanted: list[str] | None) -> str | None:
    """Why `schema` is not the canonical schema (for `wanted` columns, or for its own columns), else None."""
    from sgt_data import shards

    names = list(schema.names)
    unknown = [c for c in names if c not in shards._COLUMNS]
    if unknown:
        return f"{name}: columns {unknown} are not canonical sgt-data columns; rebuild with `sgt-data build`"
    if wanted is not None and names != wanted:
        return f"{name}: columns {names} != expected {wanted} for this kind; rebuild with `sgt-data build`"
    canonical = shards.schema_for(names)
    for got, want in zip(schema, canonical):
        if not got.type.equals(want.type):
            return f"{name}: column {got.name!r} has type {got.type}, expected {want.type}; rebuild the shard"
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta is None or json.loads(meta) != json.loads(canonical.metadata[b"huggingface"]):
        return f"{name}: missing or wrong `datasets` feature metadata (images would not display); rebuild"
    return None


def _check_keys(report: Report, paths: list[Path]) -> None:
    """Every row's `key` is unique across the folder: a duplicate means an input was processed twice."""
    import pyarrow.parquet as pq

    seen: dict[str, str] = {}
    duplicates = []
    for path in paths:
        try:
            keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
        except Exception:  # noqa: BLE001 - unreadable shards are already reported by _check_shard
            continue
        for key in keys:
            if key in seen:
                duplicates.append(f"{key!r} in {seen[key]} and {path.name}")
            seen.setdefault(key, path.name)
    if duplicates:
        shown = "; ".join(duplicates[:5]) + (
            f"; ... {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        )
        report.add(
            ERROR, f"{len(duplicates)} duplicate key(s): {shown}; rebuild (an input was processed twice)"
        )


def _check_shard(report: Report, folder: Path, path: Path, wanted: list[str] | None) -> Counter | None:
    """Schema, marker and stats of one shard; returns its status counts (None if unreadable)."""
    import pyarrow.parquet as pq

    stem = path.name.removesuffix(".parquet")
    try:
        pf = pq.ParquetFile(path)
        problem = _schema_problem(path.name, pf.schema_arrow, wanted)
        if problem:
            report.add(ERROR, problem)
        rows = pf.metadata.num_rows
        status = Counter(pf.read(columns=["status"]).column("status").to_pylist())
    except Exception as exc:  # noqa: BLE001 - any unreadable shard is a finding, not a crash
        report.add(
            ERROR, f"{path.name}: unreadable Parquet ({exc}); delete it and its marker, rerun the build"
        )
        return None
    marker = folder / "completions" / stem
    try:
        marked = json.loads(marker.read_text()).get("rows")
    except (OSError, ValueError, AttributeError):
        marked = None
    if marked is not None and marked != rows:
        report.add(ERROR, f"{marker}: says {marked} rows, {path.name} has {rows}; rerun the build for it")
    stats_path = folder / "stats" / f"{stem}.json"
    if not stats_path.exists():
        report.add(ERROR, f"{stats_path} is missing for a completed shard; delete its marker and rerun")
    else:
        stats = json.loads(stats_path.read_text())
        if stats.get("rows") != rows:
            report.add(ERROR, f"{stats_path}: rows {stats.get('rows')} != {rows} rows in {path.name}")
        if dict(stats.get("status", {})) != dict(status):
            report.add(
                ERROR, f"{stats_path}: status {stats.get('status')} != {dict(status)} read from {path.name}"
            )
    report.rows += rows
    if report.columns == []:
        report.columns = list(pf.schema_arrow.names)
    elif report.columns != list(pf.schema_arrow.names):
        report.add(ERROR, f"{path.name}: columns differ from the first shard's {report.columns}; rebuild")
    return status


def _check_manifest(report: Report, manifest: dict[str, Any], unfinished: bool) -> None:
    """Manifest totals == shard totals; inputs counted in == rows out.

    While shards are unfinished a manifest that counts more than the complete shards hold is expected (partial);
    in a finished folder any disagreement is an error."""
    for key in ("rows", "shards", "counts"):
        if key not in manifest:
            report.add(ERROR, f"manifest.json has no {key!r}; it was not written by `sgt-data build`")
    lag = PARTIAL if unfinished else ERROR
    if manifest.get("rows", report.rows) != report.rows:
        severity = lag if manifest["rows"] > report.rows else ERROR
        report.add(
            severity, f"manifest.json rows {manifest['rows']} != {report.rows} rows in the complete shards"
        )
    if manifest.get("shards", len(report.complete_shards)) != len(report.complete_shards):
        report.add(
            PARTIAL if manifest["shards"] > len(report.complete_shards) else ERROR,
            f"manifest.json lists {manifest['shards']} shards, {len(report.complete_shards)} are complete",
        )
    counts = dict(manifest.get("counts", report.counts))
    if counts != report.counts:
        behind = all(counts.get(k, 0) >= v for k, v in report.counts.items())
        report.add(
            lag if behind else ERROR,
            f"manifest.json counts {counts} != {report.counts} summed over the complete shards",
        )
    total = manifest.get("inputs_total")
    if total is not None and total != report.rows:
        severity = PARTIAL if total > report.rows else ERROR
        report.add(
            severity, f"the build counted {total} input samples but the shards hold {report.rows} rows"
        )


def validate(folder: str | Path) -> Report:
    """Check a built folder (see the module docstring); never raises on a bad folder, reports instead."""
    from sgt_data import shards

    folder = Path(folder)
    report = Report(folder=folder)
    if not folder.is_dir():
        report.add(ERROR, f"{folder} is not a folder; pass the --output folder of `sgt-data build`")
        return report
    try:
        report.manifest = shards.read_manifest(folder)
        report.kind = report.manifest.get("kind")
    except FileNotFoundError as exc:
        report.add(PARTIAL, f"{exc} (the build writes it last; rerun the build to finish)")
    except ValueError as exc:
        report.add(ERROR, f"{folder / 'manifest.json'} is not valid JSON ({exc}); rerun the build")
    files = shards.list_shards(folder)
    markers = sorted((folder / "completions").glob("shard-*")) if (folder / "completions").is_dir() else []
    file_stems = {p.name.removesuffix(".parquet") for p in files}
    for marker in markers:
        if marker.name not in file_stems:
            report.add(ERROR, f"{marker} has no {marker.name}.parquet; delete the marker and rerun the build")
    for tmp in sorted(folder.glob(".shard-*.tmp-*")):
        report.add(PARTIAL, f"{tmp.name}: leftover of an interrupted write; rerun the build (it is ignored)")
    wanted = expected_columns(report.manifest)
    totals: Counter = Counter()
    unfinished = False
    for path in files:
        if not (folder / "completions" / path.name.removesuffix(".parquet")).exists():
            unfinished = True
            report.add(PARTIAL, f"{path.name} has no completion marker: unfinished; rerun the build command")
            continue
        report.complete_shards.append(path)
        status = _check_shard(report, folder, path, wanted)
        totals.update(status or {})
    report.counts = dict(sorted(totals.items()))
    _check_keys(report, report.complete_shards)
    if not files:
        report.add(ERROR, f"{folder} holds no shard-*.parquet files; is it the --output of `sgt-data build`?")
    if report.manifest is not None:
        unfinished = unfinished or report.manifest.get("shards", 0) > len(report.complete_shards)
        _check_manifest(report, report.manifest, unfinished)
    return report


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="output folder of `sgt-data build ...`")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    """Print the report; exit 0 when the folder is complete and consistent, 1 otherwise."""
    report = validate(args.folder)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1
