"""Request and response bodies of the embedding API (pydantic), field for field OpenAI's.

They are what FastAPI validates requests with and what the served OpenAPI schema describes. Checks that depend
on the server's configuration or on the model (batch size, context length, token-id range) are the app's job;
the models check shape and types, and name the offending index in their messages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from .settings import OPENAI_MAX_BATCH

_TEXT = {"type": "string", "minLength": 1}
_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
INPUT_SCHEMA = {
    "description": "Text to embed: a string, a list of strings, a list of token ids (one input), or a list of "
                   "token-id lists. Token ids are the served model's tokenizer's ids.",
    "anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": OPENAI_MAX_BATCH},
              {**_TOKENS, "maxItems": OPENAI_MAX_BATCH * 8},
              {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": OPENAI_MAX_BATCH}],
}


def _bad(msg: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("invalid_input", msg, ctx)


def _check_text(t: str, i: int | None) -> None:
    where = "input" if i is None else f"input[{i}]"
    if not t.strip():
        raise _bad(f"'{where}' is empty; every input must contain text")
    if not any(c.isprintable() and not c.isspace() for c in t):
        # Only control / format / unassigned characters: tokenizers drop them, so this is an empty input too.
        raise _bad(f"'{where}' holds no visible text (only control or format characters)")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800") is valid JSON but not text a tokenizer takes
        raise _bad(f"'{where}' is not valid Unicode: lone surrogate {t[e.start]!r} at character {e.start}") from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_ids(ids: list[Any], where: str) -> list[int]:
    if not ids:
        raise _bad(f"'{where}' is an empty token list")
    out = []
    for j, x in enumerate(ids):
        if isinstance(x, float) and x.is_integer():  # JSON Schema: 3.0 is an integer
            x = int(x)
        if not _is_int(x) or x < 0:
            raise _bad(f"'{where}[{j}]' must be a non-negative integer token id, got {x!r}")
        out.append(x)
    return out


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings` body (OpenAI's CreateEmbeddingRequest)."""

    model_config = ConfigDict(extra="forbid")

    input: Annotated[Any, WithJsonSchema(INPUT_SCHEMA)]
    model: str = Field(description="Model id, as listed by GET /v1/models.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="'float': lists of floats; 'base64': little-endian float32 bytes, base64-encoded.")
    dimensions: StrictInt | None = Field(
        None, ge=1, description="Only the model's native dimension is accepted (the model cannot shorten).")
    user: str | None = Field(None, min_length=1, max_length=256,
                             description="End-user id for abuse monitoring (kept per the server's retention).")

    @field_validator("input")
    @classmethod
    def _input_shape(cls, v: Any) -> Any:
        if isinstance(v, str):
            _check_text(v, None)
            return v
        if not isinstance(v, list):
            raise _bad(f"'input' must be a string, a list of strings or token ids, got {type(v).__name__}")
        if not v:
            raise _bad("'input' must not be an empty list")
        if _is_int(v[0]) or isinstance(v[0], float):  # one input given as token ids
            return _check_ids(v, "input")
        kind = str if isinstance(v[0], str) else list if isinstance(v[0], list) else None
        v = list(v)
        for i, x in enumerate(v):
            if kind is str and isinstance(x, str):
                _check_text(x, i)
            elif kind is list and isinstance(x, list):
                v[i] = _check_ids(x, f"input[{i}]")
            else:
                want = {str: "a string", list: "a list of token ids"}.get(kind, "a string")  # type: ignore[arg-type]
                raise _bad(f"'input[{i}]' must be {want} (all inputs of one kind), got {type(x).__name__}")
        return v

    @field_validator("user")
    @classmethod
    def _user_text(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise PydanticCustomError("invalid_user", "'user' is not valid Unicode") from None
            if any(ord(c) < 32 for c in v):
                raise PydanticCustomError("invalid_user", "'user' must not contain control characters")
        return v

    def inputs(self) -> tuple[Literal["text", "tokens"], list[Any]]:
        """('text', [str, ...]) or ('tokens', [[int, ...], ...]), one entry per input."""
        v = self.input
        if isinstance(v, str):
            return "text", [v]
        if _is_int(v[0]):
            return "tokens", [v]
        return ("text", list(v)) if isinstance(v[0], str) else ("tokens", list(v))


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32 bytes")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, requests, tokens, texts, "
                                  "server_error")
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    dim: int
