"""BAGEL port against the reference's golden numbers (shared/parity/bagel, README tolerances: fp32 CPU, 1e-4)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from bagel_fixtures import (  # noqa: E402
    load_case,
    pack_config,
    parity_model,
    raw_samples,
    require_parity,
    special_tokens,
)

TOL = dict(atol=1e-4, rtol=1e-4)
CASES = ["bagel", "bagel/interleave"]


@pytest.fixture(scope="module")
def root():
    return require_parity()


@pytest.fixture(scope="module")
def model(root):
    return parity_model(root)


def _packed(root, case):
    from sgt_data.models.bagel.packing import pack

    meta, inp, exp = load_case(root / case)
    batch = pack(raw_samples(meta, inp), special_tokens(meta), pack_config(meta))
    return meta, inp, exp, batch


@pytest.mark.parametrize("case", CASES)
def test_packer_rebuilds_reference_batch(root, case):
    meta, inp, _, b = _packed(root, case)
    n_pad = 1  # the reference appends a flex pad document; we do not pad
    assert b["sequence_length"] == meta["sequence_length"]
    assert b["sample_lens"] == meta["sample_lens"][:-n_pad]
    assert b["split_lens"] == meta["split_lens"][:-n_pad]
    assert b["attn_modes"] == meta["attn_modes"][:-n_pad]
    assert [list(s) for s in b["patchified_vae_latent_shapes"]] == meta["patchified_vae_latent_shapes"]
    names = [
        k
        for k in inp
        if not k.startswith(("raw.", "dense_mask", "flex_mask"))
        and k not in ("noise", "posterior_eps", "padded_latent")
    ]
    for name in names:
        assert b[name].dtype == inp[name].dtype, name
        assert torch.equal(b[name], inp[name]), name
    assert b["counts"] == {"ce": len(inp["ce_loss_indexes"]), "mse": len(inp["mse_loss_indexes"])}


@pytest.mark.parametrize("case", CASES)
def test_mask_matches_reference_flex_mask(root, case):
    from sgt_data.models.bagel.attention import PackMeta

    meta, inp, _, b = _packed(root, case)
    n = b["sequence_length"]
    dense = PackMeta.from_splits(b["sample_lens"], b["split_lens"], b["attn_modes"]).dense()
    assert torch.equal(dense, inp["flex_mask_dense"][:n, :n])
    # and the per-sample dense masks of the reference's non-flex path
    start = 0
    for i, length in enumerate(b["sample_lens"]):
        ref = inp[f"dense_mask_sample{i}"] == 0
        assert torch.equal(dense[start : start + length, start : start + length], ref)
        start += length


@pytest.mark.parametrize("case", CASES)
def test_forward_losses_and_gradients(root, model, case):
    meta, inp, exp, b = _packed(root, case)
    b.update(noise=inp["noise"], padded_latent=inp["padded_latent"], timestep_shift=meta["timestep_shift"])
    model.zero_grad(set_to_none=True)
    out = model(b, return_intermediates=True)
    for name in (
        "vit_output",
        "connector_output",
        "timestep_embeds",
        "llm_input_sequence",
        "last_hidden_state",
        "ce_logits",
        "mse_preds",
    ):
        torch.testing.assert_close(out[name], exp[name], **TOL, msg=name)
    torch.testing.assert_close(out["ce"], exp["ce_per_token"], **TOL)
    torch.testing.assert_close(out["mse"], exp["mse_per_element"], **TOL)
    ce = out["ce"].sum() / b["counts"]["ce"]
    mse = out["mse"].mean(-1).sum() / b["counts"]["mse"]
    loss = meta["ce_weight"] * ce + meta["mse_weight"] * mse
    torch.testing.assert_close(ce, exp["ce"], **TOL)
    torch.testing.assert_close(mse, exp["mse"], **TOL)
    torch.testing.assert_close(loss, exp["loss"], **TOL)
    loss.backward()
    params = dict(model.named_parameters())
    for name in meta["grad_params"]:
        torch.testing.assert_close(params[name].grad, exp[f"grad.{name}"], **TOL, msg=name)


def test_forward_from_vae_images_matches_padded_latent(root, model):
    """The VAE path (images -> posterior sample -> scale/shift) gives the same batch as the given latent."""
    from sgt_data.models.vae import load_flux_vae

    meta, inp, exp, b = _packed(root, "bagel")
    model.attach_vae(load_flux_vae(root / "vae" / "ae.safetensors", config_dir=root / "vae"))
    try:
        b.update(noise=inp["noise"], posterior_eps=inp["posterior_eps"])
        with torch.no_grad():
            out = model(b)
        torch.testing.assert_close(out["mse"], exp["mse_per_element"], **TOL)
    finally:
        model.attach_vae(None)


def test_greedy_decode(root, model):
    from sgt_data.models.bagel.inference import Context, KVCache, add_text, add_vit_image, generate_text

    meta, inp, exp = load_case(root / "bagel")
    ctx = Context(KVCache.for_model(model, capacity=4))  # small capacity: exercises in-place growth
    add_vit_image(model, ctx, inp[meta["decode"]["image"]])
    add_text(model, ctx, meta["decode"]["prompt_ids"])
    assert ctx.cache.length == meta["decode"]["kv_len_after_prefill"]
    assert ctx.rope == meta["decode"]["rope_after_prefill"]
    # the reference's max_length=4 counts the start token; its 4th forward predicts a token it drops
    tokens, logits = generate_text(model, ctx, 4, return_logits=True)
    assert tokens[:3] == exp["decode_tokens"].tolist()
    torch.testing.assert_close(logits, exp["decode_logits"], **TOL)
