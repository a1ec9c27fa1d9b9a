"""Canonical Parquet shards: schemas, names, atomic writes, completion markers, stats and the manifest.

Every output folder of `sgt-data build ...` looks the same:

    out/
      shard-00000.parquet ...      one row per input sample, `ok` or with its error
      completions/shard-00000      written after the shard's atomic rename: "this shard is done"
      stats/shard-00000.json       rows per status, timings
      manifest.json                tool version, spec, steps, inputs, counts, timings

Image-like columns use the `datasets` Image layout (struct of `bytes` + `path`), and the Arrow schema carries the
`datasets` feature metadata, so `datasets.load_dataset("parquet", ...)` and the Hub viewer decode pictures.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_GLOB = "shard-*.parquet"
LEVELS = ("seg", "edge", "depth")

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CONVERSATION_TYPE = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
ANNOTATIONS_TYPE = pa.list_(
    pa.struct(
        [("id", pa.int64()), ("area", pa.int64()), ("size", pa.list_(pa.int32())), ("counts", pa.string())]
    )
)

# Column name -> (arrow type, datasets feature). Shared by every shard kind.
_COLUMNS: dict[str, tuple[pa.DataType, dict[str, Any]]] = {
    "key": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "source": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "category": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "image": (IMAGE_TYPE, {"_type": "Image"}),
    "width": (pa.int32(), {"dtype": "int32", "_type": "Value"}),
    "height": (pa.int32(), {"dtype": "int32", "_type": "Value"}),
    "annotations": (
        ANNOTATIONS_TYPE,
        {
            "feature": {
                "id": {"dtype": "int64", "_type": "Value"},
                "area": {"dtype": "int64", "_type": "Value"},
                "size": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
                "counts": {"dtype": "string", "_type": "Value"},
            },
            "_type": "List",
        },
    ),
    "sam_mask": (IMAGE_TYPE, {"_type": "Image"}),
    "conversations": (
        CONVERSATION_TYPE,
        {
            "feature": {
                "from": {"dtype": "string", "_type": "Value"},
                "value": {"dtype": "string", "_type": "Value"},
            },
            "_type": "List",
        },
    ),
    "depth_min": (pa.float32(), {"dtype": "float32", "_type": "Value"}),
    "depth_max": (pa.float32(), {"dtype": "float32", "_type": "Value"}),
    "origin": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "status": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "error": (pa.string(), {"dtype": "string", "_type": "Value"}),
}
for _level in LEVELS:
    _COLUMNS[_level] = (IMAGE_TYPE, {"_type": "Image"})
    _COLUMNS[f"prompt_{_level}"] = (pa.string(), {"dtype": "string", "_type": "Value"})

IMAGE_COLUMNS = frozenset(name for name, (tp, _) in _COLUMNS.items() if tp == IMAGE_TYPE)


def schema_for(columns: Iterable[str]) -> pa.Schema:
    """Arrow schema for `columns` (in that order) with the `datasets` feature metadata attached."""
    names = list(columns)
    unknown = [c for c in names if c not in _COLUMNS]
    if unknown:
        raise KeyError(f"no canonical column named {unknown}; known: {sorted(_COLUMNS)}")
    fields = [pa.field(c, _COLUMNS[c][0]) for c in names]
    features = {c: _COLUMNS[c][1] for c in names}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema(fields, metadata=meta)


def sample_columns(levels: Iterable[str] = ()) -> list[str]:
    """Columns of a proxy shard holding `levels` (canonical order)."""
    cols = ["key", "source", "origin", "image", "width", "height"]
    for level in LEVELS:
        if level in levels:
            cols += [level, f"prompt_{level}"]
            if level == "depth":
                cols += ["depth_min", "depth_max"]
    return cols + ["status", "error"]


INGEST_COLUMNS = [
    "key",
    "source",
    "origin",
    "image",
    "width",
    "height",
    "annotations",
    "sam_mask",
    "status",
    "error",
]
VQA_COLUMNS = ["key", "source", "category", "origin", "image", "conversations", "status", "error"]


def as_image(value: bytes | dict | None, path: str | None = None) -> dict | None:
    """Bytes (or an existing {bytes, path}) -> the `datasets` Image struct; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    return {"bytes": value, "path": path}


def to_table(rows: dict[str, list], columns: list[str]) -> pa.Table:
    """Columns dict -> Arrow table with the canonical schema (image columns wrapped as {bytes, path})."""
    n = len(rows["key"])
    arrays = []
    for name in columns:
        values = rows.get(name, [None] * n)
        if name in IMAGE_COLUMNS:
            values = [as_image(v) for v in values]
        arrays.append(pa.array(values, type=_COLUMNS[name][0]))
    return pa.Table.from_arrays(arrays, schema=schema_for(columns))


