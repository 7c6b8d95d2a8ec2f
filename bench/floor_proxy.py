"""The floor reference: a bare pass-through proxy (aiohttp on uvloop, one process). It forwards
the body and streams the answer back, and does nothing else: no auth, no parsing, no records.

    python -m bench.floor_proxy --port 9200 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web


async def proxy(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    body = await request.read()
    async with session.post(
        request.app["upstream"] + request.path, data=body, headers={"content-type": "application/json"}
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, headers={"content-type": upstream.headers.get("content-type", "")})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def build(upstream: str) -> web.Application:
    app = web.Application()
    app["upstream"] = upstream.rstrip("/")

    async def session(app: web.Application):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    app.cleanup_ctx.append(session)
    app.router.add_post("/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", default="http://127.0.0.1:9000")
    args = parser.parse_args()
    uvloop.install()
    web.run_app(build(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
