"""OmniGen2 CUDA paths: varlen vision attention, GQA flash in the DiT, bf16 training step, exact SplitAdamW."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
# SGT_PARITY_DIR lets the accelerator machine (where ../shared does not travel) point at a carried copy
PARITY = Path(
    os.environ.get("SGT_PARITY_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "parity")
)
PARITY = PARITY / "omnigen2"


def _image_batch(model, sizes):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in sizes]
    return model.image_processor(images=images, return_tensors="pt")


def test_varlen_vision_attention_matches_transformers():
    from sgt_data.models.omnigen2.fast_attention import use_varlen_vision_attention
    from sgt_data.models.omnigen2.model import build_random

    model = build_random("tiny").to("cuda", torch.bfloat16)
    enc = _image_batch(model, [(150, 230), (90, 60)])
    pv, grid = enc["pixel_values"].cuda().bfloat16().requires_grad_(), enc["image_grid_thw"].cuda()

    def run():
        out = model.mllm.model.visual(pv, grid_thw=grid)
        out = getattr(out, "pooler_output", out)
        (grad,) = torch.autograd.grad(out.float().pow(2).sum(), pv)
        return out.float(), grad.float()

    ref_out, ref_grad = run()
    assert use_varlen_vision_attention(model.mllm) == 2
    out, grad = run()
    torch.testing.assert_close(out, ref_out, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(grad, ref_grad, atol=5e-2, rtol=5e-2)


@pytest.mark.skipif(not PARITY.is_dir(), reason="parity fixtures absent")
def test_dit_cuda_bf16_close_to_fp32_reference():
    from safetensors.torch import load_file

    from sgt_data.models.omnigen2.config import DiTConfig
    from sgt_data.models.omnigen2.transformer import OmniGen2Transformer

    model = OmniGen2Transformer(DiTConfig.from_file(PARITY / "config.json"))
    model.load_state_dict(load_file(PARITY / "diffusion_pytorch_model.safetensors"))
    model = model.cuda()
    inp = {k: v.cuda() for k, v in load_file(PARITY / "inputs.safetensors").items()}
    exp = load_file(PARITY / "expected.safetensors")
    with torch.no_grad():
        fp32 = model([inp["hidden_states_0"], inp["hidden_states_1"]], inp["t"], inp["text_hidden_states"],
                     [12, 7], [[inp["ref_image_0"]], None])  # fmt: skip
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model([inp["hidden_states_0"], inp["hidden_states_1"]], inp["t"], inp["text_hidden_states"],
                         [12, 7], [[inp["ref_image_0"]], None])  # fmt: skip
    for i in range(2):
        torch.testing.assert_close(fp32[i].cpu(), exp[f"velocity_{i}"], atol=1e-4, rtol=1e-4)
        err = (bf16[i].float().cpu() - exp[f"velocity_{i}"]).abs().max()
        assert err < 0.05 * exp[f"velocity_{i}"].abs().max(), err


def test_tiny_training_step_bf16_autocast(tmp_path):
    from test_omnigen2_model import VQA_ROW, seg_row

    from sgt_data.models.base import ModelConfig, get_adapter
    from sgt_data.models.omnigen2 import write_tiny_checkpoint

    adapter = get_adapter("omnigen2")
    cfg = ModelConfig(name="omnigen2", path=str(write_tiny_checkpoint(tmp_path / "m")), dtype="bfloat16",
                      options={"max_output_pixels": 64 * 64, "gradient_checkpointing": True})  # fmt: skip
    model = adapter.build(cfg, device="cuda", for_training=True)
    assert model.compute_dtype == torch.bfloat16
    proc = adapter.processor(cfg)
    samples = [proc.prepare(seg_row("a", 70, 100), "seg", 1), proc.prepare(VQA_ROW, "vqa", 2)]
    for mb in adapter.micro_batches(samples, cfg):
        loss = adapter.losses(model, mb)
        total = sum(v / mb["counts"][k] for k, v in loss.items())
        assert torch.isfinite(total)
        total.backward()
    assert model.mllm.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0


def test_split_adamw_equals_fp32_adamw_on_cuda():
    from sgt_data.models.omnigen2.split_adamw import SplitAdamW, clip_coefficient, combine

    torch.manual_seed(0)
    p = torch.nn.Parameter((torch.randn(4096, 33, device="cuda") * 0.02).bfloat16())
    master = p.detach().float().clone().requires_grad_()
    # the single-tensor AdamW: the same operation order as SplitAdamW (foreach kernels round differently)
    ref = torch.optim.AdamW([master], lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01, foreach=False)
    opt = SplitAdamW([p], lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    for _ in range(10):
        g = torch.randn_like(p)
        p.grad, master.grad = g.clone(), g.float()
        norm, coef = clip_coefficient([p], 1.0)
        master.grad.mul_(coef)
        opt.step(grad_scale=coef)
        ref.step()
    assert torch.equal(combine(p.detach(), opt.state[p]["lo"]), master.detach())


def test_fused_split_adamw_matches_fp32_adamw_on_cuda():
    from sgt_data.models.omnigen2.split_adamw import SplitAdamW, combine

    torch.manual_seed(0)
    params = [
        torch.nn.Parameter((torch.randn(*s, device="cuda") * 0.02).bfloat16()) for s in [(512, 33), (77,)]
    ]
    masters = [p.detach().float().clone().requires_grad_() for p in params]
    kw = dict(lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    ref = torch.optim.AdamW(masters, foreach=False, **kw)
    opt = SplitAdamW(params, fused=True, **kw)
    for _ in range(5):
        for p, m in zip(params, masters):
            g = torch.randn_like(p)
            p.grad, m.grad = g.clone(), g.float()
        opt.step()
        ref.step()
    for p, m in zip(params, masters):
        # fused rounding order differs from torch's at the ULP level only
        torch.testing.assert_close(combine(p.detach(), opt.state[p]["lo"]), m.detach(), atol=1e-8, rtol=1e-6)
