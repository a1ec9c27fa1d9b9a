"""GPU attention helpers: varlen attention for Qwen2.5-VL's windowed vision tower, GQA kernel probe.

Without flash-attn, transformers runs the vision tower's windowed attention as a Python loop over windows
(~80 SDPA calls per image per layer): on a SAM step that is ~9k tiny kernels, and the GPU idles more than half
the step (spec §11). `use_varlen_vision_attention` swaps each vision attention module's class for a subclass
whose forward runs all windows in one call: torch's `varlen_attn` (flash, cu_seqlens) where available, else
one SDPA call over windows padded to the longest with a key mask. Same parameters, same names, same math.
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F


def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch without the varlen front-end
        return None
    return varlen_attn


_MAX_CACHE: dict[int, tuple[weakref.ref, int]] = {}


def _max_len(cu: torch.Tensor) -> int:
    """max(cu[1:] - cu[:-1]) with one host sync per distinct cu_seqlens tensor (all layers share two)."""
    hit = _MAX_CACHE.get(id(cu))
    if hit is not None and hit[0]() is cu:
        return hit[1]
    value = int((cu[1:] - cu[:-1]).max())
    key = id(cu)
    _MAX_CACHE[key] = (weakref.ref(cu, lambda _r: _MAX_CACHE.pop(key, None)), value)
    return value


def windows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float):
    """Block-diagonal non-causal attention. q/k/v [T, H, d]; windows given by cu_seqlens `cu`. Returns [T, H, d]."""
    max_len = _max_len(cu)
    varlen = _varlen_fn()
    if varlen is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu32 = cu.to(torch.int32)
        return varlen(q, k, v, cu32, cu32, max_len, max_len, scale=scale)
    lens = cu[1:] - cu[:-1]
    keep = lens > 0  # transformers' window boundaries may repeat; an empty window would softmax to NaN
    lens, starts = lens[keep], cu[:-1][keep]
    pos = torch.arange(max_len, device=q.device)
    valid = pos[None, :] < lens[:, None]  # [windows, max_len]
    index = (starts[:, None] + pos[None, :]).clamp(max=q.shape[0] - 1)
    pad = [x[index].transpose(1, 2) for x in (q, k, v)]  # [windows, H, max_len, d]
    out = F.scaled_dot_product_attention(*pad, attn_mask=valid[:, None, None, :], scale=scale)
    return out.transpose(1, 2)[valid]  # [T, H, d]: windows are contiguous and in token order


def use_varlen_vision_attention(mllm: torch.nn.Module) -> int:
    """Make every Qwen2.5-VL vision attention run all windows in one kernel; returns how many were switched."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    base = qwen.Qwen2_5_VLVisionAttention

    class VarlenVisionAttention(base):
        def forward(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None, **kwargs):
            if position_embeddings is None:  # older transformers pass (cos, sin) positionally
                position_embeddings = rotary_pos_emb
            T = hidden_states.shape[0]
            q, k, v = self.qkv(hidden_states).reshape(T, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            cos, sin = position_embeddings
            q, k = qwen.apply_rotary_pos_emb_vision(q, k, cos, sin)
            out = windows_attention(q, k, v.to(q.dtype), cu_seqlens, self.head_dim**-0.5)
            return self.proj(out.reshape(T, -1))

    count = 0
    for module in mllm.modules():
        if type(module) is base:
            module.__class__ = VarlenVisionAttention
            count += 1
    return count


@functools.lru_cache(maxsize=8)
def flash_supports_gqa(device_index: int) -> bool:
    """Whether SDPA's flash kernel accepts `enable_gqa` here (else K/V heads must be repeated first)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 4, 16, 64, device=f"cuda:{device_index}", dtype=torch.bfloat16)
    kv = torch.randn(1, 2, 16, 64, device=q.device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except RuntimeError:
        return False
