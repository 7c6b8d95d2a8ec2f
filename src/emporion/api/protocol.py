"""uvicorn's httptools protocol at Emporion's edge: framing errors and slow headers answered in OpenAI's envelope."""

from __future__ import annotations

import asyncio
import sys
from typing import ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from emporion.api.disconnect import GONE
from emporion.api.middleware import new_request_id
from emporion.errors import EmporionError, InvalidRequest, RequestTimeout


class EdgeProtocol(HttpToolsProtocol):
    """What uvicorn answers itself, before the app sees a request: a 400 for malformed HTTP (two
    Content-Lengths, Content-Length with chunked, a NUL in a header) and, new, a 408 for headers
    that take longer than ``header_timeout_s`` to arrive (a fresh connection that sends nothing
    in that time is closed). Both in the envelope, with an x-request-id, and the connection closes."""

    header_timeout_s: ClassVar[float] = 10.0

    _header_timer: asyncio.TimerHandle | None = None
    _in_headers = False  # a request has begun and its headers are not complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's stub says BaseTransport; it is always a Transport
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and cycle.disconnected:
            for gone in cycle.scope.get(GONE, ()):  # type: ignore[attr-defined]  # uvicorn's scope is a TypedDict; the key is ours
                gone()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()
        self.scope[GONE] = []  # type: ignore[literal-required]  # api/disconnect.py: told when the client leaves

    def send_400_response(self, msg: str) -> None:
        exc = sys.exception()  # uvicorn calls this while handling the parser's error
        detail = f": {exc}." if isinstance(exc, httptools.HttpParserError) and str(exc) else "."
        self._send_error(InvalidRequest(f"Invalid HTTP request{detail}", code="invalid_http_request"))

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._in_headers:
            self.transport.close()  # connected, and never said anything
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined request is still being answered: close after it
            return
        self._send_error(RequestTimeout(f"The request headers did not arrive within {self.header_timeout_s:g} seconds."))

    def _send_error(self, error: EmporionError) -> None:
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            self.transport.close()  # half a response is out: no second one can follow it
            return
        body = orjson.dumps(error.envelope())
        content = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"x-request-id: " + new_request_id().encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()


def edge_protocol(header_timeout_s: float) -> type[EdgeProtocol]:
    """The protocol class for ``uvicorn.run(http=...)``, with the configured header timeout."""
    return type("EdgeProtocol", (EdgeProtocol,), {"header_timeout_s": header_timeout_s})
