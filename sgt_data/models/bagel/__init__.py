"""BAGEL (BAGEL-7B-MoT) port: model, packer, loader, inference, and the `sgt-data` adapter (adapter.ADAPTER).

Heavy imports are lazy: importing this package does not import torch.
"""

from __future__ import annotations

__all__ = ["from_pretrained", "save_pretrained", "write_tiny_checkpoint"]


def __getattr__(name: str):
    if name in __all__:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(name)
