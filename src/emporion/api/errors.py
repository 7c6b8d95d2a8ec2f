"""The one place errors become responses: OpenAI's envelope, whatever went wrong."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from emporion.api.openai.routes import json_response
from emporion.errors import EmporionError, InvalidRequest, NotFound
from emporion.formats.anthropic import error_envelope

log = logging.getLogger("emporion.api")

INTERNAL_ERROR = "The server had an error while processing your request. Sorry about that!"


def render(request: Request, error: EmporionError, status: int | None = None) -> Response:
    """OpenAI's envelope, or Anthropic's on Anthropic's route (its SDK reads that one)."""
    body = error_envelope(error) if request.url.path.startswith("/v1/messages") else error.envelope()
    return json_response(body, status=status or error.status, headers=error.headers())


async def emporion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmporionError)
    return render(request, exc)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such route) and 405 (wrong method), in the same envelope."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: EmporionError = NotFound(f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url")
    elif exc.status_code == 405:
        error = InvalidRequest(f"Method {request.method} is not allowed on {request.url.path}.", code="method_not_allowed")
    else:
        error = InvalidRequest(str(exc.detail))
    return render(request, error, status=exc.status_code)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return render(request, EmporionError(INTERNAL_ERROR))


handlers = {EmporionError: emporion_error, HTTPException: http_error, Exception: unexpected_error}
