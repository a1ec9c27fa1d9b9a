"""Packed attention for BAGEL: the reference mask semantics over a pack of samples, without padding.

Rule (reference `create_sparse_mask`): q may attend k iff they are in the same sample, k <= q or both are in
the same `full`/`noise` split, and k is not in a `noise` split other than q's. So a split is bidirectional
inside itself and causal towards earlier splits, noised latents are invisible to every other token, and
samples are isolated.

Tokens are processed in "compute order" (all und tokens, then all gen tokens: see modeling.py), so the rule
is written on per-token metadata (sample, original position, split ids) rather than on index arithmetic.
Backends: `sdpa` = exact dense SDPA per sample (CPU, tests, small packs); `flex` = compiled flex attention
with one block mask per pack (GPU training). The ViT uses `varlen_images` (one SDPA per image).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

FLEX_BLOCK = 128


@dataclass
class PackMeta:
    """Per-token mask metadata, in compute order. `pos` is the token's position in the original pack."""

    doc: torch.Tensor
    pos: torch.Tensor
    fn: torch.Tensor  # split id if the token's split is full/noise, else -1
    noise: torch.Tensor  # split id if the token's split is noise, else -1
    num_docs: int
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_splits(
        cls, sample_lens, split_lens, attn_modes, order: torch.Tensor | None = None, device=None
    ) -> PackMeta:
        """Build from the packer's lists (trailing pad entries, if any, beyond sum(sample_lens) are ignored)."""
        total = sum(sample_lens)
        doc = torch.repeat_interleave(torch.arange(len(sample_lens)), torch.tensor(sample_lens))
        fn, noise, n = [], [], 0
        for i, (length, mode) in enumerate(zip(split_lens, attn_modes)):
            if n >= total:
                break
            if mode not in ("causal", "full", "noise"):
                raise ValueError(f"unknown attention mode {mode!r}")
            fn += [i if mode in ("full", "noise") else -1] * length
            noise += [i if mode == "noise" else -1] * length
            n += length
        if n != total:
            raise ValueError(f"split_lens cover {n} tokens but sample_lens {total}")
        pos = torch.arange(total)
        fn_t, noise_t = torch.tensor(fn), torch.tensor(noise)
        if order is not None:
            order = order.cpu()
            doc, pos, fn_t, noise_t = doc[order], pos[order], fn_t[order], noise_t[order]
        to = dict(device=device)
        return cls(doc.to(**to), pos.to(**to), fn_t.to(**to), noise_t.to(**to), len(sample_lens))

    def allowed(self, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        same_doc = self.doc[qi] == self.doc[ki]
        causal = self.pos[ki] <= self.pos[qi]
        same_split = (self.fn[qi] == self.fn[ki]) & (self.fn[qi] >= 0)
        hidden = (self.noise[ki] >= 0) & (self.noise[ki] != self.noise[qi])
        return same_doc & (causal | same_split) & ~hidden

    def dense(self) -> torch.Tensor:
        """[L, L] bool, True = attend (tests; small packs only)."""
        idx = torch.arange(self.doc.numel(), device=self.doc.device)
        return self.allowed(idx[:, None], idx[None, :])

    def doc_rows(self) -> list[torch.Tensor]:
        if "rows" not in self._cache:
            order = torch.argsort(self.doc, stable=True)
            counts = torch.bincount(self.doc, minlength=self.num_docs).tolist()
            self._cache["rows"] = [r for r in order.split(counts) if r.numel()]
        return self._cache["rows"]

    def block_mask(self, num_heads: int):
        """One flex BlockMask for the pack, padded to a multiple of FLEX_BLOCK with a causal pad sample."""
        if "block" not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            n = self.doc.numel()
            padded = -(-n // FLEX_BLOCK) * FLEX_BLOCK
            pad = padded - n
            dev = self.doc.device

            def ext(t, fill):
                return torch.cat([t, torch.full((pad,), fill, dtype=t.dtype, device=dev)]) if pad else t

            doc = ext(self.doc, -1)
            pos = torch.cat([self.pos, torch.arange(pad, device=dev) + n]) if pad else self.pos
            fn, noise = ext(self.fn, -1), ext(self.noise, -1)

            def mask_mod(b, h, qi, ki):
                same_doc = doc[qi] == doc[ki]
                causal = pos[ki] <= pos[qi]
                same_split = (fn[qi] == fn[ki]) & (fn[qi] >= 0)
                hidden = (noise[ki] >= 0) & (noise[ki] != noise[qi])
                return same_doc & (causal | same_split) & ~hidden

            self._cache["block"] = (
                create_block_mask(
                    mask_mod,
                    None,
                    None,
                    padded,
                    padded,
                    device=dev,
                    BLOCK_SIZE=FLEX_BLOCK,
                    _compile=dev.type == "cuda",
                ),
                pad,
            )
        return self._cache["block"]


_compiled_flex = None


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        # automatic dynamic shapes: the first pack length compiles static, a second one recompiles once with a
        # symbolic length, so varying packs do not recompile every step
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def _eager_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: PackMeta, backend: str = "sdpa"
) -> torch.Tensor:
    """q [L, H, D], k/v [L, Hkv, D] (compute order) -> [L, H, D]. GQA: q head h uses kv head h // (H/Hkv)."""
    if backend == "flex":
        block, pad = meta.block_mask(q.shape[1])
        qt, kt, vt = (F.pad(t, (0, 0, 0, 0, 0, pad)).transpose(0, 1)[None] for t in (q, k, v))
        fn = _flex() if q.is_cuda else _eager_flex()
        out = fn(qt, kt, vt, block_mask=block, enable_gqa=True)
        return out[0].transpose(0, 1)[: q.shape[0]]
    if backend != "sdpa":
        raise ValueError(f"unknown attention backend {backend!r}: sdpa or flex")
    rows_list = meta.doc_rows()
    if len(rows_list) == 1 and rows_list[0].numel() == q.shape[0]:
        return _sdpa(q, k, v, meta.dense())
    out = q.new_empty(q.shape)
    for rows in rows_list:
        sub = PackMeta(meta.doc[rows], meta.pos[rows], meta.fn[rows], meta.noise[rows], 1)
        out[rows] = _sdpa(q[rows], k[rows], v[rows], sub.dense())
    return out


def _sdpa(q, k, v, mask, is_causal: bool = False):
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=None if mask is None else mask[None, None],
        is_causal=is_causal,
    )
    return out[0].transpose(0, 1)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Inference: a new split of Lq queries attends a cached context plus itself (causal or full).

    q [Lq, H, D]; k/v [Lc + Lq, Hkv, D], the new tokens last."""
    lq, lk = q.shape[0], k.shape[0]
    mask = None
    if causal and lq > 1:
        # bottom-right aligned causal: query i sees the context and new tokens <= i
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
    return _sdpa(q, k, v, mask)


def varlen_images(q, k, v, seqlens: list[int]) -> torch.Tensor:
    """ViT attention: bidirectional inside each image. q/k/v [1, H, N, D] (transformers layout) -> [1, N, H, D]."""
    outs = []
    start = 0
    for n in seqlens:
        sl = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl]))
        start += n
    return torch.cat(outs, dim=2).transpose(1, 2)
