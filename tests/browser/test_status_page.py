"""The gateway's status page in a real browser (Debian's chromium, headless, driven by
Playwright) against the lab: a real broker, three emulated nodes running the firmware
under MicroPython, the gateway process. The page shows the nodes with the numbers the
gateway has, a stopped node's row turns "quiet", a wrong token gets 401, nothing is
fetched from anywhere but the gateway, and a screenshot is written as an artefact."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citysense_lab.stack import Lab, LabOptions

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "page-test-token-5f1c2e9a7b"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROWS_OK = """() => {
  const rows = [...document.querySelectorAll('#nodes tbody tr')];
  return rows.length === 3 && rows.every((r) => r.dataset.state === 'ok'
    && r.querySelector('[data-f=interval]').textContent !== '–'
    && r.querySelector('[data-f=battery]').textContent !== '–');
}"""
CELLS = """() => Object.fromEntries([...document.querySelectorAll('#nodes tbody tr')].map((r) =>
  [r.dataset.node, Object.fromEntries([...r.querySelectorAll('td')].map((td) =>
    [td.dataset.f, td.childNodes[0] ? td.childNodes[0].textContent : '']))]))"""
GATEWAY = """() => Object.fromEntries([...document.querySelectorAll('dd[data-f]')].map((d) =>
  [d.dataset.f, d.textContent]))"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="chromium not installed (scripts/setup.sh dev installs it)"
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    opts = LabOptions(nodes=3, interval_s=2, batch=1, metrics_token=TOKEN)
    lab = Lab(tmp_path / "lab", opts, say=lambda _m: None)
    try:
        lab.up()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1500, "height": 760},
        )
        try:
            yield ctx
        finally:
            ctx.close()


def scrape(port: int) -> dict[str, float]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return {
        k: float(v)
        for k, _, v in (ln.rpartition(" ") for ln in text.splitlines())
        if k and not k.startswith("#")
    }


def gateway_numbers(lab: Lab) -> dict[str, Any]:
    """What the gateway itself has: its status.json and /metrics, as the page shows them."""
    state = json.loads((lab.state / "status.json").read_text())
    m = scrape(lab.metrics_port)
    nodes = {
        d: {
            "seq": str(s["seq"]),
            "boot": str(s["boot"]),
            "firmware": s["firmware"],
            "port": s["port"].rsplit("/", 1)[-1],
            "reset": s["reset"],
            "records_hour": str(sum(s["per_minute"])),
            "link_errors": str(s["link_errors"]),
            "dropped": str(s["dropped"]),
        }
        for d, s in state["devices"].items()
    }
    gateway = {
        "gateway.accepted": str(int(m["citysense_records_accepted_total"])),
        "uplink.published": str(int(m["citysense_records_published_total"])),
        "queue.depth": str(int(m["citysense_queue_depth"])),
        "uplink.state": state["uplink"]["state"],
    }
    return {"nodes": nodes, "gateway": gateway}


def page_numbers(page: Any) -> dict[str, Any]:
    cells = page.evaluate(CELLS)
    keys = ("seq", "boot", "firmware", "port", "reset", "records_hour", "link_errors", "dropped")
    nodes = {d: {k: row[k] for k in keys} for d, row in cells.items()}
    dd = page.evaluate(GATEWAY)
    gateway = {k: dd[k] for k in ("gateway.accepted", "uplink.published", "queue.depth")}
    gateway["uplink.state"] = dd["uplink.state"]
    return {"nodes": nodes, "gateway": gateway}


def refused(browser: Any, url: str) -> int:
    """The HTTP status of a refused navigation, in a page of its own. A 401 with a Basic
    challenge ends a headless navigation with ERR_INVALID_AUTH_CREDENTIALS (a person's
    browser asks for the password instead), so the status is taken from the network."""
    from playwright.sync_api import Error

    page = browser.new_page()
    try:
        with page.expect_response(lambda r: r.url == url, timeout=10_000) as info:
            with pytest.raises(Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
                page.goto(url)
        return int(info.value.status)
    finally:
        page.close()


def test_status_page_in_chromium(
    lab: Lab, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = f"http://127.0.0.1:{lab.metrics_port}"
    assert refused(browser, f"{base}/?token=wrong-token-0000000000") == 401
    assert refused(browser, f"{base}/") == 401
    page = browser.new_page()
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    assert page.goto(f"{base}/?token={TOKEN}").status == 200

    # three nodes, each heard, its interval learnt and its sys/ readings shown
    page.wait_for_function(ROWS_OK, timeout=120_000)
    cells = page.evaluate(CELLS)
    assert sorted(cells) == ["node-1", "node-2", "node-3"]
    for row in cells.values():
        assert re.fullmatch(r"\d\.\d\d V", row["battery"]), row
        assert re.fullmatch(r"\d+\.\d kB", row["heap"]), row
        assert row["firmware"] != "–" and re.fullmatch(r"node-\d\.tty", row["port"])
        assert row["update"] == "–"  # no update was ever started on these nodes
    assert page.evaluate(GATEWAY)["uplink.state"] == "connected"

    # node-3 loses power: its row turns quiet within two of its intervals, the others not
    node3 = lab.nodes[2]
    lab.power_cut(node3)
    stopped = time.monotonic()
    page.wait_for_selector('tr[data-node="node-3"][data-state="quiet"]', timeout=30_000)
    quiet_after = time.monotonic() - stopped
    states = page.evaluate(
        "() => [...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.state)"
    )
    assert states == ["ok", "ok", "quiet"]
    shot = tmp_path / "status-page.png"
    page.screenshot(path=str(shot), full_page=True)
    with capsys.disabled():  # in the test log even without -s
        print(f"\nnode-3 quiet {quiet_after:.1f} s after its power cut; screenshot: {shot}")
    if os.environ.get("CITYSENSE_SCREENSHOT"):
        shutil.copy(shot, os.environ["CITYSENSE_SCREENSHOT"])

    # everyone stops: once the numbers stand still the page shows exactly the gateway's
    for node in lab.nodes[:2]:
        lab.power_cut(node)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#nodes tbody tr[data-state=quiet]')].length === 3",
        timeout=30_000,
    )
    deadline = time.monotonic() + 30
    while True:
        want, got = gateway_numbers(lab), page_numbers(page)
        if want == got and want["gateway"]["queue.depth"] == "0":
            break
        if time.monotonic() > deadline:
            assert got == want
            raise AssertionError(f"queue never drained: {want['gateway']}")
        time.sleep(0.5)
    accepted = int(got["gateway"]["gateway.accepted"])
    assert accepted == sum(int(n["records_hour"]) for n in got["nodes"].values()) > 9
    assert got["gateway"]["uplink.published"] == str(accepted)

    # every request the page made went to the gateway itself (works with no internet)
    assert urls and all(u.startswith(f"{base}/") for u in urls), urls
