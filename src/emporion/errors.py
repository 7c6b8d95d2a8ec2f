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
status above; nothing else is ever shown to a client. ``invalid_request`` words a pydantic
validation error as OpenAI does, for the API's bodies and the CLI's options alike.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails

NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The API expects a JSON payload, but what was sent was not valid "
    "JSON.)"
)


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


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """Pydantic's first error as OpenAI words it, with the client's own path to the field as ``param``.

    Where a field is a union, pydantic reports every member that failed, each under a label of its
    own ('str', 'list[constrained-str]', 'function-after[...]' ...) that no client ever wrote. The
    labels are dropped; of the members, the one that got deepest into the input is what the client
    meant (a list whose third item is wrong), else one of the input's type that broke a constraint
    (an empty list), else the types are listed: "Input should be a valid string or a valid array"."""
    errors = exc.errors(include_url=False)
    if any(err["type"] == "json_invalid" for err in errors):
        return InvalidRequest(NOT_JSON)
    if errors and errors[0]["type"] == "model_type" and not errors[0]["loc"]:
        return InvalidRequest("The request body must be a JSON object.")
    first = errors[0]
    base = _union_base(first["loc"])
    members = [err for err in errors if base is not None and _union_base(err["loc"]) == base] or [first]
    paths = [_client_path(err["loc"]) for err in members]
    depth = max(len(path) for path in paths)
    deepest = [err for err, path in zip(members, paths, strict=True) if len(path) == depth]
    loc = _client_path(deepest[0]["loc"])
    param = ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc)
    if deepest[0]["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    meant = [err for err in deepest if not _mismatch(err)] or deepest  # a member of the right type
    said = list(dict.fromkeys(_message(err) for err in meant))
    message = said[0] + "".join(" or " + other.removeprefix("Input should be ") for other in said[1:])
    return InvalidRequest(f"Invalid '{param}': {message}.", param=param or None, code="invalid_value")


def _mismatch(err: ErrorDetails) -> bool:
    """The input is not of this member's type at all (as opposed to breaking one of its constraints)."""
    return err["type"].endswith("_type") or err["type"] == "literal_error"


def _message(err: ErrorDetails) -> str:
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "Input should be an object"  # pydantic would name the schema's class
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ").rstrip(".")


def _union_base(loc: tuple[int | str, ...]) -> list[int | str] | None:
    """The client's path to the union whose member failed, or None when no union is on the path."""
    for index, part in enumerate(loc):
        if _is_label(part):
            return _client_path(loc[:index])
    return None


def _client_path(loc: tuple[int | str, ...]) -> list[int | str]:
    """The location without pydantic's labels, nor the tag a tagged union chose its member by."""
    path: list[int | str] = []
    tag_next = False
    for part in loc:
        if _is_label(part):
            tag_next = tag_next or "tagged-union[" in str(part)
        elif tag_next and isinstance(part, str):
            tag_next = False  # the discriminator's value ('text', 'image_url'), not a field
        else:
            path.append(part)
    return path


def _is_label(part: object) -> bool:
    """Pydantic's label of a union member: a type ('str', 'int', 'none'), a schema ('list[...]',
    'constrained-str', 'function-after[...]', 'lax-or-strict[...]', 'json-or-python[...]',
    "literal['a','b']") or a model's class name ('TextPart'). Field names are snake_case."""
    return isinstance(part, str) and (part in LABELS or "[" in part or "-" in part or part[:1].isupper())


LABELS = frozenset({"str", "int", "float", "bool", "bytes", "none", "any", "decimal", "list", "dict", "url"})
