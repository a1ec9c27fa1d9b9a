"""omnigen2_train: one OmniGen2 SGT training step on one GPU, ours vs the reference configuration.

Model (random weights): the production-width DiT with 8 joint layers (spec §8.2 `bench-mid`, 1,454.6M) + the full
Qwen2.5-VL-3B shape (3,754.6M) + a FLUX-shaped VAE (frozen). Workloads, 2 samples each (spec §11):
- SAM micro-batch: input image through Qwen (1,280 merged tokens, 896x1120 px), prompt ~1.3k tokens, target
  816x1232 px VAE-encoded every step (3,927 DiT image tokens), flow loss into DiT and Qwen;
- VQA micro-batch: same image budget, question + answer, Qwen CE on the answer.
A step = forward + backward + grad-norm clip + AdamW, with gradient checkpointing on the DiT blocks and Qwen.

Modes (one process each, same machine):
- `ours`: bf16 compute weights with exact fp32 master weights (SplitAdamW: bf16 + low 16 bits, fp32 moments;
  `--fused-optimizer` compiles its update into one kernel per parameter),
  all vision windows in one varlen flash call, GQA flash in the DiT, CE logits only at label positions.
- `baseline`: the reference's one-GPU configuration: pure-bf16 torch AdamW (updates round away), transformers'
  per-window vision attention loop. (Same DiT code: the reference DiT is not part of this project.)

Usage: python benchmarks/omnigen2_train.py [--mode ours|baseline|both] [--steps 6] [--json out.json]
Ends with `RESULT omnigen2_train <baseline SAM step / ours SAM step>`; the spec's reference figures (SAM 2.60-3.16 s,
VQA 1.44 s on one H100) are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

H100_BF16_PEAK = 989e12  # dense bf16 TFLOP/s of an H100 SXM
REFERENCE = {"sam": (2.60, 3.16), "vqa": 1.44}


def qwen3b_config():
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=128000,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, rope_theta=1e6,
                tie_word_embeddings=True)  # fmt: skip
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", in_chans=3, tokens_per_second=2)  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)


def flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                         scaling_factor=0.3611, shift_factor=0.1159)  # fmt: skip


def build(mode: str, smoke: bool = False):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from sgt_data.models.omnigen2.config import preset
    from sgt_data.models.omnigen2.fast_attention import use_varlen_vision_attention
    from sgt_data.models.omnigen2.model import OmniGen2
    from sgt_data.models.omnigen2.scheduler import SCHEDULER_CONFIG
    from sgt_data.models.omnigen2.transformer import OmniGen2Transformer

    torch.manual_seed(0)
    with torch.device(DEVICE):
        if smoke:  # CPU check of the whole benchmark path with the tiny shapes
            from sgt_data.models.omnigen2.mllm import tiny_qwen_config
            from sgt_data.models.omnigen2.model import tiny_vae
            from sgt_data.models.tiny_tokenizer import build_tiny_tokenizer

            qcfg, dcfg, vae = tiny_qwen_config(build_tiny_tokenizer()), preset("tiny"), tiny_vae()
        else:
            qcfg, dcfg, vae = qwen3b_config(), preset("bench-mid"), flux_vae()
        mllm = Qwen2_5_VLForConditionalGeneration._from_config(qcfg, dtype=torch.bfloat16)
        dit = OmniGen2Transformer(dcfg).to(torch.bfloat16)
        vae = vae.to(torch.bfloat16)
    for name, p in dit.named_parameters():  # the zero-initialised adaLN / head would make the DiT trivial
        if "norm1.linear" in name or "norm_out.linear" in name:
            torch.nn.init.normal_(p, std=0.02)
    model = OmniGen2(dit, mllm, vae, None, None, SCHEDULER_CONFIG)
    model.compute_dtype = torch.bfloat16
    model.train()
    dit.gradient_checkpointing = True
    mllm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    switched = use_varlen_vision_attention(mllm) if mode == "ours" else 0
    return model, switched


def image_tokens(cfg, n_merged: int, before: int, after: int, gen: torch.Generator, smoke: bool) -> list[int]:
    low, high = (20, cfg.text_config.vocab_size - 64) if smoke else (0, 150000)  # no special ids
    text = lambda n: torch.randint(low, high, (n,), generator=gen).tolist()  # noqa: E731
    return (
        text(before)
        + [cfg.vision_start_token_id]
        + [cfg.image_token_id] * n_merged
        + [cfg.vision_end_token_id]
        + text(after)
    )


def batches(cfg, smoke: bool = False):
    """Synthetic micro-batches shaped like SGT's (see module doc), in the adapter's collated format."""
    gen = torch.Generator().manual_seed(0)
    grid = torch.tensor(
        [[1, 8, 8]] if smoke else [[1, 64, 80]]
    )  # 896x1120 px -> 5,120 patches -> 1,280 merged tokens (Qwen max)
    n_merged = int(grid.prod()) // 4
    pixels = lambda: torch.randn(int(grid.prod()), 3 * 2 * 14 * 14, generator=gen)  # noqa: E731
    sam_ids = [torch.tensor(image_tokens(cfg, n_merged, 30, 15, gen, smoke)) for _ in range(2)]
    th, tw = (32, 48) if smoke else (816, 1232)
    target = torch.zeros(3, th, tw)
    target[:, :400], target[0, 400:, :600] = 0.8, -0.6  # flat colour regions, like a seg map
    sam = {
        "kind": "gen", "tasks": ["seg", "seg"], "input_ids": torch.stack(sam_ids),
        "attention_mask": torch.ones(2, len(sam_ids[0]), dtype=torch.long), "text_lens": [len(sam_ids[0])] * 2,
        "pixel_values": torch.cat([pixels(), pixels()]), "image_grid_thw": torch.cat([grid, grid]),
        "targets": [target, target.flip(-1)], "t_raw": torch.tensor([0.3, 0.7]), "noise_seeds": [1, 2],
        "counts": {"fm": 2 * 16 * (th // 8) * (tw // 8)},
    }  # fmt: skip
    vqa_ids = [torch.tensor(image_tokens(cfg, n_merged, 20, 80, gen, smoke)) for _ in range(2)]
    labels = torch.stack(vqa_ids).clone()
    labels[:, :-40] = -100
    vqa = {
        "kind": "vqa", "input_ids": torch.stack(vqa_ids), "attention_mask": torch.ones_like(labels),
        "labels": labels, "pixel_values": torch.cat([pixels(), pixels()]), "image_grid_thw": torch.cat([grid, grid]),
        "counts": {"ce": 2 * 39},
    }  # fmt: skip
    return {"sam": sam, "vqa": vqa}


class Stepper:
    """One optimizer step per micro-batch: losses -> mean -> backward -> clip(1.0) -> AdamW."""

    def __init__(self, model, mode: str):
        from sgt_data.models.omnigen2.split_adamw import SplitAdamW

        self.model, self.mode = model, mode
        self.params = [p for p in model.parameters() if p.requires_grad]
        kw = dict(lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
        if mode == "ours":
            self.opt = SplitAdamW(self.params, fused=FUSED_OPTIMIZER and DEVICE == "cuda", **kw)
        else:
            self.opt = torch.optim.AdamW(self.params, **kw)

    def __call__(self, batch: dict, marks: list | None = None):
        from sgt_data.models.omnigen2.split_adamw import clip_coefficient
        from sgt_data.models.omnigen2.training import losses

        mark = (lambda name: marks.append((name, _sync_time()))) if marks is not None else (lambda name: None)
        mark("start")
        out = losses(self.model, batch)
        loss = sum(v / batch["counts"][k] for k, v in out.items())
        mark("forward")
        loss.backward()
        mark("backward")
        if self.mode == "ours":
            _, coef = clip_coefficient(self.params, 1.0)
            self.opt.step(grad_scale=coef)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        mark("optimizer")
        return loss.detach()


DEVICE = "cuda"
FUSED_OPTIMIZER = False  # --fused-optimizer: SplitAdamW's torch.compile'd update (not yet measured on GPU)


def _sync_time() -> float:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_steps(step, batch, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step(batch)
    times = []
    for _ in range(steps):
        t0 = _sync_time()
        step(batch)
        times.append(_sync_time() - t0)
    return times


def gpu_busy(step, batch) -> tuple[float, float, list[tuple[str, float]]]:
    """(kernel seconds, wall seconds, top kernels) of one profiled step."""
    from torch.profiler import ProfilerActivity, profile

    t0 = _sync_time()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(batch)
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    rows = [
        (e.key, e.self_device_time_total / 1e6) for e in prof.key_averages() if e.self_device_time_total > 0
    ]
    rows.sort(key=lambda r: -r[1])
    return sum(r[1] for r in rows), wall, [(k[:70], round(s, 4)) for k, s in rows[:8]]


def _gqa_sdpa_flop(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """torch's SDPA FLOP formula, with K/V heads expanded to the query heads (GQA), which it rejects."""
    from torch.utils.flop_counter import sdpa_flop_count

    heads = q[1]
    return sdpa_flop_count(q, (k[0], heads, *k[2:]), (v[0], heads, *v[2:]))


