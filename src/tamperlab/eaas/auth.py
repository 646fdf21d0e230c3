"""API keys: where secrets come from, and secret → holder lookup in constant time."""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path

from ..runs import CorruptFileError, atomic_write_text, read_json
from .settings import ServerConfig


def resolve_key_secrets(cfg: ServerConfig, state_dir: Path | None) -> dict[str, str]:
    """Secrets from TAMPERLAB_EAAS_KEY_<NAME>, then <state_dir>/keys.json, else newly generated (and saved)."""
    saved: dict[str, str] = {}
    kfile = state_dir / "keys.json" if state_dir else None
    if kfile is not None and kfile.is_file():
        saved = read_json(kfile)  # a damaged file: CorruptFileError naming it (never regenerate keys silently)
        if not isinstance(saved, dict):
            raise CorruptFileError(f"{kfile} is corrupt (not a JSON object of key name → secret)")
    out: dict[str, str] = {}
    generated: dict[str, str] = {}
    for k in cfg.keys:
        env = os.environ.get(f"TAMPERLAB_EAAS_KEY_{k.name.upper().replace('-', '_')}")
        if env:
            out[k.name] = env
        elif k.name in saved:
            out[k.name] = saved[k.name]
        else:
            out[k.name] = generated[k.name] = "sk-tl-" + secrets.token_urlsafe(24)
    if generated and kfile is not None:
        # env-provided secrets are never written; 0600 from the first byte; a kill never leaves a cut key file
        atomic_write_text(kfile, json.dumps({**saved, **generated}, indent=2), mode=0o600)
    return out


class KeyRing:
    """Key secret → holder name. Only keyed digests are kept; every comparison is constant-time."""

    def __init__(self, secrets_by_name: dict[str, str]):
        self._by_hash = {hmac.digest(b"tamperlab", s.encode(), "sha256"): n for n, s in secrets_by_name.items()}
        self.names = list(secrets_by_name)

    def who(self, secret: str) -> str | None:
        d = hmac.digest(b"tamperlab", secret.encode("utf-8", "surrogatepass"), "sha256")
        found = None
        for h, name in self._by_hash.items():  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(h, d):
                found = name
        return found

    def from_header(self, authorization: str | None) -> str | None:
        """Holder of an `Authorization: Bearer <key>` header value, or None."""
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        return self.who(secret.strip())
