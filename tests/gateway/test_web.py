"""The status page's HTTP side with real requests on a real listener: routes, status codes
for bad requests, the token in its three forms, and no secret in anything served."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from gwsupport import write_config
from support import free_port

from gateway.config import ConfigError, load_config
from gateway.metrics import Metrics
from gateway.web import WebServer

TOKEN = "s3cret-token-0123456789"
PASSWORD = "broker-pw-hunter2"

Response = tuple[int, dict[str, str], bytes]


def snapshot() -> dict[str, Any]:
    return {
        "gateway_id": "gw-test",
        "started_at": 1.0,
        "version": "0.1.0",
        "uplink": {
            "state": "disconnected",
            "protocol": "MQTTv5",
            "url": f"mqtts://citysense:{PASSWORD}@broker.example:8883",
            "last_error": f"refused: bad password {PASSWORD}",
            "published": 7,
        },
        "queue": {"depth": 3, "bytes": 900, "max_bytes": 4_000_000, "oldest_age_s": 12.5},
        "devices": {
            "node-1": {"port": "/dev/ttyUSB0", "last_seen": 1e12, "seq": 42, "boot": 3},
        },
        "counters": {"publish_errors": 1, "duplicates": 0},
    }


async def request(port: int, raw: bytes) -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


async def get(port: int, path: str, **headers: str) -> Response:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
    return await request(port, raw.encode())


def serve(test: Callable[[int, Metrics], Awaitable[None]], *, token: str | None = None) -> None:
    async def main() -> None:
        metrics = Metrics()
        port = free_port()
        server = WebServer(
            metrics, snapshot, host="127.0.0.1", port=port, token=token, secrets=[PASSWORD]
        )
        await server.start()
        try:
            await test(port, metrics)
        finally:
            await server.close()

    asyncio.run(main())


def test_metrics_exposition_with_the_old_names() -> None:
    async def t(port: int, metrics: Metrics) -> None:
        metrics.accepted += 5
        metrics.rejected["replay"] += 2
        metrics.uplink_connected = 1
        metrics.gauges["citysense_queue_depth"] = lambda: 3.0
        metrics.observe_publish(0.02)
        status, headers, body = await get(port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert "citysense_records_accepted_total 5.0\n" in text
        assert 'citysense_records_rejected_total{reason="replay"} 2.0\n' in text
        assert "citysense_uplink_connected 1.0\n" in text
        assert "citysense_queue_depth 3.0\n" in text
        assert 'citysense_publish_latency_seconds_bucket{le="0.01"} 0.0\n' in text
        assert 'citysense_publish_latency_seconds_bucket{le="0.025"} 1.0\n' in text
        assert "# TYPE citysense_frames_total counter\n" in text
        metrics.accepted += 1
        assert "citysense_records_accepted_total 6.0\n" in (await get(port, "/metrics"))[2].decode()

    serve(t)


def test_two_metrics_objects_do_not_share_values() -> None:
    a, b = Metrics(), Metrics()
    a.accepted += 1
    a.commands["ok"] += 1
    assert (b.accepted, dict(b.commands)) == (0, {})
    assert "citysense_records_accepted_total 0.0" in b.render()


def test_page_and_assets_are_served_locally() -> None:
    async def t(port: int, _m: Metrics) -> None:
        status, headers, body = await get(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert b'src="static/app.js"' in body and b'href="static/style.css"' in body
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            status, headers, asset = await get(port, f"/static/{name}")
            assert status == 200 and headers["content-type"].startswith(kind)
            # nothing fetched from elsewhere: the only URL is the SVG namespace name
            urls = set(re.findall(rb"https?://[^\s\"')]+", asset + body))
            assert urls <= {b"http://www.w3.org/2000/svg"}

    serve(t)


def test_bad_requests_get_the_right_codes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def t(port: int, _m: Metrics) -> None:
        assert (await get(port, "/nope"))[0] == 404
        assert (await get(port, "/static/../config.py"))[0] == 404
        assert (await get(port, "/static/index.html"))[0] == 404
        post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        post += b"Connection: close\r\n\r\n"
        status, headers, _ = await request(port, post)
        assert status == 405 and set(headers["allow"].split(",")) == {"GET", "HEAD"}
        big = "a" * 20_000
        status, _, _ = await get(port, "/metrics", X_Big=big)
        assert status in (400, 431)
        status, _, _ = await get(port, "/metrics?" + big)
        assert status in (400, 414)
        many = "".join(f"X-H{i}: {'b' * 100}\r\n" for i in range(200))
        raw = f"GET /metrics HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n"
        assert (await request(port, raw.encode()))[0] in (400, 431)
        assert (await request(port, b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400
        assert (await get(port, "/metrics"))[0] == 200  # and it still serves

    serve(t)
    # one rate-limited line for the flood of bad requests, no traceback
    bad = [r for r in caplog.records if "web-bad-request" in r.getMessage()]
    assert len(bad) == 1 and bad[0].levelno == logging.WARNING and bad[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_token_required_in_any_of_its_three_forms() -> None:
    async def t(port: int, _m: Metrics) -> None:
        for path in ("/", "/metrics", "/api/status", "/static/index.html", "/nope"):
            status, headers, body = await get(port, path)
            assert status == 401, path
            assert headers["www-authenticate"].startswith('Basic realm="citysense gateway"')
            assert TOKEN.encode() not in body
        # the page's script and style (no data in them) load without it
        assert (await get(port, "/static/app.js"))[0] == 200
        assert (await get(port, "/static/style.css"))[0] == 200
        assert (await get(port, "/metrics", Authorization="Bearer wrong-token-000000"))[0] == 401
        assert (await get(port, "/metrics?token=wrong"))[0] == 401
        assert (await get(port, f"/metrics?token={TOKEN}x"))[0] == 401
        basic = base64.b64encode(f"tech:{TOKEN}".encode()).decode()
        assert (await get(port, "/metrics", Authorization="Basic !!notbase64"))[0] == 401
        assert (await get(port, "/metrics", Authorization=f"Bearer {TOKEN}"))[0] == 200
        assert (await get(port, f"/api/status?token={TOKEN}"))[0] == 200
        assert (await get(port, "/", Authorization=f"Basic {basic}"))[0] == 200
        assert (await get(port, f"/nope?token={TOKEN}"))[0] == 404

    serve(t, token=TOKEN)


def test_status_json_shows_no_secret() -> None:
    async def t(port: int, _m: Metrics) -> None:
        status, headers, body = await get(port, "/api/status", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert headers["cache-control"] == "no-store"
        assert PASSWORD.encode() not in body and TOKEN.encode() not in body
        page = json.loads(body)
        assert page["uplink"]["broker"] == "mqtts://broker.example:8883"
        assert page["uplink"]["last_error"] == "refused: bad password ***"
        assert page["uplink"]["publish_errors"] == 1
        assert page["queue"] == {
            "depth": 3,
            "bytes": 900,
            "max_bytes": 4_000_000,
            "oldest_age_s": 12.5,
            "moved_aside": False,
        }
        (node,) = page["nodes"]
        assert (node["id"], node["seq"], node["boot"], node["port"]) == (
            "node-1",
            42,
            3,
            "/dev/ttyUSB0",
        )

    serve(t, token=TOKEN)


@pytest.mark.parametrize(
    ("listen", "token", "problem"),
    [
        (
            "0.0.0.0:9100",
            None,
            "metrics.listen: 0.0.0.0 is not a loopback address: set metrics.token so the"
            " status page and /metrics need it, or listen on 127.0.0.1",
        ),
        (
            "[::]:9100",
            None,
            "metrics.listen: :: is not a loopback address: set metrics.token so the"
            " status page and /metrics need it, or listen on 127.0.0.1",
        ),
        (
            "gateway.local:9100",
            None,
            "metrics.listen: gateway.local is not a loopback address: set metrics.token so"
            " the status page and /metrics need it, or listen on 127.0.0.1",
        ),
        (
            "0.0.0.0:9100",
            "short",
            "metrics.token: expected at least 16 printable characters"
            " (e.g. from `openssl rand -hex 16`)",
        ),
    ],
)
def test_site_network_listener_needs_a_token(
    tmp_path: Path, listen: str, token: str | None, problem: str
) -> None:
    extra = "" if token is None else f'\ntoken = "{token}"'
    path = write_config(tmp_path / "gw.toml", listen=f'"{listen}"{extra}')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [problem]


@pytest.mark.parametrize("listen", ["127.0.0.1:9100", "[::1]:9100", "localhost:9100"])
def test_loopback_listener_without_token(tmp_path: Path, listen: str) -> None:
    cfg = load_config(write_config(tmp_path / "gw.toml", listen=f'"{listen}"'))
    assert cfg.metrics_token is None and cfg.metrics_listen is not None


def test_token_is_not_in_the_config_repr(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gw.toml", listen=f'"0.0.0.0:9100"\ntoken = "{TOKEN}"')
    cfg = load_config(path)
    assert cfg.metrics_token == TOKEN and cfg.metrics_listen == ("0.0.0.0", 9100)
    assert TOKEN not in repr(cfg)


def test_gateway_refuses_to_start_an_open_site_network_listener(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gw.toml", listen='"0.0.0.0:9108"')
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"citysense-gateway: {path}: metrics.listen: 0.0.0.0 is not a loopback address: set"
        " metrics.token so the status page and /metrics need it, or listen on 127.0.0.1"
    ]
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
