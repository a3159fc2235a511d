"""The gateway's read-only HTTP side (aiohttp): the status page, its JSON, /metrics.

Routes: `/` the page, `/static/{app.js,style.css}` its assets (served from the package,
nothing from the internet), `/api/status` the page's data, `/metrics` the Prometheus
exposition. Only GET/HEAD. With a token configured every route but the two assets needs
it, given as `Authorization: Bearer TOKEN`, `?token=TOKEN`, or HTTP basic auth with the
token as the password (any user name); without one the config only allows a loopback
listener.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..metrics import Metrics
from ..ratelog import RateLimitedLog
from . import view

log = logging.getLogger("citysense.web")

Snapshot = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_LINE = 8190
"""Longest request line or header line accepted; longer gets 400 from aiohttp."""
STATIC = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
REALM = 'Basic realm="citysense gateway", charset="UTF-8"'
PUBLIC = frozenset(f"/static/{name}" for name in STATIC)
"""The page's script and style sheet: the same code on every gateway, no data in them;
served without the token because a page opened with ?token= loads them without it."""


class _HttpLog(logging.Logger):
    """aiohttp's per-connection log: a malformed or oversized request becomes one
    rate-limited warning line without a traceback; anything else stays an error."""

    def __init__(self) -> None:
        super().__init__("citysense.web.http")
        self.parent = log
        self.rlog = RateLimitedLog(log, interval=10.0)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            self.rlog.warning(
                "web-bad-request",
                "event=web-bad-request peer=%s status=%d detail=%r",
                args[0] if args else "?",
                exc.code,
                str(exc.message)[:80],
            )
            return
        super().exception(msg, *args, exc_info=exc_info, **kw)


def _asset(name: str) -> bytes:
    return resources.files("gateway.web").joinpath("static", name).read_bytes()


class WebServer:
    def __init__(
        self,
        metrics: Metrics,
        snapshot: Snapshot,
        *,
        host: str,
        port: int,
        token: str | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.metrics = metrics
        self.snapshot = snapshot
        self.host = host
        self.port = port
        self.token = token
        self.secrets = sorted({s for s in (token, *secrets) if s}, key=len, reverse=True)
        self.rlog = RateLimitedLog(log)
        self.assets = {name: _asset(name) for name in (*STATIC, "index.html")}
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(
            self.app(),
            access_log=None,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            logger=_HttpLog(),
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, backlog=32)
        await site.start()
        log.info(
            "event=web-listening host=%s port=%d auth=%s",
            self.host,
            self.port,
            "token" if self.token else "none",
        )

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # -- auth ---------------------------------------------------------------------------
    def authorised(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token")
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            given = decoded.partition(":")[2]
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC and not self.authorised(request):
            self.rlog.warning(
                f"web-unauthorised:{request.remote}",
                "event=web-unauthorised peer=%s path=%r",
                request.remote,
                request.path[:80],
            )
            response: web.StreamResponse = web.Response(
                status=401, text="401: a token is needed\n", headers={"WWW-Authenticate": REALM}
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = web.Response(status=exc.status, text=f"{exc.status}: {exc.reason}\n")
                if "Allow" in exc.headers:  # 405 says which methods are allowed
                    response.headers["Allow"] = exc.headers["Allow"]
        response.headers.update(SECURITY_HEADERS)
        return response

    # -- routes -------------------------------------------------------------------------
    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.assets["index.html"], content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self.assets[name], content_type=STATIC[name])

    async def _status(self, _request: web.Request) -> web.Response:
        page = view.build(self.snapshot(), time.time())
        return web.Response(text=json.dumps(self.redact(page)), content_type="application/json")

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render().encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def redact(self, value: Any) -> Any:
        """Belt and braces: a configured secret never leaves in the page's data, even
        inside an error text the uplink copied from somewhere."""
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {self.redact(k): self.redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value
