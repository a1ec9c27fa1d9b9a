"""Omni-RoPE: OmniGen2's 3-axis rotary position embedding with interleaved pairs.

Each token carries three integer ids (axis 0: sequence / image index, axes 1-2: row / column). Text token i gets
(i, i, i); the k-th reference image gets (shift_k, row, col) with shift_0 = text length and
shift_{k+1} = shift_k + max(h_k, w_k) (patch units); the noisy image gets (final shift, row, col).

Rotation angles are computed in float64 (as the reference's complex128 tables) and applied in float32 to
interleaved channel pairs (2i, 2i+1), which is the same math as multiplying by a complex number.
"""

from __future__ import annotations

import torch


def axis_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Inverse frequencies of one axis, float64 [dim/2]: theta^(-2i/dim)."""
    # explicit CPU: the model may be constructed under `torch.device("meta")` before its weights load
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu")[: dim // 2] / dim))


def sample_position_ids(
    text_len: int, ref_sizes: list[tuple[int, int]], img_size: tuple[int, int], patch_size: int
) -> torch.Tensor:
    """Omni-RoPE ids [text_len + ref tokens + image tokens, 3] int32 for one sample.

    `ref_sizes` / `img_size` are latent (H, W) sizes; they are divided by `patch_size` here.
    """
    parts = [torch.arange(text_len, dtype=torch.int32).unsqueeze(1).expand(text_len, 3)]
    shift = text_len
    for h, w in [*ref_sizes, img_size]:
        gh, gw = h // patch_size, w // patch_size
        rows = torch.arange(gh, dtype=torch.int32).repeat_interleave(gw)
        cols = torch.arange(gw, dtype=torch.int32).repeat(gh)
        parts.append(torch.stack([torch.full_like(rows, shift), rows, cols], dim=1))
        shift += max(gh, gw)
    return torch.cat(parts, dim=0)


def batch_position_ids(
    text_lens: list[int],
    ref_sizes: list[list[tuple[int, int]]],
    img_sizes: list[tuple[int, int]],
    patch_size: int,
) -> torch.Tensor:
    """Padded ids [B, max_len, 3] int32 (rows past a sample's length are 0), as the reference lays them out."""
    per = [sample_position_ids(t, r, i, patch_size) for t, r, i in zip(text_lens, ref_sizes, img_sizes)]
    out = torch.zeros(len(per), max(p.shape[0] for p in per), 3, dtype=torch.int32)
    for b, p in enumerate(per):
        out[b, : p.shape[0]] = p
    return out


class RopeTables:
    """Per-device cache of the per-axis inverse frequencies; turns ids into (cos, sin) [..., head_dim/2]."""

    def __init__(self, axes_dim: list[int], axes_lens: list[int], theta: float = 10000.0) -> None:
        self.axes_dim = list(axes_dim)
        self.axes_lens = list(axes_lens)
        self.inv = [axis_frequencies(d, theta) for d in self.axes_dim]
        self._cache: dict[torch.device, list[torch.Tensor]] = {}

    def _freqs(self, device: torch.device) -> list[torch.Tensor]:
        if device not in self._cache:
            self._cache[device] = [f.to(device) for f in self.inv]
        return self._cache[device]

    def cos_sin(
        self, ids: torch.Tensor, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CPU ids [..., 3] int -> cos, sin float32 [..., head_dim/2] on `device` (angles formed in float64)."""
        for axis, length in enumerate(self.axes_lens):
            # The reference gathers from a table of `length` rows; an id past it is a configuration error.
            if ids.numel() and int(ids[..., axis].max()) >= length:
                raise ValueError(
                    f"Omni-RoPE axis {axis} id {int(ids[..., axis].max())} exceeds axes_lens[{axis}]={length}: "
                    "shorten the text / image or raise axes_lens in transformer/config.json"
                )
        ids = ids.to(device, non_blocking=True)
        freqs = self._freqs(ids.device)
        angles = torch.cat([ids[..., a : a + 1].double() * freqs[a] for a in range(len(freqs))], dim=-1)
        return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, L, H, d] by angles cos/sin [B, L, d/2]; computed in float32."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)
