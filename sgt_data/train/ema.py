"""Exponential moving average of the trainable weights, kept next to each rank's own parameter storage.

Under FSDP a rank holds only its shard of every flat parameter, so an EMA built from the rank-local tensors
costs 4 bytes per *local* parameter on the device, never a full CPU copy of the model per rank (the reference
deep-copies the whole model). Without sharding the local tensors are the full parameters. Updates are one
fused `torch._foreach_lerp_` per step; checkpoints store each rank's EMA tensors in its own file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def local_tensor(param: Any) -> Any:
    """The storage this rank owns for `param`: the local shard of a DTensor (FSDP2), else the tensor itself."""
    to_local = getattr(param, "to_local", None)
    return (to_local() if callable(to_local) else param).detach()


def local_params(model: Any) -> list[Any]:
    """This rank's trainable parameter storage, in module order (empty shards of FSDP1 views skipped)."""
    return [local_tensor(p) for p in model.parameters() if p.requires_grad and local_tensor(p).numel() > 0]


class EMA:
    """EMA shadow of `local_params(model)`: ema <- decay * ema + (1 - decay) * param after every step."""

    def __init__(self, model: Any, decay: float):
        import torch

        self.decay = decay
        self.params = local_params(model)
        with torch.no_grad():
            self.shadow = [p.detach().clone().float() for p in self.params]

    def update(self) -> None:
        """One EMA step over all local tensors (call after optimizer.step())."""
        import torch

        with torch.no_grad():
            src = [p.float() if p.dtype != torch.float32 else p for p in self.params]
            torch._foreach_lerp_(self.shadow, src, 1.0 - self.decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the model (to export them), one tensor of scratch at a time."""
        import torch

        def swap() -> None:
            with torch.no_grad():
                for p, e in zip(self.params, self.shadow):
                    tmp = p.detach().clone()
                    p.copy_(e)
                    e.copy_(tmp)

        swap()
        try:
            yield
        finally:
            swap()

    def state_dict(self) -> dict[str, Any]:
        """This rank's EMA tensors (device-independent: moved to CPU when saved)."""
        return {"decay": self.decay, "shadow": [t.cpu() for t in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's EMA tensors; their number and shapes must match the current sharding."""
        import torch

        shadow = state["shadow"]
        shapes = [tuple(t.shape) for t in self.shadow]
        if [tuple(t.shape) for t in shadow] != shapes:
            raise ValueError(
                "EMA checkpoint does not match this model/sharding (resume with the same world size)"
            )
        with torch.no_grad():
            for dst, src in zip(self.shadow, shadow):
                dst.copy_(src)

    def save(self, folder: Path, rank: int) -> None:
        """Write `ema-rank-NNNNN.pt` into a checkpoint folder."""
        import torch

        torch.save(self.state_dict(), folder / f"ema-rank-{rank:05d}.pt")

    def load(self, folder: Path, rank: int) -> None:
        """Read this rank's `ema-rank-NNNNN.pt` from a checkpoint folder."""
        import torch

        self.load_state_dict(torch.load(folder / f"ema-rank-{rank:05d}.pt", weights_only=True))
