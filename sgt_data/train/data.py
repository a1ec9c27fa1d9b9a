"""Reading our shards for training: an index of usable rows, random row access, and the DataLoader.

`ShardIndex` lists the `status == "ok"` rows of one or more shard folders (reading only the `status` column and
the Parquet footers), in a fixed order (folder, shard name, row), so a row index means the same row on every
rank and after every restart. Which rows a step uses is decided by the seeded `RatioSampler`, never by file order.

`StepDataset` is a map-style dataset whose keys are the sampler's `Draw`s: a worker reads the row (only the
columns its task needs, one cached row group at a time), then calls the port's `processor.prepare(row, task,
seed)`. The DataLoader runs it in `num_workers` processes and keeps the draw order, so the loop receives each
rank's samples step by step while the next steps are being decoded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from sgt_data.models.base import GEN_TASKS
from sgt_data.train.mixing import Draw, RatioSampler

VQA_COLUMNS = ("key", "source", "category", "image", "conversations")


def task_columns(task: str) -> tuple[str, ...]:
    """Columns `prepare` needs for `task`: the image, the target or conversation, the prompt, the key."""
    if task in GEN_TASKS:
        return ("key", "source", "image", "width", "height", task, f"prompt_{task}")
    if task == "vqa":
        return VQA_COLUMNS
    raise ValueError(f"unknown task {task!r}")


def shard_files(folder: str | Path) -> list[Path]:
    """The `shard-NNNNN.parquet` files of a built folder, in name order."""
    files = sorted(Path(folder).glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no shard-*.parquet files (build it with `sgt-data build ...`)")
    return files


@dataclass
class ShardIndex:
    """Usable rows of a list of shard files: row i lives in files[file_of[i]], row group group_of[i], offset."""

    files: list[str]
    file_of: np.ndarray
    group_of: np.ndarray
    offset_of: np.ndarray

    @classmethod
    def build(cls, folders: Iterable[str | Path]) -> ShardIndex:
        """Scan the `status` column of every shard and keep the `ok` rows."""
        files: list[str] = []
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for folder in folders:
            for path in shard_files(folder):
                pf = pq.ParquetFile(path)
                fid = len(files)
                files.append(str(path))
                for g in range(pf.metadata.num_row_groups):
                    status = pf.read_row_group(g, columns=["status"]).column(0).to_numpy(zero_copy_only=False)
                    rows = np.flatnonzero(status == "ok")
                    parts.append((np.full(len(rows), fid), np.full(len(rows), g), rows))
        if not parts:
            return cls(files, *(np.zeros(0, dtype=np.int64) for _ in range(3)))
        cat = [np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(3)]
        return cls(files, *cat)

    def __len__(self) -> int:
        return len(self.file_of)

    def locate(self, i: int) -> tuple[str, int, int]:
        """(file, row group, offset in the group) of usable row i."""
        return self.files[self.file_of[i]], int(self.group_of[i]), int(self.offset_of[i])


class RowReader:
    """Reads single rows by (file, group, offset), keeping the last few decoded row groups per column set."""

    def __init__(self, cache_size: int = 4):
        self.cache_size = cache_size
        self._groups: OrderedDict[tuple[str, int, tuple[str, ...]], Any] = OrderedDict()
        self._files: dict[str, pq.ParquetFile] = {}

    def read(self, path: str, group: int, offset: int, columns: tuple[str, ...]) -> dict[str, Any]:
        """One row as a dict of Python values (image columns stay {bytes, path} structs)."""
        key = (path, group, columns)
        table = self._groups.get(key)
        if table is None:
            pf = self._files.get(path) or self._files.setdefault(path, pq.ParquetFile(path))
            names = set(pf.schema_arrow.names)
            table = pf.read_row_group(group, columns=[c for c in columns if c in names])
            self._groups[key] = table
            while len(self._groups) > self.cache_size:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return table.slice(offset, 1).to_pylist()[0]

    def __getstate__(self) -> dict[str, Any]:
        # Workers start with empty caches; open file handles do not cross process boundaries.
        return {"cache_size": self.cache_size, "_groups": OrderedDict(), "_files": {}}


class StepDataset:
    """Map-style dataset keyed by `Draw`: read the row of the draw's task and let the port prepare it."""

    def __init__(self, indexes: dict[str, ShardIndex], processor: Any, cache_size: int = 4):
        self.indexes = indexes
        self.processor = processor
        self.reader = RowReader(cache_size)

    def __getitem__(self, draw: Draw) -> dict[str, Any]:
        path, group, offset = self.indexes[draw.task].locate(draw.index)
        row = self.reader.read(path, group, offset, task_columns(draw.task))
        try:
            sample = self.processor.prepare(row, draw.task, draw.seed)
        except Exception as err:
            # A row marked ok that the port cannot use is a data bug: stop, naming the row (no silent skip,
            # which would break the exact ratio and the rank agreement).
            where = f"{path} row group {group} row {offset} (key {row.get('key')!r}, task {draw.task})"
            raise RuntimeError(f"{where}: {err}") from err
        return {"task": draw.task, "index": draw.index, "sample": sample}


def task_indexes(proxies: list[str], vqa: list[str], tasks: Iterable[str]) -> dict[str, ShardIndex]:
    """One index per trained task; proxy tasks share the scan of the proxy folders."""
    proxy_index = ShardIndex.build(proxies) if any(t in GEN_TASKS for t in tasks) else None
    return {t: (ShardIndex.build(vqa) if t == "vqa" else proxy_index) for t in tasks}  # type: ignore[misc]


def _keep(item: Any) -> Any:
    """Collate nothing: each DataLoader item is one prepared sample (module-level so workers can pickle it)."""
    return item


def step_loader(
    dataset: StepDataset,
    sampler: RatioSampler,
    start_step: int,
    stop_step: int,
    rank: int,
    num_workers: int,
    prefetch_factor: int,
    seed: int,
) -> Iterator[list[dict[str, Any]]]:
    """Yield this rank's prepared samples step by step, from `start_step` (resume) to `stop_step`."""
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)  # worker seeds must not consume the global RNG
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        sampler=_LazyDraws(sampler, start_step, stop_step, rank),
        batch_size=None,
        collate_fn=_keep,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        persistent_workers=False,
        generator=generator,
    )
    per_step = sampler.samples_per_rank
    batch: list[dict[str, Any]] = []
    for item in loader:
        batch.append(item)
        if len(batch) == per_step:
            yield batch
            batch = []


class _LazyDraws:
    """The DataLoader's index stream: this rank's draws, generated lazily (long runs have millions)."""

    def __init__(self, sampler: RatioSampler, start: int, stop: int, rank: int):
        self.sampler, self.start, self.stop, self.rank = sampler, start, stop, rank

    def __iter__(self) -> Iterator[Draw]:
        return self.sampler.iter_draws(self.start, self.stop, self.rank)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.sampler.samples_per_rank
