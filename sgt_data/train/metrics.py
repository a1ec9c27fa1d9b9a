"""Metrics sinks of the main process: `metrics.jsonl` (always), tensorboard (optional), a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Metrics:
    """Append one JSON line per logged step; on resume, drop lines past the checkpoint so history stays exact."""

    def __init__(
        self, output_dir: Path, enabled: bool, start_step: int, max_steps: int, tensorboard: bool, bar: bool
    ):
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        self.bar = None
        if not enabled:
            return
        self._truncate(start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step + 1)
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate(self, start_step: int) -> None:
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line and json.loads(line)["step"] <= start_step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Write a record that has a `step` key (1-based: the number of optimizer steps done)."""
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["step"])
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record.get('loss', float('nan')):.4f}", lr=f"{record.get('lr', 0):.2e}"
            )

    def advance(self) -> None:
        """One optimizer step done."""
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        """Flush and close the sinks."""
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl, in order (for tests and reports)."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]
