"""User-id and session-id pseudonymization (keyed HMAC-SHA256).

Serving turns raw ids into pseudonyms before anything is logged; the feedback step recomputes the
pseudonyms of known users with the same key to map logged events back to their ids.
"""

from __future__ import annotations

import hashlib
import hmac

from recloop.errors import ConfigError

MIN_SECRET_CHARS = 16
GENERATE_SECRET_HINT = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


class Pseudonymizer:
    """user id -> `u_<32 hex>` (HMAC-SHA256 of the id under a secret key), session id -> `s_<32 hex>`
    (of `session:` + the id). Stable across restarts and replicas that share the key, so the feedback step
    can join logs with the same key; irreversible without it."""

    def __init__(self, key: str, source: str):
        if len(key) < MIN_SECRET_CHARS:
            raise ConfigError(
                source,
                [
                    f"serving.privacy.hmac_key: must have at least {MIN_SECRET_CHARS} "
                    f"characters (got {len(key)}); generate one with {GENERATE_SECRET_HINT}"
                ],
            )
        self._key = key.encode("utf-8")

    def __call__(self, value: str | None, kind: str = "user") -> str | None:
        if value is None:
            return None
        if kind == "user":
            return "u_" + hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
        if kind == "session":
            return "s_" + hmac.new(self._key, f"session:{value}".encode(), hashlib.sha256).hexdigest()[:32]
        raise ValueError(f"unknown pseudonym kind {kind!r}")
