"""Configuration of the EaaS HTTP front (`server:` section of an eaas recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from ..config import check_positive
from ..errors import ConfigError

OPENAI_MAX_BATCH = 2048
"""Most inputs OpenAI accepts in one embeddings request."""
OPENAI_MAX_REQUEST_TOKENS = 300_000
"""Most tokens, summed over all inputs, OpenAI accepts in one embeddings request."""


@dataclass
class KeySpec:
    """One API key holder. The secret never sits in a recipe: it comes from the environment or is generated."""

    name: str = "default"
    """Key holder's name (what the query log records)."""
    requests_per_minute: float = 0
    """Per-key request rate limit (0 = the server default)."""
    texts_per_minute: float = 0
    """Per-key input-text rate limit (0 = the server default)."""
    tokens_per_minute: float = 0
    """Per-key input-token rate limit (0 = the server default)."""
    burst: int = 0
    """Per-key request bucket size: how many requests may arrive at once (0 = the server default)."""
    expires_at: str = ""
    """When the key stops working: an ISO 8601 date or date-time (UTC unless it names a zone); "" = never. After
    it, every request with the key is a 401 `expired_api_key`. Quote it in YAML ("2027-01-31"): unquoted, YAML reads
    a date, which is refused as not a string."""

    def expiry(self) -> float | None:
        """expires_at as a Unix time (None = never); ConfigError for a value that is not an ISO 8601 time."""
        if not self.expires_at:
            return None
        try:
            t = datetime.fromisoformat(self.expires_at)
        except (TypeError, ValueError):
            raise ConfigError(f"server.keys[{self.name}].expires_at: {self.expires_at!r} is not an ISO 8601 date "
                              "or date-time (e.g. 2027-01-31 or 2027-01-31T12:00:00+00:00)") from None
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


@dataclass
class ServerConfig:
    """HTTP front of the provider."""

    keys: list[KeySpec] = field(default_factory=lambda: [KeySpec()])
    """Key holders. Secret of key NAME: env TAMPERLAB_EAAS_KEY_<NAME> (upper-case), else generated at start-up
    and written to <state_dir>/keys.json (mode 600)."""
    requests_per_minute: float = 600
    """Default per-key request limit, every endpoint counted (token bucket refilled continuously; 0 = unlimited)."""
    burst: int = 20
    """Default per-key request bucket size: how many requests can arrive at once."""
    texts_per_minute: float = 60000
    """Default per-key input-text limit (bucket of one minute's worth; 0 = unlimited)."""
    tokens_per_minute: float = 1_000_000
    """Default per-key input-token limit (bucket of one minute's worth; 0 = unlimited). OpenAI's TPM."""
    anonymous_requests_per_minute: float = 600
    """Requests without a valid key (/health, 401s), limited per client address (0 = unlimited)."""
    anonymous_burst: int = 60
    """Bucket size of the per-address limit on requests without a valid key."""
    max_batch: int = OPENAI_MAX_BATCH
    """Most inputs in one request (OpenAI: 2048); more is a 400."""
    max_tokens_per_request: int = OPENAI_MAX_REQUEST_TOKENS
    """Most tokens summed over the inputs of one request (OpenAI: 300,000); more is a 400."""
    max_input_chars: int = 32768
    """Longest accepted input text in characters: a cheap guard checked before tokenizing (the real limit is the
    model's context, in tokens)."""
    max_body_bytes: int = 8_000_000
    """Largest accepted request body (413 above, also for chunked bodies)."""
    batch_texts: int = 128
    """Dynamic batcher: most texts merged into one encode."""
    batch_wait_ms: float = 5.0
    """Dynamic batcher: how long a request waits for company."""
    query_log: str = "querylog.sqlite"
    """SQLite query log, relative to the state dir (created mode 0600)."""
    retention: Literal["full", "hash", "none"] = "hash"
    """What the query log keeps of each input text and `user`: `full` text (content audits, watermark
    forensics), a keyed `hash` (membership checks only), or `none` (counts only). docs/methods/eaas.md says what
    each costs stealer detection."""
    workers: int = 1
    """Server processes behind one port (`tamperlab serve --workers N` overrides). Above 1, rate-limit buckets
    live in a shared SQLite file so a key's limit holds across workers."""
    rate_limit_db: str = "ratelimits.sqlite"
    """Shared rate-limit state for workers > 1, relative to the state dir."""
    graceful_timeout_s: float = 30.0
    """On SIGTERM: how long in-flight requests may take to finish before connections are closed."""

    def __post_init__(self) -> None:
        check_positive("server", max_batch=self.max_batch, max_input_chars=self.max_input_chars,
                       max_body_bytes=self.max_body_bytes, burst=self.burst, batch_texts=self.batch_texts,
                       max_tokens_per_request=self.max_tokens_per_request, workers=self.workers,
                       anonymous_burst=self.anonymous_burst)
        if self.max_batch > OPENAI_MAX_BATCH:
            raise ConfigError(f"server.max_batch must be <= {OPENAI_MAX_BATCH} (OpenAI's limit), got {self.max_batch}")
        for k in self.keys:
            k.expiry()  # a bad date stops the recipe at load time, not at the first request
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ConfigError(f"server.keys: duplicate key names in {names}")
        if self.retention not in ("full", "hash", "none"):
            raise ConfigError(f"server.retention must be full, hash or none, got {self.retention!r}")
