"""A fake OpenAI upstream for benchmarks: a raw asyncio protocol on uvloop, so it is never the
bottleneck (it parses only what it must and answers with prepared bytes).

    python -m bench.fake_upstream --port 9000 [--delay-ms 0] [--chunks 20] [--chunk-interval-ms 5]

POST /v1/chat/completions answers a fixed chat completion, after ``--delay-ms``; with
``"stream": true`` in the body it streams ``--chunks`` SSE chunks ``--chunk-interval-ms`` apart,
a finish chunk, a usage chunk and ``data: [DONE]``, exactly as OpenAI frames them.
POST /v1/embeddings answers one 384-dimensional vector.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvloop

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }
).encode()
EMBEDDING = json.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.01] * 384}],
        "model": "fake",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
).encode()


def _chunk(payload: dict) -> bytes:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _stream_parts(chunks: int) -> tuple[bytes, bytes, bytes]:
    head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake"}
    first = _chunk({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    token = _chunk({**head, "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}]})
    tail = (
        _chunk({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + _chunk(
            {**head, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}}
        )
        + _chunk_raw(b"data: [DONE]\n\n")
        + b"0\r\n\r\n"
    )
    return first, token, tail


def _chunk_raw(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line[15:])
    return 0


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class FakeUpstream(asyncio.Protocol):
    def __init__(self, delay_s: float, chunks: int, interval_s: float) -> None:
        self.delay_s, self.chunks, self.interval_s = delay_s, chunks, interval_s
        self.parts = _stream_parts(chunks)
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = _content_length(head)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            path = head.split(b" ", 2)[1]
            asyncio.ensure_future(self.answer(path, body))

    async def answer(self, path: bytes, body: bytes) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if path.endswith(b"/embeddings"):
            self.transport.write(_response(EMBEDDING))
        elif b'"stream":true' in body.replace(b" ", b""):
            first, token, tail = self.parts
            self.transport.write(STREAM_HEAD + first)
            for _ in range(self.chunks):
                if self.interval_s:
                    await asyncio.sleep(self.interval_s)
                if self.transport.is_closing():
                    return
                self.transport.write(token)
            self.transport.write(tail)
        else:
            self.transport.write(_response(COMPLETION))


async def serve(port: int, delay_s: float, chunks: int, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeUpstream(delay_s, chunks, interval_s), "127.0.0.1", port, backlog=2048)
    print(f"fake upstream on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-interval-ms", type=float, default=5.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay_ms / 1000, args.chunks, args.chunk_interval_ms / 1000))


if __name__ == "__main__":
    main()
