"""The one error tree of Emporion, and its rendering as OpenAI's error envelope.

    EmporionError (500 server_error)
    ├── InvalidRequest (400 invalid_request_error)
    │   ├── ContextLengthExceeded (400, code context_length_exceeded)
    │   ├── PayloadTooLarge (413)
    │   └── RequestTimeout (408, code request_timeout; the connection is closed)
    ├── AuthenticationFailed (401, code invalid_api_key)
    ├── PermissionDenied (403)
    ├── NotFound (404)
    │   └── ModelNotFound (404, code model_not_found)
    ├── Conflict (409, code conflict; Retry-After when it is worth retrying)
    ├── Unprocessable (422: understood, but it contradicts what was done before)
    ├── RateLimited (429, Retry-After)
    └── UpstreamError (502 by default; carries retryable and retry_after_s)
        ├── UpstreamNotFound (404: the upstream refused the request; not its failure)
        ├── UpstreamRateLimited (429, Retry-After)
        ├── UpstreamTimeout (504)
        └── ServiceUnavailable (503, Retry-After)
            └── EngineOverloaded (503, code engine_overloaded)

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with the
status above; nothing else is ever shown to a client.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EmporionError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.instance_code = code
        self.retry_after_s = retry_after_s

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.instance_code if self.instance_code is not None else self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after_s)))}


class InvalidRequest(EmporionError):
    status, type = 400, "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class PayloadTooLarge(InvalidRequest):
    status, code = 413, "request_too_large"


class RequestTimeout(InvalidRequest):
    """The client sent its request too slowly; what is left of it is not read, so the connection closes."""

    status, code = 408, "request_timeout"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "connection": "close"}


class AuthenticationFailed(EmporionError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class PermissionDenied(EmporionError):
    status, type = 403, "permission_denied"


class NotFound(EmporionError):
    status, type = 404, "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(EmporionError):
    status, type, code = 409, "invalid_request_error", "conflict"


class Unprocessable(EmporionError):
    status, type, code = 422, "invalid_request_error", "unprocessable"


class RateLimited(EmporionError):
    status, type, code = 429, "rate_limit_exceeded", "rate_limit_exceeded"


class UpstreamError(EmporionError):
    """The model's server failed. ``retryable`` tells routing whether another try may succeed."""

    status, type, code = 502, "upstream_error", "upstream_error"

    def __init__(self, message: str, *, retryable: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retryable = retryable


class UpstreamNotFound(UpstreamError):
    """The upstream answered 404 (no such model or route there): the next deployment may serve,
    but it is no failure of the upstream, so no circuit breaker counts it."""

    status, type, code = 404, "invalid_request_error", "upstream_not_found"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, retryable=False, **kwargs)


class UpstreamRateLimited(UpstreamError):
    status, type, code = 429, "rate_limit_exceeded", "upstream_rate_limited"


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"


class ServiceUnavailable(UpstreamError):
    status, type, code = 503, "server_error", "service_unavailable"


class EngineOverloaded(ServiceUnavailable):
    code = "engine_overloaded"
