"""AdamW with exact fp32 master weights stored as bf16 parameters + their low 16 bits.

An fp32 number is its bf16 truncation (the high 16 bits) followed by 16 more mantissa bits. Keeping the
parameter in bf16 (what the matmuls read) and those low halves in an int16 buffer holds the fp32 master value
*exactly* in 4 bytes instead of 6 (bf16 copy + fp32 master): the update is done in fp32 on the reassembled value,
so nothing is lost to bf16 rounding (the reference's pure-bf16 AdamW drops most updates, spec §9 F1). The compute
weight is the fp32 master truncated (not rounded) to bf16. Moments are fp32.

Per parameter: 2 (bf16) + 2 (low bits) + 2 (bf16 grad) + 8 (m, v) = 14 bytes, which lets the 3B + 1.5B OmniGen2
benchmark model train on one 80 GB card with exact master weights where fp32 master + fp32 grads (16 bytes) do not.
"""

from __future__ import annotations

import math
import sys

import torch

if sys.byteorder != "little":  # the bit split below reads the low half first
    raise ImportError("split_adamw needs a little-endian machine")


def combine(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """bf16 high half + int16 low half -> the exact fp32 value."""
    return torch.stack((lo, hi.view(torch.int16)), dim=-1).view(torch.float32).squeeze(-1)


def split_into(master: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor) -> None:
    """Write fp32 `master` back as its high half (bf16, truncated) and low half (int16), in place."""
    halves = master.unsqueeze(-1).view(torch.int16)
    lo.copy_(halves[..., 0])
    hi.view(torch.int16).copy_(halves[..., 1])


class SplitAdamW(torch.optim.Optimizer):
    """Decoupled-weight-decay Adam for bf16 parameters with exact fp32 master values (see module doc).

    `grad_scale` (a 0-dim tensor, e.g. a clip coefficient) multiplies every gradient inside the step, so
    clipping needs no extra pass over the gradients and no host sync.
    """

    def __init__(
        self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype != torch.bfloat16:
                    raise TypeError(f"SplitAdamW needs bf16 parameters, got {p.dtype} {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None, grad_scale: torch.Tensor | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["lo"] = torch.zeros_like(p, dtype=torch.int16)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                step = state["step"]
                grad = p.grad.float()
                if grad_scale is not None:
                    grad.mul_(grad_scale)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                master = combine(p, state["lo"])
                master.mul_(1 - group["lr"] * group["weight_decay"])
                denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
                master.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**step))
                split_into(master, p, state["lo"])
        return loss


def clip_coefficient(params, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(total grad norm in fp32, min(1, max_norm / norm)) as device tensors, without a host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
    total = torch.linalg.vector_norm(norms)
    return total, (max_norm / (total + 1e-6)).clamp(max=1.0)
