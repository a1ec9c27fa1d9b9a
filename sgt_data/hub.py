"""Hub access shared by download (`build sam`, `build llava-ov`) and upload (`push`): endpoint, token, redaction.

The endpoint is always passed explicitly to `huggingface_hub` (`HfApi(endpoint=...)`, `endpoint=` arguments), so a
mirror or a local test server is honoured even when the library was imported first. The CLI also sets
`HF_ENDPOINT` / `HF_HUB_DISABLE_XET` before the first import (see cli.py). Tokens come from the environment or
the user's login and never appear in output: every message that might carry one goes through `redact`.
"""

from __future__ import annotations

import os
import re
from typing import Any

DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_ENDPOINT = "https://hf-mirror.com"

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


def resolve_endpoint(endpoint: str | None = None, mirror: bool = False) -> str:
    """`--endpoint` wins, then `--mirror`, then HF_ENDPOINT, then the public Hub; no trailing slash."""
    if endpoint and mirror and endpoint.rstrip("/") != MIRROR_ENDPOINT:
        raise ValueError("--mirror and --endpoint name different endpoints; pass only one")
    chosen = (
        endpoint or (MIRROR_ENDPOINT if mirror else None) or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    )
    return chosen.rstrip("/")


def add_hub_arguments(
    parser, token_help: str = "Hub token (default: HF_TOKEN or your `hf auth login`)"
) -> None:
    """`--endpoint` / `--mirror` / `--token-env` shared by every command that talks to the Hub."""
    g = parser.add_argument_group("hub")
    g.add_argument(
        "--endpoint", help="Hub endpoint URL (a mirror or a local server); default HF_ENDPOINT or hub"
    )
    g.add_argument("--mirror", action="store_true", help=f"use the public mirror {MIRROR_ENDPOINT} (Xet off)")
    g.add_argument("--token-env", default="HF_TOKEN", help=f"{token_help}: name of the variable to read")


def get_token(env_var: str = "HF_TOKEN", endpoint: str | None = None) -> str | None:
    """Token from `env_var`, else from the saved login; None for anonymous access. Never printed.

    The saved login is a huggingface.co credential: it is used only for the public Hub. A mirror or any other
    endpoint gets a token only when the user puts one in `env_var` for it."""
    token = os.environ.get(env_var)
    if token:
        return token
    if endpoint is not None and endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        return None
    try:
        from huggingface_hub import get_token as saved_token

        return saved_token()
    except Exception:  # noqa: BLE001 - no login is a normal state
        return None


def redact(text: Any, token: str | None = None) -> str:
    """`text` with the token (and anything shaped like a Hub token) replaced by `***`."""
    out = str(text)
    if token:
        out = out.replace(token, "***")
    return _TOKEN_PATTERN.sub("hf_***", out)


def api(endpoint: str, token: str | None = None):
    """An `HfApi` bound to `endpoint` explicitly (never to a module-level default)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)
