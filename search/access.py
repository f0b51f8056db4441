"""Who may write: the write endpoints need a token when the service has one.

The executors see the token in the request's `parameters["token"]`: over HTTP the service's
gateway puts the `Authorization: Bearer` header there (and never echoes it back); over gRPC
the caller sets it, since jina's gRPC gateway hands executors no metadata. It is a shared
secret, not a signature: send it over TLS or on a trusted network. Reads (searches, /get,
/status) stay open.
"""

from __future__ import annotations

import hmac
from typing import Any

TOKEN_PARAMETER = "token"


def token_error(
    required: str | None, parameters: dict[str, Any] | None, endpoint: str
) -> str | None:
    """Why a request to the write `endpoint` is refused, or None: the service has a token
    (`required`) and the request's `parameters["token"]` is not it. Compared in constant
    time, so the answer's timing tells nothing about the token."""
    if not required:
        return None
    given = (parameters or {}).get(TOKEN_PARAMETER)
    if isinstance(given, str) and hmac.compare_digest(
        given.encode("utf-8"), required.encode("utf-8")
    ):
        return None
    return f"this service requires a token for {endpoint} (set SEARCH_TOKEN or --token)"


def without_token(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """`parameters` as an answer carries them back: without the token wherever jina lets a
    caller put it (`token`, `indexer__token` for one executor, `{"indexer": {"token": ...}}`)."""
    kept = {}
    for key, value in (parameters or {}).items():
        if key == TOKEN_PARAMETER or str(key).endswith(f"__{TOKEN_PARAMETER}"):
            continue
        if isinstance(value, dict) and TOKEN_PARAMETER in value:
            value = {k: v for k, v in value.items() if k != TOKEN_PARAMETER}
        kept[key] = value
    return kept
