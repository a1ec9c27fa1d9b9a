"""Qwen2.5-VL side of OmniGen2: prompt templates, loading with strict key checks, SGT text-encoder key remap.

The MLLM is stock `transformers` (`Qwen2_5_VLForConditionalGeneration`); this module only adds what OmniGen2
and SGT do around it. Special tokens are looked up by name in the tokenizer, never by id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SYSTEM_GEN = "You are a helpful assistant that generates high-quality images based on user instructions."
SYSTEM_CHAT = "You are a helpful assistant."
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"


def gen_prompt(instruction: str, with_image: bool) -> str:
    """SGT's training prompt for generative proxy tasks (the "reca" form: the input image goes through Qwen)."""
    image = f"<img1>: {IMAGE_BLOCK}" if with_image else ""
    return (
        f"<|im_start|>system\n{SYSTEM_GEN}<|im_end|>\n<|im_start|>user\n{image}{instruction}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def t2i_prompt(prompt: str) -> str:
    """OmniGen2's text-to-image / edit prompt encoding (image-generation system prompt, no generation prompt)."""
    return f"<|im_start|>system\n{SYSTEM_GEN}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"


def chat_turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def expand_image_pads(text: str, tokens_per_image: list[int]) -> str:
    """Replace the k-th `<|image_pad|>` by as many copies as image k has merged tokens."""
    parts = text.split("<|image_pad|>")
    if len(parts) - 1 != len(tokens_per_image):
        raise ValueError(f"prompt has {len(parts) - 1} image placeholders but {len(tokens_per_image)} images")
    out = [parts[0]]
    for n, rest in zip(tokens_per_image, parts[1:]):
        out.append("<|image_pad|>" * n + rest)
    return "".join(out)


def special_id(tokenizer: Any, token: str) -> int:
    """Id of a special token, looked up by name; a clear error if the tokenizer lacks it."""
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or idx == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no special token {token!r}: use a Qwen2/Qwen2.5-VL tokenizer")
    return int(idx)


def tiny_qwen_config(tokenizer: Any):
    """A 2-layer, 32-wide Qwen2.5-VL config (spec §8.1 shape) over the given tokenizer's vocabulary."""
    from transformers import Qwen2_5_VLConfig

    vocab = ((len(tokenizer) + 63) // 64) * 64
    ids = {
        t: special_id(tokenizer, t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    eos, pad = special_id(tokenizer, "<|im_end|>"), special_id(tokenizer, "<|endoftext|>")
    text = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]},
        tie_word_embeddings=True,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=32,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def load_mllm(folder: str | Path, dtype: torch.dtype = torch.float32):
    """Load `mllm/` with transformers and refuse any missing or unexpected weight (tied lm_head aside)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(folder), dtype=dtype, output_loading_info=True
    )
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("lm_head")]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{folder}: Qwen2.5-VL weights do not match the config: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, mismatched {mismatched[:5]}; the folder is incomplete or from another model"
        )
    return model


def remap_text_encoder_key(key: str) -> str:
    """Map any Qwen2.5-VL key layout onto transformers>=4.52 `Qwen2_5_VLForConditionalGeneration` names.

    SGT saves its fine-tuned text encoder as `Qwen2_5_VLModel` without `lm_head`; depending on the transformers
    version that wrote it the keys are `visual.*` + `model.*` (<= 4.51), `visual.*` + `language_model.*`
    (>= 4.52) or already `model.visual.*` / `model.language_model.*`.
    """
    for prefix in ("model.visual.", "model.language_model.", "lm_head."):
        if key.startswith(prefix):
            return key
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("language_model."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return "model.language_model." + key


def overlay_text_encoder(mllm: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load SGT's `text_encoder` weights over `mllm` strictly: every key must land, every weight must be set."""
    target = mllm.state_dict()
    remapped = {remap_text_encoder_key(k): v for k, v in state.items()}
    unknown = sorted(k for k in remapped if k not in target)
    missing = sorted(k for k in target if k not in remapped and not k.startswith("lm_head"))
    if unknown or missing:
        raise ValueError(
            f"{source}: text encoder overlay does not match the MLLM: unknown keys {unknown[:5]}, "
            f"missing keys {missing[:5]}"
        )
    bad = [k for k, v in remapped.items() if tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        raise ValueError(f"{source}: text encoder overlay shape mismatch for {bad[:5]}")
    mllm.load_state_dict(remapped, strict=False)
