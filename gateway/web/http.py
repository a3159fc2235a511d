"""A small HTTP/1.1 server for the status page: h11 for the protocol, asyncio streams for
the I/O, one synchronous `App` callback that turns a `Request` into a `Response`.

It replaced aiohttp (2026-12-03): the status page needs four GET routes, and importing
aiohttp cost the agent ~12 MiB of its ~56 MiB resident memory; h11 costs ~0.5 MiB
(docs/benchmarks.md, "Issue 17: resident memory").

Rules, all bounded:
- a request head (request line and headers) is at most `MAX_HEAD` bytes (431 beyond),
  its request target at most `MAX_LINE` bytes (414), each header line at most `MAX_LINE`
  (431), at most `MAX_HEADERS` headers (431); anything h11 cannot parse gets 400;
- a request may carry a body of at most `MAX_BODY` bytes (400 beyond), read and
  discarded: the app sees method, path, query and headers only;
- keep-alive as HTTP/1.1 says; a connection idle for `IDLE_TIMEOUT` s is closed;
- at most `MAX_CONNECTIONS` at once: one more is closed unanswered.
Every malformed or oversized request is answered with its status and handed to
`on_bad_request(peer, status, detail)` (the caller logs it, rate-limited); nothing of it
reaches the app.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote

import h11

MAX_LINE: Final = 8190
MAX_HEAD: Final = 32 * 1024
MAX_HEADERS: Final = 100
MAX_BODY: Final = 64 * 1024
IDLE_TIMEOUT: Final = 60.0
MAX_CONNECTIONS: Final = 64
CLOSE_WAIT: Final = 2.0  # close(): how long the aborted connections may take to end
_READ: Final = 16 * 1024

REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    """percent-decoded, without the query"""
    query: dict[str, str]
    """the first value of each parameter"""
    headers: dict[str, str]
    """lower-case names, the first of each"""
    peer: str


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


App = Callable[[Request], Response]
BadRequest = Callable[[str, int, str], None]


class _Refused(Exception):
    """A request the server answers itself with `status`, closing the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def error_response(status: int) -> Response:
    return Response(
        status,
        f"{status}: {REASONS.get(status, 'Error')}\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8"},
    )


def _request(event: h11.Request, peer: str) -> Request:
    if len(event.target) > MAX_LINE:
        raise _Refused(414, f"request target of {len(event.target)} bytes")
    if len(event.headers) > MAX_HEADERS:
        raise _Refused(431, f"{len(event.headers)} headers")
    headers: dict[str, str] = {}
    for name, value in event.headers:
        if len(name) + len(value) + 2 > MAX_LINE:
            raise _Refused(431, f"header line of {len(name) + len(value) + 2} bytes")
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    # h11 let through only visible ASCII in the target and tokens in method and names
    path, _, query = event.target.decode("latin-1").partition("?")
    params: dict[str, str] = {}
    for key, param in parse_qsl(query, keep_blank_values=True):
        params.setdefault(key, param)
    return Request(event.method.decode("latin-1"), unquote(path), params, headers, peer)


class HttpServer:
    def __init__(
        self, app: App, host: str, port: int, *, on_bad_request: BadRequest, backlog: int = 32
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.on_bad_request = on_bad_request
        self.backlog = backlog
        self.server: asyncio.Server | None = None
        self.connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.closing = False

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._connection, self.host, self.port, backlog=self.backlog, limit=_READ
        )

    async def close(self) -> None:
        """Stop listening and end every open connection, idle keep-alive ones (a browser
        tab on the status page) included: their transports are aborted, so each
        connection ends by itself at once. Not by cancelling: before 3.12 asyncio logs
        "Exception in callback" for every cancelled connection task, and from 3.12 on
        `Server.wait_closed()` waits for every connection, which held the agent's stop
        for up to IDLE_TIMEOUT."""
        self.closing = True
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for writer in list(self.connections.values()):
            writer.transport.abort()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=CLOSE_WAIT)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_WAIT)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self.closing or len(self.connections) >= MAX_CONNECTIONS:
            writer.close()  # over the bound, or accepted just before close()
            return
        self.connections[task] = writer
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else "?"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while await self._exchange(conn, reader, writer, peer):
                conn.start_next_cycle()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the peer went away or idled: nothing to answer
        finally:
            self.connections.pop(task, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = await asyncio.wait_for(reader.read(_READ), IDLE_TIMEOUT)
            conn.receive_data(data)

    async def _exchange(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> bool:
        """One request and its response; True when the connection may take another."""
        try:
            event = await self._next(conn, reader)
            if isinstance(event, h11.ConnectionClosed):
                return False
            if not isinstance(event, h11.Request):
                raise _Refused(400, f"unexpected {type(event).__name__}")
            request = _request(event, peer)
            await self._discard_body(conn, reader)
        except h11.RemoteProtocolError as exc:
            if self.closing:  # the EOF of our own abort, mid-request: nothing to report
                return False
            return await self._refuse(conn, writer, peer, exc.error_status_hint, str(exc))
        except _Refused as exc:
            return await self._refuse(conn, writer, peer, exc.status, exc.detail)
        response = self.app(request)
        await self._send(conn, writer, response, head=request.method == "HEAD")
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _discard_body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> None:
        size = 0
        while True:
            event = await self._next(conn, reader)
            if isinstance(event, h11.EndOfMessage):
                return
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise _Refused(400, f"a request body of more than {MAX_BODY} bytes")
            else:
                raise _Refused(400, f"unexpected {type(event).__name__}")

    async def _refuse(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, peer: str, status: int, why: str
    ) -> bool:
        self.on_bad_request(peer, status, why)
        response = error_response(status)
        response.headers["Connection"] = "close"
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError):
                await self._send(conn, writer, response, head=False)
        return False

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, *, head: bool
    ) -> None:
        headers = [*response.headers.items(), ("Content-Length", str(len(response.body)))]
        reason = REASONS.get(response.status, "").encode()
        events: list[h11.Event] = [
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        ]
        if not head and response.body:  # h11 knows a HEAD answer has no body
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        writer.write(b"".join(conn.send(e) or b"" for e in events))
        await writer.drain()
