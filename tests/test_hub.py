"""Hub basics: endpoint resolution, the saved login never leaves for a third-party endpoint, redaction."""

from __future__ import annotations

import pytest

from sgt_data import hub


def test_endpoint_resolution(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.resolve_endpoint() == hub.DEFAULT_ENDPOINT
    assert hub.resolve_endpoint(mirror=True) == hub.MIRROR_ENDPOINT
    assert hub.resolve_endpoint("http://127.0.0.1:9/") == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="pass only one"):
        hub.resolve_endpoint("http://127.0.0.1:9", mirror=True)


def test_saved_login_is_only_for_the_public_hub(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_savedlogintoken123")
    assert hub.get_token("HF_TOKEN", hub.DEFAULT_ENDPOINT) == "hf_savedlogintoken123"
    assert hub.get_token("HF_TOKEN", hub.MIRROR_ENDPOINT) is None
    assert hub.get_token("HF_TOKEN", "http://127.0.0.1:9") is None
    monkeypatch.setenv("HF_TOKEN", "hf_explicitfortheendpoint")
    assert hub.get_token("HF_TOKEN", hub.MIRROR_ENDPOINT) == "hf_explicitfortheendpoint"


def test_redact_hides_the_token_and_token_shaped_strings():
    text = hub.redact("auth hf_abcdefghijkl failed for secret-xyz", token="secret-xyz")
    assert "hf_abcdefghijkl" not in text and "secret-xyz" not in text
