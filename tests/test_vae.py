"""FLUX VAE loader (sgt_data/models/vae.py) against shared/parity/vae (atol = rtol = 1e-4, fp32 CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from bagel_fixtures import require_parity  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def vae_case():
    from safetensors.torch import load_file

    root = require_parity() / "vae"
    return root, load_file(str(root / "inputs.safetensors")), load_file(str(root / "expected.safetensors"))


@pytest.mark.parametrize("config", ["given", "derived"])
def test_encode_decode_match_reference(vae_case, config):
    from sgt_data.models.vae import load_flux_vae

    root, inp, exp = vae_case
    vae = load_flux_vae(root / "ae.safetensors", config_dir=root if config == "given" else None)
    mean, logvar = vae.moments(inp["image"])
    torch.testing.assert_close(mean, exp["mean"], **TOL)
    torch.testing.assert_close(logvar, exp["logvar"], **TOL)
    torch.testing.assert_close(
        vae.latents_from_moments(mean, logvar, eps=inp["posterior_eps"]), exp["latent_sample"], **TOL
    )
    torch.testing.assert_close(vae.encode(inp["image"], sample=False), exp["latent_mode"], **TOL)
    torch.testing.assert_close(vae.decode(exp["latent_sample"]), exp["decoded_sample"], **TOL)
    torch.testing.assert_close(vae.decode(exp["latent_mode"]), exp["decoded_mode"], **TOL)
    assert vae.downsample == 8 and vae.z_channels == 16


def test_derived_config_matches_shipped(vae_case):
    import json

    from safetensors import safe_open

    from sgt_data.models.vae import flux_config_from_state

    root, _, _ = vae_case
    with safe_open(str(root / "ae.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    derived = flux_config_from_state(shapes)
    shipped = json.loads((root / "config.json").read_text())
    for key in (
        "block_out_channels",
        "layers_per_block",
        "latent_channels",
        "use_quant_conv",
        "use_post_quant_conv",
        "scaling_factor",
        "shift_factor",
        "down_block_types",
    ):
        assert derived[key] == shipped[key], key


def test_bfl_key_round_trip(tmp_path):
    """A random diffusers AE written under BFL names loads back through from_single_file (tiny checkpoints rely on it)."""
    from safetensors.torch import load_file

    from sgt_data.models.vae import load_flux_vae, write_random_flux_ae

    path = write_random_flux_ae(tmp_path / "ae.safetensors", seed=3)
    keys = set(load_file(str(path)))
    assert "encoder.mid.attn_1.q.weight" in keys and "decoder.up.0.block.0.conv1.weight" in keys
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in keys)
    vae = load_flux_vae(path)
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    z = vae.encode(x, sample=False)
    assert z.shape == (1, 16, 4, 6)
    assert vae.decode(z).shape == (1, 3, 32, 48)


def test_missing_file_names_the_path(tmp_path):
    from sgt_data.models.vae import load_flux_vae

    with pytest.raises(FileNotFoundError, match="ae.safetensors"):
        load_flux_vae(tmp_path / "ae.safetensors")
