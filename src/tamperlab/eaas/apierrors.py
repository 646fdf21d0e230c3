"""OpenAI-shaped API errors: `{"error": {"message", "type", "param", "code"}}` with OpenAI's `type` values."""

from __future__ import annotations

from typing import Any

# OpenAI's error `type` per status. 404 for an unknown model and 413 are `invalid_request_error` there too;
# 429 carries the limit that was hit (`requests` / `tokens`, as OpenAI's rate-limit errors do; `texts` is ours).
_TYPE_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "invalid_request_error", 405: "invalid_request_error", 409: "conflict_error",
                   413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
                   429: "requests", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """A refusal the handlers raise; the app turns it into the OpenAI error object and status."""

    def __init__(self, status: int, message: str, code: str | None, param: str | None = None,
                 headers: dict[str, str] | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.type = type_ or error_type(status)


def error_type(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(status: int, message: str, code: str | None, param: str | None = None,
               type_: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_ or error_type(status), "param": param, "code": code}}


def error_json(e: APIError) -> dict[str, Any]:
    return error_body(e.status, e.message, e.code, e.param, e.type)
