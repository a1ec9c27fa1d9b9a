"""BAGEL port behaviour: key set, strict loading, mask semantics, MoT routing, KV-cache decode, adapter end to end."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bagel_fixtures import (  # noqa: E402
    load_case,
    pack_config,
    parity_model,
    raw_samples,
    require_parity,
    special_tokens,
)

TOL = dict(atol=1e-4, rtol=1e-4)


def spec_key_set(n_llm: int, n_vit: int) -> set[str]:
    """The parameter names of spec/bagel.md §6.2, expanded for a model with the given layer counts."""
    keys = {
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
        "language_model.model.norm.weight",
        "language_model.model.norm_moe_gen.weight",
    }
    for n in range(n_llm):
        p = f"language_model.model.layers.{n}."
        for sfx in ("", "_moe_gen"):
            for x in "qkv":
                keys |= {f"{p}self_attn.{x}_proj{sfx}.weight", f"{p}self_attn.{x}_proj{sfx}.bias"}
            keys |= {
                f"{p}self_attn.o_proj{sfx}.weight",
                f"{p}self_attn.q_norm{sfx}.weight",
                f"{p}self_attn.k_norm{sfx}.weight",
            }
            keys |= {f"{p}mlp{sfx}.{x}_proj.weight" for x in ("gate", "up", "down")}
            keys |= {f"{p}{x}{sfx}.weight" for x in ("input_layernorm", "post_attention_layernorm")}
    v = "vit_model.vision_model."
    keys |= {
        f"{v}embeddings.patch_embedding.weight",
        f"{v}embeddings.patch_embedding.bias",
        f"{v}embeddings.position_embedding.weight",
        f"{v}post_layernorm.weight",
        f"{v}post_layernorm.bias",
    }
    for n in range(n_vit):
        p = f"{v}encoder.layers.{n}."
        for x in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "layer_norm1",
            "layer_norm2",
            "mlp.fc1",
            "mlp.fc2",
        ):
            keys |= {f"{p}{x}.weight", f"{p}{x}.bias"}
    for x in (
        "connector.fc1",
        "connector.fc2",
        "time_embedder.mlp.0",
        "time_embedder.mlp.2",
        "vae2llm",
        "llm2vae",
    ):
        keys |= {f"{x}.weight", f"{x}.bias"}
    return keys | {"vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from sgt_data.models.bagel.loading import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("bagel-tiny"))


# ------------------------------------------------------------------------------------------------ loading


def test_key_set_equals_spec(tiny_dir):
    from safetensors import safe_open

    from sgt_data.models.bagel.loading import from_pretrained

    model = from_pretrained(tiny_dir, dtype=torch.float32)
    cfg = model.config
    expected = spec_key_set(cfg.llm.num_hidden_layers, cfg.vit_layers)
    assert set(model.state_dict()) == expected
    assert cfg.vit_layers == cfg.vit.num_hidden_layers - 1  # the -2 select-layer rule
    with safe_open(str(tiny_dir / "ema.safetensors"), "pt") as f:
        assert set(f.keys()) == expected
    assert not any(p.is_meta for p in model.parameters())
    assert model.vae is not None and not any(
        k.startswith(("encoder.", "decoder.", "vae.")) for k in model.state_dict()
    )


def test_parity_checkpoint_key_set():
    from safetensors import safe_open

    root = require_parity()
    with safe_open(str(root / "bagel" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == spec_key_set(2, 2)


def _rewrite(src, dst, drop=(), add=None):
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    for k in drop:
        state.pop(k)
    state.update(add or {})
    save_file(state, str(dst))


def test_strict_loading_lists_missing_and_unexpected(tiny_dir, tmp_path):
    from sgt_data.models.bagel.config import BagelConfig
    from sgt_data.models.bagel.loading import CheckpointKeyError, build_empty, load_weights

    cfg = BagelConfig.from_folder(tiny_dir)
    bad = tmp_path / "ema.safetensors"
    _rewrite(
        tiny_dir / "ema.safetensors",
        bad,
        drop=["llm2vae.bias", "language_model.model.norm_moe_gen.weight"],
        add={"language_model.model.layers.0.self_attn.o_proj.bias": torch.zeros(64)},
    )
    with pytest.raises(CheckpointKeyError) as err:
        load_weights(build_empty(cfg), bad)
    msg = str(err.value)
    assert "missing keys: language_model.model.norm_moe_gen.weight, llm2vae.bias" in msg
    assert "unexpected keys: language_model.model.layers.0.self_attn.o_proj.bias" in msg

    _rewrite(tiny_dir / "ema.safetensors", bad, add={"llm2vae.bias": torch.zeros(3)})
    with pytest.raises(CheckpointKeyError, match=r"llm2vae.bias has shape \[3\]"):
        load_weights(build_empty(cfg), bad)

    # the fixed sincos tables may be absent (the reference pops them); they are recomputed
    _rewrite(
        tiny_dir / "ema.safetensors", bad, drop=["vit_pos_embed.pos_embed", "latent_pos_embed.pos_embed"]
    )
    model = load_weights(build_empty(cfg), bad, dtype=torch.float32)
    from sgt_data.models.bagel.modeling import sincos_2d

    assert torch.equal(model.latent_pos_embed.pos_embed, sincos_2d(64, cfg.max_latent_size))


def test_missing_folder_is_a_clear_error(tmp_path):
    from sgt_data.models.base import ModelConfig, get_adapter

    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_adapter("bagel").build(ModelConfig(path=str(tmp_path / "nope")))
    from sgt_data.models.bagel.loading import from_pretrained

    with pytest.raises(FileNotFoundError, match="llm_config.json"):
        (tmp_path / "ema.safetensors").write_bytes(b"")
        from_pretrained(tmp_path)


def test_sincos_tables_match_fixture():
    from safetensors.torch import load_file

    from sgt_data.models.bagel.modeling import sincos_2d

    state = load_file(str(require_parity() / "bagel" / "model.safetensors"))
    assert torch.equal(sincos_2d(64, 70), state["vit_pos_embed.pos_embed"])
    assert torch.equal(sincos_2d(64, 8), state["latent_pos_embed.pos_embed"])


# ------------------------------------------------------------------------------------------ mask, routing


@pytest.fixture(scope="module")
def parity():
    root = require_parity()
    return root, parity_model(root)


def _batch(root, case):
    from sgt_data.models.bagel.packing import pack

    meta, inp, _ = load_case(root / case)
    b = pack(raw_samples(meta, inp), special_tokens(meta), pack_config(meta))
    b.update(noise=inp["noise"], padded_latent=inp["padded_latent"], timestep_shift=meta["timestep_shift"])
    return b


def test_mask_rules_on_a_hand_built_pack():
    from sgt_data.models.bagel.attention import PackMeta

    # sample 0: [full 2][causal 2][noise 2][causal 2]; sample 1: [causal 3]
    m = PackMeta.from_splits([8, 3], [2, 2, 2, 2, 3], ["full", "causal", "noise", "causal", "causal"]).dense()
    assert m[0, 1] and m[1, 0]  # full split is bidirectional
    assert m[2, 0] and not m[2, 3]  # causal text sees earlier splits, not later tokens
    assert m[4, 5] and m[5, 4] and m[4, 3]  # noise split: bidirectional inside, causal outside
    assert not m[6, 4] and not m[7, 5] and m[6, 3]  # later tokens never see noised latents
    assert not m[8:, :8].any() and not m[:8, 8:].any()  # samples are isolated


def test_noised_latents_and_other_samples_do_not_leak(parity):
    """interleave: the answer after the noised image ignores it; sample 0 ignores sample 1."""
    root, model = parity
    b = _batch(root, "bagel/interleave")
    with torch.no_grad():
        base = model(b, return_intermediates=True)["last_hidden_state"]
        b2 = dict(b, noise=b["noise"] + 5.0)  # changes only the noised latents' inputs (clean ones have t=0)
        moved = model(b2, return_intermediates=True)["last_hidden_state"]
    from sgt_data.models.bagel.attention import PackMeta

    in_noise_split = PackMeta.from_splits(b["sample_lens"], b["split_lens"], b["attn_modes"]).noise >= 0
    changed = (moved - base).abs().amax(-1) > 1e-5
    assert changed[b["mse_loss_indexes"]].all()
    assert torch.equal(changed, in_noise_split)  # latents + their own markers; nothing after them

    b3 = dict(b, packed_vit_tokens=b["packed_vit_tokens"].clone())
    b3["packed_vit_tokens"][4:] += 1.0  # sample 1's ViT image
    with torch.no_grad():
        moved = model(b3, return_intermediates=True)["last_hidden_state"]
    changed = (moved - base).abs().amax(-1) > 1e-5
    n0 = b["sample_lens"][0]
    assert not changed[:n0].any() and changed[n0:].any()


def test_mot_routing(parity):
    """Gen expert weights act only on VAE latent tokens; und weights not on them (same layer)."""
    root, model = parity
    b = _batch(root, "bagel")
    gen = b["packed_vae_token_indexes"]
    is_gen = torch.isin(torch.arange(b["sequence_length"]), gen)
    first_gen = int(gen.min())
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            base = model(b, return_intermediates=True)["last_hidden_state"]
            model.language_model.model.layers[1].mlp_moe_gen.down_proj.weight.mul_(2)
            moved = model(b, return_intermediates=True)["last_hidden_state"]
            changed = (moved - base).abs().amax(-1) > 1e-6
            # last layer's MLP: touches only gen rows
            assert torch.equal(changed, is_gen)
            model.load_state_dict(sd)
            model.language_model.model.layers[1].mlp.down_proj.weight.mul_(2)
            moved = model(b, return_intermediates=True)["last_hidden_state"]
            changed = (moved - base).abs().amax(-1) > 1e-6
            assert torch.equal(changed, ~is_gen)
            model.load_state_dict(sd)
            model.language_model.model.layers[0].self_attn.q_proj_moe_gen.weight.mul_(2)
            moved = model(b, return_intermediates=True)["last_hidden_state"]
            changed = (moved - base).abs().amax(-1) > 1e-6
            # tokens before the latents' split are untouched (its <|vision_start|> sees the latents)
            assert not changed[: first_gen - 1].any() and changed[first_gen - 1 :].any()
    finally:
        model.load_state_dict(sd)


def test_kv_cache_decode_equals_full_forward(parity):
    from sgt_data.models.bagel.inference import Context, KVCache, add_text, add_vit_image, generate_text
    from sgt_data.models.bagel.packing import pack

    root, model = parity
    meta, inp, _ = load_case(root / "bagel")
    ctx = Context(KVCache.for_model(model, capacity=2))
    image, prompt = inp["raw.sam_vit_image"], [5, 6, 7, 8]
    add_vit_image(model, ctx, image)
    add_text(model, ctx, prompt)
    tokens, logits = generate_text(model, ctx, 6, return_logits=True)
    tokens = [t for t in tokens if t != 1001][:5]
    plan = [
        {"type": "vit_image", "image": image, "loss": 0},
        {"type": "text", "text_ids": prompt, "loss": 0},
        {"type": "text", "text_ids": tokens, "loss": 1},
    ]
    b = pack([{"sequence_plan": plan}], special_tokens(meta), pack_config(meta))
    with torch.no_grad():
        full = model(b, return_intermediates=True)["ce_logits"]
    torch.testing.assert_close(logits[: len(tokens) + 1], full[: len(tokens) + 1], **TOL)


def test_cache_appends_in_place():
    from sgt_data.models.bagel.inference import KVCache

    c = KVCache(1, 2, 4, "cpu", torch.float32, capacity=4)
    k = torch.randn(3, 2, 4)
    c.extend(0, k, k, commit=True)
    c.length += 3
    buf = c.k[0]
    c.extend(0, k[:1], k[:1], commit=True)
    assert c.k[0].data_ptr() == buf.data_ptr()  # no reallocation while capacity lasts
    c.length += 1
    kk, _ = c.extend(0, k, k, commit=False)
    assert kk.shape[0] == 7 and c.length == 4  # scratch queries leave the cache alone


# ------------------------------------------------------------------------------------- processor, adapter


def test_resize_matches_reference_sizes():
    from sgt_data.models.bagel.processor import Resize

    vae = Resize(1024, 512, 16, 14 * 14 * 9 * 1024)
    vit_gen = Resize(224, 224, 14, 14 * 14 * 9 * 1024)
    vit_vqa = Resize(980, 378, 14, 2_007_040)
    assert vae.size(2250, 1500) == (1024, 688)
    assert vit_gen.size(2250, 1500) == (224, 154)
    assert vit_vqa.size(640, 480) == (644, 476)


def _png(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


TINY_OPTS = {"vit_gen": [56, 28, 14, 10**9], "vae_gen": [64, 32, 16, 10**9], "vit_vqa": [56, 28, 14, 10**9]}


def _rows():
    rng = np.random.default_rng(0)
    rgb = (rng.random((60, 90, 3)) * 255).astype("uint8")
    seg = np.zeros((60, 90, 3), "uint8")
    seg[:30, :45] = (255, 0, 0)
    seg[30:, 45:] = (0, 0, 255)
    return (
        rgb,
        seg,
        [
            (
                {
                    "key": "a",
                    "image": _png(rgb),
                    "seg": _png(seg),
                    "prompt_seg": "Segment instances with different colors.",
                },
                "seg",
            ),
            (
                {
                    "key": "b",
                    "image": _png(rgb),
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat is in the picture?"},
                        {"from": "gpt", "value": "A cat."},
                    ],
                },
                "vqa",
            ),
            (
                {
                    "key": "c",
                    "image": None,
                    "conversations": [
                        {"from": "human", "value": "How many people are there?"},
                        {"from": "gpt", "value": "yes"},
                    ],
                },
                "vqa",
            ),
        ],
    )


def test_seg_target_is_the_mask_not_the_rgb():
    from sgt_data.models.bagel.processor import BagelProcessor, Resize
    from sgt_data.models.tiny_tokenizer import build_tiny_tokenizer

    rgb, seg, rows = _rows()
    proc = BagelProcessor("unused", vit_gen=Resize(56, 28, 14, 10**9), vae_gen=Resize(64, 32, 16, 10**9))
    proc._tok = build_tiny_tokenizer()
    sample = proc.prepare(rows[0][0], "seg", seed=1)
    kinds = [it["type"] for it in sample["sequence_plan"]]
    assert kinds == ["vit_image", "text", "vae_image"]
    target = sample["sequence_plan"][2]["image"]
    colours = {
        tuple(c) for c in ((target.permute(1, 2, 0).reshape(-1, 3) + 1) * 127.5).round().int().tolist()
    }
    assert colours <= {(255, 0, 0), (0, 0, 255), (0, 0, 0)}  # nearest resize: no blended colours
    assert sample == sample | {"key": "a:seg"} and sample["sequence_plan"][2]["loss"] == 1
    again = proc.prepare(rows[0][0], "seg", seed=1)
    assert again["sequence_plan"][2]["timestep_logit"] == sample["sequence_plan"][2]["timestep_logit"]


def test_adapter_trains_saves_and_infers(tmp_path):
    from sgt_data.models.base import ModelConfig, get_adapter

    adapter = get_adapter("bagel")
    cfg = ModelConfig(
        name="bagel",
        init="random",
        config="tiny",
        options=dict(TINY_OPTS, latent_cache=str(tmp_path / "latents"), save_dtype="float32"),
    )
    model = adapter.build(cfg, device="cpu", for_training=True)
    import pickle

    proc = pickle.loads(pickle.dumps(adapter.processor(cfg)))
    rgb, _, rows = _rows()
    samples = [proc.prepare(row, task, seed=i) for i, (row, task) in enumerate(rows)]
    batches = adapter.micro_batches(samples, cfg)
    assert sum(b["counts"]["ce"] for b in batches) == 7 + 0  # "A cat." / "yes" + their <|im_end|>
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(3):
        total = 0.0
        for b in batches:
            out = adapter.losses(model, b)
            loss = 1.5 * out["ce"] / b["counts"]["ce"] + out["mse"] / b["counts"]["mse"]
            loss.backward()
            total += loss.item()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else total
    assert total < first
    assert len(list((tmp_path / "latents").iterdir())) == 1  # the seg target's moments, cached once

    dest = tmp_path / "saved"
    adapter.save_pretrained(model, str(dest))
    assert {"llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors", "tokenizer.json"} <= {
        p.name for p in dest.iterdir()
    }
    reloaded = adapter.build(
        ModelConfig(name="bagel", path=str(dest), dtype="float32", options=TINY_OPTS), for_training=False
    )
    for (k, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), k

    from PIL import Image

    img = Image.fromarray(rgb)
    answer = adapter.und(reloaded, img, "What is in the picture?", max_new_tokens=4)
    assert isinstance(answer, str)
    out = adapter.t2i(reloaded, "a cat", width=64, height=32, steps=3, seed=0)
    assert out.size == (64, 32)
    seg = adapter.seg(
        reloaded, img, "Segment instances with different colors.", steps=3, seed=0, cfg_img_scale=2.0
    )
    assert seg.size == img.size and seg.mode == "RGB"


def test_tiny_recipe_trains_through_the_loop(tmp_path):
    """recipes/bagel_tiny.yaml through the real training loop, on shards in our schema; final/ reloads strictly."""
    pytest.importorskip("accelerate")
    from support.built import write_fixture_shards

    from sgt_data.models.base import ModelConfig, get_adapter
    from sgt_data.train.loop import train
    from sgt_data.train.metrics import read_metrics
    from sgt_data.train.recipe import load_recipe

    proxy, vqa = write_fixture_shards(tmp_path / "shards")
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "bagel_tiny.yaml"
    overrides = [
        f"data.proxies=[{proxy}]",
        f"data.vqa=[{vqa}]",
        f"train.output_dir={tmp_path / 'run'}",
        "train.progress=false",
    ]
    out = train(load_recipe(recipe, overrides))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["samples/seg"] == 2 and r["samples/vqa"] == 1 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    final = out / "final"
    assert {"llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors"} <= {
        p.name for p in final.iterdir()
    }
    model = get_adapter("bagel").build(
        ModelConfig(path=str(final), dtype="float32", options=TINY_OPTS), for_training=False
    )
    assert model.config.llm.num_hidden_layers == 2
