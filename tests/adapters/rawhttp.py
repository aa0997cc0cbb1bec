"""Raw HTTP/1.1 requests for attack tests: bytes that aiohttp's client would refuse or
fix up (header values that are not UTF-8, repeated headers, query bytes sent as they are)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestServer


async def raw_request(server: TestServer, method: str, target: bytes,
                      headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"") -> tuple[int, bytes]:
    """Send one request exactly as given; the status and the body of the answer."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
                 b"Content-Length: " + str(len(body)).encode()]
        lines += [name + b": " + value for name, value in headers or []]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def error_of(payload: bytes) -> dict[str, Any]:
    """The JSON error body every refusal carries."""
    data = json.loads(payload)
    assert set(data) == {"error", "message"}, data
    return data
