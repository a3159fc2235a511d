"""The gateway's read-only HTTP side: the status page, its JSON, /metrics.

Routes: `/` the page, `/static/{app.js,style.css}` its assets (served from the package,
nothing from the internet), `/api/status` the page's data, `/metrics` the Prometheus
exposition. Only GET/HEAD. With a token configured every route but the two assets needs
it, given as `Authorization: Bearer TOKEN`, `?token=TOKEN`, or HTTP basic auth with the
token as the password (any user name); without one the config only allows a loopback
listener. Served by `http.HttpServer` (h11; aiohttp before 2026-12-03, see there why).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from ..metrics import Metrics
from ..ratelog import RateLimitedLog
from . import view
from .http import HttpServer, Request, Response, error_response

log = logging.getLogger("citysense.web")

Snapshot = Callable[[], dict[str, Any]]

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
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
        self.http: HttpServer | None = None
        self.routes: dict[str, Callable[[], Response]] = {
            "/": self._page,
            "/api/status": self._status,
            "/metrics": self._metrics,
            **{f"/static/{name}": functools.partial(self._static, name) for name in STATIC},
        }
        self.bad_log = RateLimitedLog(log, interval=10.0)

    async def start(self) -> None:
        self.http = HttpServer(self.handle, self.host, self.port, on_bad_request=self._bad)
        await self.http.start()
        log.info(
            "event=web-listening host=%s port=%d auth=%s",
            self.host,
            self.port,
            "token" if self.token else "none",
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None

    def _bad(self, peer: str, status: int, detail: str) -> None:
        """A malformed or oversized request: one rate-limited warning line, no traceback."""
        self.bad_log.warning(
            "web-bad-request",
            "event=web-bad-request peer=%s status=%d detail=%r",
            peer,
            status,
            detail[:80],
        )

    # -- auth ---------------------------------------------------------------------------
    def authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token")
        auth = request.headers.get("authorization", "")
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

    def handle(self, request: Request) -> Response:
        """The token first (on every path but the two assets, known or not), then the
        route: 404 for an unknown path, 405 (with Allow) for a method other than GET/HEAD."""
        if request.path not in PUBLIC and not self.authorised(request):
            self.rlog.warning(
                f"web-unauthorised:{request.peer}",
                "event=web-unauthorised peer=%s path=%r",
                request.peer,
                request.path[:80],
            )
            response = Response(
                401,
                b"401: a token is needed\n",
                {"Content-Type": "text/plain; charset=utf-8", "WWW-Authenticate": REALM},
            )
        elif (route := self.routes.get(request.path)) is None:
            response = error_response(404)
        elif request.method not in ("GET", "HEAD"):
            response = error_response(405)
            response.headers["Allow"] = "GET,HEAD"
        else:
            response = route()
        response.headers.update(SECURITY_HEADERS)
        return response

    # -- routes -------------------------------------------------------------------------
    def _page(self) -> Response:
        return Response(
            200, self.assets["index.html"], {"Content-Type": "text/html; charset=utf-8"}
        )

    def _static(self, name: str) -> Response:
        return Response(200, self.assets[name], {"Content-Type": STATIC[name]})

    def _status(self) -> Response:
        page = view.build(self.snapshot(), time.time())
        return Response(
            200,
            json.dumps(self.redact(page)).encode(),
            {"Content-Type": "application/json; charset=utf-8"},
        )

    def _metrics(self) -> Response:
        return Response(
            200,
            self.metrics.render().encode(),
            {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
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
