"""BAGEL on CUDA: the flex-attention training path against the parity fixtures, and a bf16 training smoke test."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from bagel_fixtures import load_case, pack_config, parity_model, raw_samples, require_parity, special_tokens  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["bagel", "bagel/interleave"])
def test_flex_cuda_matches_reference(case):
    from sgt_data.models.bagel.packing import batch_to, pack

    torch.backends.cuda.matmul.allow_tf32 = False
    root = require_parity()
    meta, inp, exp = load_case(root / case)
    model = parity_model(root).cuda()
    model.attn_backend = "flex"
    b = pack(raw_samples(meta, inp), special_tokens(meta), pack_config(meta))
    b.update(noise=inp["noise"], padded_latent=inp["padded_latent"], timestep_shift=meta["timestep_shift"])
    b = batch_to(b, "cuda")
    out = model(b, return_intermediates=True)
    torch.testing.assert_close(out["last_hidden_state"].cpu(), exp["last_hidden_state"], **TOL)
    loss = (
        meta["ce_weight"] * out["ce"].sum() / b["counts"]["ce"]
        + out["mse"].mean(-1).sum() / b["counts"]["mse"]
    )
    torch.testing.assert_close(loss.cpu(), exp["loss"], **TOL)
    loss.backward()
    params = dict(model.named_parameters())
    for name in meta["grad_params"]:
        torch.testing.assert_close(params[name].grad.cpu(), exp[f"grad.{name}"], **TOL, msg=name)


def test_bf16_autocast_train_step_close_to_fp32():
    from sgt_data.models.bagel.packing import batch_to, pack

    root = require_parity()
    meta, inp, exp = load_case(root / "bagel")
    model = parity_model(root).cuda()
    model.attn_backend = "flex"
    model.set_gradient_checkpointing(llm=True, vit=True)
    model.train()
    b = pack(raw_samples(meta, inp), special_tokens(meta), pack_config(meta))
    b.update(noise=inp["noise"], padded_latent=inp["padded_latent"])
    b = batch_to(b, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(b)
    loss = 1.5 * out["ce"].mean() + out["mse"].mean()
    loss.backward()
    assert abs(loss.item() - exp["loss"].item()) < 0.05 * exp["loss"].item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_flex_varying_pack_lengths_match_sdpa():
    """Packs of different lengths (as in real training) through compiled flex == exact SDPA on the same GPU."""
    from sgt_data.models.bagel.packing import batch_to, pack

    torch.backends.cuda.matmul.allow_tf32 = False
    root = require_parity()
    meta, inp, _ = load_case(root / "bagel")
    model = parity_model(root).cuda()
    for copies in (1, 3, 5, 2):
        b = pack(raw_samples(meta, inp) * copies, special_tokens(meta), pack_config(meta))
        b = batch_to(b, "cuda")
        b["noise"] = torch.randn(b["packed_vae_token_indexes"].numel(), 64, device="cuda")
        b["padded_latent"] = torch.randn(len(b["patchified_vae_latent_shapes"]), 16, 8, 12, device="cuda")
        outs = {}
        for backend in ("flex", "sdpa"):
            model.attn_backend = backend
            with torch.no_grad():
                outs[backend] = model(b, return_intermediates=True)["last_hidden_state"]
        torch.testing.assert_close(outs["flex"], outs["sdpa"], **TOL)
