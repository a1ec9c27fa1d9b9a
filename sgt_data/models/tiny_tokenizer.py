"""A tiny Qwen2-style byte-level BPE tokenizer, built offline, for random-init test models.

Tests and the `*_tiny` recipes must never download a tokenizer. This builds one with the same special tokens as
the Qwen2 / Qwen2.5-VL vocabularies (looked up by name by the ports, never by id), trained in well under a second
on a small built-in corpus, and saves it in the standard `transformers` layout so the real loading code reads it.
"""

from __future__ import annotations

from pathlib import Path

# The Qwen2.5(-VL) special tokens the ports rely on, in their official order.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
Segment instances with different colors. Color each instance differently. Draw the edges of this image.
Estimate the depth of the scene. Produce the depth map. Trace the outlines. What is in the picture?
The quick brown fox jumps over the lazy dog. A photo of a cat sitting on a red chair near the window.
Answer the question using a single word or phrase. Describe the image in detail. How many people are there?
You are a helpful assistant that generates high-quality images based on user instructions.
0 1 2 3 4 5 6 7 8 9 yes no left right top bottom blue green yellow black white chart table document
"""


def build_tiny_tokenizer(vocab_size: int = 512):
    """Return a `Qwen2TokenizerFast` with Qwen's special tokens and a small byte-level BPE vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    tok = Qwen2TokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_tokenizer(dest: str | Path, vocab_size: int = 512):
    """Build the tiny tokenizer and `save_pretrained` it into `dest`; returns the tokenizer."""
    tok = build_tiny_tokenizer(vocab_size)
    tok.save_pretrained(str(dest))
    return tok