def forward_flops(model, batch) -> float:
    """FLOPs of one training forward (no grad), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from sgt_data.models.omnigen2.training import losses

    aten = torch.ops.aten
    ops = ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
           "_scaled_dot_product_cudnn_attention")  # fmt: skip
    mapping = {getattr(aten, op): _gqa_sdpa_flop for op in ops if hasattr(aten, op)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        losses(model, batch)
    return float(counter.get_total_flops())


def run_mode(mode: str, steps: int, smoke: bool = False) -> dict:
    model, switched = build(mode, smoke)
    data = batches(model.mllm.config, smoke)
    step = Stepper(model, mode)
    cuda = DEVICE == "cuda"
    name_ = torch.cuda.get_device_name() if cuda else "cpu (smoke)"
    result = {"mode": mode, "vision_attention_modules_switched": switched, "device": name_}
    for name in ("sam", "vqa"):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = time_steps(step, data[name], warmup=2, steps=steps)
        med = statistics.median(times)
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0
        row = result[name] = {
            "median_s": round(med, 4),
            "times_s": [round(t, 4) for t in times],
            "peak_gib": peak,
        }
        print(json.dumps({name: row}), flush=True)
        try:  # extras: a failure here must not lose the timings above
            marks: list = []
            step(data[name], marks)
            row["phases_s"] = {
                marks[i][0]: round(marks[i][1] - marks[i - 1][1], 4) for i in range(1, len(marks))
            }
            if cuda:
                kernel, wall, top = gpu_busy(step, data[name])
                row.update(gpu_kernel_s=round(kernel, 4), profiled_wall_s=round(wall, 4),
                           gpu_busy_frac=round(kernel / wall, 3), top_kernels=top)  # fmt: skip
            flops = forward_flops(model, data[name])
            row.update(forward_tflop=round(flops / 1e12, 2), mfu_3x_forward=round(3 * flops / med / H100_BF16_PEAK, 3),
                       hfu_4x_forward_recompute=round(4 * flops / med / H100_BF16_PEAK, 3))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - report and keep the measured step times
            row["extras_error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(json.dumps({name: row}), flush=True)
    result["optimizer"] = type(step.opt).__name__ + (" (fused)" if getattr(step.opt, "_fused", None) else "")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["ours", "baseline", "both"], default="both")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", default=None, help="write all measurements here")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny shapes on CPU: checks the path, measures nothing"
    )
    ap.add_argument(
        "--fused-optimizer", action="store_true", help="SplitAdamW with its compiled fused update"
    )
    args = ap.parse_args(argv)
    global DEVICE, FUSED_OPTIMIZER
    FUSED_OPTIMIZER = args.fused_optimizer
    if args.smoke:
        DEVICE = "cpu"
    if args.mode != "both":
        res = run_mode(args.mode, args.steps, args.smoke)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return 0
    results = {}
    for mode in ("ours", "baseline"):  # separate processes: each needs most of the card
        out = Path(args.json or "omnigen2_train.json").with_suffix(f".{mode}.json")
        cmd = [sys.executable, __file__, "--mode", mode, "--steps", str(args.steps), "--json", str(out)]
        cmd += ["--smoke"] if args.smoke else []
        cmd += ["--fused-optimizer"] if args.fused_optimizer else []
        proc = subprocess.run(cmd)
        results[mode] = json.loads(out.read_text()) if proc.returncode == 0 and out.exists() else None
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    ours, base = results["ours"], results["baseline"]
    print(f"reference (spec §11, pure bf16, one H100): SAM {REFERENCE['sam']} s, VQA {REFERENCE['vqa']} s")
    if ours:
        lo, hi = REFERENCE["sam"]
        print(f"ours: SAM {ours['sam']['median_s']} s ({lo / ours['sam']['median_s']:.2f}-"
              f"{hi / ours['sam']['median_s']:.2f}x vs reference), VQA {ours['vqa']['median_s']} s")  # fmt: skip
    if ours and base:
        print(f"baseline (same machine): SAM {base['sam']['median_s']} s, VQA {base['vqa']['median_s']} s")
        print(f"RESULT omnigen2_train {base['sam']['median_s'] / ours['sam']['median_s']:.3f}")
    elif ours:
        print(f"RESULT omnigen2_train {REFERENCE['sam'][0] / ours['sam']['median_s']:.3f}")
    return 0 if ours else 1


if __name__ == "__main__":
    raise SystemExit(main())
