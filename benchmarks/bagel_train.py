"""BAGEL training-step benchmark on one GPU, against the reference figures of spec/bagel.md §10.1.

Shapes (spec §9.2): `qwen05b` = Qwen2.5-0.5B-shaped MoT (24 layers, H 896) + the full 26-layer SigLIP;
`7b_2l` = 7B width x 2 layers + the full SigLIP. Pack: the reference's SGT-like pack, 1 SAM sample (688x1024
VAE target, 154x224 ViT) + 9 VQA samples (644x476 ViT, ~100 text tokens) = ~17,974 real tokens. Random weights,
same pack every step, one rank. Step = forward + backward (bf16 autocast over fp32 master weights) + grad clip
+ fused AdamW (SGT's hyper-parameters) + EMA update (0.9999), as the reference measured it.

VAE: `--vae cached` feeds posterior moments (our `latent_cache` option: the VAE is frozen, so each target is
encoded once); `--vae encode` runs a random-weight FLUX VAE (diffusers, bf16) on the target every step as the
reference does.

    python benchmarks/bagel_train.py --config qwen05b --steps 10 --warmup 3
    python benchmarks/bagel_train.py --config 7b_2l --ckpt-vit 1

MFU = model FLOPs (6 x params touched per token, + attention over the allowed pairs, fwd + bwd; no recompute)
over step time x 989 TFLOP/s (H100 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

REFERENCE_S = {"qwen05b": 1.468, "7b_2l": 0.893}
PEAK = 989e12


def sgt_pack(cfg, seed: int = 0):
    from sgt_data.models.bagel.packing import PackConfig, SpecialTokens, pack

    g = torch.Generator().manual_seed(seed)
    v = cfg.llm.vocab_size

    def ids(n):
        return torch.randint(0, v - 1000, (n,), generator=g).tolist()

    def img(h, w):
        return torch.rand(3, h, w, generator=g) * 2 - 1

    sam = {
        "key": "sam",
        "sequence_plan": [
            {"type": "vit_image", "image": img(154, 224), "loss": 0},
            {"type": "text", "text_ids": ids(8), "loss": 0},
            {"type": "vae_image", "image": img(688, 1024), "loss": 1, "timestep_logit": 0.3},
        ],
    }
    samples = [sam]
    for i in range(9):
        samples.append(
            {
                "key": f"vqa{i}",
                "sequence_plan": [
                    {"type": "vit_image", "image": img(476, 644), "loss": 0},
                    {"type": "text", "text_ids": ids(30), "loss": 0},
                    {"type": "text", "text_ids": ids(70), "loss": 1},
                ],
            }
        )
    special = SpecialTokens(v - 4, v - 3, v - 2, v - 1)
    pcfg = PackConfig(
        cfg.vit.patch_size, cfg.vit_max_num_patch_per_side, cfg.image_downsample, cfg.max_latent_size
    )
    return pack(samples, special, pcfg)


def model_flops(model, batch) -> float:
    """Training FLOPs (fwd + bwd = 3x fwd) of one step, without activation recompute."""
    from sgt_data.models.bagel.attention import PackMeta

    c = model.config
    llm, vit = c.llm, c.vit
    h, d = llm.hidden_size, llm.head_dim
    per_layer = (
        h * (llm.num_attention_heads * d) * 2
        + h * (llm.num_key_value_heads * d) * 2
        + 3 * h * llm.intermediate_size
    )
    n_tok = batch["sequence_length"]
    n_vit = int(batch["packed_vit_tokens"].shape[0]) if "packed_vit_tokens" in batch else 0
    n_lat = int(batch["packed_vae_token_indexes"].numel()) if "packed_vae_token_indexes" in batch else 0
    n_ce = int(batch["counts"]["ce"])
    vd, vi = vit.hidden_size, vit.intermediate_size
    vit_layer = 4 * vd * vd + 2 * vd * vi
    fwd = 2 * n_tok * llm.num_hidden_layers * per_layer
    fwd += 2 * n_ce * h * llm.vocab_size
    fwd += 2 * n_vit * (c.vit_layers * vit_layer + vit.patch_size**2 * 3 * vd + vd * h + h * h)
    fwd += 2 * n_lat * (2 * c.latent_dim * h + 256 * h + h * h)
    # attention: QK^T and PV over the allowed pairs
    meta = PackMeta.from_splits(batch["sample_lens"], batch["split_lens"], batch["attn_modes"])
    pairs = sum(
        int(PackMeta(meta.doc[r], meta.pos[r], meta.fn[r], meta.noise[r], 1).dense().sum())
        for r in meta.doc_rows()
    )
    fwd += 4 * llm.num_attention_heads * d * pairs * llm.num_hidden_layers
    vit_pairs = sum(int(n) ** 2 for n in batch["vit_token_seqlens"])
    fwd += 4 * vd * vit_pairs * c.vit_layers
    return 3.0 * fwd


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="qwen05b", choices=["qwen05b", "7b_2l"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ckpt-llm", type=int, default=0)
    ap.add_argument("--ckpt-vit", type=int, default=0)
    ap.add_argument("--ema", type=int, default=1)
    ap.add_argument("--vae", default="cached", choices=["cached", "encode"])
    ap.add_argument("--attn", default="flex", choices=["flex", "sdpa"])
    ap.add_argument("--compile", type=int, default=0, help="fuse RMSNorm/RoPE with torch.compile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from sgt_data.models.bagel.config import bench_config
    from sgt_data.models.bagel.loading import build_empty, init_random
    from sgt_data.models.bagel.packing import batch_to

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = bench_config(args.config)
    t0 = time.perf_counter()
    model = init_random(build_empty(cfg), device=dev, dtype=torch.float32)
    model.attn_backend = args.attn
    if args.compile:
        from sgt_data.models.bagel.modeling import compile_pointwise

        compile_pointwise()
    model.set_gradient_checkpointing(llm=bool(args.ckpt_llm), vit=bool(args.ckpt_vit))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t0

    batch = sgt_pack(cfg)
    flops = model_flops(model, batch)
    batch = batch_to(batch, dev)
    vshape = (1, cfg.z_channels, 688 // cfg.vae_downsample, 1024 // cfg.vae_downsample)
    if args.vae == "cached":
        batch.pop("padded_images")
        batch["vae_mean"] = torch.randn(vshape, device=dev)
        batch["vae_logvar"] = torch.randn(vshape, device=dev) * 0.1 - 4
    else:
        from diffusers import AutoencoderKL

        from sgt_data.models.vae import FluxVAE

        ae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
        model.attach_vae(FluxVAE(ae.to(dev, torch.bfloat16).requires_grad_(False).eval()))

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.0, fused=True)
    ema = [p.detach().clone() for p in params] if args.ema else None

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch)
        loss = (
            1.5 * out["ce"].sum() / batch["counts"]["ce"] + out["mse"].mean(-1).sum() / batch["counts"]["mse"]
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - 0.9999)
        return loss

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    res = {
        "config": args.config,
        "params": n_params,
        "tokens": batch["sequence_length"],
        "ckpt_llm": args.ckpt_llm,
        "ckpt_vit": args.ckpt_vit,
        "ema": args.ema,
        "vae": args.vae,
        "attn": args.attn,
        "step_s": round(med, 4),
        "step_min_s": round(min(times), 4),
        "step_max_s": round(max(times), 4),
        "tokens_per_s": round(batch["sequence_length"] / med),
        "tflops_per_step": round(flops / 1e12, 2),
        "mfu": round(flops / med / PEAK, 4),
        "speedup_vs_ref": round(REFERENCE_S[args.config] / med, 3),
        "ref_step_s": REFERENCE_S[args.config],
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "loss": round(loss.item(), 4),
        "build_s": round(build_s, 1),
        "warmup_s": round(warm_s, 1),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    print(json.dumps(res))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    return res


if __name__ == "__main__":
    main()
