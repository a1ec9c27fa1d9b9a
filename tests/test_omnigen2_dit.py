"""Parity of the OmniGen2 DiT and scheduler with the reference's golden numbers (parity/omnigen2, fp32 CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgt_data.models.omnigen2.config import DiTConfig, preset
from sgt_data.models.omnigen2.rope import batch_position_ids
from sgt_data.models.omnigen2.scheduler import inference_timesteps, shift_training_t, training_mu
from sgt_data.models.omnigen2.transformer import OmniGen2Transformer, patchify, unpatchify

PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "omnigen2"
TOL = dict(atol=1e-4, rtol=1e-4)

pytestmark = pytest.mark.skipif(not PARITY.is_dir(), reason=f"parity fixtures not found at {PARITY}")


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    cfg = DiTConfig.from_file(PARITY / "config.json")
    model = OmniGen2Transformer(cfg)
    model.load_state_dict(load_file(PARITY / "diffusion_pytorch_model.safetensors"), strict=True)
    return model.eval(), load_file(PARITY / "inputs.safetensors"), load_file(PARITY / "expected.safetensors")


def run(model, inp, text_lens=None):
    lens = text_lens if text_lens is not None else inp["text_attention_mask"]
    latents = [inp["hidden_states_0"], inp["hidden_states_1"]]
    return model(latents, inp["t"], inp["text_hidden_states"], lens, [[inp["ref_image_0"]], None])


def test_config_matches_fixture_shape(fixture):
    model, _, _ = fixture
    assert sum(p.numel() for p in model.parameters()) == 239_904
    assert DiTConfig.from_file(PARITY / "config.json") == preset("tiny")


def test_embeddings(fixture):
    model, inp, exp = fixture
    temb, cap = model.time_caption_embed(inp["t"], inp["text_hidden_states"], torch.float32)
    torch.testing.assert_close(temb, exp["temb"], **TOL)
    torch.testing.assert_close(cap, exp["caption_embeds"], **TOL)


def test_position_ids():
    from safetensors.torch import load_file

    exp = load_file(PARITY / "expected.safetensors")["position_ids"]
    ids = batch_position_ids([12, 7], [[(12, 8)], []], [(16, 24), (8, 8)], patch_size=2)
    assert ids.dtype == torch.int32 and torch.equal(ids, exp)


def test_velocities_joint_hidden_and_loss(fixture):
    model, inp, exp = fixture
    seen = {}
    hook = model.norm_out.register_forward_hook(lambda m, a, o: seen.update(h=a[0]))
    try:
        with torch.no_grad():
            vel = run(model, inp)
    finally:
        hook.remove()
    for i in range(2):
        torch.testing.assert_close(vel[i], exp[f"velocity_{i}"], **TOL)
    for b, n in enumerate(json.loads((PARITY / "inputs.json").read_text())["seq_lengths"]):
        torch.testing.assert_close(seen["h"][b, :n], exp["joint_hidden_before_norm_out"][b, :n], **TOL)
    sums = torch.stack([((inp[f"x1_{i}"] - inp[f"x0_{i}"]) - vel[i]).pow(2).sum() for i in range(2)])
    torch.testing.assert_close(sums, exp["loss_per_sample_sum"], **TOL)
    n_elem = sum(inp[f"x1_{i}"].numel() for i in range(2))
    torch.testing.assert_close(sums.sum() / n_elem, exp["loss"], **TOL)


def test_list_lengths_equal_mask(fixture):
    model, inp, _ = fixture
    with torch.no_grad():
        a, b = run(model, inp), run(model, inp, text_lens=[12, 7])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_backward_reaches_every_parameter(fixture):
    model, inp, _ = fixture
    model.zero_grad()
    vel = run(model, inp)
    sum(v.pow(2).sum() for v in vel).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # index embeddings 1..4 are unused with one reference image; every other parameter must get gradient
    assert missing == [], missing
    assert model.image_index_embedding.grad[1:].abs().sum() == 0


def test_padding_does_not_change_results(fixture):
    model, inp, _ = fixture
    with torch.no_grad():
        both = run(model, inp)
        alone = model([inp["hidden_states_1"]], inp["t"][1:], inp["text_hidden_states"][1:, :7], [7])
    torch.testing.assert_close(both[1], alone[0], atol=1e-5, rtol=1e-5)


def test_patchify_roundtrip():
    x = torch.randn(16, 6, 10)
    assert torch.equal(unpatchify(patchify(x, 2), 3, 5, 2), x)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patchify(torch.randn(16, 5, 4), 2)


def test_scheduler_timesteps_exact():
    sched = json.loads((PARITY / "scheduler.json").read_text())
    for case in sched["inference"]:
        grid = inference_timesteps(case["num_inference_steps"], case["num_tokens"])
        assert torch.equal(grid, torch.tensor(case["timesteps_with_final"], dtype=torch.float32))
    plain = sched["inference_no_shift"]
    assert torch.equal(inference_timesteps(8)[:-1], torch.tensor(plain["timesteps"], dtype=torch.float32))


def test_training_time_shift():
    shift = json.loads((PARITY / "scheduler.json").read_text())["training_time_shift_v1"]
    raw = torch.tensor(shift["raw_t (= sigmoid(u), u~N(0,1))"])
    for case in shift["cases"]:
        h, w = case["latent_hw"]
        assert training_mu(h, w) == pytest.approx(case["mu"], abs=1e-12)
        torch.testing.assert_close(
            shift_training_t(raw, h, w), torch.tensor(case["shifted_t"]), atol=1e-6, rtol=0
        )


def test_split_adamw_is_exact_fp32_adamw():
    """The bf16 + low-bits master weights follow fp32 AdamW bit for bit (eager) or to ULPs (compiled)."""
    from sgt_data.models.omnigen2.split_adamw import SplitAdamW, combine, split_into

    x = torch.randn(5, 7)
    hi, lo = torch.empty(5, 7, dtype=torch.bfloat16), torch.empty(5, 7, dtype=torch.int16)
    split_into(x, hi, lo)
    assert torch.equal(combine(hi, lo), x)
    assert (hi.float().abs() <= x.abs()).all(), "the compute weight is the master truncated toward zero"
    torch.manual_seed(0)
    p = torch.nn.Parameter((torch.randn(300, 37) * 0.02).bfloat16())
    start = p.detach().clone()
    master = p.detach().float().clone().requires_grad_()
    kw = dict(lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    ref, opt = torch.optim.AdamW([master], foreach=False, **kw), SplitAdamW([p], **kw)
    for _ in range(10):
        g = torch.randn_like(p)
        p.grad, master.grad = g.clone(), g.float()
        opt.step()
        ref.step()
    assert torch.equal(combine(p.detach(), opt.state[p]["lo"]), master.detach())
    # pure-bf16 AdamW would lose most of these small updates; here the compute weights did move
    assert (p.detach() != start).float().mean() > 0.3