def shard_name(index: int) -> str:
    """`shard-00042.parquet`: five digits, deterministic, sortable."""
    return f"shard-{index:05d}.parquet"


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def write_table_atomic(table: pa.Table, path: Path, row_group_size: int = 64) -> None:
    """Write to a temp name in the same folder, fsync, then rename: readers never see a partial shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Small row groups keep image shards streamable and make row-group reads cheap. Image bytes are already
    # JPEG/PNG-compressed: zstd on them costs CPU for nothing, so only the other columns are compressed.
    compression = {
        name: ("none" if table.schema.field(name).type == IMAGE_TYPE else "zstd")
        for name in table.schema.names
    }
    pq.write_table(table, tmp, row_group_size=row_group_size, compression=compression, write_statistics=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def status_counts(table: pa.Table) -> dict[str, int]:
    return dict(sorted(Counter(table.column("status").to_pylist()).items()))


def finish_shard(
    out_dir: Path,
    index: int,
    table: pa.Table,
    extra_stats: dict | None = None,
    fingerprint: str | None = None,
) -> dict:
    """Write shard `index`, then its stats, then its completion marker (in that order: marker = done).

    The marker records the shard's `fingerprint` (what produced it: spec, steps, inputs) so a rerun can tell a
    shard of the same plan from one built with other settings."""
    started = time.time()
    write_table_atomic(table, out_dir / shard_name(index))
    stats = {"shard": shard_name(index), "rows": table.num_rows, "status": status_counts(table)}
    stats.update(extra_stats or {})
    stats["write_seconds"] = round(time.time() - started, 3)
    write_json_atomic(stats, out_dir / "stats" / f"{shard_stem(index)}.json")
    marker = {"rows": table.num_rows, **({"fingerprint": fingerprint} if fingerprint else {})}
    write_json_atomic(marker, out_dir / "completions" / shard_stem(index))
    return stats


def is_complete(out_dir: Path, index: int) -> bool:
    return (out_dir / "completions" / shard_stem(index)).exists() and (out_dir / shard_name(index)).exists()


def marker_fingerprint(out_dir: Path, index: int) -> str | None:
    """The fingerprint recorded in shard `index`'s completion marker (None if absent or unreadable)."""
    try:
        return json.loads((out_dir / "completions" / shard_stem(index)).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def remove_shard(out_dir: Path, index: int) -> None:
    """Delete a shard with its marker and stats (marker first: a half-removed shard is never 'done')."""
    (out_dir / "completions" / shard_stem(index)).unlink(missing_ok=True)
    (out_dir / shard_name(index)).unlink(missing_ok=True)
    (out_dir / "stats" / f"{shard_stem(index)}.json").unlink(missing_ok=True)


def shard_indices(out_dir: Path) -> set[int]:
    """Indices of the shards present in a folder (files or markers)."""
    found = {int(p.stem.split("-")[1]) for p in Path(out_dir).glob(SHARD_GLOB)}
    completions = Path(out_dir) / "completions"
    if completions.is_dir():
        found |= {int(p.name.split("-")[1]) for p in completions.glob("shard-*")}
    return found


def list_shards(folder: str | Path) -> list[Path]:
    """Shard files of a built folder, sorted by index."""
    return sorted(Path(folder).glob(SHARD_GLOB))


def iter_rows(folder: str | Path, columns: list[str] | None = None, ok_only: bool = False) -> Iterator[dict]:
    """Rows of every shard in order (only `columns` are read)."""
    for path in list_shards(folder):
        pf = pq.ParquetFile(path)
        wanted = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(columns=wanted, batch_size=256):
            for row in batch.to_pylist():
                if not ok_only or row.get("status") == "ok":
                    yield row


def read_stats(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out_dir / "stats").glob("shard-*.json"))]


def git_commit() -> str | None:
    """The source checkout's commit, when running from one (recorded for reproducibility)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_manifest(out_dir: Path, **fields: Any) -> dict:
    """Write `manifest.json`: tool version, git commit, and what the command passes (spec, steps, inputs...).

    Totals are summed from the per-shard stats so the manifest always agrees with what is on disk."""
    from sgt_data import __version__

    stats = read_stats(out_dir)
    totals: Counter = Counter()
    for s in stats:
        totals.update(s.get("status", {}))
    manifest = {
        "tool": "sgt-data",
        "version": __version__,
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards": len(stats),
        "rows": sum(s.get("rows", 0) for s in stats),
        "counts": dict(sorted(totals.items())),
        **fields,
    }
    write_json_atomic(manifest, out_dir / "manifest.json")
    return manifest


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no manifest.json; is this a folder written by `sgt-data build`?")
    return json.loads(path.read_text())
