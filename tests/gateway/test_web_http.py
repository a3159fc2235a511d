"""The status page's HTTP server (gateway/web/http.py, h11 over asyncio streams) on a real
listener: keep-alive, HEAD, HTTP/1.0, a request body, the connection bound."""

from __future__ import annotations

import asyncio

from support import free_port

from gateway.web import http
from gateway.web.http import HttpServer, Request, Response

Bad = list[tuple[str, int, str]]


def app(request: Request) -> Response:
    body = f"{request.method} {request.path} {sorted(request.query.items())}".encode()
    return Response(200, body, {"Content-Type": "text/plain"})


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


async def serve(bad: Bad) -> tuple[HttpServer, int]:
    """A started server on a free port; its bad requests, and anything asyncio would log
    as an error (an exception in a callback), go to `bad`."""
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: bad.append(("asyncio", 0, str(context.get("message"))))
    )
    port = free_port()
    server = HttpServer(app, "127.0.0.1", port, on_bad_request=lambda *a: bad.append(a))
    await server.start()
    return server, port


def run(test: object) -> Bad:
    bad: Bad = []

    async def main() -> None:
        server, port = await serve(bad)
        try:
            await test(port)  # type: ignore[operator]
        finally:
            await server.close()

    asyncio.run(main())
    return bad


def test_keep_alive_head_and_percent_decoding() -> None:
    async def t(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a%2Fb?x=1&x=2&y= HTTP/1.1\r\nHost: h\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert body == b"GET /a/b [('x', '1'), ('y', '')]"
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n")  # same connection
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 10\r\n" in head  # of "HEAD /h []"; no body follows
        writer.write(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd")
        head, body = await read_response(reader)
        assert body == b"POST /p []"
        writer.write(b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)  # answered, then closed
        assert rest.endswith(b"GET /last []") and b"Connection: close\r\n" in rest
        writer.close()

    assert run(t) == []


def test_http10_is_answered_and_closed() -> None:
    async def t(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /old HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"GET /old []")
        writer.close()

    assert run(t) == []


def test_oversized_body_is_refused() -> None:
    async def t(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = http.MAX_BODY + 1
        writer.write(f"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {size}\r\n\r\n".encode())
        writer.write(b"x" * size)
        data = await asyncio.wait_for(reader.read(), 10)
        assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        writer.close()

    bad = run(t)
    assert [(peer, status) for peer, status, _ in bad] == [("127.0.0.1", 400)]


def test_connections_beyond_the_bound_are_closed_unanswered() -> None:
    async def t(port: int) -> None:
        conns = [
            await asyncio.open_connection("127.0.0.1", port) for _ in range(http.MAX_CONNECTIONS)
        ]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        first_reader, first_writer = conns[0]
        first_writer.write(b"GET /still HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await read_response(first_reader))[1] == b"GET /still []"
        for _, w in conns:
            w.close()

    assert run(t) == []


def test_close_ends_idle_keep_alive_connections_at_once() -> None:
    """The agent's stop closes the server with connections open: a browser tab polling
    the status page keeps one alive between its requests. Before: on Python 3.12 close()
    waited for it (up to IDLE_TIMEOUT, 60 s, longer than the test allows), and on 3.11
    asyncio logged "Exception in callback" for each cancelled connection task."""

    async def main() -> Bad:
        bad: Bad = []
        server, port = await serve(bad)
        clients = []
        for i in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            assert (await read_response(reader))[1] == f"GET /{i} []".encode()
            clients.append((reader, writer))  # answered, kept alive, idle
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(b"GET /half HTTP/1.1\r\nHost:")  # a head cut off midway
        await asyncio.sleep(0.2)
        await asyncio.wait_for(server.close(), 10)
        for reader, writer in [*clients, half]:
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
            writer.close()
        assert server.connections == {}
        await asyncio.sleep(0.1)  # a callback's error would be logged by now
        return bad

    assert asyncio.run(main()) == []
